"""The graph's wiring is exact: permuting hidden neurons with ``spec.permute`` is a symmetry of the network.

For random architectures (MLPs, Conv1d/Conv2d CNNs with mixed kernels, flatten or global pooling, residual
nets, BatchNorm / LayerNorm / GroupNorm) we permute the parameters with the spec, copy them into a copy of
the model and check the function is unchanged; permuting *input* neurons must change it. Then the error
paths of both front ends.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from graph_testing import Residual, nontrivial_perm  # tests/ (rootdir-relative import)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from lopt_graphs.graph import GraphBuildError, GraphSpec, graph_from_module, graph_from_parameters

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


# --------------------------------------------------------------------------- random architectures
def _norm(kind: str, width: int, dims: int) -> list[nn.Module]:
    if kind == "batchnorm":
        return [nn.BatchNorm1d(width) if dims == 1 else nn.BatchNorm2d(width)]
    if kind == "layernorm":
        return [nn.LayerNorm(width)]
    if kind == "groupnorm":  # one group: a symmetry for any channel permutation
        return [nn.GroupNorm(1, width)]
    return []


@st.composite
def architectures(draw: Any) -> dict[str, Any]:
    """A small random architecture description (built by :func:`build`)."""
    kind = draw(st.sampled_from(["mlp", "cnn1d", "cnn2d", "resmlp", "rescnn"]))
    arch: dict[str, Any] = {"kind": kind, "act": draw(st.sampled_from(sorted(ACTS))),
                            "d_in": draw(st.integers(2, 4)), "d_out": draw(st.integers(2, 4)),
                            "bias": draw(st.booleans())}
    width = st.integers(3, 5)  # a LayerNorm over 2 features is a sign function: too flat to test on
    if kind == "mlp":
        arch["widths"] = draw(st.lists(width, min_size=1, max_size=3))
        arch["norms"] = [draw(st.sampled_from(["none", "batchnorm", "layernorm"])) for _ in arch["widths"]]
    elif kind in ("cnn1d", "cnn2d"):
        kernels = [3, 7] if kind == "cnn1d" else [1, 3, 5]
        n = draw(st.integers(1, 3))
        arch["widths"] = [draw(width) for _ in range(n)]
        arch["kernels"] = [draw(st.sampled_from(kernels)) for _ in range(n)]
        arch["norms"] = [draw(st.sampled_from(["none", "batchnorm", "groupnorm"])) for _ in range(n)]
        arch["pool"] = draw(st.sampled_from(["flatten", "gap", "maxpool_flatten"]))
    else:
        arch["width"] = draw(width)
        arch["blocks"] = draw(st.integers(1, 2))
        norms = ["none", "batchnorm", "layernorm"] if kind == "resmlp" else ["none", "batchnorm", "groupnorm"]
        arch["norm"] = draw(st.sampled_from(norms))
    return arch


def build(arch: dict[str, Any]) -> tuple[nn.Module, Tensor]:
    """The model (float64, eval mode, random parameters and BN statistics) and an input batch."""
    act, bias, d_in, d_out = ACTS[arch["act"]], arch["bias"], arch["d_in"], arch["d_out"]
    kind = arch["kind"]
    mods: list[nn.Module] = []
    if kind == "mlp":
        prev = d_in
        for w, nm in zip(arch["widths"], arch["norms"]):
            mods += [nn.Linear(prev, w, bias=bias), *_norm(nm, w, 1), act()]
            prev = w
        mods.append(nn.Linear(prev, d_out, bias=bias))
        x = torch.randn(32, d_in)
    elif kind in ("cnn1d", "cnn2d"):
        dims = 1 if kind == "cnn1d" else 2
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        size = 10 if dims == 1 else 6
        prev = d_in
        for w, k, nm in zip(arch["widths"], arch["kernels"], arch["norms"]):
            mods += [conv(prev, w, k, padding=k // 2, bias=bias), *_norm(nm, w, dims), act()]
            prev = w
        if arch["pool"] == "gap":
            mods += [nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            feat = prev
        elif arch["pool"] == "maxpool_flatten":
            mods += [nn.MaxPool1d(2) if dims == 1 else nn.MaxPool2d(2), nn.Flatten()]
            feat = prev * (size // 2) ** dims
        else:
            mods.append(nn.Flatten())
            feat = prev * size ** dims
        mods.append(nn.Linear(feat, d_out, bias=bias))
        x = torch.randn(32, d_in, *([size] * dims))
    else:
        w, nm = arch["width"], arch["norm"]
        if kind == "resmlp":
            mods.append(nn.Linear(d_in, w, bias=bias))
            for _ in range(arch["blocks"]):
                mods.append(Residual(*_norm(nm, w, 1), nn.Linear(w, w, bias=bias), act(),
                                     nn.Linear(w, w, bias=bias)))
            mods += [act(), nn.Linear(w, d_out, bias=bias)]
            x = torch.randn(32, d_in)
        else:
            mods.append(nn.Conv2d(d_in, w, 3, padding=1, bias=bias))
            for _ in range(arch["blocks"]):
                mods.append(Residual(*_norm(nm, w, 2), nn.Conv2d(w, w, 3, padding=1, bias=bias), act(),
                                     nn.Conv2d(w, w, 5, padding=2, bias=bias)))
            mods += [act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, d_out, bias=bias)]
            x = torch.randn(32, d_in, 5, 5)
    model = nn.Sequential(*mods).double().eval()
    randomize(model)
    return model, x.double()


def randomize(model: nn.Module) -> None:
    """Random parameters and BatchNorm running statistics (so that they matter)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.7)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn_like(m.running_mean))
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)


