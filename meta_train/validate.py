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
from collections.abc import Callable, Sequence

import torch

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.evaluation import train_run, tuned_baseline
from lopt_graphs.optim import LearnedUpdate

from .evaluate import ADAM_LRS
from .tasks import VALIDATION, VALIDATION_LONG, Task, TaskConfig
from .unroll import LOSS_OFFSET

#: Loss offset of the score's log-ratio (nats); the ``log_final`` meta-objective uses the same.
SCORE_OFFSET = LOSS_OFFSET
#: Seeds of the validation runs: tuned Adam's lr is chosen on TUNE_SEED, both optimizers are scored on SCORE_SEED
#: (and on the seeds after it when a run asks for more than one: ``validate_seeds``).
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


def task_key(cfg: TaskConfig, steps: int, seed: int = SCORE_SEED) -> str:
    """The name a reference is stored under: the task's name, its length and (after the first) its seed."""
    return f"{cfg.name}@{steps}" + ("" if seed == SCORE_SEED else f"#seed{seed}")


def _score_seeds(seeds: int, first_seed: int = 0) -> list[int]:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1 (validation runs per task), got {seeds!r}")
    if isinstance(first_seed, bool) or not isinstance(first_seed, int) or first_seed < 0 or \
            SCORE_SEED + first_seed + seeds > TUNE_SEED:
        raise ValueError(f"first_seed must be an integer >= 0 with first_seed + seeds <= {TUNE_SEED - SCORE_SEED} "
                         f"(scoring seeds stay below the tuning seed {TUNE_SEED}), got {first_seed!r}")
    return [SCORE_SEED + first_seed + k for k in range(seeds)]


def _keys(tasks: Sequence[ValidationTask], steps: int, seeds: int, first_seed: int = 0) -> list[str]:
    return [task_key(tc, n, s) for tc, n in _entries(tasks, steps) for s in _score_seeds(seeds, first_seed)]


def adam_references(steps: int, tasks: Sequence[ValidationTask] = DEFAULT_TASKS, seeds: int = 1,
                    first_seed: int = 0) -> list[dict]:
    """Per validation task and scoring seed (``SCORE_SEED + first_seed`` and the ``seeds - 1`` after it: a
    ``first_seed`` past the seeds a selection used gives fresh runs to confirm it on): the lr tuned on
    ``TUNE_SEED`` (once per task) and Adam's final loss with it on that seed."""
    refs = []
    for tc, n in _entries(tasks, steps):
        task = Task(tc)
        adam = lambda lr, seed: train_run(task, lambda m: torch.optim.Adam(m.parameters(), lr=lr), n, seed)  # noqa: E731
        tuned = tuned_baseline(adam, ADAM_LRS, TUNE_SEED, _score_seeds(seeds, first_seed))
        for s, run in zip(_score_seeds(seeds, first_seed), tuned.runs):
            refs.append({"task": task_key(tc, n, s), "seed": s, "adam_lr": tuned.lr,
                         "adam_final_loss": _final(run.final_loss)})
    return refs


def references_match(refs: Sequence[dict], steps: int, tasks: Sequence[ValidationTask] = DEFAULT_TASKS,
                     seeds: int = 1, first_seed: int = 0) -> bool:
    """Whether ``refs`` were computed for exactly these tasks, lengths and seeds (a run resumed after its
    validation set changed must recompute them: its old scores are not comparable)."""
    return [r["task"] for r in refs] == _keys(tasks, steps, seeds, first_seed)


def validation_score(learned: LearnedUpdate, refs: list[dict], steps: int,
                     tasks: Sequence[ValidationTask] = DEFAULT_TASKS, seeds: int = 1, told: bool = True,
                     orthogonal_dtype: torch.dtype | str | None = "auto", first_seed: int = 0,
                     on_run: Callable[[], object] | None = None) -> dict:
    """Score ``learned`` against the references of :func:`adam_references` (same ``tasks``, ``steps`` and
    ``seeds``). ``told=False`` scores runs that are not told ``total_steps`` (what a user who passes nothing gets;
    a run selects on told runs). ``orthogonal_dtype``: the optimizer's (its default: ``"auto"``). ``first_seed``: as
    :func:`adam_references`'. ``on_run`` is called after each training run (a progress bar's update).

    Returns:
        ``{"score": mean offset log-ratio over tasks and seeds, "tasks": [{task, steps, seed, ngo_final_loss,
        adam_final_loss, log_ratio}, ...]}``.

    Raises:
        ValueError: if ``refs`` were computed for other tasks, lengths or seeds.
    """
    if not references_match(refs, steps, tasks, seeds, first_seed):
        raise ValueError(f"Validation references are for {[r['task'] for r in refs]}, not for "
                         f"{_keys(tasks, steps, seeds, first_seed)}: recompute them with adam_references")
    runs = [(tc, n, s) for tc, n in _entries(tasks, steps) for s in _score_seeds(seeds, first_seed)]
    rows = []
    for (tc, n, s), ref in zip(runs, refs):
        make = lambda m: NeuralGraphOptimizer.for_module(  # noqa: E731
            m, copy.deepcopy(learned), total_steps=n if told else None, orthogonal_dtype=orthogonal_dtype)
        ngo = _final(train_run(Task(tc), make, n, s).final_loss)
        rows.append({"task": tc.name, "steps": n, "seed": s, "ngo_final_loss": ngo,
                     "adam_final_loss": ref["adam_final_loss"],
                     "log_ratio": math.log((ngo + SCORE_OFFSET) / (ref["adam_final_loss"] + SCORE_OFFSET))})
        if on_run is not None:
            on_run()
    return {"score": sum(r["log_ratio"] for r in rows) / len(rows), "tasks": rows}
