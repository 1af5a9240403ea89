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

:func:`fast_encoder_step_` does the same at the steps that run the encoder: the moments and features block by
block into the encoder's ``[*shape, F]`` input, the encoder, then the head on those features. Weights that take
the base step (``bn_weights="base"``: the weights feeding a BatchNorm) skip the head (the reference computes it
and discards it).

:class:`~lopt_graphs.optim.NeuralGraphOptimizer` uses these when ``compile=False`` in groups holding a parameter
of at least :data:`FAST_MIN_NUMEL` entries (groups of small parameters keep the reference, so the class stays
bit-identical to :func:`~lopt_graphs.optim.functional.ngo_update` on small models), without
``record_diagnostics``, and only after :func:`fast_step_agrees` confirmed the maths for the checkpoint. Checked
against the reference in ``tests/optim/test_fast_step.py``. Not for ``torch.func`` transforms (in place; step
counts and norms are read as Python numbers: one host read per group step, two with v2's per-tensor step).
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


class _Views(NamedTuple):
    """Work buffers for a block of ``m`` entries."""

    r: Tensor  # r' = (v + eps^2 (1 - b2^t))^-1/2
    adam: Tensor  # m_adam r'
    p32: Tensor  # a float32 copy of a low-precision parameter's block
    y: Tensor  # [6, m] the features, scaled (see the module docstring)
    ys: tuple[Tensor, ...]  # its rows
    z: Tensor  # [H, m]
    z_rows: Tensor  # [H, m // row, row]
    o: Tensor  # [2, m]: eta dir_scale o_dir, u
    o_dir: Tensor
    o_mag: Tensor


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

    def views(self, m: int, row: int) -> _Views:
        if (m, row) not in self._views:
            b = self.flat
            y, z, o = b["y"][:6 * m].view(6, m), b["z"][:self.hdim * m].view(self.hdim, m), b["o"][:2 * m].view(2, m)
            self._views[m, row] = _Views(b["r"][:m], b["adam"][:m], b["p32"][:m], y, y.unbind(0), z,
                                         z.view(self.hdim, m // row, row), o, *o.unbind(0))
        return self._views[m, row]


def _rows(view: Sequence[int]) -> tuple[int, int, int]:
    """``(rows, row length, rows per block)`` of a parameter's entries in the head's view (a weight's rows are
    its output neurons; node and 1-d parameters have rows of one entry)."""
    n = math.prod(view)
    nrows, row = (view[0], n // view[0]) if len(view) >= 2 and view[0] else (n, 1)
    return nrows, row, max(1, min(nrows, BLOCK // row))


class _Param:
    """One parameter of a group step: its tensors split into blocks, its scalars, its head's inputs."""

    def __init__(self, hw: HeadWeights, p: Tensor, g: Tensor, st: dict[str, Tensor], kind: str,
                 view: Sequence[int], sc: _Scalars, rms: tuple[float, float] | None, base: bool):
        for k in ("m_fast", "m_adam", "m_slow", "v"):
            if not st[k].is_contiguous():
                st[k] = st[k].contiguous()
        self.hw, self.p, self.st, self.kind, self.sc, self.base = hw, p, st, kind, sc, base
        self.work = p if p.is_contiguous() else p.contiguous()  # written back by finish()
        g = g.to(st["v"].dtype).contiguous()
        self.nrows, self.row, self.per = _rows(view)
        size = self.per * self.row
        self.blocks = list(zip(*(x.view(-1).split(size) for x in (self.work, g, st["m_fast"], st["m_adam"],
                                                                     st["m_slow"], st["v"]))))
        self.low = p.dtype != st["v"].dtype  # bfloat16/float16 parameter: update a float32 copy of each block
        if rms is not None:  # clip bounds of the scaled features, and their scales (see the module docstring)
            s, (cf, ca, cs) = sc.s, sc.c
            lim = FEATURE_CLIP
            self.bounds = (lim / s, lim / (cf * s), lim / (ca * s), lim / (cs * s), lim * rms[0], lim * rms[1])
            self.scale = torch.tensor([s, cf * s, ca * s, cs * s, 1.0 / rms[0], 1.0 / rms[1]], dtype=hw.w1.dtype,
                                      device=p.device)

    def head_inputs(self, eta: float, unscaled: bool = False) -> None:
        """The head's weights with the scalars folded in, and its per-block node terms (from the state)."""
        hw, st, sc = self.hw, self.st, self.sc
        hdim, per, row = hw.w1.shape[0], self.per, self.row
        self.w1 = hw.w1 if unscaled else hw.w1 * self.scale
        out_scale = torch.tensor([[hw.dir_scale * eta], [hw.mag_scale]], dtype=hw.w1.dtype, device=self.p.device)
        self.w2, self.b2 = hw.w2 * out_scale, hw.b2[:, None] * out_scale  # rows: eta * dir_scale * o_dir, u
        nblocks = len(self.blocks)
        if self.kind == "edge":  # z = W1 y + ctx_src (+ step bias) in one addmm, then + ctx_dst per row
            src = st["ctx_src"] + sc.sb[:, None]  # [H, C], broadcast over a kernel's S entries and a block's rows
            inp = src[:, None, :, None].expand(hdim, per, src.shape[1], row // src.shape[1]).reshape(hdim, per * row)
            last = self.nrows % per
            self.inps = [inp] * (self.nrows // per) + ([inp[:, :last * row]] if last else [])
            self.rows_ctx = st["ctx_dst"].t().unsqueeze(-1).split(per, dim=1)  # [H, rows, 1] per block
        elif self.kind == "node":
            self.inps, self.rows_ctx = (st["ctx"] + sc.sb[:, None]).split(per * row, dim=1), [None] * nblocks
        else:
            self.inps, self.rows_ctx = [sc.sb[:, None]] * nblocks, [None] * nblocks

    def finish(self) -> None:
        if self.work is not self.p:
            self.p.copy_(self.work)


def _moments_(blk: tuple[Tensor, ...], betas: tuple[float, float], momenta: tuple[float, float], sc: _Scalars,
              vw: _Views) -> Tensor:
    """Advance a block's moments in place; returns ``r'``."""
    _, gs, mf, ma, ms, v = blk
    mf.lerp_(gs, 1 - momenta[0])
    ma.lerp_(gs, 1 - betas[0])
    ms.lerp_(gs, 1 - momenta[1])
    v.mul_(betas[1]).addcmul_(gs, gs, value=1 - betas[1])
    return torch.add(v, sc.e2, out=vw.r).rsqrt_()


def _clamp_into(x: Tensor, bound: float, out: Tensor) -> None:
    """``out = clip(x, -bound, bound)``; ``out`` may be of a lower precision (the head's dtype)."""
    if x.dtype == out.dtype:
        torch.clamp(x, -bound, bound, out=out)
    else:
        out.copy_(x).clamp_(-bound, bound)


def _features_(blk: tuple[Tensor, ...], pw: Tensor, r: Tensor, bounds: tuple[float, ...], vw: _Views) -> None:
    """A block's scaled features into ``vw.y`` and ``m_adam r'`` into ``vw.adam``."""
    _, gs, mf, ma, ms, _ = blk
    y0, y1, y2, y3, y4, y5 = vw.ys
    torch.mul(gs, r, out=y0).clamp_(-bounds[0], bounds[0])
    torch.mul(mf, r, out=y1).clamp_(-bounds[1], bounds[1])
    _clamp_into(torch.mul(ma, r, out=vw.adam), bounds[2], y2)
    torch.mul(ms, r, out=y3).clamp_(-bounds[3], bounds[3])
    _clamp_into(pw, bounds[4], y4)
    _clamp_into(gs, bounds[5], y5)


def _apply_(prm: _Param, k: int, feats: Tensor, pw: Tensor, adam: Tensor, vw: _Views, a_coef: float,
            decay: float) -> None:
    """The head on block ``k``'s features (``[6, m]``, any strides) and the parameter's update, in place."""
    torch.addmm(prm.inps[k], prm.w1, feats, out=vw.z)
    if prm.rows_ctx[k] is not None:
        vw.z_rows.add_(prm.rows_ctx[k])
    torch.addmm(prm.b2, prm.w2, vw.z.relu_(), out=vw.o)
    if decay != 1.0:
        pw.mul_(decay)
    mc = prm.hw.mag_clip
    pw.addcmul_(adam, vw.o_mag.clamp_(-mc, mc).exp_(), value=a_coef).sub_(vw.o_dir)


def _step_(prm: _Param, betas: tuple[float, float], momenta: tuple[float, float], eta: float, weight_decay: float,
           scratch: _Scratch) -> None:
    """One parameter's whole step, block by block, in place (``prm.base``: the base step, no head)."""
    prm.st["step"].add_(1)
    a_coef = -eta * prm.sc.c[1] * prm.sc.s  # p += a_coef * (m_adam r') [* exp(clip(u))]
    decay = 1.0 - eta * weight_decay
    if not prm.base:
        prm.head_inputs(eta)
    for k, blk in enumerate(prm.blocks):
        ps = blk[0]
        vw = scratch.views(ps.numel(), prm.row)
        r = _moments_(blk, betas, momenta, prm.sc, vw)
        pw = vw.p32.copy_(ps) if prm.low else ps
        if prm.base:  # the base step: p <- p (1 - eta wd) - eta c_adam s (m_adam r')
            if weight_decay:
                pw.mul_(decay)
            pw.addcmul_(blk[3], r, value=a_coef)
        else:
            _features_(blk, pw, r, prm.bounds, vw)
            _apply_(prm, k, vw.y, pw, vw.adam, vw, a_coef, decay)
        if prm.low:
            ps.copy_(pw)
    prm.finish()


class _Group:
    """A group step's parameters, prepared with one host read (step counts, norms)."""

    def __init__(self, learned: LearnedUpdate, spec: GraphSpec, params: Sequence[Tensor],
                 grads: Sequence[Tensor | None], states: Sequence[dict[str, Tensor]], betas: tuple[float, float],
                 eps: float, total: int | None, base: Collection[int], lr: float | Tensor, all_norms: bool = False):
        cfg = learned.cfg
        self.cfg, self.betas, self.momenta = cfg, betas, cfg.momenta
        self.active = [i for i, g in enumerate(grads) if g is not None]
        for i in self.active:
            if not states[i]:
                states[i].update(init_state(params[i]))
        self.hws = hws = (learned.head_weights(free=False), learned.head_weights(free=True))
        self.heads = [i for i in self.active if i not in base]
        normed = self.active if all_norms else self.heads
        # one host read: step counts and the two norms of each parameter whose features are needed
        reads = [torch.stack([states[i]["step"].to(torch.float64) for i in self.active])]
        for i in normed:
            cdt = compute_dtype(params[i])
            reads.append(torch.stack([torch.linalg.vector_norm(params[i], dtype=cdt),
                                      torch.linalg.vector_norm(grads[i], dtype=cdt)]).to(torch.float64))
        eta = lr * cfg.base_lr
        if isinstance(eta, Tensor):
            reads.append(eta.reshape(1).to(torch.float64))
        flat = torch.cat([x.reshape(-1).to(reads[0].device) for x in reads]).tolist()
        self.eta = flat[-1] if isinstance(eta, Tensor) else float(eta)
        n = len(self.active)
        rms = {i: tuple(math.sqrt(flat[n + 2 * k + j] ** 2 / max(params[i].numel(), 1) + 1e-12) for j in (0, 1))
               for k, i in enumerate(normed)}
        memo: dict[tuple[float, bool], _Scalars] = {}
        self.params: dict[int, _Param] = {}
        for i, t in zip(self.active, flat[:n]):
            free = spec.params[i].kind == "free"
            if (t + 1, free) not in memo:
                memo[t + 1, free] = _scalars(hws[free], t + 1, betas, eps, cfg.momenta, total)
            self.params[i] = _Param(hws[free], params[i], grads[i], states[i], spec.params[i].kind,
                                    head_view(spec, i, params[i].shape), memo[t + 1, free], rms.get(i), i in base)
        self.scratch: dict[tuple, _Scratch] = {}
        self.etas = {i: self.eta for i in self.active}

    def log_steps(self) -> None:
        """v2: each head parameter's step size ``eta e**sigma`` (one host read), from its state's ``ctx_lr``."""
        if self.cfg.tensor_lr and self.heads:
            sig = torch.stack([_log_step(self.params[i].hw, self.params[i].sc, self.params[i].st.get("ctx_lr", 0.0))
                               for i in self.heads])
            self.etas.update(zip(self.heads, (torch.exp(sig.to(torch.float64)) * self.eta).tolist()))

    def scratch_for(self, prm: _Param) -> _Scratch:
        key = (prm.st["v"].dtype, prm.hw.w1.dtype, prm.p.device)
        if key not in self.scratch:
            n = max(q.per * q.row for q in self.params.values())
            self.scratch[key] = _Scratch(n, prm.hw.w1.shape[0], *key)
        return self.scratch[key]


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
    if not any(g is not None for g in grads):
        return
    grp = _Group(learned, spec, params, grads, states, betas, eps, total_steps, base, lr)
    grp.log_steps()
    for i, prm in grp.params.items():
        _step_(prm, betas, grp.momenta, grp.etas[i], weight_decay, grp.scratch_for(prm))


def fast_encoder_step_(learned: LearnedUpdate, spec: GraphSpec, params: Sequence[Tensor],
                       grads: Sequence[Tensor | None], states: Sequence[dict[str, Tensor]], *, lr: float | Tensor,
                       betas: tuple[float, float], eps: float, weight_decay: float, total_steps: int | None = None,
                       base: Collection[int] = ()) -> None:
    """A step that runs the encoder, in place: as :func:`fast_group_step_`, with the node terms recomputed.

    The moments and the entry features of the parameters on the graph are computed block by block into one
    ``[*shape, F]`` tensor per parameter (the encoder's input, as the reference's), the encoder runs
    (:func:`~lopt_graphs.optim.functional.node_contexts`), its node terms go into the states, and then the head
    and the update run block by block on those features; graph-free parameters take the usual step.
    """
    from . import functional

    if not any(g is not None for g in grads):
        return
    grp = _Group(learned, spec, params, grads, states, betas, eps, total_steps, base, lr, all_norms=True)
    full: list[Tensor] = []
    for i, p in enumerate(params):
        prm = grp.params.get(i)
        if prm is None or prm.kind == "free":  # the encoder reads no features of graph-free parameters
            full.append(p.new_zeros(*p.shape, 6, dtype=compute_dtype(p)))
            continue
        prm.st["step"].add_(1)
        x = torch.empty(*p.shape, 6, dtype=prm.st["v"].dtype, device=p.device)
        full.append(x)
        scratch = grp.scratch_for(prm)
        for blk, xb in zip(prm.blocks, x.view(-1, 6).split(prm.per * prm.row)):
            vw = scratch.views(blk[0].numel(), prm.row)
            r = _moments_(blk, betas, grp.momenta, prm.sc, vw)
            _features_(blk, vw.p32.copy_(blk[0]) if prm.low else blk[0], r, prm.bounds, vw)
            torch.mul(vw.y.t(), prm.scale, out=xb)  # the features themselves: [m, 6]
    ctxs = functional.node_contexts(learned, spec, full)
    for i in grp.active:
        states[i].update(ctxs[i])
    grp.log_steps()
    for i, prm in grp.params.items():
        if prm.kind == "free":
            _step_(prm, betas, grp.momenta, grp.etas[i], weight_decay, grp.scratch_for(prm))
            continue
        eta = grp.etas[i]
        a_coef, decay = -eta * prm.sc.c[1] * prm.sc.s, 1.0 - eta * weight_decay
        scratch = grp.scratch_for(prm)
        if not prm.base:
            prm.head_inputs(eta, unscaled=True)
        wdt = prm.hw.w1.dtype
        for k, (blk, xb) in enumerate(zip(prm.blocks, full[i].view(-1, 6).split(prm.per * prm.row))):
            ps, ma, v = blk[0], blk[3], blk[5]
            vw = scratch.views(ps.numel(), prm.row)
            r = torch.add(v, prm.sc.e2, out=vw.r).rsqrt_()
            pw = vw.p32.copy_(ps) if prm.low else ps
            if prm.base:
                if weight_decay:
                    pw.mul_(decay)
                pw.addcmul_(ma, r, value=a_coef)
            else:
                _apply_(prm, k, xb.t().to(wdt), pw, torch.mul(ma, r, out=vw.adam), vw, a_coef, decay)
            if prm.low:
                ps.copy_(pw)
        prm.finish()


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
    prm = _Param(hw, p, g, st, kind, view, sc, rms, base)
    scratch = _Scratch(prm.per * prm.row, hw.w1.shape[0], st["v"].dtype, hw.w1.dtype, p.device)
    _step_(prm, betas, momenta, float(eta), weight_decay, scratch)
    return p, prm.st


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
