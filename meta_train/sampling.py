"""Random draws shared by the task families and the trainer, from an explicit ``torch.Generator``."""

from __future__ import annotations

import math

import torch

__all__ = ["log_uniform"]


def log_uniform(gen: torch.Generator, lo: float, hi: float, ndigits: int | None = None) -> float:
    """A draw log-uniform in ``[lo, hi]`` (one ``torch.rand`` from ``gen``), rounded to ``ndigits`` decimals
    unless ``ndigits`` is ``None``.

    Args:
        gen: the generator the draw comes from (advanced by one float32 draw).
        lo: lower end, ``> 0``.
        hi: upper end, ``>= lo``.
        ndigits: decimals to round to (the task families' init and input scales use 2); ``None`` keeps the
            full value (the trainer's run lengths, which it rounds to whole truncations itself).

    Returns:
        ``exp(log lo + u (log hi - log lo))`` for ``u ~ U[0, 1)``, as a Python float.
    """
    u = float(torch.rand((), generator=gen))
    x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return x if ndigits is None else round(x, ndigits)
