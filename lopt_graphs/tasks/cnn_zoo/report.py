"""Collect ``results.json`` of CNN-zoo tasks into one Markdown table.

Command::

    python -m lopt_graphs.tasks.cnn_zoo.report runs/tasks/zoo_small runs/tasks/zoo_variant \
        --out runs/tasks/zoo_results.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from lopt_graphs.io import atomic_write_text

__all__ = ["results_table"]


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


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description="Markdown table of CNN-zoo prediction results.")
    ap.add_argument("dirs", nargs="+", help="task result directories (holding results.json)")
    ap.add_argument("--out", default=None, help="write the table here as well")
    a = ap.parse_args(argv)
    text = results_table(a.dirs)
    if a.out:
        atomic_write_text(a.out, text)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
