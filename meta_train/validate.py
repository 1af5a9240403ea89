"""Validation of meta-parameters during meta-training: the checkpoint a run promotes is chosen here.

The validation tasks (:data:`~meta_train.tasks.VALIDATION`, trained for the run's ``validate_steps``, and
:data:`~meta_train.tasks.VALIDATION_LONG`, trained for a multiple of it) are disjoint from the evaluation sets
(``IN_DISTRIBUTION``, ``HELD_OUT``). Each is trained by ``NeuralGraphOptimizer`` (told ``total_steps``) and by
Adam with an lr tuned on a separate tuning seed; the score is the mean over tasks of
``log((L_ngo + c) / (L_adam + c))`` of the final full-training-set loss, ``c = 0.01`` nats (lower is better;
below 0 beats tuned Adam). The offset keeps a task that Adam drives to 1e-4 from outweighing the others.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.evaluation import train_run, tuned_baseline
from lopt_graphs.optim import LearnedUpdate

from .evaluate import ADAM_LRS
from .tasks import VALIDATION, VALIDATION_LONG, Task, TaskConfig

#: Loss offset of the score's log-ratio (nats).
SCORE_OFFSET = 0.01
#: Seeds of the validation runs: tuned Adam's lr is chosen on TUNE_SEED, both optimizers are scored on SCORE_SEED.
TUNE_SEED, SCORE_SEED = 1000, 0

#: A validation task: a config, or ``(config, k)`` for one trained for ``k`` times the validation length.
ValidationTask = TaskConfig | tuple[TaskConfig, int]
#: The validation set of a run.
DEFAULT_TASKS: tuple[ValidationTask, ...] = (*VALIDATION, *VALIDATION_LONG)


def _final(loss: float) -> float:
    return loss if math.isfinite(loss) else 1e9


def _entries(tasks: Sequence[ValidationTask], steps: int) -> list[tuple[TaskConfig, int]]:
    """``(config, steps)`` per task: ``steps`` for a bare config, ``k * steps`` for ``(config, k)``."""
    return [(t[0], t[1] * steps) if isinstance(t, tuple) else (t, steps) for t in tasks]


def task_key(cfg: TaskConfig, steps: int) -> str:
    """The name a reference is stored under: the task's name and its length."""
    return f"{cfg.name}@{steps}"


def adam_references(steps: int, tasks: Sequence[ValidationTask] = DEFAULT_TASKS) -> list[dict]:
    """Per validation task: the lr tuned on ``TUNE_SEED`` and Adam's final loss with it on ``SCORE_SEED``."""
    refs = []
    for tc, n in _entries(tasks, steps):
        task = Task(tc)
        adam = lambda lr, seed: train_run(task, lambda m: torch.optim.Adam(m.parameters(), lr=lr), n, seed)  # noqa: E731
        tuned = tuned_baseline(adam, ADAM_LRS, TUNE_SEED, [SCORE_SEED])
        refs.append({"task": task_key(tc, n), "adam_lr": tuned.lr, "adam_final_loss": _final(tuned.runs[0].final_loss)})
    return refs


def references_match(refs: Sequence[dict], steps: int, tasks: Sequence[ValidationTask] = DEFAULT_TASKS) -> bool:
    """Whether ``refs`` were computed for exactly these tasks and lengths (a run resumed after the validation
    set changed must recompute them: its old scores are not comparable)."""
    return [r["task"] for r in refs] == [task_key(tc, n) for tc, n in _entries(tasks, steps)]


def validation_score(learned: LearnedUpdate, refs: list[dict], steps: int,
                     tasks: Sequence[ValidationTask] = DEFAULT_TASKS) -> dict:
    """Score ``learned`` against the references of :func:`adam_references` (same ``tasks`` and ``steps``).

    Returns:
        ``{"score": mean offset log-ratio, "tasks": [{task, steps, ngo_final_loss, adam_final_loss, log_ratio},
        ...]}``.

    Raises:
        ValueError: if ``refs`` were computed for other tasks or lengths.
    """
    if not references_match(refs, steps, tasks):
        raise ValueError(f"Validation references are for {[r['task'] for r in refs]}, not for "
                         f"{[task_key(tc, n) for tc, n in _entries(tasks, steps)]}: recompute them with "
                         "adam_references")
    rows = []
    for (tc, n), ref in zip(_entries(tasks, steps), refs):
        make = lambda m: NeuralGraphOptimizer.for_module(m, copy.deepcopy(learned), total_steps=n)  # noqa: E731
        ngo = _final(train_run(Task(tc), make, n, SCORE_SEED).final_loss)
        rows.append({"task": tc.name, "steps": n, "ngo_final_loss": ngo, "adam_final_loss": ref["adam_final_loss"],
                     "log_ratio": math.log((ngo + SCORE_OFFSET) / (ref["adam_final_loss"] + SCORE_OFFSET))})
    return {"score": sum(r["log_ratio"] for r in rows) / len(rows), "tasks": rows}
