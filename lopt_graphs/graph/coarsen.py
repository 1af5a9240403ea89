"""Cheaper graphs for the encoder: edge vectors pooled to one entry each.

A conv kernel (or a flattened conv channel feeding a linear layer) is one edge carrying ``S`` entries. The
encoder embeds every entry linearly (``entry_lin(x_k) + pos_k``) and averages over the valid entries; without
the per-entry nonlinearity (``EncoderConfig.entry_nonlinearity=False``, the setting of every shipped
checkpoint) that average equals ``entry_lin(mean_k x_k) + mean_k pos_k``. So the encoder's node and edge
embeddings depend on an edge's entries only through their mean and their count, and a graph whose edges
carry the *mean* entry (plus the count, ``edge_entries``) gives the same result, exactly up to float
summation order, for ``S`` times less memory and work: on ResNet-18 (kmax 49) the padded edge tensor of
1.4M edges x 49 entries x 6 features (1.6 GB) becomes 1.4M x 1 x 6.

Large graphs (more than :data:`SPARSIFY_ABOVE` edges, e.g. ResNet-18's 1.4M or a 784-256-256-10 MLP's 268K)
are also *sparsified*: in every large weight block only the edges that are among the ``k`` strongest of
their destination row or of their source column are kept (strength: the sum of the absolute pooled
features). The selection depends only on edge values, so permuting neurons permutes the kept edges the
same way: the sparse graph is exactly as equivariant as the full one. It is an approximation of the
encoder on the full graph (the aggregations see at most about ``2k`` neighbours per neuron), traded for an
encoder cost that grows with the number of neurons, not of weights. Not usable under ``torch.func.vmap``
(data-dependent edge counts); meta-training tasks are far below the threshold.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .neural_graph import NeuralGraph, neural_graph
from .spec import GraphSpec


def pooled_neural_graph(spec: GraphSpec, tensors: Sequence[Tensor | None]) -> NeuralGraph:
    """Like :func:`~lopt_graphs.graph.neural_graph` with every edge vector replaced by its mean entry.

    Args:
        spec: the network's graph spec.
        tensors: one ``[*param.shape, F]`` tensor per parameter (free ones may be anything or ``None``).

    Returns:
        A :class:`NeuralGraph` with ``edge_attr [E, 1, F]`` (mean over the edge's ``S`` entries),
        ``edge_mask [E, 1]`` all true and ``edge_entries [E]`` (each edge's ``S``), read by
        :class:`~lopt_graphs.nn.embed.GraphEmbedding` to add the mean positional embedding of ``S`` entries.
    """
    ref = next(t for t, p in zip(tensors, spec.params) if p.kind != "free")
    if ref.dim() != len(spec.params[spec.edge_params[0]].shape) + 1:
        raise ValueError("pooled_neural_graph expects tensors shaped param.shape + (F,), one trailing feature dim")
    f = ref.shape[-1]
    s = spec.to(ref.device)
    chunks = []
    for i in spec.edge_params:
        p = spec.params[i]
        t = tensors[i].transpose(0, 1) if p.transposed else tensors[i]  # edges in (dst, src) order
        t = t.reshape(p.rows * p.cols, p.entries, f)
        chunks.append(t.mean(1) if p.entries > 1 else t[:, 0])
    edge_attr = torch.cat(chunks, dim=0).unsqueeze(1)
    return NeuralGraph(
        x=s.to_node_attr(tensors, feat=(f,), like=ref), node_slot_type=s.node_slot_type,
        edge_index=s.edge_index, edge_attr=edge_attr,
        edge_mask=torch.ones(edge_attr.shape[0], 1, dtype=torch.bool, device=ref.device),
        edge_entries=s.edge_size, node_role=s.node_role, node_pos=s.node_pos, node_act=s.node_act,
        num_nodes=spec.num_nodes, edge_blocks=s.edge_blocks(),
    )


#: Graphs with more edges than this are sparsified (see module docstring).
SPARSIFY_ABOVE = 100_000
#: Edges kept per destination row and per source column of a large weight block.
SPARSIFY_K = 16


def sparsify(graph: NeuralGraph, spec: GraphSpec, k: int = SPARSIFY_K) -> NeuralGraph:
    """Keep, in every weight block larger than ``2k (rows + cols)`` edges, the edges among the ``k``
    strongest of their row or of their column (strength ``edge_attr.abs().sum``); smaller blocks are kept
    whole. Returns a graph without ``edge_blocks`` (the encoder then aggregates with scatters)."""
    strength = graph.edge_attr.abs().sum(dim=(1, 2))
    keep = []
    for e0, rows, cols, _, _ in spec.edge_blocks().tolist():
        n = rows * cols
        if n <= 2 * k * (rows + cols):
            keep.append(torch.arange(e0, e0 + n, device=strength.device))
            continue
        sc = strength[e0: e0 + n].view(rows, cols)
        mask = torch.zeros(rows, cols, dtype=torch.bool, device=sc.device)
        mask.scatter_(1, sc.topk(min(k, cols), dim=1).indices, True)
        mask.scatter_(0, sc.topk(min(k, rows), dim=0).indices, True)
        keep.append(e0 + mask.flatten().nonzero().flatten())
    idx = torch.cat(keep)
    out = NeuralGraph(x=graph.x, node_slot_type=graph.node_slot_type, edge_index=graph.edge_index[:, idx],
                      edge_attr=graph.edge_attr.index_select(0, idx), edge_mask=graph.edge_mask.index_select(0, idx),
                      node_role=graph.node_role, node_pos=graph.node_pos, node_act=graph.node_act,
                      num_nodes=graph.num_nodes)
    if getattr(graph, "edge_entries", None) is not None:
        out.edge_entries = graph.edge_entries.index_select(0, idx)
    return out


def encoder_graph(spec: GraphSpec, tensors: Sequence[Tensor | None], entry_nonlinearity: bool,
                  sparsify_above: int | None = SPARSIFY_ABOVE) -> NeuralGraph:
    """The graph the encoder reads: pooled edge vectors when that is exact (no per-entry nonlinearity and
    some edge with more than one entry), else the full :func:`~lopt_graphs.graph.neural_graph`; sparsified
    (:func:`sparsify`) above ``sparsify_above`` edges (``None``: never), except under ``torch.func.vmap``
    (each member would keep its own edges: the full graph is used there)."""
    if not entry_nonlinearity and spec.kmax > 1:
        graph = pooled_neural_graph(spec, tensors)
    else:
        graph = neural_graph(spec, tensors)
    if sparsify_above is not None and spec.num_edges > sparsify_above and not _under_vmap(tensors):
        graph = sparsify(graph, spec)
    return graph


def _under_vmap(tensors: Sequence[Tensor | None]) -> bool:
    """Whether the tensors are batched by ``torch.func.vmap`` (meta-training's populations): there every
    member would keep a different edge set, which one batched graph cannot hold, so the full graph is used."""
    t = next((t for t in tensors if t is not None), None)
    return t is not None and torch._C._functorch.is_batchedtensor(t)
