"""Derive a learned-update checkpoint from another: a new step-multiplier bound, or a re-centred log step.

``lopt-derive src=SRC dst=DST mag_clip=3`` (or ``python -m meta_train.derive ...``) loads ``SRC`` (a path or
shipped name), sets its ``LearnedUpdateConfig.mag_clip`` and writes ``DST`` with the same weights; ``meta``
records the source.

``mag_affine=SCALE,SHIFT`` also maps the head's (scaled) log step multiplier ``u`` to ``SCALE * u + SHIFT``
(:meth:`LearnedUpdate.affine_log_step_`: it rescales the magnitude row of the head's output layer). A head
whose ``u`` sits far beyond ``mag_clip`` is clipped everywhere, so its step is the bound itself and
meta-gradients through the magnitude vanish; a ``SCALE < 1`` and a negative ``SHIFT`` bring ``u`` back inside
the bound, where meta-training can move it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lopt_graphs import config as _cfg
from lopt_graphs.optim import save_checkpoint
from lopt_graphs.optim.checkpoint import read_checkpoint

from .trainer import initial_learned_update


def derive(src: str, dst: str | Path, mag_clip: float, mag_affine: tuple[float, float] | None = None) -> None:
    if not mag_clip > 0:
        raise ValueError(f"Invalid mag_clip: {mag_clip} (expected > 0)")
    if mag_affine is not None:
        scale, shift = (float(v) for v in mag_affine)
        if not (scale > 0 and math.isfinite(scale) and math.isfinite(shift)):  # before reading the source
            raise ValueError(f"Invalid mag_affine: ({scale}, {shift}) (expected a finite SCALE > 0 and a "
                             "finite SHIFT)")
    obj = read_checkpoint(src)
    learned = initial_learned_update(obj, mag_clip)
    meta = {**(obj.get("meta") or {}), "derived_from": str(src), "mag_clip": float(mag_clip)}
    if mag_affine is not None:
        learned.affine_log_step_(scale, shift)
        meta["mag_affine"] = [scale, shift]
    save_checkpoint(learned, dst, meta=meta)


@dataclass(frozen=True)
class DeriveConfig:
    """Keys of ``lopt-derive``.

    Attributes:
        src: checkpoint path or shipped name.
        dst: output path.
        mag_clip: bound of the learned log step multiplier (> 0).
        mag_affine: ``SCALE,SHIFT``: map the log step multiplier ``u`` to ``SCALE * u + SHIFT`` (empty: keep).
        threads: torch intra-op threads (1, as every command; ``0`` keeps torch's default).
    """

    src: str = ""
    dst: str = ""
    mag_clip: float = 0.0
    mag_affine: tuple[float, ...] = ()
    threads: int = 1

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        if len(self.mag_affine) not in (0, 2):
            _cfg.bad_value("mag_affine", self.mag_affine, "SCALE,SHIFT (two floats) or empty")
        if self.threads < 0:
            _cfg.bad_value("threads", self.threads, "an integer >= 0 (0 keeps torch's default)")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``[--config FILE] src=SRC dst=DST mag_clip=X [mag_affine=SCALE,SHIFT]
    [threads=1]``."""
    c = _cfg.parse_command(DeriveConfig, argv, "Copy a learned-update checkpoint with a new mag_clip (and "
                                               "optionally a re-centred log step multiplier).")
    if not (c.src and c.dst):
        raise ValueError("lopt-derive needs src=CHECKPOINT and dst=PATH")
    _cfg.set_threads(c.threads)
    affine = (c.mag_affine[0], c.mag_affine[1]) if c.mag_affine else None
    derive(c.src, c.dst, c.mag_clip, affine)
    extra = f", log step u -> {affine[0]:g} u + {affine[1]:g}" if affine else ""
    print(f"wrote {c.dst} ({c.src} with mag_clip={c.mag_clip}{extra})")


if __name__ == "__main__":
    main()
