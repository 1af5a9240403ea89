"""Partial graphs: modules without a rule free only their own parameters; the rest stays wired exactly.

For language models (an Embedding by default, attention in-projections) the Linear/LayerNorm/LSTM/GRU layers
around the unknown modules must stay on the graph, and permuting the hidden neurons the spec says are permutable must leave
the model's function unchanged (the neurons at the boundary of an unknown module are pinned). The
attention rules are checked the same way: the feed-forward hidden neurons of a TransformerEncoderLayer
are permutable, the residual stream is not.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_wiring import max_change, permuted_model, randomize  # same directory (rootdir-relative import)
from torch import Tensor, nn

from lopt_graphs.graph import GraphBuildError, graph_from_module
from lopt_graphs.graph.describe import describe_spec
from lopt_graphs.graph.module_walk import graph_from_module_walk

V, D = 11, 6


class RNNLM(nn.Module):
    """Embedding -> LSTM/GRU -> Linear -> LayerNorm -> ReLU -> Linear (a decoder MLP over the RNN state)."""

    def __init__(self, cell: str = "lstm", h: int = 7) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(D, h, batch_first=True)
        self.fc = nn.Linear(h, 9)
        self.ln = nn.LayerNorm(9)
        self.out = nn.Linear(9, V)

    def forward(self, t: Tensor) -> Tensor:
        h, _ = self.rnn(self.emb(t))
        return self.out(torch.relu(self.ln(self.fc(h))))


class TransformerLM(nn.Module):
    def __init__(self, norm_first: bool = False, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(8, V)

    def forward(self, t: Tensor) -> Tensor:
        return self.head(self.enc(self.emb(t)))


class AttentionBlock(nn.Module):
    """A hand-written block with ``nn.MultiheadAttention`` and an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(8, 10), nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.fc2(torch.relu(self.fc1(a)))


