"""Tests of ``lopt_graphs.evaluation.metrics`` on hand-made curves."""

from __future__ import annotations

import math

import pytest

from lopt_graphs.evaluation import (
    curve_stats,
    ema_smooth,
    first_step_at_or_below,
    geomean,
    mean_std,
    smooth,
    speedup,
    steps_to_reach,
)


def test_smooth_is_a_trailing_mean_over_the_available_steps() -> None:
    assert smooth([4.0, 2.0, 0.0, 2.0], 2) == [4.0, 3.0, 1.0, 1.0]
    assert smooth([3.0, 6.0, 9.0], 5) == [3.0, 4.5, 6.0]
    assert smooth([1.0, math.inf, 1.0, 1.0], 2) == [1.0, math.inf, math.inf, 1.0]  # inf only inside its window
    assert smooth([1.0, math.nan], 3) == [1.0, math.inf]
    with pytest.raises(ValueError, match="window: 0"):
        smooth([1.0], 0)


def test_smooth_does_not_drift_on_long_curves() -> None:
    curve = [0.1 * (k % 7) + 1e-9 * k for k in range(5000)]
    out = smooth(curve, 20)
    assert out[-1] == sum(curve[-20:]) / 20  # the same sum, in the same order: exactly equal


def test_steps_to_reach_and_first_step() -> None:
    assert first_step_at_or_below([3.0, 2.0, 1.0], 2.0) == 2
    assert first_step_at_or_below([3.0, 2.0, 1.0], 0.5) is None
    # smoothed (window 2): 4, 3, 1, 1 -> first <= 1.0 at step 3; raw curve would give step 3 for 0.0
    assert steps_to_reach([4.0, 2.0, 0.0, 2.0], 1.0, window=2) == 3
    assert steps_to_reach([4.0, 2.0, 0.0, 2.0], 2.5, window=2) == 3
    assert steps_to_reach([4.0, 2.0, 0.0, 2.0], 3.0, window=1) == 2


def test_speedup_values() -> None:
    base = [5.0, 4.0, 3.0, 2.0]  # final 2.0, reached at step 4
    sp = speedup(base, [4.0, 2.0, 1.0, 1.0])
    assert sp == {"speedup": 2.0, "reached": True, "baseline_steps": 4, "candidate_steps": 2, "target": 2.0}
    slow = speedup(base, [5.0, 5.0, 5.0, 3.0])  # ends at 3.0: the baseline got there at step 3, it at 4
    assert not slow["reached"] and slow["target"] == 3.0 and slow["speedup"] == 0.75
    assert speedup([2.3, 1.0, 0.5, 0.2], [2.3, 2.5, 3.0, 3.7])["speedup"] == 0.0  # no progress at all
    assert speedup([2.3, 1.0, 0.5, 0.2], [2.3, 1.2, 0.6, 0.2])["speedup"] == 1.0  # same final, same step
    assert math.isnan(speedup(base, [5.0, math.inf, math.inf, math.inf])["speedup"])
    with pytest.raises(ValueError, match="equal length"):
        speedup(base, [1.0])


def test_seed_statistics() -> None:
    assert mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))
    assert mean_std([5.0]) == (5.0, 0.0)
    m, s = mean_std([1.0, math.inf])
    assert m == math.inf and math.isnan(s)
    assert math.isnan(mean_std([1.0, math.nan])[0])
    assert curve_stats([[1.0, 2.0], [3.0, 2.0]]) == ([2.0, 2.0], [math.sqrt(2.0), 0.0])
    assert geomean([1.0, 4.0, None, math.nan, 0.0]) == pytest.approx(2.0)
    assert math.isnan(geomean([]))
    assert ema_smooth([4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0])
