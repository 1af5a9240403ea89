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
    p &\leftarrow p (1 - \eta\,\lambda) - \eta \left(\hat m_\text{adam} r\, e^{\,\kappa_m o_m}
                                                   + \kappa_d o_d\right), \qquad \eta = \text{lr}\cdot\text{base\_lr}

with :math:`\hat m = m / (1 - \beta^t)`. The encoder runs at steps 1, 2, 4, 8, ... and then every
``encoder_every`` steps (:func:`encoder_due`); in between, the cached node terms :math:`c` are reused (they
are part of the optimizer state). The head is written as sums of elementwise products over its ``H`` hidden
units: no ``[entries, H]`` temporary is formed, which is faster on CPU than a thin matmul.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..graph import GraphSpec, neural_graph
from .learned import FEATURES, LearnedUpdate

FEATURE_CLIP = 10.0
MAG_CLIP = 10.0


def compute_dtype(p: Tensor) -> torch.dtype:
    """float32 for float32/16/bfloat16 parameters, float64 for float64 ones."""
    return torch.promote_types(p.dtype, torch.float32)


def init_state(p: Tensor) -> dict[str, Tensor]:
    """Fresh per-parameter state (moments in :func:`compute_dtype`, a float ``step`` tensor like Adam's)."""
    z = lambda: torch.zeros(p.shape, dtype=compute_dtype(p), device=p.device)  # noqa: E731
    return {"step": torch.zeros((), dtype=torch.float32, device=p.device),
            "m_fast": z(), "m_adam": z(), "m_slow": z(), "v": z()}


def step_features(t: Tensor) -> Tensor:
    """``[3]`` features of the step count ``t`` (a float tensor)."""
    return torch.stack([torch.log1p(t) / 10.0, torch.tanh(t / 100.0), torch.tanh(t / 10000.0)])


def _rms(x: Tensor) -> Tensor:
    return x.square().mean().add(1e-12).sqrt()


def entry_features(p: Tensor, g: Tensor, st: dict[str, Tensor], betas: tuple[float, float], eps: float,
                   momenta: tuple[float, float]) -> tuple[list[Tensor], Tensor, dict[str, Tensor]]:
    """Advance one parameter's moments and compute its entry features.

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
    return xs, hats[1], new


def encoder_due(t: int, every: int) -> bool:
    """Whether the encoder runs at step ``t`` (1-based): steps 1, 2, 4, 8, ... below ``every``, then every
    ``every`` steps, so the node terms follow the fast early changes of training and stay cheap later."""
    if t < every:
        return t & (t - 1) == 0
    return (t - 1) % every == 0


def node_contexts(learned: LearnedUpdate, spec: GraphSpec, feats: Sequence[Tensor]) -> list[dict[str, Tensor]]:
    """Run the encoder on the graph of ``feats`` and slice its node terms per parameter.

    Args:
        feats: one ``[*shape, F]`` tensor per parameter (zeros for parameters without a gradient).

    Returns:
        Per parameter: ``{"ctx_dst": [O, H], "ctx_src": [C, H]}`` (weights), ``{"ctx": [numel, H]}``
        (biases, norm parameters) or ``{}`` (graph-free parameters).
    """
    dtype = learned.w1.dtype
    graph = neural_graph(spec, [f.to(dtype) for f in feats])
    h = learned.encoder(graph).node
    dst, src, node = learned.ctx_dst(h), learned.ctx_src(h), learned.ctx_node(h)
    out: list[dict[str, Tensor]] = []
    for p in spec.params:
        if p.kind == "edge":
            out.append({"ctx_dst": dst[p.dst_start: p.dst_start + p.rows],
                        "ctx_src": src[p.src_start: p.src_start + p.cols]})
        elif p.kind == "node":
            slot = learned.slot_type.weight[1 + p.slot]
            out.append({"ctx": node[p.dst_start: p.dst_start + p.numel] + slot})
        else:
            out.append({})
    return out


def ngo_update(learned: LearnedUpdate, spec: GraphSpec, params: Sequence[Tensor], grads: Sequence[Tensor | None],
               states: Sequence[dict[str, Tensor]], *, lr: float | Tensor = 1.0,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
               encoder_every: int | None = None, _features=None, _apply=None,
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
        _features, _apply: drop-in (for example ``torch.compile``d) versions of :func:`entry_features` and
            :func:`apply_update`; internal, used by the optimizer's ``compile=True``.

    Returns:
        ``(new_params, new_states)``, lists aligned with ``params``.
    """
    cfg = learned.cfg
    every = cfg.encoder_every if encoder_every is None else encoder_every
    _features = _features or entry_features
    _apply = _apply or apply_update
    states = [s if s else init_state(p) for s, p in zip(states, params)]
    feats: list[list[Tensor] | None] = [None] * len(params)
    dirs: list[Tensor | None] = [None] * len(params)
    new_states: list[dict[str, Tensor]] = list(states)
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is not None:
            feats[i], dirs[i], new_states[i] = _features(p, g, states[i], betas, eps, cfg.momenta)

    active = [i for i, g in enumerate(grads) if g is not None]
    if not active:
        return list(params), new_states
    t_first = int(new_states[active[0]]["step"])
    need = any(spec.params[i].kind != "free" and not any(k.startswith("ctx") for k in new_states[i])
               for i in active)
    has_graph = any(spec.params[i].kind != "free" for i in active)
    if has_graph and (need or encoder_due(t_first, every)):
        nf = len(FEATURES)
        full = [torch.stack(f, dim=-1) if f is not None else p.new_zeros(*p.shape, nf, dtype=compute_dtype(p))
                for f, p in zip(feats, params)]
        ctxs = node_contexts(learned, spec, full)
        for i in range(len(params)):
            if ctxs[i]:
                new_states[i] = {**new_states[i], **ctxs[i]}

    eta = lr * cfg.base_lr
    out = list(params)
    for i in active:
        slot = spec.params[i]
        view = ((slot.rows, slot.cols, slot.entries) if slot.kind == "edge" else (slot.numel,)
                if slot.kind == "node" else tuple(params[i].shape))
        out[i] = _apply(learned, params[i], feats[i], dirs[i], new_states[i], slot.kind, view, eta, weight_decay)
    return out, new_states