class Custom(nn.Module):
    """A parameter read directly by an operation (no module rule) between two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)) * self.scale)


# model factory, input, names of the parameters that must be free, whether some hidden set is permutable
CASES = {
    # the LSTM/GRU is on the graph (tests/graph/test_recurrent_rules.py); it reads pinned boundary neurons
    "lstm_lm": (lambda: RNNLM("lstm"), "tokens", ["emb.weight"], True),
    "gru_lm": (lambda: RNNLM("gru"), "tokens", ["emb.weight"], True),
    "transformer_lm": (TransformerLM, "tokens", ["emb.weight"] + [f"enc.layers.{i}.self_attn.in_proj_{k}"
                                                                   for i in range(2) for k in ("weight", "bias")],
                       True),
    "transformer_lm_norm_first": (lambda: TransformerLM(norm_first=True), "tokens",
                                  ["emb.weight"] + [f"enc.layers.{i}.self_attn.in_proj_{k}" for i in range(2)
                                                    for k in ("weight", "bias")], True),
    "attention_block": (AttentionBlock, "dense", ["attn.in_proj_weight", "attn.in_proj_bias"], True),
    "custom_parameter": (Custom, "dense", ["scale"], False),
}


def _input(kind: str) -> Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "tokens":
        return torch.randint(0, V, (3, 5), generator=g)
    return torch.randn(3, 5, 4, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(CASES))
def test_partial_graph_frees_only_unknown_modules(name: str) -> None:
    make, _, free, _ = CASES[name]
    model = make()
    names = [n for n, _ in model.named_parameters()]
    spec = graph_from_module(model, on_unsupported="free")
    assert [names[i] for i in spec.free_params] == free
    assert spec.num_nodes > 0 and spec.edge_params  # the Linear/norm layers around them are on the graph
    assert all(spec.params[i].reason for i in spec.free_params)
    desc = describe_spec(spec, names)
    assert [r.name for r in desc.free] == free and desc.totals()["free"][0] == len(free)
    assert "free" in str(desc) and names[spec.edge_params[0]] in str(desc)
    with pytest.raises(GraphBuildError):
        graph_from_module(make())


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_partial_graph_hidden_permutation_is_a_symmetry(name: str, seed: int) -> None:
    make, kind, _, permutable = CASES[name]
    torch.manual_seed(seed)
    model = make().double().eval()
    randomize(model)
    spec = graph_from_module(model, on_unsupported="free")
    assert bool(spec.hidden_sets()) == permutable
    x = _input(kind)
    gen = torch.Generator().manual_seed(seed)
    moved = False
    for _ in range(4):
        perm = spec.random_node_permutation(gen)
        moved |= not torch.equal(perm, torch.arange(spec.num_nodes))
        assert max_change(model, spec, perm, x) < 1e-8
    assert moved == permutable
    # the neurons next to the unknown modules are pinned: permuting them would change the function
    pinned = (spec.node_role == 1) & (spec.node_pos >= 0)
    assert bool(pinned.any())


def test_transformer_stream_is_pinned_and_ffn_hidden_is_free() -> None:
    model = TransformerLM()
    spec = graph_from_module(model, on_unsupported="free")
    names = [n for n, _ in model.named_parameters()]
    lin1 = spec.params[names.index("enc.layers.0.linear1.weight")]
    lin2 = spec.params[names.index("enc.layers.0.linear2.weight")]
    ffn = spec.node_pos[lin1.dst_start: lin1.dst_start + lin1.rows]
    stream = spec.node_pos[lin2.dst_start: lin2.dst_start + lin2.rows]
    assert bool((ffn == -1).all()) and bool((stream >= 0).all())
    # norm1/norm2 and out_proj/linear2 sit on the one residual stream
    n1 = spec.params[names.index("enc.layers.0.norm1.weight")]
    out = spec.params[names.index("enc.layers.0.self_attn.out_proj.weight")]
    assert n1.dst_start == lin2.dst_start == out.dst_start


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.norm = nn.LayerNorm(6)
        self.emb = nn.Embedding(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.b(self.norm(torch.relu(self.a(x))))


def test_module_walk_fallback_wires_each_layer_pinned() -> None:
    model = Untraceable()
    with pytest.raises(GraphBuildError, match="trace"):
        graph_from_module(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = graph_from_module(model, on_unsupported="free")
    assert len([w for w in caught if "module walk" in str(w.message)]) == 1
    assert spec.built_by == "module walk"
    kinds = [p.kind for p in spec.params]
    assert kinds == ["edge", "node", "edge", "node", "node", "node", "free"]
    assert bool((spec.node_pos >= 0).all())  # nothing is claimed permutable without a trace
    assert spec.hidden_sets() == []
    assert graph_from_module_walk(model).num_edges == 4 * 6 + 6 * 3


def test_hf_bert_is_traced_with_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).double().eval()
    spec = graph_from_module(model, on_unsupported="free")
    # transformers >= 5 has no fx tracer: torch.fx traces it with the untraceable submodules as leaves
    assert spec.built_by.startswith(("torch.fx", "transformers.fx"))
    names = [n for n, _ in model.named_parameters()]
    free = {names[i] for i in spec.free_params}
    assert {"bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight"} <= free
    assert {"classifier.weight", "bert.pooler.dense.weight", "bert.encoder.layer.0.intermediate.dense.weight",
            "bert.encoder.layer.1.output.LayerNorm.weight"}.isdisjoint(free)
    assert spec.hidden_sets()  # the feed-forward hidden neurons are permutable
    # function invariance on the graph part
    randomize(model)
    x = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    perm = spec.random_node_permutation(gen)
    assert not torch.equal(perm, torch.arange(spec.num_nodes))
    with torch.no_grad():
        a, b = model(x).logits, permuted_model(model, spec, perm)(x).logits
    assert float((a - b).abs().max()) < 1e-8


# --------------------------------------------------------------------------- token sequences
class TokenClassifier(nn.Module):
    """A flat input read as ``T`` tokens of ``F`` features (``nn.Unflatten``), a Linear token embedding plus a
    positional ``nn.Embedding``, an encoder layer, a mean over the tokens and a head."""

    def __init__(self, t: int = 5, f: int = 3, d: int = 6) -> None:
        super().__init__()
        self.tokens = nn.Unflatten(1, (t, f))
        self.embed = nn.Linear(f, d)
        self.pos = nn.Embedding(t, d)
        self.register_buffer("positions", torch.arange(t), persistent=False)
        self.layer = nn.TransformerEncoderLayer(d, 2, 10, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer(self.embed(self.tokens(x)) + self.pos(self.positions)).mean(dim=1))


class TokenMLP(nn.Module):
    """``T = 6`` tokens of 3 features through a per-token Linear + ReLU into 6 (permutable) hidden neurons, then
    ``tail``: ``"mean"`` pools the tokens (the hidden neurons stay permutable); ``"feature_mean"`` reduces the
    neurons, leaving the 6 tokens as the head's features; ``"flatten"`` folds the tokens into the features."""

    def __init__(self, tail: str) -> None:
        super().__init__()
        self.tokens, self.embed, self.tail = nn.Unflatten(1, (6, 3)), nn.Linear(3, 6), tail
        self.head = nn.Linear(36 if tail == "flatten" else 6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.embed(self.tokens(x)))
        return self.head(h.mean(1) if self.tail == "mean" else h.mean(-1) if self.tail == "feature_mean"
                         else h.flatten(1))


