"""Collect ``results.json`` of CNN-zoo tasks into one Markdown table.

Commands::

    python -m lopt_graphs.tasks.cnn_zoo.report dirs=runs/tasks/zoo_small,runs/tasks/zoo_variant \
        out=runs/tasks/zoo_results.md
    python -m lopt_graphs.tasks.cnn_zoo.report --help          # the keys and their defaults
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lopt_graphs.config import CheckedConfig, parse_command, set_threads
from lopt_graphs.io import atomic_write_text

__all__ = ["ReportConfig", "results_table"]


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v)


def results_table(dirs: Sequence[str | Path]) -> str:
    """A Markdown table (one row per task) of test Kendall tau and zoo sizes."""
    res = [json.loads((Path(d) / "results.json").read_text(encoding="utf-8")) for d in dirs]
    models: list[str] = []
    for r in res:
        models += [m for m in r["kendall_tau"] if m not in models]
    head = (["zoo", "runs (train/val/test)", "checkpoints (train/val/test)", "archs", "zoo build (s)"]
            + [f"{m} tau" for m in models])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res:
        z = r["zoo"]
        row = [r["task"], f"{z['runs']} ({'/'.join(map(str, z['runs_train_val_test']))})",
               f"{z['checkpoints']} ({'/'.join(map(str, z['checkpoints_train_val_test']))})", str(z["archs"]),
               _fmt(z.get("build_seconds"))] + [_fmt(r["kendall_tau"].get(m)) for m in models]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ReportConfig(CheckedConfig):
    """Keys of ``python -m lopt_graphs.tasks.cnn_zoo.report``.

    Attributes:
        dirs: task result directories, each holding a ``results.json`` (``dirs=a,b``; at least one).
        out: write the table here as well (``""``: print only).
        threads: torch intra-op threads (1, as every command; ``0`` keeps torch's default).
    """

    dirs: tuple[str, ...] = ()
    out: str = ""
    threads: int = 1


def main(argv: Sequence[str] | None = None) -> str:
    """``[--config FILE] dirs=A,B [out=FILE.md]``; prints and returns the table."""
    cfg = parse_command(ReportConfig, argv, "Markdown table of CNN-zoo prediction results.")
    if not cfg.dirs:
        raise ValueError("the report needs dirs=DIR[,DIR...] (task result directories holding results.json)")
    set_threads(cfg.threads)
    text = results_table(cfg.dirs)
    if cfg.out:
        atomic_write_text(cfg.out, text)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
