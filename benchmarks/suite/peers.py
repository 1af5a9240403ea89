"""The optimizers of the vs-Adam suite: NGO, Adam (default, tuned, warmup + cosine), and the tuning-free peers.

Each entry of :data:`PEERS` says how to build the optimizer for a model, whether its lr is tuned, and which
PyPI package it needs. The peers' packages are the ``bench`` extra (``pip install -e ".[bench]"``); an
optimizer whose package is missing is skipped with a message (:func:`missing`), never an error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lopt_graphs import NeuralGraphOptimizer

__all__ = ["FlatMuon", "MuonAdam", "PEERS", "Peer", "build", "hyper", "missing", "ngo_kwargs", "peer_versions", "warmup_cosine"]


@dataclass(frozen=True)
class Peer:
    """One optimizer of the suite.

    Attributes:
        label: name in tables and plots.
        kind: what is built (runs of equal ``kind``, lr and seed are the same run and are reused).
        tuned: the lr is chosen on the tuning seed from the config's grid (``lr_grid``).
        lr: the fixed lr of an untuned optimizer (``None``: the config's ``ngo_lr``).
        package: the PyPI import name it needs (``None``: torch or this project).
        lr_grid: config key of the grid a tuned optimizer searches.
    """

    label: str
    kind: str
    tuned: bool = False
    lr: float | None = None
    package: str | None = None
    lr_grid: str = "adam_lrs"


PEERS: dict[str, Peer] = {
    "ngo": Peer("NGO (learned)", "ngo"),
    "adam": Peer("Adam lr=1e-3", "adam", lr=1e-3),
    "adam_tuned": Peer("Adam (tuned lr)", "adam", tuned=True),
    "adam_cosine_tuned": Peer("Adam warmup+cosine (tuned lr)", "adam_cosine", tuned=True),
    "sf_adamw": Peer("Schedule-free AdamW lr=2.5e-3", "sf_adamw", lr=2.5e-3, package="schedulefree"),
    "sf_adamw_tuned": Peer("Schedule-free AdamW (tuned lr)", "sf_adamw", tuned=True, package="schedulefree"),
    "prodigy": Peer("Prodigy lr=1", "prodigy", lr=1.0, package="prodigyopt"),
    "dadapt_adam": Peer("D-Adaptation Adam lr=1", "dadapt_adam", lr=1.0, package="dadaptation"),
    "adamw_tuned": Peer("AdamW (tuned lr)", "adamw", tuned=True),
    "sgd_tuned": Peer("SGD+momentum (tuned lr)", "sgd", tuned=True, lr_grid="sgd_lrs"),
    "muon_tuned": Peer("Muon on 2-D weights + Adam (tuned lr)", "muon", tuned=True),
    "muon_cosine_tuned": Peer("Muon + Adam warmup+cosine (tuned lr)", "muon_cosine", tuned=True),
    "muon_conv_tuned": Peer("Muon on 2-D weights and convolutions + Adam (tuned lr)", "muon_conv", tuned=True),
    "muon_conv_cosine_tuned": Peer("Muon incl. convolutions + Adam warmup+cosine (tuned lr)", "muon_conv_cosine",
                                   tuned=True),
}


def missing(name: str) -> str | None:
    """``None`` if optimizer ``name`` can run here, else the reason it is skipped (its package is missing)."""
    pkg = PEERS[name].package
    if pkg is None:
        return None
    try:
        importlib.import_module(pkg)
    except ImportError as exc:
        return f"skipped: {PEERS[name].label} needs {pkg}, which is not installed ({exc}); pip install -e \".[bench]\""
    return None


def peer_versions(names: list[str]) -> dict[str, str | None]:
    """Installed version of each package the optimizers ``names`` need."""
    out: dict[str, str | None] = {}
    for pkg in sorted({PEERS[n].package for n in names if PEERS[n].package}):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _evaluate(closure: Callable[[], Any] | None) -> Any:
    """An optimizer ``step``'s closure, evaluated with gradients on (``None`` without one)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class FlatMuon(torch.optim.Optimizer):
    """Muon's update for convolution kernels, which ``torch.optim.Muon`` does not take: each kernel ``[out, in,
    k...]`` as the ``[out, in * k...]`` matrix it flattens to, with ``torch.optim.Muon``'s rule otherwise (momentum
    buffer ``buf.lerp_(grad, 1 - momentum)``, Nesterov ``grad.lerp(buf, momentum)``, 5 Newton-Schulz iterations of
    the same coefficients, step ``lr * 0.2 * sqrt(max(rows, cols))``: ``adjust_lr_fn="match_rms_adamw"``), no weight
    decay. It iterates in float32 where ``torch.optim.Muon`` iterates in bfloat16 (a test holds the two within 3%
    in norm)."""

    def __init__(self, params: Any, lr: float, momentum: float = 0.95) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"FlatMuon takes parameters of 2 or more dimensions, got shape {tuple(p.shape)} "
                                     "(give biases and norm parameters to Adam)")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        from lopt_graphs.optim.functional import orthogonalize

        loss = _evaluate(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.reshape(p.shape[0], -1)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(g))
                buf.lerp_(g, 1 - group["momentum"])
                update = orthogonalize(g.lerp(buf, group["momentum"]))
                p.add_(update.view_as(p), alpha=-group["lr"] * 0.2 * math.sqrt(max(g.shape)))
        return loss


