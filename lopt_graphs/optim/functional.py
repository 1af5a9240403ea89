r"""The pure update of :class:`~lopt_graphs.optim.NeuralGraphOptimizer`.

``ngo_update(learned, spec, params, grads, states, ...) -> (new_params, new_states)`` never mutates its
inputs, so it serves ``torch.func.vmap`` (a population of encoder weights, through
``torch.func.functional_call``), ``torch.func.grad`` (meta-gradients through unrolled steps), ``higher`` and
the ``Optimizer`` class alike.

Per entry of a parameter, at step :math:`t` (all features in float32):

.. math::
    m_k &\leftarrow \beta_k m_k + (1-\beta_k) g, \quad k \in \{\text{fast}, \text{adam}, \text{slow}\} \\
    v &\leftarrow \beta_2 v + (1-\beta_2) g^2, \qquad
    r = 1 / \sqrt{v / (1-\beta_2^t) + \epsilon^2} \\
    x &= \operatorname{clip}_{10}\big[g r,\ \hat m_\text{fast} r,\ \hat m_\text{adam} r,\ \hat m_\text{slow} r,\
         p / \operatorname{rms}(p),\ g / \operatorname{rms}(g)\big] \\
    c &= \text{node terms of the entry's neurons, from the encoder run on the graph of } x \\
    (o_d, o_m) &= W_2 \operatorname{relu}(W_1 x + c + S\,s(t) + b_1) + b_2 \\
    p &\leftarrow p (1 - \eta\,\lambda) - \eta \left(\hat m_\text{adam} r\, e^{\,\operatorname{clip}(\kappa_m o_m,\ \pm \mu)}
                                                   + \kappa_d o_d\right), \qquad \eta = \text{lr}\cdot\text{base\_lr}

with :math:`\hat m = m / (1 - \beta^t)` and :math:`\mu` = ``mag_clip``. The encoder runs at steps 1, 2, 4, 8, ... and then every
``encoder_every`` steps (:func:`encoder_due`); in between, the cached node terms :math:`c` are reused (they
are part of the optimizer state). The head is written as sums of elementwise products over its ``H`` hidden
units: no ``[entries, H]`` temporary is formed, which is faster on CPU than a thin matmul.
"""

from __future__ import annotations

import math
import os
from typing import Any, Collection, Sequence

import torch
from torch import Tensor

from ..graph import GraphSpec
from ..graph.coarsen import encoder_graph
from ..graph.spec import ParamSlot
from .learned import FEATURES, HeadWeights, LearnedUpdate, LearnedUpdateConfig, head, head_stacked

FEATURE_CLIP = 10.0


def compute_dtype(p: Tensor) -> torch.dtype:
    """float32 for float32/16/bfloat16 parameters, float64 for float64 ones."""
    return torch.promote_types(p.dtype, torch.float32)


def init_state(p: Tensor) -> dict[str, Tensor]:
    """Fresh per-parameter state (moments in :func:`compute_dtype`, a float ``step`` tensor like Adam's)."""
    z = lambda: torch.zeros(p.shape, dtype=compute_dtype(p), device=p.device)  # noqa: E731
    return {"step": torch.zeros((), dtype=torch.float32, device=p.device),
            "m_fast": z(), "m_adam": z(), "m_slow": z(), "v": z()}


def horizon(t: Tensor | float, total: float | None, untold_horizon: float = 0.0,
            untold_growth: float = 0.0) -> Tensor | float | None:
    """The horizon step ``t``'s features read: ``total`` when told, else the assumed ``t + max(untold_horizon,
    untold_growth * t)`` (``LearnedUpdateConfig.untold_horizon``, ``untold_growth``), else ``None`` (unknown)."""
    if total is None and untold_horizon:
        if untold_growth:
            rest = untold_growth * t
            rest = rest.clamp(min=untold_horizon) if torch.is_tensor(rest) else max(rest, untold_horizon)
            return t + rest
        return t + untold_horizon
    return total


def assumed_horizon_text(untold_horizon: float, untold_growth: float = 0.0) -> str:
    """The assumed untold horizon :func:`horizon` uses, as text: ``"t + T0"`` or ``"t + max(T0, G t)"``."""
    rest = f"max({untold_horizon:g}, {untold_growth:g} t)" if untold_growth else f"{untold_horizon:g}"
    return f"t + {rest}"


