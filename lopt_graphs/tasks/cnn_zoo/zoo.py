"""CNN zoos: many small CNNs trained with varied hyper-parameters, checkpoints and their test accuracy.

Two zoo kinds (:class:`~lopt_graphs.tasks.cnn_zoo.config.ZooTaskConfig` ``kind``):

* ``"small"``: the Small CNN Zoo architecture (Unterthiner et al., 2020), three 3x3 convolutions of 16
  channels, global average pooling and a linear layer. The convolutions have stride 2, except the first
  one on inputs of at most 16 pixels (8x8 digits), which would otherwise shrink to 1x1.
* ``"variant"``: a pool of ``num_archs`` sampled architectures with 2-4 convolutions, 8-32 channels, kernel
  size 3 or 5 and residual blocks ``h = h + drop(act(conv(h)))`` (same width, stride 1). A convolution that
  is not residual has stride 2 while the map is larger than 2x2 (the first one as in ``"small"``); residual
  blocks are sampled only on maps of at most ``max(4, image_size // 4)`` pixels a side, i.e. after a
  downsampling, which keeps the cost per network close to the small zoo's.

Networks of one architecture and activation are trained together: their parameters are stacked along a
leading member dim and every layer runs as one grouped convolution (``groups = members``), with per-member
learning rate, L2, dropout, init scale and training subset. :class:`ZooCNN` is the equivalent
``nn.Module`` of one member (the neural graph is built from it with ``graph_from_module``);
:func:`batched_forward` agrees with it member by member (tested).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lopt_graphs.data import default_cache_dir, load_embedded
from lopt_graphs.data.embedded import DatasetSplits
from lopt_graphs.io import atomic_write

from .config import ZooTaskConfig

__all__ = ["ZOO_VERSIONS", "CNNArch", "Zoo", "ZooCNN", "batched_forward", "build_zoo", "load_or_build_zoo", "load_tensors",
           "sample_archs", "zoo_cache_path"]

#: Recipe/format version of each zoo kind (part of the cache key): bump a kind's entry when its generation
#: recipe or the on-disk format changes. v2 of ``"variant"``: residual blocks only after a downsampling.
ZOO_VERSIONS: dict[str, str] = {"small": "cnn_zoo_v1", "variant": "cnn_zoo_v2"}

#: Training examples the training accuracy of a checkpoint is measured on (the full set costs as much as
#: an epoch of training per checkpoint).
_TRAIN_EVAL = 512

_ACT_FUNCS: dict[str, Callable[[Tensor], Tensor]] = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu}
_ACT_MODULES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@dataclass(frozen=True)
class CNNArch:
    """A CNN of the zoo: ``len(widths)`` convolutions, global average pooling, a linear layer.

    Attributes:
        in_channels: input channels.
        num_classes: outputs of the linear layer.
        widths: output channels of each convolution.
        kernels: kernel size of each convolution (odd; padding ``k // 2``).
        strides: stride of each convolution.
        residual: whether each convolution is a residual block ``h = h + drop(act(conv(h)))`` (needs the
            same width as its input and stride 1).
    """

    in_channels: int
    num_classes: int
    widths: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    residual: tuple[bool, ...]

    def __post_init__(self) -> None:
        n = len(self.widths)
        if not (n == len(self.kernels) == len(self.strides) == len(self.residual)) or n == 0:
            raise ValueError(f"CNNArch needs one width, kernel, stride and residual flag per conv: {self}")
        cin = self.in_channels
        for w, s, r in zip(self.widths, self.strides, self.residual):
            if r and (w != cin or s != 1):
                raise ValueError(f"a residual conv needs equal input/output width and stride 1: {self}")
            cin = w

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the parameters in ``ZooCNN(arch).parameters()`` order."""
        shapes: list[tuple[int, ...]] = []
        cin = self.in_channels
        for w, k in zip(self.widths, self.kernels):
            shapes += [(w, cin, k, k), (w,)]
            cin = w
        return shapes + [(self.num_classes, cin), (self.num_classes,)]

    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes())

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "CNNArch":
        return cls(int(d["in_channels"]), int(d["num_classes"]), tuple(d["widths"]), tuple(d["kernels"]),
                   tuple(d["strides"]), tuple(bool(r) for r in d["residual"]))


