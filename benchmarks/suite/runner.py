"""Running the suite: every optimizer on every task and seed, aggregated into the result document."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lopt_graphs import config as _cfg
from lopt_graphs.data import DatasetSplits, load_torchvision
from lopt_graphs.evaluation import RunResult, curve_stats, mean_std, smooth, speedup, train_run, tuned_baseline
from lopt_graphs.io import atomic_write_text, finite_or_none
from lopt_graphs.optim.checkpoint import DEFAULT_ALIAS, load_learned_update, shipped_path
from meta_train.tasks.families import Task

from . import peers
from .config import VsAdamConfig
from .report import DEFINITIONS, fmt, fmt_speedup, markdown, plot, write_curves
from .tasks import SplitsTask, TaskSpec, expand_long, suite_tasks

__all__ = ["run", "run_task"]


def _aggregate(name: str, runs: list[RunResult], window: int) -> dict[str, Any]:
    """Summary numbers of one optimizer's runs (one per scored seed); no per-step curves."""
    finals = [r.final_loss for r in runs]
    accs = [r.test_acc for r in runs]
    fl, fs, ta = mean_std(finals), mean_std([smooth(r.curve, window)[-1] for r in runs]), mean_std(accs)
    ms = mean_std([r.ms_per_step for r in runs])
    peer = peers.PEERS[name]
    return {
        "label": peer.label, "kind": peer.kind, "package": peer.package,
        "final_loss_mean": fl[0], "final_loss_std": fl[1], "final_loss_per_seed": finals,
        "final_smoothed_loss_mean": fs[0], "final_smoothed_loss_std": fs[1],
        "test_acc_mean": ta[0], "test_acc_std": ta[1], "test_acc_per_seed": accs,
        "ms_per_step": ms[0], "ms_per_step_std": ms[1],
        "ms_per_opt_step": statistics.fmean(r.ms_per_opt_step for r in runs),
        "cpu_ms_per_step": statistics.fmean(r.cpu_ms_per_step for r in runs),
        "diverged_seeds": sum(r.diverged for r in runs),
    }


def run_task(task: Task, steps: int, cfg: VsAdamConfig, learned: Any, names: list[str]
             ) -> tuple[dict[str, Any], dict[str, list[list[float]]]]:
    """Run the optimizers ``names`` on ``task`` for ``steps`` steps.

    Tuned optimizers choose their lr on ``cfg.tune_seed`` and are scored on ``cfg.seeds``; runs of equal
    (kind, lr, seed) are run once and reused (Adam lr=1e-3 is tuned Adam's grid point 1e-3).

    Returns:
        ``(summary, curves)``: the task's result fields, and ``{name: per-seed minibatch loss curves}``.
    """
    seeds = list(cfg.seeds)
    cache: dict[tuple[str, float, int], RunResult] = {}

    def train(kind: str, lr: float, seed: int) -> RunResult:
        if (kind, lr, seed) not in cache:
            cache[(kind, lr, seed)] = train_run(task, peers.build(kind, lr, steps, cfg, learned), steps, seed)
        return cache[(kind, lr, seed)]

    results: dict[str, Any] = {}
    curves: dict[str, list[list[float]]] = {}
    for name in names:
        peer = peers.PEERS[name]
        extra: dict[str, Any] = {}
        if peer.tuned:
            grid = getattr(cfg, peer.lr_grid)
            tuned = tuned_baseline(lambda lr_, s, k=peer.kind: train(k, lr_, s), grid, cfg.tune_seed, seeds)
            lr, runs = tuned.lr, tuned.runs
            extra = {"lr_grid": list(grid), "tune_seed": tuned.tune_seed, "scored_seeds": tuned.scored_seeds,
                     "lr_at_grid_edge": tuned.at_grid_edge, "grid": tuned.grid}
        else:
            lr = cfg.ngo_lr if peer.kind == "ngo" else float(peer.lr)
            runs = [train(peer.kind, lr, s) for s in seeds]
        results[name] = {**_aggregate(name, runs, cfg.smooth), "lr": lr, "hyper": peers.hyper(peer.kind, cfg),
                         **extra}
        curves[name] = [r.curve for r in runs]

    adam_sm = [smooth(c, cfg.smooth) for c in curves["adam_tuned"]]
    ngo_sm = [smooth(c, cfg.smooth) for c in curves["ngo"]]
    per = [speedup(a, n) for a, n in zip(adam_sm, ngo_sm)]
    sp = mean_std([p["speedup"] for p in per])
    mean_curve = speedup(curve_stats(adam_sm)[0], curve_stats(ngo_sm)[0])
    summary = {
        "steps": steps, "optimizers": results,
        "ngo_speedup_vs_tuned_adam": {
            "mean": sp[0], "std": sp[1], "per_seed": [p["speedup"] for p in per],
            "reached": [p["reached"] for p in per], "adam_steps": [p["baseline_steps"] for p in per],
            "ngo_steps": [p["candidate_steps"] for p in per], "target_loss": [p["target"] for p in per],
            "from_mean_curves": {"speedup": mean_curve["speedup"], "reached": mean_curve["reached"],
                                 "adam_steps": mean_curve["baseline_steps"],
                                 "ngo_steps": mean_curve["candidate_steps"]},
        },
    }
    return summary, curves


