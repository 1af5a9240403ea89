"""The suite's report: markdown tables (final loss + test accuracy, time per step), the per-group summary
sentences, and ``curves.png`` from the ``curves.json.gz`` side file."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lopt_graphs.evaluation import curve_stats, geomean, smooth
from lopt_graphs.io import atomic_write, atomic_write_text
from lopt_graphs.plotting import new_figure, png_bytes

from .tasks import GROUPS

__all__ = ["DEFINITIONS", "fmt", "fmt_speedup", "markdown", "plot", "read_curves", "report"]

DEFINITIONS = {
    "final_loss": "cross-entropy on the full training split after the last step",
    "test_acc": "accuracy on the test split after the last step (fraction)",
    "schedule-free": "trained in opt.train() mode; final loss and accuracy in opt.eval() mode (the averaged x)",
    "lr tuning": "tuned optimizers run their lr grid on tune_seed only and pick the lowest final_loss; that lr is "
                 "then scored on the seeds (never tuned on a scored run)",
    "std": "sample standard deviation over the scored seeds (ddof=1; 0 for one seed)",
    "ngo_speedup_vs_tuned_adam": "per seed, adam_steps / ngo_steps, the first steps at which tuned Adam's and "
                                 "NGO's smoothed curves reach the worse of their two final smoothed losses (= "
                                 "tuned Adam's final loss when NGO reaches it: reached=true)",
    "curves.json.gz": "per-step minibatch losses, one list per scored seed, 5 significant digits (null: diverged)",
    "ms_per_step": "wall clock of a training step (batch gather, forward, backward, step), mean over seeds",
    "cpu_ms_per_step": "CPU time (process_time) of a training step: robust to other processes sharing the core",
    "null": "not finite (diverged run) or not applicable",
}


def fmt(mean: float | None, std: float | None, digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± std`` of a table cell; ``diverged`` for a missing (non-finite) mean."""
    if mean is None or not math.isfinite(mean):
        return "diverged"
    spec = f".{digits}f"
    if 0 < abs(mean * scale) < 10 ** (1 - digits):  # 0.00042 would print as 0.000: keep 2 significant digits
        spec = ".1e"
    s = f"{mean * scale:{spec}}"
    if std is not None and math.isfinite(std):
        s += f" ± {std * scale:{spec}}"
    return s


def fmt_speedup(sp: dict[str, Any] | None) -> str:
    """``mean× ± std (reached/seeds)`` of NGO's speed-up over tuned Adam."""
    if not sp or sp.get("mean") is None or not math.isfinite(sp["mean"]):
        return "n/a"
    reached = sp["reached"]
    return f"{sp['mean']:.2f}× ± {sp['std'] or 0.0:.2f} ({sum(reached)}/{len(reached)})"


def _final(t: dict[str, Any], name: str) -> float:
    v = t["optimizers"][name]["final_loss_mean"] if name in t["optimizers"] else None
    return math.inf if v is None else v


def _group_summary(group: str, ts: list[dict[str, Any]], names: list[str], labels: dict[str, str]) -> str:
    """One sentence: who has the lowest final loss how often, and how NGO compares with Adam."""
    wins = Counter(min(names, key=lambda n: _final(t, n)) for t in ts)
    acc = Counter(max(names, key=lambda n: t["optimizers"][n]["test_acc_mean"] or 0.0) for t in ts)
    lead = ", ".join(f"{labels[n]} on {k}" for n, k in wins.most_common())
    lead_acc = ", ".join(f"{labels[n]} on {k}" for n, k in acc.most_common())
    vs_tuned = sum(_final(t, "ngo") <= _final(t, "adam_tuned") for t in ts)
    vs_default = f", ≤ Adam lr=1e-3's on {sum(_final(t, 'ngo') <= _final(t, 'adam') for t in ts)}/{len(ts)}" \
        if "adam" in names else ""
    gm = geomean([t["ngo_speedup_vs_tuned_adam"]["mean"] for t in ts])
    reached = [r for t in ts for r in t["ngo_speedup_vs_tuned_adam"]["reached"]]
    return (f"- **{group}** ({len(ts)} task{'s' if len(ts) != 1 else ''}): lowest final training loss: {lead}; highest test accuracy: "
            f"{lead_acc}. NGO's final loss ≤ tuned Adam's on {vs_tuned}/{len(ts)}{vs_default}; geometric-mean "
            f"speed-up vs tuned Adam {gm:.2f}× (NGO reached tuned Adam's final loss on {sum(reached)}/"
            f"{len(reached)} runs).")


