"""Shared command-line plumbing of the INR commands: ``[--config file.yaml] [key=value ...]``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch

from lopt_graphs.config import load_config, save_resolved_config
from lopt_graphs.io import atomic_write_text

C = TypeVar("C")


def parse_command(cls: type[C], argv: Sequence[str] | None, description: str) -> C:
    """Parse ``[--config path] [key=value ...]`` into a ``cls`` config (unknown keys are errors)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML config file (keys of %s)" % cls.__name__)
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied after the file")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.overrides)


def setup_run(cfg: Any, out: str | os.PathLike[str]) -> Path:
    """Set torch's thread count from ``cfg.threads``, create ``out`` and save the resolved config there."""
    if getattr(cfg, "threads", 0) > 0:
        torch.set_num_threads(cfg.threads)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, path / "config.yaml", header=f"Resolved {type(cfg).__name__}")
    return path


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
