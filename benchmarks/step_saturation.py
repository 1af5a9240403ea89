"""How often a learned update's step-size correction sits at its bound (``mag_clip``).

Command::

    python benchmarks/step_saturation.py [--ckpt NAME_OR_PATH ...] [--steps 300]
                                         [--out benchmarks/results/step_saturation.json]

The update's step is ``adam_dir * exp(clip(u, -mag_clip, mag_clip))`` with ``u`` the head's (scaled) log step
multiplier. Where ``u`` is beyond the bound the step is the bound itself, whatever the features say, and no
meta-gradient reaches the head through it. For each checkpoint and each evaluation task of
``meta_train.evaluate`` this repeats its seed-0 ``NeuralGraphOptimizer`` run
(``lopt_graphs.evaluation.train_run``, the evaluation's own training loop) and reports, over
the first, middle and last tenth of the steps: the fraction of entries (of all parameters together) with
``u >= mag_clip`` (step capped at ``e**mag_clip`` times Adam's) and with ``u <= -mag_clip`` (step floored),
and the median of ``u`` over the entries (unclipped). Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lopt_graphs.optim.functional as F  # noqa: E402
from lopt_graphs import NeuralGraphOptimizer  # noqa: E402
from lopt_graphs.io import atomic_write_text  # noqa: E402
from lopt_graphs.evaluation import train_run  # noqa: E402
from meta_train.evaluate import load_any  # noqa: E402
from meta_train.tasks import HELD_OUT, IN_DISTRIBUTION, Task  # noqa: E402


@contextlib.contextmanager
def record_log_steps(out: list):
    """Append ``(u, mag_clip)`` (``u`` flattened, float32) for every head evaluation inside the block (wraps
    the module-level ``head`` that ``apply_update`` calls)."""
    orig = F.head

    def head(xs, ctx, hw, step_bias):
        o_dir, o_mag = orig(xs, ctx, hw, step_bias)
        u = (hw.mag_scale * o_mag).detach().float()
        u = u.expand(xs[0].shape) if u.dim() == 0 else u
        out.append((u.reshape(-1), hw.mag_clip))
        return o_dir, o_mag

    F.head = head
    try:
        yield
    finally:
        F.head = orig


def measure(ckpt: str, steps: int) -> list[dict]:
    learned = load_any(ckpt)
    rows = []
    for group, cfgs in (("in_distribution", IN_DISTRIBUTION), ("held_out", HELD_OUT)):
        for tc in cfgs:
            calls: list = []
            per_step: list[tuple[float, float, float]] = []

            def step_done(*_) -> None:  # optimizer step post-hook: one row per step from its head calls
                u, clip = torch.cat([c[0] for c in calls]), calls[0][1]
                per_step.append(((u >= clip).float().mean().item(), (u <= -clip).float().mean().item(),
                                 u.median().item()))
                calls.clear()

            def make_opt(model: nn.Module) -> NeuralGraphOptimizer:
                opt = NeuralGraphOptimizer.for_module(model, copy.deepcopy(learned))
                opt.register_step_post_hook(step_done)
                return opt

            with record_log_steps(calls):  # the evaluation's own training run (seed 0)
                train_run(Task(tc), make_opt, steps, seed=0)
            tenth = max(1, steps // 10)
            windows = {"first": per_step[:tenth], "middle": per_step[steps // 2: steps // 2 + tenth],
                       "last": per_step[-tenth:]}
            row = {"ckpt": ckpt, "group": group, "task": tc.name, "mag_clip": learned.cfg.mag_clip}
            for w, vals in windows.items():
                row[f"at_upper_{w}"] = statistics.mean(v[0] for v in vals)
                row[f"at_lower_{w}"] = statistics.mean(v[1] for v in vals)
                row[f"median_u_{w}"] = statistics.mean(v[2] for v in vals)
            rows.append(row)
            print(f"  {ckpt} {tc.name}: at +bound {row['at_upper_middle']:.2f}, at -bound "
                  f"{row['at_lower_middle']:.2f}", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    ws = ("first", "middle", "last")
    lines = ["Fractions of entries and median u over the first / middle / last tenth of the steps.", "",
             "| checkpoint | group | task | mag_clip | u >= mag_clip | u <= -mag_clip | median u |",
             "|---|---|---|---:|---|---|---|"]
    for r in rows:
        up, lo, med = (" / ".join(f"{r[f'{k}_{w}']:{f}}" for w in ws)
                       for k, f in (("at_upper", ".2f"), ("at_lower", ".2f"), ("median_u", ".1f")))
        lines.append(f"| {r['ckpt']} | {r['group']} | {r['task']} | {r['mag_clip']:g} | {up} | {lo} | {med} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", nargs="+", default=["default"], help="checkpoints (names, paths, or a run's ckpt.pt)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/step_saturation.json")
    a = ap.parse_args(argv)
    if a.steps < 10:
        raise ValueError(f"Invalid --steps: {a.steps} (expected >= 10)")
    rows = [r for c in a.ckpt for r in measure(c, a.steps)]
    print(markdown(rows))
    res = {"steps": a.steps, "seed": 0, "rows": rows}
    atomic_write_text(a.out, json.dumps(res, indent=1))
    atomic_write_text(Path(a.out).with_suffix(".md"), markdown(rows) + "\n")
    return res


if __name__ == "__main__":
    main()