def _parts_note(doc: dict[str, Any]) -> str:
    parts = doc.get("merged_from") or []
    return f" (summed over {len(parts)} runs merged with --merge: {', '.join(parts)})" if parts else ""


def _horizon_note(doc: dict[str, Any]) -> str:
    """How NGO was run: told each run's length (``total_steps``; results from before the key: told) or not."""
    return ", told total_steps" if doc["config"].get("ngo_total_steps", True) else ", **not told total_steps**"


def markdown(doc: dict[str, Any]) -> str:
    """The markdown report of a result document."""
    cfg = doc["config"]
    names = doc.get("optimizers_run", cfg["optimizers"])
    ran = [t for t in doc["tasks"] if not t["skipped"]]
    labels = {n: ran[0]["optimizers"][n]["label"] for n in names} if ran else {n: n for n in names}
    ck = doc["ckpt"]
    trained = (ck.get("meta") or {}).get("trained")
    lines = [f"# NeuralGraphOptimizer vs Adam and tuning-free peers — suite `{cfg['suite']}`", "",
             f"{doc['date']} · torch {doc['torch']} · {doc['machine']['cpus']} CPUs, "
             f"{doc['machine']['torch_threads']} torch thread(s) · {doc['seconds']:.0f} s wall, "
             f"{doc['cpu_seconds']:.0f} s CPU{_parts_note(doc)} · NGO checkpoint `{ck['path']}` (sha256 {str(ck['sha256'])[:12]}, "
             f"meta.trained={trained}{_horizon_note(doc)}) · scored seeds {cfg['seeds']} · **tuned lrs chosen on seed "
             f"{cfg['tune_seed']}, which is not scored** (grid {', '.join(f'{x:g}' for x in cfg['adam_lrs'])}; "
             "lowest final full-training loss) · peers: "
             + ", ".join(f"{k} {v}" for k, v in doc.get("peer_versions", {}).items()), ""]
    if trained is False:
        lines += ["**Note: this checkpoint is not meta-trained (meta.trained=False); NGO behaves like Adam "
                  "lr=1e-3.**", ""]
    for why in doc.get("skipped_optimizers", {}).values():
        lines += [f"- {why}"]
    head = "| task | steps | " + " | ".join(labels[n] for n in names)
    rule = "|---|---:|" + "---:|" * len(names)
    lines += ["## Final full-training loss · test accuracy (mean ± std over scored seeds; tuned lr in brackets)",
              "", head + " | NGO speed-up vs tuned Adam |", rule + "---:|"]
    for t in ran:
        cells = []
        for n in names:
            o = t["optimizers"][n]
            c = f"{fmt(o['final_loss_mean'], o['final_loss_std'])} · {fmt(o['test_acc_mean'], None, 1, 100.0)}%"
            if "lr_grid" in o:
                c += f" [{o['lr']:g}{'*' if o.get('lr_at_grid_edge') else ''}]"
            cells.append(c)
        lines.append(f"| {t['name']} | {t['steps']} | " + " | ".join(cells)
                     + f" | {fmt_speedup(t['ngo_speedup_vs_tuned_adam'])} |")
    lines += ["", f"`*`: tuned lr at the edge of its grid. Speed-up (mean ± std over seeds): tuned Adam's steps "
              f"to its final smoothed loss (window {cfg['smooth']}) / NGO's steps to the same loss; on seeds where "
              "NGO never gets there the level is NGO's final loss instead (< 1: how much sooner tuned Adam got "
              "there); (k/n): seeds on which NGO reached tuned Adam's final loss. Schedule-free AdamW is scored in "
              "its eval() mode (the averaged weights).", "", "## Summary by group", ""]
    for group in GROUPS:
        ts = [t for t in ran if t["group"] == group]
        if ts:
            lines.append(_group_summary(group, ts, names, labels))
    for t in doc["tasks"]:
        if t["skipped"]:
            lines.append(f"- {t['name']} ({t['group']}): {t['skip_reason']}")
    lines += ["", "## ms per training step: wall clock (CPU time) (forward + backward + step; mean over seeds)",
              "", head + " |", rule]
    for t in ran:
        o = t["optimizers"]
        lines.append(f"| {t['name']} | {t['steps']} | "
                     + " | ".join(f"{o[n]['ms_per_step']:.2f} ({o[n]['cpu_ms_per_step']:.2f})" for n in names) + " |")
    return "\n".join(lines) + "\n"


