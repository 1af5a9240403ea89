"""End-of-run markdown report: meta-loss curve, resolved config and evaluation table.

:func:`write_report` reads the run's ``metrics.jsonl`` (one JSON object per line, see
:class:`meta_train.logging_utils.MetricsLogger`), plots ``meta_loss`` against ``step`` with an
exponentially smoothed curve to ``meta_loss.png`` and writes ``report.md`` next to it.

Smoothing and the geometric mean are :mod:`lopt_graphs.evaluation`'s (``ema_smooth`` is re-exported here).

The plot uses matplotlib's Agg canvas directly (no ``pyplot``), so it never changes the global
backend or figure state of the calling process.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lopt_graphs.evaluation import ema_smooth, geomean
from lopt_graphs.io import atomic_write_text
from lopt_graphs.plotting import new_figure, save_figure

__all__ = ["EVAL_KEYS", "ema_smooth", "read_metrics", "write_report"]

#: Keys of one task's entry in ``eval_results``.
EVAL_KEYS: tuple[str, ...] = ("ngo_final_loss", "adam_final_loss", "adam_lr", "ngo_steps_to_adam_final", "steps")


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a metrics JSONL file; one record per step, the last one logged for a step winning.

    Blank or malformed lines (e.g. a partial last line after a crash) and records without an integer
    ``step`` are skipped. A missing file gives ``[]``. Records are returned sorted by step.
    """
    p = Path(path)
    if not p.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            step = rec.get("step")
            if not isinstance(step, int) or isinstance(step, bool):
                continue
            # Several records may share a step (e.g. train and eval metrics): merge, later keys win.
            by_step.setdefault(step, {}).update(rec)
    return [by_step[s] for s in sorted(by_step)]


def _default_smoothing(n: int) -> float:
    """Smoothing weight for ``n`` points: none for <= 10 points, growing to 0.95 for long runs."""
    return min(0.95, max(0.0, 1.0 - 10.0 / n)) if n > 0 else 0.0


