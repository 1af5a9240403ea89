"""The encoder is equivariant to exactly the hidden-neuron permutations of the network it reads.

Per-parameter outputs are read back with ``spec.from_edge_attr`` / ``spec.from_node_attr`` and compared with
``spec.permute`` of the unpermuted outputs. ``hidden_positions=True`` (hidden neurons get positional ids)
must make the same check fail, which shows the check can fail.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from graph_testing import Residual, nontrivial_perm  # tests/ (rootdir-relative import)
from torch import Tensor, nn

from lopt_graphs.graph import GraphSpec, graph_from_module, neural_graph
from lopt_graphs.nn import EncoderConfig, EncoderOutput, NeuralGraphEncoder

FEATS = 2


def _cnn2d_flatten() -> nn.Module:  # 5x5 input, mixed kernels, flatten groups of 25
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 25, 3))


def _cnn1d_gap() -> nn.Module:
    return nn.Sequential(nn.Conv1d(3, 4, 3), nn.Tanh(), nn.Conv1d(4, 3, 7, padding=3), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 2))


def _resmlp_norms() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), Residual(nn.LayerNorm(4), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 4)),
                         Residual(nn.BatchNorm1d(4), nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 4)), nn.ReLU(),
                         nn.Linear(4, 2))


def _rescnn_norms() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1),
                         Residual(nn.BatchNorm2d(4), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(3, 4, 5, padding=2)),
                         Residual(nn.GroupNorm(1, 4), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3))  # 3x3 input: flatten groups of 9


ARCHS: dict[str, Callable[[], nn.Module]] = {
    "mlp": lambda: nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)),
    "mlp_norms_nobias": lambda: nn.Sequential(nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(),
                                              nn.Linear(5, 3, bias=False), nn.LayerNorm(3), nn.Linear(3, 2)),
    "cnn2d_flatten": _cnn2d_flatten,
    "cnn1d_gap": _cnn1d_gap,
    "resmlp_norms": _resmlp_norms,
    "rescnn_norms": _rescnn_norms,
}


def _setup(name: str, seed: int, hidden_positions: bool = False,
           dtype: torch.dtype = torch.float64) -> tuple[GraphSpec, list[Tensor]]:
    torch.manual_seed(seed)
    model = ARCHS[name]()
    spec = graph_from_module(model, hidden_positions=hidden_positions)
    gen = torch.Generator().manual_seed(seed)
    # per-parameter features: the value and a random "gradient"
    feats = [torch.stack([p.detach() + 0.1 * torch.randn(p.shape, generator=gen),
                          torch.randn(p.shape, generator=gen)], -1).to(dtype) for p in model.parameters()]
    return spec, feats


def _encoder(variant: str, seed: int, dtype: torch.dtype = torch.float64) -> NeuralGraphEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig(variant=variant, node_in=FEATS, edge_in=FEATS, hidden=16, edge_hidden=8, layers=2, heads=4,
                        edge_out=2, node_out=3, graph_out=3)
    return NeuralGraphEncoder(cfg).to(dtype).eval()


def _per_param(spec: GraphSpec, out: EncoderOutput) -> list[Tensor | None]:
    """Edge/node head outputs, then the edge embedding copied to every entry, each in parameter shapes."""
    assert out.edge_out is not None and out.node_out is not None
    heads = spec.from_graph(out.edge_out, out.node_out)
    emb = spec.from_edge_attr(out.edge.unsqueeze(1).expand(-1, spec.kmax, -1).contiguous())
    return heads + emb


def _deviations(spec: GraphSpec, enc: NeuralGraphEncoder, feats: list[Tensor],
                perm: Tensor) -> tuple[float, float]:
    """(max deviation from equivariance of per-parameter outputs and node embeddings, change of graph_out)."""
    with torch.no_grad():
        out = enc(neural_graph(spec, feats))
        out_p = enc(neural_graph(spec, spec.permute(feats, perm)))
    assert out.graph_out is not None and out_p.graph_out is not None
    n = len(spec.params)
    base, got = _per_param(spec, out), _per_param(spec, out_p)
    # the outputs of the permuted graph are the permuted outputs
    expected = spec.permute(base[:n], perm) + spec.permute(base[n:], perm)
    dev = 0.0
    for a, b in zip(expected, got):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a.shape == b.shape
            dev = max(dev, float((a - b).abs().max()))
    node_expected = torch.empty_like(out.node)
    node_expected[perm] = out.node  # node perm[i] of the permuted graph plays node i's role
    dev = max(dev, float((node_expected - out_p.node).abs().max()))
    return dev, float((out.graph_out - out_p.graph_out).abs().max())


@pytest.mark.parametrize("name", sorted(ARCHS))
@pytest.mark.parametrize("variant", ["gnn", "transformer"])
def test_hidden_permutation_equivariance(variant: str, name: str) -> None:
    seed = sorted(ARCHS).index(name)
    spec, feats = _setup(name, seed)
    enc = _encoder(variant, seed)
    dev, graph_change = _deviations(spec, enc, feats, nontrivial_perm(spec, "hidden", seed))
    assert dev < 1e-5
    assert graph_change < 1e-5
    # input and output neurons carry positions: permuting them is seen by the encoder
    for include in ("input", "output"):
        _, graph_change = _deviations(spec, enc, feats, nontrivial_perm(spec, include, seed))
        assert graph_change > 1e-4, include


@pytest.mark.parametrize("variant", ["gnn", "transformer"])
def test_hidden_permutation_equivariance_float32(variant: str) -> None:
    spec, feats = _setup("rescnn_norms", 7, dtype=torch.float32)
    enc = _encoder(variant, 7, dtype=torch.float32)
    dev, graph_change = _deviations(spec, enc, feats, nontrivial_perm(spec, "hidden", 7))
    assert dev < 1e-4 and graph_change < 1e-4


@pytest.mark.parametrize("name", ["mlp", "rescnn_norms"])
@pytest.mark.parametrize("variant", ["gnn", "transformer"])
def test_check_fails_with_hidden_positions(variant: str, name: str) -> None:
    """Sanity check of the check: positional ids on hidden neurons break equivariance."""
    spec, feats = _setup(name, 3, hidden_positions=True)
    assert bool((spec.node_pos >= 0).all())
    plain, _ = _setup(name, 3)  # same layout; its hidden sets give the network's symmetries
    assert torch.equal(plain.edge_index, spec.edge_index)
    enc = _encoder(variant, 3)
    dev, graph_change = _deviations(spec, enc, feats, nontrivial_perm(plain, "hidden", 3))
    assert max(dev, graph_change) > 1e-3
