"""Crash-safe checkpoints of a meta-training run.

Checkpoints are written atomically (temporary file in the same directory, ``fsync``, ``os.replace``)
so ``path`` always holds either the previous or the new complete checkpoint, and are loaded with
``torch.load(weights_only=True)``: they may only contain tensors, ints, floats, bools, strings,
``None`` and (nested) lists/tuples/dicts of those. Anything else (numpy arrays, dataclasses, ...) is
rejected at *save* time, while the previous checkpoint is still intact.

Every checkpoint is a dict with at least::

    {"format": "lopt_graphs.meta_train", "format_version": 2, "step": int, "config": dict, ...}

:func:`make_checkpoint` fills in the format keys.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lopt_graphs.config import CheckedConfig, parse_command, set_threads
from lopt_graphs.io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKPOINT_NAME",
    "REQUIRED_KEYS",
    "CheckpointCorruptError",
    "ResumePointConfig",
    "latest_checkpoint",
    "load_checkpoint",
    "make_checkpoint",
    "resume_point",
    "rng_state",
    "save_checkpoint_atomic",
    "set_rng_state",
]

#: Value of the ``format`` key of every checkpoint.
CHECKPOINT_FORMAT = "lopt_graphs.meta_train"
#: Value of the ``format_version`` key this code writes and accepts (2: inner runs stored as run groups).
CHECKPOINT_FORMAT_VERSION = 2
#: File name of the checkpoint inside a run's output directory.
CHECKPOINT_NAME = "ckpt.pt"
#: Keys every checkpoint dict must have.
REQUIRED_KEYS: tuple[str, ...] = ("format", "format_version", "step", "config")


class CheckpointCorruptError(RuntimeError):
    """A checkpoint is missing, unreadable, not ``weights_only``-loadable or of the wrong format."""


def make_checkpoint(step: int, config: dict[str, Any], **payload: Any) -> dict[str, Any]:
    """Return a checkpoint dict with the format keys, ``step``, ``config`` and ``payload`` entries.

    Args:
        step: Number of completed outer steps.
        config: The resolved config as a plain dict (see :func:`meta_train.config.config_to_dict`).
        **payload: Further entries, e.g. ``theta``, ``outer_opt``, ``rng``, the inner runs' state.
    """
    reserved = set(REQUIRED_KEYS) & set(payload)
    if reserved:
        raise ValueError(f"payload may not override the reserved checkpoint keys {sorted(reserved)}")
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": int(step),
        "config": dict(config),
        **payload,
    }


def _fsync_dir(directory: Path) -> None:
    """Best-effort ``fsync`` of a directory so a rename in it survives a power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint_atomic(obj: dict[str, Any], path: str | os.PathLike[str], verify: bool = True) -> str:
    """Save ``obj`` with :func:`torch.save` to ``path`` atomically.

    The data goes to a temporary file in the destination directory, which is flushed, ``fsync``-ed
    and then renamed over ``path`` with :func:`os.replace`; on any error the temporary file is removed
    and ``path`` is left untouched. Parent directories are created.

    Args:
        obj: The checkpoint dict; it must have the keys :data:`REQUIRED_KEYS` with the right format
            (build it with :func:`make_checkpoint`).
        path: Destination file.
        verify: Re-load the temporary file with ``weights_only=True`` before the rename, so a
            checkpoint that could not be resumed from never replaces a good one.

    Returns:
        ``str(path)``.

    Raises:
        ValueError: if ``obj`` is not a valid checkpoint dict or is not ``weights_only``-loadable.
    """
    _check_structure(obj, where="checkpoint to save")
    path = Path(path)

    def check(tmp: str) -> None:
        if not verify:
            return
        try:
            torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"checkpoint for {str(path)!r} is not loadable with weights_only=True; store only "
                f"tensors, numbers, strings, None and lists/dicts of them ({type(exc).__name__}: "
                f"{_first_line(exc)})"
            ) from exc

    atomic_write(path, lambda fh: torch.save(obj, fh), check=check)
    _fsync_dir(path.parent)
    return str(path)


def _first_line(exc: BaseException, limit: int = 240) -> str:
    """Short, informative summary of an exception message (torch's unpickling errors are very long).

    For ``weights_only`` unpickling errors the ``WeightsUnpickler error:`` detail is used (e.g.
    ``Unsupported global: ...``); otherwise the first non-empty line. Cut to ``limit`` characters.
    """
    msg = str(exc).replace("\x1b[1m", "").replace("\x1b[0m", "")
    marker = "WeightsUnpickler error:"
    if marker in msg:
        msg = msg.split(marker, 1)[1]
    line = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
    if marker in str(exc) and line.startswith("Unsupported global"):
        line = line.split(" was not an allowed global", 1)[0] + " is not allowed"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_structure(obj: Any, where: str) -> None:
    """Raise :class:`ValueError` unless ``obj`` is a dict with the required keys and format."""
    problem = _structure_problem(obj)
    if problem:
        raise ValueError(f"invalid {where}: {problem}")


