"""Derive a learned-update checkpoint from another: a new step-multiplier bound, or a re-centred log step.

``python -m meta_train.derive SRC DST --mag-clip 3`` loads ``SRC`` (a path or shipped name), sets its
``LearnedUpdateConfig.mag_clip`` and writes ``DST`` with the same weights; ``meta`` records the source.

``--mag-affine SCALE SHIFT`` also maps the head's (scaled) log step multiplier ``u`` to ``SCALE * u + SHIFT``
(by rescaling the magnitude row of its output layer). A head whose ``u`` sits far beyond ``mag_clip`` is
clipped everywhere, so its step is the bound itself and meta-gradients through the magnitude vanish; a
``SCALE < 1`` and a negative ``SHIFT`` bring ``u`` back inside the bound, where meta-training can move it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from lopt_graphs.optim import save_checkpoint
from lopt_graphs.optim.checkpoint import read_checkpoint

from .trainer import initial_learned_update


def derive(src: str, dst: str | Path, mag_clip: float, mag_affine: tuple[float, float] | None = None) -> None:
    if not mag_clip > 0:
        raise ValueError(f"Invalid mag_clip: {mag_clip} (expected > 0)")
    if mag_affine is not None:
        scale, shift = (float(v) for v in mag_affine)
        if not (scale > 0 and math.isfinite(scale) and math.isfinite(shift)):
            raise ValueError(f"Invalid mag_affine: ({scale}, {shift}) (expected a finite SCALE > 0 and a "
                             "finite SHIFT)")
    obj = read_checkpoint(src)
    learned = initial_learned_update(obj, mag_clip)
    meta = {**(obj.get("meta") or {}), "derived_from": str(src), "mag_clip": float(mag_clip)}
    if mag_affine is not None:
        with torch.no_grad():  # u = mag_scale * (w2[1] . relu(z) + b2[1])  ->  scale * u + shift
            learned.w2[1].mul_(scale)
            learned.b2[1].mul_(scale).add_(shift / learned.cfg.mag_scale)
        meta["mag_affine"] = [scale, shift]
    save_checkpoint(learned, dst, meta=meta)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Copy a learned-update checkpoint with a new mag_clip (and "
                                             "optionally a re-centred log step multiplier).")
    ap.add_argument("src", help="checkpoint path or shipped name")
    ap.add_argument("dst", help="output path")
    ap.add_argument("--mag-clip", type=float, required=True, help="bound of the learned log step multiplier")
    ap.add_argument("--mag-affine", type=float, nargs=2, metavar=("SCALE", "SHIFT"), default=None,
                    help="map the log step multiplier u to SCALE * u + SHIFT")
    a = ap.parse_args(argv)
    derive(a.src, a.dst, a.mag_clip, a.mag_affine)
    extra = f", log step u -> {a.mag_affine[0]:g} u + {a.mag_affine[1]:g}" if a.mag_affine else ""
    print(f"wrote {a.dst} ({a.src} with mag_clip={a.mag_clip}{extra})")


if __name__ == "__main__":
    main()
