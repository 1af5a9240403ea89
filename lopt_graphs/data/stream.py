"""Reproducible, resumable minibatch sampling from in-memory datasets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch

from lopt_graphs.data.embedded import DatasetSplits

__all__ = ["MinibatchStream"]

_STATE_VERSION = 1


class MinibatchStream:
    """Endless stream of random ``(x, y)`` minibatches from one split of a dataset.

    Each epoch draws a fresh permutation from an explicit, seeded CPU
    ``torch.Generator``; batches are consecutive slices of that permutation, so
    examples are sampled without replacement within an epoch. A trailing
    partial batch (fewer than ``batch_size`` examples left) is skipped and a new
    epoch starts, so every batch has exactly ``batch_size`` examples.

    The full sequence of batches is a function of ``seed`` only. Sampling uses
    its own generator, so it neither reads nor disturbs torch's global RNG.
    :meth:`state_dict` / :meth:`load_state_dict` capture the position, letting a
    restored stream continue with exactly the batches the original would yield.

    Args:
        data: Dataset to sample from.
        batch_size: Number of examples per batch; ``1 <= batch_size <= N``.
        seed: Seed of the sampling generator.
        device: Device for the returned batches (the split is copied there once).
            ``None`` keeps the data where it is.
        split: Which split to sample, ``"train"`` or ``"test"``.

    Raises:
        ValueError: If ``batch_size`` is not a positive int, exceeds the split
            size, or ``split`` is invalid.

    Shapes:
        - batch x: ``(batch_size, *data.input_shape)``
        - batch y: ``(batch_size,)``
    """

    def __init__(
        self,
        data: DatasetSplits,
        batch_size: int,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        split: Literal["train", "test"] = "train",
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        x = data.x_train if split == "train" else data.x_test
        y = data.y_train if split == "train" else data.y_test
        n = int(x.shape[0])
        if batch_size > n:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {n} examples in the {split!r} split"
            )
        if device is not None:
            x = x.to(device)
            y = y.to(device)
        self._x = x
        self._y = y
        self._n = n
        self._batch_size = batch_size
        self._seed = int(seed)
        self._split = split
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self._seed)
        self._epoch = -1
        self._position = 0
        self._epoch_start_state: torch.Tensor = self._generator.get_state()
        self._perm: torch.Tensor = torch.empty(0, dtype=torch.int64)
        self._start_epoch()

    # ------------------------------------------------------------------ #
    # Properties
    # ------------------------------------------------------------------ #

    @property
    def batch_size(self) -> int:
        """Number of examples per batch."""
        return self._batch_size

    @property
    def num_examples(self) -> int:
        """Number of examples in the sampled split."""
        return self._n

    @property
    def steps_per_epoch(self) -> int:
        """Number of full batches per epoch (``N // batch_size``)."""
        return self._n // self._batch_size

    @property
    def epoch(self) -> int:
        """Index of the current epoch (0-based)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Index into the current epoch's permutation of the next example."""
        return self._position

    @property
    def device(self) -> torch.device:
        """Device on which batches are returned."""
        return self._x.device

    # ------------------------------------------------------------------ #
    # Sampling
    # ------------------------------------------------------------------ #

    def _start_epoch(self) -> None:
        """Record the generator state, then draw the next epoch's permutation."""
        self._epoch_start_state = self._generator.get_state()
        perm = torch.randperm(self._n, generator=self._generator)
        self._perm = perm.to(self._x.device)
        self._epoch += 1
        self._position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the next minibatch.

        Returns:
            ``(x, y)`` on :attr:`device`.

        Shapes:
            - x: ``(batch_size, *input_shape)``
            - y: ``(batch_size,)``
        """
        if self._position + self._batch_size > self._n:
            self._start_epoch()
        idx = self._perm[self._position : self._position + self._batch_size]
        self._position += self._batch_size
        return self._x[idx], self._y[idx]

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`next`; the stream never raises ``StopIteration``."""
        return self.next()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Return ``self`` (an infinite iterator)."""
        return self

    # ------------------------------------------------------------------ #
    # Checkpointing
    # ------------------------------------------------------------------ #

    def state_dict(self) -> dict[str, Any]:
        """Snapshot of the sampling state.

        The snapshot holds the generator state from *before* the current
        epoch's permutation was drawn, plus the epoch index and position; the
        permutation is recomputed on load. It contains only ints, strings and a
        CPU uint8 tensor, so it can be saved with ``torch.save``.

        Returns:
            A dictionary accepted by :meth:`load_state_dict`.
        """
        return {
            "version": _STATE_VERSION,
            "seed": self._seed,
            "batch_size": self._batch_size,
            "num_examples": self._n,
            "split": self._split,
            "epoch": self._epoch,
            "position": self._position,
            "generator_state": self._epoch_start_state.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot produced by :meth:`state_dict`.

        After loading, this stream yields exactly the batches the original
        stream would have yielded after the snapshot was taken.

        Args:
            state: Output of :meth:`state_dict` (from a stream over the same
                split size and batch size).

        Raises:
            ValueError: If the snapshot is from an incompatible stream or malformed.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported MinibatchStream state version {state.get('version')!r}")
        for key, mine in (
            ("batch_size", self._batch_size),
            ("num_examples", self._n),
            ("split", self._split),
        ):
            if state[key] != mine:
                raise ValueError(
                    f"state_dict {key}={state[key]!r} does not match this stream's {key}={mine!r}"
                )
        position = int(state["position"])
        if not 0 <= position <= self._n:
            raise ValueError(f"state_dict position {position} out of range [0, {self._n}]")
        gen_state = state["generator_state"]
        if not isinstance(gen_state, torch.Tensor):
            raise ValueError("state_dict generator_state must be a torch.Tensor")
        self._generator.set_state(gen_state.detach().to("cpu", torch.uint8).clone())
        self._epoch = int(state["epoch"]) - 1
        self._start_epoch()  # redraws the same permutation and sets epoch
        self._position = position
        self._seed = int(state["seed"])
