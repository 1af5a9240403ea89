"""How often a learned update's step-size correction sits at its bound (``mag_clip``, and v2's ``lr_bound``).

Commands::

    lopt-step-saturation                                       # the default checkpoint, 300 steps
    lopt-step-saturation ckpts=default,meta_tbptt_1100 steps=300 out=benchmarks/results/step_saturation.json
    python -m benchmarks.step_saturation --help                # the keys and their defaults

The update's step is ``adam_dir * exp(clip(u, -mag_clip, mag_clip))`` with ``u`` the head's (scaled) log step
multiplier. Where ``u`` is beyond the bound the step is the bound itself, whatever the features say, and no
meta-gradient reaches the head through it. For each checkpoint and each evaluation task of
``meta_train.evaluate`` this repeats its seed-0 ``NeuralGraphOptimizer`` run
(``lopt_graphs.evaluation.train_run``, the evaluation's own training loop) with the optimizer's public
diagnostics on (``record_diagnostics``: per updated parameter ``u`` before the clip, ``mag_clip``, v2's
per-tensor log step ``sigma`` and its bound ``lr_bound``) and reports, over the first, middle and last tenth of
the steps: the fraction of entries (of all parameters together) with ``u >= mag_clip`` (step capped at
``e**mag_clip`` times Adam's) and with ``u <= -mag_clip`` (step floored), the median of ``u`` over the entries
(unclipped) and, for v2 checkpoints, the fraction of tensors whose ``|sigma| >= 0.95 lr_bound`` (the
per-tensor step near its tanh bound; ``None`` for v1). Prints a markdown table and writes JSON + markdown.
"""

from __future__ import annotations

import copy
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value
from lopt_graphs.evaluation import train_run
from lopt_graphs.io import write_json_and_markdown
from meta_train.evaluate import check_checkpoints, load_any
from meta_train.tasks import HELD_OUT, IN_DISTRIBUTION, Task

#: a tensor's v2 log step counts as saturated at this fraction of ``lr_bound`` (tanh(x) = 0.95 at x = 1.83)
SIGMA_SATURATED = 0.95


@dataclass(frozen=True)
class StepSaturationConfig:
    """Keys of ``lopt-step-saturation``.

    Attributes:
        ckpts: checkpoints (shipped names, paths, or a meta-training run's ``ckpt.pt``).
        steps: inner steps per task run (>= 10: the windows are tenths).
        out: JSON output (the markdown goes next to it, ``.md``).
        threads: torch intra-op threads (``0`` leaves torch's default).
    """

    ckpts: tuple[str, ...] = ("default",)
    steps: int = 300
    out: str = "benchmarks/results/step_saturation.json"
    threads: int = 1

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        if not self.ckpts:
            bad_value("ckpts", self.ckpts, "at least one checkpoint")
        _cfg.check_minimums(self, steps=10, threads=0)


def step_row(diagnostics: list[dict]) -> tuple[float, float, float, float | None]:
    """One step's ``(fraction u >= mag_clip, fraction u <= -mag_clip, median u, fraction of tensors with
    |sigma| >= SIGMA_SATURATED lr_bound or None)`` from ``NeuralGraphOptimizer.last_diagnostics``."""
    u, clip = torch.cat([d["u"] for d in diagnostics]), diagnostics[0]["mag_clip"]
    sig = [abs(d["sigma"]) >= SIGMA_SATURATED * d["lr_bound"] for d in diagnostics if d["sigma"] is not None]
    return ((u >= clip).float().mean().item(), (u <= -clip).float().mean().item(), u.median().item(),
            statistics.mean(sig) if sig else None)


def measure(ckpt: str, steps: int) -> list[dict]:
    """Rows (one per evaluation task) of saturation fractions for checkpoint ``ckpt``."""
    learned = load_any(ckpt)
    rows = []
    for group, cfgs in (("in_distribution", IN_DISTRIBUTION), ("held_out", HELD_OUT)):
        for tc in cfgs:
            per_step: list[tuple[float, float, float, float | None]] = []

            def make_opt(model: nn.Module) -> NeuralGraphOptimizer:
                opt = NeuralGraphOptimizer.for_module(model, copy.deepcopy(learned))
                opt.record_diagnostics = True
                opt.register_step_post_hook(lambda o, *_: per_step.append(step_row(o.last_diagnostics)))
                return opt

            train_run(Task(tc), make_opt, steps, seed=0)  # the evaluation's own training run (seed 0)
            tenth = max(1, steps // 10)
            windows = {"first": per_step[:tenth], "middle": per_step[steps // 2: steps // 2 + tenth],
                       "last": per_step[-tenth:]}
            row = {"ckpt": ckpt, "group": group, "task": tc.name, "mag_clip": learned.cfg.mag_clip}
            for w, vals in windows.items():
                row[f"at_upper_{w}"] = statistics.mean(v[0] for v in vals)
                row[f"at_lower_{w}"] = statistics.mean(v[1] for v in vals)
                row[f"median_u_{w}"] = statistics.mean(v[2] for v in vals)
                sig = [v[3] for v in vals if v[3] is not None]
                row[f"sigma_at_bound_{w}"] = statistics.mean(sig) if sig else None
            rows.append(row)
            print(f"  {ckpt} {tc.name}: at +bound {row['at_upper_middle']:.2f}, at -bound "
                  f"{row['at_lower_middle']:.2f}", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table of :func:`measure`'s rows (first / middle / last tenth in each cell)."""
    ws = ("first", "middle", "last")
    lines = ["Fractions of entries and median u over the first / middle / last tenth of the steps; for v2, the "
             f"fraction of tensors with |sigma| >= {SIGMA_SATURATED} lr_bound.", "",
             "| checkpoint | group | task | mag_clip | u >= mag_clip | u <= -mag_clip | median u | sigma at bound |",
             "|---|---|---|---:|---|---|---|---|"]

    def cell(r: dict, key: str, fmt: str) -> str:
        return " / ".join("-" if r[f"{key}_{w}"] is None else f"{r[f'{key}_{w}']:{fmt}}" for w in ws)

    for r in rows:
        up, lo, med, sig = (cell(r, k, f) for k, f in (("at_upper", ".2f"), ("at_lower", ".2f"), ("median_u", ".1f"),
                                                       ("sigma_at_bound", ".2f")))
        lines.append(f"| {r['ckpt']} | {r['group']} | {r['task']} | {r['mag_clip']:g} | {up} | {lo} | {med} | {sig} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point: ``[--config FILE] [key=value ...]``; returns the result document."""
    cfg = _cfg.parse_command(StepSaturationConfig, argv, (__doc__ or "").split("\n")[0])
    _cfg.set_threads(cfg.threads)
    check_checkpoints(cfg.ckpts)
    rows = [r for c in cfg.ckpts for r in measure(c, cfg.steps)]
    print(markdown(rows))
    res = {"steps": cfg.steps, "seed": 0, "threads": torch.get_num_threads(), "sigma_saturated": SIGMA_SATURATED,
           "rows": rows}
    write_json_and_markdown(cfg.out, res, markdown(rows) + "\n")
    return res


if __name__ == "__main__":
    main()
