"""Compare learned-update checkpoints across vs-Adam suite runs: the issue-13 scorecard.

Reads ``results.json`` files written by ``benchmarks/vs_adam.py`` (one run, or a run split over processes with
``only=``: files of the same checkpoint are merged by task), and prints per task NGO's mean final training
loss for each checkpoint, then per checkpoint how many tasks it is ahead of (strictly lower mean final loss
than) Adam at lr 1e-3, tuned constant Adam, and every tuning-free peer at once (Prodigy, D-Adaptation Adam,
schedule-free AdamW at its default lr), and whether it trains every long task (final loss below half the
uniform-prediction loss). Writes the table as markdown and JSON.

Commands::

    python benchmarks/suite_compare.py results=benchmarks/results/vs_adam/results.json,runs/x/results.json
    lopt-suite-compare results=A/results.json,B1/results.json,B2/results.json out=benchmarks/results/compare
    python benchmarks/suite_compare.py --help      # the keys and their defaults
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lopt_graphs import config as _cfg
from lopt_graphs.io import atomic_write_text

#: The optimizers a user would run without tuning (the issue's "tuning-free" peers).
TUNING_FREE: tuple[str, ...] = ("prodigy", "dadapt_adam", "sf_adamw")


@dataclass(frozen=True)
class CompareConfig(_cfg.CheckedConfig):
    """Keys of ``benchmarks/suite_compare.py``.

    Attributes:
        results: ``results.json`` paths of vs-Adam suite runs (comma-separated); runs of the same checkpoint
            (same file hash) are merged by task, a task measured twice is an error.
        out: output directory of ``compare.md`` and ``compare.json``; empty: print only.
        threads: torch intra-op threads (1, as every command; reading JSON does not use them).
    """

    results: tuple[str, ...] = ()
    out: str = ""
    threads: int = 1


def run_label(data: dict[str, Any]) -> str:
    """The column label of a suite ``results.json`` document: its checkpoint as it was given (``ckpt.arg``: a
    shipped name, ``default`` when empty, a file's stem for a path), with `` (no total_steps)`` appended for a
    run with ``ngo_total_steps=false`` (another way of running the same file: its own column)."""
    arg = str(data["ckpt"].get("arg") or "default")
    label = Path(arg).stem if arg.endswith(".pt") else arg
    return label + ("" if data.get("config", {}).get("ngo_total_steps", True) else " (no total_steps)")


def load_runs(paths: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """``{checkpoint label: {task name: task record}}`` from suite ``results.json`` files, skipped tasks left
    out, labelled by :func:`run_label`; files of one label are merged.

    Raises:
        FileNotFoundError: a path does not exist. ValueError: a file is not a suite result, or two files of
        one checkpoint both measured a task.
    """
    runs: dict[str, dict[str, Any]] = {}
    hashes: dict[str, str] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"No suite results at {path} (expected a results.json of benchmarks/vs_adam.py)")
        data = json.loads(path.read_text())
        if "tasks" not in data or "ckpt" not in data:
            raise ValueError(f"{path} is not a vs-Adam suite results.json (no 'tasks' or 'ckpt')")
        label, sha = run_label(data), data["ckpt"].get("sha256", "")
        if hashes.setdefault(label, sha) != sha:
            raise ValueError(f"{path}: checkpoint {label!r} has another file hash than in an earlier results file")
        tasks = runs.setdefault(label, {})
        for t in data["tasks"]:
            if t.get("skipped"):
                continue
            if t["name"] in tasks:
                raise ValueError(f"{path}: task {t['name']!r} of checkpoint {label!r} is already in an earlier file")
            tasks[t["name"]] = t
    return runs


def _loss(task: dict[str, Any], opt: str) -> float:
    o = task["optimizers"].get(opt)
    return float(o["final_loss_mean"]) if o is not None else math.nan


def scorecard(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per checkpoint: counts of tasks ahead of each baseline, over the tasks every checkpoint ran.

    Returns:
        ``{"tasks": [names], "ngo": {label: {task: loss}}, "summary": {label: {...counts...}}}``.
    """
    names = [n for n in next(iter(runs.values())) if all(n in r for r in runs.values())]
    summary, losses = {}, {}
    for label, tasks in runs.items():
        rows = [tasks[n] for n in names]
        ngo = [_loss(t, "ngo") for t in rows]
        losses[label] = dict(zip(names, ngo))
        ahead = lambda opt: sum(a < _loss(t, opt) for a, t in zip(ngo, rows))  # noqa: E731
        free = sum(all(a < _loss(t, p) for p in TUNING_FREE if p in t["optimizers"]) for a, t in zip(ngo, rows))
        long_rows = [(a, t) for a, t in zip(ngo, rows) if t["group"] == "long"]
        trains = sum(a < 0.5 * math.log(10) for a, _ in long_rows)
        summary[label] = {"tasks": len(rows), "ahead_of_adam_1e-3": ahead("adam"),
                          "ahead_of_tuned_adam": ahead("adam_tuned"), "ahead_of_every_tuning_free": free,
                          **{f"ahead_of_{p}": ahead(p) for p in TUNING_FREE},
                          "long_tasks": len(long_rows), "long_tasks_trained": trains}
    return {"tasks": names, "ngo": losses, "summary": summary}


def render(card: dict[str, Any]) -> str:
    """The scorecard as markdown: NGO's final loss per task and checkpoint, then the counts."""
    labels = list(card["ngo"])
    lines = ["| task | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for n in card["tasks"]:
        lines.append(f"| {n} | " + " | ".join(f"{card['ngo'][lb][n]:.3g}" for lb in labels) + " |")
    keys = list(next(iter(card["summary"].values())))
    lines += ["", "| count | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(str(card["summary"][lb][k]) for lb in labels) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: ``[--config FILE] results=A,B,... [out=DIR]``; returns the scorecard."""
    c = _cfg.parse_command(CompareConfig, argv, (__doc__ or "").split("\n")[0])
    _cfg.set_threads(c.threads)
    if not c.results:
        _cfg.bad_value("results", c.results, "at least one results.json path (results=A/results.json,...)")
    card = scorecard(load_runs(c.results))
    text = render(card)
    print(text)
    if c.out:
        out = Path(c.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "compare.md", text)
        atomic_write_text(out / "compare.json", json.dumps({"results": list(c.results), **card}, indent=1))
        print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}")
    return card


if __name__ == "__main__":
    main()