def ckpt_info(ckpt: str) -> dict[str, Any]:
    """Resolved path, sha256 and ``meta`` of the NGO checkpoint (as ``load_learned_update`` resolves it)."""
    path = shipped_path(ckpt or DEFAULT_ALIAS) or Path(ckpt)
    info: dict[str, Any] = {"arg": ckpt, "path": str(path), "sha256": None, "meta": None}
    if path.is_file():
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            info["meta"] = finite_or_none(dict(obj.get("meta", {})))
        except Exception:  # the loader reports unreadable checkpoints properly
            pass
    return info


def _machine() -> dict[str, Any]:
    try:
        load_avg: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_avg = None
    return {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average_at_start": load_avg}


def _load_task(spec: TaskSpec, cfg: VsAdamConfig, vision: dict[str, Any]) -> Task | tuple[str, str]:
    """The task of ``spec``, or ``(skip reason, detail)`` for a paper task whose data is missing."""
    if spec.group != "paper":
        return Task(spec.config)
    ds = spec.config.dataset
    if ds not in vision:
        root = os.path.expanduser(cfg.data_root)
        if not root:
            vision[ds] = (f"skipped: {ds} not found under '' (data_root is empty; pass "
                          "data_root=/path/to/torchvision/root)", "data_root is empty")
        else:
            try:
                vision[ds] = load_torchvision(ds, root, train_limit=cfg.paper_train_limit)
            except (FileNotFoundError, ImportError) as exc:
                vision[ds] = (f"skipped: {ds} not found under {root!r} (pass data_root=...)", str(exc))
    found = vision[ds]
    return SplitsTask(spec.config, found) if isinstance(found, DatasetSplits) else found


def run(cfg: VsAdamConfig, command: str = "") -> dict[str, Any]:
    """Run the benchmark of ``cfg``; prints progress and the tables, writes the outputs, returns the document."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start, c_start = time.perf_counter(), time.process_time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _cfg.save_resolved_config(cfg, out / "config.yaml", header="Resolved config of benchmarks/vs_adam.py")
    learned = load_learned_update(cfg.ckpt or None)
    ckpt = ckpt_info(cfg.ckpt)
    skipped_opts = {n: why for n in cfg.optimizers if (why := peers.missing(n))}
    for why in skipped_opts.values():
        print(why, flush=True)
    names = [n for n in cfg.optimizers if n not in skipped_opts]
    specs = expand_long(suite_tasks(cfg.suite), cfg.steps, cfg.long_steps)
    if cfg.only:
        specs = [s for s in specs if any(o in s.name for o in cfg.only)]
        if not specs:
            raise ValueError(f"only={list(cfg.only)} matches no task of suite {cfg.suite!r}")
    vision: dict[str, Any] = {}
    tasks: list[dict[str, Any]] = []
    all_curves: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        entry: dict[str, Any] = {"name": spec.name, "group": spec.group, "description": spec.description,
                                 "task_config": spec.config.to_dict(), "skipped": False, "skip_reason": None,
                                 "skip_detail": None, "steps": spec.steps, "seconds": 0.0, "cpu_seconds": 0.0,
                                 "optimizers": {}, "ngo_speedup_vs_tuned_adam": None}
        t0, c0 = time.perf_counter(), time.process_time()
        task = _load_task(spec, cfg, vision)
        if isinstance(task, tuple):
            entry["skipped"], entry["skip_reason"], entry["skip_detail"] = True, task[0], task[1]
            print(f"[{i + 1}/{len(specs)}] {spec.name}: {task[0]}", flush=True)
            tasks.append(entry)
            continue
        summary, curves = run_task(task, spec.steps, cfg, learned, names)
        entry.update(summary)
        all_curves[spec.name] = {"steps": spec.steps, "optimizers": curves}
        entry["seconds"], entry["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
        o = entry["optimizers"]
        print(f"[{i + 1}/{len(specs)}] {spec.name} ({spec.group}, {spec.steps} steps): final loss NGO "
              f"{fmt(o['ngo']['final_loss_mean'], None)} vs tuned Adam {fmt(o['adam_tuned']['final_loss_mean'], None)}"
              f" (lr {o['adam_tuned']['lr']:g}, tuned on seed {cfg.tune_seed}); speed-up "
              f"{fmt_speedup(entry['ngo_speedup_vs_tuned_adam'])}; {entry['seconds']:.1f}s "
              f"({entry['cpu_seconds']:.1f}s CPU)", flush=True)
        tasks.append(entry)
    doc: dict[str, Any] = {
        "benchmark": "vs_adam", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "torch": torch.__version__, "peer_versions": peers.peer_versions(list(cfg.optimizers)),
        "command": command, "seconds": time.perf_counter() - t_start, "cpu_seconds": time.process_time() - c_start,
        "config": _cfg.config_to_dict(cfg), "ckpt": ckpt, "skipped_optimizers": skipped_opts,
        "optimizers_run": names, "definitions": DEFINITIONS, "curves_file": "curves.json.gz", "tasks": tasks,
    }
    doc = finite_or_none(doc)
    write_curves(out / "curves.json.gz", all_curves)
    md = markdown(doc)
    print()
    print(md)
    atomic_write_text(out / "results.md", md)
    atomic_write_text(out / "results.json", json.dumps(doc, indent=1, allow_nan=False))
    written = [out / "results.md", out / "results.json", out / "curves.json.gz", out / "config.yaml"]
    if cfg.plot and plot(doc, all_curves, out / "curves.png") is not None:
        written.append(out / "curves.png")
    print("wrote " + ", ".join(map(str, written)), flush=True)
    return doc
