"""Batching graphs of different architectures changes nothing; encoder configuration is validated."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lopt_graphs.graph import NeuralGraph, collate, graph_from_module, neural_graph
from lopt_graphs.nn import EncoderConfig, NeuralGraphEncoder


class _ResNorm(nn.Module):
    """Residual MLP with a LayerNorm and a BatchNorm on the stream: 7 node slots there."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.f = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 4))
        self.g = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        h = h + self.f(h)
        h = h + self.g(h)
        return self.head(h)


def _graphs(feats: int = 3) -> list[NeuralGraph]:
    torch.manual_seed(0)
    models = [
        nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)),  # K=1, 1 slot
        nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),  # K=25, 1 slot
        _ResNorm(),  # K=1, 7 slots on the stream (3 biases, 2 norms x 2)
    ]
    graphs = []
    for m in models:
        spec = graph_from_module(m)
        graphs.append(neural_graph(spec, [torch.randn(*p.shape, feats) for p in m.parameters()]))
    return graphs


def _encoder(variant: str, feats: int = 3) -> NeuralGraphEncoder:
    torch.manual_seed(1)
    cfg = EncoderConfig(variant=variant, node_in=feats, edge_in=feats, hidden=16, edge_hidden=8, layers=2, heads=4,
                        edge_out=2, node_out=2, graph_out=3)
    return NeuralGraphEncoder(cfg).double().eval()


@pytest.mark.parametrize("variant", ["gnn", "transformer"])
def test_batch_equals_individual_graphs(variant: str) -> None:
    graphs = [g.apply(lambda t: t.double() if t.is_floating_point() else t) for g in _graphs()]
    shapes = {(g.edge_attr.shape[1], g.x.shape[1]) for g in graphs}
    assert len({k for k, _ in shapes}) > 1 and len({p for _, p in shapes}) > 1  # padding really happens
    enc = _encoder(variant)
    batch = collate(graphs)
    kmax, slots = batch.edge_attr.shape[1], batch.x.shape[1]
    with torch.no_grad():
        out_b = enc(batch)
        outs = [enc(g) for g in graphs]
    assert out_b.graph_out is not None and out_b.graph_out.shape == (3, 3)
    assert out_b.edge_out is not None and out_b.edge_out.shape[:2] == (batch.edge_index.shape[1], kmax)
    assert out_b.node_out is not None and out_b.node_out.shape[:2] == (batch.num_nodes, slots)
    e0 = n0 = 0
    for i, (g, out) in enumerate(zip(graphs, outs)):
        e, n = g.edge_index.shape[1], g.num_nodes
        k, p = g.edge_attr.shape[1], g.x.shape[1]
        eb, nb = out_b.edge_out[e0: e0 + e], out_b.node_out[n0: n0 + n]
        assert out.edge_out is not None and out.node_out is not None and out.graph_out is not None
        emask, nmask = g.edge_mask, g.node_slot_type > 0
        assert torch.allclose(eb[:, :k][emask], out.edge_out[emask], atol=1e-5, rtol=0)
        assert torch.allclose(nb[:, :p][nmask], out.node_out[nmask], atol=1e-5, rtol=0)
        assert torch.all(eb[:, k:] == 0) and torch.all(nb[:, p:] == 0)  # padding stays zero
        assert torch.allclose(out_b.node[n0: n0 + n], out.node, atol=1e-5, rtol=0)
        assert torch.allclose(out_b.graph_out[i], out.graph_out[0], atol=1e-5, rtol=0)
        e0, n0 = e0 + e, n0 + n


def test_collate_pads_and_rejects_empty() -> None:
    graphs = _graphs()
    batch = collate(graphs)
    kmax = max(g.edge_attr.shape[1] for g in graphs)
    slots = max(g.x.shape[1] for g in graphs)
    assert batch.edge_attr.shape[1:] == (kmax, 3) and batch.edge_mask.shape[1] == kmax
    assert batch.x.shape[1:] == (slots, 3) and batch.node_slot_type.shape[1] == slots
    assert int(batch.edge_mask.sum()) == sum(int(g.edge_mask.sum()) for g in graphs)
    assert int((batch.node_slot_type > 0).sum()) == sum(int((g.node_slot_type > 0).sum()) for g in graphs)
    with pytest.raises(ValueError):
        collate([])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="variant"):
        EncoderConfig(variant="mlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig(variant="transformer", hidden=30, heads=4)
    with pytest.raises(ValueError, match="Unknown"):
        EncoderConfig.from_dict({"variant": "gnn", "hiden": 32})
    with pytest.raises(ValueError):
        EncoderConfig(hidden=0)
    with pytest.raises(ValueError):
        EncoderConfig(layers=-1)
    cfg = EncoderConfig(variant="transformer", hidden=24, heads=3, edge_out=1)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError):
        NeuralGraphEncoder(cfg, hidden=8)


@pytest.mark.parametrize("variant", ["gnn", "transformer"])
def test_wrong_feature_count_raises(variant: str) -> None:
    g = _graphs(feats=3)[0]
    with pytest.raises(ValueError, match="features"):
        NeuralGraphEncoder(EncoderConfig(variant=variant, node_in=2, edge_in=2, hidden=8, heads=2))(g)
    with pytest.raises(ValueError, match="features"):
        NeuralGraphEncoder(EncoderConfig(variant=variant, node_in=3, edge_in=1, hidden=8, heads=2))(g)


def test_max_positions_smaller_than_inputs_raises() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2))
    g = neural_graph(graph_from_module(m), [p.detach() for p in m.parameters()])
    with pytest.raises(ValueError, match="max_positions"):
        NeuralGraphEncoder(EncoderConfig(max_positions=8))(g)
    NeuralGraphEncoder(EncoderConfig(max_positions=10))(g)  # ids 0..9 fit