def apply_update(learned: LearnedUpdate, p: Tensor, xs: list[Tensor], adam_dir: Tensor, st: dict[str, Tensor],
                 kind: str, view: tuple[int, ...], eta: float | Tensor, weight_decay: float) -> Tensor:
    """The new value of one parameter from its entry features, Adam direction and (advanced) state.

    Args:
        kind: the parameter's ``ParamSlot.kind``; ``view`` the shape its entries take for the head
            (``(O, C, S)`` for a weight, ``(numel,)`` for a node parameter, the shape itself when free).
    """
    cfg = learned.cfg
    wdtype = learned.w1.dtype
    sb = learned.step_proj(step_features(st["step"]).to(wdtype))
    if kind == "edge":
        cd, cs = st["ctx_dst"], st["ctx_src"]
        ctx = lambda h: cd[:, h, None, None] + cs[None, :, h, None]  # noqa: E731  [O, C, 1]
        w1 = learned.w1
    elif kind == "node":
        c = st["ctx"]
        ctx = lambda h: c[:, h]  # noqa: E731
        w1 = learned.w1
    else:
        ctx = lambda h: 0.0  # noqa: E731
        w1 = learned.w1_free
    o_dir, o_mag = learned.head([x.to(wdtype).reshape(view) for x in xs], ctx, w1, sb)
    o_dir, o_mag = o_dir.reshape(p.shape), o_mag.reshape(p.shape)
    delta = adam_dir * torch.exp((cfg.mag_scale * o_mag).clamp(-MAG_CLIP, MAG_CLIP)) + cfg.dir_scale * o_dir
    p32 = p.to(compute_dtype(p))
    if weight_decay:
        p32 = p32 * (1 - eta * weight_decay)
    return (p32 - eta * delta).to(p.dtype)


def count_nonfinite(grads: Sequence[Tensor | None]) -> Tensor:
    """Number of gradients holding a NaN or Inf, as a 0-d tensor (one sync when read)."""
    flags = [~torch.isfinite(g).all() for g in grads if g is not None]
    if not flags:
        return torch.zeros((), dtype=torch.long)
    return torch.stack(flags).sum()

