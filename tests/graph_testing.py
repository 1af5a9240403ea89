"""Helpers shared by test folders (``tests/`` is on ``sys.path``: it holds the rootdir ``conftest.py``, and
pytest's default import mode puts that folder first): a residual block and a non-identity permutation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lopt_graphs.graph import GraphSpec


class Residual(nn.Module):
    """``h + f(h)``."""

    def __init__(self, *mods: nn.Module) -> None:
        super().__init__()
        self.f = nn.Sequential(*mods)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.f(h)


def nontrivial_perm(spec: GraphSpec, include: str, seed: int) -> Tensor:
    """A node permutation of ``spec`` (over the ``include`` neurons) drawn from ``seed`` that is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(100):
        perm = spec.random_node_permutation(gen, include=include)  # type: ignore[arg-type]
        if not torch.equal(perm, torch.arange(spec.num_nodes)):
            return perm
    raise AssertionError("could not draw a non-identity permutation")
