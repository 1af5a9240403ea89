"""Checkpoints of the learned update: weights + config + format version.

A checkpoint is a plain dict of tensors, strings and numbers, so ``torch.load(weights_only=True)`` reads
it without unpickling code::

    {"format": "lopt_graphs.learned_update", "format_version": 1,
     "config": LearnedUpdateConfig.to_dict(), "state_dict": {...}, "meta": {...}}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..io import atomic_write
from .learned import LearnedUpdate, LearnedUpdateConfig

FORMAT = "lopt_graphs.learned_update"
FORMAT_VERSION = 1
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
#: The shipped checkpoint that ``ckpt=None`` and the name ``"default"`` load (change the default here: one line).
DEFAULT_CHECKPOINT = "v2_calibrated4_es60_fanin_ortho_conv_h100"
DEFAULT_ALIAS = "default"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of another format or version, or does not match its config."""


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoints shipped in ``lopt_graphs/checkpoints/``, and the alias ``"default"``."""
    return sorted({p.stem for p in CHECKPOINT_DIR.glob("*.pt")} | {DEFAULT_ALIAS})


def shipped_path(name: str | os.PathLike) -> Path | None:
    """The file of shipped checkpoint ``name`` (``"default"``: :data:`DEFAULT_CHECKPOINT`), or ``None`` when
    ``name`` is not a bare shipped name (a path, a name ending in ``.pt``, or no such shipped file)."""
    if not isinstance(name, str) or os.sep in name or name.endswith(".pt"):
        return None
    path = CHECKPOINT_DIR / f"{DEFAULT_CHECKPOINT if name == DEFAULT_ALIAS else name}.pt"
    return path if path.exists() else None


def checkpoint_dict(learned: LearnedUpdate, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of ``learned`` (tensors cloned to CPU)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": learned.cfg.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in learned.state_dict().items()},
            "meta": dict(meta or {})}


def save_checkpoint(learned: LearnedUpdate, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
    """Write ``learned`` atomically (temp file in the same folder, then rename)."""
    obj = checkpoint_dict(learned, meta)
    atomic_write(path, lambda fh: torch.save(obj, fh))


def read_checkpoint(source: str | os.PathLike) -> dict[str, Any]:
    """The raw dict of a checkpoint file or shipped name (``weights_only`` load, no format checks)."""
    shipped = shipped_path(source)
    if shipped is not None:
        path = shipped  # a shipped name wins over a same-named file in the working directory
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"Checkpoint {str(source)!r} not found: not a file, and not one of the shipped "
                                  f"checkpoints {shipped_checkpoints()}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/garbled files
        raise CheckpointError(f"Checkpoint {str(path)!r} is corrupt or not a torch file: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"Checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_learned_update(ckpt: str | os.PathLike | Mapping[str, Any] | None = None,
                        map_location: str | torch.device = "cpu") -> LearnedUpdate:
    """Build a :class:`LearnedUpdate` from a checkpoint.

    Args:
        ckpt: a path, a checkpoint dict, the name of a shipped checkpoint (a bare name such as ``"default"``
            always means the shipped one; write ``"./default"`` for a file), or ``None`` for the default
            (:data:`DEFAULT_CHECKPOINT`, also the name ``"default"``).
        map_location: device of the returned module.

    Raises:
        CheckpointError: missing, corrupt, wrong format or version, or weights not matching the config.
    """
    obj = read_checkpoint(DEFAULT_CHECKPOINT if ckpt is None else ckpt) if not isinstance(ckpt, Mapping) else dict(ckpt)
    if obj.get("format") != FORMAT:
        raise CheckpointError(f"Not a learned-update checkpoint: format is {obj.get('format')!r}, expected "
                              f"{FORMAT!r}")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"Checkpoint format_version {version!r} is not supported (this lopt_graphs reads "
                              f"version {FORMAT_VERSION}); re-save it with a matching lopt_graphs release")
    try:
        cfg = LearnedUpdateConfig.from_dict(obj["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint config is invalid: {exc}") from exc
    learned = LearnedUpdate(cfg)
    try:
        learned.load_state_dict(obj["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"Checkpoint weights do not match its config: {exc}") from exc
    return learned.to(map_location)


def _write_adam_init() -> None:
    """Regenerate ``adam_init``, the untrained initialization (seed 0): exactly Adam at lr 1e-3."""
    torch.manual_seed(0)
    save_checkpoint(LearnedUpdate(), CHECKPOINT_DIR / "adam_init.pt",
                    meta={"trained": False, "seed": 0,
                          "note": "untrained initialization: the update is exactly Adam at lr 1e-3"})


if __name__ == "__main__":
    _write_adam_init()
