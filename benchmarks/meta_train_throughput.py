"""Meta-training throughput: inner steps per second summed over a group's tasks and the population, against
one plain ``torch.optim.Adam`` training loop of the same task in the same process.

Command::

    lopt-throughput [quick=true] [tasks_per_group=16] [population=8] [truncation=10] [horizon=200] [threads=1]
                    [out=benchmarks/results/meta_train_throughput.json]
    python -m benchmarks.meta_train_throughput --help      # the keys and their defaults (0: meta-training's)

For each task (the in-distribution configurations; ``quick``: the digits MLP only) a group of
``tasks_per_group`` runs of it (own inits, init scales and data) is unrolled by each estimator for one
whole inner run of ``horizon`` steps, truncation by truncation (the encoder runs at its schedule: steps 1,
2, 4, ... as in meta-training), after one warm-up truncation. ES counts ``population + 1`` members (the
unperturbed run advances the state), PES ``population``, TBPTT 1 (backprop through the unroll). Adam: the
same number of steps of ``torch.optim.Adam`` on one copy of the task (median of 3 repetitions). A
reference row gives the ceiling of batching on this machine: the same ``tasks x population`` members
trained by plain SGD in one vmap call (no learned update). Prints a markdown table and, as its last line,
``summary: es=<r>x pes=<r>x tbptt=<r>x`` (the digits MLP, the default group size); writes JSON.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import grad_and_value, vmap

from lopt_graphs import config as _cfg
from meta_train.config import MetaTrainConfig
from meta_train.estimators import make_estimator
from meta_train.runs import new_group
from meta_train.tasks import IN_DISTRIBUTION, Task, TaskConfig, sample_group
from meta_train.trainer import fresh_learned_update
from meta_train.unroll import Stepper, ThetaSpace

ESTIMATOR_NAMES = ("es", "pes", "tbptt")


def _adam_steps_per_s(task: Task, steps: int, gen: torch.Generator) -> float:
    model = task.new_model(gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys = task.batches(gen, steps)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for k in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[k]), ys[k]).backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return steps / statistics.median(times)


def _group_cfgs(tc: TaskConfig, n: int, gen: torch.Generator) -> list[TaskConfig]:
    """``n`` runs of ``tc``: ``tc`` itself, then copies with the init scales a group draws."""
    scales = [c.init_scale for c in sample_group("digits_mlp", gen, n)]
    return [tc] + [TaskConfig(**{**tc.to_dict(), "init_scale": s}) for s in scales[1:]]


def _estimator_steps_per_s(name: str, cfgs: list[TaskConfig], population: int, truncation: int, horizon: int,
                           gen: torch.Generator) -> float:
    torch.manual_seed(0)
    learned = fresh_learned_update(MetaTrainConfig().learned)  # the default recipe's learned update
    space, stepper = ThetaSpace(learned), Stepper(learned)
    theta = space.flatten(learned)
    est = make_estimator(name, stepper, space, 0.01, 3.0)
    pairs = population // 2
    members = 1 if name == "tbptt" else population + (name == "es")

    def truncations(count: int) -> float:
        runs = new_group(cfgs, gen, horizon)
        t0 = time.perf_counter()
        for _ in range(count):
            eps = None if name == "tbptt" else torch.randn(runs.size, pairs, space.dim, generator=gen)
            runs = est.estimate(theta, runs, runs.batches(gen, truncation), eps, list(range(pairs))).runs
        return time.perf_counter() - t0

    truncations(1)  # warm-up
    count = max(1, horizon // truncation)
    return len(cfgs) * members * truncation * count / truncations(count)


def _sgd_ceiling_steps_per_s(cfgs: list[TaskConfig], population: int, truncation: int, gen: torch.Generator) -> float:
    """Plain SGD on ``len(cfgs) x population`` members in one vmap call: no learned update at all."""
    runs = new_group(cfgs, gen, 10**6)
    task = runs.task
    params = [p.unsqueeze(1).expand(-1, population, *p.shape[1:]).clone() for p in runs.params]
    xs, ys = runs.batches(gen, truncation)

    def sgd(p, x, y):
        for k in range(x.shape[0]):
            g, _ = grad_and_value(task.loss)(p, x[k], y[k])
            p = [a - 0.01 * b for a, b in zip(p, g)]
        return p

    f = vmap(vmap(sgd, in_dims=(0, None, None)))
    f(params, xs, ys)
    t0 = time.perf_counter()
    f(params, xs, ys)
    return len(cfgs) * population * truncation / (time.perf_counter() - t0)


def run(quick: bool = False, tasks_per_group: int | None = None, population: int | None = None,
        truncation: int | None = None, horizon: int | None = None, threads: int = 1,
        out: str | os.PathLike = "benchmarks/results/meta_train_throughput.json") -> dict:
    d = MetaTrainConfig()
    n = tasks_per_group or d.tasks_per_group
    population, truncation = population or d.population, truncation or d.truncation
    horizon = horizon or (50 if quick else d.horizon)
    torch.set_num_threads(threads)
    rows = []
    for tc in (IN_DISTRIBUTION[:1] if quick else IN_DISTRIBUTION):
        gen = torch.Generator().manual_seed(0)
        cfgs = _group_cfgs(tc, n, gen)
        row = {"task": tc.name, "params": sum(p.numel() for p in Task(tc).module.parameters()),
               "adam_steps_per_s": _adam_steps_per_s(Task(tc), horizon, gen)}
        for name in ESTIMATOR_NAMES:
            sps = _estimator_steps_per_s(name, cfgs, population, truncation, horizon, gen)
            row[f"{name}_inner_steps_per_s"], row[f"{name}_ratio_to_adam"] = sps, sps / row["adam_steps_per_s"]
        sps = _sgd_ceiling_steps_per_s(cfgs, population, truncation, gen)
        row["sgd_ceiling_steps_per_s"], row["sgd_ceiling_ratio_to_adam"] = sps, sps / row["adam_steps_per_s"]
        rows.append(row)
        print(f"{tc.name}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if k.endswith("ratio_to_adam")),
              flush=True)
    result = {"benchmark": "meta_train_throughput", "date": _dt.date.today().isoformat(), "torch": torch.__version__,
              "tasks_per_group": n, "population": population, "truncation": truncation, "horizon": horizon,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(),
                          "load_average_1min": os.getloadavg()[0]}, "rows": rows}
    lines = [f"tasks per group {n}, population {population}, truncation {truncation}, one inner run of {horizon} "
             f"steps, {torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.2f}", "",
             "| task | params | Adam steps/s | ES inner steps/s (x Adam) | PES inner steps/s (x Adam) | "
             "TBPTT inner steps/s (x Adam) | vmapped SGD ceiling (x Adam) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [(r[f"{k}_inner_steps_per_s"], r[f"{k}_ratio_to_adam"]) for k in ESTIMATOR_NAMES]
        cells.append((r["sgd_ceiling_steps_per_s"], r["sgd_ceiling_ratio_to_adam"]))
        lines.append(f"| {r['task']} | {r['params']:,} | {r['adam_steps_per_s']:.0f} | "
                     + " | ".join(f"{s:.0f} ({x:.2f}x)" for s, x in cells) + " |")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    lines += ["", f"wrote {out}"]
    first = rows[0]
    lines.append("summary: " + " ".join(f"{k}={first[f'{k}_ratio_to_adam']:.2f}x" for k in ESTIMATOR_NAMES))
    print("\n".join(lines))
    return result


@dataclass(frozen=True)
class ThroughputConfig:
    """Keys of ``lopt-throughput``; ``0`` for ``tasks_per_group``/``population``/``truncation``/``horizon``
    takes meta-training's default (``horizon``: 50 with ``quick``)."""

    quick: bool = False
    tasks_per_group: int = 0
    population: int = 0
    truncation: int = 0
    horizon: int = 0
    threads: int = 1
    out: str = "benchmarks/results/meta_train_throughput.json"

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        for key in ("tasks_per_group", "population", "truncation", "horizon", "threads"):
            if getattr(self, key) < 0:
                _cfg.bad_value(key, getattr(self, key), "an integer >= 0")


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point: ``[--config FILE] [key=value ...]``; returns the result document."""
    c = _cfg.parse_command(ThroughputConfig, argv, (__doc__ or "").split("\n")[0])
    return run(c.quick, c.tasks_per_group or None, c.population or None, c.truncation or None, c.horizon or None,
               c.threads or torch.get_num_threads(), c.out)


if __name__ == "__main__":
    main()
