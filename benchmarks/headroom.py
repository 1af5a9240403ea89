"""The issue-13 evaluation targets scored for every optimizer of a vs-Adam suite run: how far a hand-made
schedule with a tuned lr gets on them, beside the learned checkpoints.

``lopt-evaluate`` scores a learned update on two targets (300 steps, seeds 0-2, tuned Adam's lr chosen on seed
1000): on ``IN_DISTRIBUTION`` the median over (task, seed) runs of the fraction of the run's steps the
optimizer needs for its smoothed minibatch loss (window 10) to reach tuned constant-lr Adam's final smoothed
loss (target: at most 0.5), and on ``HELD_OUT`` the runs whose final full-training loss is at or below tuned
Adam's (target: 3 of every 4). The vs-Adam suite runs exactly those tasks, seeds and tuning, so its curves
give the same two numbers for Adam warmup+cosine with a tuned lr, tuned schedule-free AdamW and the
tuning-free optimizers: what the targets ask of an optimizer that is not tuned, measured against what
per-task tuning reaches.

Commands::

    lopt-headroom results=benchmarks/results/vs_adam/results.json out=benchmarks/results/headroom
    lopt-headroom results=benchmarks/results/vs_adam/results.json,benchmarks/results/vs_adam_X/a/results.json
    python benchmarks/headroom.py --help      # the keys and their defaults

Each peer is scored from the first results file whose ``curves.json.gz`` is present and which ran it (the
suite's peers do not depend on the checkpoint); each file adds its own NGO column, from its curves when present, otherwise from its
``ngo_speedup_vs_tuned_adam`` record (the same definition: the steps at which NGO's smoothed loss reaches tuned
Adam's final smoothed loss). Writes ``headroom.md``, ``headroom.json`` and ``headroom.png`` (per-run fractions
per optimizer, the target line at 0.5).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from benchmarks.suite.peers import PEERS as _SUITE_PEERS
from benchmarks.suite.report import read_curves
from benchmarks.suite_compare import load_runs, run_label
from lopt_graphs import config as _cfg
from lopt_graphs.evaluation import smooth, steps_to_reach
from lopt_graphs.io import atomic_write_text, finite_or_none
from lopt_graphs.plotting import new_figure, save_figure

#: Smoothing window of "steps to reach" (``meta_train.evaluate.SMOOTH``).
WINDOW = 10
#: The issue's targets: median fraction at most this; held-out runs at or below tuned Adam, at least this share.
TARGET_FRACTION, TARGET_HELD_OUT = 0.5, 0.75
#: Suite optimizers scored from curves, in table order (those a run lacks are left out).
PEERS: tuple[str, ...] = ("adam", "adam_tuned", "adam_cosine_tuned", "sf_adamw_tuned", "adamw_tuned", "sgd_tuned",
                          "muon_tuned", "muon_cosine_tuned", "muon_conv_tuned", "muon_conv_cosine_tuned", "sf_adamw",
                          "prodigy", "dadapt_adam")
_TUNED = {name for name in PEERS if _SUITE_PEERS[name].tuned}


@dataclass(frozen=True)
class HeadroomConfig(_cfg.CheckedConfig):
    """Keys of ``benchmarks/headroom.py``.

    Attributes:
        results: ``results.json`` paths of vs-Adam suite runs (comma-separated); one NGO column per checkpoint.
        out: output directory of ``headroom.md/.json/.png``; empty: print only.
        threads: torch intra-op threads (reading JSON does not use them).
    """

    results: tuple[str, ...] = ()
    out: str = ""
    threads: int = 1


def _config_key(d: dict[str, Any]) -> Any:
    """A suite task's ``task_config`` as a meta-training ``TaskConfig`` (its defaults fill missing keys)."""
    from meta_train.tasks import TaskConfig

    known = {f.name for f in fields(TaskConfig)}
    return TaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def task_sets() -> tuple[set[Any], set[Any]]:
    """``IN_DISTRIBUTION`` and ``HELD_OUT`` (suite tasks are matched to the targets by config)."""
    from meta_train.tasks import HELD_OUT, IN_DISTRIBUTION

    return set(IN_DISTRIBUTION), set(HELD_OUT)