def permuted_model(model: nn.Module, spec: GraphSpec, perm: Tensor) -> nn.Module:
    """A copy of ``model`` with its parameters (and BatchNorm statistics) permuted by ``spec.permute``."""
    params = list(model.parameters())
    new = spec.permute([p.detach() for p in params], perm)
    index = {id(p): i for i, p in enumerate(params)}
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p, n in zip(out.parameters(), new):
            p.copy_(n)
        # running statistics are buffers, not parameters: they move with their neurons like the norm weight
        for m, mo in zip(model.modules(), out.modules()):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                i = index[id(m.weight)]
                for name in ("running_mean", "running_var"):
                    ts: list[Tensor | None] = [None] * len(params)
                    ts[i] = getattr(m, name)
                    getattr(mo, name).copy_(spec.permute(ts, perm)[i])
    return out


def max_change(model: nn.Module, spec: GraphSpec, perm: Tensor, x: Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - permuted_model(model, spec, perm)(x)).abs().max())


# --------------------------------------------------------------------------- symmetry tests
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), seed=st.integers(0, 2**16))
def test_hidden_permutation_is_a_symmetry(arch: dict[str, Any], seed: int) -> None:
    torch.manual_seed(seed)
    model, x = build(arch)
    spec = graph_from_module(model)
    assert spec.free_params == []
    perm = nontrivial_perm(spec, "hidden", seed)
    # the permutation only moves hidden neurons, within their layer
    moved = perm != torch.arange(spec.num_nodes)
    assert torch.all(spec.node_pos[moved] == -1)
    assert torch.equal(spec.node_layer[perm], spec.node_layer)
    assert max_change(model, spec, perm, x) < 1e-5
    # permuting the inputs (or outputs) is not a symmetry -- unless every ReLU is dead and the net is constant
    with torch.no_grad():
        constant = float(model(x).std(0).max()) < 1e-3
    if not constant:
        assert max_change(model, spec, nontrivial_perm(spec, "input", seed), x) > 1e-4
        assert max_change(model, spec, nontrivial_perm(spec, "output", seed), x) > 1e-4


@settings(max_examples=8, deadline=None)
@given(arch=architectures().filter(lambda a: a["kind"] in ("mlp", "cnn1d", "cnn2d"))
       .map(lambda a: {**a, "norms": ["none"] * len(a["widths"])}),  # a plain chain
       seed=st.integers(0, 2**16))
def test_hidden_permutation_is_a_symmetry_from_parameters(arch: dict[str, Any], seed: int) -> None:
    torch.manual_seed(seed)
    model, x = build(arch)
    spec = graph_from_parameters(list(model.parameters()))
    assert torch.equal(spec.edge_index, graph_from_module(model).edge_index)
    assert max_change(model, spec, nontrivial_perm(spec, "hidden", seed), x) < 1e-5
    with torch.no_grad():
        if float(model(x).std(0).max()) > 1e-3:  # not a constant (all-dead) net
            assert max_change(model, spec, nontrivial_perm(spec, "input", seed), x) > 1e-4


