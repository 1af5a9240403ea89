"""The fast step's per-entry maths as one C loop, built with the system's C compiler at first use.

:func:`~lopt_graphs.optim.fast_step.fast_group_step_` runs about 25 PyTorch operations per block of a parameter;
on a 269K-weight MLP that is ~500 calls a step, each paying Python and dispatcher overhead and a pass over its
block. :func:`param_step_` does a parameter's whole usual step (moments, features, the head's two layers,
the update) in one pass over its entries, in chunks the compiler vectorizes; the same maths as
:func:`~lopt_graphs.optim.fast_step._step_` (which calls it when it can), up to float rounding
(``exp`` is a degree-7 polynomial after range reduction, within 2e-7 relative of ``torch.exp``).

Built once per machine: ``cc -O3 -march=native -fno-math-errno -shared`` (under a second), cached in
``$LOPT_GRAPHS_CACHE`` (default ``~/.cache/lopt_graphs``) under a hash of the source, the compiler and the
CPU's flags, and loaded with :mod:`ctypes`. Used only for float32 parameters and states on the CPU, with a
head of at most :data:`MAX_HIDDEN` units; everything else (CUDA, bfloat16, no compiler, or
``LOPT_GRAPHS_NATIVE=0``) takes the eager blocks. :func:`available` says which.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: Largest head hidden size the kernel handles (its per-chunk buffers live on the stack).
MAX_HIDDEN = 64

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CH 256
#define MAXH 64

/* exp(x) for |x| <= 80: x = n ln2 + r, |r| <= ln2/2, exp(r) by its degree-7 Taylor polynomial. */
static inline float poly_exp(float x) {
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round to nearest */
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    float p = 1.9841270e-4f;
    p = p * r + 1.3888889e-3f;
    p = p * r + 8.3333333e-3f;
    p = p * r + 4.1666667e-2f;
    p = p * r + 1.6666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

static inline float clampf(float x, float b) { return x < -b ? -b : (x > b ? b : x); }

/* sc: [0] 1-b_fast [1] 1-b1 [2] 1-b_slow [3] b2 [4] 1-b2 [5] eps^2 (1-b2^t) [6] decay [7] a_coef [8] eta
       [9..14] the six feature bounds [15] mag clip.
   One span of n entries p[0..n) whose head inputs get bias_h(k) = w1s[h*7+6] + rowc[h] + colc[h*ncol + k0 + k]
   (colc may be NULL); nodes pass ncol = 0 and colc pointing at their own ctx row offset. */
static void span(int64_t n, float *restrict p, const float *restrict g, float *restrict mf, float *restrict ma,
                 float *restrict ms, float *restrict v, int H, const float *restrict w1s, const float *restrict w2,
                 const float *restrict b2, const float *restrict sc, const float *restrict rowc,
                 const float *restrict colc, int64_t cstride, int base, int wd, const float *restrict dir) {
    float adam[CH], y0[CH], y1[CH], y2[CH], y3[CH], y4[CH], y5[CH], od[CH], om[CH], z[CH];
    const float af = sc[0], aa = sc[1], as = sc[2], bb2 = sc[3], ab2 = sc[4], e2 = sc[5], decay = sc[6];
    const float a_coef = sc[7], eta = sc[8], mc = sc[15];
    const float l0 = sc[9], l1 = sc[10], l2 = sc[11], l3 = sc[12], l4 = sc[13], l5 = sc[14];
    for (int64_t k0 = 0; k0 < n; k0 += CH) {
        const int L = (int)(n - k0 < CH ? n - k0 : CH);
        float *restrict pp = p + k0, *restrict f = mf + k0, *restrict a = ma + k0, *restrict s = ms + k0;
        float *restrict vv = v + k0;
        const float *restrict gg = g + k0;
        for (int k = 0; k < L; k++) {
            const float gk = gg[k];
            const float fk = f[k] + af * (gk - f[k]);
            const float ak = a[k] + aa * (gk - a[k]);
            const float sk = s[k] + as * (gk - s[k]);
            const float vk = vv[k] * bb2 + ab2 * (gk * gk);
            f[k] = fk;
            a[k] = ak;
            s[k] = sk;
            vv[k] = vk;
            const float r = 1.0f / sqrtf(vk + e2);
            adam[k] = ak * r;
            y0[k] = clampf(gk * r, l0);
            y1[k] = clampf(fk * r, l1);
            y2[k] = clampf(ak * r, l2);
            y3[k] = clampf(sk * r, l3);
            y4[k] = clampf(pp[k], l4);
            y5[k] = clampf(gk, l5);
        }
        if (base) {
            const float dk = wd ? decay : 1.0f;
            for (int k = 0; k < L; k++) pp[k] = pp[k] * dk + a_coef * adam[k];
            continue;
        }
        for (int k = 0; k < L; k++) { od[k] = b2[0]; om[k] = b2[1]; }
        for (int h = 0; h < H; h++) {
            const float *w = w1s + 7 * h;
            const float c0 = w[0], c1 = w[1], c2 = w[2], c3 = w[3], c4 = w[4], c5 = w[5];
            const float bias = w[6] + (rowc ? rowc[h] : 0.0f), u0 = w2[h], u1 = w2[H + h];
            for (int k = 0; k < L; k++)
                z[k] = c0 * y0[k] + c1 * y1[k] + c2 * y2[k] + c3 * y3[k] + c4 * y4[k] + c5 * y5[k] + bias;
            if (colc) {
                const float *restrict col = colc + h * cstride + k0;
                for (int k = 0; k < L; k++) z[k] += col[k];
            }
            for (int k = 0; k < L; k++) {
                float zz = z[k] > 0.0f ? z[k] : 0.0f;
                od[k] += u0 * zz;
                om[k] += u1 * zz;
            }
        }
        const float dk = wd ? decay : 1.0f;
        const float *restrict dd = dir ? dir + k0 : adam;  /* an orthogonalized direction replaces m_adam r' */
        for (int k = 0; k < L; k++)
            pp[k] = pp[k] * dk + a_coef * dd[k] * poly_exp(clampf(om[k], mc)) - eta * od[k];
    }
}

/* A parameter's usual step. kind 0: free or base (no context); 1: node (ctx [H, n]); 2: edge, rows of `row`
   entries: ctx_dst [H, rows] per row and ctx_src [H, C] per column block of `row / C` entries. dir (or NULL):
   the step's direction in place of m_adam r' (an orthogonalized one, in the same units), n entries. */
int ngo_param_step(int kind, int64_t n, int64_t row, int64_t C, float *p, const float *g, float *mf, float *ma,
                   float *ms, float *v, const float *ctx_a, const float *ctx_b, int H, const float *w1s,
                   const float *w2, const float *b2, const float *sc, int base, int wd, float *tile,
                   const float *dir) {
    if (H > MAXH) return 1;
    if (base || kind == 0) {
        span(n, p, g, mf, ma, ms, v, H, w1s, w2, b2, sc, 0, 0, 0, base, wd, base ? 0 : dir);
    } else if (kind == 1) {
        span(n, p, g, mf, ma, ms, v, H, w1s, w2, b2, sc, 0, ctx_a, n, base, wd, dir);
    } else {
        const int64_t rows = n / row, S = row / C;
        float rowc[MAXH];
        for (int h = 0; h < H; h++)  /* ctx_src tiled over each column's S kernel entries: [H, row] */
            for (int64_t j = 0; j < row; j++) tile[h * row + j] = ctx_b[h * C + j / S];
        for (int64_t r = 0; r < rows; r++) {
            for (int h = 0; h < H; h++) rowc[h] = ctx_a[h * rows + r];
            span(row, p + r * row, g + r * row, mf + r * row, ma + r * row, ms + r * row, v + r * row,
                 H, w1s, w2, b2, sc, rowc, tile, row, base, wd, dir ? dir + r * row : 0);
        }
    }
    return 0;
}
"""

