"""The learned part of the optimizer: the neural-graph encoder plus a small per-entry update head.

These weights are meta-parameters (trained by ``meta_train``), not optimizer state.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from ..config import reject_unknown_keys
from ..nn import EncoderConfig, NeuralGraphEncoder

#: Per-entry input features, in order (see :func:`lopt_graphs.optim.functional.entry_features`).
FEATURES: tuple[str, ...] = ("g_adam", "m_fast", "m_adam", "m_slow", "param_rms", "g_rms")
#: Step-count features (see :func:`lopt_graphs.optim.functional.step_features`); a config with
#: ``horizon_taus`` adds one fraction-of-training feature per tau and a "horizon known" flag.
STEP_FEATURES = 3


def step_feature_count(cfg: "LearnedUpdateConfig") -> int:
    """Number of step features the config's head reads."""
    return STEP_FEATURES + (len(cfg.horizon_taus) + 1 if cfg.horizon_taus else 0)


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
        horizon_taus: fraction-of-training features ``tanh(5 (t/T - tau))`` for these ``tau`` (with a
            "horizon known" flag), read by the head and by the step-size schedule; ``()``: none (v1).
        tensor_lr: a learned per-tensor log step size (v2): an invariant readout of the encoder's node
            embeddings of the tensor's neurons (cached between encoder runs) plus a learned schedule of the
            step features, softly bounded: ``sigma = lr_bound * tanh((readout + schedule) / lr_bound)``.
        lr_bound: the soft bound of the per-tensor log step (``tensor_lr``).
        lr_init: the initial log step (the schedule's bias): a fresh v2 update is Adam with step
            ``base_lr * e**lr_init``.
        readout_bound: ``> 0`` bounds the readout's share of the per-tensor log step softly,
            ``readout_bound * tanh(readout / readout_bound)``, so a model far larger than those meta-training
            saw (whose node embeddings the readout extrapolates) gets at most ``e**readout_bound`` times the
            schedule's step; ``0``: unbounded (checkpoints from before the bound).
        readout_bound_up: ``> 0`` bounds the readout's upward share separately (``readout_bound`` then bounds
            only the downward one): a readout may lower a tensor's step further than it may raise it, as a too
            large step on an unseen model diverges where a too small one only slows; ``0``: ``readout_bound``
            both ways. Needs ``readout_bound > 0``.
        use_graph: ``False`` drops the encoder (the "FF" ablation: a per-parameter learned optimizer whose
            head sees no neuron context; node terms are learned per-kind constants).
        size_ref: the size prior's reference, in parameters: on a model of ``N > size_ref`` parameters the
            optimizer multiplies its ``lr`` by ``(N / size_ref) ** -size_power`` (a model far larger than
            meta-training's wants smaller steps than the learned update extrapolates to; measured by
            ``lopt-step-scale``); ``0``: no size prior.
        size_power: the exponent of the size prior (``>= 0``; needs ``size_ref > 0`` when ``> 0``).
        untold_readout: a second readout of the per-tensor step (``lr_readout_untold``, the same inputs, bounded
            as the first, plus an unbounded shift ``lr_untold_shift``) that replaces ``lr_readout`` in runs not
            told their horizon (``total_steps=None``): the step level a tensor wants differs between a run with
            a learned decay and one without (``lopt-calibrate horizon=untold`` fits it). Needs ``tensor_lr``,
            ``use_graph`` and ``horizon_taus``.
        fan_in_power: a fan-in prior on the per-tensor log step (``tensor_lr``): a weight whose neurons each
            read ``fan_in`` inputs (input channels times kernel entries) adds ``-fan_in_power * log(fan_in /
            fan_in_ref)`` to its log step inside the soft bound ``lr_bound``, so wide-input layers take smaller
            steps and narrow ones (a first convolution) larger, as ``1 / sqrt(fan_in)`` at ``0.5``: the readout
            of the encoder's mean node embeddings does not see a tensor's fan-in (``lopt-derive fan_in_prior=``
            writes one; ``benchmarks/results/fan_in_prior/`` measures it). Biases, norm parameters, graph-free
            and transposed weights (an ``Embedding``'s one-hot inputs have no fan-in in this sense) get none.
            ``0``: no prior.
        fan_in_ref: the fan-in at which the prior is 0 (``> 0``).
        orthogonal: the direction of each 2-D weight matrix (a ``Linear``'s, stored ``[out, in]``) is its
            bias-corrected Adam momentum orthogonalized by 5 Newton-Schulz iterations (as Muon does), rescaled
            to the RMS of the Adam direction it replaces, so the learned per-tensor step keeps its meaning;
            biases, norm parameters, embeddings, graph-free parameters and (unless ``orthogonal_conv``)
            convolutions keep Adam's direction (``lopt-derive orthogonal=true`` writes it; the default checkpoint
            has it). The optimizer's fast step computes the direction before its usual pass (its encoder steps
            take the reference path).
        orthogonal_conv: with ``orthogonal``, convolution kernels (stored ``[out, in, k...]``) are orthogonalized
            too, as the ``[out, in * k...]`` matrix each flattens to (Muon's usual treatment of convolutions).
            Needs ``orthogonal``. Its Newton-Schulz iterations cost ``~out^2 * in * k`` per kernel per step,
            which would dominate a large CNN's step on CPU; kernels that feed a BatchNorm (as in a ResNet) take
            the optimizer's base step and spend none.
        untold_horizon: an assumed horizon for runs not told theirs (``total_steps=None``): at step ``t`` such a
            run steps as a told run of ``t + untold_horizon`` steps would (the fraction-of-training features at
            ``t / (t + untold_horizon)``, the told readout), so its step decays the longer it trains, as the
            learned schedule does towards the end of a told run, without ever reaching the told end of training
            (half way at ``t = untold_horizon``, 0.9 at nine times it). Replaces the untold readout when set.
            Needs ``tensor_lr`` and ``horizon_taus``. ``0``: no assumed horizon (untold runs read the schedule's
            step-count features only).
        untold_growth: with ``untold_horizon``, an untold run that has taken ``t`` steps assumes at least
            ``untold_growth * t`` more: at step ``t`` it steps as a told run of ``t + max(untold_horizon,
            untold_growth * t)`` steps, as before up to ``t = untold_horizon / untold_growth``, and from there at
            the fixed fraction of training ``1 / (1 + untold_growth)`` instead of running on to the told end.
            ``0``: the horizon ``t + untold_horizon``.
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
    horizon_taus: tuple[float, ...] = ()
    tensor_lr: bool = False
    lr_bound: float = 4.0
    lr_init: float = 0.0
    readout_bound: float = 0.0
    readout_bound_up: float = 0.0
    use_graph: bool = True
    size_ref: int = 0
    size_power: float = 0.0
    untold_readout: bool = False
    fan_in_power: float = 0.0
    fan_in_ref: float = 64.0
    orthogonal: bool = False
    orthogonal_conv: bool = False
    untold_horizon: float = 0.0
    untold_growth: float = 0.0

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
        if not self.lr_bound > 0:
            raise ValueError(f"Invalid lr_bound: {self.lr_bound} (expected > 0)")
        if not (math.isfinite(self.readout_bound) and self.readout_bound >= 0):
            raise ValueError(f"Invalid readout_bound: {self.readout_bound} (expected a finite float >= 0; 0 leaves "
                             "the readout unbounded)")
        if not (math.isfinite(self.readout_bound_up) and self.readout_bound_up >= 0):
            raise ValueError(f"Invalid readout_bound_up: {self.readout_bound_up} (expected a finite float >= 0; 0 "
                             "uses readout_bound both ways)")
        if isinstance(self.size_ref, bool) or not isinstance(self.size_ref, int) or self.size_ref < 0:
            raise ValueError(f"Invalid size_ref: {self.size_ref!r} (expected an int >= 0, a number of parameters; 0: "
                             "no size prior)")
        if not (math.isfinite(self.size_power) and self.size_power >= 0):
            raise ValueError(f"Invalid size_power: {self.size_power} (expected a finite float >= 0)")
        if self.untold_readout and not (self.tensor_lr and self.use_graph and self.horizon_taus):
            raise ValueError("untold_readout=True needs tensor_lr=True, use_graph=True and horizon_taus (a readout of "
                             "the graph encoder, and horizon features that tell told runs from untold ones)")
        if self.size_power > 0 and self.size_ref == 0:
            raise ValueError(f"size_power={self.size_power} needs a size_ref > 0 (the model size it applies above)")
        if not (math.isfinite(self.fan_in_power) and self.fan_in_power >= 0):
            raise ValueError(f"Invalid fan_in_power: {self.fan_in_power} (expected a finite float >= 0; 0: no fan-in "
                             "prior)")
        if not (math.isfinite(self.fan_in_ref) and self.fan_in_ref > 0):
            raise ValueError(f"Invalid fan_in_ref: {self.fan_in_ref} (expected a finite float > 0, a fan-in)")
        if self.orthogonal_conv and not self.orthogonal:
            raise ValueError("orthogonal_conv=True needs orthogonal=True (convolutions are orthogonalized on top of "
                             "the linear layers' orthogonalized direction)")
        if not (math.isfinite(self.untold_horizon) and self.untold_horizon >= 0):
            raise ValueError(f"Invalid untold_horizon: {self.untold_horizon} (expected a finite float >= 0, in steps; "
                             "0: no assumed horizon)")
        if self.untold_horizon > 0 and not (self.tensor_lr and self.horizon_taus):
            raise ValueError(f"untold_horizon={self.untold_horizon} needs tensor_lr=True and horizon_taus (it feeds "
                             "an assumed fraction of training to the learned schedule)")
        if not (math.isfinite(self.untold_growth) and self.untold_growth >= 0):
            raise ValueError(f"Invalid untold_growth: {self.untold_growth} (expected a finite float >= 0: the least "
                             "remaining steps an untold run assumes per step taken)")
        if self.untold_growth > 0 and self.untold_horizon == 0:
            raise ValueError(f"untold_growth={self.untold_growth} needs an untold_horizon > 0 (the assumed horizon "
                             "t + max(untold_horizon, untold_growth * t))")
        if self.fan_in_power > 0 and not self.tensor_lr:
            raise ValueError(f"fan_in_power={self.fan_in_power} needs tensor_lr=True (it shifts the per-tensor log "
                             "step)")
        if self.readout_bound_up > 0 and self.readout_bound == 0:
            raise ValueError(f"readout_bound_up={self.readout_bound_up} needs a readout_bound > 0 (the downward "
                             "bound); an unbounded readout has no upward bound either")

    def size_factor(self, num_params: int) -> float:
        """The size prior's ``lr`` multiplier on a model of ``num_params`` parameters: ``(N / size_ref) **
        -size_power`` above ``size_ref``, else 1 (and 1 without a size prior)."""
        if self.size_ref == 0 or num_params <= self.size_ref:
            return 1.0
        return (num_params / self.size_ref) ** -self.size_power

    def fan_in_shift(self, fan_in: int) -> float:
        """The fan-in prior's share of a weight's per-tensor log step: ``-fan_in_power * log(fan_in /
        fan_in_ref)`` (0 without a prior)."""
        if self.fan_in_power == 0:
            return 0.0
        return -self.fan_in_power * math.log(max(fan_in, 1) / self.fan_in_ref)

    @property
    def readout_bounds(self) -> tuple[float, float] | None:
        """``(downward, upward)`` soft bounds of the readout's share of the log step (``readout_bound_up`` defaults
        to ``readout_bound``); ``None`` when the readout is unbounded."""
        lo = self.readout_bound
        return None if lo <= 0 else (lo, self.readout_bound_up or lo)

    def bound_readout(self, r: Tensor) -> Tensor:
        """The readout's share of the per-tensor log step for the readout's raw output ``r``: softly bounded by
        :attr:`readout_bounds`; ``r`` itself when unbounded. Smooth, with slope 1 at 0."""
        if self.readout_bounds is None:
            return r
        lo, hi = self.readout_bounds
        if hi == lo:
            return lo * torch.tanh(r / lo)
        return torch.where(r > 0, hi * torch.tanh(r / hi), lo * torch.tanh(r / lo))

    def unbound_readout(self, ctx: Tensor) -> Tensor:
        """The inverse of :meth:`bound_readout` (``ctx`` strictly inside the bounds)."""
        if self.readout_bounds is None:
            return ctx
        lo, hi = self.readout_bounds
        return torch.where(ctx > 0, hi * torch.atanh(ctx / hi), lo * torch.atanh(ctx / lo))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["momenta"] = list(self.momenta)
        d["horizon_taus"] = list(self.horizon_taus)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LearnedUpdateConfig":
        """Build from a dict (as stored in checkpoints); unknown keys are an error."""
        reject_unknown_keys(cls, d, "learned-update")
        d = dict(d)
        if "encoder" in d and isinstance(d["encoder"], dict):
            d["encoder"] = EncoderConfig.from_dict(d["encoder"])
        for key in ("momenta", "horizon_taus"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def v2_config(use_graph: bool = True, lr_bound: float = 4.0, readout_bound: float = 0.0) -> LearnedUpdateConfig:
    """The recipe-v2 learned update: horizon features, a learned per-tensor step size and schedule, a small
    learned log-magnitude (``mag_scale`` 0.05, so the hard ``mag_clip`` of 5 sits 100 head units away) and
    a narrower encoder (hidden 16) than v1; starts as Adam with step ``0.01`` (``lr_init`` is set so that
    ``base_lr * exp(lr_bound * tanh(lr_init / lr_bound)) = 0.01``). ``lr_bound`` is the soft bound of the
    per-tensor log step: steps stay below ``base_lr * e**lr_bound`` (0.055 at 4, 0.148 at 5); ``readout_bound``
    bounds the encoder readout's factor on a tensor's step to ``e**+-readout_bound`` (``0``: unbounded)."""
    enc = EncoderConfig(node_in=len(FEATURES), edge_in=len(FEATURES), hidden=16, edge_hidden=8, layers=2,
                        max_positions=64, position_overflow="wrap", max_kernel=16, entry_nonlinearity=False)
    return LearnedUpdateConfig(encoder=enc, head_hidden=4, base_lr=1e-3, mag_scale=0.05, mag_clip=5.0,
                               dir_scale=0.1, encoder_every=100, horizon_taus=(0.1, 0.3, 0.5, 0.7, 0.9),
                               tensor_lr=True, lr_bound=lr_bound,
                               lr_init=lr_bound * math.atanh(math.log(10.0) / lr_bound), readout_bound=readout_bound,
                               use_graph=use_graph)


def warmup_cosine(peak: float, warmup: float = 0.05, final: float = 0.02) -> Callable[[Tensor], Tensor]:
    """The step size as a function of the fraction of training ``f`` in [0, 1]: a linear warmup over the
    first ``warmup`` of training (from ``peak / 6``), then a cosine decay from ``peak`` to ``final * peak``."""
    if not (peak > 0 and 0 <= warmup < 1 and 0 < final <= 1):
        raise ValueError(f"Invalid warmup-cosine schedule: peak={peak}, warmup={warmup}, final={final} "
                         "(expected peak > 0, 0 <= warmup < 1, 0 < final <= 1)")

    def lr(f: Tensor) -> Tensor:
        ramp = (f + warmup / 5) / (warmup + warmup / 5) if warmup > 0 else torch.ones_like(f)
        decay = ((f - warmup) / (1 - warmup)).clamp(0, 1)
        cos = final + (1 - final) * 0.5 * (1 + torch.cos(math.pi * decay))
        return peak * torch.where(f < warmup, ramp, cos)
    return lr


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
        h, f, ns = cfg.head_hidden, len(FEATURES), step_feature_count(cfg)
        d = cfg.encoder.hidden
        if cfg.use_graph:
            self.encoder = NeuralGraphEncoder(cfg.encoder)
            self.ctx_dst = nn.Linear(d, h)   # node term of the neuron a weight feeds
            self.ctx_src = nn.Linear(d, h, bias=False)  # node term of the neuron a weight reads
            self.ctx_node = nn.Linear(d, h)  # node term of a bias / norm parameter
        else:  # FF ablation: per-kind constants instead of neuron context
            self.ctx_const = nn.Parameter(torch.zeros(2, h))  # [weight, bias/norm]
        self.slot_type = nn.Embedding(4, h)
        self.w1 = nn.Parameter(torch.randn(h, f) / f ** 0.5)
        self.w1_free = nn.Parameter(torch.randn(h, f) / f ** 0.5)  # graph-free parameters
        self.step_proj = nn.Linear(ns, h)
        self.w2 = nn.Parameter(torch.zeros(2, h))
        self.b2 = nn.Parameter(torch.zeros(2))
        if cfg.tensor_lr:
            # per-tensor log step: readout of [mean embedding of the rows' neurons, of the columns' neurons]
            if cfg.use_graph:
                self.lr_readout = nn.Linear(2 * d, 1)
                nn.init.zeros_(self.lr_readout.weight)
                nn.init.zeros_(self.lr_readout.bias)
                if cfg.untold_readout:  # runs without total_steps read this one instead
                    self._build_untold_readout(2 * d)
            self.lr_sched = nn.Linear(ns, 1)  # global schedule over the step / horizon features
            nn.init.zeros_(self.lr_sched.weight)
            nn.init.constant_(self.lr_sched.bias, cfg.lr_init)

    def head_weights(self, free: bool = False) -> "HeadWeights":
        """The tensors the per-entry head reads (graph or graph-free input layer)."""
        cfg = self.cfg
        sched = (self.lr_sched.weight[0], self.lr_sched.bias[0]) if cfg.tensor_lr else (None, None)
        return HeadWeights(self.w1_free if free else self.w1, self.w2, self.b2, self.step_proj.weight,
                           self.step_proj.bias, cfg.mag_scale, cfg.dir_scale, cfg.mag_clip, *sched,
                           cfg.lr_bound, cfg.horizon_taus, float(cfg.untold_horizon),
                           float(cfg.untold_growth))

    @torch.no_grad()
    def fit_schedule_(self, lr_of_fraction: Callable[[Tensor], Tensor], points: int = 201) -> "LearnedUpdate":
        """Set the learned step-size schedule (``tensor_lr``) so that, when the optimizer is told its horizon
        ``T``, the per-tensor step (at a zero readout) follows ``lr_of_fraction(t / T)`` as closely as the
        fraction-of-training features allow (least squares in the schedule's pre-bound space; the weights of
        the step-count features are set to zero, so the fit is the same for every ``T``). The schedule without
        a horizon (its bias: ``lr_init``) is unchanged. A prior for meta-training to refine: for example
        :func:`warmup_cosine`. Returns ``self``.

        Raises:
            ValueError: if the update has no learned schedule (``tensor_lr=False``) or no horizon features.
        """
        cfg = self.cfg
        if not (cfg.tensor_lr and cfg.horizon_taus):
            raise ValueError("fit_schedule_ needs a learned update with tensor_lr=True and horizon_taus "
                             f"(got tensor_lr={cfg.tensor_lr}, horizon_taus={cfg.horizon_taus}); use v2_config()")
        from .functional import step_features  # functional imports this module

        total = 1000.0
        frac = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
        lim = cfg.lr_bound * (1 - 1e-3)
        sigma = torch.log(lr_of_fraction(frac) / cfg.base_lr).clamp(-lim, lim)
        target = cfg.lr_bound * torch.atanh(sigma / cfg.lr_bound) - float(self.lr_sched.bias)
        feats = torch.stack([step_features(f * total, total, cfg.horizon_taus) for f in frac])[:, STEP_FEATURES:]
        w = torch.linalg.lstsq(feats, target[:, None]).solution[:, 0]
        self.lr_sched.weight.zero_()
        self.lr_sched.weight[0, STEP_FEATURES:] = w.to(self.lr_sched.weight.dtype)
        return self

    def schedule(self, fractions: Tensor, total: int | None = 1000) -> Tensor:
        """The per-tensor step (``base_lr * e**sigma`` at a zero readout) at these fractions of a run of
        ``total`` steps (``None``: the horizon is not known); for reports and tests."""
        cfg = self.cfg
        if not cfg.tensor_lr:
            raise ValueError("schedule() needs a learned update with tensor_lr=True")
        s = self.schedule_logit(fractions.to(torch.float32) * (1000 if total is None else total), total)
        return cfg.base_lr * torch.exp(cfg.lr_bound * torch.tanh(s / cfg.lr_bound))

    def schedule_logit(self, steps: Tensor, total: int | None) -> Tensor:
        """The learned schedule's share of the per-tensor log step before its bound ``lr_bound``, at step counts
        ``steps`` of a run of ``total`` steps (``None``: the horizon is not known); detached."""
        from .functional import step_features

        if not self.cfg.tensor_lr:
            raise ValueError("schedule_logit() needs a learned update with tensor_lr=True")
        dtype = self.lr_sched.weight.dtype
        feats = torch.stack([step_features(x, total, self.cfg.horizon_taus, self.cfg.untold_horizon,
                                           self.cfg.untold_growth)
                             for x in steps.to(dtype)])
        return self.lr_sched(feats)[:, 0].detach()

    def readout_contexts(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The readouts' shares of the per-tensor log step (``tensor_lr`` with the graph) for readout inputs ``x``
        ``[..., 2 * hidden]`` (the mean embeddings of a tensor's row and column neurons), shaped ``[...]``: told
        runs' (``lr_readout``, bounded) and untold runs' (``lr_readout_untold``, bounded, plus
        ``lr_untold_shift``; ``None`` without an untold readout: untold runs read the told one)."""
        told = self.cfg.bound_readout(self.lr_readout(x)[..., 0])
        if not self.cfg.untold_readout:
            return told, None
        return told, self.cfg.bound_readout(self.lr_readout_untold(x)[..., 0]) + self.lr_untold_shift

    @torch.no_grad()
    def add_untold_readout_(self) -> "LearnedUpdate":
        """Give the update its ``untold_readout`` (in place; a copy of ``lr_readout``, so every run steps as
        before until it is fitted). Nothing to do when it has one. Returns ``self``.

        Raises:
            ValueError: for an update without a graph readout or horizon features.
        """
        if self.cfg.untold_readout:
            return self
        cfg = replace(self.cfg, untold_readout=True)  # checks the requirements
        readout = getattr(self, "lr_readout", None)
        if readout is None:
            raise ValueError("add_untold_readout_() needs a learned update with a per-tensor step readout")
        self._build_untold_readout(readout.in_features, readout.weight)
        self.lr_readout_untold.load_state_dict(readout.state_dict())
        self.cfg = cfg
        return self

    def _build_untold_readout(self, width: int, like: Tensor | None = None) -> None:
        """The untold readout ``lr_readout_untold`` (``width`` inputs, zero) and its shift ``lr_untold_shift``
        (zero), with ``like``'s dtype and device (default: the default dtype, on the CPU)."""
        kw = {} if like is None else {"dtype": like.dtype, "device": like.device}
        self.lr_readout_untold = nn.Linear(width, 1, **kw)
        nn.init.zeros_(self.lr_readout_untold.weight)
        nn.init.zeros_(self.lr_readout_untold.bias)
        self.lr_untold_shift = nn.Parameter(torch.zeros((), **kw))

    @torch.no_grad()
    def affine_log_step_(self, scale: float, shift: float) -> "LearnedUpdate":
        """Map the head's (scaled) learned log step ``u = mag_scale * o_mag`` to ``scale * u + shift`` in place
        (rescales the magnitude row of the output layer), e.g. to bring a head clipped at ``mag_clip``
        everywhere back inside the bound; the direction output is unchanged. Returns ``self``.

        Raises:
            ValueError: unless ``scale`` is finite and > 0 and ``shift`` finite.
        """
        scale, shift = float(scale), float(shift)
        if not (scale > 0 and math.isfinite(scale) and math.isfinite(shift)):
            raise ValueError(f"Invalid log-step affine map: ({scale}, {shift}) (expected a finite scale > 0 and a "
                             "finite shift)")
        self.w2[1].mul_(scale)  # u = mag_scale * (w2[1] . relu(z) + b2[1])  ->  scale * u + shift
        self.b2[1].mul_(scale).add_(shift / self.cfg.mag_scale)
        return self

    def with_config(self, **changes: Any) -> "LearnedUpdate":
        """A new update whose config is this one's with ``changes`` (checked as any config is) and whose weights
        are this one's (same dtype and device): for fields that leave the parameters as they are (``mag_clip``,
        the size prior, bounds). ``self`` is unchanged.

        Raises:
            ValueError: if a change adds or removes parameters (use :meth:`add_untold_readout_` for that one).
        """
        new = LearnedUpdate(replace(self.cfg, **changes))
        ref = next(self.parameters())
        new.to(dtype=ref.dtype, device=ref.device)
        mine, theirs = set(self.state_dict()), set(new.state_dict())
        if mine != theirs:
            raise ValueError(f"with_config({', '.join(f'{k}={v!r}' for k, v in changes.items())}) changes the "
                             f"parameters (added {sorted(theirs - mine)}, removed {sorted(mine - theirs)}): only "
                             "fields that keep them can be replaced")
        new.load_state_dict(self.state_dict())
        return new

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
    lr_w: Tensor | None = None  # the step-size schedule over the step features (tensor_lr), else None
    lr_b: Tensor | None = None
    lr_bound: float = 4.0
    taus: tuple[float, ...] = ()
    untold_horizon: float = 0.0  # LearnedUpdateConfig.untold_horizon
    untold_growth: float = 0.0  # LearnedUpdateConfig.untold_growth


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


def head_stacked(xs: list[Tensor], ctx: Tensor | float, hw: HeadWeights, step_bias: Tensor) -> tuple[Tensor, Tensor]:
    """The same maths as :func:`head`, as two small matmuls over the stacked features.

    Fewer, larger ops: faster than :func:`head` in eager mode on many small tensors and under
    ``torch.func.vmap`` (meta-training's populations), while :func:`head`'s elementwise form is what
    ``torch.compile`` fuses into one loop.

    Args:
        ctx: ``[*entries, H]`` (or broadcastable to it) hidden-unit contexts, or ``0.0``.
    """
    z = torch.stack(xs, dim=-1) @ hw.w1.t() + step_bias
    z = (z + ctx).relu()
    o = z @ hw.w2.t() + hw.b2
    return o[..., 0], o[..., 1]
