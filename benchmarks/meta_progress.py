"""Does meta-training improve what it optimizes, and what validation scores? Checkpoints of one run side by side.

Commands::

    lopt-meta-progress ckpts=fresh:v2_cosine_bounded,runs/v2_final/ckpt.pt refs_from=runs/v2_final/ckpt.pt
    python -m benchmarks.meta_progress --help                  # the keys and their defaults

For each checkpoint (a shipped name, a path, a meta-training run's ``ckpt.pt``/``best.pt``, or
``fresh:ARCH`` for a fresh learned update of ``meta_train``'s ``learned=ARCH``, seeded 0) it reports:

* ``validation``: ``meta_train.validate.validation_score`` (the score a run selects on: mean over the
  validation tasks and seeds of ``log((L + 0.01) / (L_adam + 0.01))``, final full-training-set loss against
  Adam at an lr tuned on a separate seed; lower is better). The references come from a run checkpoint
  (``refs_from``; those a run computed) or are computed here.
* ``train_family``: the meta-objective's own quantity on tasks drawn from the training family (``tasks`` draws
  of ``family`` with the run's input-scale augmentation, fixed ``sample_seed``), each trained ``steps`` steps
  told its horizon (seed 0; ``told=false``: both parts without it): the mean of
  ``log((L + 0.01) / log(classes))`` of the final full-training-set loss. If a
  run improves this but not ``validation``, its training distribution is the problem; if neither, its
  meta-gradient is (noise moves the meta-parameters as much as signal).
* per task, each checkpoint against the first: how many tasks it has the lower value on, and for validation
  the paired difference (mean over the validation runs of its log ratio minus the first's) with its standard
  error: a difference within about two standard errors is noise (one chaotic task can move a score by 0.05).

Prints a markdown table and writes JSON (with every per-task value) + markdown.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value
from lopt_graphs.evaluation import train_run
from lopt_graphs.io import write_json_and_markdown
from lopt_graphs.optim import LearnedUpdate
from lopt_graphs.optim.checkpoint import read_checkpoint
from lopt_graphs.optim.functional import ORTHOGONAL_DTYPE_NAMES
from meta_train.config import LEARNED_ARCHS
from meta_train.evaluate import check_checkpoints, load_any
from meta_train.tasks import FAMILIES, Task, TaskConfig, sample_group
from meta_train.unroll import LOSS_OFFSET
from meta_train.validate import adam_references, validation_score

FRESH = "fresh:"


@dataclass(frozen=True)
class MetaProgressConfig:
    """Keys of ``lopt-meta-progress``.

    Attributes:
        ckpts: checkpoints to compare (the first is the reference of the per-task counts); ``NAME@DTYPE`` runs
            ``NAME`` with the optimizer's ``orthogonal_dtype=`` that dtype (``float32`` or ``bfloat16``; without a
            suffix: ``"auto"``, the optimizer's default).
        refs_from: a meta-training checkpoint whose validation references to use; ``""`` computes them.
        validate_steps: length of the validation runs (the run's ``validate_steps``).
        validate_seeds: seeds per validation task (the run's ``validate_seeds``).
        validate_first_seed: the first of them (``0``: the seeds runs select on; ``4`` with ``validate_seeds=4``:
            four fresh seeds per task, to confirm a choice made on seeds 0-3 without its selection luck).
        family: training family the tasks are drawn from.
        input_scale: the run's input-scale augmentation (``1``: none).
        tasks: number of training-family tasks.
        steps: inner steps of each training-family run.
        sample_seed: seed of the task draws.
        out: JSON output (the markdown goes next to it, ``.md``).
        threads: torch intra-op threads.
        told: tell every run its horizon (``total_steps``), as a run validates; ``false`` scores the untold path
            (what a user who passes nothing gets) against the same references.
    """

    ckpts: tuple[str, ...] = ("fresh:v2_cosine", "v2_cosine_pes_100")
    refs_from: str = ""
    validate_steps: int = 300
    validate_seeds: int = 2
    validate_first_seed: int = 0
    family: str = "mixture_v2"
    input_scale: float = 2.0
    tasks: int = 24
    steps: int = 300
    sample_seed: int = 12345
    out: str = "benchmarks/results/meta_progress.json"
    threads: int = 1
    told: bool = True

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        if not self.ckpts:
            bad_value("ckpts", self.ckpts, "at least one checkpoint (a name, a path or fresh:ARCH)")
        for c in self.ckpts:
            if c.startswith(FRESH) and c[len(FRESH):] not in LEARNED_ARCHS:
                bad_value("ckpts", c, f"fresh:ARCH with ARCH one of {list(LEARNED_ARCHS)}")
        if self.family not in FAMILIES:
            bad_value("family", self.family, f"one of {sorted(FAMILIES)}")
        _cfg.check_minimums(self, validate_steps=1, validate_seeds=1, tasks=1, steps=1, input_scale=1, threads=0,
                            validate_first_seed=0)


def split_dtype(ckpt: str) -> tuple[str, torch.dtype | str]:
    """``NAME@DTYPE`` (``DTYPE`` a key of ``ORTHOGONAL_DTYPE_NAMES``) -> ``(NAME, its orthogonal_dtype)``; anything
    else (a path may hold an ``@``) -> ``(ckpt, "auto")``."""
    name, _, dtype = ckpt.rpartition("@")
    return (name, ORTHOGONAL_DTYPE_NAMES[dtype]) if name and dtype in ORTHOGONAL_DTYPE_NAMES else (ckpt, "auto")


def load(ckpt: str) -> LearnedUpdate:
    """The learned update ``ckpt`` names (``fresh:ARCH``: a fresh one, seeded 0)."""
    if ckpt.startswith(FRESH):
        from meta_train.trainer import fresh_learned_update

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return fresh_learned_update(ckpt[len(FRESH):])
    return load_any(ckpt)


def family_tasks(cfg: MetaProgressConfig) -> list[TaskConfig]:
    """``cfg.tasks`` draws of the training family (one task per draw), as a run samples them."""
    return draw_tasks(cfg.family, cfg.tasks, cfg.input_scale, torch.Generator().manual_seed(cfg.sample_seed))


def draw_tasks(family: str, n: int, input_scale: float, gen: torch.Generator) -> list[TaskConfig]:
    """``n`` draws of ``family`` from ``gen`` (one task per draw, with the input-scale augmentation)."""
    return [sample_group(family, gen, 1, input_scale=input_scale)[0] for _ in range(n)]


def family_values(learned: LearnedUpdate, tasks: Sequence[TaskConfig], steps: int, seed: int,
                  told: bool = True, orthogonal_dtype: torch.dtype | str | None = "auto",
                  on_run: Callable[[], object] | None = None) -> list[float]:
    """Per task, ``log((L + c) / log(classes))`` of the final training loss after ``steps`` steps (3 if it
    diverged); ``told``: the runs are told ``total_steps``; ``orthogonal_dtype``: the optimizer's; ``on_run`` is
    called after each run."""
    out = []
    for tc in tasks:
        task = Task(tc)
        r = train_run(task, lambda m: NeuralGraphOptimizer.for_module(m, copy.deepcopy(learned),
                                                                      total_steps=steps if told else None,
                                                                      orthogonal_dtype=orthogonal_dtype),
                      steps, seed)
        out.append(math.log((r.final_loss + LOSS_OFFSET) / task.loss_scale) if math.isfinite(r.final_loss) else 3.0)
        if on_run is not None:
            on_run()
    return out


def references(cfg: MetaProgressConfig) -> list[dict]:
    if cfg.refs_from:
        refs = read_checkpoint(cfg.refs_from).get("validation", {}).get("refs")
        if not refs:
            raise ValueError(f"refs_from={cfg.refs_from!r} holds no validation references (a meta-training "
                             "checkpoint of a run with validate_every > 0 has them); leave refs_from empty to "
                             "compute them")
        return refs
    return adam_references(cfg.validate_steps, seeds=cfg.validate_seeds, first_seed=cfg.validate_first_seed)


def paired_difference(values: Sequence[float], first: Sequence[float]) -> dict[str, float]:
    """``{"mean", "se"}`` of ``values[i] - first[i]`` (the standard error of the mean; ``nan`` for one pair)."""
    d = [a - b for a, b in zip(values, first)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return {"mean": statistics.fmean(d), "se": se}


def markdown(rows: list[dict], cfg: MetaProgressConfig) -> str:
    lines = [("Runs told `total_steps`. " if cfg.told else "Runs **not** told `total_steps` (the untold path). ") +
             f"validation: {cfg.validate_seeds} seeds from seed {cfg.validate_first_seed}, {cfg.validate_steps} steps "
             "(lower is better, 0 = tuned Adam). "
             f"train_family: {cfg.tasks} tasks of `{cfg.family}` (input scale x{cfg.input_scale:g}), {cfg.steps} "
             "steps, mean log((L + 0.01) / L_0) of the final loss. Per task: where it is lower than the first "
             "checkpoint's.", "",
             "| checkpoint | validation | paired vs first (SE) | validation tasks lower | train_family | "
             "train_family tasks lower |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = r.get("validation_vs_first")
        paired = "-" if d is None else f"{d['mean']:+.3f} ({d['se']:.3f})"
        lines.append(f"| {r['ckpt']} | {r['validation']:+.3f} | {paired} | {r['validation_lower']} | "
                     f"{r['train_family']:+.3f} | {r['train_family_lower']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point: ``[--config FILE] [key=value ...]``; returns the result document."""
    cfg = _cfg.parse_command(MetaProgressConfig, argv, (__doc__ or "").split("\n")[0])
    _cfg.set_threads(cfg.threads)
    check_checkpoints([split_dtype(c)[0] for c in cfg.ckpts], skip_prefix=FRESH)
    refs, tasks = references(cfg), family_tasks(cfg)
    rows: list[dict] = []
    first_val: list[float] = []  # the first checkpoint's validation log ratios, per run
    bar = tqdm(total=len(cfg.ckpts) * (len(refs) + len(tasks)), desc="meta-progress", unit="run",
               dynamic_ncols=True)
    tick = lambda: bar.update(1)  # noqa: E731
    for ckpt in cfg.ckpts:
        name, odt = split_dtype(ckpt)
        learned = load(name)
        bar.set_postfix_str(ckpt)
        val = validation_score(learned, refs, cfg.validate_steps, seeds=cfg.validate_seeds, told=cfg.told,
                               orthogonal_dtype=odt, first_seed=cfg.validate_first_seed, on_run=tick)
        fam = family_values(learned, tasks, cfg.steps, seed=0, told=cfg.told, orthogonal_dtype=odt, on_run=tick)
        val_tasks = [t["log_ratio"] for t in val["tasks"]]
        first = rows[0] if rows else None
        first_val = first_val or val_tasks
        rows.append({"ckpt": ckpt, "validation": val["score"], "validation_tasks": val["tasks"],
                     "train_family": sum(fam) / len(fam), "train_family_values": fam,
                     "validation_lower": "-" if first is None else
                     f"{sum(a < b for a, b in zip(val_tasks, first_val))}/{len(val_tasks)}",
                     "validation_vs_first": None if first is None else paired_difference(val_tasks, first_val),
                     "train_family_lower": "-" if first is None else
                     f"{sum(a < b for a, b in zip(fam, first['train_family_values']))}/{len(fam)}"})
        bar.write(f"  {ckpt}: validation {val['score']:+.3f}, train_family {rows[-1]['train_family']:+.3f}",
                  file=sys.stderr)
    bar.close()
    text = markdown(rows, cfg)
    print(text)
    res = {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "tasks": [t.name for t in tasks],
           "rows": rows}
    res["config"]["ckpts"] = list(cfg.ckpts)
    write_json_and_markdown(cfg.out, res, text + "\n")
    return res


if __name__ == "__main__":
    main()
