"""The vs-Adam suite behind ``benchmarks/vs_adam.py``: config, task lists, optimizers, runner, report.

The training runs, smoothing, speed-up and lr tuning are :mod:`lopt_graphs.evaluation`'s.
"""

from .config import DEFAULT_OPTIMIZERS, SUITES, VsAdamConfig, load
from .peers import PEERS, Peer, missing, warmup_cosine
from .report import markdown, merge, plot, read_curves, report
from .runner import run, run_task
from .tasks import GROUPS, SplitsTask, TaskSpec, expand_long, suite_tasks

__all__ = ["DEFAULT_OPTIMIZERS", "GROUPS", "PEERS", "SUITES", "Peer", "SplitsTask", "TaskSpec", "VsAdamConfig",
           "expand_long", "load", "markdown", "merge", "missing", "plot", "read_curves", "report", "run", "run_task",
           "suite_tasks", "warmup_cosine"]
