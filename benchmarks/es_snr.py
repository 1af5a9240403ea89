"""How much signal does one ES meta-gradient carry at a checkpoint? The population an ES step needs.

Commands::

    lopt-es-snr ckpt=default meta_params=no_encoder sigma=0.01 tasks=8 pairs=8 steps=300 \\
        out=benchmarks/results/es_snr/default_no_encoder.json
    python -m benchmarks.es_snr --help                  # the keys and their defaults

At the meta-parameters ``theta`` of ``ckpt`` (``meta_params`` selects the ones that move, as in a meta-training
run), ``pairs`` antithetic perturbations ``eps`` per task, on ``tasks`` draws of the training family (with the
run's input-scale augmentation): each task is trained ``steps`` steps from the same initialization and batches
with ``theta + sigma eps`` and ``theta - sigma eps`` (told its horizon), and each pair gives the ES estimate

    g_i = (f(theta + sigma eps_i) - f(theta - sigma eps_i)) / (2 sigma) * eps_i,
    f = log((L + 0.01) / log(classes)) of the final full-training-set loss (full-horizon ES's objective).

From the per-task means ``G_t`` of the ``g_i`` it estimates, without bias, the squared norm of the family's
meta-gradient ``|g|^2 = (|sum_t G_t|^2 - sum_t |G_t|^2) / (T (T - 1))`` and the noise of one pair ``tr(C) =
mean_i |g_i|^2 - |g|^2``; their ratio ``N* = tr(C) / |g|^2`` is the number of pairs (over random tasks) at which an
averaged estimate's signal equals its noise, and ``cos`` the cosine between the means of two halves of the tasks.
Within a task, the same U-statistic over its pairs estimates ``|grad f_t|^2``, that task's own meta-gradient; the
mean over tasks against ``|g|^2`` says how much of the noise is tasks disagreeing (which exact per-task gradients
would keep) rather than the random directions of ES (which grow with the dimension).
A meta-training step averages ``population / 2 * tasks_per_group`` pairs over the groups whose runs end; with far
fewer than ``N*`` it moves mostly along noise. ``|g|^2`` can come out negative when the signal is below what
the sample resolves (then ``N*`` is reported as ``inf``): its jackknife standard error over tasks says how well
it is resolved, and ``noise / (|g|^2 + 2 SE)`` is a lower bound on ``N*`` that holds even where the signal is not
resolved.

Prints a markdown table and writes JSON (every pair's two values) + markdown.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value
from meta_train.config import META_PARAMS
from meta_train.evaluate import load_any
from meta_train.tasks import FAMILIES
from meta_train.unroll import ThetaSpace

from .meta_progress import draw_tasks, family_values


@dataclass(frozen=True)
class ESSNRConfig:
    """Keys of ``lopt-es-snr``.

    Attributes:
        ckpt: the checkpoint (a shipped name, a path or a meta-training run's ``ckpt.pt``).
        meta_params: which meta-parameters are perturbed (``meta_train`` ``meta_params``: ``all``,
            ``no_encoder``, ``step_size``, ``head``).
        sigma: perturbation scale (the run's ``sigma``).
        family: training family the tasks are drawn from.
        input_scale: the run's input-scale augmentation (``1``: none).
        tasks: number of task draws (>= 2: the signal estimate pairs tasks).
        pairs: antithetic pairs per task.
        steps: inner steps of each run (told its horizon).
        sample_seed: seed of the task draws and the perturbations.
        out: JSON output (the markdown goes next to it, ``.md``).
        threads: torch intra-op threads.
    """

    ckpt: str = "default"
    meta_params: str = "no_encoder"
    sigma: float = 0.01
    family: str = "mixture_v3"
    input_scale: float = 2.0
    tasks: int = 8
    pairs: int = 8
    steps: int = 300
    sample_seed: int = 2024
    out: str = "benchmarks/results/es_snr/es_snr.json"
    threads: int = 1

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        if self.meta_params not in META_PARAMS:
            bad_value("meta_params", self.meta_params, f"one of {list(META_PARAMS)}")
        if self.family not in FAMILIES:
            bad_value("family", self.family, f"one of {sorted(FAMILIES)}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            bad_value("sigma", self.sigma, "a finite float > 0")
        _cfg.check_minimums(self, tasks=2, pairs=1, steps=1, input_scale=1, threads=0)


def snr_stats(grads: Sequence[Sequence[torch.Tensor]]) -> dict[str, float]:
    """The statistics of the module docstring from per-task lists of per-pair estimates ``grads[t][i]``."""
    if len(grads) < 2 or any(len(g) == 0 for g in grads):
        raise ValueError(f"snr_stats needs >= 2 tasks with >= 1 pair each, got {[len(g) for g in grads]}")
    per_task = torch.stack([torch.stack(list(g)).double().mean(0) for g in grads])
    t = per_task.shape[0]

    def u_stat(rows: torch.Tensor) -> float:  # unbiased |E G|^2 from independent rows
        n = rows.shape[0]
        return float((rows.sum(0).square().sum() - rows.square().sum()) / (n * (n - 1)))

    signal = u_stat(per_task)
    se = math.nan
    if t >= 3:  # jackknife over tasks
        loo = [u_stat(torch.cat([per_task[:k], per_task[k + 1:]])) for k in range(t)]
        mean_loo = sum(loo) / t
        se = math.sqrt((t - 1) / t * sum((v - mean_loo) ** 2 for v in loo))
    every = torch.cat([torch.stack(list(g)).double() for g in grads])
    noise = float(every.square().sum(1).mean()) - signal
    within = [u_stat(s) for s in (torch.stack(list(g)).double() for g in grads) if len(s) >= 2]
    task_sq = float(sum(within) / len(within)) if within else math.nan
    half = t // 2
    a, b = per_task[:half].mean(0), per_task[half:].mean(0)
    cos = float(a @ b / (a.norm() * b.norm())) if a.norm() > 0 and b.norm() > 0 else 0.0
    bound = signal + 2 * se if math.isfinite(se) else math.nan
    return {"signal_sq": signal, "signal_sq_se": se, "noise_per_pair": noise,
            "pairs_for_snr_1": noise / signal if signal > 0 else math.inf,
            "pairs_for_snr_1_at_least": bound if math.isnan(bound) else noise / bound if bound > 0 else math.inf,
            "cosine_halves": cos, "task_signal_sq": task_sq, "pairs": int(every.shape[0]), "tasks": t,
            "dim": int(every.shape[1])}


def run(cfg: ESSNRConfig) -> dict[str, Any]:
    """Every task and pair; the statistics of the module docstring."""
    learned = load_any(cfg.ckpt)
    space = ThetaSpace(learned, META_PARAMS[cfg.meta_params])
    theta = space.flatten(learned)
    gen = torch.Generator().manual_seed(cfg.sample_seed)
    tasks = draw_tasks(cfg.family, cfg.tasks, cfg.input_scale, gen)  # the perturbations come from gen after them
    plus, minus = copy.deepcopy(learned), copy.deepcopy(learned)
    grads: list[list[torch.Tensor]] = []
    rows = []
    for k, tc in enumerate(tasks):
        grads.append([])
        for i in range(cfg.pairs):
            eps = torch.randn(space.dim, generator=gen)
            space.load_into(plus, theta + cfg.sigma * eps)
            space.load_into(minus, theta - cfg.sigma * eps)
            (fp,), (fm,) = (family_values(m, [tc], cfg.steps, seed=k) for m in (plus, minus))
            grads[-1].append((fp - fm) / (2 * cfg.sigma) * eps)
            rows.append({"task": tc.name, "pair": i, "f_plus": fp, "f_minus": fm})
        diffs = [abs(r["f_plus"] - r["f_minus"]) for r in rows[-cfg.pairs:]]
        print(f"[{k + 1}/{cfg.tasks}] {tc.name}: mean |f+ - f-| {sum(diffs) / len(diffs):.4f}", file=sys.stderr,
              flush=True)
    stats = snr_stats(grads)
    return {"ckpt": cfg.ckpt, "meta_params": cfg.meta_params, "sigma": cfg.sigma, "family": cfg.family,
            "input_scale": cfg.input_scale, "steps": cfg.steps, "sample_seed": cfg.sample_seed,
            "threads": torch.get_num_threads(), "stats": stats, "rows": rows}


def markdown(doc: dict[str, Any]) -> str:
    s = doc["stats"]
    n = s["pairs_for_snr_1"]
    mean_diff = sum(abs(r["f_plus"] - r["f_minus"]) for r in doc["rows"]) / len(doc["rows"])
    return "\n".join([
        f"ES meta-gradient at `{doc['ckpt']}` (`meta_params={doc['meta_params']}`: {s['dim']:,} dimensions), "
        f"sigma {doc['sigma']:g}, {s['tasks']} tasks of `{doc['family']}` (input scale x{doc['input_scale']:g}) x "
        f"{s['pairs'] // s['tasks']} antithetic pairs, {doc['steps']} steps told, objective log((L + 0.01) / L_0) "
        "of the final loss.", "",
        "| signal \\|g\\|^2 (SE) | a task's own \\|grad f_t\\|^2 (mean) | noise per pair tr(C) | pairs for signal = "
        "noise (N*) | N*, at least | cosine of two halves' means | mean \\|f+ - f-\\| |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['signal_sq']:.4g} ({s['signal_sq_se']:.2g}) | {s['task_signal_sq']:.4g} | {s['noise_per_pair']:.4g} | "
        f"{_count(n)} | {_count(s['pairs_for_snr_1_at_least'])} | {s['cosine_halves']:.3f} | {mean_diff:.4f} |"]) + "\n"


def _count(n: float) -> str:
    return "inf" if math.isinf(n) else "n/a" if math.isnan(n) else f"{n:,.0f}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``[--config FILE] [key=value ...]`` (keys of :class:`ESSNRConfig`); returns the result document."""
    return _cfg.document_command(ESSNRConfig, argv, (__doc__ or "").split("\n")[0], run, markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
