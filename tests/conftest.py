"""Shared test set-up: one torch thread (``lopt_graphs``, ``meta_train`` and ``benchmarks`` are installed
packages: ``pip install -e ".[dev]"``).

The suite's tensors are tiny: with two intra-op threads on a busy 2-core machine every small op pays for
thread hand-offs (the optimizer tests ran ~15x slower), so every test runs on one thread, restored after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
