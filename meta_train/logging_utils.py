"""Metrics logging of a meta-training run: JSONL file, one stdout line per call, optional wandb.

:class:`MetricsLogger` never lets Weights & Biases break training: if ``wandb`` cannot be imported,
initialised or logged to, a warning is issued and the run continues with JSONL/stdout logging only.

Weights & Biases mode (see :func:`resolve_wandb_mode`): ``WANDB_MODE`` is respected when set
(``online``/``offline``/``disabled``); otherwise the run is ``online`` only if ``WANDB_API_KEY`` is set
and ``offline`` (files under ``<out_dir>/wandb/``, upload later with ``wandb sync``) if not.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tqdm import tqdm

__all__ = ["METRICS_FILE", "WANDB_ID_FILE", "MetricsLogger", "format_metrics", "progress", "resolve_wandb_mode"]

#: Name of the metrics file inside the output directory.
METRICS_FILE = "metrics.jsonl"
#: File in the output directory remembering the wandb run id, so a resumed run continues it.
WANDB_ID_FILE = "wandb_run_id.txt"
#: Keys every JSONL record gets; metrics may not use them.
_RESERVED = frozenset({"step", "time"})
#: Accepted spellings of ``WANDB_MODE`` and the mode they mean.
_MODE_ALIASES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def resolve_wandb_mode(environ: Mapping[str, str] | None = None) -> str:
    """Weights & Biases mode to use: ``"online"``, ``"offline"`` or ``"disabled"``.

    ``WANDB_MODE`` wins if set (``dryrun``/``run`` are accepted as ``offline``/``online``; an unknown
    value warns and falls back to ``offline``). Otherwise ``online`` if ``WANDB_API_KEY`` is set, else
    ``offline`` (no login check is made: a missing key never blocks or prompts).
    """
    env = os.environ if environ is None else environ
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode:
        if mode in _MODE_ALIASES:
            return _MODE_ALIASES[mode]
        warnings.warn(f"unknown WANDB_MODE={mode!r}; using 'offline'", RuntimeWarning, stacklevel=2)
        return "offline"
    return "online" if env.get("WANDB_API_KEY", "").strip() else "offline"


def _unwrap(key: str, value: Any) -> Any:
    """Turn numpy / torch scalars (and one-element tensors/arrays) into python scalars."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError) as exc:
            raise TypeError(f"metric {key!r} must be a scalar, got {type(value).__name__} ({exc})") from exc
    return value


