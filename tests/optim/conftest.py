"""Fixtures of the optimizer tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Run on one intra-op thread (restored afterwards).

    The graphs are tiny: with two threads on a busy 2-core machine every small op pays for thread
    hand-offs, and the suite ran ~15x slower than on one thread.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
