"""Meta-training throughput: inner steps per second summed over the population, against a plain Adam
training loop of the same tasks in the same process.

Command::

    python benchmarks/meta_train_throughput.py [--quick] [--population 8] [--truncation 10]
                                               [--out benchmarks/results/meta_train_throughput.json]

For each task (a few in-distribution configurations) it times one truncation of ``--truncation`` inner
steps for the whole population with each estimator (ES and PES: ``torch.func.vmap`` over the perturbed
meta-parameters; TBPTT: one differentiated unroll), and ``--truncation`` steps of ``torch.optim.Adam`` on
the same module and batches. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lopt_graphs.optim import LearnedUpdate  # noqa: E402
from meta_train.estimators import make_estimator  # noqa: E402
from meta_train.tasks import IN_DISTRIBUTION, Task  # noqa: E402
from meta_train.unroll import InnerState, Stepper, ThetaSpace  # noqa: E402


def _adam_steps_per_s(task: Task, xs, ys, reps: int) -> float:
    model = task.module
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for k in range(xs.shape[0]):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[k]), ys[k]).backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return xs.shape[0] / statistics.median(times)


def run(quick: bool = False, population: int = 8, truncation: int = 10,
        out: str | os.PathLike = "benchmarks/results/meta_train_throughput.json") -> dict:
    torch.manual_seed(0)
    learned = LearnedUpdate()
    space, stepper = ThetaSpace(learned), Stepper(learned)
    theta = space.flatten(learned)
    reps = 1 if quick else 3
    tasks = IN_DISTRIBUTION[:1] if quick else IN_DISTRIBUTION
    rows = []
    for tc in tasks:
        task = Task(tc)
        gen = torch.Generator().manual_seed(0)
        xs, ys = task.batches(gen, truncation)
        row = {"task": tc.name, "params": sum(p.numel() for p in task.module.parameters()),
               "adam_steps_per_s": _adam_steps_per_s(task, xs, ys, reps)}
        for name in ("es", "pes", "tbptt"):
            est = make_estimator(name, stepper, space, 0.01, 3.0)
            times = []
            for r in range(reps + 1):
                slot = InnerState(task=task, params=task.init_params(gen), states=[{} for _ in task.module.parameters()],
                                  step=0, length=10**6)
                eps = torch.randn(population // 2, space.dim, generator=gen)
                t0 = time.perf_counter()
                if name == "tbptt":
                    est.grad(theta, slot, xs, ys)
                else:
                    diffs, _, _ = est.pair_diffs(theta, slot, xs, ys, eps, list(range(population // 2)))
                    est.gradient(diffs, eps, slot)
                if r:  # the first repetition warms up
                    times.append(time.perf_counter() - t0)
            members = 1 if name == "tbptt" else population + (1 if name == "es" else 0)
            sps = members * truncation / statistics.median(times)
            row[f"{name}_inner_steps_per_s"] = sps
            row[f"{name}_ratio_to_adam"] = sps / row["adam_steps_per_s"]
        rows.append(row)
    result = {"benchmark": "meta_train_throughput", "date": _dt.date.today().isoformat(), "torch": torch.__version__,
              "population": population, "truncation": truncation,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads()}, "rows": rows}
    lines = ["| task | params | Adam steps/s | ES inner steps/s (x Adam) | PES inner steps/s (x Adam) | "
             "TBPTT inner steps/s (x Adam) |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['params']:,} | {r['adam_steps_per_s']:.0f} | "
                     + " | ".join(f"{r[f'{n}_inner_steps_per_s']:.0f} ({r[f'{n}_ratio_to_adam']:.2f}x)"
                                  for n in ("es", "pes", "tbptt")) + " |")
    print("\n".join(lines))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--truncation", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/meta_train_throughput.json")
    a = ap.parse_args(argv)
    return run(a.quick, a.population, a.truncation, a.out)


if __name__ == "__main__":
    main()