_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    return Path(os.environ.get("LOPT_GRAPHS_CACHE") or Path.home() / ".cache" / "lopt_graphs")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _compile(cc: str, flags: list[str], lib: Path) -> bool:
    """Build the C step into ``lib`` (written whole or not at all); ``False`` (with a warning) when cc fails."""
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src, out = Path(tmp) / "ngo_step.c", Path(tmp) / "ngo_step.so"
        src.write_text(_SOURCE)
        res = subprocess.run([cc, *flags, str(src), "-o", str(out), "-lm"], capture_output=True, text=True)
        if res.returncode != 0:
            log.warning("lopt_graphs.optim.native: building the C step failed (the eager fast step is used):\n%s",
                        res.stderr[-2000:])
            return False
        os.replace(out, lib)  # atomic: a concurrent process sees the old state or the whole library
    return True


def _build() -> ctypes.CDLL | None:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None or platform.system() != "Linux":
        log.info("lopt_graphs.optim.native: no C compiler (or not Linux); the eager fast step is used")
        return None
    flags = ["-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared"]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256("\0".join([_SOURCE, *flags, *version, _cpu_flags(), platform.machine()]).encode()).hexdigest()
    lib = _cache_dir() / f"ngo_step_{key[:16]}.so"
    if not lib.exists() and not _compile(cc, flags, lib):
        return None
    try:
        so = ctypes.CDLL(str(lib))
    except OSError as e:  # a damaged cached library (a disk error, a copied cache): rebuild it once
        log.warning("lopt_graphs.optim.native: the cached C step %s does not load (%s); rebuilding it", lib, e)
        if not _compile(cc, flags, lib):
            return None
        so = ctypes.CDLL(str(lib))
    fn = so.ngo_param_step
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ctypes.c_int, i64, i64, i64, *[ptr] * 8, ctypes.c_int, *[ptr] * 4, ctypes.c_int, ctypes.c_int, ptr,
                   ptr]
    fn.restype = ctypes.c_int
    return so