def test_permute_carries_trailing_feature_dims_and_inverts() -> None:
    torch.manual_seed(0)
    model, _ = build({"kind": "rescnn", "act": "relu", "d_in": 2, "d_out": 3, "bias": True, "width": 4,
                      "blocks": 2, "norm": "batchnorm"})
    spec = graph_from_module(model)
    feats = [torch.randn(*p.shape, 3, dtype=torch.float64) for p in model.parameters()]
    perm = nontrivial_perm(spec, "hidden", 0)
    moved = spec.permute(feats, perm)
    # feature channel j moves exactly like a parameter would
    for j in range(3):
        single = spec.permute([f[..., j] for f in feats], perm)
        for m, s in zip(moved, single):
            assert m is not None and s is not None and torch.equal(m[..., j], s)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    back = spec.permute(moved, inv)
    assert all(b is not None and torch.equal(b, f) for b, f in zip(back, feats))
    assert any(not torch.equal(m, f) for m, f in zip(moved, feats) if m is not None)


# --------------------------------------------------------------------------- known wiring bugs
def _groupnorm_net(groups: int) -> tuple[nn.Module, Tensor]:
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.GroupNorm(groups, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3)).double().eval()
    randomize(model)
    return model, torch.randn(4, 2, 6, 6, dtype=torch.float64)


@pytest.mark.parametrize("groups", [2, 4])
def test_groupnorm_with_several_groups_is_rejected_or_exact(groups: int) -> None:
    """1 < num_groups < C only allows permutations within a group: the build must refuse or be exact."""
    torch.manual_seed(0)
    model, x = _groupnorm_net(groups)
    try:
        spec = graph_from_module(model)
    except GraphBuildError:
        return
    assert max_change(model, spec, nontrivial_perm(spec, "hidden", 0), x) < 1e-5


class _CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=-1))


