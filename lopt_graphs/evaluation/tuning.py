"""Learning-rate tuning of a baseline that is fair to the optimizer it is compared with.

A tuned baseline's lr is chosen on a *tuning seed* and then scored on other seeds: choosing it on the run
it is scored on would credit the baseline with the luck of that run's initialisation and data order.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .training import RunResult

__all__ = ["TunedBaseline", "tune_lr", "tuned_baseline"]


def tune_lr(train: Callable[[float, int], RunResult], lrs: Sequence[float], seeds: Sequence[int]
            ) -> tuple[float, list[dict[str, Any]], dict[tuple[float, int], RunResult]]:
    """Grid search: run ``train(lr, seed)`` for every lr and seed; pick the lr of the lowest mean final
    training loss over ``seeds`` (non-finite counts as ``inf``; ties go to the first lr of ``lrs``).

    Returns:
        ``(best_lr, grid, runs)``: ``grid`` lists ``{"lr", "criterion", "final_loss_per_seed"}`` in the order
        of ``lrs``; ``runs`` maps ``(lr, seed)`` to its :class:`RunResult`.
    """
    if not lrs or not seeds:
        raise ValueError(f"tune_lr needs a non-empty lr grid and seed list (got lrs={list(lrs)}, "
                         f"seeds={list(seeds)})")
    runs: dict[tuple[float, int], RunResult] = {}
    grid: list[dict[str, Any]] = []
    for lr in lrs:
        finals = []
        for s in seeds:
            runs[(lr, s)] = r = train(lr, s)
            finals.append(r.final_loss if math.isfinite(r.final_loss) else math.inf)
        crit = statistics.fmean(finals) if all(map(math.isfinite, finals)) else math.inf
        grid.append({"lr": lr, "criterion": crit, "final_loss_per_seed": finals})
    best = min(grid, key=lambda g: g["criterion"])  # min keeps the first of equal values
    return best["lr"], grid, runs


@dataclass
class TunedBaseline:
    """A baseline tuned on ``tune_seed`` and scored on ``scored_seeds``.

    Attributes:
        lr: the chosen learning rate.
        grid: ``{"lr", "criterion", "final_loss_per_seed"}`` per lr, on the tuning seed.
        tune_seed: the seed the grid ran on (never one of ``scored_seeds``).
        scored_seeds: the seeds of ``runs``.
        runs: the chosen lr's runs, one per scored seed.
        at_grid_edge: the chosen lr is the smallest or largest of a grid of several (widen the grid).
        tune_run: the chosen lr's run on ``tune_seed`` (from the grid: not scored, not re-run).
    """

    lr: float
    grid: list[dict[str, Any]]
    tune_seed: int
    scored_seeds: list[int]
    runs: list[RunResult]
    at_grid_edge: bool
    tune_run: RunResult | None = None


def tuned_baseline(train: Callable[[float, int], RunResult], lrs: Sequence[float], tune_seed: int,
                   scored_seeds: Sequence[int]) -> TunedBaseline:
    """Choose the lr on ``tune_seed`` (lowest final training loss), then run it on each scored seed.

    Raises:
        ValueError: if ``tune_seed`` is one of ``scored_seeds`` or ``scored_seeds`` is empty.
    """
    if not scored_seeds:
        raise ValueError("tuned_baseline needs at least one scored seed")
    if tune_seed in scored_seeds:
        raise ValueError(f"Invalid tuning seed {tune_seed}: it is also a scored seed ({list(scored_seeds)}); "
                         "choose a tuning seed outside the scored seeds")
    lr, grid, grid_runs = tune_lr(train, lrs, [tune_seed])
    edge = len(lrs) > 1 and lr in (min(lrs), max(lrs))
    return TunedBaseline(lr, grid, tune_seed, list(scored_seeds), [train(lr, s) for s in scored_seeds], edge,
                         grid_runs[(lr, tune_seed)])
