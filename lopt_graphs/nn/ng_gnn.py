"""NG-GNN layer: message passing over neurons with edge features updated every layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .aggr import pna_aggregate, pna_aggregate_blocks
from .edge_update import edge_update


class NGGNNLayer(nn.Module):
    """One NG-GNN layer.

    Edge update (:func:`~lopt_graphs.nn.edge_update.edge_update`; node terms are computed on the ``N`` nodes
    before they are gathered to the ``E`` edges)::

        e_ij <- e_ij + W2 relu(W1 e_ij + A h_i + B h_j)

    Messages flow both ways along each weight (forward to the neuron the weight feeds, backward to the
    neuron it reads), FiLM-conditioned on the edge::

        m_fwd = relu(gamma_f(e_ij) * (C h_src) + beta_f(e_ij)),  m_bwd likewise with D h_dst

    Node update with PNA aggregation (mean, max, std; identity and log-degree scalers)::

        h_i <- h_i + MLP([LN(h_i), PNA_fwd(m_fwd), PNA_bwd(m_bwd)])

    Every operation is per node, per edge, or a symmetric aggregation, so the layer is equivariant to any
    permutation of nodes that maps the graph onto itself.
    """

    def __init__(self, hidden: int, edge_hidden: int):
        super().__init__()
        d, de = hidden, edge_hidden
        self.node_terms = nn.Linear(d, 4 * de)  # A, B (edge update), C, D (message sources)
        self.e1 = nn.Linear(de, de)
        self.e2 = nn.Linear(de, de)
        self.film = nn.Linear(de, 4 * de)
        self.norm = nn.LayerNorm(d)
        self.update = nn.Sequential(nn.Linear(d + 12 * de, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor,
                blocks: list[list[int]] | None = None) -> tuple[Tensor, Tensor]:
        """Args: ``h [N, d]``, ``e [E, de]``, ``edge_index [2, E]``; ``blocks`` (optional) lists the dense
        weight blocks ``(edge_start, rows, cols, dst_start, src_start)`` covering all edges, which switches
        aggregation to dense reductions. Returns updated ``(h, e)``."""
        src, dst = edge_index[0], edge_index[1]
        n = h.shape[0]
        a, b, c, d = self.node_terms(h).chunk(4, dim=-1)
        e = edge_update(e, a, b, edge_index, self.e1, self.e2)
        gf, bf, gb, bb = self.film(e).chunk(4, dim=-1)
        m_fwd = ((1 + gf) * c.index_select(0, src) + bf).relu()
        m_bwd = ((1 + gb) * d.index_select(0, dst) + bb).relu()
        if blocks is not None:
            agg = [pna_aggregate_blocks(m_fwd, blocks, n, "dst"), pna_aggregate_blocks(m_bwd, blocks, n, "src")]
        else:
            agg = [pna_aggregate(m_fwd, dst, n), pna_aggregate(m_bwd, src, n)]
        h = h + self.update(torch.cat([self.norm(h), *agg], dim=-1))
        return h, e