class MuonAdam(torch.optim.Optimizer):
    """``torch.optim.Muon`` on a model's 2-D weights (``Linear`` matrices) and Adam on every other parameter
    (biases, norm parameters, and convolution kernels unless ``conv``), at one lr: Muon with
    ``adjust_lr_fn="match_rms_adamw"`` scales its orthogonalized update to Adam's RMS, so the Adam lr grid serves
    both. ``conv=True`` gives convolution kernels Muon's update too (:class:`FlatMuon`, on their flattened
    matrices). No weight decay (the suite's Adam has none). ``param_groups`` are the inner optimizers' own groups,
    so LR schedulers act on all; ``state_dict`` holds all.
    """

    def __init__(self, params: Any, lr: float, conv: bool = False) -> None:
        params = list(params)
        mats = [p for p in params if p.ndim == 2]
        kernels = [p for p in params if p.ndim > 2] if conv else []
        rest = [p for p in params if p.ndim < 2 or (p.ndim > 2 and not conv)]
        super().__init__(params, {"lr": lr})
        self.optimizers = (([torch.optim.Muon(mats, lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")]
                            if mats else []) + ([FlatMuon(kernels, lr=lr)] if kernels else [])
                           + ([torch.optim.Adam(rest, lr=lr)] if rest else []))
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _evaluate(closure)
        for o in self.optimizers:
            o.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for o, sd in zip(self.optimizers, state_dict["optimizers"], strict=True):
            o.load_state_dict(sd)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]


def warmup_cosine(steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LambdaLR factor: linear warmup over ``max(1, round(warmup_fraction * steps))`` steps (step ``k`` of the
    warmup uses ``(k + 1) / warmup``), then a cosine from 1 to 0 over the remaining steps."""
    warm = max(1, round(warmup_fraction * steps))
    rest = max(1, steps - warm)

    def factor(k: int) -> float:
        if k < warm:
            return (k + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(k - warm, rest) / rest))

    return factor


def ngo_kwargs(steps: int, cfg: Any = None) -> dict[str, Any]:
    """``{"total_steps": steps}`` when this ``NeuralGraphOptimizer`` takes ``total_steps`` (and the suite's
    ``ngo_total_steps`` is on), else ``{}``."""
    if cfg is not None and not cfg.ngo_total_steps:
        return {}
    return {"total_steps": steps} if "total_steps" in inspect.signature(NeuralGraphOptimizer).parameters else {}


def build(kind: str, lr: float, steps: int, cfg: Any, learned: Any = None
          ) -> Callable[[nn.Module], torch.optim.Optimizer | tuple]:
    """The ``make_opt(model)`` of :func:`lopt_graphs.evaluation.train_run` for one optimizer kind.

    Args:
        kind: a :attr:`Peer.kind`.
        lr: its learning rate.
        steps: the run's length (warmup + cosine and NGO's ``total_steps`` need it).
        cfg: the suite's config (``adamw_weight_decay``, ``sgd_momentum``, ``warmup_fraction``, ``ngo_compile``,
            ``ngo_total_steps``).
        learned: NGO's learned update.
    """
    if kind == "ngo":
        extra = ngo_kwargs(steps, cfg)
        return lambda m: NeuralGraphOptimizer.for_module(m, learned, lr=lr, compile=cfg.ngo_compile, **extra)
    if kind == "adam":
        return lambda m: torch.optim.Adam(m.parameters(), lr=lr)
    if kind == "adam_cosine":
        return _scheduled(lambda m: torch.optim.Adam(m.parameters(), lr=lr), steps, cfg)
    if kind == "adamw":
        return lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=cfg.adamw_weight_decay)
    if kind == "muon":
        return lambda m: MuonAdam(m.parameters(), lr=lr)
    if kind == "muon_cosine":
        return _scheduled(lambda m: MuonAdam(m.parameters(), lr=lr), steps, cfg)
    if kind == "muon_conv":
        return lambda m: MuonAdam(m.parameters(), lr=lr, conv=True)
    if kind == "muon_conv_cosine":
        return _scheduled(lambda m: MuonAdam(m.parameters(), lr=lr, conv=True), steps, cfg)
    if kind == "sgd":
        return lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=cfg.sgd_momentum)
    if kind == "sf_adamw":  # train_run calls its train() before training and eval() for the final evaluation
        sf = importlib.import_module("schedulefree")
        return lambda m: sf.AdamWScheduleFree(m.parameters(), lr=lr)
    if kind == "prodigy":
        prodigyopt = importlib.import_module("prodigyopt")
        return lambda m: prodigyopt.Prodigy(m.parameters(), lr=lr)
    if kind == "dadapt_adam":
        dadaptation = importlib.import_module("dadaptation")
        return lambda m: dadaptation.DAdaptAdam(m.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer kind {kind!r}; expected one of {sorted({p.kind for p in PEERS.values()})}")


def _scheduled(make_opt: Callable[[nn.Module], torch.optim.Optimizer], steps: int, cfg: Any
               ) -> Callable[[nn.Module], tuple]:
    """``make_opt`` under the suite's linear warmup + cosine schedule (:func:`warmup_cosine`)."""
    def make(m: nn.Module) -> tuple:
        opt = make_opt(m)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, cfg.warmup_fraction))
    return make


