"""Validation of meta-parameters during meta-training: the checkpoint a run promotes is chosen here.

The validation tasks (:data:`~meta_train.tasks.VALIDATION`) are disjoint from the evaluation sets
(``IN_DISTRIBUTION``, ``HELD_OUT``). Each is trained for ``steps`` steps by ``NeuralGraphOptimizer`` (told
``total_steps``) and by Adam with an lr tuned on a separate tuning seed; the score is the mean over tasks of
``log((L_ngo + c) / (L_adam + c))`` of the final full-training-set loss, ``c = 0.01`` nats (lower is better;
below 0 beats tuned Adam). The offset keeps a task that Adam drives to 1e-4 from outweighing the others.
"""

from __future__ import annotations

import copy
import math

import torch

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.evaluation import train_run, tuned_baseline
from lopt_graphs.optim import LearnedUpdate

from .evaluate import ADAM_LRS
from .tasks import VALIDATION, Task, TaskConfig

#: Loss offset of the score's log-ratio (nats).
SCORE_OFFSET = 0.01
#: Seeds of the validation runs: tuned Adam's lr is chosen on TUNE_SEED, both optimizers are scored on SCORE_SEED.
TUNE_SEED, SCORE_SEED = 1000, 0


def _final(loss: float) -> float:
    return loss if math.isfinite(loss) else 1e9


def adam_references(steps: int, tasks: tuple[TaskConfig, ...] = VALIDATION) -> list[dict]:
    """Per validation task: the lr tuned on ``TUNE_SEED`` and Adam's final loss with it on ``SCORE_SEED``."""
    refs = []
    for tc in tasks:
        task = Task(tc)
        adam = lambda lr, seed: train_run(task, lambda m: torch.optim.Adam(m.parameters(), lr=lr), steps, seed)  # noqa: E731
        tuned = tuned_baseline(adam, ADAM_LRS, TUNE_SEED, [SCORE_SEED])
        refs.append({"task": tc.name, "adam_lr": tuned.lr, "adam_final_loss": _final(tuned.runs[0].final_loss)})
    return refs


def validation_score(learned: LearnedUpdate, refs: list[dict], steps: int,
                     tasks: tuple[TaskConfig, ...] = VALIDATION) -> dict:
    """Score ``learned`` against the references of :func:`adam_references` (same ``tasks`` and ``steps``).

    Returns:
        ``{"score": mean offset log-ratio, "tasks": [{task, ngo_final_loss, adam_final_loss, log_ratio}, ...]}``.
    """
    rows = []
    for tc, ref in zip(tasks, refs):
        make = lambda m: NeuralGraphOptimizer.for_module(m, copy.deepcopy(learned), total_steps=steps)  # noqa: E731
        ngo = _final(train_run(Task(tc), make, steps, SCORE_SEED).final_loss)
        rows.append({"task": tc.name, "ngo_final_loss": ngo, "adam_final_loss": ref["adam_final_loss"],
                     "log_ratio": math.log((ngo + SCORE_OFFSET) / (ref["adam_final_loss"] + SCORE_OFFSET))})
    return {"score": sum(r["log_ratio"] for r in rows) / len(rows), "tasks": rows}
