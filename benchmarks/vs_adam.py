"""NeuralGraphOptimizer (NGO) against Adam, tuned Adam, tuned AdamW and tuned SGD on a suite of training tasks.

Commands (from the repository root)::

    python benchmarks/vs_adam.py                                         # default suite (<= 15 min, 1 thread)
    python benchmarks/vs_adam.py --config configs/benchmarks/default.yaml
    python benchmarks/vs_adam.py --config configs/benchmarks/quick.yaml  # < 2 min
    python benchmarks/vs_adam.py --config configs/benchmarks/quick.yaml ckpt=runs/shipped/ckpt.pt seeds=0,1,2
    python benchmarks/vs_adam.py data_root=~/data/torchvision  # + the paper's FashionMNIST/MNIST/CIFAR-10 tasks
    python benchmarks/vs_adam.py --report benchmarks/results/vs_adam/results.json  # re-render md + png only

Every ``key=value`` after the options overrides a key of :class:`VsAdamConfig` (unknown keys are errors).

What runs. For each task of the suite (``suite=default|quick|tiny``) and each seed, every optimizer starts
from the same initial weights and sees the same minibatches (both drawn from ``torch.Generator().manual_seed
(seed)``, exactly as ``meta_train.evaluate.train_curve``):

* ``ngo``: ``NeuralGraphOptimizer.for_module(model, ckpt)`` at its meta-trained setting (``lr=ngo_lr``, 1.0);
  ``ckpt=""`` is the shipped ``lopt_graphs/checkpoints/default.pt``. NGO is never tuned.
* ``adam``: ``torch.optim.Adam(lr=1e-3)``, the untuned default.
* ``adam_tuned``: Adam with the learning rate picked per task from ``adam_lrs``.
* ``adamw_tuned``: ``AdamW(weight_decay=adamw_weight_decay)`` with its own lr picked from ``adam_lrs``.
* ``sgd_tuned``: ``SGD(momentum=sgd_momentum)`` with its lr picked from ``sgd_lrs``.

Tuning (``tune_on``): ``first_seed`` (default) runs the whole grid on the first seed of ``seeds`` and picks
the lr of the lowest final full-training loss; ``all_seeds`` runs the grid on every seed and picks the lowest
*mean* final loss. The chosen lr is then run on every seed (grid runs are reused, never rerun). Runs whose
loss becomes NaN/Inf stop early and count as an infinite loss, so they are never picked.

Task groups: ``in_dist`` (configurations of ``meta_train.tasks.IN_DISTRIBUTION``, 300 steps),
``ood`` (wider, deeper, ELU, other init scale, ``HELD_OUT`` configs, and a ``long_steps`` = 1000-step
horizon, 5x meta-training's 200) and ``paper`` (FashionMNIST / MNIST / CIFAR-10 from torchvision files under
``data_root``, first ``paper_train_limit`` training images; skipped, and recorded as skipped, when absent).

Metrics per task x optimizer x seed: the minibatch training loss at every step and its trailing moving
average over ``smooth`` steps; the final loss on the full training split; test accuracy; wall-clock ms per
training step (forward + backward + ``step``; and ``step`` alone). Aggregates over seeds: mean and sample std
(``ddof=1``; 0 for one seed). Speed-up of NGO over tuned Adam, per seed: ``adam_steps / ngo_steps``, the
first steps at which tuned Adam's and NGO's smoothed curves reach tuned Adam's final smoothed loss; if NGO
never reaches it (``reached`` false), the level is NGO's own final smoothed loss instead, so the speed-up is
< 1 and says how much sooner tuned Adam got to NGO's final loss (in general: the level is the worse of the
two final smoothed losses, which both runs reach).

Outputs, in ``out`` (default ``benchmarks/results/vs_adam/``): ``results.md`` (the markdown tables also
printed on stdout), ``results.json``, ``curves.png`` (one panel per task: smoothed loss, mean +- std over
seeds) and ``config.yaml`` (the resolved config). ``results.json`` fields:

* ``"date"``, ``"machine"`` (platform, processor, cpus, torch threads, load average), ``"torch"``,
  ``"command"``, ``"seconds"`` / ``"cpu_seconds"`` (wall / CPU time of the run), ``"config"`` (every key),
  ``"ckpt"`` (path, sha256, the checkpoint's ``meta``), ``"definitions"`` (these definitions in words).
* ``"tasks"``: a list of ``{"name", "group" (in_dist|ood|paper), "description", "skipped" (bool),
  "skip_reason", "skip_detail", "task_config", "steps", "seconds", "cpu_seconds", "optimizers",
  "ngo_speedup_vs_tuned_adam"}``.
* ``"optimizers"``: ``{name: {"label", "kind", "lr", "hyper", "final_loss_mean", "final_loss_std",
  "final_loss_per_seed", "final_smoothed_loss_mean", "final_smoothed_loss_std", "test_acc_mean",
  "test_acc_std", "test_acc_per_seed", "ms_per_step", "ms_per_step_std", "ms_per_opt_step", "cpu_ms_per_step",
  "diverged_seeds",
  "curves": {"loss_per_seed", "loss_mean", "loss_std", "smoothed_mean", "smoothed_std"}}}``; tuned ones add
  ``"lr_grid"``, ``"tuned_on_seeds"``, ``"lr_at_grid_edge"`` and ``"grid": [{"lr", "criterion",
  "final_loss_per_seed"}]`` (``criterion`` = mean final loss over ``tuned_on_seeds``).
* ``"ngo_speedup_vs_tuned_adam"``: ``{"mean", "std", "per_seed", "reached", "adam_steps", "ngo_steps",
  "target_loss", "from_mean_curves"}`` (``from_mean_curves`` applies the same rule to the seed-mean smoothed
  curves) or ``null`` for a skipped task.

Non-finite numbers (diverged runs) are written as ``null``. Numbers of curves keep 6 significant digits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

try:
    import lopt_graphs  # noqa: F401
except ImportError:  # run from a clone without installing: the repository root is the parent of benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # meta_train/ is not an installed package
    sys.path.insert(0, str(_ROOT))

from lopt_graphs import NeuralGraphOptimizer  # noqa: E402
from lopt_graphs import config as _cfg  # noqa: E402
from lopt_graphs.config import bad_value as _bad  # noqa: E402
from lopt_graphs.data import DatasetSplits, load_torchvision  # noqa: E402
from lopt_graphs.optim.checkpoint import CHECKPOINT_DIR, DEFAULT_CHECKPOINT, load_learned_update  # noqa: E402
from lopt_graphs.optim.learned import LearnedUpdate  # noqa: E402
from meta_train.tasks.families import HELD_OUT, IN_DISTRIBUTION, Task, TaskConfig, build_module  # noqa: E402
from lopt_graphs.graph import graph_from_module  # noqa: E402

__all__ = ["OPTIMIZERS", "SUITES", "RunResult", "SplitsTask", "TaskSpec", "VsAdamConfig", "first_step_at_or_below",
           "load", "main", "markdown", "report", "run", "smooth", "speedup", "suite_tasks", "train_run", "tune_lr"]

#: Optimizer names of the benchmark -> human-readable label.
OPTIMIZERS: dict[str, str] = {
    "ngo": "NGO (learned)",
    "adam": "Adam lr=1e-3",
    "adam_tuned": "Adam (tuned lr)",
    "adamw_tuned": "AdamW (tuned lr)",
    "sgd_tuned": "SGD+momentum (tuned lr)",
}
SUITES: tuple[str, ...] = ("default", "quick", "tiny")
TUNE_ON: tuple[str, ...] = ("first_seed", "all_seeds")
GROUPS: tuple[str, ...] = ("in_dist", "ood", "paper")
META_TRAIN_HORIZON = 200
DEFAULT_OUT = "benchmarks/results/vs_adam"


# ----------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class VsAdamConfig:
    """Every knob of the benchmark (YAML keys / ``key=value`` overrides).

    Attributes:
        suite: task list: ``"default"`` (<= 15 min on one thread), ``"quick"`` (< 2 min) or ``"tiny"`` (tests).
        ckpt: NGO checkpoint: a path or a shipped name; ``""`` = the shipped default checkpoint.
        seeds: seeds of the runs (init weights and minibatch order); aggregates are over these.
        steps: training steps of every task except the long-horizon ones (meta-training's horizon is 200).
        long_steps: training steps of the long-horizon tasks (default 1000 = 5x meta-training's horizon).
        adam_lrs: learning-rate grid of tuned Adam and tuned AdamW.
        sgd_lrs: learning-rate grid of tuned SGD with momentum.
        adamw_weight_decay: AdamW's decoupled weight decay.
        sgd_momentum: SGD's momentum.
        tune_on: ``"first_seed"`` (grid on the first seed, lowest final training loss) or ``"all_seeds"``
            (grid on every seed, lowest mean final training loss).
        optimizers: which of ``ngo, adam, adam_tuned, adamw_tuned, sgd_tuned`` to run (``ngo`` and
            ``adam_tuned`` are required: the speed-up compares them).
        ngo_lr: NGO's ``lr`` (multiplier of the learned step; 1.0 is the meta-trained setting).
        ngo_compile: run NGO with ``compile=True`` (faster steps on large models, compilation paid per task).
        smooth: window (steps) of the trailing moving average of the minibatch loss.
        data_root: torchvision root holding MNIST / FashionMNIST / CIFAR-10; ``""`` skips the paper tasks.
        paper_train_limit: training images kept per torchvision dataset (the test split is complete).
        only: keep only tasks whose name contains one of these substrings (empty: the whole suite).
        out: output directory.
        threads: torch intra-op threads (``0`` leaves torch's default).
        plot: write ``curves.png``.
    """

    suite: str = "default"
    ckpt: str = ""
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    long_steps: int = 1000
    adam_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    sgd_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
    adamw_weight_decay: float = 0.01
    sgd_momentum: float = 0.9
    tune_on: str = "first_seed"
    optimizers: tuple[str, ...] = ("ngo", "adam", "adam_tuned", "adamw_tuned", "sgd_tuned")
    ngo_lr: float = 1.0
    ngo_compile: bool = False
    smooth: int = 20
    data_root: str = ""
    paper_train_limit: int = 10000
    only: tuple[str, ...] = ()
    out: str = DEFAULT_OUT
    threads: int = 1
    plot: bool = True

    def __post_init__(self) -> None:
        """Type-check (coercing ints of float fields), then :meth:`validate`."""
        _cfg.check_types(self)
        self.validate()

    def validate(self) -> None:
        """Check value constraints.

        Raises:
            ValueError: naming the first offending key, its value and what is expected.
        """
        if self.suite not in SUITES:
            _bad("suite", self.suite, f"one of {list(SUITES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            _bad("seeds", self.seeds, "a non-empty list of distinct integers >= 0")
        for key in ("steps", "long_steps", "smooth", "paper_train_limit"):
            if getattr(self, key) < 1:
                _bad(key, getattr(self, key), "an integer >= 1")
        for key in ("adam_lrs", "sgd_lrs"):
            lrs = getattr(self, key)
            if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs) or len(set(lrs)) != len(lrs):
                _bad(key, lrs, "a non-empty list of distinct finite floats > 0")
        if not (math.isfinite(self.adamw_weight_decay) and self.adamw_weight_decay >= 0):
            _bad("adamw_weight_decay", self.adamw_weight_decay, "a finite float >= 0")
        if not 0 <= self.sgd_momentum < 1:
            _bad("sgd_momentum", self.sgd_momentum, "a float in [0, 1)")
        if self.tune_on not in TUNE_ON:
            _bad("tune_on", self.tune_on, f"one of {list(TUNE_ON)}")
        if (not set(self.optimizers) <= set(OPTIMIZERS) or len(set(self.optimizers)) != len(self.optimizers)
                or not {"ngo", "adam_tuned"} <= set(self.optimizers)):
            _bad("optimizers", self.optimizers, f"distinct names among {list(OPTIMIZERS)} including 'ngo' and "
                                                "'adam_tuned'")
        if not (math.isfinite(self.ngo_lr) and self.ngo_lr > 0):
            _bad("ngo_lr", self.ngo_lr, "a finite float > 0")
        if self.threads < 0:
            _bad("threads", self.threads, "an integer >= 0 (0: torch's default)")
        if not self.out:
            _bad("out", self.out, "a non-empty directory path")


def load(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> VsAdamConfig:
    """:func:`lopt_graphs.config.load_config` for :class:`VsAdamConfig`."""
    return _cfg.load_config(VsAdamConfig, path, overrides)


# ------------------------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task.

    Attributes:
        name: short unique name (used in tables, plots, ``only=``).
        group: ``"in_dist"``, ``"ood"`` or ``"paper"``.
        description: why the task is in the suite (what is in or out of distribution).
        config: the optimizee; ``config.dataset`` is an embedded dataset, or for ``group == "paper"`` a
            torchvision one (``mnist``, ``fashion_mnist``, ``cifar10``).
        long: train for ``long_steps`` instead of ``steps``.
    """

    name: str
    group: str
    description: str
    config: TaskConfig
    long: bool = False


def _id(i: int, name: str) -> TaskSpec:
    return TaskSpec(name, "in_dist", "IN_DISTRIBUTION config (sampled by the meta-training families)",
                    IN_DISTRIBUTION[i])


def _held(i: int, name: str, why: str) -> TaskSpec:
    return TaskSpec(name, "ood", f"HELD_OUT config: {why}", HELD_OUT[i])


def _long(name: str, cfg: TaskConfig) -> TaskSpec:
    return TaskSpec(name, "ood", "in-distribution config, horizon long_steps (meta-training: 200 steps)", cfg,
                    long=True)


def _paper(name: str, dataset: str, arch: str, widths: tuple[int, ...], batch: int) -> TaskSpec:
    what = "small CNN (stride-2 convs, global average pooling)" if arch == "cnn" else "MLP"
    return TaskSpec(name, "paper", f"{dataset} (torchvision files under data_root), {what}",
                    TaskConfig(dataset, arch, widths, "relu", batch, 1.0))


def suite_tasks(suite: str) -> list[TaskSpec]:
    """The task list of ``suite`` (``"default"``, ``"quick"`` or ``"tiny"``)."""
    if suite == "tiny":
        return [
            TaskSpec("tiny_digits_mlp", "in_dist", "tiny in-distribution MLP", TaskConfig("digits", "mlp", (16,))),
            TaskSpec("tiny_digits_mlp_elu", "ood", "ELU (not sampled in meta-training), batch 16",
                     TaskConfig("digits", "mlp", (16, 16), "elu", 16)),
            TaskSpec("tiny_long", "ood", "horizon long_steps", TaskConfig("digits", "mlp", (16,)), long=True),
            _paper("tiny_fashion_mnist_cnn", "fashion_mnist", "cnn", (8, 8), 32),
            _paper("tiny_mnist_mlp", "mnist", "mlp", (32,), 32),
            _paper("tiny_cifar10_cnn", "cifar10", "cnn", (8, 8), 32),
        ]
    id_digits_mlp = _id(0, "id_digits_mlp32_relu")
    id_mnist1d = _id(3, "id_mnist1d_mlp64-32_gelu")
    fashion_cnn = _paper("paper_fashion_mnist_cnn16-32-32", "fashion_mnist", "cnn", (16, 32, 32), 128)
    if suite == "quick":
        return [
            id_digits_mlp,
            id_mnist1d,
            _held(0, "ood_digits_mlp96-96_elu_b16", "ELU, width 96, batch 16"),
            _long("ood_long1000_digits_mlp32_relu", IN_DISTRIBUTION[0]),
            fashion_cnn,
        ]
    if suite != "default":
        raise ValueError(f"unknown suite {suite!r}; expected one of {list(SUITES)}")
    return [
        id_digits_mlp,
        _id(1, "id_digits_cnn16-32_relu"),
        _id(2, "id_mnist5k_mlp32_tanh_b128"),
        id_mnist1d,
        TaskSpec("ood_digits_mlp256-256_wide", "ood", "width 256 (meta-training samples widths 16-64)",
                 TaskConfig("digits", "mlp", (256, 256), "relu", 64)),
        TaskSpec("ood_mnist5k_mlp64x4_deep", "ood", "depth 4 hidden layers (meta-training samples 1-2)",
                 TaskConfig("mnist5k", "mlp", (64, 64, 64, 64), "relu", 64)),
        TaskSpec("ood_mnist5k_cnn16-32-32_deep", "ood", "CNN with 3 conv layers (meta-training samples 1-2)",
                 TaskConfig("mnist5k", "cnn", (16, 32, 32), "relu", 64)),
        TaskSpec("ood_digits_mlp64_init3", "ood", "init scale 3.0 (meta-training samples 0.5-2.0)",
                 TaskConfig("digits", "mlp", (64,), "relu", 64, 3.0)),
        _held(0, "ood_digits_mlp96-96_elu_b16", "ELU, width 96, batch 16"),
        _held(1, "ood_mnist5k_mlp48_tanh_b256", "width 48, batch 256"),
        _held(2, "ood_mnist1d_cnn24-24_elu", "ELU CNN, width 24"),
        _held(3, "ood_digits_cnn12-12_b256", "width 12, batch 256"),
        _long("ood_long1000_digits_mlp32_relu", IN_DISTRIBUTION[0]),
        _long("ood_long1000_mnist1d_mlp64-32_gelu", IN_DISTRIBUTION[3]),
        fashion_cnn,
        _paper("paper_fashion_mnist_mlp128", "fashion_mnist", "mlp", (128,), 128),
        _paper("paper_mnist_cnn16-32-32", "mnist", "cnn", (16, 32, 32), 128),
        _paper("paper_cifar10_cnn16-32-32", "cifar10", "cnn", (16, 32, 32), 128),
    ]


class SplitsTask(Task):
    """A :class:`~meta_train.tasks.families.Task` over given :class:`DatasetSplits` (e.g. torchvision data)
    instead of an embedded dataset; same interface (``module``, ``init_params``, ``batches``, ``evaluate``)."""

    def __init__(self, cfg: TaskConfig, data: DatasetSplits):  # noqa: D107 - replaces Task.__init__'s loading
        self.cfg = cfg
        self.data = data
        self.module = build_module(cfg, data.input_shape, data.num_classes)
        self.names = [n for n, _ in self.module.named_parameters()]
        self.spec = graph_from_module(self.module)
        self.loss_scale = math.log(data.num_classes)


# -------------------------------------------------------------------------------------------------- training
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
        cpu_ms_per_step: CPU time (``time.process_time``) per training step: on a shared machine it is
            closer than the wall clock to what the step costs on an idle core (with one torch thread).
    """

    curve: list[float]
    final_loss: float
    test_acc: float
    ms_per_step: float
    ms_per_opt_step: float
    diverged: bool = False
    cpu_ms_per_step: float = math.nan


def train_run(task: Task, make_opt: Callable[[nn.Module], torch.optim.Optimizer], steps: int, seed: int) -> RunResult:
    """Train a fresh copy of ``task.module`` for ``steps`` steps.

    Initial weights and minibatches come from ``torch.Generator().manual_seed(seed)`` in the same order as
    ``meta_train.evaluate.train_curve`` (so every optimizer sees the same init and batches for a seed).
    Minibatches are gathered step by step (the index tensor is drawn up front, as ``Task.batches`` does).
    """
    gen = torch.Generator().manual_seed(seed)
    model = task.new_model(gen)
    opt = make_opt(model)
    idx = torch.randint(0, task.data.num_train, (steps, task.cfg.batch_size), generator=gen)
    x_train, y_train = task.data.x_train, task.data.y_train
    curve: list[float] = []
    diverged = False
    opt_time = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(steps):
        xb, yb = x_train[idx[k]], y_train[idx[k]]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(xb), yb)
        value = loss.item()
        if not math.isfinite(value):
            diverged = True
            break
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        opt_time += time.perf_counter() - t1
        curve.append(value)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = max(len(curve), 1)
    curve += [math.inf] * (steps - len(curve))
    if diverged:
        return RunResult(curve, math.inf, math.nan, elapsed / done * 1e3, opt_time / done * 1e3, True,
                         cpu / done * 1e3)
    ev = task.evaluate([p.detach() for p in model.parameters()])
    final = ev["train_loss"] if math.isfinite(ev["train_loss"]) else math.inf
    return RunResult(curve, final, ev["test_accuracy"], elapsed / done * 1e3, opt_time / done * 1e3,
                     not math.isfinite(final), cpu / done * 1e3)


def smooth(curve: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` steps (over the available steps at the start)."""
    out: list[float] = []
    total, inf_count = 0.0, 0
    for i, v in enumerate(curve):
        if math.isfinite(v):
            total += v
        else:
            inf_count += 1
        if i >= window:
            old = curve[i - window]
            if math.isfinite(old):
                total -= old
            else:
                inf_count -= 1
        out.append(math.inf if inf_count else total / min(i + 1, window))
    return out


def first_step_at_or_below(curve: Sequence[float], target: float) -> int | None:
    """First step (1-based) at which ``curve`` is ``<= target``, or ``None``."""
    for i, v in enumerate(curve):
        if v <= target:
            return i + 1
    return None


def speedup(adam_smoothed: Sequence[float], ngo_smoothed: Sequence[float]) -> dict[str, Any]:
    """NGO's speed-up over tuned Adam on one pair of smoothed loss curves.

    The loss level is ``target = max(adam_final, ngo_final)`` (final smoothed losses), the lowest level both
    runs reach; the speed-up is ``adam_steps / ngo_steps``, the first steps at which each curve is at or below
    it. When NGO reaches tuned Adam's final loss (``reached``), the target is Adam's final loss: the speed-up
    is "tuned Adam's steps to its final loss / NGO's steps to the same loss". Otherwise the target is NGO's
    final loss and the speed-up (< 1) says how much sooner Adam got there. ``nan`` if either run diverged;
    ``0`` if NGO made no progress at all (its final smoothed loss is not below its first one), which the
    comparison at NGO's own level would otherwise score as 1.
    """
    adam_final, ngo_final = adam_smoothed[-1], ngo_smoothed[-1]
    if not (math.isfinite(adam_final) and math.isfinite(ngo_final)):
        return {"speedup": math.nan, "reached": math.isfinite(ngo_final), "adam_steps": None, "ngo_steps": None,
                "target": math.nan}
    if ngo_final >= ngo_smoothed[0] and ngo_final > adam_final:
        return {"speedup": 0.0, "reached": False, "adam_steps": None, "ngo_steps": None, "target": ngo_final}
    target = max(adam_final, ngo_final)
    adam_steps = first_step_at_or_below(adam_smoothed, target)
    ngo_steps = first_step_at_or_below(ngo_smoothed, target)
    assert adam_steps is not None and ngo_steps is not None  # each curve reaches its own final value
    return {"speedup": adam_steps / ngo_steps, "reached": ngo_final <= adam_final, "adam_steps": adam_steps,
            "ngo_steps": ngo_steps, "target": target}


def tune_lr(train: Callable[[float, int], RunResult], lrs: Sequence[float], seeds: Sequence[int]
            ) -> tuple[float, list[dict[str, Any]], dict[tuple[float, int], RunResult]]:
    """Grid search: run ``train(lr, seed)`` for every lr and seed; pick the lr of the lowest mean final
    training loss over ``seeds`` (non-finite counts as ``inf``; ties go to the first lr of ``lrs``).

    Returns:
        ``(best_lr, grid, runs)``: ``grid`` lists ``{"lr", "criterion", "final_loss_per_seed"}`` in the order
        of ``lrs``; ``runs`` maps ``(lr, seed)`` to its :class:`RunResult` (for reuse).
    """
    runs: dict[tuple[float, int], RunResult] = {}
    grid: list[dict[str, Any]] = []
    for lr in lrs:
        finals = []
        for s in seeds:
            runs[(lr, s)] = r = train(lr, s)
            finals.append(r.final_loss if math.isfinite(r.final_loss) else math.inf)
        grid.append({"lr": lr, "criterion": statistics.fmean(finals) if all(map(math.isfinite, finals)) else math.inf,
                     "final_loss_per_seed": finals})
    best = min(grid, key=lambda g: g["criterion"])  # min keeps the first of equal values
    return best["lr"], grid, runs


# ------------------------------------------------------------------------------------------------ statistics
def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (``ddof=1``; 0 for one value); ``nan``/``inf`` propagate."""
    xs = list(xs)
    if not all(map(math.isfinite, xs)):
        return (math.inf if any(x == math.inf for x in xs) and not any(math.isnan(x) for x in xs) else math.nan,
                math.nan)
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _curve_stats(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    cols = list(zip(*curves))
    stats = [_mean_std(c) for c in cols]
    return [m for m, _ in stats], [s for _, s in stats]


def _sig(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else x


def _finite_or_none(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` (strict JSON), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


# -------------------------------------------------------------------------------------------------- one task
def _make_optimizer(kind: str, lr: float, cfg: VsAdamConfig, learned: LearnedUpdate | None
                    ) -> Callable[[nn.Module], torch.optim.Optimizer]:
    if kind == "adam":
        return lambda m: torch.optim.Adam(m.parameters(), lr=lr)
    if kind == "adamw":
        return lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=cfg.adamw_weight_decay)
    if kind == "sgd":
        return lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=cfg.sgd_momentum)
    if kind == "ngo":
        return lambda m: NeuralGraphOptimizer.for_module(m, learned, lr=lr, compile=cfg.ngo_compile)
    raise ValueError(f"unknown optimizer kind {kind!r}")


_KIND = {"ngo": "ngo", "adam": "adam", "adam_tuned": "adam", "adamw_tuned": "adamw", "sgd_tuned": "sgd"}


def _aggregate(name: str, runs: list[RunResult], window: int) -> dict[str, Any]:
    finals = [r.final_loss for r in runs]
    accs = [r.test_acc for r in runs]
    curves = [[_sig(v) for v in r.curve] for r in runs]
    smoothed = [smooth(r.curve, window) for r in runs]
    loss_mean, loss_std = _curve_stats(curves)
    sm_mean, sm_std = _curve_stats(smoothed)
    fl = _mean_std(finals)
    fs = _mean_std([s[-1] for s in smoothed])
    ta = _mean_std(accs)
    ms = _mean_std([r.ms_per_step for r in runs])
    return {
        "label": OPTIMIZERS[name], "kind": _KIND[name],
        "final_loss_mean": fl[0], "final_loss_std": fl[1], "final_loss_per_seed": finals,
        "final_smoothed_loss_mean": fs[0], "final_smoothed_loss_std": fs[1],
        "test_acc_mean": ta[0], "test_acc_std": ta[1], "test_acc_per_seed": accs,
        "ms_per_step": ms[0], "ms_per_step_std": ms[1],
        "ms_per_opt_step": statistics.fmean(r.ms_per_opt_step for r in runs),
        "cpu_ms_per_step": statistics.fmean(r.cpu_ms_per_step for r in runs),
        "diverged_seeds": sum(r.diverged for r in runs),
        "curves": {"loss_per_seed": curves, "loss_mean": [_sig(v) for v in loss_mean],
                   "loss_std": [_sig(v) for v in loss_std], "smoothed_mean": [_sig(v) for v in sm_mean],
                   "smoothed_std": [_sig(v) for v in sm_std]},
    }


def run_task(spec: TaskSpec, task: Task, cfg: VsAdamConfig, learned: LearnedUpdate) -> dict[str, Any]:
    """Run every optimizer of ``cfg.optimizers`` on ``task`` over ``cfg.seeds``; the task's result dict."""
    steps = cfg.long_steps if spec.long else cfg.steps
    seeds = list(cfg.seeds)
    tune_seeds = seeds[:1] if cfg.tune_on == "first_seed" else seeds
    cache: dict[tuple[str, float, int], RunResult] = {}

    def train(kind: str, lr: float, seed: int) -> RunResult:
        key = (kind, lr, seed)
        if key not in cache:
            cache[key] = train_run(task, _make_optimizer(kind, lr, cfg, learned), steps, seed)
        return cache[key]

    results: dict[str, Any] = {}
    for name in cfg.optimizers:
        kind = _KIND[name]
        extra: dict[str, Any] = {}
        if name.endswith("_tuned"):
            lrs = cfg.sgd_lrs if kind == "sgd" else cfg.adam_lrs
            lr, grid, _ = tune_lr(lambda lr_, s, k=kind: train(k, lr_, s), lrs, tune_seeds)
            edge = len(lrs) > 1 and lr in (min(lrs), max(lrs))
            extra = {"lr_grid": list(lrs), "tuned_on_seeds": tune_seeds, "lr_at_grid_edge": edge, "grid": grid}
        else:
            lr = cfg.ngo_lr if kind == "ngo" else 1e-3
        hyper: dict[str, Any] = {}
        if kind == "adamw":
            hyper["weight_decay"] = cfg.adamw_weight_decay
        elif kind == "sgd":
            hyper["momentum"] = cfg.sgd_momentum
        elif kind == "ngo":
            hyper["compile"] = cfg.ngo_compile
        runs = [train(kind, lr, s) for s in seeds]
        results[name] = {**_aggregate(name, runs, cfg.smooth), "lr": lr, "hyper": hyper, **extra}

    adam_sm = [smooth(c, cfg.smooth) for c in results["adam_tuned"]["curves"]["loss_per_seed"]]
    ngo_sm = [smooth(c, cfg.smooth) for c in results["ngo"]["curves"]["loss_per_seed"]]
    per = [speedup(a, n) for a, n in zip(adam_sm, ngo_sm)]
    sp = _mean_std([p["speedup"] for p in per])
    mean_curve = speedup(_curve_stats(adam_sm)[0], _curve_stats(ngo_sm)[0])
    return {
        "steps": steps, "optimizers": results,
        "ngo_speedup_vs_tuned_adam": {
            "mean": sp[0], "std": sp[1], "per_seed": [p["speedup"] for p in per],
            "reached": [p["reached"] for p in per], "adam_steps": [p["adam_steps"] for p in per],
            "ngo_steps": [p["ngo_steps"] for p in per], "target_loss": [p["target"] for p in per],
            "from_mean_curves": {"speedup": mean_curve["speedup"], "reached": mean_curve["reached"],
                                 "adam_steps": mean_curve["adam_steps"], "ngo_steps": mean_curve["ngo_steps"]},
        },
    }


# ------------------------------------------------------------------------------------------------- reporting
def _fmt(mean: float | None, std: float | None, digits: int = 3, scale: float = 1.0) -> str:
    if mean is None or not math.isfinite(mean):
        return "diverged"
    s = f"{mean * scale:.{digits}f}"
    if std is not None and math.isfinite(std):
        s += f" ± {std * scale:.{digits}f}"
    return s


def _fmt_speedup(sp: dict[str, Any] | None) -> str:
    if not sp or sp.get("mean") is None or not math.isfinite(sp["mean"]):
        return "n/a"
    reached = sp["reached"]
    return f"{sp['mean']:.2f}× ± {sp['std']:.2f} ({sum(reached)}/{len(reached)})"


def _geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x) and x > 0]
    return math.exp(statistics.fmean(map(math.log, xs))) if xs else math.nan


def _or_inf(x: float | None) -> float:
    return math.inf if x is None else x


def markdown(doc: dict[str, Any]) -> str:
    """The markdown report of a result document (tables of final loss, test accuracy, time per step)."""
    cfg = doc["config"]
    names = [n for n in cfg["optimizers"]]
    ran = [t for t in doc["tasks"] if not t["skipped"]]
    ck = doc["ckpt"]
    trained = (ck.get("meta") or {}).get("trained")
    lines = [
        f"# NeuralGraphOptimizer vs Adam — suite `{cfg['suite']}`",
        "",
        f"{doc['date']} · torch {doc['torch']} · {doc['machine']['cpus']} CPUs, "
        f"{doc['machine']['torch_threads']} torch thread(s) · {doc['seconds']:.0f} s wall, "
        f"{doc['cpu_seconds']:.0f} s CPU · "
        f"NGO checkpoint `{ck['path']}` (sha256 {str(ck['sha256'])[:12]}, meta.trained={trained}) · "
        f"seeds {cfg['seeds']} · lr tuned on {cfg['tune_on'].replace('_', ' ')} by final full-training loss",
        "",
    ]
    if trained is False:
        lines += ["**Note: this checkpoint is not meta-trained (meta.trained=False); NGO behaves like Adam "
                  "lr=1e-3.**", ""]
    head = "| task | group | steps | " + " | ".join(OPTIMIZERS[n] for n in names)
    lines += ["## Final full-training loss (mean ± std over seeds; lower is better; tuned lr in brackets)", "",
              head + " | NGO speed-up vs tuned Adam |",
              "|---|---|---:|" + "---:|" * len(names) + "---:|"]
    for t in ran:
        cells = []
        for n in names:
            o = t["optimizers"][n]
            c = _fmt(o["final_loss_mean"], o["final_loss_std"])
            if n.endswith("_tuned"):
                c += f" [{o['lr']:g}{'*' if o.get('lr_at_grid_edge') else ''}]"
            cells.append(c)
        lines.append(f"| {t['name']} | {t['group']} | {t['steps']} | " + " | ".join(cells)
                     + f" | {_fmt_speedup(t['ngo_speedup_vs_tuned_adam'])} |")
    lines += ["", "`*`: tuned lr at the edge of its grid (widen the grid). Speed-up (mean ± std over seeds): "
              f"tuned Adam's steps to its final smoothed loss (window {cfg['smooth']}) / NGO's steps to the same "
              "loss; on seeds where NGO never gets there the loss level is NGO's final loss instead (speed-up < 1: "
              "how much sooner tuned Adam got to it). (k/n): seeds on which NGO reached tuned Adam's final loss.",
              ""]
    lines += ["## Test accuracy % (mean ± std over seeds)", "", head + " |",
              "|---|---|---:|" + "---:|" * len(names)]
    for t in ran:
        cells = [_fmt(t["optimizers"][n]["test_acc_mean"], t["optimizers"][n]["test_acc_std"], 1, 100.0)
                 for n in names]
        lines.append(f"| {t['name']} | {t['group']} | {t['steps']} | " + " | ".join(cells) + " |")
    lines += ["", "## ms per training step: wall clock (CPU time) (forward + backward + step; mean over seeds)",
              "", head + " | NGO / Adam (CPU) |", "|---|---|---:|" + "---:|" * len(names) + "---:|"]
    for t in ran:
        o = t["optimizers"]
        cells = [f"{o[n]['ms_per_step']:.2f} ({o[n]['cpu_ms_per_step']:.2f})" for n in names]
        ratio = o["ngo"]["cpu_ms_per_step"] / o["adam_tuned"]["cpu_ms_per_step"]
        lines.append(f"| {t['name']} | {t['group']} | {t['steps']} | " + " | ".join(cells) + f" | {ratio:.1f}× |")
    lines += ["", "## Summary", ""]
    for group in GROUPS:
        ts = [t for t in ran if t["group"] == group]
        if not ts:
            continue
        def final(t: dict[str, Any], name: str) -> float:
            return _or_inf(t["optimizers"][name]["final_loss_mean"]) if name in t["optimizers"] else math.nan

        wins = sum(final(t, "ngo") <= final(t, "adam_tuned") for t in ts)
        wins_default = sum(final(t, "ngo") <= final(t, "adam") for t in ts)
        ratios = [final(t, "ngo") / final(t, "adam_tuned") for t in ts if final(t, "adam_tuned") > 0]
        ratio = statistics.median(ratios) if ratios else math.nan
        gm = _geomean([t["ngo_speedup_vs_tuned_adam"]["mean"] for t in ts])
        reached = [r for t in ts for r in t["ngo_speedup_vs_tuned_adam"]["reached"]]
        bound = f" (NGO reached tuned Adam's final loss on {sum(reached)}/{len(reached)} runs)"
        versus_default = f", ≤ Adam lr=1e-3's on {wins_default}/{len(ts)}" if "adam" in names else ""
        lines.append(f"- {group}: NGO's final training loss ≤ tuned Adam's on {wins}/{len(ts)} tasks"
                     f"{versus_default}; median NGO / tuned Adam final-loss ratio {ratio:.2f}; "
                     f"geometric-mean speed-up vs tuned Adam {gm:.2f}×{bound}")
    for t in doc["tasks"]:
        if t["skipped"]:
            lines.append(f"- {t['name']} ({t['group']}): {t['skip_reason']}")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path | None:
    """``curves.png``: one panel per task, smoothed minibatch loss, mean ± std band over seeds."""
    ran = [t for t in doc["tasks"] if not t["skipped"]]
    if not ran:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(4, len(ran))
    nrows = math.ceil(len(ran) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    colors = {"ngo": "C3", "adam": "C7", "adam_tuned": "C0", "adamw_tuned": "C2", "sgd_tuned": "C1"}
    for ax, t in zip(axes.flat, ran):
        for name, o in sorted(t["optimizers"].items(), key=lambda kv: kv[0] == "ngo"):  # NGO drawn on top
            m = torch.tensor([math.nan if v is None else v for v in o["curves"]["smoothed_mean"]], dtype=torch.float64)
            s = torch.tensor([math.nan if v is None else v for v in o["curves"]["smoothed_std"]], dtype=torch.float64)
            m = torch.where(torch.isfinite(m), m, torch.nan)
            x = torch.arange(1, len(m) + 1)
            # on the log axis, clip the band's lower edge to the lowest seed's smoothed curve (mean - std can be
            # <= 0 when one seed dips far below the others)
            seeds = [smooth([math.inf if v is None else v for v in c], doc["config"]["smooth"])
                     for c in o["curves"]["loss_per_seed"]]
            low = torch.tensor(seeds, dtype=torch.float64).min(0).values
            lr = f" ({o['lr']:g})" if name.endswith("_tuned") else ""
            ax.plot(x, m, color=colors.get(name), lw=1.6 if name == "ngo" else 1.0, label=OPTIMIZERS[name] + lr)
            ax.fill_between(x, torch.maximum(m - s, low), m + s, color=colors.get(name), alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_title(f"{t['name']} [{t['group']}]", fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(ran):]:
        ax.axis("off")
    fig.suptitle(f"smoothed training loss (window {doc['config']['smooth']}), mean ± std over seeds "
                 f"{doc['config']['seeds']} (band clipped below at the lowest seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------- run
def _ckpt_info(ckpt: str) -> dict[str, Any]:
    """Resolved path, sha256 and ``meta`` of the NGO checkpoint (as ``load_learned_update`` resolves it)."""
    name = ckpt or DEFAULT_CHECKPOINT
    shipped = CHECKPOINT_DIR / f"{name}.pt"
    path = shipped if (os.sep not in name and not name.endswith(".pt") and shipped.exists()) else Path(name)
    info: dict[str, Any] = {"arg": ckpt, "path": str(path), "sha256": None, "meta": None}
    if path.is_file():
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            info["meta"] = _finite_or_none(dict(obj.get("meta", {})))
        except Exception:  # the loader below reports unreadable checkpoints properly
            pass
    return info


def _machine() -> dict[str, Any]:
    try:
        load_avg: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_avg = None
    return {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average_at_start": load_avg}


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


DEFINITIONS = {
    "final_loss": "cross-entropy on the full training split after the last step",
    "test_acc": "accuracy on the test split after the last step (fraction)",
    "curves.loss_per_seed": "minibatch training loss at every step, one list per seed (null after divergence)",
    "curves.smoothed": "trailing moving average of the minibatch loss over `smooth` steps; mean/std over seeds",
    "std": "sample standard deviation over seeds (ddof=1; 0 for one seed)",
    "lr tuning": "tune_on=first_seed: grid on the first seed, lowest final_loss; all_seeds: lowest mean final_loss",
    "ngo_speedup_vs_tuned_adam": "per seed, adam_steps / ngo_steps, the first steps at which tuned Adam's and "
                                 "NGO's smoothed curves reach the worse of their two final smoothed losses (= "
                                 "tuned Adam's final loss when NGO reaches it: reached=true)",
    "ms_per_step": "wall clock of a training step (batch gather, forward, backward, step), mean over seeds",
    "ms_per_opt_step": "wall clock of optimizer.step() alone, mean over seeds",
    "cpu_ms_per_step": "CPU time (process_time) of a training step: robust to other processes sharing the core",
    "null": "not finite (diverged run) or not applicable",
}


def run(cfg: VsAdamConfig, command: str = "") -> dict[str, Any]:
    """Run the benchmark of ``cfg``; prints progress and the tables, writes the outputs, returns the document."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start, c_start = time.perf_counter(), time.process_time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _cfg.save_resolved_config(cfg, out / "config.yaml", header="Resolved config of benchmarks/vs_adam.py")
    learned = load_learned_update(cfg.ckpt or None)
    ckpt = _ckpt_info(cfg.ckpt)
    if (ckpt.get("meta") or {}).get("trained") is False:
        print(f"note: NGO checkpoint {ckpt['path']} is not meta-trained (meta.trained=False): NGO ~ Adam lr=1e-3",
              flush=True)
    specs = suite_tasks(cfg.suite)
    if cfg.only:
        specs = [s for s in specs if any(o in s.name for o in cfg.only)]
        if not specs:
            raise ValueError(f"only={list(cfg.only)} matches no task of suite {cfg.suite!r}")
    vision: dict[str, DatasetSplits | tuple[str, str]] = {}  # dataset -> splits, or (skip reason, detail)
    tasks: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        entry: dict[str, Any] = {"name": spec.name, "group": spec.group, "description": spec.description,
                                 "task_config": spec.config.to_dict(), "skipped": False, "skip_reason": None,
                                 "skip_detail": None,
                                 "steps": cfg.long_steps if spec.long else cfg.steps,
                                 "seconds": 0.0, "cpu_seconds": 0.0,
                                 "optimizers": {}, "ngo_speedup_vs_tuned_adam": None}
        t0, c0 = time.perf_counter(), time.process_time()
        if spec.group == "paper":
            ds = spec.config.dataset
            if ds not in vision:
                root = os.path.expanduser(cfg.data_root)
                if not root:
                    vision[ds] = (f"skipped: {ds} not found under '' (data_root is empty; pass "
                                  f"data_root=/path/to/torchvision/root)", "data_root is empty")
                else:
                    try:
                        vision[ds] = load_torchvision(ds, root, train_limit=cfg.paper_train_limit)
                    except (FileNotFoundError, ImportError) as exc:
                        vision[ds] = (f"skipped: {ds} not found under {root!r} (pass data_root=...)", str(exc))
            found = vision[ds]
            if isinstance(found, tuple):
                entry["skipped"], entry["skip_reason"], entry["skip_detail"] = True, found[0], found[1]
                print(f"[{i + 1}/{len(specs)}] {spec.name}: {found[0]}", flush=True)
                tasks.append(entry)
                continue
            task: Task = SplitsTask(spec.config, found)
        else:
            task = Task(spec.config)
        entry.update(run_task(spec, task, cfg, learned))
        entry["seconds"], entry["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
        o = entry["optimizers"]
        print(f"[{i + 1}/{len(specs)}] {spec.name} ({spec.group}, {entry['steps']} steps): final loss NGO "
              f"{_fmt(o['ngo']['final_loss_mean'], None)} vs tuned Adam "
              f"{_fmt(o['adam_tuned']['final_loss_mean'], None)}"
              f" (lr {o['adam_tuned']['lr']:g}); speed-up {_fmt_speedup(entry['ngo_speedup_vs_tuned_adam'])}; "
              f"{entry['seconds']:.1f}s ({entry['cpu_seconds']:.1f}s CPU)", flush=True)
        tasks.append(entry)
    doc: dict[str, Any] = {
        "benchmark": "vs_adam", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "torch": torch.__version__, "command": command,
        "seconds": time.perf_counter() - t_start, "cpu_seconds": time.process_time() - c_start,
        "config": _cfg.config_to_dict(cfg), "ckpt": ckpt,
        "definitions": DEFINITIONS, "tasks": tasks,
    }
    doc = _finite_or_none(doc)
    md = markdown(doc)
    print()
    print(md)
    _write_atomic(out / "results.md", md)
    _write_atomic(out / "results.json", json.dumps(doc, indent=1, allow_nan=False))
    written = [out / "results.md", out / "results.json", out / "config.yaml"]
    if cfg.plot and plot(doc, out / "curves.png") is not None:
        written.append(out / "curves.png")
    print("wrote " + ", ".join(map(str, written)), flush=True)
    return doc


def report(results_json: str | os.PathLike[str]) -> dict[str, Any]:
    """Re-render ``results.md`` (printed too) and ``curves.png`` next to an existing ``results.json``."""
    path = Path(results_json)
    doc = json.loads(path.read_text(encoding="utf-8"))
    md = markdown(doc)
    print(md)
    _write_atomic(path.parent / "results.md", md)
    if doc["config"].get("plot", True):
        plot(doc, path.parent / "curves.png")
    return doc


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: ``[--config YAML] [key=value ...]``; returns the result document."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog=f"config keys: {', '.join(_cfg.field_names(VsAdamConfig))}")
    ap.add_argument("--config", default=None, help="YAML config (e.g. configs/benchmarks/quick.yaml)")
    ap.add_argument("--report", default=None, metavar="RESULTS_JSON",
                    help="only re-render results.md (and curves.png) next to an existing results.json")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="override a config key")
    args = ap.parse_args(argv)
    if args.report:
        if args.config or args.overrides:
            ap.error("--report takes no config")
        return report(args.report)
    cfg = load(args.config, args.overrides)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    return run(cfg, command=" ".join(["python benchmarks/vs_adam.py", *argv_list]))


if __name__ == "__main__":
    main()
