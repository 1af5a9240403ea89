"""The learned part of the optimizer: the neural-graph encoder plus a small per-entry update head.

These weights are meta-parameters (trained by ``meta_train``), not optimizer state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from ..nn import EncoderConfig, NeuralGraphEncoder

#: Per-entry input features, in order (see :func:`lopt_graphs.optim.features.entry_features`).
FEATURES: tuple[str, ...] = ("g_adam", "m_fast", "m_adam", "m_slow", "param_rms", "g_rms")
#: Step-count features (see :func:`lopt_graphs.optim.features.step_features`).
STEP_FEATURES = 3


@dataclass(frozen=True)
class LearnedUpdateConfig:
    """Architecture of the learned update.

    Attributes:
        encoder: the neural-graph encoder (its ``node_in``/``edge_in`` must equal ``len(FEATURES)``).
        head_hidden: width ``H`` of the per-entry head.
        base_lr: step size of the Adam-like base direction (the optimizer's ``lr`` multiplies it).
        mag_scale: scale of the learned log-magnitude correction.
        mag_clip: bound of the (scaled) log-magnitude correction: a step is at most ``e**mag_clip`` times the
            Adam-like step (10 lets a learned update take steps 22,000x Adam's; 4 caps it at 55x).
        dir_scale: scale of the learned additive direction.
        encoder_every: run the encoder every this many steps; between runs the per-entry head reuses the
            cached node terms (the encoder costs far more than a step on large models).
        momenta: timescales of the fast and slow momenta (the Adam momentum comes from ``betas[0]``).
    """

    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(
        node_in=len(FEATURES), edge_in=len(FEATURES), hidden=32, edge_hidden=8, layers=2, max_positions=64,
        position_overflow="wrap", max_kernel=16, entry_nonlinearity=False))
    head_hidden: int = 4
    base_lr: float = 1e-3
    mag_scale: float = 1.0
    mag_clip: float = 10.0
    dir_scale: float = 0.1
    encoder_every: int = 100
    momenta: tuple[float, float] = (0.5, 0.99)

    def __post_init__(self) -> None:
        if self.encoder.node_in != len(FEATURES) or self.encoder.edge_in != len(FEATURES):
            raise ValueError(f"The encoder must take {len(FEATURES)} features per entry ({FEATURES}), got "
                             f"node_in={self.encoder.node_in}, edge_in={self.encoder.edge_in}")
        if self.head_hidden < 1:
            raise ValueError(f"Invalid head_hidden: {self.head_hidden} (expected >= 1)")
        if self.encoder_every < 1:
            raise ValueError(f"Invalid encoder_every: {self.encoder_every} (expected >= 1)")
        if not self.mag_clip > 0:
            raise ValueError(f"Invalid mag_clip: {self.mag_clip} (expected > 0)")
        if not self.base_lr > 0:
            raise ValueError(f"Invalid base_lr: {self.base_lr} (expected > 0)")
        for b in self.momenta:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid momentum timescale: {b} (expected in [0, 1))")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["momenta"] = list(self.momenta)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LearnedUpdateConfig":
        """Build from a dict (as stored in checkpoints); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown learned-update config keys {unknown}; valid keys: {sorted(known)}")
        d = dict(d)
        if "encoder" in d and isinstance(d["encoder"], dict):
            d["encoder"] = EncoderConfig.from_dict(d["encoder"])
        if "momenta" in d:
            d["momenta"] = tuple(d["momenta"])
        return cls(**d)


class LearnedUpdate(nn.Module):
    """Encoder plus per-entry head.

    The head maps an entry's features ``x`` (``len(FEATURES)``), its context ``c`` (``H`` node terms: the
    destination and source neuron of a weight, or the neuron of a bias) and the step features ``s`` to two
    numbers ``(o_dir, o_mag)``::

        z = W1 x + c + S s,   (o_dir, o_mag) = W2 relu(z) + b2

    ``W2``/``b2`` start at zero, so a fresh ``LearnedUpdate`` makes the optimizer exactly Adam with step
    ``base_lr``; meta-training learns corrections around it.
    """

    def __init__(self, cfg: LearnedUpdateConfig | None = None):
        super().__init__()
        cfg = cfg or LearnedUpdateConfig()
        self.cfg = cfg
        h, f = cfg.head_hidden, len(FEATURES)
        self.encoder = NeuralGraphEncoder(cfg.encoder)
        d = cfg.encoder.hidden
        self.ctx_dst = nn.Linear(d, h)   # node term of the neuron a weight feeds
        self.ctx_src = nn.Linear(d, h, bias=False)  # node term of the neuron a weight reads
        self.ctx_node = nn.Linear(d, h)  # node term of a bias / norm parameter
        self.slot_type = nn.Embedding(4, h)
        self.w1 = nn.Parameter(torch.randn(h, f) / f ** 0.5)
        self.w1_free = nn.Parameter(torch.randn(h, f) / f ** 0.5)  # graph-free parameters
        self.step_proj = nn.Linear(STEP_FEATURES, h)
        self.w2 = nn.Parameter(torch.zeros(2, h))
        self.b2 = nn.Parameter(torch.zeros(2))

    def head_weights(self, free: bool = False) -> "HeadWeights":
        """The tensors the per-entry head reads (graph or graph-free input layer)."""
        return HeadWeights(self.w1_free if free else self.w1, self.w2, self.b2, self.step_proj.weight,
                           self.step_proj.bias, self.cfg.mag_scale, self.cfg.dir_scale, self.cfg.mag_clip)

    def extra_repr(self) -> str:
        return f"head_hidden={self.cfg.head_hidden}, encoder_every={self.cfg.encoder_every}"


class HeadWeights(NamedTuple):
    """The per-entry head's tensors and scales, passed as plain tensors so a compiled step guards on
    a handful of inputs instead of the whole module."""

    w1: Tensor
    w2: Tensor
    b2: Tensor
    step_w: Tensor
    step_b: Tensor
    mag_scale: float
    dir_scale: float
    mag_clip: float


def head(xs: list[Tensor], ctx: Callable[[int], Tensor | float], hw: HeadWeights,
         step_bias: Tensor) -> tuple[Tensor, Tensor]:
    """Per-entry head, as elementwise sums over hidden units (no ``[entries, H]`` temporary).

    Args:
        xs: ``len(FEATURES)`` tensors of one common shape (the entries).
        ctx: ``ctx(h)`` gives hidden unit ``h``'s context, broadcastable to the entries' shape.
        hw: the head's weights (``w1 [H, F]``, ``w2 [2, H]``, ``b2 [2]``).
        step_bias: ``[H]``.

    Returns:
        ``(o_dir, o_mag)``, each shaped like the entries.
    """
    o_dir, o_mag = hw.b2[0], hw.b2[1]
    for h in range(hw.w1.shape[0]):
        z = ctx(h) + step_bias[h]
        for f, x in enumerate(xs):
            z = z + x * hw.w1[h, f]
        z = z.relu()
        o_dir = o_dir + hw.w2[0, h] * z
        o_mag = o_mag + hw.w2[1, h] * z
    return o_dir, o_mag
