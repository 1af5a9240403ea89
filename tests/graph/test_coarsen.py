"""Cheaper encoder graphs: pooled edge vectors are exact; sparsified graphs stay equivariant."""

from __future__ import annotations

import torch
from torch import nn

from lopt_graphs.graph import graph_from_module, neural_graph
from lopt_graphs.graph.coarsen import encoder_graph, pooled_neural_graph, sparsify
from lopt_graphs.nn import EncoderConfig, NeuralGraphEncoder


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 5), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 5))


def _encoder(**kw) -> NeuralGraphEncoder:
    torch.manual_seed(0)
    return NeuralGraphEncoder(EncoderConfig(node_in=3, edge_in=3, hidden=16, edge_hidden=8, layers=2, max_kernel=9,
                                            **kw)).double()


def test_pooled_graph_gives_the_same_node_embeddings() -> None:
    spec = graph_from_module(_cnn())
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(*p.shape, 3, generator=g, dtype=torch.float64) for p in spec.params]
    enc = _encoder()
    full = enc(neural_graph(spec, feats)).node
    pooled = enc(pooled_neural_graph(spec, feats)).node
    torch.testing.assert_close(pooled, full, rtol=1e-10, atol=1e-10)
    # entries beyond max_kernel (the 16-entry flatten groups) have no position embedding in both
    assert spec.kmax == 25 > enc.cfg.max_kernel
    # with a per-entry nonlinearity pooling is not exact: encoder_graph keeps the full graph then
    assert encoder_graph(spec, feats, entry_nonlinearity=True).edge_attr.shape[1] == spec.kmax


def test_sparsified_graph_is_equivariant() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 18), nn.ReLU(), nn.Linear(18, 4))
    spec = graph_from_module(model)
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(*p.shape, 3, generator=g, dtype=torch.float64) for p in spec.params]
    enc = _encoder()
    graph = sparsify(neural_graph(spec, feats), spec, k=2)
    assert graph.edge_index.shape[1] < spec.num_edges  # something was dropped
    perm = spec.random_node_permutation(torch.Generator().manual_seed(2))
    assert not torch.equal(perm, torch.arange(spec.num_nodes))
    permuted = sparsify(neural_graph(spec, spec.permute(feats, perm)), spec, k=2)
    h, hp = enc(graph).node, enc(permuted).node
    # node n of the permuted network plays the role of node perm^-1 ... : spec.permute moves n to perm[n]
    torch.testing.assert_close(hp[perm], h, rtol=1e-9, atol=1e-9)


def test_under_vmap_the_full_graph_is_used() -> None:
    """Meta-training vmaps the update over a population: one batched graph cannot hold per-member edge sets,
    so a large graph is not sparsified there (it raised inside vmap before)."""
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 4))
    spec = graph_from_module(model)
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, *p.shape, 3, generator=g, dtype=torch.float64) for p in spec.params]
    eager = encoder_graph(spec, [f[0] for f in feats], False, sparsify_above=100)
    assert eager.edge_index.shape[1] < spec.num_edges  # sparsified outside vmap
    batched = torch.func.vmap(lambda *fs: encoder_graph(spec, list(fs), False, sparsify_above=100).edge_attr)(*feats)
    full = torch.stack([encoder_graph(spec, [f[i] for f in feats], False, sparsify_above=None).edge_attr
                        for i in range(2)])
    torch.testing.assert_close(batched, full)
