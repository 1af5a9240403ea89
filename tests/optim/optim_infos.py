"""The table of :class:`~lopt_graphs.optim.NeuralGraphOptimizer` configurations the tests run over.

Modelled on ``OptimizerInfo`` of PyTorch's ``torch/testing/_internal/common_optimizers.py``: an
:class:`OptimizerInfo` names the optimizer class and two functions returning its valid configurations
(:class:`OptimizerInput`) and its invalid ones with the error they must raise (:class:`ErrorOptimizerInput`).
Tests are parametrized over ``optim_inputs()`` / ``optim_error_inputs()``.

Also the small shared helpers (tiny models, data, a LearnedUpdate with a random nonzero head, state
comparison). Not a test module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from torch import Tensor, nn

from lopt_graphs.optim import LearnedUpdate, LearnedUpdateConfig, NeuralGraphOptimizer


# --------------------------------------------------------------------------- learned weights
def random_head_learned(seed: int = 0, dtype: torch.dtype | None = None,
                        cfg: LearnedUpdateConfig | None = None) -> LearnedUpdate:
    """A :class:`LearnedUpdate` whose output layer is random and nonzero, so the learned part matters.

    (The shipped default checkpoint has a zero output layer: it is exactly Adam.) Deterministic in ``seed``
    and does not disturb the global RNG.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        learned = LearnedUpdate(cfg)
        with torch.no_grad():
            learned.w2.normal_(0, 0.5)
            learned.b2.normal_(0, 0.1)
    if dtype is not None:
        learned = learned.to(dtype)
    return learned


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class OptimizerInput:
    """A valid configuration: ``NeuralGraphOptimizer(params, make_ckpt(), **kwargs)``.

    Attributes:
        desc: short id used in test names.
        kwargs: keyword arguments of the constructor.
        make_ckpt: factory of the ``ckpt`` argument (called once per optimizer, so two optimizers built
            from one input get equal but independent learned weights); ``None`` for the default checkpoint.
        learned_matters: the learned head is nonzero (the optimizer is not plain Adam).
    """

    desc: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    make_ckpt: Callable[[], Any] | None = None
    learned_matters: bool = False

    def build(self, params, **overrides) -> NeuralGraphOptimizer:
        ckpt = self.make_ckpt() if self.make_ckpt is not None else None
        return NeuralGraphOptimizer(params, ckpt, **{**self.kwargs, **overrides})


@dataclass(frozen=True)
class ErrorOptimizerInput:
    """An invalid configuration and the error it must raise at construction.

    Attributes:
        desc: short id used in test names.
        kwargs: keyword arguments of the constructor.
        error_type: the exception class.
        error_regex: a regex the message must match (``pytest.raises(match=...)``).
        make_params: factory of the ``params`` argument (default: a tiny MLP's parameters).
    """

    desc: str
    kwargs: dict[str, Any]
    error_type: type[BaseException]
    error_regex: str
    make_params: Callable[[], Any] | None = None

    def params(self):
        return self.make_params() if self.make_params is not None else tiny_mlp().parameters()


@dataclass(frozen=True)
class OptimizerInfo:
    """What the tests know about one optimizer class (cf. PyTorch's ``OptimizerInfo``)."""

    optim_cls: type
    optim_inputs_func: Callable[[], list[OptimizerInput]]
    optim_error_inputs_func: Callable[[], list[ErrorOptimizerInput]]
    supports_sparse: bool = False
    supports_complex: bool = False
    #: the group option that momentum-cycling schedulers (OneCycleLR, CyclicLR) drive
    momentum_key: str = "betas"
    #: an equivalent torch optimizer for the untrained default checkpoint
    reference: Callable[..., torch.optim.Optimizer] | None = None


def optim_inputs_ngo() -> list[OptimizerInput]:
    return [
        OptimizerInput("default"),
        OptimizerInput("lr0.5", dict(lr=0.5)),
        OptimizerInput("tensor_lr0.5", dict(lr=torch.tensor(0.5))),
        OptimizerInput("weight_decay0.01", dict(weight_decay=0.01)),
        OptimizerInput("betas0.8_0.99", dict(betas=(0.8, 0.99))),
        OptimizerInput("encoder_every1", dict(encoder_every=1)),
        OptimizerInput("random_head", dict(encoder_every=2), make_ckpt=random_head_learned, learned_matters=True),
    ]


