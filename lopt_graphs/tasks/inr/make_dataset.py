"""Fit (or load from the cache) an INR dataset and report its PSNR.

Usage::

    python -m lopt_graphs.tasks.inr.make_dataset [--config configs/tasks/inr_dataset.yaml] [key=value ...]

Writes ``<out>/results.json`` (PSNR per split, counts, cache file, timings), ``<out>/config.yaml`` and
``<out>/samples.png`` (images and their INR renderings).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from lopt_graphs.config import check_types
from lopt_graphs.plotting import new_figure, save_figure

from .cli import parse_command, setup_run, write_json
from .data import INRDataConfig, cache_path, data_config_of, load_inr_dataset, validate_data_config


@dataclass(frozen=True)
class MakeDatasetConfig(INRDataConfig):
    """:class:`~lopt_graphs.tasks.inr.data.INRDataConfig` plus run settings.

    Attributes:
        out: output directory.
        threads: torch threads (0: leave torch's default).
        quick: tiny digits setting for tests (overrides dataset/sizes/steps).
        samples: images shown in ``samples.png`` (0: no PNG).
    """

    out: str = "runs/tasks/inr_dataset"
    threads: int = 1
    quick: bool = False
    samples: int = 8

    def __post_init__(self) -> None:
        check_types(self)
        validate_data_config(self)


def quick_data_overrides() -> dict:
    """The tiny setting shared by every ``quick=true`` command: 8x8 digits, few INRs, few steps."""
    return {"dataset": "digits", "val_size": 60, "max_train": 240, "max_test": 100, "fit_steps": 60,
            "augment": 1}


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_command(MakeDatasetConfig, argv, "Fit an INR dataset (one SIREN per image).")
    if cfg.quick:
        import dataclasses
        cfg = dataclasses.replace(cfg, **quick_data_overrides())
    out = setup_run(cfg, cfg.out)
    t0 = time.time()
    dcfg = data_config_of(cfg)
    cached = cache_path(dcfg).is_file()
    ds = load_inr_dataset(dcfg)
    result = {
        "dataset": cfg.dataset, "cache_file": str(cache_path(dcfg)), "was_cached": cached,
        "num_inrs": len(ds), "num_images": int(ds.images.shape[0]),
        "inrs_per_split": {s: int(ds.indices(s).numel()) for s in ("train", "val", "test")},
        "images_per_split": {s: int(ds.indices(s, augmented=False).numel()) for s in ("train", "val", "test")},
        "psnr": ds.psnr_summary(), "fit_seconds": ds.meta.get("fit_seconds"), "seconds": time.time() - t0,
    }
    if cfg.samples:
        result["samples_png"] = str(save_samples(ds, out / "samples.png", cfg.samples))
    write_json(result, out / "results.json")
    print(f"{len(ds)} INRs; PSNR (dB) {result['psnr']['all']}; results in {out / 'results.json'}")
    return result


def save_samples(ds, path, count: int):
    """Save the first ``count`` test images (top row) above their INR renderings (bottom row)."""
    idx = ds.indices("test", augmented=False)[:count]
    with torch.no_grad():
        rend = ds.render(idx).clamp(0, 1)
    fig, axes = new_figure(2, len(idx), figsize=(1.6 * len(idx), 3.4), squeeze=False)
    for j, i in enumerate(idx.tolist()):
        axes[0, j].imshow(ds.images[ds.image_id[i], 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[1, j].imshow(rend[j, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[1, j].set_xlabel(f"{float(ds.psnr[i]):.1f} dB", fontsize=7)
        for a in axes[:, j]:
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("INR")
    return save_figure(fig, path, dpi=100)


if __name__ == "__main__":
    main()
