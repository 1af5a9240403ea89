r"""The optimizer's usual (non-encoder) eager step, blocked for the CPU cache: the same maths as the reference.

The reference :func:`~lopt_graphs.optim.functional.param_step` is written for ``torch.compile`` (and
``torch.func``): sums of elementwise products, which Inductor fuses into one loop. Run eagerly, each of its
~100 operations is a pass over the whole parameter. On a 269K-weight MLP a parameter, its gradient and its five
state tensors (7 MB) do not fit in a core's L2 cache (2 MB here), so every pass streams from memory (measured
on this 2-core machine: a multiply over 200K floats takes 50 us in L2 and 300 us out of it).

:func:`fast_group_step_` computes the same update for a whole parameter group:

* in place, like ``torch.optim.Adam``: moments, step counts and parameters are updated where they are;
* blocked: a parameter is processed in blocks of about :data:`BLOCK` entries (whole rows of a weight), every
  block running all ~25 operations while its data stay in L2;
* with the scalars folded: for ``c > 0``, :math:`\operatorname{clip}_{10}(c\,x) = c
  \operatorname{clip}(x, \pm 10/c)`, so the bias corrections, :math:`\sqrt{1-\beta_2^t}` and the ``1/rms``
  feature scales move into the head's first layer and the clip bounds, and the step size into its output
  layer. With :math:`r' = (v + \epsilon^2 (1-\beta_2^t))^{-1/2}` (so :math:`r = \sqrt{1-\beta_2^t}\, r'`) and
  :math:`s = \sqrt{1-\beta_2^t}`, :math:`c_k = 1/(1-\beta_k^t)`:

  .. math::
      y &= \big[\operatorname{clip}(g r', \tfrac{10}{s}),\ \operatorname{clip}(m_k r', \tfrac{10}{c_k s})_{k},\
            \operatorname{clip}(p, 10\,\mathrm{rms}_p),\ \operatorname{clip}(g, 10\,\mathrm{rms}_g)\big], \qquad
      x = \operatorname{diag}(s, c_k s, \mathrm{rms}_p^{-1}, \mathrm{rms}_g^{-1})\, y \\
      z &= (W_1 \operatorname{diag}(\cdot))\, y + c + S\,s(t) + b_1, \qquad
      p \leftarrow p (1-\eta\lambda) - \eta c_\text{adam} s\, (m_\text{adam} r')\, e^{\operatorname{clip}(\kappa_m o_m)}
                   - \eta \kappa_d o_d

  which is :mod:`lopt_graphs.optim.functional`'s update rule, rearranged (so equal up to float rounding). Recipe
  v2 (horizon features, the per-tensor log step ``sigma``) changes only scalars: the step features, and
  :math:`\eta \to \eta e^\sigma` per tensor.

Weights that take the base step (``bn_weights="base"``: the weights feeding a BatchNorm) skip the head here (the
reference computes it and discards it). :class:`~lopt_graphs.optim.NeuralGraphOptimizer` uses this path on usual
steps when ``compile=False`` in groups holding a parameter of at least :data:`FAST_MIN_NUMEL` entries (groups of
small parameters keep the reference, so the class stays bit-identical to
:func:`~lopt_graphs.optim.functional.ngo_update` on small models), and only after :func:`fast_step_agrees`
confirmed it for the checkpoint. Checked against the reference in ``tests/optim/test_fast_step.py``. Not for
``torch.func`` transforms (in place; it reads step counts and norms as Python numbers: two host reads per group).
"""

from __future__ import annotations

import itertools
import math
from typing import Collection, NamedTuple, Sequence

import torch
from torch import Tensor

from ..graph import GraphSpec
from .functional import FEATURE_CLIP, compute_dtype, head_view, init_state
from .learned import HeadWeights, LearnedUpdate

#: Parameter groups holding a parameter with at least this many entries take the fast path.
FAST_MIN_NUMEL = 4096
#: Entries per block (whole rows of a weight): a block's ~20 float temporaries per entry stay in a 2 MB L2 cache.
BLOCK = 16384


class _Scalars(NamedTuple):
    """The per-step scalars of one step count ``t``."""

    s: float  # sqrt(1 - b2^t)
    c: tuple[float, float, float]  # 1 / (1 - b^t) for the fast, Adam and slow momenta
    e2: float  # eps^2 (1 - b2^t)
    feats: Tensor  # step features [3 (+ len(taus) + 1)], the head's dtype
    sb: Tensor  # step_w @ feats + step_b: [H]