def step_features(t: Tensor, total: float | None = None, taus: tuple[float, ...] = (),
                  untold_horizon: float = 0.0, untold_growth: float = 0.0) -> Tensor:
    """Features of the step count ``t`` (a float tensor): ``[3]``, and with ``taus`` also
    ``tanh(5 (t / total - tau))`` per tau and a flag that the horizon ``total`` is known (all zero when
    ``total`` is ``None``): ``[3 + len(taus) + 1]``. ``untold_horizon > 0`` (``LearnedUpdateConfig``) stands in
    for an unknown ``total`` with the assumed horizon ``t + max(untold_horizon, untold_growth * t)``, as a told
    run's features."""
    base = [torch.log1p(t) / 10.0, torch.tanh(t / 100.0), torch.tanh(t / 10000.0)]
    if taus:
        total = horizon(t, None if total is None else float(total), untold_horizon, untold_growth)
        if total is None:
            base += [t * 0.0 for _ in range(len(taus) + 1)]
        else:
            base += [torch.tanh(5.0 * (t / total - tau)) for tau in taus] + [t * 0.0 + 1.0]
    return torch.stack(base)


def _rms(x: Tensor) -> Tensor:
    return x.square().mean().add(1e-12).sqrt()


#: Newton-Schulz coefficients of the quintic iteration that pushes every singular value towards 1 (Muon's).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(m: Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> Tensor:
    """An approximately orthogonal matrix with ``m``'s singular vectors (``U V^T`` of its SVD): ``steps``
    quintic Newton-Schulz iterations on ``m / ||m||_F``, in ``dtype`` (default: ``m``'s), returned in ``m``'s
    dtype; a zero matrix stays zero."""
    a, b, c = NS_COEFFS
    x = m / (m.norm() + 1e-7)
    if dtype is not None:
        x = x.to(dtype)
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.t()
    for _ in range(steps):  # x <- a x + (b s + c s^2) x with s = x x^T, in two fused multiply-adds
        s = x @ x.t()
        x = torch.addmm(x, torch.addmm(s, s, s, beta=b, alpha=c), x, beta=a)
    x = x.to(m.dtype)
    return x if wide else x.t()


#: the smallest matrix, in multiply-adds of one ``x x^T`` product (``min(rows, cols)^2 * max(rows, cols)``), whose
#: Newton-Schulz iterations ``auto_orthogonal_dtype`` runs in bfloat16 on an AMX CPU: below it oneDNN's bfloat16
#: set-up costs more than it saves (measured on this project's CPU: 128x256 1.15x faster, 64x784 0.81x, 64x64 0.28x)
AUTO_BF16_MIN_WORK = 4_000_000


def auto_orthogonal_dtype(device: torch.device | str, shape: Sequence[int] | None = None) -> torch.dtype:
    """The dtype the Newton-Schulz iterations of a matrix of ``shape`` (a kernel's: its flattened ``[out, in * k]``
    one; ``None``: a large one) run fastest in on ``device``: bfloat16 on CUDA devices that support it and, for
    matrices of at least ``AUTO_BF16_MIN_WORK``, on CPUs with AMX tiles (3.5x faster than float32 at 256x784);
    float32 elsewhere (on a CPU without AMX, bfloat16 matrix products are 1.5x (AVX-512 BF16) to 30x (AVX2) slower:
    ``benchmarks/newton_schulz_cost.py`` with ``ONEDNN_MAX_CPU_ISA``, which this also reads)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type != "cpu":
        return torch.float32
    if shape is not None:
        rows, cols = shape[0], math.prod(shape[1:])
        if min(rows, cols) ** 2 * max(rows, cols) < AUTO_BF16_MIN_WORK:
            return torch.float32
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()  # oneDNN told not to use AMX: it does not
    limited = isa not in ("", "ALL", "DEFAULT") and "AMX" not in isa
    return torch.bfloat16 if amx is not None and amx() and not limited else torch.float32


#: ``orthogonal_dtype`` settings by name (what command lines such as ``lopt-step-cost`` and ``lopt-meta-progress`` take)
ORTHOGONAL_DTYPE_NAMES: dict[str, torch.dtype | str] = {"auto": "auto", "float32": torch.float32,
                                                        "bfloat16": torch.bfloat16}


def resolve_orthogonal_dtype(setting: torch.dtype | str | None, p: Tensor) -> torch.dtype:
    """The dtype ``p``'s Newton-Schulz iterations run in under an ``orthogonal_dtype`` setting: ``"auto"``:
    :func:`auto_orthogonal_dtype` of its device and shape; ``None``: its :func:`compute_dtype`; a dtype: itself."""
    if setting == "auto":
        return auto_orthogonal_dtype(p.device, p.shape)
    return compute_dtype(p) if setting is None else setting


def orthogonal_direction(m_hat: Tensor, adam_dir: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The orthogonalized momentum ``m_hat`` at the RMS of ``adam_dir``, the direction it replaces
    (:attr:`~lopt_graphs.optim.learned.LearnedUpdateConfig.orthogonal`): a 2-D weight's as it is, a convolution
    kernel's ``[out, in, k...]`` as the ``[out, in * k...]`` matrix it flattens to; the iterations in ``dtype``
    (``None``: ``m_hat``'s; :func:`auto_orthogonal_dtype`)."""
    o = orthogonalize(m_hat.reshape(m_hat.shape[0], -1), dtype=dtype).reshape(m_hat.shape)
    return o * (_rms(adam_dir) / (_rms(o) + 1e-12))


