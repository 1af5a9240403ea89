"""One evaluation module for every comparison of optimizers in the project.

``benchmarks/vs_adam.py``, ``meta_train.evaluate`` (and so the meta-training report) and
``benchmarks/step_saturation.py`` all train through :func:`train_run`, smooth and score curves with
:mod:`.metrics` and tune baselines with :func:`tuned_baseline`. Nothing here imports ``meta_train``: a task
is anything with the :class:`TrainTask` interface.
"""

from .metrics import curve_stats, ema_smooth, first_step_at_or_below, geomean, mean_std, smooth, speedup, steps_to_reach
from .training import MakeOptimizer, RunResult, TrainTask, train_run
from .tuning import TunedBaseline, tune_lr, tuned_baseline

__all__ = ["MakeOptimizer", "RunResult", "TrainTask", "TunedBaseline", "curve_stats", "ema_smooth",
           "first_step_at_or_below", "geomean", "mean_std", "smooth", "speedup", "steps_to_reach", "train_run",
           "tune_lr", "tuned_baseline"]
