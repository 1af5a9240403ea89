"""Parameters -> neural-graph features -> parameters is exact, and the layout is what the docs promise.

Every architecture below comes with the expected ``(out, in_groups, entries)`` of each weight, written down
by hand from the layer definitions, so the edge layout is checked against an independent source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from lopt_graphs.graph import (
    ROLE_HIDDEN,
    ROLE_INPUT,
    ROLE_OUTPUT,
    GraphSpec,
    graph_from_module,
    graph_from_parameters,
    neural_graph,
)


# --------------------------------------------------------------------------- architectures
class Conv1dGap(nn.Module):
    """Conv1d (k=3) -> Conv1d (k=7) -> mean over length -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3)
        self.c2 = nn.Conv1d(4, 5, 7, padding=3)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(h.mean(-1))


class ResMLP(nn.Module):
    """stem -> blocks ``h = h + f(h)`` (optionally normalized) -> head."""

    def __init__(self, d_in: int = 3, width: int = 5, d_out: int = 2, blocks: int = 2, norm: str = "none",
                 bias: bool = True) -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, width, bias=bias)
        layers = []
        for _ in range(blocks):
            mods: list[nn.Module] = []
            if norm == "layernorm":
                mods.append(nn.LayerNorm(width))
            elif norm == "batchnorm":
                mods.append(nn.BatchNorm1d(width))
            mods += [nn.Linear(width, width, bias=bias), nn.ReLU(), nn.Linear(width, width, bias=bias)]
            layers.append(nn.Sequential(*mods))
        self.blocks = nn.ModuleList(layers)
        self.head = nn.Linear(width, d_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for f in self.blocks:
            h = h + f(h)
        return self.head(torch.relu(h))


class ResCNN(nn.Module):
    """conv stem -> blocks ``h = h + conv5(relu(conv3(norm(h))))`` -> global mean pool -> head."""

    def __init__(self, c_in: int = 2, width: int = 4, d_out: int = 3, blocks: int = 2, norm: str = "none") -> None:
        super().__init__()
        self.stem = nn.Conv2d(c_in, width, 3, padding=1)
        layers = []
        for _ in range(blocks):
            mods: list[nn.Module] = []
            if norm == "batchnorm":
                mods.append(nn.BatchNorm2d(width))
            elif norm == "groupnorm":  # one group (1 < groups < C is not a per-neuron symmetry)
                mods.append(nn.GroupNorm(1, width))
            mods += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 5, padding=2)]
            layers.append(nn.Sequential(*mods))
        self.blocks = nn.ModuleList(layers)
        self.head = nn.Linear(width, d_out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for f in self.blocks:
            h = h + f(h)
        return self.head(torch.relu(h).mean((2, 3)))


@dataclass
class Arch:
    """A model factory plus the expected ``(out, in_groups, entries)`` of every weight, in parameter order."""

    make: Callable[[], nn.Module]
    weights: list[tuple[int, int, int]]
    chain: bool  # a plain chain that graph_from_parameters can read


def _mlp(sizes: list[int], bias: bool) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            mods.append(nn.ReLU())
        mods.append(nn.Linear(a, b, bias=bias))
    return nn.Sequential(*mods)


ARCHS: dict[str, Arch] = {
    "mlp_bias": Arch(lambda: _mlp([4, 6, 5, 3], True), [(6, 4, 1), (5, 6, 1), (3, 5, 1)], True),
    "mlp_nobias": Arch(lambda: _mlp([3, 7, 2], False), [(7, 3, 1), (2, 7, 1)], True),
    # 10x10 input: 3x3 -> 8x8, 5x5 -> 4x4, flatten 5 channels x 16 positions.
    "cnn2d_3x3_5x5_flatten": Arch(
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 5), nn.ReLU(), nn.Flatten(),
                              nn.Linear(5 * 16, 6)),
        [(4, 3, 9), (5, 4, 25), (6, 5, 16)], True),
    # non-square kernel, no bias on the convs
    "cnn2d_3x1_nobias_flatten": Arch(
        lambda: nn.Sequential(nn.Conv2d(2, 3, (3, 1), bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 8, 2)),
        [(3, 2, 3), (2, 3, 48)], True),
    # length 16: k=3 -> 14, k=7 -> 8, flatten 3 channels x 8 positions.
    "cnn1d_k3_k7_flatten": Arch(
        lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 3, 7), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * 8, 5)),
        [(4, 2, 3), (3, 4, 7), (5, 3, 8)], True),
    "cnn2d_gap": Arch(
        lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 5, padding=2), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)),
        [(6, 3, 9), (8, 6, 25), (4, 8, 1)], True),
    "cnn1d_gap": Arch(Conv1dGap, [(4, 2, 3), (5, 4, 7), (3, 5, 1)], True),
    "resmlp": Arch(lambda: ResMLP(norm="none"), [(5, 3, 1)] + [(5, 5, 1)] * 4 + [(2, 5, 1)], False),
    "resmlp_nobias": Arch(lambda: ResMLP(norm="none", bias=False, blocks=1),
                          [(5, 3, 1), (5, 5, 1), (5, 5, 1), (2, 5, 1)], False),
    "resmlp_layernorm": Arch(lambda: ResMLP(norm="layernorm"), [(5, 3, 1)] + [(5, 5, 1)] * 4 + [(2, 5, 1)], False),
    "resmlp_batchnorm": Arch(lambda: ResMLP(norm="batchnorm"), [(5, 3, 1)] + [(5, 5, 1)] * 4 + [(2, 5, 1)], False),
    "rescnn": Arch(lambda: ResCNN(norm="none"), [(4, 2, 9)] + [(4, 4, 9), (4, 4, 25)] * 2 + [(3, 4, 1)], False),
    "rescnn_batchnorm": Arch(lambda: ResCNN(norm="batchnorm"),
                             [(4, 2, 9)] + [(4, 4, 9), (4, 4, 25)] * 2 + [(3, 4, 1)], False),
    "rescnn_groupnorm": Arch(lambda: ResCNN(norm="groupnorm"),
                             [(4, 2, 9)] + [(4, 4, 9), (4, 4, 25)] * 2 + [(3, 4, 1)], False),
    "mlp_batchnorm1d": Arch(
        lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)),
        [(6, 4, 1), (3, 6, 1)], False),
    "mlp_layernorm": Arch(
        lambda: nn.Sequential(nn.Linear(4, 6, bias=False), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)),
        [(6, 4, 1), (3, 6, 1)], False),
    "cnn_batchnorm2d_groupnorm": Arch(
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 5),
                              nn.GroupNorm(6, 6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4, 3)),
        [(4, 2, 9), (6, 4, 25), (3, 6, 4)], False),
}
CHAINS = [k for k, a in ARCHS.items() if a.chain]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = ARCHS[name].make()
    with torch.no_grad():  # norm parameters start at 1/0: make every entry distinct
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    return m