def entry_features(p: Tensor, g: Tensor, st: dict[str, Tensor], betas: tuple[float, float], eps: float,
                   momenta: tuple[float, float], orthogonal: bool = False,
                   orthogonal_dtype: torch.dtype | None = None) -> tuple[list[Tensor], Tensor, dict[str, Tensor]]:
    """Advance one parameter's moments and compute its entry features (``orthogonal``: the returned direction
    is :func:`orthogonal_direction`'s, for a weight matrix or a convolution kernel, its iterations in
    ``orthogonal_dtype``).

    Returns:
        ``(xs, adam_dir, new_state)``: ``len(FEATURES)`` tensors shaped like ``p``, the Adam-like direction,
        and the state with advanced moments (cached node terms carried along).
    """
    b_fast, b_slow = momenta
    b1, b2 = betas
    g = g.to(compute_dtype(p))
    t = st["step"] + 1
    new = {"step": t}
    for key, b in (("m_fast", b_fast), ("m_adam", b1), ("m_slow", b_slow)):
        new[key] = st[key] * b + g * (1 - b)
    new["v"] = st["v"] * b2 + g * g * (1 - b2)
    r = torch.rsqrt(new["v"] / (1 - b2 ** t) + eps * eps)
    hats = [new[k] / (1 - b ** t) * r for k, b in (("m_fast", b_fast), ("m_adam", b1), ("m_slow", b_slow))]
    p32 = p.to(g.dtype)
    xs = [x.clamp(-FEATURE_CLIP, FEATURE_CLIP) for x in (g * r, *hats, p32 / _rms(p32), g / _rms(g))]
    for k, v in st.items():  # carry cached node terms along
        if k.startswith("ctx"):
            new[k] = v
    direction = (orthogonal_direction(new["m_adam"] / (1 - b1 ** t), hats[1], orthogonal_dtype) if orthogonal
                 else hats[1])
    return xs, direction, new


def encoder_due(t: int, every: int) -> bool:
    """Whether the encoder runs at step ``t`` (1-based): steps 1, 2, 4, 8, ... below ``every``, then every
    ``every`` steps, so the node terms follow the fast early changes of training and stay cheap later."""
    if t < every:
        return t & (t - 1) == 0
    return (t - 1) % every == 0


def runs_encoder(spec: GraphSpec, states: Sequence[dict[str, Tensor]], active: Sequence[int], t: int,
                 every: int) -> bool:
    """Whether :func:`ngo_update` runs the encoder at step ``t`` for the parameters ``active``: when one of
    them sits on the graph and either one lacks cached node terms (a fresh state) or :func:`encoder_due`."""
    if not any(spec.params[i].kind != "free" for i in active):
        return False
    need = any(spec.params[i].kind != "free" and not any(k.startswith("ctx") for k in states[i]) for i in active)
    return need or encoder_due(t, every)