def _fraction(steps_to: int | None, steps: int) -> float:
    return steps_to / steps if steps_to is not None else math.inf


def runs_of(task: dict[str, Any], curves: dict[str, Any] | None, opt: str) -> list[dict[str, Any]]:
    """Per scored seed of ``task``: ``opt``'s fraction of steps to tuned Adam's final smoothed loss and its final
    full-training loss against tuned Adam's. From ``curves`` (the task's entry of ``curves.json.gz``) when
    given, else (NGO only) from the suite's ``ngo_speedup_vs_tuned_adam`` record."""
    o, ref = task["optimizers"][opt], task["optimizers"]["adam_tuned"]
    finals, ref_finals, steps = o["final_loss_per_seed"], ref["final_loss_per_seed"], int(task["steps"])
    if curves is not None:
        per, ref_per = curves["optimizers"][opt], curves["optimizers"]["adam_tuned"]
        fracs = [_fraction(steps_to_reach(c, smooth(r, WINDOW)[-1], WINDOW), steps) for c, r in zip(per, ref_per)]
    elif opt == "ngo":
        rec = task["ngo_speedup_vs_tuned_adam"]
        fracs = [_fraction(s if ok else None, steps) for s, ok in zip(rec["ngo_steps"], rec["reached"])]
    else:
        raise ValueError(f"Task {task['name']!r}: no curves to score {opt!r} (only NGO has a speed-up record)")
    seeds = ref.get("scored_seeds") or list(range(len(finals)))  # tuned Adam records the scored seeds
    return [{"seed": s, "fraction": f, "final_loss": a, "adam_tuned_final_loss": b,
             "at_or_below_tuned_adam": math.isfinite(a) and a <= b}
            for s, f, a, b in zip(seeds, fracs, finals, ref_finals)]