def _scalars(hw: HeadWeights, t: float, betas: tuple[float, float], eps: float, momenta: tuple[float, float],
             total: float | None) -> _Scalars:
    """As :func:`~lopt_graphs.optim.functional.step_features` and the bias corrections, in Python floats."""
    b1, b2 = betas
    f = [math.log1p(t) / 10.0, math.tanh(t / 100.0), math.tanh(t / 10000.0)]
    if hw.taus:
        f += [0.0] * (len(hw.taus) + 1) if total is None else [math.tanh(5.0 * (t / total - tau))
                                                               for tau in hw.taus] + [1.0]
    feats = torch.tensor(f, dtype=hw.w1.dtype, device=hw.w1.device)
    bc2 = 1.0 - b2 ** t
    c = tuple(1.0 / (1.0 - b ** t) for b in (momenta[0], b1, momenta[1]))
    return _Scalars(math.sqrt(bc2), c, eps * eps * bc2, feats, torch.nn.functional.linear(feats, hw.step_w, hw.step_b))


def _log_step(hw: HeadWeights, sc: _Scalars, ctx_lr: Tensor | float) -> Tensor:
    """v2's per-tensor log step ``sigma = lr_bound * tanh((sched(feats) + ctx_lr) / lr_bound)`` (0-d)."""
    s = (sc.feats * hw.lr_w).sum() + hw.lr_b + ctx_lr
    return hw.lr_bound * torch.tanh(s / hw.lr_bound)


