"""Datasets and minibatch streams.

Offline datasets (no network): :func:`load_digits_tensors`,
:func:`load_mnist5k_tensors`, :func:`load_mnist1d_tensors` and the dispatcher
:func:`load_embedded`. Torchvision datasets already on disk:
:func:`load_torchvision`. Reproducible, resumable sampling:
:class:`MinibatchStream`.
"""

from lopt_graphs.data.embedded import (
    EMBEDDED_DATASETS,
    DatasetSplits,
    default_cache_dir,
    load_digits_tensors,
    load_embedded,
    load_mnist1d_tensors,
    load_mnist5k_tensors,
)
from lopt_graphs.data.stream import MinibatchStream
from lopt_graphs.data.vision import TORCHVISION_DATASETS, load_torchvision

__all__ = [
    "EMBEDDED_DATASETS",
    "TORCHVISION_DATASETS",
    "DatasetSplits",
    "MinibatchStream",
    "default_cache_dir",
    "load_digits_tensors",
    "load_embedded",
    "load_mnist1d_tensors",
    "load_mnist5k_tensors",
    "load_torchvision",
]
