"""The permutation-equivariant encoder shared by every task of the package."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .aggr import scatter_max, scatter_sum
from .config import EncoderConfig
from .embed import GraphEmbedding
from .ng_gnn import NGGNNLayer
from .ng_transformer import NGTransformerLayer


@dataclass
class EncoderOutput:
    """What :class:`NeuralGraphEncoder` returns.

    Attributes:
        node: ``[N, hidden]`` final node embeddings (equivariant).
        edge: ``[E, edge_hidden]`` final edge embeddings (equivariant).
        edge_out: ``[E, K, edge_out]`` per-entry edge outputs, zero where masked (``None`` without a head).
        node_out: ``[N, P, node_out]`` per-slot node outputs, zero in empty slots (``None`` without a head).
        graph_out: ``[B, graph_out]`` pooled readout, one row per graph (invariant; ``None`` without one).
    """

    node: Tensor
    edge: Tensor
    edge_out: Tensor | None = None
    node_out: Tensor | None = None
    graph_out: Tensor | None = None


class NeuralGraphEncoder(nn.Module):
    """Encoder over neural graphs: embedding, ``layers`` NG-GNN or NG-Transformer layers, heads.

    Args:
        cfg: an :class:`EncoderConfig` (or keyword arguments for one).

    Shapes (input: a :class:`~lopt_graphs.graph.NeuralGraph` or a PyG ``Batch`` of them):
        x ``[N, P, node_in]``, node_slot_type ``[N, P]``, edge_index ``[2, E]``, edge_attr ``[E, K, edge_in]``,
        edge_mask ``[E, K]``, node_role/node_pos/node_act ``[N]``, batch ``[N]`` (optional).

    Equivariance: permuting hidden neurons (nodes with ``pos == -1`` within one layer) permutes ``node``,
    ``edge``, ``edge_out`` and ``node_out`` the same way and leaves ``graph_out`` unchanged.
    """

    #: Largest number of weight blocks for which the dense-block aggregation is used.
    max_blocks = 16

    def __init__(self, cfg: EncoderConfig | None = None, **kwargs):
        super().__init__()
        if cfg is None:
            cfg = EncoderConfig(**kwargs)
        elif kwargs:
            raise TypeError("Pass either an EncoderConfig or keyword arguments, not both")
        self.cfg = cfg
        d, de = cfg.hidden, cfg.edge_hidden
        self.embed = GraphEmbedding(cfg)
        if cfg.variant == "gnn":
            self.layers = nn.ModuleList([NGGNNLayer(d, de) for _ in range(cfg.layers)])
        else:
            self.layers = nn.ModuleList([NGTransformerLayer(d, de, cfg.heads) for _ in range(cfg.layers)])
        if cfg.edge_out:
            self.edge_head_nodes = nn.Linear(d, 2 * de)
            self.edge_head_edge = nn.Linear(de, de)
            self.edge_head_out = nn.Linear(de, cfg.edge_out)
        if cfg.node_out:
            self.node_head_in = nn.Linear(d, d)
            self.node_head_out = nn.Linear(d, cfg.node_out)
        if cfg.graph_out:
            self.readout = nn.Sequential(nn.Linear(3 * d + de, d), nn.ReLU(), nn.Linear(d, cfg.graph_out))

    def forward(self, data) -> EncoderOutput:
        """Encode a graph or a batch of graphs (see class docstring for shapes)."""
        if data.edge_index.dim() != 2 or data.edge_index.shape[0] != 2:
            raise ValueError(f"Expected 'edge_index' of shape [2, E] (got {tuple(data.edge_index.shape)})")
        if data.edge_attr.shape[-1] != self.cfg.edge_in or data.x.shape[-1] != self.cfg.node_in:
            raise ValueError(f"Expected {self.cfg.node_in} node and {self.cfg.edge_in} edge features per entry "
                             f"(got {data.x.shape[-1]} and {data.edge_attr.shape[-1]})")
        h, e, slot_emb, entry_emb = self.embed(data.x, data.node_slot_type, data.edge_attr, data.edge_mask,
                                               data.node_role, data.node_pos, data.node_act,
                                               getattr(data, "edge_entries", None))
        ei = data.edge_index
        blocks = getattr(data, "edge_blocks", None)
        # Dense-block aggregation pays off for a few large weights; many small graphs use scatters.
        blocks = blocks.tolist() if blocks is not None and 0 < blocks.shape[0] <= self.max_blocks else None
        for layer in self.layers:
            h, e = layer(h, e, ei, blocks)
        out = EncoderOutput(node=h, edge=e)
        if self.cfg.edge_out:
            a, b = self.edge_head_nodes(h).chunk(2, dim=-1)
            ctx = self.edge_head_edge(e) + a.index_select(0, ei[1]) + b.index_select(0, ei[0])
            z = (ctx.unsqueeze(1) + entry_emb).relu()
            out.edge_out = self.edge_head_out(z) * data.edge_mask.unsqueeze(-1).to(z.dtype)
        if self.cfg.node_out:
            z = (self.node_head_in(h).unsqueeze(1) + slot_emb).relu()
            filled = (data.node_slot_type > 0).unsqueeze(-1).to(z.dtype)
            out.node_out = self.node_head_out(z) * filled
        if self.cfg.graph_out:
            batch = getattr(data, "batch", None)
            if batch is None:
                batch = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
            nb = int(data.num_graphs) if hasattr(data, "num_graphs") and batch is not None else 1
            cnt = scatter_sum(h.new_ones(h.shape[0], 1), batch, nb).clamp(min=1)
            ecnt_batch = batch.index_select(0, ei[0])
            ecnt = scatter_sum(e.new_ones(e.shape[0], 1), ecnt_batch, nb).clamp(min=1)
            pooled = torch.cat([
                scatter_sum(h, batch, nb) / cnt, scatter_max(h, batch, nb), scatter_sum(h, batch, nb) / cnt.sqrt(),
                scatter_sum(e, ecnt_batch, nb) / ecnt,
            ], dim=-1)
            out.graph_out = self.readout(pooled)
        return out

    def extra_repr(self) -> str:
        return f"variant={self.cfg.variant}, hidden={self.cfg.hidden}, layers={self.cfg.layers}"