def _spec(name: str, front: str, model: nn.Module) -> GraphSpec:
    if front == "params":
        return graph_from_parameters(list(model.parameters()))
    return graph_from_module(model)


FRONTS = [(n, "module") for n in ARCHS] + [(n, "params") for n in CHAINS]


def _params(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _case(name: str, front: str) -> tuple[nn.Module, GraphSpec, list[Tensor]]:
    """Model ``name`` (seeded, every entry distinct), its spec from ``front`` and a copy of its parameters."""
    model = _model(name)
    return model, _spec(name, front, model), _params(model)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name,front", FRONTS)
def test_neural_graph_roundtrip_exact(name: str, front: str) -> None:
    _, spec, params = _case(name, front)
    assert spec.free_params == []
    g = neural_graph(spec, params)
    back = spec.from_graph(g.edge_attr, g.x)
    for p, b in zip(params, back):
        assert b is not None and torch.equal(b, p.unsqueeze(-1))
    # padding is zero
    assert torch.all(g.edge_attr[~g.edge_mask] == 0)
    assert torch.all(g.x[g.node_slot_type == 0] == 0)


@pytest.mark.parametrize("name,front", FRONTS)
def test_trailing_feature_dims_roundtrip_exact(name: str, front: str) -> None:
    model, spec, params = _case(name, front)
    gen = torch.Generator().manual_seed(3)
    feats = [torch.randn(*p.shape, 5, generator=gen) for p in model.parameters()]
    g = neural_graph(spec, feats)
    assert g.edge_attr.shape == (spec.num_edges, spec.kmax, 5)
    assert g.x.shape == (spec.num_nodes, spec.num_slots, 5)
    for f, b in zip(feats, spec.from_graph(g.edge_attr, g.x)):
        assert b is not None and torch.equal(b, f)
    # the lower-level path, with two trailing dims and with none
    feats2 = [torch.randn(*p.shape, 2, 3, generator=gen) for p in model.parameters()]
    ea, na = spec.to_edge_attr(feats2), spec.to_node_attr(feats2, feat=(2, 3))  # feat: for bias-free nets
    assert ea.shape == (spec.num_edges, spec.kmax, 2, 3) and na.shape == (spec.num_nodes, spec.num_slots, 2, 3)
    for f, b in zip(feats2, spec.from_graph(ea, na)):
        assert b is not None and torch.equal(b, f)
    ea, na = spec.to_edge_attr(params), spec.to_node_attr(params)
    assert ea.shape == (spec.num_edges, spec.kmax) and na.shape == (spec.num_nodes, spec.num_slots)
    for p, b in zip(params, spec.from_graph(ea, na)):
        assert b is not None and torch.equal(b, p)


@pytest.mark.parametrize("name,front", FRONTS)
def test_edges_carry_the_right_weights(name: str, front: str) -> None:
    """Edge ``(src_start + c, dst_start + o)`` holds ``W[o, c, :]`` (checked edge by edge)."""
    _, spec, params = _case(name, front)
    ea = spec.to_edge_attr(params)
    src, dst = spec.edge_index
    for i in spec.edge_params:
        p = spec.params[i]
        w = params[i].reshape(p.rows, p.cols, p.entries)
        sl = slice(p.edge_start, p.edge_start + p.rows * p.cols)
        o, c = dst[sl] - p.dst_start, src[sl] - p.src_start
        assert torch.equal(ea[sl, : p.entries], w[o, c])


@pytest.mark.parametrize("name,front", FRONTS)
def test_nodes_carry_the_right_biases(name: str, front: str) -> None:
    _, spec, params = _case(name, front)
    na = spec.to_node_attr(params)
    for i in spec.node_params:
        p = spec.params[i]
        assert torch.equal(na[p.dst_start: p.dst_start + p.numel, p.slot_pos], params[i])
        assert torch.all(spec.node_slot_type[p.dst_start: p.dst_start + p.numel, p.slot_pos] == 1 + p.slot)


# --------------------------------------------------------------------------- layout
@pytest.mark.parametrize("name,front", FRONTS)
def test_edge_layout_matches_architecture(name: str, front: str) -> None:
    model = _model(name)
    spec = _spec(name, front, model)
    expected = ARCHS[name].weights
    weights = [spec.params[i] for i in spec.edge_params]
    assert [(p.rows, p.cols, p.entries) for p in weights] == expected
    # number of edges = sum over weights of out * in_groups
    assert spec.num_edges == sum(o * c for o, c, _ in expected)
    assert spec.kmax == max(k for _, _, k in expected)
    # edge_index shape, dtype, ranges
    ei = spec.edge_index
    assert ei.dtype == torch.long and ei.shape == (2, spec.num_edges)
    assert int(ei.min()) >= 0 and int(ei.max()) < spec.num_nodes
    assert torch.all(ei[0] != ei[1])
    # the edge mask marks exactly the kernel / flatten-group sizes
    mask = spec.edge_mask()
    assert mask.shape == (spec.num_edges, spec.kmax)
    want = torch.cat([torch.full((o * c,), k) for o, c, k in expected])
    assert torch.equal(mask.sum(1), want)
    assert torch.equal(mask, torch.arange(spec.kmax) < want[:, None])  # a prefix of every edge vector
    g = neural_graph(spec, _params(model))
    assert torch.equal(g.edge_mask, mask)
    # roles: the first layer reads the inputs, the last writes the outputs
    first, last = weights[0], weights[-1]
    assert torch.all(spec.node_role[first.src_start: first.src_start + first.cols] == ROLE_INPUT)
    assert torch.all(spec.node_role[last.dst_start: last.dst_start + last.rows] == ROLE_OUTPUT)
    assert int((spec.node_role == ROLE_INPUT).sum()) == first.cols
    assert int((spec.node_role == ROLE_OUTPUT).sum()) == last.rows
    hidden = spec.node_role == ROLE_HIDDEN
    assert torch.all(spec.node_pos[hidden] == -1) and torch.all(spec.node_pos[~hidden] >= 0)


@pytest.mark.parametrize("name", CHAINS)
def test_both_front_ends_agree_on_chains(name: str) -> None:
    model = _model(name)
    a, b = graph_from_parameters(list(model.parameters())), graph_from_module(model)
    assert torch.equal(a.edge_index, b.edge_index)
    for attr in ("edge_size", "node_role", "node_pos", "node_layer", "node_slot_type", "node_slot_index"):
        assert torch.equal(getattr(a, attr), getattr(b, attr)), attr
    assert (a.num_nodes, a.kmax, a.num_slots) == (b.num_nodes, b.kmax, b.num_slots)
    assert [(p.kind, p.edge_start, p.rows, p.cols, p.entries, p.dst_start, p.src_start) for p in a.params] == \
        [(p.kind, p.edge_start, p.rows, p.cols, p.entries, p.dst_start, p.src_start) for p in b.params]


def test_from_parameters_accepts_shapes() -> None:
    model = _model("cnn2d_3x3_5x5_flatten")
    a = graph_from_parameters(list(model.parameters()))
    b = graph_from_parameters([tuple(p.shape) for p in model.parameters()])
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_size, b.edge_size)


