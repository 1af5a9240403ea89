"""Input embeddings of neural graphs: node slots, edge entries, roles and positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graph.spec import ACTIVATIONS, NODE_SLOTS
from .config import EncoderConfig


class GraphEmbedding(nn.Module):
    """Embeds a :class:`~lopt_graphs.graph.NeuralGraph` into node ``[N, hidden]`` and edge
    ``[E, edge_hidden]`` vectors.

    * Node slots (biases, norm parameters) are embedded with their type and summed over filled slots;
      the neuron's role (input/hidden/output) and activation are added. Input and output neurons get a
      learned positional embedding; hidden neurons (``pos == -1``) get none, which is what makes the encoder
      equivariant to hidden-neuron permutations.
    * Edge entries (a weight, or a kernel entry) are embedded with a learned kernel-position embedding,
      passed through a ReLU (``entry_nonlinearity``) and averaged over valid entries (DeepSets), then through
      an MLP.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        d, de = cfg.hidden, cfg.edge_hidden
        self.slot_lin = nn.Linear(cfg.node_in, d)
        self.slot_type = nn.Embedding(len(NODE_SLOTS) + 1, d)
        self.role = nn.Embedding(3, d)
        self.act = nn.Embedding(len(ACTIVATIONS), d)
        self.pos = nn.Embedding(3 * cfg.max_positions, d)
        self.entry_lin = nn.Linear(cfg.edge_in, de)
        self.entry_pos = nn.Embedding(cfg.max_kernel, de)
        self.edge_mlp = nn.Sequential(nn.Linear(de, de), nn.ReLU(), nn.Linear(de, de))
        self.node_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def entries(self, edge_attr: Tensor) -> Tensor:
        """Per-entry embeddings ``[E, K, edge_hidden]`` (used by the edge head too)."""
        k = edge_attr.shape[1]
        emb = self.entry_lin(edge_attr)
        kp = torch.arange(min(k, self.cfg.max_kernel), device=edge_attr.device)
        pos = self.entry_pos(kp)
        if k > self.cfg.max_kernel:
            pos = torch.cat([pos, pos.new_zeros(k - self.cfg.max_kernel, pos.shape[-1])])
        return emb + pos

    def slots(self, x: Tensor, slot_type: Tensor) -> Tensor:
        """Per-slot embeddings ``[N, P, hidden]`` (used by the node head too)."""
        return self.slot_lin(x) + self.slot_type(slot_type)

    def mean_positions(self, edge_entries: Tensor) -> Tensor:
        """``[E, de]`` mean positional embedding of each edge's ``S`` entries (``edge_entries [E]``); entries
        at or beyond ``max_kernel`` have none."""
        smax = int(edge_entries.max()) if edge_entries.numel() else 1
        k = torch.arange(smax, device=edge_entries.device)
        pos = self.entry_pos(k.clamp(max=self.cfg.max_kernel - 1)) * (k < self.cfg.max_kernel).unsqueeze(-1)
        table = pos.cumsum(0) / (k + 1).unsqueeze(-1)  # row s-1: mean over the first s entries
        return table.index_select(0, (edge_entries - 1).clamp(min=0))

    def forward(self, x: Tensor, slot_type: Tensor, edge_attr: Tensor, edge_mask: Tensor, node_role: Tensor,
                node_pos: Tensor, node_act: Tensor, edge_entries: Tensor | None = None,
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns ``(h [N, d], e [E, de], slot_emb [N, P, d], entry_emb [E, K, de])``.

        ``edge_entries`` (optional, ``[E]``) marks a pooled graph (see
        :func:`lopt_graphs.graph.coarsen.pooled_neural_graph`): ``edge_attr [E, 1, F]`` holds each edge's mean
        entry and ``edge_entries`` its entry count; exact only without ``entry_nonlinearity``."""
        if edge_entries is not None and self.cfg.entry_nonlinearity:
            raise ValueError("A pooled graph (edge_entries given) is exact only with entry_nonlinearity=False; "
                             "build the full graph with lopt_graphs.graph.neural_graph instead")
        if self.cfg.position_overflow == "wrap":
            node_pos = torch.where(node_pos >= 0, node_pos % self.cfg.max_positions, node_pos)
        elif node_pos.numel() and int(node_pos.max()) >= self.cfg.max_positions:
            raise ValueError(f"A neuron has positional id {int(node_pos.max())}, beyond max_positions="
                             f"{self.cfg.max_positions}; build the encoder with a larger max_positions or "
                             f"position_overflow='wrap'")
        slot_emb = self.slots(x, slot_type)
        filled = (slot_type > 0).unsqueeze(-1).to(slot_emb.dtype)
        h = (slot_emb * filled).sum(1) + self.role(node_role) + self.act(node_act)
        has_pos = (node_pos >= 0).unsqueeze(-1).to(h.dtype)
        h = h + has_pos * self.pos(node_role * self.cfg.max_positions + node_pos.clamp(min=0))
        h = h + self.node_mlp(h)
        if edge_entries is not None:
            entry_emb = self.entry_lin(edge_attr)
            e = entry_emb[:, 0] + self.mean_positions(edge_entries)
            return h, e + self.edge_mlp(e), slot_emb, entry_emb
        entry_emb = self.entries(edge_attr)
        m = edge_mask.unsqueeze(-1).to(entry_emb.dtype)
        pooled_in = entry_emb.relu() if self.cfg.entry_nonlinearity else entry_emb
        e = (pooled_in * m).sum(1) / m.sum(1).clamp(min=1.0)
        e = e + self.edge_mlp(e)
        return h, e, slot_emb, entry_emb