class _Scratch:
    """Flat work buffers reused by every block of a group step, and their views for a block of ``m`` entries
    (made once per size: a block's Python overhead is a good part of its cost)."""

    def __init__(self, n: int, hdim: int, cdt: torch.dtype, wdt: torch.dtype, device: torch.device):
        self.hdim = hdim
        self.flat = {"r": torch.empty(n, dtype=cdt, device=device), "adam": torch.empty(n, dtype=cdt, device=device),
                     "p32": torch.empty(n, dtype=cdt, device=device), "y": torch.empty(6 * n, dtype=wdt, device=device),
                     "z": torch.empty(hdim * n, dtype=wdt, device=device),
                     "o": torch.empty(2 * n, dtype=wdt, device=device)}
        self._views: dict[tuple[int, int], _Views] = {}

    def views(self, m: int, row: int) -> "_Views":
        if (m, row) not in self._views:
            b = self.flat
            y, z, o = b["y"][:6 * m].view(6, m), b["z"][:self.hdim * m].view(self.hdim, m), b["o"][:2 * m].view(2, m)
            self._views[m, row] = _Views(b["r"][:m], b["adam"][:m], b["p32"][:m], y, y.unbind(0), z,
                                         z.view(self.hdim, m // row, row), o, *o.unbind(0))
        return self._views[m, row]


class _Views(NamedTuple):
    r: Tensor
    adam: Tensor
    p32: Tensor
    y: Tensor  # [6, m]
    ys: tuple[Tensor, ...]  # its rows
    z: Tensor  # [H, m]
    z_rows: Tensor  # [H, m // row, row]
    o: Tensor  # [2, m]
    o_dir: Tensor
    o_mag: Tensor


def _clamp_into(x: Tensor, bound: float, out: Tensor) -> None:
    """``out = clip(x, -bound, bound)``; ``out`` may be of a lower precision (the head's dtype)."""
    if x.dtype == out.dtype:
        torch.clamp(x, -bound, bound, out=out)
    else:
        out.copy_(x).clamp_(-bound, bound)


def _rows(view: Sequence[int]) -> tuple[int, int, int]:
    """``(rows, row length, rows per block)`` of a parameter's entries in the head's view (a weight's rows are
    its output neurons; node and 1-d parameters have rows of one entry)."""
    n = math.prod(view)
    nrows, row = (view[0], n // view[0]) if len(view) >= 2 and view[0] else (n, 1)
    return nrows, row, max(1, min(nrows, BLOCK // row))


def _update_(hw: HeadWeights, p: Tensor, g: Tensor, st: dict[str, Tensor], kind: str, view: Sequence[int],
             betas: tuple[float, float], momenta: tuple[float, float], sc: _Scalars, eta: float, weight_decay: float,
             rms: tuple[float, float] | None, scratch: _Scratch) -> None:
    """One parameter's step, in place (``p`` and ``st``); ``rms is None``: the base step (no head)."""
    b1, b2 = betas
    b_fast, b_slow = momenta
    cf, ca, cs = sc.c
    s, e2 = sc.s, sc.e2
    for k in ("m_fast", "m_adam", "m_slow", "v"):
        if not st[k].is_contiguous():
            st[k] = st[k].contiguous()
    st["step"].add_(1)
    nrows, row, per = _rows(view)
    size = per * row
    blocks = zip(*(x.view(-1).split(size) for x in (p, g, st["m_fast"], st["m_adam"], st["m_slow"], st["v"])))
    low = p.dtype != st["v"].dtype  # bfloat16/float16 parameter: update a float32 copy of the block
    a_coef = -eta * ca * s  # p += a_coef * (m_adam r') * exp(clip(u))
    decay = 1.0 - eta * weight_decay
    if rms is None:  # the base step: p <- p (1 - eta wd) - eta c_adam s (m_adam r')
        for ps, gs, mf, ma, ms, v in blocks:
            mf.lerp_(gs, 1 - b_fast)
            ma.lerp_(gs, 1 - b1)
            ms.lerp_(gs, 1 - b_slow)
            v.mul_(b2).addcmul_(gs, gs, value=1 - b2)
            vw = scratch.views(ps.numel(), row)
            r = torch.add(v, e2, out=vw.r).rsqrt_()
            pw = vw.p32.copy_(ps) if low else ps
            if weight_decay:
                pw.mul_(decay)
            pw.addcmul_(ma, r, value=a_coef)
            if low:
                ps.copy_(pw)
        return
    hdim, wdt = hw.w1.shape[0], hw.w1.dtype
    lim, mc = FEATURE_CLIP, hw.mag_clip
    bounds = (lim / s, lim / (cf * s), lim / (ca * s), lim / (cs * s), lim * rms[0], lim * rms[1])
    scale = torch.tensor([s, cf * s, ca * s, cs * s, 1.0 / rms[0], 1.0 / rms[1]], dtype=wdt, device=p.device)
    w1s = hw.w1 * scale
    out_scale = torch.tensor([[hw.dir_scale * eta], [hw.mag_scale]], dtype=wdt, device=p.device)
    w2s, b2s = hw.w2 * out_scale, hw.b2[:, None] * out_scale  # rows: eta * dir_scale * o_dir, u
    nblocks = -(-nrows // per)
    if kind == "edge":  # z = W1 y + ctx_src (+ step bias) in one addmm, then + ctx_dst per row
        src = st["ctx_src"] + sc.sb[:, None]  # [H, C], broadcast over a kernel's S entries and the block's rows
        inp = src[:, None, :, None].expand(hdim, per, src.shape[1], row // src.shape[1]).reshape(hdim, size)
        inps = [inp] * (nrows // per) + ([inp[:, :(nrows % per) * row]] if nrows % per else [])
        rows_ctx = st["ctx_dst"].t().unsqueeze(-1).split(per, dim=1)  # [H, rows, 1] per block
    elif kind == "node":
        inps, rows_ctx = (st["ctx"] + sc.sb[:, None]).split(size, dim=1), [None] * nblocks
    else:
        inps, rows_ctx = [sc.sb[:, None]] * nblocks, [None] * nblocks
    for (ps, gs, mf, ma, ms, v), inp, cd in zip(blocks, inps, rows_ctx):
        mf.lerp_(gs, 1 - b_fast)
        ma.lerp_(gs, 1 - b1)
        ms.lerp_(gs, 1 - b_slow)
        v.mul_(b2).addcmul_(gs, gs, value=1 - b2)
        vw = scratch.views(ps.numel(), row)
        r = torch.add(v, e2, out=vw.r).rsqrt_()
        pw = vw.p32.copy_(ps) if low else ps
        y0, y1, y2, y3, y4, y5 = vw.ys
        torch.mul(gs, r, out=y0).clamp_(-bounds[0], bounds[0])
        torch.mul(mf, r, out=y1).clamp_(-bounds[1], bounds[1])
        _clamp_into(torch.mul(ma, r, out=vw.adam), bounds[2], y2)
        torch.mul(ms, r, out=y3).clamp_(-bounds[3], bounds[3])
        _clamp_into(pw, bounds[4], y4)
        _clamp_into(gs, bounds[5], y5)
        torch.addmm(inp, w1s, vw.y, out=vw.z)
        if cd is not None:
            vw.z_rows.add_(cd)
        torch.addmm(b2s, w2s, vw.z.relu_(), out=vw.o)
        if weight_decay:
            pw.mul_(decay)
        pw.addcmul_(vw.adam, vw.o_mag.clamp_(-mc, mc).exp_(), value=a_coef).sub_(vw.o_dir)
        if low:
            ps.copy_(pw)


def fast_group_step_(learned: LearnedUpdate, spec: GraphSpec, params: Sequence[Tensor],
                     grads: Sequence[Tensor | None], states: Sequence[dict[str, Tensor]], *, lr: float | Tensor,
                     betas: tuple[float, float], eps: float, weight_decay: float, total_steps: int | None = None,
                     base: Collection[int] = ()) -> None:
    """A usual step (no encoder run) of one parameter group, in place: ``params`` and ``states`` are updated.

    The same update as :func:`~lopt_graphs.optim.functional.ngo_update` followed by the optimizer's base step
    for the parameters in ``base`` (up to float rounding), for a step at which
    :func:`~lopt_graphs.optim.functional.runs_encoder` is false: every state holds its node terms.

    Args:
        learned: the learned update (its head weights and config are read).
        spec: the group's graph spec; ``params``/``grads``/``states`` aligned with ``spec.params``.
        grads: ``None`` for parameters to leave untouched.
        states: the per-parameter state dicts (mutated; an empty one, of a graph-free parameter seen for the
            first time, is initialized).
        lr: multiplier of ``learned.cfg.base_lr``.
        base: indices of parameters that take the base (Adam-like) step instead of the learned one.
    """
    cfg = learned.cfg
    active = [i for i, g in enumerate(grads) if g is not None]
    if not active:
        return
    for i in active:
        if not states[i]:
            states[i].update(init_state(params[i]))
    hws = (learned.head_weights(free=False), learned.head_weights(free=True))
    eta = lr * cfg.base_lr
    heads = [i for i in active if i not in base]
    # one host read for every number the step needs: step counts, the two norms of each head parameter, and
    # (v2) each head parameter's log step
    reads = [torch.stack([states[i]["step"].to(torch.float64) for i in active])]
    for i in heads:
        cdt = compute_dtype(params[i])
        reads.append(torch.stack([torch.linalg.vector_norm(params[i], dtype=cdt),
                                  torch.linalg.vector_norm(grads[i], dtype=cdt)]).to(torch.float64))
    ts = {i: t + 1 for i, t in zip(active, reads[0].tolist())}
    scalars: dict[tuple[float, bool], _Scalars] = {}

    def scalars_of(i: int) -> _Scalars:
        key = (ts[i], spec.params[i].kind == "free")
        if key not in scalars:
            scalars[key] = _scalars(hws[key[1]], ts[i], betas, eps, cfg.momenta, total_steps)
        return scalars[key]

    if cfg.tensor_lr and heads:
        sig = torch.stack([_log_step(hws[spec.params[i].kind == "free"], scalars_of(i), states[i].get("ctx_lr", 0.0))
                           for i in heads])
        reads.append(torch.exp(sig).to(torch.float64) * float(eta))
    flat = torch.cat([x.reshape(-1).to(reads[0].device) for x in reads]).tolist()
    eta = float(eta)
    etas = dict(zip(heads, flat[len(active) + 2 * len(heads):])) if cfg.tensor_lr else {}
    rms = {i: tuple(math.sqrt(flat[len(active) + 2 * k + j] ** 2 / max(params[i].numel(), 1) + 1e-12)
                    for j in (0, 1)) for k, i in enumerate(heads)}
    scratch: dict[tuple, _Scratch] = {}
    for i in active:
        p, g, st = params[i], grads[i], states[i]
        kind = spec.params[i].kind
        hw = hws[kind == "free"]
        view = head_view(spec, i, p.shape)
        cdt = st["v"].dtype
        key = (cdt, hw.w1.dtype, p.device)
        if key not in scratch:
            n = max(math.prod(_rows(head_view(spec, j, params[j].shape))[1:]) for j in active)
            scratch[key] = _Scratch(n, hw.w1.shape[0], cdt, hw.w1.dtype, p.device)
        g = g.to(cdt)
        if not (p.is_contiguous() and g.is_contiguous()):
            p_c, g = p.contiguous(), g.contiguous()
        else:
            p_c = p
        _update_(hw, p_c, g, st, kind, view, betas, cfg.momenta, scalars_of(i), etas.get(i, eta), weight_decay,
                 rms.get(i), scratch[key])
        if p_c is not p:
            p.copy_(p_c)


def fast_param_step(hw: HeadWeights, p: Tensor, g: Tensor, st: dict[str, Tensor], kind: str,
                    view: tuple[int, ...], betas: tuple[float, float], eps: float, momenta: tuple[float, float],
                    eta: float | Tensor, weight_decay: float, stacked: bool = False,
                    total: float | None = None, base: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """Same signature and result as :func:`~lopt_graphs.optim.functional.param_step` (``stacked`` changes
    nothing), without mutating its inputs (it works on copies): the per-parameter form of
    :func:`fast_group_step_`, for tests and :func:`fast_step_agrees`. ``base=True``: the base step of
    :func:`~lopt_graphs.optim.bn_scale.base_step` instead."""
    p = p.clone()
    st = {k: v.clone() for k, v in st.items()}
    sc = _scalars(hw, float(st["step"]) + 1, betas, eps, momenta, total)
    rms = None
    if not base:
        cdt = compute_dtype(p)
        rms = tuple(math.sqrt(float(torch.linalg.vector_norm(x, dtype=cdt)) ** 2 / x.numel() + 1e-12) for x in (p, g))
        if hw.lr_w is not None:
            eta = eta * torch.exp(_log_step(hw, sc, st.get("ctx_lr", 0.0)))
    scratch = _Scratch(math.prod(_rows(view)[1:]), hw.w1.shape[0], st["v"].dtype, hw.w1.dtype, p.device)
    _update_(hw, p, g.to(st["v"].dtype).contiguous(), st, kind, view, betas, momenta, sc, float(eta), weight_decay,
             rms, scratch)
    return p, st


def fast_step_agrees(learned: LearnedUpdate, atol: float = 1e-5) -> bool:
    """Whether :func:`fast_param_step` reproduces the reference ``param_step`` (and, with ``base=True``, the base
    step of :func:`~lopt_graphs.optim.bn_scale.base_step`) for ``learned``'s head, on small random parameters of
    every kind over three steps, with an unknown and a known horizon. The optimizer checks this once before
    using the fast path, so a change of the reference maths (or of :class:`HeadWeights`) falls back to the
    reference instead of silently diverging."""
    from .bn_scale import base_step
    from .functional import param_step

    gen = torch.Generator().manual_seed(0)
    hdim = learned.cfg.head_hidden
    cases = [("edge", (5, 4), (5, 4)), ("edge", (3, 4, 2, 2), (3, 4, 4)), ("node", (6,), (6,)),
             ("free", (2, 3, 2), (2, 3, 2))]
    betas, eps, eta, wd = (0.9, 0.999), 1e-8, torch.tensor(1e-2), 0.01
    try:
        with torch.no_grad():
            for total, (kind, shape, view), base in itertools.product((None, 7), cases, (False, True)):
                hw = learned.head_weights(free=kind == "free")
                dev = hw.w1.device
                p = torch.randn(*shape, generator=gen)
                st = init_state(p)
                if kind == "edge":
                    st["ctx_dst"] = torch.randn(view[0], hdim, generator=gen)
                    st["ctx_src"] = torch.randn(hdim, view[1], generator=gen)
                elif kind == "node":
                    st["ctx"] = torch.randn(hdim, view[0], generator=gen)
                if learned.cfg.tensor_lr and kind != "free":
                    st["ctx_lr"] = torch.randn((), generator=gen)
                st = {k: v.to(dev) for k, v in st.items()}
                a, sa, b, sb = p.to(dev), st, p.to(dev), st
                for _ in range(3):
                    grad = torch.randn(*shape, generator=gen).to(dev)
                    args = (kind, view, betas, eps, learned.cfg.momenta, eta, wd)
                    a_new, sa = param_step(hw, a, grad, sa, *args, total=total)
                    a = base_step(a, sa, betas, eps, eta, wd) if base else a_new
                    b, sb = fast_param_step(hw, b, grad, sb, *args, total=total, base=base)
                if not torch.allclose(a, b, rtol=1e-4, atol=atol) or set(sa) != set(sb):
                    return False
    except Exception:  # an interface change: use the reference
        return False
    return True