def optim_error_inputs_ngo() -> list[ErrorOptimizerInput]:
    return [
        ErrorOptimizerInput("negative_lr", dict(lr=-1e-2), ValueError, "Invalid learning rate: -0.01"),
        ErrorOptimizerInput("nan_lr", dict(lr=float("nan")), ValueError, "Invalid learning rate"),
        ErrorOptimizerInput("tensor_lr_2_elems", dict(lr=torch.tensor([0.1, 0.2])), ValueError,
                            "Tensor lr must be 1-element"),
        ErrorOptimizerInput("beta0_is_1", dict(betas=(1.0, 0.999)), ValueError,
                            "Invalid beta parameter at index 0: 1.0"),
        ErrorOptimizerInput("beta0_negative", dict(betas=(-0.1, 0.999)), ValueError,
                            "Invalid beta parameter at index 0"),
        ErrorOptimizerInput("beta1_is_1", dict(betas=(0.9, 1.0)), ValueError,
                            "Invalid beta parameter at index 1: 1.0"),
        ErrorOptimizerInput("negative_eps", dict(eps=-1e-8), ValueError, "Invalid epsilon value"),
        ErrorOptimizerInput("negative_weight_decay", dict(weight_decay=-0.1), ValueError,
                            "Invalid weight_decay value: -0.1"),
        ErrorOptimizerInput("encoder_every0", dict(encoder_every=0), ValueError, "Invalid encoder_every: 0"),
        ErrorOptimizerInput("encoder_every_float", dict(encoder_every=2.5), ValueError,
                            "Invalid encoder_every: 2.5"),
        ErrorOptimizerInput("on_unsupported_bogus", dict(on_unsupported="bogus"), ValueError,
                            "Invalid on_unsupported: 'bogus'"),
        ErrorOptimizerInput("empty_params", {}, ValueError, "optimizer got an empty parameter list",
                            make_params=lambda: []),
        ErrorOptimizerInput("params_not_iterable_of_tensors", {}, TypeError, "Tensor",
                            make_params=lambda: [1.0, 2.0]),
    ]


optim_db: list[OptimizerInfo] = [
    OptimizerInfo(
        NeuralGraphOptimizer, optim_inputs_ngo, optim_error_inputs_ngo,
        reference=lambda params, **kw: torch.optim.Adam(params, lr=1e-3, **kw),
    ),
]


def _params(items, id_of) -> list:
    return [pytest.param(info, x, id=f"{info.optim_cls.__name__}-{id_of(x)}") for info in optim_db
            for x in items(info)]


def optim_inputs() -> list:
    """``pytest.param(info, OptimizerInput)`` over every valid configuration of every optimizer."""
    return _params(lambda info: info.optim_inputs_func(), lambda x: x.desc)


def optim_error_inputs() -> list:
    """``pytest.param(info, ErrorOptimizerInput)`` over every invalid configuration."""
    return _params(lambda info: info.optim_error_inputs_func(), lambda x: x.desc)


# --------------------------------------------------------------------------- tiny models and data
def tiny_mlp(seed: int = 0, dtype: torch.dtype = torch.float32, sizes=(4, 16, 1)) -> nn.Sequential:
    """Linear/Tanh chain (registration order is a feed-forward chain: ``graph_from_parameters`` works)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i:
                layers.append(nn.Tanh())
            layers.append(nn.Linear(a, b))
        return nn.Sequential(*layers).to(dtype)


def regression_data(seed: int = 0, n: int = 64, d_in: int = 4, d_out: int = 1,
                    dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Inputs and targets of a fixed random teacher (a smooth function the tiny MLP can fit)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d_in, d_out, generator=g)
    y = torch.sin(x @ w) + 0.5 * (x @ w)
    return x.to(dtype), y.to(dtype)


def mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return (model(x) - y).float().square().mean()


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int) -> list[float]:
    """``steps`` full-batch steps; returns the loss before each step."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = mse(model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def snapshot(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def state_snapshot(opt: torch.optim.Optimizer) -> dict:
    """A deep copy of ``opt.state_dict()`` (tensors cloned)."""
    return copy.deepcopy(opt.state_dict())


def assert_tree_equal(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested dicts/lists/tuples of tensors and plain values (tensors: ``torch.equal``
    and same dtype)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        assert isinstance(a, Tensor) and isinstance(b, Tensor), f"{path}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} vs {b.dtype}"
        assert torch.equal(a, b), f"{path}: tensors differ (max abs diff {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_tree_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (u, v) in enumerate(zip(a, b)):
            assert_tree_equal(u, v, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def assert_params_equal(xs, ys) -> None:
    xs, ys = list(xs), list(ys)
    assert len(xs) == len(ys)
    for i, (a, b) in enumerate(zip(xs, ys)):
        assert torch.equal(a.detach(), b.detach()), f"parameter {i} differs by {(a - b).abs().max().item()}"
