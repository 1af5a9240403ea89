"""The step a learned update takes over a run, told its length or not: what ``total_steps`` changes.

Commands::

    python -m benchmarks.step_schedule                                   # the default and the previous one
    python -m benchmarks.step_schedule ckpts=default told=300,1000,3000 untold_steps=3000 \\
        out=benchmarks/results/step_schedule/step_schedule.json
    python -m benchmarks.step_schedule --help                            # the keys and their defaults

For each checkpoint this trains one task (``task``, an evaluation task of ``meta_train.evaluate``; seed 0, its own
training loop ``lopt_graphs.evaluation.train_run``) once per told length in ``told`` (``total_steps`` = the run's
length) and once untold for ``untold_steps`` (an untold run does not depend on its length, so one run covers every
shorter one), with the optimizer's diagnostics on. Per step it records the median over the parameters of the
per-tensor step ``base_lr * exp(sigma)`` (recipe v2's learned step, before the optimizer's ``lr`` and size prior,
which are 1 on these small tasks) and the minibatch loss. Prints a table of the step at a few step counts and the
final full-training loss of each run, and writes JSON, markdown and a PNG (step and loss against the step count,
log-log).
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import report_main
from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value
from lopt_graphs.evaluation import train_run
from lopt_graphs.io import finite_or_none
from lopt_graphs.optim.checkpoint import DEFAULT_CHECKPOINT
from lopt_graphs.optim.functional import assumed_horizon_text
from lopt_graphs.plotting import new_figure, save_figure
from meta_train.evaluate import check_checkpoints, load_any
from meta_train.tasks import HELD_OUT, IN_DISTRIBUTION, Task

#: the step counts the table reports (those a run reaches)
TABLE_STEPS = (1, 10, 30, 100, 300, 1000, 3000, 10000)


@dataclass(frozen=True)
class StepScheduleConfig:
    """Keys of ``python -m benchmarks.step_schedule``.

    Attributes:
        ckpts: checkpoints (shipped names or paths); v2 ones (a learned per-tensor step).
        task: the name of an evaluation task (``meta_train.tasks.IN_DISTRIBUTION`` or ``HELD_OUT``).
        told: the lengths of the told runs (``total_steps`` = the length); empty: none.
        untold_steps: the length of the one untold run per checkpoint (0: none).
        out: JSON output (the markdown and the PNG go next to it).
        threads: torch intra-op threads (``0`` leaves torch's default).
    """

    ckpts: tuple[str, ...] = ("default", "v2_calibrated4_es60_fanin_ortho_conv_untold")
    task: str = "digits_mlp_32_relu_b64_s1.00"
    told: tuple[int, ...] = (300, 1000, 3000)
    untold_steps: int = 3000
    out: str = "benchmarks/results/step_schedule/step_schedule.json"
    threads: int = 1

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        if not self.ckpts:
            bad_value("ckpts", self.ckpts, "at least one checkpoint")
        if any(n < 1 for n in self.told):
            bad_value("told", self.told, "run lengths >= 1")
        if not self.told and self.untold_steps == 0:
            bad_value("untold_steps", self.untold_steps, "a length >= 1, or some told lengths")
        names = [tc.name for tc in (*IN_DISTRIBUTION, *HELD_OUT)]
        if self.task not in names:
            bad_value("task", self.task, f"one of the evaluation tasks: {', '.join(names)}")
        _cfg.check_minimums(self, untold_steps=0, threads=0)


def _task(name: str) -> Task:
    return Task(next(tc for tc in (*IN_DISTRIBUTION, *HELD_OUT) if tc.name == name))


def step_run(learned, task: Task, steps: int, total_steps: int | None) -> dict[str, Any]:
    """One seed-0 run: the median per-tensor step and the minibatch loss per step, and the final loss."""
    if not learned.cfg.tensor_lr:
        raise ValueError("step_schedule needs a recipe-v2 checkpoint (tensor_lr=True: a learned per-tensor step)")
    base_lr = learned.cfg.base_lr
    per_step: list[float] = []

    def make_opt(model: nn.Module) -> NeuralGraphOptimizer:
        opt = NeuralGraphOptimizer.for_module(model, copy.deepcopy(learned), total_steps=total_steps)
        opt.record_diagnostics = True
        opt.register_step_post_hook(lambda o, *_: per_step.append(statistics.median(
            base_lr * math.exp(d["sigma"]) for d in o.last_diagnostics if d["sigma"] is not None)))
        return opt

    r = train_run(task, make_opt, steps, seed=0)  # the evaluation's own training run (seed 0)
    return {"total_steps": total_steps, "steps": steps, "step_size": per_step,
            "loss": [finite_or_none(v) for v in r.curve], "final_loss": finite_or_none(r.final_loss)}


def run(cfg: StepScheduleConfig) -> dict[str, Any]:
    check_checkpoints(cfg.ckpts)
    task = _task(cfg.task)
    rows = []
    for name in cfg.ckpts:
        ckpt = DEFAULT_CHECKPOINT if name == "default" else name
        learned = load_any(ckpt)
        plan = [(n, n) for n in cfg.told] + ([(cfg.untold_steps, None)] if cfg.untold_steps else [])
        for steps, total in plan:
            row = {"ckpt": ckpt, "untold_horizon": float(getattr(learned.cfg, "untold_horizon", 0.0)),
                   "untold_growth": float(getattr(learned.cfg, "untold_growth", 0.0)),
                   **step_run(learned, task, steps, total)}
            rows.append(row)
            how = f"told {total}" if total else f"untold {steps}"
            print(f"  {ckpt} {how}: final loss {row['final_loss']}", file=sys.stderr)
    return {"task": cfg.task, "seed": 0, "threads": torch.get_num_threads(), "rows": rows}


def _label(r: dict[str, Any]) -> str:
    if r["total_steps"]:
        return f"{r['ckpt']}, told {r['total_steps']}"
    h = r["untold_horizon"]
    horizon = f", assumes {assumed_horizon_text(h, r.get('untold_growth', 0.0))}" if h else ""
    return f"{r['ckpt']}, untold{horizon}"


def markdown(doc: dict[str, Any]) -> str:
    rows = doc["rows"]
    cols = [t for t in TABLE_STEPS if any(r["steps"] >= t for r in rows)]
    lines = [f"`{doc['task']}`, seed 0: the median per-tensor step `base_lr * exp(sigma)` at step t (before `lr`), "
             "and the final full-training loss.", "",
             "| run | " + " | ".join(f"t={t:,}" for t in cols) + " | final loss |",
             "|---|" + "---:|" * (len(cols) + 1)]
    for r in rows:
        cells = [f"{r['step_size'][t - 1]:.2e}" if r["steps"] >= t else "" for t in cols]
        fl = "-" if r["final_loss"] is None else f"{r['final_loss']:.3g}"
        lines.append(f"| {_label(r)} (run of {r['steps']:,}) | " + " | ".join(cells) + f" | {fl} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path:
    """The per-tensor step and the minibatch loss (smoothed over 20 steps) against the step count, log-log (runs
    identical to an earlier one, as told runs of checkpoints that differ only untold, drawn once)."""
    fig, axes = new_figure(1, 3, figsize=(13.0, 3.8), squeeze=False)  # the third holds the legend
    drawn: list[tuple[dict[str, Any], list[str]]] = []  # a run identical to an earlier one is drawn once
    for r in doc["rows"]:
        same = next((names for d, names in drawn if d["step_size"] == r["step_size"] and d["loss"] == r["loss"]), None)
        if same is not None:
            same.append(r["ckpt"])
        else:
            drawn.append((r, [r["ckpt"]]))
    for i, (r, names) in enumerate(drawn):
        steps = range(1, r["steps"] + 1)
        style = "-" if r["total_steps"] else "--"
        color = f"C{i}"
        label = _label(r) if len(names) == 1 else f"told {r['total_steps']} (identical for all {len(names)})"
        axes[0, 0].plot(steps, r["step_size"], style, color=color, label=label, lw=1.2)
        loss = [float("nan") if v is None else v for v in r["loss"]]
        smooth = [statistics.fmean(loss[max(0, k - 19):k + 1]) for k in range(len(loss))]
        axes[0, 1].plot(steps, smooth, style, color=color, lw=1.0)
    for ax, ylabel in zip(axes[0, :2], ("per-tensor step (median)", "minibatch loss (20-step mean)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
    fig.suptitle(f"{doc['task']}: told runs solid, untold dashed", fontsize=9)
    axes[0, 2].axis("off")
    axes[0, 2].legend(*axes[0, 0].get_legend_handles_labels(), loc="center left", fontsize=7, frameon=False)
    return save_figure(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``[--config FILE] [key=value ...]`` (keys of :class:`StepScheduleConfig`); returns the result document."""
    return report_main(StepScheduleConfig, argv, __doc__, run, markdown, plot)


if __name__ == "__main__":
    main()