def head_view(spec: GraphSpec, i: int, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape parameter ``i``'s entries take for the head: ``(O, C)`` or ``(O, C, S)`` for a weight,
    ``(C, O)`` for a transposed one (``ParamSlot.transposed``: an ``Embedding``, stored ``[in, out]``; its node
    terms are swapped to match, see :func:`node_contexts`), ``(numel,)`` for a node parameter, ``shape``
    itself when graph-free."""
    slot = spec.params[i]
    if slot.kind == "edge":
        return slot.stored if slot.entries == 1 else (*slot.stored, slot.entries)
    return (slot.numel,) if slot.kind == "node" else tuple(shape)


def node_contexts(learned: LearnedUpdate, spec: GraphSpec, feats: Sequence[Tensor]) -> list[dict[str, Tensor]]:
    """Run the encoder on the graph of ``feats`` and slice its node terms per parameter.

    Args:
        feats: one ``[*shape, F]`` tensor per parameter (zeros for parameters without a gradient).

    Returns:
        Per parameter: ``{"ctx_dst": [O, H], "ctx_src": [H, C]}`` (weights), ``{"ctx": [H, numel]}``
        (biases, norm parameters) or ``{}`` (graph-free parameters). ``ctx_dst`` is the term of the rows of the
        weight as stored and ``ctx_src`` of its columns: for a transposed weight (stored ``[in, out]``) the
        source neurons' term ``[C, H]`` and the destinations' ``[H, O]``.
    """
    cfg = learned.cfg
    if not cfg.use_graph:
        return _constant_contexts(learned, spec, feats)
    dtype = learned.w1.dtype
    graph = encoder_graph(spec, [f.to(dtype) for f in feats], learned.encoder.cfg.entry_nonlinearity)
    h = learned.encoder(graph).node
    dst, src, node = learned.ctx_dst(h), learned.ctx_src(h), learned.ctx_node(h)
    out: list[dict[str, Tensor]] = []
    for p in spec.params:
        if p.kind == "edge":
            # source and node terms stored [H, n]: the head reads them contiguously along a weight's rows
            rows, cols = h[p.dst_start: p.dst_start + p.rows], h[p.src_start: p.src_start + p.cols]
            d, s = dst[p.dst_start: p.dst_start + p.rows], src[p.src_start: p.src_start + p.cols]
            # the term of each stored row and of each stored column (a transposed weight is stored [in, out])
            per_row, per_col = (s, d) if p.transposed else (d, s)
            out.append({"ctx_dst": per_row, "ctx_src": per_col.t().contiguous()})
        elif p.kind == "node":
            slot = learned.slot_type.weight[1 + p.slot]
            rows = cols = h[p.dst_start: p.dst_start + p.numel]
            out.append({"ctx": (node[p.dst_start: p.dst_start + p.numel] + slot).t().contiguous()})
        else:
            out.append({})
            continue
        if cfg.tensor_lr:  # invariant: means over the tensor's neurons
            told, untold = learned.readout_contexts(torch.cat([rows.mean(0), cols.mean(0)]))
            shift = _fan_in_shift(cfg, p)
            out[-1]["ctx_lr"] = told + shift
            if untold is not None:
                out[-1]["ctx_lr_untold"] = untold + shift
    return out


def _constant_contexts(learned: LearnedUpdate, spec: GraphSpec, feats: Sequence[Tensor]) -> list[dict[str, Tensor]]:
    """The FF ablation's node terms: a learned constant per kind (and node-slot type), no encoder."""
    h = learned.cfg.head_hidden
    out: list[dict[str, Tensor]] = []
    for p, f in zip(spec.params, feats):
        zero = f.new_zeros(()).to(learned.w1.dtype)
        if p.kind == "edge":
            rows, cols = p.stored
            out.append({"ctx_dst": learned.ctx_const[0].expand(rows, h) + zero,
                        "ctx_src": f.new_zeros(h, cols).to(learned.w1.dtype)})
        elif p.kind == "node":
            c = learned.ctx_const[1] + learned.slot_type.weight[1 + p.slot] + zero
            out.append({"ctx": c[:, None].expand(h, p.numel).contiguous()})
        else:
            out.append({})
            continue
        if learned.cfg.tensor_lr:
            out[-1]["ctx_lr"] = zero + _fan_in_shift(learned.cfg, p)
    return out


def orthogonal_params(cfg: LearnedUpdateConfig, spec: GraphSpec, params: Sequence[Tensor]) -> set[int]:
    """Indices of the parameters whose direction an ``orthogonal`` update orthogonalizes: 2-D weights on the
    graph stored ``[out, in]`` (a ``Linear``'s; not an ``Embedding``'s), and with ``orthogonal_conv`` convolution
    kernels stored ``[out, in, k...]``; empty for Adam's direction."""
    if not cfg.orthogonal:
        return set()
    return {i for i, (slot, p) in enumerate(zip(spec.params, params))
            if slot.kind == "edge" and not slot.transposed and (p.ndim == 2 or (cfg.orthogonal_conv and p.ndim > 2))}


def _fan_in_shift(cfg: LearnedUpdateConfig, p: ParamSlot) -> float:
    """The fan-in prior's share of parameter ``p``'s per-tensor log step (weights stored ``[out, in, ...]`` only:
    see :attr:`LearnedUpdateConfig.fan_in_power`)."""
    if p.kind != "edge" or p.transposed:
        return 0.0
    return cfg.fan_in_shift(p.cols * p.entries)


def ngo_update(learned: LearnedUpdate, spec: GraphSpec, params: Sequence[Tensor], grads: Sequence[Tensor | None],
               states: Sequence[dict[str, Tensor]], *, lr: float | Tensor = 1.0,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
               encoder_every: int | None = None, step: int | None = None, total_steps: int | None = None,
               stacked_head: bool = False, diagnostics: list | None = None, _fns: dict | None = None,
               skip_orthogonal: Collection[int] = (), orthogonal_dtype: torch.dtype | str | None = "auto",
               ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """One step of the learned optimizer on one parameter group, without side effects.

    Args:
        learned: the meta-parameters (use ``torch.func.functional_call`` to substitute weights).
        spec: the group's graph spec (``spec.params[i]`` describes ``params[i]``).
        params: current parameter values (any float dtype; features are computed in float32).
        grads: gradients, ``None`` for parameters to leave untouched.
        states: per-parameter states (``{}`` for a parameter seen for the first time).
        lr: multiplier of ``learned.cfg.base_lr`` (what LR schedulers drive).
        betas: timescales of the Adam-like momentum and of the second moment.
        eps: numerical floor of the second moment.
        weight_decay: decoupled weight decay (AdamW style), scaled by the step size.
        encoder_every: override of ``learned.cfg.encoder_every``.
        step: the 1-based number of this step, if the caller tracks it (needed under ``torch.func.vmap``
            when the states are batched: the encoder schedule is a Python decision); default: read from
            the states.
        total_steps: the planned length of training, for updates with horizon features
            (``LearnedUpdateConfig.horizon_taus``); ``None``: unknown (those features are zero).
        stacked_head: evaluate the per-entry head as stacked matmuls
            (:func:`~lopt_graphs.optim.learned.head_stacked`: same maths, fewer ops; meta-training uses it
            under ``vmap``) instead of elementwise sums (what ``torch.compile`` fuses).
        diagnostics: a list that receives, per updated parameter in order, what the learned step size
            did (see :func:`apply_update`); eager only (not with ``_fns``).
        _fns: internal: drop-in (for example ``torch.compile``d) versions of ``"features"``
            (:func:`entry_features`), ``"apply"`` (:func:`apply_update`), ``"step"`` (:func:`param_step`)
            and ``"contexts"`` (:func:`node_contexts`); the optimizer's ``compile=True`` passes the first three
            (the encoder's input changes shape between runs, so it stays eager).
        skip_orthogonal: indices of parameters whose learned step the caller discards (the optimizer's
            base-step weights, which feed a BatchNorm): they keep Adam's direction, so an ``orthogonal`` update
            spends no Newton-Schulz iterations on them.
        orthogonal_dtype: the dtype of an ``orthogonal`` update's Newton-Schulz iterations, per matrix
            :func:`resolve_orthogonal_dtype`: ``"auto"`` (default, as the optimizer's) :func:`auto_orthogonal_dtype`
            of its device and shape; ``None``: the parameter's compute dtype (float32 for float32 parameters).

    Returns:
        ``(new_params, new_states)``, lists aligned with ``params``.
    """
    cfg = learned.cfg
    every = cfg.encoder_every if encoder_every is None else encoder_every
    fns = {"features": entry_features, "apply": apply_update, "step": param_step, "contexts": node_contexts,
           **(_fns or {})}
    states = [s if s else init_state(p) for s, p in zip(states, params)]
    active = [i for i, g in enumerate(grads) if g is not None]
    if not active:
        return list(params), list(states)
    t = int(states[active[0]]["step"]) + 1 if step is None else int(step)
    eta = lr * cfg.base_lr
    if _fns:  # a compiled step specializes on Python floats: pass the (scheduled) step size as a tensor
        eta = torch.as_tensor(eta, dtype=torch.float32, device=params[active[0]].device)
    if diagnostics is not None and _fns:
        raise ValueError("diagnostics are recorded in eager mode only; use compile=False")
    diag = () if diagnostics is None else (diagnostics,)
    out, new_states = list(params), list(states)
    hws = (learned.head_weights(free=False), learned.head_weights(free=True))

    def view(i: int) -> tuple[int, ...]:
        return head_view(spec, i, params[i].shape)

    orthogonalized = orthogonal_params(cfg, spec, params) - set(skip_orthogonal)

    def ortho(i: int) -> dict[str, Any]:  # passed only when the update asks for it (other steps keep their signature)
        if not cfg.orthogonal:
            return {}
        if i not in orthogonalized:
            return {"orthogonal": False}
        return {"orthogonal": True, "orthogonal_dtype": resolve_orthogonal_dtype(orthogonal_dtype, params[i])}

    if not runs_encoder(spec, states, active, t, every):
        # Usual step: features and update fused per parameter, cached node terms reused.
        for i in active:
            out[i], new_states[i] = fns["step"](hws[spec.params[i].kind == "free"], params[i], grads[i], states[i],
                                                spec.params[i].kind, view(i), betas, eps, cfg.momenta, eta,
                                                weight_decay, stacked_head, total_steps, *diag, **ortho(i))
        return out, new_states

    feats: list[list[Tensor] | None] = [None] * len(params)
    dirs: list[Tensor | None] = [None] * len(params)
    for i in active:
        feats[i], dirs[i], new_states[i] = fns["features"](params[i], grads[i], states[i], betas, eps, cfg.momenta,
                                                           **ortho(i))
    nf = len(FEATURES)
    full = [torch.stack(f, dim=-1) if f is not None else p.new_zeros(*p.shape, nf, dtype=compute_dtype(p))
            for f, p in zip(feats, params)]
    ctxs = fns["contexts"](learned, spec, full)
    for i in range(len(params)):
        if ctxs[i]:
            new_states[i] = {**new_states[i], **ctxs[i]}
    for i in active:
        out[i] = fns["apply"](hws[spec.params[i].kind == "free"], params[i], feats[i], dirs[i], new_states[i],
                              spec.params[i].kind, view(i), eta, weight_decay, stacked_head, total_steps, *diag)
    return out, new_states


def param_step(hw: HeadWeights, p: Tensor, g: Tensor, st: dict[str, Tensor], kind: str,
               view: tuple[int, ...], betas: tuple[float, float], eps: float, momenta: tuple[float, float],
               eta: float | Tensor, weight_decay: float, stacked: bool = False,
               total: float | None = None, diagnostics: list | None = None, orthogonal: bool = False,
               orthogonal_dtype: torch.dtype | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`entry_features` then :func:`apply_update` for one parameter (one fused kernel when compiled)."""
    xs, adam_dir, new = entry_features(p, g, st, betas, eps, momenta, orthogonal, orthogonal_dtype)
    return apply_update(hw, p, xs, adam_dir, new, kind, view, eta, weight_decay, stacked, total, diagnostics), new


def apply_update(hw: HeadWeights, p: Tensor, xs: list[Tensor], adam_dir: Tensor, st: dict[str, Tensor],
                 kind: str, view: tuple[int, ...], eta: float | Tensor, weight_decay: float,
                 stacked: bool = False, total: float | None = None, diagnostics: list | None = None) -> Tensor:
    """The new value of one parameter from its entry features, Adam direction and (advanced) state.

    Args:
        hw: the head's weights (:meth:`LearnedUpdate.head_weights`; the graph-free ones for free parameters).
        kind: the parameter's ``ParamSlot.kind``; ``view`` the shape its entries take for the head
            (``(O, C, S)`` for a weight, ``(numel,)`` for a node parameter, the shape itself when free).
        stacked: use :func:`~lopt_graphs.optim.learned.head_stacked` (same maths, fewer ops).
        total: the run's horizon in steps for the fraction-of-training features (``None``: unknown).
        diagnostics: a list to append this parameter's ``{"u": flat learned log-magnitude (before the
            ``mag_clip`` clip), "mag_clip", "sigma": the per-tensor log step (v2) or None, "lr_bound"}`` to.
    """
    wdtype = hw.w1.dtype
    sf = step_features(st["step"], total, hw.taus, hw.untold_horizon, hw.untold_growth).to(wdtype)
    sb = torch.nn.functional.linear(sf, hw.step_w, hw.step_b)
    sigma = None
    if hw.lr_w is not None:  # learned per-tensor log step, softly bounded
        s = (sf * hw.lr_w).sum() + hw.lr_b + readout_context(st, total, hw.untold_horizon)
        sigma = hw.lr_bound * torch.tanh(s / hw.lr_bound)
        eta = eta * torch.exp(sigma)
    if stacked:
        o_dir, o_mag = head_stacked([x.to(wdtype).reshape(view) for x in xs], _stacked_ctx(st, kind, view), hw, sb)
        return _finish(hw, p, adam_dir, o_dir, o_mag, eta, weight_decay, sigma, diagnostics)
    if kind == "edge" and len(view) == 2:  # linear weight: [O, C] (a trailing 1 would hinder vectorizing)
        cd, cs = st["ctx_dst"], st["ctx_src"]
        ctx = lambda h: cd[:, h, None] + cs[h][None, :]  # noqa: E731  [O, C]
    elif kind == "edge":
        cd, cs = st["ctx_dst"], st["ctx_src"]
        ctx = lambda h: cd[:, h, None, None] + cs[h][None, :, None]  # noqa: E731  [O, C, 1]
    elif kind == "node":
        c = st["ctx"]
        ctx = lambda h: c[h]  # noqa: E731
    else:
        ctx = lambda h: 0.0  # noqa: E731
    o_dir, o_mag = head([x.to(wdtype).reshape(view) for x in xs], ctx, hw, sb)
    return _finish(hw, p, adam_dir, o_dir, o_mag, eta, weight_decay, sigma, diagnostics)


def readout_context(st: dict[str, Tensor], total: float | None, untold_horizon: float = 0.0) -> Tensor | float:
    """A parameter's readout share of its per-tensor log step (v2): ``ctx_lr``, or in a run not told its horizon
    (``total`` None) ``ctx_lr_untold`` when the update has an untold readout and no assumed horizon
    (``untold_horizon``: such runs step as told ones); ``0.0`` before any."""
    if total is None and not untold_horizon and "ctx_lr_untold" in st:
        return st["ctx_lr_untold"]
    return st.get("ctx_lr", 0.0)


def _stacked_ctx(st: dict[str, Tensor], kind: str, view: tuple[int, ...]) -> Tensor | float:
    """The hidden-unit contexts of a parameter's entries as one ``[*view, H]`` (broadcastable) tensor."""
    if kind == "edge":
        ctx = st["ctx_dst"][:, None, :] + st["ctx_src"].t()[None, :, :]  # [O, C, H]
        return ctx if len(view) == 2 else ctx[:, :, None, :]
    if kind == "node":
        return st["ctx"].t()
    return 0.0


def _finish(hw: HeadWeights, p: Tensor, adam_dir: Tensor, o_dir: Tensor, o_mag: Tensor, eta: float | Tensor,
            weight_decay: float, sigma: Tensor | None = None, diagnostics: list | None = None) -> Tensor:
    o_dir, o_mag = o_dir.reshape(p.shape), o_mag.reshape(p.shape)
    u = hw.mag_scale * o_mag
    if diagnostics is not None:
        diagnostics.append({"u": u.detach().float().expand(p.shape).reshape(-1), "mag_clip": hw.mag_clip,
                            "sigma": None if sigma is None else float(sigma), "lr_bound": hw.lr_bound})
    delta = adam_dir * torch.exp(u.clamp(-hw.mag_clip, hw.mag_clip)) + hw.dir_scale * o_dir
    p32 = p.to(compute_dtype(p))
    if weight_decay:
        p32 = p32 * (1 - eta * weight_decay)
    return (p32 - eta * delta).to(p.dtype)


def count_nonfinite(grads: Sequence[Tensor | None]) -> int:
    """Number of gradients holding a NaN or Inf.

    One pass per gradient: a sum is finite unless an entry is NaN/Inf (or the sum overflows, which the exact
    check below then rules out), so the common all-finite case costs one reduction and one sync.
    """
    gs = [g for g in grads if g is not None]
    if not gs:
        return 0
    if bool(torch.isfinite(torch.stack([g.sum(dtype=torch.float32) for g in gs])).all()):
        return 0
    return int(torch.stack([~torch.isfinite(g).all() for g in gs]).sum())

