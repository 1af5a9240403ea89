"""How NeuralGraphOptimizer's ``lr`` multiplier moves it on the issue-13 targets: a sweep, and NGO with the
multiplier tuned per task the way Adam's lr is.

``NeuralGraphOptimizer(params, ckpt, lr=m)`` multiplies every learned step by ``m`` (default 1). On the
evaluation tasks of ``lopt-evaluate`` (``IN_DISTRIBUTION`` and ``HELD_OUT``, 300 steps, seeds 0-2, told
``total_steps``) this runs NGO at each multiplier of ``multipliers`` and tuned constant-lr Adam (lr chosen on
the tuning seed 1000), and scores each multiplier on the two targets (median fraction of steps to tuned Adam's
final smoothed loss on the in-distribution runs, held-out runs at or below tuned Adam's final loss). "NGO,
tuned multiplier" chooses ``m`` per task on the tuning seed, as Adam's lr is chosen: the gap between it and
``m = 1`` is what a per-task step size would be worth, i.e. the job of the learned per-tensor readout.

Commands::

    lopt-lr-sweep ckpt=v2_cosine_pes_100_bounded out=benchmarks/results/lr_sweep_v2_bounded   # ~15 min, 1 core
    lopt-lr-sweep ckpt=default multipliers=0.5,1,2 seeds=0 only=digits     # a quick look
    lopt-lr-sweep --help                                                     # the keys and their defaults

Writes ``lr_sweep.md``, ``lr_sweep.json`` and ``lr_sweep.png`` (final loss against the multiplier per task,
tuned Adam's as a line).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs import config as _cfg
from lopt_graphs.evaluation import smooth, steps_to_reach, train_run, tuned_baseline
from lopt_graphs.io import atomic_write_text, finite_or_none
from lopt_graphs.plotting import new_figure, save_figure
from meta_train.evaluate import ScoredRunKeys


@dataclass(frozen=True)
class LrSweepConfig(ScoredRunKeys):
    """Keys of ``benchmarks/lr_sweep.py``: ``steps``, ``seeds`` (scored), ``threads`` as ``lopt-evaluate``'s
    (:class:`meta_train.evaluate.ScoredRunKeys`), and

    Attributes:
        ckpt: learned-update checkpoint (shipped name, path, or a meta-training run's ``ckpt.pt``).
        multipliers: NGO ``lr`` values to run (each > 0).
        total_steps: tell NGO the run length (``total_steps=steps``), as ``lopt-evaluate`` does.
        horizons: told horizons as fractions of ``steps`` (NGO gets ``total_steps=round(h * steps)`` and still runs
            ``steps``; needs ``total_steps=True``): ``h < 1`` makes its learned schedule decay early, an oracle for
            how much of the gap is the schedule's shape rather than its level. Every multiplier runs at every
            horizon, and the per-task choice is over all pairs.
        only: run only the tasks whose name contains this string (``""``: all eight).
        out: output directory; ``""``: print only.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    ckpt: str = "default"
    multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    total_steps: bool = True
    horizons: tuple[float, ...] = (1.0,)
    only: str = ""
    out: str = ""

    def validate(self) -> None:
        super().validate()
        if not self.multipliers or any(not m > 0 for m in self.multipliers):
            _cfg.bad_value("multipliers", self.multipliers, "one or more values > 0")
        if not self.horizons or any(not (h > 0 and round(h * self.steps) >= 1) for h in self.horizons):
            _cfg.bad_value("horizons", self.horizons, f"one or more fractions h > 0 with round(h * steps) >= 1 "
                                                      f"(steps={self.steps})")
        if self.horizons != (1.0,) and not self.total_steps:
            _cfg.bad_value("horizons", self.horizons, "the default (1.0) with total_steps=false: an untold run has "
                                                      "no horizon to scale")

    def settings(self) -> list[tuple[str, float, float]]:
        """``(key, multiplier, horizon)`` for every run setting (:func:`setting_key`)."""
        return [(setting_key(m, h), m, h) for h in self.horizons for m in self.multipliers]


def setting_key(m: float, h: float) -> str:
    """The key of multiplier ``m`` at told horizon ``h`` in a row's ``multipliers``: the multiplier alone at
    horizon 1."""
    return str(m) if h == 1.0 else f"{m}@T{h:g}"


def _fraction(curve: list[float], target: float, steps: int, window: int) -> float:
    s = steps_to_reach(curve, target, window)
    return s / steps if s is not None else math.inf


def sweep_task(learned: Any, cfg: Any, group: str, c: LrSweepConfig) -> dict[str, Any]:
    """One task: tuned Adam (lr chosen on the tuning seed), NGO at every multiplier on the tuning seed and the
    scored seeds, and the multiplier chosen on the tuning seed."""
    from meta_train.evaluate import ADAM_LRS, SMOOTH, tune_seed_for
    from meta_train.tasks import Task

    task, seeds = Task(cfg), list(c.seeds)
    tune_seed = tune_seed_for(seeds)
    adam = tuned_baseline(lambda lr, s: train_run(task, lambda m: torch.optim.Adam(m.parameters(), lr=lr),
                                                  c.steps, s), ADAM_LRS, tune_seed, seeds)
    targets = [smooth(r.curve, SMOOTH)[-1] for r in adam.runs]
    tune_target = smooth(adam.tune_run.curve, SMOOTH)[-1]

    def ngo(m: float, h: float, seed: int):
        horizon = round(h * c.steps) if c.total_steps else None
        return train_run(task, lambda mod: NeuralGraphOptimizer.for_module(mod, copy.deepcopy(learned), lr=m,
                                                                           total_steps=horizon), c.steps, seed)

    per_m = {}
    for key, m, h in c.settings():
        tune = ngo(m, h, tune_seed)
        runs = [ngo(m, h, s) for s in seeds]
        per_m[key] = {
            "multiplier": m, "horizon": h, "tune_seed_final_loss": tune.final_loss,
            "tune_seed_fraction": _fraction(tune.curve, tune_target, c.steps, SMOOTH),
            "final_loss_per_seed": [r.final_loss for r in runs],
            "fraction_per_seed": [_fraction(r.curve, t, c.steps, SMOOTH) for r, t in zip(runs, targets)],
        }
    crit = {k: (v["tune_seed_final_loss"] if math.isfinite(v["tune_seed_final_loss"]) else math.inf)
            for k, v in per_m.items()}
    best = min(per_m, key=lambda k: crit[k])  # first of equal values, in the order of settings
    fastest = min(per_m, key=lambda k: (per_m[k]["tune_seed_fraction"], crit[k]))
    at_one = [k for k, v in per_m.items() if v["horizon"] == 1.0]
    best_at_one = min(at_one, key=lambda k: crit[k]) if at_one else None
    return {"task": cfg.name, "group": group, "adam_lr": adam.lr, "adam_tune_seed": tune_seed,
            "adam_final_loss_per_seed": [r.final_loss for r in adam.runs], "multipliers": per_m,
            "tuned_multiplier": per_m[best]["multiplier"], "tuned_horizon": per_m[best]["horizon"],
            "tuned_key": best, "tuned_key_at_horizon_1": best_at_one, "fastest_key": fastest}


def summarize(rows: list[dict[str, Any]], pick: Any) -> dict[str, Any]:
    """The two targets for the multiplier ``pick(row)`` chooses per task (a key of ``row["multipliers"]``)."""
    fr, held, held_total = [], 0, 0
    for r in rows:
        m = r["multipliers"][pick(r)]
        if r["group"] == "in_distribution":
            fr += m["fraction_per_seed"]
        else:
            held_total += len(m["final_loss_per_seed"])
            held += sum(math.isfinite(a) and a <= b for a, b in zip(m["final_loss_per_seed"],
                                                                     r["adam_final_loss_per_seed"]))
    return {"median_fraction_in_dist": statistics.median(fr) if fr else math.nan,
            "in_dist_runs_reached": sum(math.isfinite(f) for f in fr), "in_dist_runs": len(fr),
            "held_out_runs_at_or_below_tuned_adam": held, "held_out_runs": held_total}


def hindsight(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The two targets with the best setting chosen per run on the scored run itself: per (task, seed) the fewest
    steps and the lowest final loss over every multiplier and horizon. No tuning procedure can do better with
    these knobs; it bounds what a per-task (or per-run) step level and horizon could be worth."""
    def low(xs: list[float]) -> float:
        xs = [x for x in xs if math.isfinite(x)]
        return min(xs) if xs else math.inf

    best_rows = []
    for r in rows:
        ms = list(r["multipliers"].values())
        n = len(ms[0]["fraction_per_seed"])
        best = {"fraction_per_seed": [low([m["fraction_per_seed"][i] for m in ms]) for i in range(n)],
                "final_loss_per_seed": [low([m["final_loss_per_seed"][i] for m in ms]) for i in range(n)]}
        best_rows.append({**r, "multipliers": {"best": best}})
    return summarize(best_rows, lambda r: "best")


def _f(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "not reached"


def _label(key: str) -> str:
    m, _, h = key.partition("@T")
    return f"x{m}" + (f", told {h} x steps" if h else "")


def render(doc: dict[str, Any]) -> str:
    lines = [f"NGO `{doc['ckpt']}` against tuned constant-lr Adam, {doc['steps']} steps, seeds {doc['seeds']}"
             f"{', told total_steps' if doc['total_steps'] else ', not told total_steps'}"
             + (f", told horizons {doc['horizons']} x steps" if doc["horizons"] != [1.0] else "") + ".", "",
             "| NGO lr multiplier | median fraction of steps to tuned Adam's final loss (in-dist, target <= 0.5) | "
             "in-dist runs that reach it | held-out runs at or below tuned Adam |", "|---|---:|---:|---:|"]
    for label, s in doc["summary"].items():
        lines.append(f"| {label} | {_f(s['median_fraction_in_dist'])} | {s['in_dist_runs_reached']}/"
                     f"{s['in_dist_runs']} | {s['held_out_runs_at_or_below_tuned_adam']}/{s['held_out_runs']} |")
    keys = list(doc["rows"][0]["multipliers"])
    lines += ["", "Final training loss, mean over scored seeds (the setting tuned per task on final loss in bold):", "",
              "| task | tuned Adam (lr) | " + " | ".join(_label(k) for k in keys) + " |",
              "|---|---:|" + "---:|" * len(keys)]
    for r in doc["rows"]:
        cells = []
        for k in keys:
            v = f"{statistics.fmean(r['multipliers'][k]['final_loss_per_seed']):.3g}"
            cells.append(f"**{v}**" if k == r["tuned_key"] else v)
        lines.append(f"| {r['task']} | {statistics.fmean(r['adam_final_loss_per_seed']):.3g} ({r['adam_lr']:g}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Final loss against the multiplier per task, tuned Adam's as a line."""
    from matplotlib.ticker import NullLocator

    rows = doc["rows"]
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = new_figure(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    ms = doc["multipliers"]
    for ax, r in zip(axes.flat, rows):
        for i, h in enumerate(doc["horizons"]):
            ys = [statistics.fmean(r["multipliers"][setting_key(m, h)]["final_loss_per_seed"]) for m in ms]
            ax.plot(ms, [y if math.isfinite(y) else float("nan") for y in ys], "o-", color=f"C{3 + i}",
                    label="NGO" if h == 1.0 else f"NGO, told {h:g} x steps")
        ax.axhline(statistics.fmean(r["adam_final_loss_per_seed"]), color="C0", ls="--", label="tuned Adam")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ms, [f"{m:g}" for m in ms])
        ax.set_title(r["task"], fontsize=7)
        ax.set_xlabel("NGO lr multiplier", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"final training loss (mean of seeds), {doc['ckpt']}", fontsize=9)
    return save_figure(fig, path, dpi=110)


def run(c: LrSweepConfig) -> dict[str, Any]:
    """The sweep over the evaluation tasks (those whose name contains ``c.only``)."""
    from meta_train.evaluate import load_any
    from meta_train.tasks import HELD_OUT, IN_DISTRIBUTION

    learned = load_any(c.ckpt)
    tasks = [(g, t) for g, ts in (("in_distribution", IN_DISTRIBUTION), ("held_out", HELD_OUT)) for t in ts
             if c.only in t.name]
    if not tasks:
        _cfg.bad_value("only", c.only, "a substring of at least one evaluation task's name")
    rows = []
    for i, (g, t) in enumerate(tasks):
        print(f"[{i + 1}/{len(tasks)}] {t.name}", flush=True)
        rows.append(sweep_task(learned, t, g, c))
    summary = {_label(k): summarize(rows, lambda r, k=k: k) for k, _, _ in c.settings()}
    if len(c.horizons) > 1 and 1.0 in c.horizons:
        summary["multiplier tuned per task, told steps (on the tuning seed)"] = summarize(
            rows, lambda r: r["tuned_key_at_horizon_1"])
    summary["tuned per task (on the tuning seed)"] = summarize(rows, lambda r: r["tuned_key"])
    summary["tuned per task for speed (fewest steps on the tuning seed)"] = summarize(rows, lambda r: r["fastest_key"])
    summary["best per run in hindsight (a bound, not a procedure)"] = hindsight(rows)
    return {"ckpt": c.ckpt, "steps": c.steps, "seeds": list(c.seeds), "total_steps": c.total_steps,
            "multipliers": list(c.multipliers), "horizons": list(c.horizons),
            "threads": torch.get_num_threads(), "rows": rows,
            "summary": summary}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: ``[--config FILE] [ckpt=NAME] [multipliers=...] [out=DIR]``; returns the document."""
    c = _cfg.parse_command(LrSweepConfig, argv, (__doc__ or "").split("\n")[0])
    before = torch.get_num_threads()
    _cfg.set_threads(c.threads)
    try:
        doc = run(c)
    finally:
        torch.set_num_threads(before)
    text = render(doc)
    print(text)
    if c.out:
        out = Path(c.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "lr_sweep.md", text)
        atomic_write_text(out / "lr_sweep.json", json.dumps(finite_or_none(doc), indent=1, allow_nan=False))
        png = plot(doc, out / "lr_sweep.png")
        print(f"wrote {out / 'lr_sweep.md'}, {out / 'lr_sweep.json'}, {png}")
    return doc


if __name__ == "__main__":
    main()
