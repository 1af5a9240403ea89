"""``nn.Embedding`` on the graph (``embeddings="edge"``): token rows are input neurons, the weight a transposed
edge block.

Round trips (``neural_graph`` -> ``from_graph``, ``permute``) must be exact for the ``[num_embeddings, dim]``
weight, every edge must carry ``weight[token, dim]``, and every permutation the spec allows must leave the
model's function unchanged while permuting tokens (input neurons) changes it.
"""

from __future__ import annotations

import pytest
import torch
from test_partial_graphs import RNNLM, TransformerLM  # same directory (rootdir-relative import)
from test_wiring import max_change, nontrivial_perm, randomize
from torch import Tensor, nn

from lopt_graphs.graph import ROLE_INPUT, GraphBuildError, graph_from_module, neural_graph
from lopt_graphs.graph.coarsen import encoder_graph, pooled_neural_graph, sparsify
from lopt_graphs.graph.embedding_rules import FREE_REASON

V = 11


class EmbMLP(nn.Module):
    """Embedding -> Linear -> ReLU -> Linear, with the Embedding's options."""

    def __init__(self, dim: int = 6, **kw) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, dim, **kw)
        self.fc1, self.fc2 = nn.Linear(dim, 8), nn.Linear(8, 5)

    def forward(self, t: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(t))))


