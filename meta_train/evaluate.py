"""Evaluate a learned update against Adam with a per-task tuned learning rate, through the public
``NeuralGraphOptimizer`` class (the path users take)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.optim import LearnedUpdate

from .tasks import Task, TaskConfig

ADAM_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def train_curve(task: Task, make_opt, steps: int, seed: int) -> dict:
    """Train ``task``'s module for ``steps`` steps; returns the per-step minibatch losses and the final
    full-training-set loss / test accuracy."""
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(task.module)
    params = task.init_params(gen)
    with torch.no_grad():
        for p, v in zip(model.parameters(), params):
            p.copy_(v)
    opt = make_opt(model)
    xs, ys = task.batches(gen, steps)
    curve = []
    for k in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xs[k]), ys[k])
        loss.backward()
        opt.step()
        curve.append(loss.item() if math.isfinite(loss.item()) else float("inf"))
    final = task.evaluate([p.detach() for p in model.parameters()])
    return {"curve": curve, **final}


def _smooth(curve: list[float], w: int = 10) -> list[float]:
    out, acc = [], []
    for v in curve:
        acc.append(v)
        if len(acc) > w:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def steps_to_reach(curve: list[float], target: float) -> int | None:
    """First step (1-based) at which the smoothed minibatch loss is at or below ``target``."""
    for i, v in enumerate(_smooth(curve)):
        if v <= target:
            return i + 1
    return None


def compare_with_adam(learned: LearnedUpdate, cfg: TaskConfig, steps: int, seed: int = 0,
                      lrs: tuple[float, ...] = ADAM_LRS) -> dict:
    """NeuralGraphOptimizer with ``learned`` against Adam tuned over ``lrs`` (best final training loss)."""
    task = Task(cfg)
    adam = {lr: train_curve(task, lambda m, lr=lr: torch.optim.Adam(m.parameters(), lr=lr), steps, seed)
            for lr in lrs}
    best_lr = min(adam, key=lambda lr: adam[lr]["train_loss"] if math.isfinite(adam[lr]["train_loss"]) else 1e9)
    ngo = train_curve(task, lambda m: NeuralGraphOptimizer.for_module(m, copy.deepcopy(learned)), steps, seed)
    target = _smooth(adam[best_lr]["curve"])[-1]
    return {
        "task": cfg.name, "steps": steps, "adam_lr": best_lr,
        "adam_final_loss": adam[best_lr]["train_loss"], "ngo_final_loss": ngo["train_loss"],
        "adam_test_accuracy": adam[best_lr]["test_accuracy"], "ngo_test_accuracy": ngo["test_accuracy"],
        "ngo_steps_to_adam_final": steps_to_reach(ngo["curve"], target),
        "adam_curve": adam[best_lr]["curve"], "ngo_curve": ngo["curve"],
    }