def _plot_meta_loss(steps: list[int], losses: list[float], path: Path) -> None:
    """Plot raw and smoothed meta-loss against step to ``path`` (PNG)."""
    fig, ax = new_figure(figsize=(7.0, 4.0), dpi=100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1.0, label="meta_loss")
    weight = _default_smoothing(len(losses))
    if weight > 0:
        ax.plot(steps, ema_smooth(losses, weight), color="tab:blue", linewidth=2.0, label=f"EMA ({weight:.2f})")
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("outer step")
    ax.set_ylabel("meta loss")
    ax.set_title("Meta-training loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    save_figure(fig, path)


def _fmt(value: Any, spec: str = ".4g") -> str:
    """Format a table cell: numbers with ``spec``, ``None``/missing as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, spec) if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|")


def _number(v: Any) -> bool:
    """Whether ``v`` is a finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ratio(num: Any, den: Any) -> float | None:
    """``num / den`` for finite numbers with ``den != 0``, else ``None``."""
    if not (_number(num) and _number(den)) or den == 0:
        return None
    return float(num) / float(den)


def _eval_table(eval_results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown lines of the per-task evaluation table and its summary."""
    lines = [
        "| task | steps | NGO final loss | Adam final loss | Adam lr | NGO / Adam final loss "
        "| NGO steps to Adam final | NGO steps / steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios: list[float] = []
    reached = 0
    for task in sorted(eval_results):
        r = eval_results[task]
        steps = r.get("steps")
        loss_ratio = _ratio(r.get("ngo_final_loss"), r.get("adam_final_loss"))
        to_adam = r.get("ngo_steps_to_adam_final")
        step_ratio = _ratio(to_adam, steps)
        if loss_ratio is not None and loss_ratio > 0:
            ratios.append(loss_ratio)
        if to_adam is not None:
            reached += 1
        cells = [
            _fmt(str(task)),
            _fmt(steps),
            _fmt(r.get("ngo_final_loss")),
            _fmt(r.get("adam_final_loss")),
            _fmt(r.get("adam_lr"), ".3g"),
            _fmt(loss_ratio, ".3f"),
            _fmt(to_adam) if to_adam is not None else "never",
            _fmt(step_ratio, ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "NGO / Adam final loss < 1 means the learned optimizer ends lower than tuned Adam; "
        "NGO steps / steps < 1 means it reaches Adam's final loss early."
    )
    if ratios:
        lines.append("")
        lines.append(
            f"Geometric mean of NGO / Adam final loss over {len(ratios)} task(s): **{geomean(ratios):.3f}**; "
            f"NGO reached Adam's final loss on **{reached}/{len(eval_results)}** task(s)."
        )
    return lines


def _validation_lines(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the validation scores the run logged (``val_score``), its best step and which
    exported file holds what; ``[]`` when the run did not validate."""
    rows = [(r["step"], float(r["val_score"])) for r in records if _number(r.get("val_score"))]
    if not rows:
        return []
    best_step, best = min(rows, key=lambda x: (x[1], x[0]))
    last_step, last = rows[-1]
    lines = ["", "## Validation", "",
             "Score on the validation tasks (`meta_train.tasks.VALIDATION`; lower is better, 0 = tuned Adam), "
             "at each validation step:", "",
             "| outer step | " + " | ".join(str(st) for st, _ in rows) + " |",
             "|---|" + "---:|" * len(rows),
             "| validation | " + " | ".join(f"{v:.3f}" for _, v in rows) + " |", "",
             f"- `best.pt`: outer step {best_step}, validation {best:.3f} (the checkpoint to use);",
             f"- `learned.pt`: the last outer step, validation {last:.3f} at step {last_step}."]
    if best_step == last_step:
        lines.append("- They are the same meta-parameters: the last validated step was the best.")
    elif best_step == rows[0][0]:
        lines.append(f"- Meta-training did not beat its starting point (step {best_step}) on validation: `best.pt` "
                     "is that start.")
    return lines


def write_report(
    out_dir: str | os.PathLike[str],
    metrics_jsonl_path: str | os.PathLike[str],
    eval_results: Mapping[str, Mapping[str, Any]] | None = None,
    best_eval_results: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``out_dir/report.md`` (and ``out_dir/meta_loss.png`` if there is meta-loss data).

    Args:
        out_dir: Run output directory; ``config.yaml`` in it, if present, is embedded in the report.
        metrics_jsonl_path: The run's metrics file; records with a numeric ``meta_loss`` are plotted, and
            the ``val_score`` of validation steps, if any, tabulated with the best one.
        eval_results: Optional ``{task_name: {"ngo_final_loss": float, "adam_final_loss": float,
            "adam_lr": float, "ngo_steps_to_adam_final": int | None, "steps": int}}`` of ``learned.pt`` (the
            last outer step); rendered as a table with the NGO/Adam final-loss ratio and the fraction of steps
            NGO needs to reach Adam's final loss (``None`` = never). Missing entries show as ``—``.
        best_eval_results: The same for ``best.pt`` (the step best on validation), rendered below it.

    Returns:
        The path of ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = read_metrics(metrics_jsonl_path)
    points = [(r["step"], float(r["meta_loss"])) for r in records if _number(r.get("meta_loss"))]
    lines = [
        "# Meta-training report",
        "",
        f"Run directory: `{out}`  ",
        f"Generated: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        "## Meta-loss",
        "",
    ]
    png = out / "meta_loss.png"
    if points:
        steps = [s for s, _ in points]
        losses = [v for _, v in points]
        _plot_meta_loss(steps, losses, png)
        smooth = ema_smooth(losses, _default_smoothing(len(losses)))
        best = min(range(len(losses)), key=losses.__getitem__)
        lines += [
            f"![meta loss]({png.name})",
            "",
            f"- logged steps: {len(points)} (step {steps[0]} to {steps[-1]})",
            f"- first meta_loss: {losses[0]:.5g}; last: {losses[-1]:.5g}; last smoothed: {smooth[-1]:.5g}",
            f"- best meta_loss: {losses[best]:.5g} at step {steps[best]}",
        ]
    else:
        lines.append(f"No finite `meta_loss` records in `{metrics_jsonl_path}`; no plot written.")
    lines += ["", "## Config", ""]
    cfg_path = out / "config.yaml"
    if cfg_path.is_file():
        lines += ["```yaml", cfg_path.read_text(encoding="utf-8").rstrip("\n"), "```"]
    else:
        lines.append("No `config.yaml` found in the run directory.")
    lines += _validation_lines(records)
    if eval_results is not None or best_eval_results is not None:
        lines += ["", "## Evaluation", ""]
        for name, res in (("`learned.pt` (the last outer step)", eval_results),
                          ("`best.pt` (the outer step best on validation)", best_eval_results)):
            if res is None:
                continue
            if best_eval_results is not None:
                lines += [f"### {name}", ""]
            lines += _eval_table(res) if res else ["No evaluation results."]
            lines.append("")
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