def _summary(ind: list[dict[str, Any]], held: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    fr = [r["fraction"] for r in ind]
    held_runs = [r for rs in held.values() for r in rs]
    per_task = sum(statistics.fmean(r["final_loss"] for r in rs) <= statistics.fmean(r["adam_tuned_final_loss"]
                                                                                     for r in rs)
                   for rs in held.values())
    return {"in_dist_runs": len(fr), "median_fraction_in_dist": statistics.median(fr) if fr else math.nan,
            "in_dist_runs_reached": sum(math.isfinite(f) for f in fr),
            "held_out_runs": len(held_runs),
            "held_out_runs_at_or_below_tuned_adam": sum(r["at_or_below_tuned_adam"] for r in held_runs),
            "held_out_tasks": len(held), "held_out_tasks_at_or_below_tuned_adam_by_mean": per_task}


#: Label of the column that takes, per task, the tuned optimizer that did best on it (chosen in hindsight).
BEST_TUNED = "best tuned optimizer per task (hindsight)"


def best_per_task(cols: dict[str, Any]) -> dict[str, Any]:
    """Per task, the runs of the column that did best on it on the scored seeds: the lowest median fraction on an
    in-distribution task, the lowest mean final loss on a held-out one (first of equals, in column order). A bound
    on what choosing among these optimizers per task could reach, not a procedure (it looks at the scored runs).
    ``chosen`` names the pick per task."""
    def mean_final(rs: list[dict[str, Any]]) -> float:
        xs = [r["final_loss"] for r in rs]
        return statistics.fmean(xs) if all(math.isfinite(x) for x in xs) else math.inf

    first = next(iter(cols.values()))
    ind, held, chosen = {}, {}, {}
    for task in first["in_dist"]:
        k = min(cols, key=lambda c: statistics.median(r["fraction"] for r in cols[c]["in_dist"][task]))
        ind[task], chosen[task] = cols[k]["in_dist"][task], k
    for task in first["held_out"]:
        k = min(cols, key=lambda c: mean_final(cols[c]["held_out"][task]))
        held[task], chosen[task] = cols[k]["held_out"][task], k
    return {"kind": "tuned", "in_dist": ind, "held_out": held, "chosen": chosen,
            "summary": _summary([r for rs in ind.values() for r in rs], held)}


def headroom(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Score every optimizer of the suite runs at ``paths`` on the issue-13 targets.

    Returns:
        ``{"columns": {label: {"kind", "summary", "in_dist": {task: [runs]}, "held_out": {task: [runs]}}},
        "peers_from": path, "peer_sources": {peer: path}}``; each peer is scored from the first file with curves
        that ran it; a label is an optimizer name for peers, ``ngo: <checkpoint>`` for NGO.

    Raises:
        ValueError: no file has ``curves.json.gz`` next to it, or a file lacks an in-distribution or held-out
            task (run the suite's ``in_dist`` and ``ood`` groups).
    """
    ind_keys, held_keys = task_sets()
    runs = load_runs(paths)  # {label: {task: record}}, checks the files
    curves_by_label: dict[str, dict[str, Any]] = {}
    with_curves: list[tuple[str, str]] = []
    for path in map(Path, paths):
        side = path.parent / "curves.json.gz"
        if not side.is_file():
            continue
        label = run_label(json.loads(path.read_text()))
        curves_by_label.setdefault(label, {}).update(read_curves(side))
        with_curves.append((label, str(path)))
    if not with_curves:
        raise ValueError("None of the results files has a curves.json.gz beside it: the peers' steps to tuned "
                         "Adam's final loss need the curves (run benchmarks/vs_adam.py, which writes them)")

    def column(tasks: dict[str, Any], curves: dict[str, Any] | None, opt: str) -> dict[str, Any]:
        ind, held = {}, {}
        for name, t in tasks.items():
            key = _config_key(t["task_config"])
            if int(t["steps"]) != 300 or opt not in t["optimizers"]:
                continue
            c = curves.get(name) if curves is not None else None
            if key in ind_keys:
                ind[name] = runs_of(t, c, opt)
            elif key in held_keys:
                held[name] = runs_of(t, c, opt)
        if len(ind) != len(ind_keys) or len(held) != len(held_keys):
            raise ValueError(f"{opt}: the suite runs hold {len(ind)} of {len(ind_keys)} in-distribution and "
                             f"{len(held)} of {len(held_keys)} held-out tasks at 300 steps (expected all: run the "
                             "suite's in_dist and ood groups, e.g. only=id_,ood_)")
        return {"kind": "tuned" if opt in _TUNED else "untuned", "in_dist": ind, "held_out": held,
                "summary": _summary([r for rs in ind.values() for r in rs], held)}

    cols: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in PEERS:  # each peer from the first file with curves that ran it
        for plabel, ppath in with_curves:
            if any(opt in t["optimizers"] for t in runs[plabel].values()):
                cols[opt], sources[opt] = column(runs[plabel], curves_by_label[plabel], opt), ppath
                break
    tuned = {k: c for k, c in cols.items() if c["kind"] == "tuned"}
    if len(tuned) > 1:
        cols[BEST_TUNED] = best_per_task(tuned)
    for label, tasks in runs.items():
        cols[f"ngo: {label}"] = column(tasks, curves_by_label.get(label), "ngo")
    return {"peers_from": with_curves[0][1], "peer_sources": sources, "window": WINDOW,
            "target_fraction": TARGET_FRACTION, "target_held_out_share": TARGET_HELD_OUT, "columns": cols}


def _f(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "not reached"


def render(doc: dict[str, Any]) -> str:
    """Markdown: the two targets per optimizer, then the per-run fractions on the in-distribution tasks."""
    cols = doc["columns"]
    lines = ["| optimizer | lr | median fraction of steps to tuned Adam's final loss (in-dist, target <= 0.5) | "
             "in-dist runs that reach it | held-out runs at or below tuned Adam | held-out tasks, by mean |",
             "|---|---|---:|---:|---:|---:|"]
    for label, c in cols.items():
        s = c["summary"]
        lines.append(f"| {label} | {c['kind']} | {_f(s['median_fraction_in_dist'])} | {s['in_dist_runs_reached']}/"
                     f"{s['in_dist_runs']} | {s['held_out_runs_at_or_below_tuned_adam']}/{s['held_out_runs']} | "
                     f"{s['held_out_tasks_at_or_below_tuned_adam_by_mean']}/{s['held_out_tasks']} |")
    tasks = list(next(iter(cols.values()))["in_dist"])
    lines += ["", "Fraction of steps per seed, in-distribution tasks:", "",
              "| optimizer | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for label, c in cols.items():
        lines.append(f"| {label} | " + " | ".join(
            " / ".join(_f(r["fraction"]).replace("not reached", "-") for r in c["in_dist"][t]) for t in tasks) + " |")
    others = {o: p for o, p in doc.get("peer_sources", {}).items() if p != doc["peers_from"]}
    also = "".join(f" ({o} from `{p}`)" for o, p in others.items())
    best = cols.get(BEST_TUNED)
    if best is not None:
        lines += ["", f"`{BEST_TUNED}`: per task the tuned optimizer with the lowest median fraction (in-distribution) "
                  "or mean final loss (held-out) on the scored seeds, a bound rather than a procedure: "
                  + ", ".join(f"{t} {o}" for t, o in best["chosen"].items()) + "."]
    lines += ["", f"Peers from `{doc['peers_from']}`{also}; each run is scored against tuned constant-lr Adam of the same "
              "suite run and seed (lr chosen on the suite's tuning seed), an NGO column against its own run's; "
              "`-`: not reached in the run."]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Per optimizer (one row each, in table order), each in-distribution run's fraction (not reached drawn at 1.1)
    and the median; target line."""
    cols = doc["columns"]
    fig, ax = new_figure(figsize=(8.5, 1.2 + 0.32 * len(cols)))
    for i, c in enumerate(cols.values()):
        fr = [min(r["fraction"], 1.1) for rs in c["in_dist"].values() for r in rs]
        ax.scatter(fr, [i + (k % 6 - 2.5) * 0.05 for k in range(len(fr))], s=14, alpha=0.6,
                   color="C3" if c["kind"] == "tuned" else "C0")
        med = min(c["summary"]["median_fraction_in_dist"], 1.1)
        ax.plot([med, med], [i - 0.3, i + 0.3], color="k", lw=2)
    ax.axvline(TARGET_FRACTION, color="C2", ls="--", lw=1, label="target median (0.5)")
    ax.axvline(1.1, color="0.7", ls=":", lw=1, label="not reached")
    ax.set_yticks(range(len(cols)), list(cols), fontsize=7)
    ax.set_ylim(len(cols) - 0.5, -0.5)  # the table's order, top to bottom
    ax.set_xlabel("fraction of tuned Adam's steps to reach its final loss")
    ax.set_title("In-distribution runs (red: lr tuned per task; blue: untuned); bar: median", fontsize=9)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.0, 0.0))
    return save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: ``[--config FILE] results=A,B,... [out=DIR]``; returns the document."""
    c = _cfg.parse_command(HeadroomConfig, argv, (__doc__ or "").split("\n")[0])
    _cfg.set_threads(c.threads)
    if not c.results:
        _cfg.bad_value("results", c.results, "at least one results.json path (results=A/results.json,...)")
    doc = headroom(c.results)
    text = render(doc)
    print(text)
    if c.out:
        out = Path(c.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "headroom.md", text)
        atomic_write_text(out / "headroom.json", json.dumps(finite_or_none({"results": list(c.results), **doc}), indent=1,
                                                             allow_nan=False))
        png = plot(doc, out / "headroom.png")
        print(f"wrote {out / 'headroom.md'}, {out / 'headroom.json'}, {png}")
    return doc


if __name__ == "__main__":
    main()
