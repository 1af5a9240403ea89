"""Shared command-line plumbing of the INR commands: ``[--config file.yaml] [key=value ...]``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

from lopt_graphs import config as _cfg
from lopt_graphs.config import save_resolved_config
from lopt_graphs.io import atomic_write_text

C = TypeVar("C")


def parse_command(cls: type[C], argv: Sequence[str] | None, description: str) -> C:
    """Parse ``[--config path] [key=value ...]`` into a ``cls`` config (unknown keys are errors)."""
    return _cfg.parse_command(cls, argv, description)


def setup_run(cfg: Any, out: str | os.PathLike[str]) -> Path:
    """Set torch's thread count from ``cfg.threads``, create ``out`` and save the resolved config there."""
    _cfg.set_threads(getattr(cfg, "threads", 1))
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, path / "config.yaml", header=f"Resolved {type(cfg).__name__}")
    return path


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