def _structure_problem(obj: Any) -> str | None:
    """Describe what is wrong with the structure of a checkpoint dict, or ``None`` if it is fine."""
    if not isinstance(obj, dict):
        return f"expected a dict, got {type(obj).__name__}"
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        return f"missing required keys {missing} (has {sorted(map(str, obj))})"
    if obj["format"] != CHECKPOINT_FORMAT:
        return f"format is {obj['format']!r}, expected {CHECKPOINT_FORMAT!r}"
    if obj["format_version"] != CHECKPOINT_FORMAT_VERSION:
        return f"format_version is {obj['format_version']!r}, expected {CHECKPOINT_FORMAT_VERSION}"
    if not isinstance(obj["step"], int) or isinstance(obj["step"], bool) or obj["step"] < 0:
        return f"step must be an int >= 0, got {obj['step']!r}"
    if not isinstance(obj["config"], dict):
        return f"config must be a dict, got {type(obj['config']).__name__}"
    return None


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint_atomic`.

    Args:
        path: Checkpoint file.
        map_location: Where tensors are loaded (default CPU; move them to the run's device later).

    Raises:
        CheckpointCorruptError: naming ``path``, if the file is missing, truncated, not a torch file,
            not ``weights_only``-loadable, or not a checkpoint dict of the expected format and version.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointCorruptError(f"checkpoint {str(p)!r} does not exist or is not a file")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointCorruptError(
            f"checkpoint {str(p)!r} cannot be loaded with weights_only=True: it is corrupt, truncated "
            f"or holds non-tensor objects ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    return check_checkpoint(obj, p)


def check_checkpoint(obj: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """``obj`` (loaded from ``path``) if it has the structure of a meta-training checkpoint.

    Raises:
        CheckpointCorruptError: naming ``path`` and what is wrong.
    """
    problem = _structure_problem(obj)
    if problem:
        raise CheckpointCorruptError(f"checkpoint {str(path)!r} is not a valid meta-training checkpoint: {problem}")
    return obj


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> str | None:
    """Path of ``out_dir/ckpt.pt`` if that file exists, else ``None``."""
    p = Path(out_dir) / CHECKPOINT_NAME
    return str(p) if p.is_file() else None


# ----------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Capture the torch CPU (and CUDA, if available), python ``random`` and numpy global RNG states.

    The result only holds tensors, ints, floats, strings, ``None`` and lists, so it can be stored in a
    checkpoint loaded with ``weights_only=True``. Restore it with :func:`set_rng_state`.
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss_next": gauss_next},
    }
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional for torch
        state["numpy"] = None
    else:
        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`rng_state`.

    The numpy state is restored only if numpy is importable and the state has one; CUDA states only if
    CUDA is available with the same number of devices.

    Raises:
        ValueError: if ``state`` lacks the ``torch`` or ``python`` entries.
    """
    missing = [k for k in ("torch", "python") if k not in state]
    if missing:
        raise ValueError(f"RNG state is missing entries {missing}")
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    py = state["python"]
    gauss_next = py["gauss_next"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), gauss_next))
    np_state = state.get("numpy")
    if np_state is not None:
        try:
            import numpy as np
        except ImportError:  # pragma: no cover
            pass
        else:
            keys = torch.as_tensor(np_state["keys"]).cpu().numpy().astype(np.uint32)
            np.random.set_state(
                (
                    np_state["kind"],
                    keys,
                    int(np_state["pos"]),
                    int(np_state["has_gauss"]),
                    float(np_state["cached_gaussian"]),
                )
            )
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda_states])


def resume_point(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write a small copy of the meta-training checkpoint ``src`` without its inner runs (their parameters,
    optimizer states and PES member trajectories are most of its size): resuming from it continues the
    meta-parameters, outer optimizer, RNG states and validation record exactly and starts fresh inner runs.
    Meant to be committed between sessions. Returns ``dst``."""
    ck = load_checkpoint(src)
    ck["runs"] = None
    save_checkpoint_atomic(ck, dst)
    return Path(dst)


@dataclass(frozen=True)
class ResumePointConfig(CheckedConfig):
    """Keys of ``python -m meta_train.checkpointing`` (write a resume point, see :func:`resume_point`).

    Attributes:
        src: a meta-training checkpoint (a run's ``ckpt.pt``).
        dst: the resume point to write.
        threads: torch intra-op threads (1, as every command; ``0`` keeps torch's default).
    """

    src: str = ""
    dst: str = ""
    threads: int = 1


def main(argv: Sequence[str] | None = None) -> Path:
    """``[--config FILE] src=CKPT dst=PATH``: write a resume point; returns ``dst``."""
    cfg = parse_command(ResumePointConfig, argv, "Write a resume point: a meta-training checkpoint without its "
                                                 "inner runs.")
    if not (cfg.src and cfg.dst):
        raise ValueError("a resume point needs src=CHECKPOINT and dst=PATH")
    set_threads(cfg.threads)
    out = resume_point(cfg.src, cfg.dst)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return out


if __name__ == "__main__":
    main()
