"""Atomic file writes: a file is either its old version or its complete new one, never half-written.

Everything the package persists (checkpoints, caches, configs, results) goes through :func:`atomic_write`:
write to a temporary file in the destination's folder, ``fsync``, then ``os.replace`` over the destination.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["atomic_write", "atomic_write_text", "finite_or_none"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None],
                 check: Callable[[str], None] | None = None, mode: int = 0o644) -> Path:
    """Write ``path`` atomically.

    Args:
        path: destination (parent folders are created).
        write: called with the open temporary file (binary mode) to write the content.
        check: optional validation of the finished temporary file (given its path); raising aborts the
            write and leaves the previous ``path`` untouched.
        mode: permission bits of the result (``mkstemp`` would leave 0600).

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json_and_markdown(path: str | os.PathLike, doc: Any, markdown: str) -> Path:
    """A benchmark's result: ``doc`` as JSON at ``path`` and ``markdown`` next to it (``.md``), each written
    atomically (parent directories made); returns ``path``."""
    path = Path(path)
    atomic_write_text(path, json.dumps(doc, indent=1))
    atomic_write_text(path.with_suffix(".md"), markdown)
    return path


def finite_or_none(x: Any) -> Any:
    """``x`` (nested dicts, lists, tuples) with every non-finite float as ``None``, for strict JSON
    (``json.dumps(..., allow_nan=False)``): ``Infinity`` and ``NaN`` are not JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_or_none(v) for v in x]
    return x