class ZooCNN(nn.Module):
    """One CNN of the zoo as an ``nn.Module`` (traceable by ``torch.fx``, so ``graph_from_module`` works).

    Args:
        arch: the architecture.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
        dropout: dropout probability after each activation.
    """

    def __init__(self, arch: CNNArch, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.arch = arch
        self.residual = arch.residual
        convs, cin = [], arch.in_channels
        for w, k, s in zip(arch.widths, arch.kernels, arch.strides):
            convs.append(nn.Conv2d(cin, w, k, stride=s, padding=k // 2))
            cin = w
        self.convs = nn.ModuleList(convs)
        self.act = _ACT_MODULES[activation]()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(cin, arch.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> logits ``[B, num_classes]``."""
        h = x
        for conv, res in zip(self.convs, self.residual):
            z = self.drop(self.act(conv(h)))
            h = h + z if res else z
        return self.head(h.mean(dim=(2, 3)))


def load_tensors(module: nn.Module, tensors: Sequence[Tensor]) -> nn.Module:
    """Copy ``tensors`` (in ``module.parameters()`` order) into ``module``; returns it."""
    with torch.no_grad():
        for p, t in zip(module.parameters(), tensors):
            p.copy_(t.to(p.dtype))
    return module


def batched_forward(arch: CNNArch, activation: str, params: Sequence[Tensor], x: Tensor,
                    dropout: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Run ``M`` networks of one architecture at once with grouped convolutions.

    Args:
        arch: the shared architecture.
        activation: the shared activation.
        params: stacked parameters, ``[M, *shape]`` for each shape of ``arch.param_shapes()``.
        x: ``[M, B, C, H, W]`` (a different batch per member) or ``[B, C, H, W]`` (shared).
        dropout: ``[M]`` per-member dropout probabilities (``None``: no dropout, i.e. evaluation).
        generator: random generator of the dropout masks.

    Returns:
        Logits ``[M, B, num_classes]``.
    """
    m = params[0].shape[0]
    act = _ACT_FUNCS[activation]
    if x.dim() == 5:
        b = x.shape[1]
        h = x.transpose(0, 1).reshape(b, m * x.shape[2], *x.shape[3:])
    else:
        b = x.shape[0]
        h = x.repeat(1, m, 1, 1)
    for i, (k, s, res) in enumerate(zip(arch.kernels, arch.strides, arch.residual)):
        w, bias = params[2 * i], params[2 * i + 1]
        z = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1), stride=s, padding=k // 2, groups=m)
        z = act(z)
        if dropout is not None:
            p = dropout.repeat_interleave(w.shape[1]).view(1, -1, 1, 1).to(z.dtype)
            keep = torch.rand(z.shape, generator=generator, dtype=z.dtype) >= p
            z = z * keep / (1 - p)
        h = h + z if res else z
    pooled = h.mean(dim=(2, 3)).view(b, m, -1)  # [B, M, C]
    w, bias = params[-2], params[-1]  # [M, K, C], [M, K]
    return torch.einsum("bmc,mkc->mbk", pooled, w) + bias[:, None, :]


def sample_archs(cfg: ZooTaskConfig, in_channels: int, num_classes: int, image_size: int,
                 generator: torch.Generator) -> list[CNNArch]:
    """The architectures of a zoo: one for ``"small"``, ``cfg.num_archs`` distinct ones for ``"variant"``."""
    first_stride = 2 if image_size > 16 else 1
    if cfg.kind == "small":
        return [CNNArch(in_channels, num_classes, (16, 16, 16), (3, 3, 3), (first_stride, 2, 2),
                        (False, False, False))]
    archs: list[CNNArch] = []
    seen: set[CNNArch] = set()
    tries = 0
    while len(archs) < cfg.num_archs and tries < 100 * cfg.num_archs:
        tries += 1
        depth = int(torch.randint(cfg.depth_min, cfg.depth_max + 1, (1,), generator=generator))
        widths, kernels, strides, residual = [], [], [], []
        size, cin = image_size, in_channels
        for i in range(depth):
            k = cfg.kernels[int(torch.randint(len(cfg.kernels), (1,), generator=generator))]
            # residual blocks only once the map is downsampled (full-resolution blocks cost too much)
            res = (i > 0 and size <= max(4, image_size // 4)
                   and float(torch.rand((), generator=generator)) < cfg.residual_prob)
            if res:
                w, s = cin, 1
            else:
                w = int(torch.randint(cfg.width_min, cfg.width_max + 1, (1,), generator=generator))
                s = first_stride if i == 0 else (2 if size > 2 else 1)
            size = (size + 2 * (k // 2) - k) // s + 1
            widths.append(w), kernels.append(k), strides.append(s), residual.append(res)
            cin = w
        arch = CNNArch(in_channels, num_classes, tuple(widths), tuple(kernels), tuple(strides), tuple(residual))
        if arch not in seen:
            seen.add(arch)
            archs.append(arch)
    return archs


def _log_uniform(lo: float, hi: float, n: int, g: torch.Generator) -> Tensor:
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=g, dtype=torch.float64))


def _uniform(lo: float, hi: float, n: int, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


@dataclass
class Zoo:
    """A trained zoo.

    Attributes:
        archs: the architectures.
        arch_id: ``[R]`` architecture of each run.
        activation: activation name of each run.
        hparams: ``[R]`` tensors ``lr``, ``init``, ``l2``, ``dropout``, ``frac`` (float64).
        params: per run, ``[C, P]`` float32 flat parameters of its ``C`` checkpoints (in ``param_shapes``
            order).
        test_acc: ``[R, C]`` test accuracy of every checkpoint.
        train_acc: ``[R, C]`` accuracy on the first 512 examples of the full training set.
        steps: ``[C]`` training step of every checkpoint.
        split: ``[R]`` 0 train, 1 validation, 2 test (by run: all checkpoints of a run share a split).
        meta: version, config key, dataset, timing.
    """

    archs: list[CNNArch]
    arch_id: Tensor
    activation: list[str]
    hparams: dict[str, Tensor]
    params: list[Tensor]
    test_acc: Tensor
    train_acc: Tensor
    steps: Tensor
    split: Tensor
    meta: dict[str, object]

    @property
    def num_runs(self) -> int:
        return len(self.params)

    @property
    def num_checkpoints(self) -> int:
        return int(self.steps.numel())

    def arch(self, run: int) -> CNNArch:
        return self.archs[int(self.arch_id[run])]

    def tensors(self, run: int, ckpt: int) -> list[Tensor]:
        """Parameters of checkpoint ``ckpt`` of run ``run`` (in ``ZooCNN.parameters()`` order)."""
        shapes = self.arch(run).param_shapes()
        flat = self.params[run][ckpt]
        return [t.reshape(s) for t, s in zip(flat.split([math.prod(s) for s in shapes]), shapes)]

    def module(self, run: int, ckpt: int) -> ZooCNN:
        """The checkpoint as a :class:`ZooCNN` (evaluation mode)."""
        return load_tensors(ZooCNN(self.arch(run), self.activation[run]), self.tensors(run, ckpt)).eval()

    def to_state(self) -> dict[str, object]:
        return {"archs": [a.to_dict() for a in self.archs], "arch_id": self.arch_id, "activation": self.activation,
                "hparams": self.hparams, "params": self.params, "test_acc": self.test_acc,
                "train_acc": self.train_acc, "steps": self.steps, "split": self.split, "meta": self.meta}

    @classmethod
    def from_state(cls, s: dict[str, object]) -> "Zoo":
        return cls([CNNArch.from_dict(a) for a in s["archs"]], s["arch_id"], list(s["activation"]), s["hparams"],
                   list(s["params"]), s["test_acc"], s["train_acc"], s["steps"], s["split"], s["meta"])

    def summary(self) -> dict[str, object]:
        """Sizes and accuracy statistics (for logs and results)."""
        counts = [int((self.split == i).sum()) for i in range(3)]
        acc = self.test_acc
        return {"runs": self.num_runs, "checkpoints_per_run": self.num_checkpoints,
                "checkpoints": self.num_runs * self.num_checkpoints, "archs": len(self.archs),
                "runs_train_val_test": counts,
                "checkpoints_train_val_test": [c * self.num_checkpoints for c in counts],
                "test_acc_mean": float(acc.mean()), "test_acc_std": float(acc.std()),
                "test_acc_min": float(acc.min()), "test_acc_max": float(acc.max()),
                "dropped_nonfinite_runs": self.meta.get("dropped_nonfinite_runs", 0),
                "build_seconds": self.meta.get("build_seconds")}


def _init_params(arch: CNNArch, scale: Tensor, g: torch.Generator) -> list[Tensor]:
    """Stacked init: weights ``N(0, scale^2 / fan_in)``, biases 0; ``scale`` is ``[M]``."""
    m = scale.shape[0]
    out = []
    for shape in arch.param_shapes():
        if len(shape) == 1:
            out.append(torch.zeros(m, *shape))
        else:
            fan_in = math.prod(shape[1:])
            std = (scale / math.sqrt(fan_in)).float().view(m, *([1] * len(shape)))
            out.append(torch.randn(m, *shape, generator=g) * std)
    return out


@torch.no_grad()
def _accuracy(arch: CNNArch, act: str, params: Sequence[Tensor], x: Tensor, y: Tensor,
              chunk: int = 512) -> Tensor:
    """``[M]`` accuracy of every member on ``(x, y)``."""
    correct = torch.zeros(params[0].shape[0])
    for i in range(0, x.shape[0], chunk):
        logits = batched_forward(arch, act, params, x[i: i + chunk])
        correct += (logits.argmax(-1) == y[i: i + chunk]).float().sum(1)
    return correct / x.shape[0]


def train_group(arch: CNNArch, act: str, hp: dict[str, Tensor], data: DatasetSplits, cfg: ZooTaskConfig,
                g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train ``M`` networks of one architecture and activation together with per-member Adam.

    Args:
        hp: ``[M]`` tensors ``lr``, ``init``, ``l2``, ``dropout``, ``frac``.
        g: generator of inits, training subsets, minibatches and dropout masks.

    Returns:
        ``(flat [M, C, P], test_acc [M, C], train_acc [M, C], steps [C])``.
    """
    m = hp["lr"].shape[0]
    n = data.num_train
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    ckpt_steps = sorted({max(1, round(f * total)) for f in cfg.ckpt_fractions})
    params = [p.requires_grad_() for p in _init_params(arch, hp["init"], g)]
    # per-member training subset: the first round(frac * n) examples of a member's own permutation
    perms = torch.argsort(torch.rand(m, n, generator=g), dim=1)
    sizes = (hp["frac"] * n).round().clamp(min=cfg.batch_size).long()
    lr = hp["lr"].float()
    l2 = hp["l2"].float()
    drop = hp["dropout"].float()
    mom = [torch.zeros_like(p) for p in params]
    vel = [torch.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    flats, test_accs, train_accs = [], [], []
    for step in range(1, total + 1):
        pos = (torch.rand(m, cfg.batch_size, generator=g) * sizes[:, None]).long()
        idx = perms.gather(1, pos)  # [M, B]
        logits = batched_forward(arch, act, params, data.x_train[idx], drop, g)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), data.y_train[idx].reshape(-1)) * m
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, gr, mo, ve in zip(params, grads, mom, vel):
                shape = (m,) + (1,) * (p.dim() - 1)
                gr = gr + l2.view(shape) * p
                mo.mul_(b1).add_(gr, alpha=1 - b1)
                ve.mul_(b2).addcmul_(gr, gr, value=1 - b2)
                mhat = mo / (1 - b1 ** step)
                vhat = ve / (1 - b2 ** step)
                p.sub_(lr.view(shape) * mhat / (vhat.sqrt() + eps))
        if step in ckpt_steps:
            det = [p.detach() for p in params]
            flats.append(torch.cat([p.reshape(m, -1) for p in det], dim=1).clone())
            test_accs.append(_accuracy(arch, act, det, data.x_test, data.y_test))
            train_accs.append(_accuracy(arch, act, det, data.x_train[:_TRAIN_EVAL], data.y_train[:_TRAIN_EVAL]))
    return (torch.stack(flats, 1), torch.stack(test_accs, 1), torch.stack(train_accs, 1),
            torch.tensor(ckpt_steps))


def build_zoo(cfg: ZooTaskConfig, progress: bool = False) -> Zoo:
    """Sample hyper-parameters, train every run and record its checkpoints (deterministic for a config).

    Runs whose parameters became non-finite are dropped (counted in ``meta``).
    """
    t0 = time.time()
    data = load_embedded(cfg.dataset, seed=cfg.data_seed)
    c, h = data.input_shape[0], data.input_shape[1]
    g = torch.Generator().manual_seed(cfg.seed)
    archs = sample_archs(cfg, c, data.num_classes, h, g)
    r = cfg.num_runs
    arch_id = torch.randint(len(archs), (r,), generator=g)
    act_id = torch.randint(len(cfg.activations), (r,), generator=g)
    hp = {"lr": _log_uniform(cfg.lr_min, cfg.lr_max, r, g), "init": _log_uniform(cfg.init_min, cfg.init_max, r, g),
          "l2": _log_uniform(cfg.l2_min, cfg.l2_max, r, g), "dropout": _uniform(0.0, cfg.dropout_max, r, g),
          "frac": _uniform(cfg.frac_min, cfg.frac_max, r, g)}
    groups: list[tuple[int, int, Tensor]] = []
    for a in range(len(archs)):
        for k in range(len(cfg.activations)):
            ids = torch.nonzero((arch_id == a) & (act_id == k)).flatten()
            for i in range(0, ids.numel(), cfg.max_group):
                groups.append((a, k, ids[i: i + cfg.max_group]))
    flat: list[Tensor | None] = [None] * r
    test_acc = torch.zeros(r, len(cfg.ckpt_fractions))
    train_acc = torch.zeros_like(test_acc)
    steps = torch.zeros(0)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=r, desc=f"zoo {cfg.name}", unit="net")
    for a, k, ids in groups:
        sub = {key: v[ids] for key, v in hp.items()}
        f, te, tr, steps = train_group(archs[a], cfg.activations[k], sub, data, cfg, g)
        test_acc[ids] = te
        train_acc[ids] = tr
        for j, i in enumerate(ids.tolist()):
            flat[i] = f[j]
        if bar is not None:
            bar.update(ids.numel())
    if bar is not None:
        bar.close()
    keep = [i for i in range(r) if bool(torch.isfinite(flat[i]).all())]
    # split by run, seeded independently of training so that it depends on the run count only
    sg = torch.Generator().manual_seed(cfg.seed + 7919)
    order = torch.randperm(len(keep), generator=sg)
    n_test = max(1, round(cfg.test_fraction * len(keep)))
    n_val = round(cfg.val_fraction * len(keep))
    split = torch.zeros(len(keep), dtype=torch.long)
    split[order[:n_test]] = 2
    split[order[n_test: n_test + n_val]] = 1
    kt = torch.tensor(keep, dtype=torch.long)
    seconds = time.time() - t0
    meta = {"version": ZOO_VERSIONS[cfg.kind], "key": cfg.zoo_key(), "dataset": cfg.dataset, "build_seconds": seconds,
            "models_per_second": r / max(seconds, 1e-9), "dropped_nonfinite_runs": r - len(keep),
            "groups": len(groups)}
    return Zoo(archs, arch_id[kt], [cfg.activations[int(act_id[i])] for i in keep],
               {key: v[kt] for key, v in hp.items()}, [flat[i] for i in keep], test_acc[kt], train_acc[kt],
               steps, split, meta)


def zoo_cache_path(cfg: ZooTaskConfig) -> Path:
    """``{cache_dir}/{kind}_{dataset}_{hash}.pt`` with ``hash`` over the kind's version
    (:data:`ZOO_VERSIONS`) and the zoo keys."""
    key = json.dumps({"version": ZOO_VERSIONS[cfg.kind], **cfg.zoo_key()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "cnn_zoo"
    return root / f"{cfg.kind}_{cfg.dataset}_{digest}.pt"


def _atomic_torch_save(obj: object, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def load_or_build_zoo(cfg: ZooTaskConfig, progress: bool = False, rebuild: bool = False) -> tuple[Zoo, Path, bool]:
    """The zoo of ``cfg`` from the cache, or built and cached (atomic write).

    Returns:
        ``(zoo, cache path, whether it was loaded from the cache)``.
    """
    path = zoo_cache_path(cfg)
    if path.exists() and not rebuild:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("meta", {}).get("version") == ZOO_VERSIONS[cfg.kind] and state["meta"].get("key") == cfg.zoo_key():
            return Zoo.from_state(state), path, True
    zoo = build_zoo(cfg, progress=progress)
    _atomic_torch_save(zoo.to_state(), path)
    return zoo, path, False
