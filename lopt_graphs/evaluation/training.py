"""One seeded training run of a task's model under an optimizer: the loss curve and the final scores.

Every optimizer of a comparison starts from the same initial weights and sees the same minibatches for a
seed: both come from ``torch.Generator().manual_seed(seed)``, the weights first (``task.new_model``), then
one index tensor ``randint(0, num_train, (steps, batch_size))`` for all minibatches, as
``meta_train.tasks.Task.batches`` draws it, but gathered step by step (all 3,000 minibatches of a long run
at once would not fit in memory for the larger datasets).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = ["MakeOptimizer", "RunResult", "TrainTask", "train_run"]


class TrainTask(Protocol):
    """What :func:`train_run` needs of a task (``meta_train.tasks.Task`` is one).

    Attributes:
        data: the splits, with ``x_train [N, ...]``, ``y_train [N]`` and ``num_train``.
        cfg: has ``batch_size``, and optionally ``input_scale`` (minibatch inputs are multiplied by it, as
            ``Task.batches`` does).
    """

    data: Any
    cfg: Any

    def new_model(self, gen: torch.Generator) -> nn.Module:
        """A fresh model whose initial weights are drawn from ``gen``."""

    def evaluate(self, params: list[Tensor]) -> dict[str, float]:
        """``{"train_loss": full training-split loss, "test_accuracy": fraction}`` of ``params``."""


#: ``make_opt(model)``: an optimizer, or ``(optimizer, scheduler)`` whose ``scheduler.step()`` follows
#: every ``optimizer.step()``.
MakeOptimizer = Callable[[nn.Module], "torch.optim.Optimizer | tuple"]


@dataclass
class RunResult:
    """One training run.

    Attributes:
        curve: minibatch loss at every step (``inf`` from the step where it became non-finite on).
        final_loss: loss on the full training split after training (``inf`` if diverged).
        test_acc: test accuracy after training (``nan`` if diverged).
        ms_per_step: wall-clock ms per training step (batch gather, forward, backward, ``step``).
        ms_per_opt_step: wall-clock ms of ``opt.step()`` alone.
        diverged: the loss became non-finite (training stopped there).
        cpu_ms_per_step: CPU time (``time.process_time``) per training step; on a shared machine it is
            closer than the wall clock to what the step costs on an idle core (with one torch thread).
    """

    curve: list[float]
    final_loss: float
    test_acc: float
    ms_per_step: float = math.nan
    ms_per_opt_step: float = math.nan
    diverged: bool = False
    cpu_ms_per_step: float = math.nan


def _modes(opt: torch.optim.Optimizer) -> tuple[Callable[[], Any], Callable[[], Any]] | None:
    """``(opt.train, opt.eval)`` for optimizers that evaluate at other weights than they train at
    (schedule-free: training steps at ``y``, evaluation at the average ``x``), else ``None``."""
    train, evaluate = getattr(opt, "train", None), getattr(opt, "eval", None)
    return (train, evaluate) if callable(train) and callable(evaluate) else None


def train_run(task: TrainTask, make_opt: MakeOptimizer, steps: int, seed: int) -> RunResult:
    """Train a fresh model of ``task`` for ``steps`` steps with the optimizer ``make_opt(model)`` returns.

    An optimizer with ``train()``/``eval()`` methods (``schedulefree``) is put in train mode before the
    first step and in eval mode for the final evaluation, then back in train mode. A non-finite minibatch
    loss stops the run (the rest of the curve is ``inf``, the final loss ``inf``).

    Args:
        task: see :class:`TrainTask`.
        make_opt: see :data:`MakeOptimizer`.
        steps: training steps (>= 1).
        seed: seed of the initial weights and of the minibatch order.

    Returns:
        The :class:`RunResult`.
    """
    if steps < 1:
        raise ValueError(f"Invalid steps: {steps} (expected an integer >= 1)")
    gen = torch.Generator().manual_seed(seed)
    model = task.new_model(gen)
    made = make_opt(model)
    opt, sched = made if isinstance(made, tuple) else (made, None)
    modes = _modes(opt)
    idx = torch.randint(0, task.data.num_train, (steps, task.cfg.batch_size), generator=gen)
    x_train, y_train = task.data.x_train, task.data.y_train
    scale = float(getattr(task.cfg, "input_scale", 1.0))
    curve: list[float] = []
    opt_time = 0.0
    if modes:
        modes[0]()
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(steps):
        xb, yb = x_train[idx[k]], y_train[idx[k]]
        if scale != 1.0:
            xb = xb * scale
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(xb), yb)
        value = loss.item()
        if not math.isfinite(value):
            break
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        opt_time += time.perf_counter() - t1
        if sched is not None:
            sched.step()
        curve.append(value)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = max(len(curve), 1)
    timing = {"ms_per_step": elapsed / done * 1e3, "ms_per_opt_step": opt_time / done * 1e3,
              "cpu_ms_per_step": cpu / done * 1e3}
    if len(curve) < steps:
        return RunResult(curve + [math.inf] * (steps - len(curve)), math.inf, math.nan, diverged=True, **timing)
    if modes:
        modes[1]()
    try:
        ev = task.evaluate([p.detach() for p in model.parameters()])
    finally:
        if modes:
            modes[0]()
    final = ev["train_loss"] if math.isfinite(ev["train_loss"]) else math.inf
    return RunResult(curve, final, ev["test_accuracy"], diverged=not math.isfinite(final), **timing)