def read_curves(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``curves.json.gz`` side file (``None`` entries back to ``inf``)."""
    doc = json.loads(gzip.decompress(Path(path).read_bytes()))
    for t in doc.values():
        t["optimizers"] = {n: [[math.inf if v is None else v for v in s] for s in per]
                           for n, per in t["optimizers"].items()}
    return doc


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def write_curves(path: Path, curves: dict[str, Any]) -> None:
    """``curves.json.gz``: ``{task: {"steps", "optimizers": {name: per-seed loss curves (5 digits)}}}``."""
    doc = {t: {"steps": c["steps"], "optimizers": {n: [[_sig(v, 5) if v == v and abs(v) != float("inf") else None
                                                        for v in seed] for seed in per]
                                                   for n, per in c["optimizers"].items()}}
           for t, c in curves.items()}
    data = gzip.compress(json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(), mtime=0)
    atomic_write(path, lambda fh: fh.write(data))


_POINTS = 400  # points per plotted curve at most
_COLORS = {"ngo": "C3", "adam": "C7", "adam_tuned": "C0", "adam_cosine_tuned": "C9", "sf_adamw": "C4",
           "sf_adamw_tuned": "C6", "prodigy": "C2", "dadapt_adam": "C1", "adamw_tuned": "C5", "sgd_tuned": "C8",
           "muon_tuned": "k", "muon_cosine_tuned": "0.45"}


def plot(doc: dict[str, Any], curves: dict[str, Any], path: Path) -> Path | None:
    """``curves.png``: one panel per task, smoothed minibatch loss, mean over seeds with a min-max band."""
    ran = [t for t in doc["tasks"] if not t["skipped"] and t["name"] in curves]
    if not ran:
        return None
    window = doc["config"]["smooth"]
    ncols = min(4, len(ran))
    nrows = math.ceil(len(ran) / ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    for ax, t in zip(axes.flat, ran):
        for name, per in sorted(curves[t["name"]]["optimizers"].items(), key=lambda kv: kv[0] == "ngo"):
            sm = [smooth(c, window) for c in per]
            every = max(1, len(sm[0]) // _POINTS)  # long curves: every k-th smoothed point keeps the PNG small
            mean = [m if math.isfinite(m) else math.nan for m in curve_stats(sm)[0]][::every]
            lo = [min(col) for col in zip(*sm)][::every]
            hi = [max(col) if math.isfinite(max(col)) else math.nan for col in zip(*sm)][::every]
            x = range(1, len(sm[0]) + 1, every)
            o = t["optimizers"][name]
            label = o["label"] + (f" ({o['lr']:g})" if "lr_grid" in o else "")
            ax.plot(x, mean, color=_COLORS.get(name), lw=1.8 if name == "ngo" else 0.9, label=label)
            ax.fill_between(x, lo, hi, color=_COLORS.get(name), alpha=0.12, lw=0)
        ax.set_yscale("log")
        ax.set_title(f"{t['name']} [{t['group']}]", fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=5)
    for ax in list(axes.flat)[len(ran):]:
        ax.axis("off")
    fig.suptitle(f"smoothed training loss (window {window}), mean over seeds {doc['config']['seeds']} (band: "
                 "min-max over seeds)", fontsize=9)
    buf = io.BytesIO(png_bytes(fig, dpi=80))
    try:  # a 256-colour palette makes the PNG ~3x smaller at no visible cost
        from PIL import Image

        buf.seek(0)
        small = io.BytesIO()
        Image.open(buf).convert("RGB").quantize(256).save(small, format="PNG", optimize=True)
        buf = small
    except ImportError:
        pass
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    return path


def report(results_json: str | os.PathLike[str]) -> dict[str, Any]:
    """Re-render ``results.md`` (printed too) and ``curves.png`` next to an existing ``results.json``."""
    path = Path(results_json)
    doc = json.loads(path.read_text(encoding="utf-8"))
    md = markdown(doc)
    print(md)
    atomic_write_text(path.parent / "results.md", md)
    side = path.parent / doc.get("curves_file", "curves.json.gz")
    if doc["config"].get("plot", True) and doc.get("curves_file", "curves.json.gz") and side.is_file():
        plot(doc, read_curves(side), path.parent / "curves.png")
    return doc


#: Config keys that may differ between the parts of a merged suite run (none changes a result).
_PART_KEYS = ("only", "out", "plot")


def merge(results_jsons: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> dict[str, Any]:
    """One result document in ``out`` from suite runs split with ``only`` (for example one process per core):
    tasks in the suite's group order, times summed, the curves side files joined when every part has one; then
    ``results.md`` and ``curves.png`` as :func:`report` writes them.

    Raises:
        ValueError: fewer than two parts, parts whose configs differ beyond ``only``/``out``/``plot`` (the differing keys
            are named), other NGO checkpoints (sha256), or a task in two parts.
    """
    paths = [Path(p) for p in results_jsons]
    if len(paths) < 2:
        raise ValueError(f"merge needs at least two results.json files, got {[str(p) for p in paths]}")
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    base = docs[0]
    for p, d in zip(paths[1:], docs[1:]):
        keys = sorted(k for k in set(base["config"]) | set(d["config"])
                      if k not in _PART_KEYS and base["config"].get(k) != d["config"].get(k))
        if keys:
            raise ValueError(f"{p} ran another config than {paths[0]}: {keys} differ (only {list(_PART_KEYS)} may)")
        if d["ckpt"].get("sha256") != base["ckpt"].get("sha256"):
            raise ValueError(f"{p} scored another NGO checkpoint than {paths[0]} ({d['ckpt'].get('path')} against "
                             f"{base['ckpt'].get('path')})")
    names = Counter(t["name"] for d in docs for t in d["tasks"])
    twice = sorted(n for n, c in names.items() if c > 1)
    if twice:
        raise ValueError(f"tasks {twice} are in more than one part; merge parts of disjoint `only` filters")
    tasks = sorted((t for d in docs for t in d["tasks"]), key=lambda t: GROUPS.index(t["group"]))  # stable
    only = [] if any(not d["config"].get("only") for d in docs) else [o for d in docs for o in d["config"]["only"]]
    merged = {**base, "seconds": sum(d["seconds"] for d in docs), "cpu_seconds": sum(d["cpu_seconds"] for d in docs),
              "command": " ; ".join(d.get("command", "") for d in docs), "tasks": tasks,
              "config": {**base["config"], "only": only, "out": str(out)}, "merged_from": [str(p) for p in paths]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sides = [p.parent / d.get("curves_file", "curves.json.gz") for p, d in zip(paths, docs)]
    if all(side.is_file() for side in sides):
        curves: dict[str, Any] = {}
        for side in sides:
            curves.update(read_curves(side))
        write_curves(out / "curves.json.gz", curves)
    else:
        merged["curves_file"] = ""
    atomic_write_text(out / "results.json", json.dumps(merged, indent=1, allow_nan=False))
    return report(out / "results.json")
