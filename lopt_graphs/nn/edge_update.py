"""The edge update shared by the NG-GNN and NG-Transformer layers."""

from __future__ import annotations

from torch import Tensor, nn


def edge_update(e: Tensor, a: Tensor, b: Tensor, edge_index: Tensor, e1: nn.Linear, e2: nn.Linear) -> Tensor:
    """``e_ij <- e_ij + W2 relu(W1 e_ij + A h_i + B h_j)`` (``i`` the neuron the weight feeds, ``j`` the one it
    reads), the node terms computed on the ``N`` nodes before they are gathered to the ``E`` edges.

    Args:
        e: edge features ``[E, de]``.
        a, b: node terms ``A h`` and ``B h`` ``[N, de]`` (gathered at each edge's destination / source).
        edge_index: ``[2, E]`` (row 0 sources, row 1 destinations).
        e1, e2: the layer's ``W1`` and ``W2`` (``de -> de``; their names stay the layer's ``e1``/``e2``, which
            checkpoints' state_dict keys rely on).

    Returns:
        The updated edge features ``[E, de]``.
    """
    src, dst = edge_index[0], edge_index[1]
    return e + e2((e1(e) + a.index_select(0, dst) + b.index_select(0, src)).relu())