def _to_scalar(key: str, value: Any) -> int | float | str | None:
    """Convert a python scalar metric value to a JSON-friendly scalar.

    Non-finite floats become ``None`` (``null`` in JSON) so the file stays strict JSON.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    raise TypeError(f"metric {key!r} must be a number or string, got {type(value).__name__}")


def _fmt_value(value: Any) -> str:
    """Compact text of one metric value for the stdout line."""
    if isinstance(value, float):
        return f"{value:.5g}"
    if value is None:
        return "nan"
    return str(value)


def format_metrics(step: int, metrics: Mapping[str, Any]) -> str:
    """The stdout line of one log call, e.g. ``step 12 | meta_loss 1.2345 | grad_norm 0.031``."""
    parts = [f"step {step}"] + [f"{k} {_fmt_value(v)}" for k, v in metrics.items()]
    return " | ".join(parts)


class MetricsLogger:
    """Log scalar metrics to ``out_dir/metrics.jsonl``, stdout and (optionally) Weights & Biases.

    Only rank 0 logs; on other ranks every method is a no-op. Each :meth:`log` call appends one JSON
    object ``{"step": ..., "time": <unix seconds>, **metrics}`` to the JSONL file and flushes it,
    and prints ``step N | key value | ...`` to stdout (through :func:`tqdm.write`, so an active
    progress bar is not garbled).

    A fresh run (``resume=False``) that finds an existing non-empty ``metrics.jsonl`` moves it aside to
    ``metrics.jsonl.prev-<time>`` (with a warning) so curves of different runs never mix; a resumed
    run appends (see :meth:`drop_after` to discard records past the resumed checkpoint).

    Usable as a context manager; :meth:`close` is idempotent.

    Args:
        out_dir: Output directory of the run (created if missing).
        config_dict: Resolved config, sent to wandb as the run config.
        use_wandb: Whether to log to Weights & Biases (subject to :func:`resolve_wandb_mode`).
        project: wandb project name.
        rank: Process rank; only rank 0 writes anything.
        resume: Whether the run resumes from a checkpoint: the JSONL file is appended to and the wandb
            run whose id is stored in ``out_dir/wandb_run_id.txt`` is continued.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        config_dict: Mapping[str, Any],
        use_wandb: bool,
        project: str,
        rank: int = 0,
        resume: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.rank = rank
        self.enabled = rank == 0
        self.metrics_path = self.out_dir / METRICS_FILE
        self.wandb_run: Any = None
        self.wandb_mode: str = "disabled"
        self._fh: Any = None
        self._closed = False
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not resume and self.metrics_path.exists() and self.metrics_path.stat().st_size > 0:
            aside = self.metrics_path.with_name(f"{METRICS_FILE}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.metrics_path, aside)
            warnings.warn(
                f"fresh run: moved the existing {self.metrics_path} aside to {aside.name}", RuntimeWarning, stacklevel=2
            )
        self._fh = open(self.metrics_path, "a", encoding="utf-8")
        if use_wandb:
            self._init_wandb(dict(config_dict), project, resume)

    # ------------------------------------------------------------------------------------------ wandb

    def _init_wandb(self, config: dict[str, Any], project: str, resume: bool) -> None:
        """Start the wandb run; on any failure warn and leave :attr:`wandb_run` as ``None``."""
        mode = resolve_wandb_mode()
        if mode == "disabled":
            return
        try:
            import wandb
        except Exception as exc:  # ImportError, or a broken install
            warnings.warn(f"wandb logging disabled: cannot import wandb ({exc})", RuntimeWarning, stacklevel=3)
            return
        id_file = self.out_dir / WANDB_ID_FILE
        run_id: str | None = None
        if resume and id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip() or None
        try:
            try:
                # console="off": do not wrap stdout/stderr (the stdout line and the tqdm bar stay untouched).
                settings: Any = wandb.Settings(console="off")
            except Exception:
                settings = None
            run = wandb.init(
                project=project,
                config=config,
                dir=str(self.out_dir),
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                reinit="finish_previous",
                settings=settings,
            )
        except Exception as exc:
            msg = f"wandb logging disabled: wandb.init failed ({type(exc).__name__}: {exc})"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            return
        if run is None:
            return
        self.wandb_run = run
        self.wandb_mode = mode
        try:
            id_file.write_text(str(run.id) + "\n", encoding="utf-8")
        except Exception:  # remembering the id is a convenience only
            pass

    # -------------------------------------------------------------------------------------- logging

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log ``metrics`` at outer step ``step`` (JSONL line + stdout line + wandb).

        Values may be python, numpy or 0-d torch scalars (or strings). Non-finite values are written as
        ``null`` in the JSONL file.

        Raises:
            ValueError: if a metric is named ``step`` or ``time``.
            TypeError: if a value is not a scalar.
        """
        if not self.enabled or self._closed:
            return
        clash = _RESERVED & set(metrics)
        if clash:
            raise ValueError(f"metric names {sorted(clash)} are reserved")
        raw = {str(k): _unwrap(str(k), v) for k, v in metrics.items()}
        record: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _to_scalar(k, v) for k, v in raw.items()})
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()
        tqdm.write(format_metrics(int(step), raw), file=sys.stdout)
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(raw, step=int(step))
            except Exception as exc:
                msg = f"wandb logging disabled: run.log failed ({type(exc).__name__}: {exc})"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                self._finish_wandb(exit_code=1)

    def drop_after(self, step: int) -> int:
        """Remove JSONL records with ``"step" > step`` (e.g. logged after the checkpoint being resumed).

        Malformed lines (a partial last line after a crash) are dropped as well. The file is rewritten
        atomically and reopened for appending.

        Returns:
            The number of lines removed.
        """
        if not self.enabled or self._closed:
            return 0
        self._fh.close()
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept: list[str] = []
        for line in lines:
            try:
                rec = json.loads(line)
                if int(rec["step"]) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
        tmp = self.metrics_path.with_name(f".{METRICS_FILE}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.metrics_path)
        self._fh = open(self.metrics_path, "a", encoding="utf-8")
        return len(lines) - len(kept)

    # -------------------------------------------------------------------------------------- closing

    def _finish_wandb(self, exit_code: int | None = None) -> None:
        """Finish the wandb run (if any), swallowing errors."""
        run, self.wandb_run = self.wandb_run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:
            warnings.warn(f"wandb finish failed ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=3)

    def close(self, exit_code: int | None = None) -> None:
        """Close the JSONL file and finish the wandb run (``exit_code != 0`` marks it failed)."""
        if self._closed:
            return
        self._closed = True
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._finish_wandb(exit_code=exit_code)

    def __enter__(self) -> MetricsLogger:
        """Return ``self``."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """:meth:`close`, marking the wandb run failed if the block raised."""
        self.close(exit_code=1 if exc_type is not None else None)


def progress(total: int, initial: int = 0, disable: bool = False) -> tqdm:
    """A tqdm progress bar over outer steps.

    Args:
        total: Total number of outer steps of the run.
        initial: Steps already done (a resumed run starts the bar there).
        disable: Hide the bar (e.g. on ranks other than 0 or in non-interactive logs).
    """
    return tqdm(
        total=total, initial=initial, disable=disable, desc="meta-train", unit="step", dynamic_ncols=True, leave=True
    )