def test_unflattened_input_gives_token_feature_inputs_and_token_mean_keeps_the_stream() -> None:
    torch.manual_seed(0)
    model = TokenClassifier().double().eval()
    randomize(model)
    spec = graph_from_module(model, on_unsupported="free", embeddings="edge")
    names = [n for n, _ in model.named_parameters()]
    assert [names[i] for i in spec.free_params] == ["layer.self_attn.in_proj_weight", "layer.self_attn.in_proj_bias"]
    embed, pos, head = (spec.params[names.index(n)] for n in ("embed.weight", "pos.weight", "head.weight"))
    # 3 token features and 5 positions are the input neurons; the stream runs from both into the head
    assert int((spec.node_role == 0).sum()) == 3 + 5
    assert bool((spec.node_role[embed.src_start: embed.src_start + embed.cols] == 0).all())
    assert embed.dst_start == pos.dst_start == head.src_start and pos.transposed
    assert spec.hidden_sets()  # the feed-forward neurons
    x = torch.randn(7, 15, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        assert max_change(model, spec, spec.random_node_permutation(gen), x) < 1e-8
    assert max_change(model, spec, spec.random_node_permutation(gen, include="input"), x) > 1e-4


@pytest.mark.parametrize("tail", ["mean", "feature_mean", "flatten"])
def test_only_a_reduction_over_tokens_keeps_the_neurons_of_a_sequence(tail: str) -> None:
    torch.manual_seed(0)
    model = TokenMLP(tail).double()
    randomize(model)
    x = torch.randn(7, 18, dtype=torch.float64)
    if tail != "mean":
        with pytest.raises(GraphBuildError, match="reduction over the neuron dim" if tail == "feature_mean"
                           else "flatten that mixes the neuron dim"):
            graph_from_module(model)
    spec = graph_from_module(model, on_unsupported="free")
    assert bool(spec.hidden_sets()) == (tail == "mean")  # else the hidden neurons are read by position
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        assert max_change(model, spec, spec.random_node_permutation(gen), x) < 1e-8


def test_unflatten_of_hidden_neurons_pins_them() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Unflatten(1, (2, 3)), nn.Linear(3, 5), nn.Flatten(),
                          nn.Linear(10, 2)).double()
    spec = graph_from_module(model, on_unsupported="free")
    first = spec.params[0]
    assert bool((spec.node_pos[first.dst_start: first.dst_start + first.rows] >= 0).all())
    assert int((spec.node_role == 0).sum()) == 4  # the boundary after the unflatten is not an input
