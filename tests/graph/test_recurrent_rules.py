"""LSTM / GRU / RNN rules: gate blocks and hidden state share one permutation, and nothing else is claimed.

Every permutation the spec allows (``random_node_permutation``: free hidden sets shuffled, each tied group
by one permutation of its units) must leave the model's output unchanged; permutations it does not allow
(one gate block alone, the gates without the hidden state, the input tokens) must change it, so the checks
can fail.
"""

from __future__ import annotations

import pytest
import torch
from test_wiring import max_change, nontrivial_perm, randomize  # same directory (rootdir-relative import)
from torch import Tensor, nn

from lopt_graphs.graph import ACTIVATIONS, GraphBuildError, GraphSpec, graph_from_module, neural_graph
from lopt_graphs.graph.recurrent_rules import GATES
from lopt_graphs.nn import EncoderConfig, NeuralGraphEncoder

D_IN, D_OUT = 3, 4


class RecNet(nn.Module):
    """Linear -> tanh -> LSTM/GRU/RNN -> Linear over the output sequence (inputs ``[B, T, D_IN]``, or
    ``[T, B, D_IN]`` with ``batch_first=False``)."""

    def __init__(self, cell: str, hidden: int = 5, batch_first: bool = True, **kw) -> None:
        super().__init__()
        self.inp = nn.Linear(D_IN, 6)
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN, "rnn_relu": nn.RNN}[cell]
        if cell == "rnn_relu":
            kw["nonlinearity"] = "relu"
        self.rnn = cls(6, hidden, batch_first=batch_first, **kw)
        out = (kw.get("proj_size") or hidden) * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(out, D_OUT)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(torch.tanh(self.inp(x)))[0])


# name -> (cell, keyword arguments of the recurrent layer)
CASES = {
    "lstm": ("lstm", {}),
    "lstm_2layers_seq_first": ("lstm", {"num_layers": 2, "batch_first": False}),
    "lstm_bidirectional_2layers": ("lstm", {"num_layers": 2, "bidirectional": True}),
    "lstm_proj": ("lstm", {"proj_size": 3}),
    "lstm_proj_bidirectional": ("lstm", {"proj_size": 3, "bidirectional": True, "num_layers": 2}),
    "lstm_no_bias": ("lstm", {"bias": False}),
    "gru": ("gru", {}),
    "gru_bidirectional": ("gru", {"bidirectional": True}),
    "gru_2layers_dropout": ("gru", {"num_layers": 2, "dropout": 0.3}),
    "rnn_tanh": ("rnn", {}),
    "rnn_relu_bidirectional": ("rnn_relu", {"bidirectional": True}),
}


