"""NG-Transformer layer: relational attention over the neural graph with edge features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .aggr import scatter_sum, segment_softmax
from .edge_update import edge_update


class NGTransformerLayer(nn.Module):
    """One NG-Transformer layer (relational attention, Diao & Loynd style, over graph edges).

    Each neuron attends to the neurons it is connected to, in both directions (separate projections for
    the forward and backward direction). Keys and values carry the edge embedding::

        k_ij = K h_j + Ke e_ij,   v_ij = V h_j + Ve e_ij,   a_ij = softmax_j(q_i . k_ij / sqrt(d_head))
        h_i <- h_i + O [sum_j a_ij v_ij (forward), same over backward neighbours]
        h_i <- h_i + FFN(LN(h_i))

    followed by the same edge update as NG-GNN (:func:`~lopt_graphs.nn.edge_update.edge_update`). Attention
    is restricted to graph edges (not all pairs), which keeps the cost linear in the number of weights.
    """

    def __init__(self, hidden: int, edge_hidden: int, heads: int):
        super().__init__()
        d, de = hidden, edge_hidden
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, 2 * d)
        self.kv = nn.Linear(d, 4 * d)
        self.kv_edge = nn.Linear(de, 4 * d)
        self.out = nn.Linear(2 * d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.node_terms = nn.Linear(d, 2 * de)
        self.e1 = nn.Linear(de, de)
        self.e2 = nn.Linear(de, de)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, target: Tensor, n: int) -> Tensor:
        e, d = k.shape
        hd = d // self.heads
        qh = q.index_select(0, target).view(e, self.heads, hd)
        score = (qh * k.view(e, self.heads, hd)).sum(-1) / math.sqrt(hd)
        alpha = segment_softmax(score, target, n)
        return scatter_sum((alpha.unsqueeze(-1) * v.view(e, self.heads, hd)).reshape(e, d), target, n)

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor,
                blocks: list[list[int]] | None = None) -> tuple[Tensor, Tensor]:
        """Args: ``h [N, d]``, ``e [E, de]``, ``edge_index [2, E]`` (``blocks`` is accepted for interface
        parity with :class:`NGGNNLayer` and unused). Returns updated ``(h, e)``."""
        src, dst = edge_index[0], edge_index[1]
        n = h.shape[0]
        x = self.norm1(h)
        q_f, q_b = self.q(x).chunk(2, dim=-1)
        kv = self.kv(x)
        kv_f = kv[:, : 2 * h.shape[1]].index_select(0, src)  # forward: keys/values of the sources
        kv_b = kv[:, 2 * h.shape[1]:].index_select(0, dst)  # backward: of the destinations
        k_f, v_f = kv_f.chunk(2, dim=-1)
        k_b, v_b = kv_b.chunk(2, dim=-1)
        ke_f, ve_f, ke_b, ve_b = self.kv_edge(e).chunk(4, dim=-1)
        fwd = self._attend(q_f, k_f + ke_f, v_f + ve_f, dst, n)
        bwd = self._attend(q_b, k_b + ke_b, v_b + ve_b, src, n)
        h = h + self.out(torch.cat([fwd, bwd], dim=-1))
        h = h + self.ffn(self.norm2(h))
        a, b = self.node_terms(h).chunk(2, dim=-1)
        e = edge_update(e, a, b, edge_index, self.e1, self.e2)
        return h, e