class TwoEmbeddings(nn.Module):
    """Token + segment embeddings summed (one output neuron set), scaled, then an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.seg = nn.Embedding(V, 6), nn.Embedding(3, 6)
        self.fc1, self.fc2 = nn.Linear(6, 7), nn.Linear(7, 4)

    def forward(self, t: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1((self.tok(t) + self.seg(t % 3)) * 2.0)))


CASES = {
    "mlp": EmbMLP,
    "mlp_padding_idx": lambda: EmbMLP(padding_idx=0),
    "mlp_max_norm": lambda: EmbMLP(max_norm=1.0),
    "two_embeddings": TwoEmbeddings,
    "lstm_lm": lambda: RNNLM("lstm"),
    "gru_lm": lambda: RNNLM("gru"),
    "transformer_lm": TransformerLM,
}


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = CASES[name]().double().eval()
    randomize(model)
    return model


def _tokens(seed: int = 0) -> Tensor:
    return torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(seed))


def _embeddings(model: nn.Module) -> list[int]:
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [i for i, p in enumerate(model.parameters()) if id(p) in ids]


@pytest.mark.parametrize("name", sorted(CASES))
def test_embedding_is_a_transposed_edge_block_from_input_tokens(name: str) -> None:
    model = _model(name)
    spec = graph_from_module(model, on_unsupported="free", embeddings="edge")
    params = [p.detach() for p in model.parameters()]
    for i in _embeddings(model):
        p = spec.params[i]
        v, d = params[i].shape
        assert p.kind == "edge" and p.transposed and p.shape == (v, d) and (p.rows, p.cols) == (d, v)
        tokens = slice(p.src_start, p.src_start + v)
        assert bool((spec.node_role[tokens] == ROLE_INPUT).all())
        assert torch.equal(spec.node_pos[tokens], torch.arange(v))  # token ids are positional
        # edges in (dst, src) = (dim, token) row-major order, each carrying weight[token, dim]
        e = slice(p.edge_start, p.edge_start + v * d)
        src, dst = spec.edge_index[0, e] - p.src_start, spec.edge_index[1, e] - p.dst_start
        assert torch.equal(dst, torch.arange(d).repeat_interleave(v)) and torch.equal(src, torch.arange(v).repeat(d))
        g = neural_graph(spec, params)
        assert torch.equal(g.edge_attr[e, 0, 0], params[i][src, dst])
    free = [i for i in spec.free_params if "in_proj" not in [n for n, _ in model.named_parameters()][i]]
    assert free == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_roundtrip_with_transposed_weights_is_exact(name: str) -> None:
    model = _model(name)
    spec = graph_from_module(model, on_unsupported="free", embeddings="edge")
    params = [p.detach().clone() for p in model.parameters()]
    g = neural_graph(spec, params)
    back = spec.from_graph(g.edge_attr, g.x)
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(*p.shape, 4, generator=gen, dtype=torch.float64) for p in params]
    g4 = neural_graph(spec, feats)
    back4 = spec.from_graph(g4.edge_attr, g4.x)
    for i, slot in enumerate(spec.params):
        if slot.kind == "free":
            assert back[i] is None
            continue
        assert torch.equal(back[i], params[i].unsqueeze(-1)) and torch.equal(back4[i], feats[i])
    # pooled edge vectors (kmax 1 here: the mean entry is the entry) place them the same way
    assert torch.equal(pooled_neural_graph(spec, feats).edge_attr, g4.edge_attr)
    # spec.permute moves node n to perm[n]: the permuted features on the graph are the same graph relabelled
    perm = spec.random_node_permutation(torch.Generator().manual_seed(2))
    moved = neural_graph(spec, spec.permute(feats, perm))
    where = {e: k for k, e in enumerate(map(tuple, spec.edge_index.t().tolist()))}
    idx = torch.tensor([where[(int(perm[s]), int(perm[d]))] for s, d in spec.edge_index.t().tolist()])
    assert torch.equal(moved.edge_attr[idx], g4.edge_attr) and torch.equal(moved.x[perm], g4.x)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_allowed_permutations_are_symmetries(name: str, seed: int) -> None:
    model = _model(name, seed)
    spec = graph_from_module(model, on_unsupported="free", embeddings="edge")
    x = _tokens(seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(4):
        assert max_change(model, spec, spec.random_node_permutation(gen), x) < 1e-9
    # permuting tokens is not a symmetry: input neurons carry positional ids
    assert max_change(model, spec, nontrivial_perm(spec, "input", seed), x) > 1e-4


def test_embedding_outputs_are_permutable_unless_a_stream_pins_them() -> None:
    for name, permutable in (("mlp", True), ("lstm_lm", True), ("transformer_lm", False)):
        model = _model(name)
        spec = graph_from_module(model, on_unsupported="free", embeddings="edge")
        p = spec.params[_embeddings(model)[0]]
        dims = spec.node_pos[p.dst_start: p.dst_start + p.rows]
        assert bool((dims == -1).all()) == permutable and bool((dims >= 0).all()) != permutable, name
    # an Embedding -> MLP: permuting the embedding's output neurons (with fc1's columns) is checked above;
    # permuting them alone would not be: fc1 reads them
    model = _model("mlp")
    spec = graph_from_module(model, embeddings="edge")
    assert spec.free_params == [] and len(spec.hidden_sets()) == 2


def test_default_keeps_embeddings_free_and_sparse_stays_free() -> None:
    model = _model("mlp")
    spec = graph_from_module(model, on_unsupported="free")
    assert spec.free_params == [0] and FREE_REASON in spec.params[0].reason
    with pytest.raises(GraphBuildError, match="Embedding is graph-free under embeddings='free'"):
        graph_from_module(model)
    with pytest.raises(ValueError, match="Invalid embeddings"):
        graph_from_module(model, embeddings="graph")  # type: ignore[arg-type]
    torch.manual_seed(0)
    sparse = EmbMLP(sparse=True)
    spec = graph_from_module(sparse, on_unsupported="free", embeddings="edge")
    assert spec.free_params == [0] and "sparse" in spec.params[0].reason
    assert int((spec.node_role == ROLE_INPUT).sum()) == 0  # no token neurons left behind: fc1 reads a boundary
    with pytest.raises(GraphBuildError, match="sparse"):
        graph_from_module(sparse, embeddings="edge")


class BigVocab(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, t: Tensor) -> Tensor:
        return self.out(torch.relu(self.fc(self.emb(t))))


def test_large_vocabulary_is_sparsified_for_the_encoder() -> None:
    """A 30K-token embedding is millions of edges; the encoder's graph keeps at most ``k`` strongest edges
    per row and column of the block (``SPARSIFY_ABOVE``/``SPARSIFY_K`` in ``coarsen``)."""
    torch.manual_seed(0)
    model = BigVocab(30522, 128)
    spec = graph_from_module(model, embeddings="edge")
    assert spec.num_edges == 30522 * 128 + 128 * 16 + 16 * 3
    feats = [torch.randn(*p.shape, 6) for p in model.parameters()]
    g = encoder_graph(spec, feats, entry_nonlinearity=False)
    emb = spec.params[0]
    in_block = (g.edge_index[1] >= emb.dst_start) & (g.edge_index[1] < emb.dst_start + emb.rows) & (
        g.edge_index[0] >= emb.src_start) & (g.edge_index[0] < emb.src_start + emb.cols)
    kept = int(in_block.sum())
    assert 16 * 30522 <= kept <= 16 * (30522 + 128)  # every token keeps its 16 strongest dims, and so on
    # the kept edges carry the right entries
    src, dst = g.edge_index[0, in_block] - emb.src_start, g.edge_index[1, in_block] - emb.dst_start
    assert torch.equal(g.edge_attr[in_block, 0], feats[0][src, dst])


def test_sparsified_embedding_graph_is_equivariant() -> None:
    torch.manual_seed(0)
    model = BigVocab(200, 12).double()
    spec = graph_from_module(model, embeddings="edge")
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(*p.shape, 3, generator=g, dtype=torch.float64) for p in spec.params]
    perm = spec.random_node_permutation(torch.Generator().manual_seed(2))
    a = sparsify(neural_graph(spec, feats), spec, k=3)
    b = sparsify(neural_graph(spec, spec.permute(feats, perm)), spec, k=3)
    assert a.edge_index.shape[1] < spec.num_edges
    # the same edges survive, relabelled by the permutation
    ea = {(int(perm[s]), int(perm[d])) for s, d in a.edge_index.t().tolist()}
    eb = {(s, d) for s, d in b.edge_index.t().tolist()}
    assert ea == eb
