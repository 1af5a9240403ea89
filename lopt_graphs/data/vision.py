"""Standard torchvision image-classification datasets, loaded into memory.

By default nothing is downloaded (``download=False``): the files must already be
present under ``root`` in torchvision's usual layout (e.g.
``root/MNIST/raw/...``, ``root/FashionMNIST/raw/...``,
``root/cifar-10-batches-py/...``). Missing files raise a
:class:`FileNotFoundError` explaining how to obtain them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from lopt_graphs.data.embedded import DatasetSplits

__all__ = ["TORCHVISION_DATASETS", "load_torchvision"]

#: name -> (torchvision class name, per-example channel-first shape)
TORCHVISION_DATASETS: dict[str, tuple[str, tuple[int, ...]]] = {
    "mnist": ("MNIST", (1, 28, 28)),
    "fashion_mnist": ("FashionMNIST", (1, 28, 28)),
    "cifar10": ("CIFAR10", (3, 32, 32)),
}


def _images_to_tensor(data: Any, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Convert a torchvision ``.data`` array of uint8 pixels to float32 in ``[0, 1]``.

    Args:
        data: ``torch.Tensor`` ``(N, H, W)`` (MNIST-like) or ``numpy`` array
            ``(N, H, W, C)`` (CIFAR-like), dtype uint8.
        input_shape: Target channel-first per-example shape ``(C, H, W)``.

    Returns:
        Float32 tensor scaled by ``1 / 255``.

    Shapes:
        - return: ``(N, C, H, W)``
    """
    t = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
    if t.dim() == 3:  # (N, H, W) -> (N, 1, H, W)
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[-1] == input_shape[0] and t.shape[1] != input_shape[0]:
        t = t.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    t = t.to(torch.float32).div_(255.0).contiguous()
    if tuple(t.shape[1:]) != input_shape:
        raise ValueError(f"unexpected image shape {tuple(t.shape[1:])}, expected {input_shape}")
    return t


def _labels_to_tensor(targets: Any) -> torch.Tensor:
    """Convert torchvision targets (tensor or list) to an int64 tensor of shape ``(N,)``."""
    if isinstance(targets, torch.Tensor):
        return targets.to(torch.int64).reshape(-1).clone()
    return torch.as_tensor(np.asarray(targets), dtype=torch.int64).reshape(-1)


def load_torchvision(
    name: str,
    root: str | os.PathLike[str],
    train_limit: int | None = None,
    *,
    download: bool = False,
) -> DatasetSplits:
    """Load MNIST, Fashion-MNIST or CIFAR-10 from torchvision files on disk.

    Args:
        name: One of ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``.
        root: Directory passed to ``torchvision.datasets`` as ``root``.
        train_limit: If given, keep only the first ``train_limit`` training
            examples (the test split is always complete).
        download: Forwarded to torchvision. Defaults to ``False`` so that no
            network access happens unless explicitly requested.

    Returns:
        Splits with pixels in ``[0, 1]``, channel-first: ``input_shape`` is
        ``(1, 28, 28)`` for the MNISTs and ``(3, 32, 32)`` for CIFAR-10.

    Shapes:
        - x_train: ``(N_train, C, H, W)``
        - y_train: ``(N_train,)``
        - x_test: ``(N_test, C, H, W)``
        - y_test: ``(N_test,)``

    Raises:
        ValueError: If ``name`` is unknown or ``train_limit`` is not positive.
        FileNotFoundError: If the dataset files are not present under ``root``.
    """
    if name not in TORCHVISION_DATASETS:
        raise ValueError(
            f"unknown torchvision dataset {name!r}; valid choices: {sorted(TORCHVISION_DATASETS)}"
        )
    if train_limit is not None and train_limit <= 0:
        raise ValueError(f"train_limit must be a positive integer or None, got {train_limit!r}")

    import torchvision.datasets as tvd

    cls_name, input_shape = TORCHVISION_DATASETS[name]
    cls = getattr(tvd, cls_name)
    root_str = os.fspath(root)
    try:
        train_ds = cls(root_str, train=True, download=download)
        test_ds = cls(root_str, train=False, download=download)
    except RuntimeError as err:
        # torchvision reports missing/corrupt files as RuntimeError("Dataset not found ...").
        raise FileNotFoundError(
            f"{cls_name} ({name!r}) was not found under root {os.path.abspath(root_str)!r} "
            f"(torchvision said: {err}). To fix: download it with torchvision on a machine "
            f"with internet access, e.g. torchvision.datasets.{cls_name}({root_str!r}, "
            f"train=True, download=True) and the same with train=False, then copy the "
            f"directory here; or call load_torchvision(..., download=True) if this machine "
            f"has network access; or use an offline embedded dataset via "
            f"lopt_graphs.data.load_embedded('digits' | 'mnist5k' | 'mnist1d')."
        ) from err

    x_train = _images_to_tensor(train_ds.data, input_shape)
    y_train = _labels_to_tensor(train_ds.targets)
    if train_limit is not None:
        x_train = x_train[:train_limit].clone()
        y_train = y_train[:train_limit].clone()
    return DatasetSplits(
        x_train=x_train,
        y_train=y_train,
        x_test=_images_to_tensor(test_ds.data, input_shape),
        y_test=_labels_to_tensor(test_ds.targets),
        name=name,
        input_shape=input_shape,
        num_classes=len(train_ds.classes),
    )