def library() -> ctypes.CDLL | None:
    """The built library (built on the first call), or ``None`` when it cannot be used here."""
    global _lib, _tried
    if not _tried:
        _tried = True
        if os.environ.get("LOPT_GRAPHS_NATIVE", "1") != "0":
            try:
                _lib = _build()
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("lopt_graphs.optim.native: %s; the eager fast step is used", e)
                _lib = None
    return _lib


def available() -> bool:
    """Whether the C step is in use on this machine (a C compiler was found and ``LOPT_GRAPHS_NATIVE`` is not
    ``0``)."""
    return library() is not None


def eligible(*tensors: Tensor | None) -> bool:
    """Whether these tensors can go to the C step: float32, contiguous, on the CPU."""
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous())
               for t in tensors)


def param_step_(kind: str, n: int, row: int, p: Tensor, g: Tensor, moments: tuple[Tensor, Tensor, Tensor, Tensor],
                ctx: tuple[Tensor | None, Tensor | None], w1s: Tensor, w2: Tensor, b2: Tensor,
                scalars: list[float], base: bool, weight_decay: bool, tile: Tensor | None,
                direction: Tensor | None = None) -> None:
    """One parameter's usual step in place (see the C source); the caller checked :func:`eligible`.

    ``ctx``: ``(ctx_dst [H, rows], ctx_src [H, C])`` of an edge, ``(ctx [H, n], None)`` of a node, ``(None,
    None)`` otherwise. ``tile``: a float32 buffer of at least ``H * row`` entries for an edge. ``direction``: the
    step's direction in place of ``m_adam r'`` (contiguous, ``n`` entries; ``None``: Adam's)."""
    lib = library()
    assert lib is not None
    code = {"free": 0, "node": 1, "edge": 2}[kind] if not base else 0
    a, b = ctx
    sc = torch.tensor(scalars, dtype=torch.float32)
    mf, ma, ms, v = moments
    hdim = w1s.shape[0]
    res = lib.ngo_param_step(code, n, row, b.shape[1] if (code == 2 and b is not None) else 1,
                             p.data_ptr(), g.data_ptr(), mf.data_ptr(), ma.data_ptr(), ms.data_ptr(), v.data_ptr(),
                             a.data_ptr() if a is not None else None, b.data_ptr() if b is not None else None,
                             hdim, w1s.data_ptr(), w2.data_ptr(), b2.data_ptr(), sc.data_ptr(), int(base),
                             int(weight_decay), tile.data_ptr() if tile is not None else None,
                             direction.data_ptr() if direction is not None else None)
    if res != 0:
        raise RuntimeError(f"the C step rejected a head of {hdim} hidden units (at most {MAX_HIDDEN})")