def test_residual_stream_shares_one_neuron_set_and_stacks_biases() -> None:
    model = _model("resmlp")
    spec = graph_from_module(model)
    # stem + 2 block outputs are one set of 5 neurons: 3 biases in 3 slots; inner block neurons have 1 bias
    assert spec.num_slots == 3
    stem_b = spec.params[1]
    assert [spec.params[i].dst_start for i in (1, 5, 9)] == [stem_b.dst_start] * 3
    assert sorted(spec.params[i].slot_pos for i in (1, 5, 9)) == [0, 1, 2]
    assert spec.num_nodes == 3 + 5 + 5 + 5 + 2  # inputs, stream, two inner sets, outputs


def test_norm_parameters_are_node_slots() -> None:
    model = _model("cnn_batchnorm2d_groupnorm")
    spec = graph_from_module(model)
    kinds = [(p.kind, p.slot) for p in spec.params]
    # conv w, conv b, bn w, bn b, conv w, conv b, gn w, gn b, fc w, fc b
    assert kinds == [("edge", 0), ("node", 0), ("node", 1), ("node", 2), ("edge", 0), ("node", 0), ("node", 1),
                     ("node", 2), ("edge", 0), ("node", 0)]
    assert spec.num_slots == 3


class _OutOfOrder(nn.Module):
    """Registration order (head first) differs from call order (stem first)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.stem = nn.Linear(4, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.stem(x)))


def test_module_roundtrip_when_registration_order_differs_from_call_order() -> None:
    torch.manual_seed(0)
    model = _OutOfOrder()
    spec = graph_from_module(model)
    params = _params(model)
    g = neural_graph(spec, params)
    for p, b in zip(params, spec.from_graph(g.edge_attr, g.x)):
        assert b is not None and torch.equal(b, p.unsqueeze(-1))
