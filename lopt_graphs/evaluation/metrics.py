"""Numbers computed from training curves: smoothing, steps to reach a loss, the speed-up, seed statistics.

Every function here is pure (lists of floats in, numbers out) so it can be tested on hand-made curves.
A non-finite loss (a diverged step) is treated as ``inf``: a smoothed window that holds one is ``inf``, and
``inf`` is never "at or below" a finite target.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["curve_stats", "ema_smooth", "first_step_at_or_below", "geomean", "mean_std", "smooth", "speedup",
           "steps_to_reach"]


def smooth(curve: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` steps (over the steps available at the start).

    Each value is ``sum(curve[max(0, i - window + 1): i + 1]) / count``, summed afresh in order (no running
    total, so no drift over long curves); ``inf`` when the window holds a non-finite value.

    Raises:
        ValueError: if ``window < 1``.
    """
    if window < 1:
        raise ValueError(f"Invalid smoothing window: {window} (expected an integer >= 1)")
    out: list[float] = []
    for i in range(len(curve)):
        part = curve[max(0, i - window + 1): i + 1]
        out.append(sum(part) / len(part) if all(math.isfinite(v) for v in part) else math.inf)
    return out


def ema_smooth(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average of ``values`` (``weight`` in ``[0, 1)``; 0 = no smoothing)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight must be in [0, 1), got {weight}")
    out: list[float] = []
    acc = norm = 0.0
    for v in values:
        acc = weight * acc + (1.0 - weight) * v
        norm = weight * norm + (1.0 - weight)
        out.append(acc / norm)
    return out


def first_step_at_or_below(curve: Sequence[float], target: float) -> int | None:
    """First step (1-based) at which ``curve`` is ``<= target``, or ``None``."""
    for i, v in enumerate(curve):
        if v <= target:
            return i + 1
    return None


def steps_to_reach(curve: Sequence[float], target: float, window: int = 10) -> int | None:
    """First step (1-based) at which the ``window``-step smoothed ``curve`` is at or below ``target``."""
    return first_step_at_or_below(smooth(curve, window), target)


def speedup(baseline: Sequence[float], candidate: Sequence[float]) -> dict[str, Any]:
    """Speed-up of ``candidate`` over ``baseline``, two smoothed loss curves of the same length.

    The loss level is ``target = max(baseline_final, candidate_final)``, the lowest level both runs reach;
    the speed-up is ``baseline_steps / candidate_steps``, the first steps at which each curve is at or below
    it. When the candidate reaches the baseline's final loss (``reached``) that is "the baseline's steps to
    its final loss over the candidate's steps to the same loss"; otherwise the level is the candidate's own
    final loss and the speed-up (< 1) says how much sooner the baseline got there. ``nan`` if either run
    diverged; ``0`` if the candidate made no progress (its final value is not below its first) and ends
    above the baseline, which the comparison at its own level would otherwise score as 1.

    Returns:
        ``{"speedup", "reached", "baseline_steps", "candidate_steps", "target"}``.
    """
    if len(baseline) != len(candidate) or not baseline:
        raise ValueError(f"speedup needs two non-empty curves of equal length (got {len(baseline)} and "
                         f"{len(candidate)})")
    base_final, cand_final = baseline[-1], candidate[-1]
    if not (math.isfinite(base_final) and math.isfinite(cand_final)):
        return {"speedup": math.nan, "reached": math.isfinite(cand_final), "baseline_steps": None,
                "candidate_steps": None, "target": math.nan}
    if cand_final >= candidate[0] and cand_final > base_final:
        return {"speedup": 0.0, "reached": False, "baseline_steps": None, "candidate_steps": None,
                "target": cand_final}
    target = max(base_final, cand_final)
    base_steps = first_step_at_or_below(baseline, target)
    cand_steps = first_step_at_or_below(candidate, target)
    assert base_steps is not None and cand_steps is not None  # each curve reaches its own final value
    return {"speedup": base_steps / cand_steps, "reached": cand_final <= base_final, "baseline_steps": base_steps,
            "candidate_steps": cand_steps, "target": target}


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (``ddof=1``; 0 for one value). ``inf`` mean (std ``nan``) if any value is
    ``inf`` and none is ``nan``; ``(nan, nan)`` if any is ``nan``."""
    xs = list(xs)
    if not xs:
        raise ValueError("mean_std needs at least one value")
    if not all(map(math.isfinite, xs)):
        return (math.nan if any(map(math.isnan, xs)) else math.inf), math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def curve_stats(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Per-step :func:`mean_std` over several curves of equal length: ``(means, stds)``."""
    stats = [mean_std(col) for col in zip(*curves)]
    return [m for m, _ in stats], [s for _, s in stats]


def geomean(xs: Sequence[float | None]) -> float:
    """Geometric mean of the finite positive values of ``xs`` (``nan`` if there are none)."""
    vals = [x for x in xs if x is not None and math.isfinite(x) and x > 0]
    return math.exp(statistics.fmean(map(math.log, vals))) if vals else math.nan