def _model(name: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    cell, kw = CASES[name]
    torch.manual_seed(seed)
    model = RecNet(cell, **dict(kw)).double().eval()
    randomize(model)
    with torch.no_grad():  # keep the recurrence away from saturation, so every permutation shows
        for p in model.rnn.parameters():
            p.mul_(0.6)
    x = torch.randn(4, 7, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return model, x


def _spec(model: nn.Module) -> GraphSpec:
    return graph_from_module(model)  # on_unsupported="error": everything must have a rule


def _tie_broken(spec: GraphSpec, group: int, rows: list[int], seed: int) -> Tensor:
    """A permutation that moves only ``rows`` of tied group ``group`` (by one permutation of the units)."""
    ids = spec.tied[group]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.arange(spec.num_nodes)
    while True:
        sigma = torch.randperm(ids.shape[1], generator=gen)
        if not torch.equal(sigma, torch.arange(ids.shape[1])):
            break
    for r in rows:
        perm[ids[r]] = ids[r][sigma]
    return perm


@pytest.mark.parametrize("name", sorted(CASES))
def test_recurrent_layer_is_on_the_graph_with_its_gates_tied(name: str) -> None:
    model, _ = _model(name)
    spec = _spec(model)
    names = [n for n, _ in model.named_parameters()]
    assert spec.free_params == []
    kinds = {n: spec.params[i].kind for i, n in enumerate(names)}
    assert all(kinds[n] == ("edge" if ".weight" in n else "node") for n in names)
    rnn = model.rnn
    g, h = len(GATES[rnn.mode]), rnn.hidden_size
    dirs = 2 if rnn.bidirectional else 1
    p = getattr(rnn, "proj_size", 0)
    assert len(spec.tied) == rnn.num_layers * dirs * (2 if p else 1)
    for layer in range(rnn.num_layers):
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih = spec.params[names.index(f"rnn.weight_ih{sfx}")]
            w_hh = spec.params[names.index(f"rnn.weight_hh{sfx}")]
            assert (w_ih.rows, w_hh.rows, w_hh.cols) == (g * h, g * h, p or h)
            assert w_ih.dst_start == w_hh.dst_start  # both write the gate neurons
            gates = w_ih.dst_start + torch.arange(g * h).view(g, h)
            # the group holding these gates: its rows are the G gate blocks and the hidden (or cell) units
            group = next(t for t in spec.tied if torch.equal(t[0], gates[0]))
            assert torch.equal(group[:g], gates) and group.shape == (g + 1, h)
            if not p:  # the last row is this direction's half of the output, which weight_hh reads back
                assert torch.equal(group[g], w_hh.src_start + torch.arange(h))
            else:
                w_hr = spec.params[names.index(f"rnn.weight_hr{sfx}")]
                assert torch.equal(group[g], w_hr.src_start + torch.arange(h))
                assert w_hr.dst_start == w_hh.src_start
            acts = spec.node_act[gates[:, 0]].tolist()
            assert [ACTIVATIONS[a] for a in acts] == list(GATES[rnn.mode])
    # tied neurons are hidden and anonymous, and not in the freely permutable sets
    tied = torch.cat([t.flatten() for t in spec.tied])
    assert bool((spec.node_pos[tied] == -1).all()) and tied.unique().numel() == tied.numel()
    free = torch.cat(spec.hidden_sets())
    assert not bool(torch.isin(free, tied).any())


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_allowed_permutations_are_symmetries(name: str, seed: int) -> None:
    model, x = _model(name, seed)
    spec = _spec(model)
    gen = torch.Generator().manual_seed(seed)
    tied = torch.cat([t.flatten() for t in spec.tied])
    moved_tied = False
    for _ in range(5):
        perm = spec.random_node_permutation(gen)
        moved_tied |= bool((perm[tied] != tied).any())
        assert max_change(model, spec, perm, x) < 1e-9
    assert moved_tied


@pytest.mark.parametrize("name", sorted(CASES))
def test_permutations_outside_the_spec_change_the_output(name: str) -> None:
    model, x = _model(name)
    spec = _spec(model)
    for gi, ids in enumerate(spec.tied):
        k = ids.shape[0]
        if k > 1:
            # the units of one block alone; and the gates without the hidden state
            assert max_change(model, spec, _tie_broken(spec, gi, [0], gi), x) > 1e-4
            assert max_change(model, spec, _tie_broken(spec, gi, list(range(k - 1)), gi), x) > 1e-4
            # all rows together: allowed
            assert max_change(model, spec, _tie_broken(spec, gi, list(range(k)), gi), x) < 1e-9
    assert max_change(model, spec, nontrivial_perm(spec, "input", 0), x) > 1e-4


def test_independent_permutation_of_the_gate_set_changes_the_output() -> None:
    """Had the gates been a plain hidden set (one set, freely shuffled), the claimed symmetry would be false."""
    model, x = _model("lstm")
    spec = _spec(model)
    ids = spec.tied[0]
    gen = torch.Generator().manual_seed(0)
    perm = torch.arange(spec.num_nodes)
    gates = ids[:-1].flatten()
    perm[gates] = gates[torch.randperm(gates.numel(), generator=gen)]
    perm[ids[-1]] = ids[-1]
    assert max_change(model, spec, perm, x) > 1e-4


class ReadsStates(nn.Module):
    """Classifies from the final hidden state ``h_n[-1]``: states are read outside the graph."""

    def __init__(self, cell: str = "lstm") -> None:
        super().__init__()
        self.inp = nn.Linear(D_IN, 6)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(6, 5, num_layers=2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(5, 7), nn.Linear(7, D_OUT)

    def forward(self, x: Tensor) -> Tensor:
        _, states = self.rnn(torch.tanh(self.inp(x)))
        h = states[0] if isinstance(states, tuple) else states
        return self.fc2(torch.relu(self.fc1(h[-1])))


class GivenState(nn.Module):
    """A GRU started from a learned initial state (read by position: the layer stays graph-free)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(D_IN, 6)
        self.rnn = nn.GRU(6, 5, batch_first=True)
        self.h0 = nn.Parameter(torch.zeros(1, 1, 5))
        self.head = nn.Linear(5, D_OUT)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(self.inp(x), self.h0.expand(1, 4, 5).contiguous())[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_read_states_pin_the_hidden_units(cell: str) -> None:
    torch.manual_seed(0)
    model = ReadsStates(cell).double().eval()
    randomize(model)
    x = torch.randn(4, 7, D_IN, dtype=torch.float64)
    spec = graph_from_module(model, on_unsupported="free")
    names = [n for n, _ in model.named_parameters()]
    assert all(spec.params[names.index(f"rnn.weight_hh_l{i}")].kind == "edge" for i in range(2))
    assert spec.tied == ()  # no symmetry claimed through the states
    w_hh = spec.params[names.index("rnn.weight_hh_l1")]
    assert bool((spec.node_pos[w_hh.dst_start: w_hh.dst_start + w_hh.rows] >= 0).all())
    assert spec.hidden_sets()  # fc1's hidden units and inp's outputs stay permutable
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        assert max_change(model, spec, spec.random_node_permutation(gen), x) < 1e-9


def test_initial_state_passed_in_leaves_the_layer_free() -> None:
    torch.manual_seed(0)
    model = GivenState().double().eval()
    randomize(model)
    with pytest.raises(GraphBuildError, match="initial state"):
        graph_from_module(model)
    spec = graph_from_module(model, on_unsupported="free")
    names = [n for n, _ in model.named_parameters()]
    assert {names[i] for i in spec.free_params} == {n for n in names if n.startswith("rnn.")} | {"h0"}
    assert "initial state" in spec.params[names.index("rnn.weight_hh_l0")].reason
    x = torch.randn(4, 7, D_IN, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        assert max_change(model, spec, spec.random_node_permutation(gen), x) < 1e-9


class TwoStreams(nn.Module):
    """A residual around an LSTM, and two GRUs whose outputs are added: ties merge through the sums."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(D_IN, 5)
        self.lstm = nn.LSTM(5, 5, batch_first=True)
        self.gru1, self.gru2 = nn.GRU(5, 4, batch_first=True), nn.GRU(5, 4, batch_first=True)
        self.head = nn.Linear(4, D_OUT)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        h = h + self.lstm(h)[0]
        return self.head(self.gru1(h)[0] + self.gru2(h)[0])


def test_ties_merge_through_residual_sums() -> None:
    torch.manual_seed(0)
    model = TwoStreams().double().eval()
    randomize(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.6)
    x = torch.randn(4, 7, D_IN, dtype=torch.float64)
    spec = graph_from_module(model)
    names = [n for n, _ in model.named_parameters()]
    # the stream (inp's outputs) joins the LSTM's tie; the two GRUs share one tie through their sum
    assert sorted(t.shape[0] for t in spec.tied) == [4 + 1, 3 + 3 + 1]
    inp = spec.params[names.index("inp.weight")]
    lstm_group = next(t for t in spec.tied if t.shape[0] == 5)
    assert torch.equal(lstm_group[-1], inp.dst_start + torch.arange(5))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert max_change(model, spec, spec.random_node_permutation(gen), x) < 1e-9
    gru_group = next(t for t in spec.tied if t.shape[0] == 7)
    gi = [i for i, t in enumerate(spec.tied) if t is gru_group][0]
    assert max_change(model, spec, _tie_broken(spec, gi, [0, 1, 2, 6], 0), x) > 1e-4  # gru1 only


def test_encoder_is_equivariant_to_tied_permutations() -> None:
    model, _ = _model("lstm_bidirectional_2layers")
    spec = _spec(model)
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(*p.shape, 3, generator=g, dtype=torch.float64) for p in spec.params]
    torch.manual_seed(0)
    enc = NeuralGraphEncoder(EncoderConfig(node_in=3, edge_in=3, hidden=16, edge_hidden=8, layers=2,
                                           node_out=2, edge_out=2)).double()
    perm = spec.random_node_permutation(torch.Generator().manual_seed(2))
    out, out_p = enc(neural_graph(spec, feats)), enc(neural_graph(spec, spec.permute(feats, perm)))
    torch.testing.assert_close(out_p.node[perm], out.node, rtol=1e-9, atol=1e-9)
    a = spec.permute(spec.from_graph(out.edge_out, out.node_out), perm)
    for u, v in zip(a, spec.from_graph(out_p.edge_out, out_p.node_out)):
        torch.testing.assert_close(v, u, rtol=1e-9, atol=1e-9)
