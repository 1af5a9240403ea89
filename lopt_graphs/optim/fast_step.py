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

With an ``orthogonal`` update (:attr:`~lopt_graphs.optim.learned.LearnedUpdateConfig.orthogonal`) the usual step
takes the orthogonalized matrices too: each one's direction, :func:`~lopt_graphs.optim.functional.orthogonal_direction`
of its advanced momentum, is computed first (the Newton-Schulz iterations) and replaces :math:`m_\text{adam} r'` in
the update, whose features are unchanged. The encoder step has Adam's direction only (the optimizer takes the
reference step at those steps).

Both run with subnormal floats flushed to zero (:func:`flush_subnormals`: a change of values below ``1.2e-38``
only, which avoids the CPU's slow subnormal arithmetic on decaying moments).

:class:`~lopt_graphs.optim.NeuralGraphOptimizer` uses these when ``compile=False`` in groups holding a parameter
of at least :data:`FAST_MIN_NUMEL` entries (groups of small parameters keep the reference, so the class stays
bit-identical to :func:`~lopt_graphs.optim.functional.ngo_update` on small models), without
``record_diagnostics``, and only after :func:`fast_step_agrees` confirmed the maths for the checkpoint. Checked
against the reference in ``tests/optim/test_fast_step.py``. Not for ``torch.func`` transforms (in place; step
counts and norms are read as Python numbers: one host read per group step, two with v2's per-tensor step).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Collection, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from ..graph import GraphSpec
from . import native
from .functional import (
    FEATURE_CLIP,
    compute_dtype,
    head_view,
    horizon,
    init_state,
    orthogonal_direction,
    readout_context,
    resolve_orthogonal_dtype,
)
from .learned import HeadWeights, LearnedUpdate

#: Parameter groups holding a parameter with at least this many entries take the fast path.
FAST_MIN_NUMEL = 4096
#: Entries per block (whole rows of a weight): a block's ~20 float temporaries per entry stay in a 2 MB L2 cache.
BLOCK = 16384


@contextlib.contextmanager
def flush_subnormals() -> Iterator[None]:
    """Subnormal floats (``|x| < 1.2e-38`` in float32) read and written as zero on this thread's CPU (FTZ/DAZ)
    inside the block, the previous mode restored after it.

    Moments of entries whose gradient has stopped (dead units, always-zero inputs) decay geometrically (the fast
    momentum halves every step) and pass through the subnormal range, where x86 arithmetic is many times
    slower: measured on this machine, the fast step of a 269K-weight MLP took 23 ms instead of 11 ms with ~10K
    subnormal momenta. Flushing changes values only below ``1.2e-38``: a feature ``m r`` of such a moment is
    below ``1e-30``, far under the float rounding of the update. A no-op where the CPU has no such mode.
    """
    already = bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)
    changed = not already and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


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
    total = horizon(t, total, hw.untold_horizon, hw.untold_growth)
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
    y: Tensor  # [7, m]: the six features, scaled (see the module docstring), and a row of ones (the step bias)
    ys: tuple[Tensor, ...]  # its rows
    y01: Tensor  # rows 0 and 1
    z: Tensor  # [H, m]
    z_rows: Tensor  # [H, m // row, row]
    o: Tensor  # [2, m]: dir_scale o_dir, u
    o_dir: Tensor
    o_mag: Tensor


class _Scratch:
    """Work buffers reused by every block of a group step, and their views for a block of ``m`` entries (made
    once per size: a block's Python overhead is a good part of its cost)."""

    def __init__(self, n: int, hdim: int, cdt: torch.dtype, wdt: torch.dtype, device: torch.device):
        self.hdim = hdim
        self.r, self.adam, self.p32 = (torch.empty(n, dtype=cdt, device=device) for _ in range(3))
        self.y = torch.empty(7, n, dtype=wdt, device=device)
        self.y[6] = 1.0
        self.z, self.o = torch.empty(hdim * n, dtype=wdt, device=device), torch.empty(2 * n, dtype=wdt, device=device)
        self._views: dict[tuple[int, int], _Views] = {}

    def views(self, m: int, row: int) -> _Views:
        if (m, row) not in self._views:
            y, z, o = self.y[:, :m], self.z[:self.hdim * m].view(self.hdim, m), self.o[:2 * m].view(2, m)
            self._views[m, row] = _Views(self.r[:m], self.adam[:m], self.p32[:m], y, y.unbind(0), y[:2], z,
                                         z.view(self.hdim, m // row, row), o, *o.unbind(0))
        return self._views[m, row]


def _rows(view: Sequence[int]) -> tuple[int, int, int]:
    """``(rows, row length, rows per block)`` of a parameter's entries in the head's view (a weight's rows are
    its output neurons; node and 1-d parameters have rows of one entry)."""
    n = math.prod(view)
    nrows, row = (view[0], n // view[0]) if len(view) >= 2 and view[0] else (n, 1)
    return nrows, row, max(1, min(nrows, BLOCK // row))


def _blocks(p: Tensor, st: dict[str, Tensor], size: int, cache: dict) -> list[tuple[Tensor, ...]]:
    """Block views of a parameter and its moments, cached while they are the same tensors (a view costs a few
    microseconds; a large parameter has tens of blocks)."""
    key = (p.data_ptr(), size, *(st[k] for k in _MOMENTS))
    if cache.get("blocks_key") is None or not _same(cache["blocks_key"], key):
        cache["blocks_key"] = key
        cache["blocks"] = list(zip(*(x.view(-1).split(size) for x in (p, *(st[k] for k in _MOMENTS)))))
    return cache["blocks"]


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y if isinstance(x, Tensor) else x == y for x, y in zip(a, b))


_MOMENTS = ("m_fast", "m_adam", "m_slow", "v")


class _Param:
    """One parameter of a group step: its tensors split into blocks, its scalars, its head's inputs."""

    def __init__(self, hw: HeadWeights, p: Tensor, g: Tensor, st: dict[str, Tensor], kind: str,
                 view: Sequence[int], sc: _Scalars, rms: tuple[float, float] | None, base: bool, cache: dict):
        for k in _MOMENTS:
            if not st[k].is_contiguous():
                st[k] = st[k].contiguous()
        self.hw, self.p, self.st, self.kind, self.sc, self.base, self.cache = hw, p, st, kind, sc, base, cache
        self.direction: Tensor | None = None  # an orthogonalized direction in place of m_adam r' (orthogonalize_)
        self.dirs: tuple[Tensor, ...] = ()  # its blocks
        self.work = p if p.is_contiguous() else p.contiguous()  # written back by finish()
        self.g = g.to(st["v"].dtype).contiguous()
        self.nrows, self.row, self.per = _rows(view)
        size = self.per * self.row
        self.blocks = _blocks(self.work, st, size, cache)
        self.gs = self.g.view(-1).split(size)
        self.low = p.dtype != st["v"].dtype  # bfloat16/float16 parameter: update a float32 copy of each block
        if rms is not None:  # clip bounds of the scaled features, and their scales (see the module docstring)
            s, (cf, ca, cs) = sc.s, sc.c
            lim = FEATURE_CLIP
            self.bounds = (lim / s, lim / (cf * s), lim / (ca * s), lim / (cs * s), lim * rms[0], lim * rms[1])
            self.scale = torch.tensor([s, cf * s, ca * s, cs * s, 1.0 / rms[0], 1.0 / rms[1]], dtype=hw.w1.dtype,
                                      device=p.device)

    def scaled_w1(self, w1: Tensor) -> Tensor:
        """The head's first layer with its step-bias column ``[H, 7]``, times the feature scales (the step bias
        unscaled)."""
        return w1 * torch.cat([self.scale, self.scale.new_ones(1)])

    def node_terms(self) -> None:
        """The head's per-block node terms, from the state, cached until the encoder next runs: edges
        ``ctx_src`` tiled over a block (the first matmul's input) and ``ctx_dst`` per block of rows; node
        parameters their ``ctx`` per block."""
        st, c, per, row = self.st, self.cache, self.per, self.row
        if self.kind == "edge":
            key = (st["ctx_src"], st["ctx_dst"], per, row)
            if c.get("ctx_key") is None or not _same(c["ctx_key"], key):
                src = st["ctx_src"]  # [H, C], broadcast over a kernel's S entries and a block's rows
                hdim = src.shape[0]
                tiled = src[:, None, :, None].expand(hdim, per, src.shape[1], row // src.shape[1]).reshape(hdim, -1)
                last = self.nrows % per
                c["ctx_key"], c["inps"] = key, [tiled] * (self.nrows // per) + ([tiled[:, :last * row]] if last else [])
                c["rows_ctx"] = st["ctx_dst"].t().unsqueeze(-1).split(per, dim=1)  # [H, rows, 1] per block
        elif self.kind == "node":
            key = (st["ctx"], per)
            if c.get("ctx_key") is None or not _same(c["ctx_key"], key):
                c["ctx_key"], c["inps"], c["rows_ctx"] = key, st["ctx"].split(per * row, dim=1), [None] * len(self.blocks)
        else:
            c["inps"], c["rows_ctx"] = [None] * len(self.blocks), [None] * len(self.blocks)
        self.inps, self.rows_ctx = c["inps"], c["rows_ctx"]

    def orthogonalize_(self, betas: tuple[float, float], dtype: torch.dtype | str | None = None) -> None:
        """Set :attr:`direction`: this step's advanced momentum orthogonalized, at the RMS of ``m_adam r'`` (the
        reference's direction times ``(1 - b1^t) / sqrt(1 - b2^t)``, the units the update's ``a_coef`` expects;
        the Newton-Schulz iterations are scale-free, in
        :func:`~lopt_graphs.optim.functional.resolve_orthogonal_dtype` of ``dtype``), from the state before the step."""
        b1, b2 = betas
        st, g = self.st, self.g
        ma = torch.lerp(st["m_adam"], g, 1 - b1)
        adam = ma * torch.rsqrt(st["v"] * b2 + (1 - b2) * g * g + self.sc.e2)
        self.direction = orthogonal_direction(ma, adam, resolve_orthogonal_dtype(dtype, self.p)).contiguous()
        self.dirs = self.direction.view(-1).split(self.per * self.row)

    def finish(self) -> None:
        if self.work is not self.p:
            self.p.copy_(self.work)


def _zero_d(values: Sequence[float], like: Tensor) -> list[Tensor]:
    """0-d tensors of ``values`` in ``like``'s dtype and device."""
    return list(torch.tensor(values, dtype=like.dtype, device=like.device).unbind(0))


def _clamp_into(x: Tensor, bound: float, out: Tensor) -> None:
    """``out = clip(x, -bound, bound)``; ``out`` may be of a lower precision (the head's dtype)."""
    if x.dtype == out.dtype:
        torch.clamp(x, -bound, bound, out=out)
    else:
        out.copy_(x).clamp_(-bound, bound)


def _step_(prm: _Param, betas: tuple[float, float], momenta: tuple[float, float], eta: float, weight_decay: float,
           scratch: _Scratch, w1: Tensor | None = None, w2: Tensor | None = None, b2: Tensor | None = None) -> None:
    """One parameter's whole step, block by block, in place (``prm.base``: the base step, no head). ``w1``:
    the head's first layer with a step-bias column ``[H, 7]``; ``w2``/``b2`` its output layer, scaled."""
    b1, b2_ = betas
    bf, bs = momenta
    prm.st["step"].add_(1)
    a_coef = -eta * prm.sc.c[1] * prm.sc.s  # p += a_coef * (m_adam r') [* exp(clip(u))]
    if not prm.low and _native_step(prm, betas, momenta, eta, weight_decay, a_coef, w1, w2, b2):
        prm.finish()
        return
    # 0-d tensors in the state's dtype: a Python number in add(out=)/mul_ costs a conversion per call
    e2, b2t, decay = _zero_d((prm.sc.e2, b2_, 1.0 - eta * weight_decay), prm.st["v"])
    row, low = prm.row, prm.low
    if not prm.base:
        prm.node_terms()
        w1s = prm.scaled_w1(w1)
        bd = prm.bounds
        merged = bd[0] == bd[1]  # the fast momentum's bias correction is 1 from t = 54 on: one clip for both
        mc = prm.hw.mag_clip
    for k, ((ps, mf, ma, ms, v), gs) in enumerate(zip(prm.blocks, prm.gs)):
        vw = scratch.views(ps.numel(), row)
        mf.lerp_(gs, 1 - bf)
        ma.lerp_(gs, 1 - b1)
        ms.lerp_(gs, 1 - bs)
        v.mul_(b2t).addcmul_(gs, gs, value=1 - b2_)
        r = torch.add(v, e2, out=vw.r).rsqrt_()
        pw = vw.p32.copy_(ps) if low else ps
        if prm.base:  # the base step: p <- p (1 - eta wd) - eta c_adam s (m_adam r')
            if weight_decay:
                pw.mul_(decay)
            pw.addcmul_(ma, r, value=a_coef)
        else:
            y0, y1, y2, y3, y4, y5, _ = vw.ys
            torch.mul(gs, r, out=y0)
            torch.mul(mf, r, out=y1)
            if merged:
                vw.y01.clamp_(-bd[0], bd[0])
            else:
                y0.clamp_(-bd[0], bd[0])
                y1.clamp_(-bd[1], bd[1])
            _clamp_into(torch.mul(ma, r, out=vw.adam), bd[2], y2)
            torch.mul(ms, r, out=y3).clamp_(-bd[3], bd[3])
            _clamp_into(pw, bd[4], y4)
            _clamp_into(gs, bd[5], y5)
            if weight_decay:  # after the features (they read p before the step)
                pw.mul_(decay)
            inp = prm.inps[k]
            if inp is None:
                torch.mm(w1s, vw.y, out=vw.z)
            else:
                torch.addmm(inp, w1s, vw.y, out=vw.z)
            cd = prm.rows_ctx[k]
            if cd is not None:
                vw.z_rows.add_(cd)
            torch.addmm(b2, w2, vw.z.relu_(), out=vw.o)
            direction = vw.adam if prm.direction is None else prm.dirs[k]
            pw.addcmul_(direction, vw.o_mag.clamp_(-mc, mc).exp_(), value=a_coef).add_(vw.o_dir, alpha=-eta)
        if low:
            ps.copy_(pw)
    prm.finish()


def _native_step(prm: _Param, betas: tuple[float, float], momenta: tuple[float, float], eta: float,
                 weight_decay: float, a_coef: float, w1: Tensor | None, w2: Tensor | None, b2: Tensor | None) -> bool:
    """:func:`_step_` by the C loop of :mod:`lopt_graphs.optim.native` when it is built and the tensors are
    float32 on the CPU (``step`` is already counted); ``False``: the caller runs the eager blocks."""
    if not native.available():
        return False
    st, kind = prm.st, prm.kind
    moments = tuple(st[k] for k in _MOMENTS)
    ctx: tuple[Tensor | None, Tensor | None] = (None, None)
    if not prm.base:
        if kind == "edge":
            ctx = (st["ctx_dst"].t().contiguous(), st["ctx_src"].contiguous())
        elif kind == "node":
            ctx = (st["ctx"].contiguous(), None)
    head = () if prm.base else (w1, w2, b2)
    if not native.eligible(prm.work, prm.g, *moments, *ctx, *head, prm.direction):
        return False
    hdim = prm.hw.w1.shape[0]
    if not prm.base and hdim > native.MAX_HIDDEN:
        return False
    b1, b2_ = betas
    bounds = prm.bounds if not prm.base else (0.0,) * 6
    scalars = [1 - momenta[0], 1 - b1, 1 - momenta[1], b2_, 1 - b2_, prm.sc.e2, 1.0 - eta * weight_decay, a_coef,
               eta, *bounds, prm.hw.mag_clip]
    if prm.base:
        w1s = w2c = b2c = torch.zeros(1)
    else:
        w1s = prm.scaled_w1(w1).contiguous()
        w2c, b2c = w2.contiguous(), b2.reshape(-1).contiguous()
    tile = torch.empty(hdim * prm.row) if kind == "edge" and not prm.base else None
    native.param_step_(kind, prm.work.numel(), prm.row, prm.work, prm.g, moments, ctx, w1s, w2c, b2c, scalars,
                       prm.base, bool(weight_decay), tile, None if prm.base else prm.direction)
    return True


def grad_norms(grads: Sequence[Tensor | None]) -> list[Tensor | None]:
    """The 2-norms of the gradients (0-d, in :func:`~lopt_graphs.optim.functional.compute_dtype`), one
    ``torch._foreach_norm`` per dtype; ``None`` for a missing gradient. A norm is finite exactly when its
    gradient holds no NaN or Inf (unless the sum of squares overflows), so the optimizer checks them instead of
    a separate pass, and the fast step reuses them for its ``g / rms(g)`` feature."""
    out: list[Tensor | None] = [None] * len(grads)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        if g is not None:
            by_dtype.setdefault(compute_dtype(g), []).append(i)
    for dt, idx in by_dtype.items():
        for i, n in zip(idx, torch._foreach_norm([grads[i] for i in idx], 2, dtype=dt)):
            out[i] = n
    return out


class _Group:
    """A group step's parameters, prepared with one host read (step counts, norms)."""

    def __init__(self, learned: LearnedUpdate, spec: GraphSpec, params: Sequence[Tensor],
                 grads: Sequence[Tensor | None], states: Sequence[dict[str, Tensor]], betas: tuple[float, float],
                 eps: float, total: int | None, base: Collection[int], lr: float | Tensor, cache: dict | None,
                 gnorms: Sequence[Tensor | None] | None, all_norms: bool = False):
        cfg = learned.cfg
        self.cfg, self.betas, self.momenta, self.total = cfg, betas, cfg.momenta, total
        self.active = [i for i, g in enumerate(grads) if g is not None]
        for i in self.active:
            if not states[i]:
                states[i].update(init_state(params[i]))
        self.hws = hws = (learned.head_weights(free=False), learned.head_weights(free=True))
        self.heads = [i for i in self.active if i not in base]
        normed = self.active if all_norms else self.heads
        gnorms = gnorms if gnorms is not None else grad_norms(grads)
        pnorms = grad_norms([params[i] if i in normed else None for i in range(len(params))])
        # one host read: step counts, the norms of each parameter whose features are needed, the step size
        reads = [states[i]["step"].to(torch.float64) for i in self.active]
        reads += [x.to(torch.float64) for i in normed for x in (pnorms[i], gnorms[i])]
        eta = lr * cfg.base_lr
        if isinstance(eta, Tensor):
            reads.append(eta.reshape(()).to(torch.float64))
        flat = torch.stack([x.to(reads[0].device) for x in reads]).tolist()
        self.eta = flat[-1] if isinstance(eta, Tensor) else float(eta)
        n = len(self.active)
        rms = {i: tuple(math.sqrt(flat[n + 2 * k + j] ** 2 / max(params[i].numel(), 1) + 1e-12) for j in (0, 1))
               for k, i in enumerate(normed)}
        memo: dict[tuple[float, bool], _Scalars] = {}
        self.cache = cache = {} if cache is None else cache
        self.params: dict[int, _Param] = {}
        for i, t in zip(self.active, flat[:n]):
            free = spec.params[i].kind == "free"
            if (t + 1, free) not in memo:
                memo[t + 1, free] = _scalars(hws[free], t + 1, betas, eps, cfg.momenta, total)
            self.params[i] = _Param(hws[free], params[i], grads[i], states[i], spec.params[i].kind,
                                    head_view(spec, i, params[i].shape), memo[t + 1, free], rms.get(i), i in base,
                                    cache.setdefault(i, {}))
        self.scratch: dict[tuple, _Scratch] = cache.setdefault("scratch", {})
        self.etas = {i: self.eta for i in self.active}
        self.layers: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}

    def layers_of(self, prm: _Param) -> tuple[Tensor, Tensor, Tensor]:
        """The head's layers for this step: ``W1`` with the step-bias column ``[H, 7]``, ``W2`` and ``b2`` with
        their output scales (``dir_scale``, ``mag_scale``)."""
        key = (id(prm.hw), id(prm.sc))
        if key not in self.layers:
            hw = prm.hw
            out_scale = torch.tensor([[hw.dir_scale], [hw.mag_scale]], dtype=hw.w1.dtype, device=hw.w1.device)
            self.layers[key] = (torch.cat([hw.w1, prm.sc.sb[:, None]], dim=1), hw.w2 * out_scale,
                                hw.b2[:, None] * out_scale)
        return self.layers[key]

    def log_steps(self) -> None:
        """v2: each head parameter's step size ``eta e**sigma`` (one host read), from its state's ``ctx_lr``."""
        if self.cfg.tensor_lr and self.heads:
            sig = torch.stack([_log_step(self.params[i].hw, self.params[i].sc,
                                         readout_context(self.params[i].st, self.total,
                                                         self.params[i].hw.untold_horizon))
                               for i in self.heads])
            self.etas.update(zip(self.heads, (torch.exp(sig.to(torch.float64)) * self.eta).tolist()))

    def scratch_for(self, prm: _Param) -> _Scratch:
        """Work buffers for the parameter's blocks (kept in the cache between steps)."""
        key = (prm.st["v"].dtype, prm.hw.w1.dtype, prm.p.device)
        n = prm.per * prm.row
        if key not in self.scratch or self.scratch[key].r.numel() < n or self.scratch[key].hdim != prm.hw.w1.shape[0]:
            n = max([n] + [q.per * q.row for q in self.params.values()])
            self.scratch[key] = _Scratch(n, prm.hw.w1.shape[0], *key)
        return self.scratch[key]

    def step_(self, i: int, weight_decay: float, orthogonal: bool = False,
              orthogonal_dtype: torch.dtype | str | None = None) -> None:
        prm = self.params[i]
        if orthogonal and not prm.base:
            prm.orthogonalize_(self.betas, orthogonal_dtype)
        _step_(prm, self.betas, self.momenta, self.etas[i], weight_decay, self.scratch_for(prm), *self.layers_of(prm))


def fast_group_step_(learned: LearnedUpdate, spec: GraphSpec, params: Sequence[Tensor],
                     grads: Sequence[Tensor | None], states: Sequence[dict[str, Tensor]], *, lr: float | Tensor,
                     betas: tuple[float, float], eps: float, weight_decay: float, total_steps: int | None = None,
                     base: Collection[int] = (), cache: dict | None = None,
                     gnorms: Sequence[Tensor | None] | None = None, orthogonal: Collection[int] = (),
                     orthogonal_dtype: torch.dtype | str | None = None) -> None:
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
        cache: a dict kept by the caller between steps (block views, tiled node terms; entries are checked
            against the tensors they were made from). ``None``: nothing is kept.
        gnorms: the gradients' norms if the caller has them (:func:`grad_norms`).
        orthogonal: indices of parameters whose direction is orthogonalized
            (:func:`~lopt_graphs.optim.functional.orthogonal_params` of an ``orthogonal`` update, less ``base``).
        orthogonal_dtype: the dtype of their Newton-Schulz iterations (``None``: the parameter's compute dtype;
            ``"auto"``: :func:`~lopt_graphs.optim.functional.auto_orthogonal_dtype` per matrix).
    """
    if not any(g is not None for g in grads):
        return
    grp = _Group(learned, spec, params, grads, states, betas, eps, total_steps, base, lr, cache, gnorms)
    grp.log_steps()
    for i in grp.params:
        grp.step_(i, weight_decay, i in orthogonal, orthogonal_dtype)


def fast_encoder_step_(learned: LearnedUpdate, spec: GraphSpec, params: Sequence[Tensor],
                       grads: Sequence[Tensor | None], states: Sequence[dict[str, Tensor]], *, lr: float | Tensor,
                       betas: tuple[float, float], eps: float, weight_decay: float, total_steps: int | None = None,
                       base: Collection[int] = (), cache: dict | None = None,
                       gnorms: Sequence[Tensor | None] | None = None) -> None:
    """A step that runs the encoder, in place: as :func:`fast_group_step_`, with the node terms recomputed.

    The moments and the entry features of the parameters on the graph are computed block by block into one
    ``[*shape, F]`` tensor per parameter (the encoder's input, as the reference's), the encoder runs
    (:func:`~lopt_graphs.optim.functional.node_contexts`), its node terms go into the states, and then the head
    and the update run block by block on those features; graph-free parameters take the usual step.
    """
    from . import functional

    if not any(g is not None for g in grads):
        return
    grp = _Group(learned, spec, params, grads, states, betas, eps, total_steps, base, lr, cache, gnorms,
                 all_norms=True)
    betas, momenta = grp.betas, grp.momenta
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
        for (ps, mf, ma, ms, v), gs, xb in zip(prm.blocks, prm.gs, x.view(-1, 6).split(prm.per * prm.row)):
            vw = scratch.views(ps.numel(), prm.row)
            mf.lerp_(gs, 1 - momenta[0])
            ma.lerp_(gs, 1 - betas[0])
            ms.lerp_(gs, 1 - momenta[1])
            v.mul_(betas[1]).addcmul_(gs, gs, value=1 - betas[1])
            r = torch.add(v, prm.sc.e2, out=vw.r).rsqrt_()
            y = vw.ys
            for f, (src, bd) in enumerate(zip((torch.mul(gs, r, out=y[0]), torch.mul(mf, r, out=y[1]),
                                               torch.mul(ma, r, out=y[2]), torch.mul(ms, r, out=y[3]),
                                               vw.p32.copy_(ps) if prm.low else ps, gs), prm.bounds)):
                _clamp_into(src, bd, y[f])
            torch.mul(vw.y[:6].t(), prm.scale, out=xb)  # the features themselves: [m, 6]
    ctxs = functional.node_contexts(learned, spec, full)
    for i in grp.active:
        states[i].update(ctxs[i])
    grp.log_steps()
    for i, prm in grp.params.items():
        if prm.kind == "free":
            grp.step_(i, weight_decay)
            continue
        eta = grp.etas[i]
        a_coef, decay = -eta * prm.sc.c[1] * prm.sc.s, 1.0 - eta * weight_decay
        scratch = grp.scratch_for(prm)
        if not prm.base:
            prm.node_terms()
            w1, w2, b2 = grp.layers_of(prm)
            w1, sb = w1[:, :6], w1[:, 6:]
        for k, ((ps, _, ma, _, v), xb) in enumerate(zip(prm.blocks, full[i].view(-1, 6).split(prm.per * prm.row))):
            vw = scratch.views(ps.numel(), prm.row)
            r = torch.add(v, prm.sc.e2, out=vw.r).rsqrt_()
            pw = vw.p32.copy_(ps) if prm.low else ps
            if weight_decay:
                pw.mul_(decay)
            if prm.base:
                pw.addcmul_(ma, r, value=a_coef)
            else:  # the head on the features the encoder read
                torch.addmm(prm.inps[k], w1, xb.t().to(w1.dtype), out=vw.z).add_(sb)
                if prm.rows_ctx[k] is not None:
                    vw.z_rows.add_(prm.rows_ctx[k])
                torch.addmm(b2, w2, vw.z.relu_(), out=vw.o)
                mc = prm.hw.mag_clip
                pw.addcmul_(torch.mul(ma, r, out=vw.adam), vw.o_mag.clamp_(-mc, mc).exp_(), value=a_coef)
                pw.add_(vw.o_dir, alpha=-eta)
            if prm.low:
                ps.copy_(pw)
        prm.finish()


def fast_param_step(hw: HeadWeights, p: Tensor, g: Tensor, st: dict[str, Tensor], kind: str,
                    view: tuple[int, ...], betas: tuple[float, float], eps: float, momenta: tuple[float, float],
                    eta: float | Tensor, weight_decay: float, stacked: bool = False,
                    total: float | None = None, base: bool = False, orthogonal: bool = False,
                    orthogonal_dtype: torch.dtype | str | None = None
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """Same signature and result as :func:`~lopt_graphs.optim.functional.param_step` (``stacked`` changes
    nothing; ``orthogonal`` as there), without mutating its inputs (it works on copies): the per-parameter form of
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
            eta = eta * torch.exp(_log_step(hw, sc, readout_context(st, total, hw.untold_horizon)))
    prm = _Param(hw, p, g, st, kind, view, sc, rms, base, {})
    if orthogonal and not base:
        prm.orthogonalize_(betas, orthogonal_dtype)
    scratch = _Scratch(prm.per * prm.row, hw.w1.shape[0], st["v"].dtype, hw.w1.dtype, p.device)
    out_scale = torch.tensor([[hw.dir_scale], [hw.mag_scale]], dtype=hw.w1.dtype, device=hw.w1.device)
    _step_(prm, betas, momenta, float(eta), weight_decay, scratch, torch.cat([hw.w1, sc.sb[:, None]], dim=1),
           hw.w2 * out_scale, hw.b2[:, None] * out_scale)
    return p, prm.st


def random_state(p: Tensor, kind: str, view: tuple[int, ...], hdim: int, tensor_lr: bool,
                 gen: torch.Generator) -> dict[str, Tensor]:
    """A fresh state of ``p`` with random cached node terms (``[O, H]``/``[H, C]`` for an edge, ``[H, n]`` for a
    node parameter, and a per-tensor readout when ``tensor_lr``): the input of the fast path's checks."""
    st = init_state(p)
    if kind == "edge":
        st["ctx_dst"] = torch.randn(view[0], hdim, generator=gen)
        st["ctx_src"] = torch.randn(hdim, view[1], generator=gen)
    elif kind == "node":
        st["ctx"] = torch.randn(hdim, view[0], generator=gen)
    if tensor_lr and kind != "free":
        st["ctx_lr"] = torch.randn((), generator=gen)
        st["ctx_lr_untold"] = torch.randn((), generator=gen)  # read by untold runs of an untold readout
    return st


def fast_step_agrees(learned: LearnedUpdate, atol: float = 1e-5) -> bool:
    """Whether :func:`fast_param_step` reproduces the reference ``param_step`` (and, with ``base=True``, the base
    step of :func:`~lopt_graphs.optim.bn_scale.base_step`) for ``learned``'s head, on small random parameters of
    every kind over three steps, with an unknown and a known horizon. The optimizer checks this once before
    using the fast path, so a change of the reference maths (or of :class:`HeadWeights`) falls back to the
    reference instead of silently diverging. With an ``orthogonal`` update the weights it orthogonalizes are
    checked with that direction."""
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
                orth = learned.cfg.orthogonal and kind == "edge" and (len(shape) == 2 or learned.cfg.orthogonal_conv)
                dev = hw.w1.device
                p = torch.randn(*shape, generator=gen)
                st = random_state(p, kind, view, hdim, learned.cfg.tensor_lr, gen)
                st = {k: v.to(dev) for k, v in st.items()}
                a, sa, b, sb = p.to(dev), st, p.to(dev), st
                for _ in range(3):
                    grad = torch.randn(*shape, generator=gen).to(dev)
                    args = (kind, view, betas, eps, learned.cfg.momenta, eta, wd)
                    a_new, sa = param_step(hw, a, grad, sa, *args, total=total, orthogonal=orth)
                    a = base_step(a, sa, betas, eps, eta, wd) if base else a_new
                    b, sb = fast_param_step(hw, b, grad, sb, *args, total=total, base=base, orthogonal=orth)
                if not torch.allclose(a, b, rtol=1e-4, atol=atol) or set(sa) != set(sb):
                    return False
    except Exception:  # an interface change: use the reference
        return False
    return True
