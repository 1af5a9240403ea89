"""Task families for meta-training: optimizees (MLPs, small CNNs, small transformers) on the embedded datasets.

A :class:`TaskConfig` fixes an architecture, a dataset, a batch size and an init scale; a :class:`Task` turns
it into a functional problem: ``init_params(gen)``, ``loss(params, x, y)``, ``batches(gen, k)``. Families
sample configs from ranges; :data:`HELD_OUT` lists configurations that no family samples (widths,
activations and batch sizes outside the sampled sets), kept for evaluation.

The transformer tasks (:mod:`.transformer`: attention, LayerNorm, a residual stream, a positional embedding)
run stacked under ``torch.func.vmap`` like the others; their attention runs on PyTorch's math kernel there
(:meth:`Task.logits`).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from lopt_graphs.data import DatasetSplits, load_embedded
from lopt_graphs.graph import GraphSpec, graph_from_module

from ..sampling import log_uniform
from .transformer import TRANSFORMER_ACTS, TokenTransformer, reset_attention

_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU,
}


@dataclass(frozen=True)
class TaskConfig:
    """One optimizee.

    Attributes:
        dataset: ``"digits"``, ``"mnist5k"`` or ``"mnist1d"``.
        arch: ``"mlp"``, ``"cnn"`` (Conv2d for images, Conv1d for mnist1d; stride 2, then global pooling) or
            ``"transformer"`` (:class:`~meta_train.tasks.transformer.TokenTransformer`: image rows or 4-value
            patches of a signal as tokens).
        widths: hidden widths (MLP), channels (CNN), or one equal width per encoder layer (transformer:
            ``d_model``).
        activation: one of ``relu, tanh, gelu, silu, elu`` (transformer: ``relu`` or ``gelu``).
        batch_size: minibatch size.
        init_scale: multiplier of PyTorch's default initialization.
        kernel: conv kernel size (CNN only).
        input_scale: multiplier of the inputs (augmentation; 1 = the dataset as it is).
    """

    dataset: str
    arch: str
    widths: tuple[int, ...]
    activation: str = "relu"
    batch_size: int = 64
    init_scale: float = 1.0
    kernel: int = 3
    input_scale: float = 1.0

    @property
    def name(self) -> str:
        w = "-".join(map(str, self.widths))
        x = "" if self.input_scale == 1.0 else f"_x{self.input_scale:.2f}"
        return f"{self.dataset}_{self.arch}_{w}_{self.activation}_b{self.batch_size}_s{self.init_scale:.2f}{x}"

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=None)
def _data(name: str) -> DatasetSplits:
    return load_embedded(name, seed=0)


ARCHS: tuple[str, ...] = ("mlp", "cnn", "transformer")


def build_module(cfg: TaskConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The optimizee as an ``nn.Module`` (also traced for its neural graph).

    Raises:
        ValueError: for an unknown arch or activation, a transformer with unequal widths or an activation
            other than ``relu``/``gelu``.
    """
    if cfg.arch == "transformer":
        if cfg.activation not in TRANSFORMER_ACTS:
            raise ValueError(f"Invalid activation for arch 'transformer': {cfg.activation!r} (expected one of "
                             f"{list(TRANSFORMER_ACTS)})")
        if not cfg.widths or len(set(cfg.widths)) != 1:
            raise ValueError(f"Invalid widths for arch 'transformer': {tuple(cfg.widths)} (expected one width "
                             f"per layer, all equal: the residual stream's d_model)")
        return TokenTransformer(input_shape, num_classes, cfg.widths[0], len(cfg.widths), cfg.activation)
    if cfg.activation not in _ACTS:
        raise ValueError(f"Unknown activation {cfg.activation!r}; expected one of {sorted(_ACTS)}")
    act = _ACTS[cfg.activation]
    layers: list[nn.Module] = []
    if cfg.arch == "mlp":
        prev = math.prod(input_shape)
        layers.append(nn.Flatten())
        for w in cfg.widths:
            layers += [nn.Linear(prev, w), act()]
            prev = w
        layers.append(nn.Linear(prev, num_classes))
    elif cfg.arch == "cnn":
        conv, pool = (nn.Conv2d, nn.AdaptiveAvgPool2d) if len(input_shape) == 3 else (nn.Conv1d, nn.AdaptiveAvgPool1d)
        prev = input_shape[0]
        for w in cfg.widths:
            layers += [conv(prev, w, cfg.kernel, stride=2, padding=cfg.kernel // 2), act()]
            prev = w
        layers += [pool(1), nn.Flatten(), nn.Linear(prev, num_classes)]
    else:
        raise ValueError(f"Unknown arch {cfg.arch!r}; expected one of {list(ARCHS)}")
    return nn.Sequential(*layers)


def arch_key(cfg: TaskConfig) -> tuple:
    """What fixes a task's parameter shapes and function (its module and graph spec): dataset, arch, widths,
    activation, kernel. Tasks with one key can share a module and run stacked in one ``vmap`` call."""
    return (cfg.dataset, cfg.arch, tuple(cfg.widths), cfg.activation, cfg.kernel)


@lru_cache(maxsize=256)
def _template(key: tuple) -> tuple[nn.Module, tuple[str, ...], GraphSpec]:
    """Module, parameter names and graph spec of an architecture, built (and traced) once per key."""
    dataset, arch, widths, activation, kernel = key
    data = _data(dataset)
    module = build_module(TaskConfig(dataset, arch, widths, activation, kernel=kernel), data.input_shape,
                          data.num_classes)
    names = tuple(n for n, _ in module.named_parameters())
    if arch != "transformer":
        return module, names, graph_from_module(module)
    # A transformer cannot build with on_unsupported="error": the attention in-projections read the stream by
    # position through the attention scores and have no graph rule, by design. Trace it as
    # NeuralGraphOptimizer.for_module does (what the meta-trained optimizer meets when it is used): only the
    # in-projections go free, and the positional nn.Embedding is on the graph (embeddings="edge"). Anything
    # else found free would be a wiring the tracer lost: refuse it rather than meta-train on it.
    spec = graph_from_module(module, on_unsupported="free", embeddings="edge")
    lost = [names[i] for i in spec.free_params if ".self_attn.in_proj_" not in names[i]]
    assert not lost, f"transformer parameters off the graph besides the in-projections: {lost}"
    return module, names, spec


class Task:
    """A functional training problem built from a :class:`TaskConfig`.

    The module and graph spec are shared by every task of one :func:`arch_key` (traced once, cached): the
    module's own parameter values are only a template (:meth:`init_params` re-initializes them).
    """

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.data = _data(cfg.dataset)
        self.module, names, self.spec = _template(arch_key(cfg))
        self.names: list[str] = list(names)
        self.loss_scale = math.log(self.data.num_classes)  # loss of a uniform prediction

    @property
    def name(self) -> str:
        return self.cfg.name

    def init_params(self, gen: torch.Generator) -> list[Tensor]:
        """Fresh parameters (PyTorch's default init, scaled by ``init_scale``), drawn from ``gen``."""
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        module = copy.deepcopy(self.module)  # the cached template is shared: never re-initialize it in place
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in module.modules():
                if hasattr(m, "reset_parameters") and m is not module:
                    m.reset_parameters()
            reset_attention(module)  # nn.MultiheadAttention has no public reset_parameters
        return [p.detach().clone() * self.cfg.init_scale for p in module.parameters()]

    def new_model(self, gen: torch.Generator) -> nn.Module:
        """A fresh copy of :attr:`module` holding :meth:`init_params` drawn from ``gen``."""
        model = copy.deepcopy(self.module)
        with torch.no_grad():
            for p, v in zip(model.parameters(), self.init_params(gen)):
                p.copy_(v)
        return model

    def logits(self, params: list[Tensor], x: Tensor) -> Tensor:
        # Attention on PyTorch's math kernel: it is made of ops that vmap batches, where the fused CPU kernel has
        # no batching rule (vmap falls back to a loop over the stacked tasks, with a UserWarning), and it can be
        # differentiated twice (the truncated-backprop estimator differentiates through the inner gradients; the
        # fused kernel's backward has no derivative). Same values, same speed here (one CPU thread).
        attention = sdpa_kernel(SDPBackend.MATH) if self.cfg.arch == "transformer" else contextlib.nullcontext()
        with attention:
            return functional_call(self.module, dict(zip(self.names, params)), (x,))

    def loss(self, params: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of a minibatch (pure function of ``params``)."""
        return nn.functional.cross_entropy(self.logits(params, x), y)

    def batches(self, gen: torch.Generator, k: int) -> tuple[Tensor, Tensor]:
        """``k`` minibatches ``(x [k, B, ...], y [k, B])`` sampled with replacement from the training split."""
        idx = torch.randint(0, self.data.num_train, (k, self.cfg.batch_size), generator=gen)
        x = self.data.x_train[idx]
        return (x if self.cfg.input_scale == 1.0 else x * self.cfg.input_scale), self.data.y_train[idx]

    @torch.no_grad()
    def evaluate(self, params: list[Tensor]) -> dict[str, float]:
        """Full training loss and test accuracy."""
        train = self.loss(params, self.data.x_train, self.data.y_train).item()
        acc = (self.logits(params, self.data.x_test).argmax(-1) == self.data.y_test).float().mean().item()
        return {"train_loss": train, "test_accuracy": acc}


def _choice(gen: torch.Generator, xs: list):
    return xs[int(torch.randint(0, len(xs), (1,), generator=gen))]


def _log_uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return log_uniform(gen, lo, hi, ndigits=2)


_SAMPLED_WIDTHS = [16, 32, 64]
_SAMPLED_ACTS = ["relu", "tanh", "gelu", "silu"]
_SAMPLED_BATCH = [32, 64, 128]
# The broad families add wide and deep MLPs, wider CNNs and small batches (where a learned step size that
# only saw narrow nets overshoots); widths 48/96/24/12 and ELU stay held out.
_BROAD_MLP_WIDTHS = [16, 32, 64, 128, 256]
_BROAD_CNN_WIDTHS = [8, 16, 32, 64]
_BROAD_BATCH = [16, 32, 64, 128]


def _sampler(dataset: str, arch: str, widths: list[int] = _SAMPLED_WIDTHS, depths: tuple[int, int] = (1, 2),
             batches: list[int] = _SAMPLED_BATCH) -> Callable[[torch.Generator], TaskConfig]:
    """Sampler of ``dataset``/``arch`` configs: depth uniform in ``depths`` (inclusive), each width from
    ``widths``, activation, batch size from ``batches`` and a log-uniform init scale in [0.5, 2]."""
    def sample(gen: torch.Generator) -> TaskConfig:
        depth = int(torch.randint(depths[0], depths[1] + 1, (1,), generator=gen))
        ws = tuple(_choice(gen, widths) for _ in range(depth))
        return TaskConfig(dataset, arch, ws, _choice(gen, _SAMPLED_ACTS), _choice(gen, batches),
                          _log_uniform(gen, 0.5, 2.0), kernel=3 if dataset != "mnist1d" else 5)
    return sample


_DATASETS = ("digits", "mnist5k", "mnist1d")
#: Families: name -> sampler of task configs.
FAMILIES: dict[str, Callable[[torch.Generator], TaskConfig]] = {
    f"{d}_{a}": _sampler(d, a) for d in _DATASETS for a in ("mlp", "cnn")
}
FAMILIES.update({f"{d}_mlp_broad": _sampler(d, "mlp", _BROAD_MLP_WIDTHS, (1, 4), _BROAD_BATCH) for d in _DATASETS})
FAMILIES.update({f"{d}_cnn_broad": _sampler(d, "cnn", _BROAD_CNN_WIDTHS, (1, 3), _BROAD_BATCH) for d in _DATASETS})


def _mixture_of(names: list[str]) -> Callable[[torch.Generator], TaskConfig]:
    return lambda gen: FAMILIES[_choice(gen, names)](gen)


#: ``mixture``: the six narrow families; ``mixture_broad``: the six broad ones; ``digits``: digits MLP or CNN.
FAMILIES["mixture"] = _mixture_of([f"{d}_{a}" for d in sorted(_DATASETS) for a in ("cnn", "mlp")])
FAMILIES["mixture_broad"] = _mixture_of([f"{d}_{a}_broad" for d in sorted(_DATASETS) for a in ("cnn", "mlp")])
FAMILIES["digits"] = _mixture_of(["digits_mlp", "digits_cnn"])


def _mixture_v2(gen: torch.Generator) -> TaskConfig:
    """Recipe v2: a narrow family 3 times in 4, a broad one (wide/deep nets, batch 16) otherwise."""
    broad = float(torch.rand((), generator=gen)) < 0.25
    return FAMILIES["mixture_broad" if broad else "mixture"](gen)


#: ``mixture_v2``: ``mixture`` 3/4 of the time, ``mixture_broad`` 1/4 (wide and narrow nets, small and large batches).
FAMILIES["mixture_v2"] = _mixture_v2

_TRANSFORMER_WIDTHS = [16, 32]


def _transformer_sampler(dataset: str) -> Callable[[torch.Generator], TaskConfig]:
    """Sampler of ``dataset`` transformer configs: one ``d_model`` from {16, 32} for 1 or 2 layers, ``relu`` or
    ``gelu``, batch size from {32, 64, 128} and a log-uniform init scale in [0.5, 2] (as :func:`_sampler`)."""
    def sample(gen: torch.Generator) -> TaskConfig:
        depth = int(torch.randint(1, 3, (1,), generator=gen))
        d = _choice(gen, _TRANSFORMER_WIDTHS)
        return TaskConfig(dataset, "transformer", (d,) * depth, _choice(gen, list(TRANSFORMER_ACTS)),
                          _choice(gen, _SAMPLED_BATCH), _log_uniform(gen, 0.5, 2.0))
    return sample


#: ``{digits,mnist5k,mnist1d}_transformer``: small transformer classifiers (attention, LayerNorm, a residual
#: stream); ``transformer``: one of the three.
FAMILIES.update({f"{d}_transformer": _transformer_sampler(d) for d in _DATASETS})
FAMILIES["transformer"] = _mixture_of([f"{d}_transformer" for d in sorted(_DATASETS)])


def _mixture_v3(gen: torch.Generator) -> TaskConfig:
    """Recipe v3: ``mixture_v2`` 3 times in 4, a transformer family otherwise."""
    transformer = float(torch.rand((), generator=gen)) < 0.25
    return FAMILIES["transformer" if transformer else "mixture_v2"](gen)


#: ``mixture_v3``: ``mixture_v2`` 3/4 of the time, ``transformer`` 1/4.
FAMILIES["mixture_v3"] = _mixture_v3

#: Configurations no family samples (width 48/96/24/12, ELU, batch 256): evaluation only.
HELD_OUT: tuple[TaskConfig, ...] = (
    TaskConfig("digits", "mlp", (96, 96), "elu", 16, 1.0),
    TaskConfig("mnist5k", "mlp", (48,), "tanh", 256, 1.0),
    TaskConfig("mnist1d", "cnn", (24, 24), "elu", 64, 1.0, kernel=5),
    TaskConfig("digits", "cnn", (12, 12), "relu", 256, 1.0),
)

#: A few in-distribution configurations for quick evaluation.
IN_DISTRIBUTION: tuple[TaskConfig, ...] = (
    TaskConfig("digits", "mlp", (32,), "relu", 64, 1.0),
    TaskConfig("digits", "cnn", (16, 32), "relu", 64, 1.0),
    TaskConfig("mnist5k", "mlp", (32,), "tanh", 128, 1.0),
    TaskConfig("mnist1d", "mlp", (64, 32), "gelu", 64, 1.0, kernel=5),
)


def sample_task(family: str, gen: torch.Generator) -> Task:
    """A task of ``family`` (see :data:`FAMILIES`) drawn with ``gen``."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown task family {family!r}; expected one of {sorted(FAMILIES)}")
    return Task(FAMILIES[family](gen))


def sample_group(family: str, gen: torch.Generator, n: int, input_scale: float = 1.0,
                 max_params: int = 0, max_activations: int = 0) -> list[TaskConfig]:
    """``n`` task configs that share one architecture, dataset and batch size (one draw of ``family``), so
    they run stacked in one ``vmap`` call; each has its own init scale (log-uniform in [0.5, 2]; the first
    keeps the family's draw), and their inits and data orders differ because each draws its own.
    ``input_scale > 1`` also draws each task's input scale log-uniformly in ``[1/input_scale, input_scale]``;
    ``max_params > 0`` shrinks the group so that it holds at most that many parameters in all (at least one
    task: wide nets come in small groups); ``max_activations > 0`` likewise caps its activation values per
    minibatch (:func:`num_activations`: a 64-channel CNN on 28x28 images costs ~100x a small MLP per step,
    with about as many parameters).

    (The embedded datasets have different input shapes, so a group holds one dataset; a batch size is one
    per group because the stacked minibatches share a shape.)"""
    if family not in FAMILIES:
        raise ValueError(f"Unknown task family {family!r}; expected one of {sorted(FAMILIES)}")
    if n < 1:
        raise ValueError(f"Invalid group size: {n} (expected >= 1)")
    first = FAMILIES[family](gen)
    if max_params > 0:
        n = max(1, min(n, max_params // num_params(first)))
    if max_activations > 0:
        n = max(1, min(n, max_activations // num_activations(first)))
    cfgs = [first] + [replace(first, init_scale=_log_uniform(gen, 0.5, 2.0)) for _ in range(n - 1)]
    if input_scale > 1.0:
        cfgs = [replace(c, input_scale=_log_uniform(gen, 1.0 / input_scale, input_scale)) for c in cfgs]
    return cfgs


def num_params(cfg: TaskConfig) -> int:
    """Number of parameters of the task's optimizee."""
    return sum(p.numel() for p in _template(arch_key(cfg))[0].parameters())


def num_activations(cfg: TaskConfig) -> int:
    """Activation values of one minibatch's forward pass: ``batch_size`` times the outputs of every leaf module
    and the attention modules (their outputs and scores) for one example (what a step's memory and time grow
    with, beyond the parameters)."""
    return cfg.batch_size * _activations_per_example(arch_key(cfg))


@lru_cache(maxsize=None)
def _activations_per_example(key: tuple) -> int:
    module, _, _ = _template(key)
    sizes: list[int] = []

    def count(m: nn.Module, inputs: tuple, out: Tensor | tuple) -> None:
        if isinstance(m, nn.MultiheadAttention):  # (output, None), and its scores [heads, T_query, T_key]
            q, k = inputs[0], inputs[1]
            t = 1 if m.batch_first else 0
            sizes.append(out[0].numel() + m.num_heads * q.shape[t] * k.shape[t])
        else:
            sizes.append(out.numel())

    # an nn.MultiheadAttention is not a leaf: its out_proj is a child module, but read as a weight, never called
    hooks = [m.register_forward_hook(count)
             for m in module.modules() if not list(m.children()) or isinstance(m, nn.MultiheadAttention)]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *_data(key[0]).input_shape))
    finally:
        for h in hooks:
            h.remove()
    return sum(sizes)

#: Validation configurations: in the families' distribution but disjoint from :data:`IN_DISTRIBUTION` and
#: :data:`HELD_OUT`. Meta-training scores checkpoints on them (``validate_every``) and promotes the best;
#: the evaluation sets are never used to choose a checkpoint.
VALIDATION: tuple[TaskConfig, ...] = (
    TaskConfig("digits", "mlp", (64,), "tanh", 32, 1.0),
    TaskConfig("mnist5k", "cnn", (16,), "relu", 64, 1.0),
    TaskConfig("mnist1d", "mlp", (32, 32), "relu", 128, 1.0, kernel=5),
    TaskConfig("digits", "cnn", (8, 16), "silu", 128, 1.0),
    # wide, deep and small-batch nets (the broad families' range): a checkpoint that only fits narrow nets
    # should not win here
    TaskConfig("mnist5k", "mlp", (128, 128), "relu", 64, 1.0),
    TaskConfig("digits", "mlp", (32, 32, 32), "gelu", 32, 1.0),
    TaskConfig("mnist1d", "mlp", (64,), "silu", 16, 1.0, kernel=5),
)
#: Candidate validation task for learned optimizers meta-trained on transformers (``mixture_v3``): in the
#: transformer families' distribution, not in :data:`VALIDATION` (nor in ``meta_train.validate.DEFAULT_TASKS``,
#: so adding it does not change the validation score of existing runs); not yet used to select checkpoints.
VALIDATION_TRANSFORMER: tuple[TaskConfig, ...] = (
    TaskConfig("digits", "transformer", (16,), "gelu", 64, 1.0),
)
#: Long validation runs, ``(config, k)``: trained for ``k`` times the run's ``validate_steps`` (1,500 steps at
#: the usual 300), so selection sees how a schedule carries over to long training.
VALIDATION_LONG: tuple[tuple[TaskConfig, int], ...] = (
    (TaskConfig("digits", "mlp", (16, 16), "tanh", 64, 1.0), 5),
)