class _ChannelMean(nn.Module):
    """Averages over the *channel* dim (not a per-channel op) before a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)).mean(1), 1))


@pytest.mark.parametrize("front", ["module_cat", "params_stray_norm",
                                   "module_grouped_conv"])
def test_free_mode_hidden_permutation_is_a_symmetry(front: str) -> None:
    """Neurons that a free parameter reads or writes must not be permuted (free parameters stay put)."""
    torch.manual_seed(0)
    x = torch.randn(16, 4, dtype=torch.float64)
    if front == "module_cat":
        model: nn.Module = _CatNet().double()
        spec = graph_from_module(model, on_unsupported="free")
    elif front == "params_stray_norm":  # LayerNorm vectors are stray 1-D tensors for the shape front end
        model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                              nn.Linear(5, 3)).double()
        spec = graph_from_parameters(list(model.parameters()), on_unsupported="free")
    else:
        model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 9, 3)).double()
        spec = graph_from_module(model, on_unsupported="free")
        x = torch.randn(16, 4, 3, 3, dtype=torch.float64)
    randomize(model)
    if front == "module_cat":  # the concatenation is unknown: the last layer reads pinned boundary neurons
        last = spec.params[4]
        assert spec.free_params == [] and bool((spec.node_pos[last.src_start: last.src_start + last.cols] >= 0).all())
    else:
        assert spec.free_params
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # may be the identity if every neuron is pinned
        assert max_change(model, spec, spec.random_node_permutation(gen), x) < 1e-5


def test_reduction_over_channels_is_rejected_or_exact() -> None:
    torch.manual_seed(0)
    model = _ChannelMean().double()
    randomize(model)
    try:
        spec = graph_from_module(model)
    except GraphBuildError:
        return
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    assert max_change(model, spec, nontrivial_perm(spec, "hidden", 0), x) < 1e-5


# --------------------------------------------------------------------------- graph_from_parameters errors
LIN = [(8, 4), (8,)]
BAD_CHAINS = {
    # an embedding table [V, D] whose D does not match the previous layer's outputs
    "embedding_break": (LIN + [(100, 12), (3, 8), (3,)], [2, 3, 4]),
    "five_dim": (LIN + [(2, 2, 2, 2, 2), (3, 8), (3,)], [2, 3, 4]),
    "conv_after_linear": (LIN + [(6, 8, 3, 3), (6,), (3, 8)], [2, 3, 4]),
    "mismatched_linear": (LIN + [(3, 7), (3,)], [2, 3]),
    "mismatched_conv": ([(4, 2, 3, 3), (4,), (5, 6, 3, 3), (3, 20)], [2, 3]),
    "conv_to_linear_not_multiple": ([(4, 2, 3), (4,), (3, 10), (3,)], [2, 3]),
    "zero_dim": (LIN + [(0, 8), (3, 8)], [2, 3]),
}


@pytest.mark.parametrize("name", sorted(BAD_CHAINS))
def test_from_parameters_errors_and_free(name: str) -> None:
    shapes, free = BAD_CHAINS[name]
    with pytest.raises(GraphBuildError):
        graph_from_parameters(shapes)
    spec = graph_from_parameters(shapes, on_unsupported="free")
    assert spec.free_params == free  # the breaking tensor and everything after it
    assert [p.kind for p in spec.params[:2]] == ["edge", "node"]
    for i in free:
        assert spec.params[i].shape == shapes[i] and spec.params[i].reason
    # the graph part still round-trips; free parameters read back as None
    ts = [torch.randn(s) for s in shapes]
    back = spec.from_graph(spec.to_edge_attr(ts), spec.to_node_attr(ts))
    assert torch.equal(back[0], ts[0]) and torch.equal(back[1], ts[1])
    assert all(back[i] is None for i in free)


def test_from_parameters_stray_vector_does_not_break_chain() -> None:
    shapes = [(8, 4), (8,), (8,), (3, 8), (3,)]  # e.g. a LayerNorm weight after a linear bias
    with pytest.raises(GraphBuildError):
        graph_from_parameters(shapes)
    spec = graph_from_parameters(shapes, on_unsupported="free")
    assert [p.kind for p in spec.params] == ["edge", "node", "free", "edge", "node"]


def test_from_parameters_invalid_inputs() -> None:
    assert issubclass(GraphBuildError, ValueError)
    with pytest.raises(ValueError, match="on_unsupported"):
        graph_from_parameters([(3, 2)], on_unsupported="ignore")  # type: ignore[arg-type]
    with pytest.raises(GraphBuildError):  # nothing fits
        graph_from_parameters([(5,), (5,)])
    spec = graph_from_parameters([(5,), (5,)], on_unsupported="free")  # ... then everything is free
    assert spec.free_params == [0, 1] and spec.num_edges == 0
    with pytest.raises(GraphBuildError):  # a leading bias-like vector
        graph_from_parameters([(4,), (3, 4)])


# --------------------------------------------------------------------------- graph_from_module errors
class _WithEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        self.emb = nn.Embedding(10, 5)

    def forward(self, x: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        return self.mlp(x), self.emb(tokens)


class _WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.head(a)


def _grouped() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 4, 3))


# model factory, indices of the parameters that must be free
BAD_MODULES = {
    "embedding": (_WithEmbedding, [4]),
    "multihead_attention": (_WithAttention, [2, 3]),  # only the in-projection; out_proj is on the graph
    "grouped_conv": (_grouped, [2, 3]),  # the Linear after it reads pinned boundary channels
}


@pytest.mark.parametrize("name", sorted(BAD_MODULES))
def test_from_module_errors_and_free(name: str) -> None:
    make, free = BAD_MODULES[name]
    model = make()
    with pytest.raises(GraphBuildError):
        graph_from_module(model)
    spec = graph_from_module(model, on_unsupported="free")
    assert spec.free_params == free
    params = list(model.parameters())
    for i in free:
        assert spec.params[i].shape == tuple(params[i].shape) and spec.params[i].reason
    assert spec.edge_params  # the rest is still a graph
    ts = [p.detach() for p in params]
    back = spec.from_graph(spec.to_edge_attr(ts), spec.to_node_attr(ts))
    for i, (t, b) in enumerate(zip(ts, back)):
        assert (b is None) if i in free else torch.equal(b, t)


class _TwiceCalled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(torch.relu(self.lin(x)))


class _SharedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("make", [_TwiceCalled, _SharedWeight])
def test_tied_weights_raise_or_go_free(make: type[nn.Module]) -> None:
    with pytest.raises(GraphBuildError, match="tied"):
        graph_from_module(make())
    if make is _TwiceCalled:  # the only layer is tied: nothing is left for a graph
        spec = graph_from_module(make(), on_unsupported="free")
        assert spec.free_params == [0, 1] and "tied" in spec.params[0].reason
    else:  # a and b share the weight; b's own bias goes free with it, nothing is left for a graph
        spec = graph_from_module(make(), on_unsupported="free")
        assert all(p.kind == "free" for p in spec.params) and "tied" in spec.params[0].reason


def test_from_module_invalid_on_unsupported() -> None:
    with pytest.raises(ValueError, match="on_unsupported"):
        graph_from_module(nn.Linear(3, 2), on_unsupported="skip")  # type: ignore[arg-type]