def hyper(kind: str, cfg: Any) -> dict[str, Any]:
    """The non-lr hyperparameters of a kind, as recorded in the JSON."""
    if kind == "adamw":
        return {"weight_decay": cfg.adamw_weight_decay}
    if kind == "sgd":
        return {"momentum": cfg.sgd_momentum}
    schedule = ({"warmup_fraction": cfg.warmup_fraction, "schedule": "linear warmup, then cosine to 0"}
                if kind in ("adam_cosine", "muon_cosine", "muon_conv_cosine") else {})
    if kind == "adam_cosine":
        return schedule
    if kind in ("muon", "muon_cosine"):
        return {**schedule, "muon": "torch.optim.Muon on 2-D weights, momentum 0.95 (Nesterov), 5 Newton-Schulz steps, "
                        "adjust_lr_fn='match_rms_adamw', no weight decay", "other parameters": "Adam"}
    if kind in ("muon_conv", "muon_conv_cosine"):
        return {**schedule, "muon": "torch.optim.Muon on 2-D weights and its rule on convolution kernels flattened to "
                        "[out, in * k] (FlatMuon), momentum 0.95 (Nesterov), 5 Newton-Schulz steps, "
                        "adjust_lr_fn='match_rms_adamw', no weight decay", "other parameters": "Adam"}
    if kind == "ngo":
        return {"compile": cfg.ngo_compile, "total_steps": bool(ngo_kwargs(1, cfg))}
    if kind in ("sf_adamw", "prodigy", "dadapt_adam"):
        return {"other": "library defaults"}
    return {}
