"""Shared test set-up: the repository root on ``sys.path`` and one torch thread.

The suite's tensors are tiny: with two intra-op threads on a busy 2-core machine every small op pays for
thread hand-offs (the optimizer tests ran ~15x slower), so every test runs on one thread, restored after.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) does not add the root: meta_train/
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
