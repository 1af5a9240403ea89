"""Tests for the offline datasets and the torchvision loader."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lopt_graphs.data import (
    DatasetSplits,
    load_digits_tensors,
    load_embedded,
    load_mnist1d_tensors,
    load_mnist5k_tensors,
    load_torchvision,
)
from lopt_graphs.data.embedded import _generate_mnist1d, _mnist1d_arrays

MNIST1D_N = 500  # small, fast generation for tests


def _check_splits(s: DatasetSplits, name: str, shape: tuple[int, ...], total: int) -> None:
    assert s.name == name
    assert s.input_shape == shape
    assert s.num_classes == 10
    assert s.num_train + s.num_test == total
    assert s.x_train.dtype == torch.float32 and s.x_test.dtype == torch.float32
    assert s.y_train.dtype == torch.int64 and s.y_test.dtype == torch.int64
    assert tuple(s.x_train.shape) == (s.num_train, *shape)
    assert tuple(s.x_test.shape) == (s.num_test, *shape)
    for y in (s.y_train, s.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < s.num_classes
    assert set(s.y_train.tolist()) == set(range(10))


def _assert_same(a: DatasetSplits, b: DatasetSplits) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize(
    ("loader", "name", "shape", "total", "scale"),
    [
        (load_digits_tensors, "digits", (1, 8, 8), 1797, 16),
        (load_mnist5k_tensors, "mnist5k", (1, 28, 28), 5000, 255),
    ],
)
def test_image_loaders_shapes_ranges(loader, name, shape, total, scale) -> None:
    s = loader(generator_seed=0)
    _check_splits(s, name, shape, total)
    assert s.num_test == round(total * 0.2)
    for x in (s.x_train, s.x_test):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        # Values are integer pixel levels divided by the source's max level.
        assert torch.allclose(x * scale, torch.round(x * scale), atol=1e-4)


@pytest.mark.parametrize("loader", [load_digits_tensors, load_mnist5k_tensors])
def test_image_loaders_determinism(loader) -> None:
    a, b, c = loader(generator_seed=3), loader(generator_seed=3), loader(generator_seed=4)
    _assert_same(a, b)
    assert not torch.equal(a.y_train, c.y_train)
    # Same underlying examples, only the split differs.
    assert torch.equal(
        torch.sort(torch.cat([a.y_train, a.y_test])).values,
        torch.sort(torch.cat([c.y_train, c.y_test])).values,
    )
    # Returned tensors are independent copies: mutating one result is harmless.
    a.x_train.zero_()
    _assert_same(b, loader(generator_seed=3))


def test_test_fraction_validation() -> None:
    s = load_digits_tensors(test_fraction=0.5)
    assert s.num_test == round(1797 * 0.5)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="test_fraction"):
            load_digits_tensors(test_fraction=bad)


def test_flat_and_to() -> None:
    s = load_digits_tensors()
    f = s.flat()
    assert f.input_shape == (64,) and f.input_dim == 64
    assert tuple(f.x_train.shape) == (s.num_train, 64)
    assert torch.equal(f.x_train, s.x_train.reshape(s.num_train, -1))
    assert f.name == s.name and f.num_classes == s.num_classes
    assert s.input_shape == (1, 8, 8)  # original untouched
    f.x_train.zero_()
    assert float(s.x_train.max()) == 1.0  # flat() copies
    assert s.to("cpu").x_train.device.type == "cpu"


def test_dataset_splits_validation() -> None:
    x = torch.zeros(4, 1, 2)
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="input_shape"):
        DatasetSplits(x, y, x, y, name="t", input_shape=(2,), num_classes=2)
    with pytest.raises(ValueError, match="float32"):
        DatasetSplits(x.double(), y, x, y, name="t", input_shape=(1, 2), num_classes=2)
    with pytest.raises(ValueError, match="examples"):
        DatasetSplits(x, y[:3], x, y, name="t", input_shape=(1, 2), num_classes=2)


def test_mnist1d_shapes_and_determinism(tmp_path: Path) -> None:
    s = load_mnist1d_tensors(0, num_samples=MNIST1D_N, disk_cache=False)
    _check_splits(s, "mnist1d", (1, 40), MNIST1D_N)
    assert s.num_test == MNIST1D_N // 5
    assert torch.isfinite(s.x_train).all()
    all_x = torch.cat([s.x_train, s.x_test])
    assert abs(float(all_x.mean())) < 1e-3 and abs(float(all_x.std()) - 1.0) < 1e-2

    # Generation itself (bypassing the in-memory cache) is deterministic per seed.
    x0, y0 = _generate_mnist1d(0, MNIST1D_N)
    x0b, y0b = _generate_mnist1d(0, MNIST1D_N)
    x1, _ = _generate_mnist1d(1, MNIST1D_N)
    assert np.array_equal(x0, x0b) and np.array_equal(y0, y0b)
    assert not np.array_equal(x0, x1)
    assert np.allclose(all_x.reshape(MNIST1D_N, 40).numpy(), x0.astype(np.float32))


def test_mnist1d_preserves_global_rng() -> None:
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    _generate_mnist1d(5, 100)
    assert (random.random(), np.random.rand()) == expected


def test_mnist1d_disk_cache(tmp_path: Path) -> None:
    a = load_mnist1d_tensors(7, num_samples=MNIST1D_N, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"mnist1d_v1_seed7_n{MNIST1D_N}.npz"]  # no temp files left behind
    _mnist1d_arrays.cache_clear()
    b = load_mnist1d_tensors(7, num_samples=MNIST1D_N, cache_dir=tmp_path)  # read from disk
    _assert_same(a, b)
    # A corrupt cache file is ignored (with a warning) and regenerated.
    (tmp_path / files[0]).write_bytes(b"garbage")
    _mnist1d_arrays.cache_clear()
    with pytest.warns(UserWarning, match="unreadable"):
        c = load_mnist1d_tensors(7, num_samples=MNIST1D_N, cache_dir=tmp_path)
    _assert_same(a, c)


def test_mnist1d_bad_num_samples() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        load_mnist1d_tensors(num_samples=5, disk_cache=False)


def test_load_embedded_dispatch() -> None:
    _assert_same(load_embedded("digits", seed=2), load_digits_tensors(generator_seed=2))
    assert load_embedded("mnist5k").input_shape == (1, 28, 28)


def test_load_embedded_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"'cifar100'.*digits.*mnist1d.*mnist5k"):
        load_embedded("cifar100")


# --------------------------------------------------------------------------- #
# torchvision
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_torchvision_missing_files(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_torchvision(name, str(tmp_path))
    msg = str(info.value)
    assert name in msg
    assert str(tmp_path) in msg
    assert "download" in msg
    assert "load_embedded" in msg


def test_torchvision_unknown_and_bad_limit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'svhn'"):
        load_torchvision("svhn", tmp_path)
    with pytest.raises(ValueError, match="train_limit"):
        load_torchvision("mnist", tmp_path, train_limit=0)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 array in the big-endian IDX format used by MNIST."""
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_torchvision_loads_fake_mnist(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = {"train": rng.integers(0, 256, (12, 28, 28)), "t10k": rng.integers(0, 256, (5, 28, 28))}
    imgs["train"][0, 0, 0] = 255
    labels = {"train": np.arange(12) % 10, "t10k": np.arange(5)}
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", imgs[split])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])

    s = load_torchvision("mnist", tmp_path, train_limit=10)
    assert s.name == "mnist" and s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert s.num_train == 10 and s.num_test == 5
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert float(s.x_train.max()) == 1.0 and float(s.x_train.min()) >= 0.0
    expected = torch.from_numpy(imgs["train"][:10].astype(np.float32) / 255.0).unsqueeze(1)
    assert torch.allclose(s.x_train, expected)
    assert s.y_test.tolist() == [0, 1, 2, 3, 4]
