"""Benchmark commands (``lopt-vs-adam``, ``lopt-throughput``, ``lopt-step-cost``, ``lopt-step-saturation``,
``lopt-graph-cost``); each module's docstring gives its command line, ``benchmarks.suite`` holds the vs-Adam
suite."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def report_main(config_cls: type, argv: Sequence[str] | None, doc: str | None,
                run: Callable[[Any], dict[str, Any]], markdown: Callable[[dict[str, Any]], str],
                plot: Callable[[dict[str, Any], Path], Path], out_key: str = "out") -> dict[str, Any]:
    """The command line of a benchmark that writes JSON, markdown and a PNG: parse ``argv`` into ``config_cls``
    (its first docstring line as the description), set the threads, ``run`` it, print the ``markdown`` and write
    the three files next to the config's ``out``; returns the result document."""
    from lopt_graphs import config as _cfg
    from lopt_graphs.io import write_json_and_markdown

    cfg = _cfg.parse_command(config_cls, argv, (doc or "").split("\n")[0])
    _cfg.set_threads(cfg.threads)
    result = run(cfg)
    md = markdown(result)
    print(md)
    out = write_json_and_markdown(getattr(cfg, out_key), result, md)
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return result
