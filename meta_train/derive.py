"""Derive a learned-update checkpoint from another with a different step-multiplier bound.

``python -m meta_train.derive SRC DST --mag-clip 3`` loads ``SRC`` (a path or shipped name), sets its
``LearnedUpdateConfig.mag_clip`` and writes ``DST`` with the same weights; ``meta`` records the source.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lopt_graphs.optim import save_checkpoint
from lopt_graphs.optim.checkpoint import read_checkpoint

from .trainer import initial_learned_update


def derive(src: str, dst: str | Path, mag_clip: float) -> None:
    if not mag_clip > 0:
        raise ValueError(f"Invalid mag_clip: {mag_clip} (expected > 0)")
    obj = read_checkpoint(src)
    learned = initial_learned_update(obj, mag_clip)
    meta = {**(obj.get("meta") or {}), "derived_from": str(src), "mag_clip": float(mag_clip)}
    save_checkpoint(learned, dst, meta=meta)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Copy a learned-update checkpoint with a new mag_clip.")
    ap.add_argument("src", help="checkpoint path or shipped name")
    ap.add_argument("dst", help="output path")
    ap.add_argument("--mag-clip", type=float, required=True, help="bound of the learned log step multiplier")
    a = ap.parse_args(argv)
    derive(a.src, a.dst, a.mag_clip)
    print(f"wrote {a.dst} ({a.src} with mag_clip={a.mag_clip})")


if __name__ == "__main__":
    main()
