"""PyG graphs of networks: per-parameter features placed on a :class:`GraphSpec`."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from .spec import GraphSpec


class NeuralGraph(Data):
    """A ``torch_geometric.data.Data`` holding one network as a neural graph.

    Attributes (``N`` nodes, ``E`` edges, ``K`` entries per edge, ``P`` node slots):
        x: ``[N, P, F]`` node features (biases, norm parameters), zero in empty slots.
        node_slot_type: ``[N, P]`` long, 0 for an empty slot, else ``1 + NODE_SLOTS.index(type)``.
        edge_index: ``[2, E]`` (source, destination).
        edge_attr: ``[E, K, F]`` edge features (weights; conv kernels as vectors), zero padded.
        edge_mask: ``[E, K]`` bool, valid edge entries.
        node_role, node_pos, node_act: ``[N]`` long, see :class:`GraphSpec`.
        edge_blocks: ``[W, 5]`` long, one row ``(edge_start, rows, cols, dst_start, src_start)`` per weight:
            the dense blocks the edges form (batching shifts edge and node offsets).
    """

    def __inc__(self, key: str, value, *args, **kwargs):
        if key == "edge_blocks":
            return torch.tensor([self.num_edges, 0, 0, self.num_nodes, self.num_nodes])
        return super().__inc__(key, value, *args, **kwargs)


def neural_graph(spec: GraphSpec, tensors: Sequence[Tensor | None], kmax: int | None = None) -> NeuralGraph:
    """Place per-parameter features on the graph of ``spec``.

    Args:
        spec: the network's graph spec.
        tensors: one tensor per parameter, shaped ``param.shape`` (one feature) or ``param.shape + (F,)``.
            Every non-free parameter must have the same number of trailing feature dims.
        kmax: pad edge vectors to this many entries (default ``spec.kmax``).

    Returns:
        A :class:`NeuralGraph` with features ``[..., F]``.
    """
    spec.check_tensors(tensors, feat_dims=_feat_dims(spec, tensors))
    ref = next(t for t, p in zip(tensors, spec.params) if p.kind != "free")
    device = ref.device
    feats = [t.unsqueeze(-1) if t is not None and t.dim() == len(p.shape) else t
             for t, p in zip(tensors, spec.params)]
    f = feats[spec.edge_params[0]].shape[-1]
    s = spec.to(device)
    kmax = spec.kmax if kmax is None else kmax
    return NeuralGraph(
        x=s.to_node_attr(feats, feat=(f,), like=ref), node_slot_type=s.node_slot_type,
        edge_index=s.edge_index, edge_attr=s.to_edge_attr(feats, kmax=kmax),
        edge_mask=torch.arange(kmax, device=device) < s.edge_size[:, None],
        node_role=s.node_role, node_pos=s.node_pos, node_act=s.node_act, num_nodes=spec.num_nodes,
        edge_blocks=s.edge_blocks(),
    )


def _feat_dims(spec: GraphSpec, tensors: Sequence[Tensor | None]) -> int:
    dims = {t.dim() - len(p.shape) for t, p in zip(tensors, spec.params) if t is not None and p.kind != "free"}
    if len(dims) != 1 or not dims <= {0, 1}:
        raise ValueError(f"Expected every tensor to be shaped like its parameter, optionally with one trailing "
                         f"feature dim, consistently (got trailing dims {sorted(dims)})")
    return dims.pop()


def _pad_dim1(t: Tensor, size: int) -> Tensor:
    if t.shape[1] == size:
        return t
    if t.shape[1] > size:
        raise ValueError(f"Cannot pad dim 1 of a tensor of shape {tuple(t.shape)} down to {size}")
    return torch.cat([t, t.new_zeros(t.shape[0], size - t.shape[1], *t.shape[2:])], dim=1)


def pad_graph(graph: Data, kmax: int, num_slots: int) -> Data:
    """Pad edge vectors to ``kmax`` entries and node slots to ``num_slots`` (returns a shallow copy)."""
    if graph.edge_attr.shape[1] == kmax and graph.x.shape[1] == num_slots:
        return graph
    g = graph.clone()
    g.edge_attr, g.edge_mask = _pad_dim1(graph.edge_attr, kmax), _pad_dim1(graph.edge_mask, kmax)
    g.x, g.node_slot_type = _pad_dim1(graph.x, num_slots), _pad_dim1(graph.node_slot_type, num_slots)
    return g


def collate(graphs: Sequence[Data]) -> Batch:
    """Batch graphs of different architectures (edge vectors and node slots padded to the largest)."""
    if len(graphs) == 0:
        raise ValueError("Expected at least one graph to collate, got an empty sequence")
    kmax = max(g.edge_attr.shape[1] for g in graphs)
    slots = max(g.x.shape[1] for g in graphs)
    return Batch.from_data_list([pad_graph(g, kmax, slots) for g in graphs])
