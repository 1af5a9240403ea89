"""The learned step stays equivariant on partial graphs (free Embedding / LSTM / attention parameters).

As in ``test_equivariance.py``: B is A with its permutable hidden neurons permuted, B gets A's gradients
permuted; after a few steps (encoder every step, random nonzero head) B must equal A permuted. Free
parameters are not permuted and must take identical steps in A and B.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

from lopt_graphs.optim import NeuralGraphOptimizer

from .optim_infos import random_head_learned

DT = torch.float64


class LSTMLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(9, 5)
        self.rnn = nn.LSTM(5, 6, batch_first=True)
        self.fc, self.out = nn.Linear(6, 8), nn.Linear(8, 9)

    def forward(self, t: Tensor) -> Tensor:
        return self.out(torch.tanh(self.fc(self.rnn(self.emb(t))[0])))


class TransformerLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(9, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 10, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = nn.Linear(8, 9)

    def forward(self, t: Tensor) -> Tensor:
        return self.out(self.enc(self.emb(t)))


@pytest.mark.parametrize("factory, embeddings", [(LSTMLM, "free"), (LSTMLM, "edge"), (TransformerLM, "edge")],
                         ids=["lstm_lm_free_embedding", "lstm_lm", "transformer_lm"])
def test_partial_graph_step_is_equivariant(factory, embeddings) -> None:
    torch.manual_seed(0)
    a = factory().to(DT)
    b = copy.deepcopy(a)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt_a = NeuralGraphOptimizer.for_module(a, random_head_learned(seed=3, dtype=DT), encoder_every=1, lr=20.0,
                                                embeddings=embeddings)
        opt_b = NeuralGraphOptimizer.for_module(b, random_head_learned(seed=3, dtype=DT), encoder_every=1, lr=20.0,
                                                embeddings=embeddings)
    spec = opt_a.graph_spec(0)
    # the warning names graph-free parameters exactly when there are some (the LSTM LM with its embedding: none)
    assert bool(spec.free_params) == any("graph-free" in str(w.message) for w in caught)
    assert bool(spec.free_params) == (factory is TransformerLM or embeddings == "free") and spec.hidden_sets()
    perm = spec.random_node_permutation(torch.Generator().manual_seed(1))
    assert not torch.equal(perm, torch.arange(spec.num_nodes))
    with torch.no_grad():
        for pb, v in zip(b.parameters(), spec.permute([p.detach() for p in a.parameters()], perm)):
            pb.copy_(v)
    a0 = [p.detach().clone() for p in a.parameters()]
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        t = torch.randint(0, 9, (4, 6), generator=g)
        opt_a.zero_grad()
        a(t).square().mean().backward()
        for pb, gb in zip(b.parameters(), spec.permute([p.grad for p in a.parameters()], perm)):
            pb.grad = gb.clone()
        opt_a.step()
        opt_b.step()
    expected = spec.permute([p.detach() for p in a.parameters()], perm)
    for i, (u, v) in enumerate(zip(expected, b.parameters())):
        torch.testing.assert_close(v.detach(), u, atol=1e-8, rtol=0, msg=lambda m: f"parameter {i}: {m}")
    # not vacuous: graph and free parameters moved
    moved = [float((p.detach() - q).abs().max()) for p, q in zip(a.parameters(), a0)]
    assert min((moved[i] for i in spec.free_params), default=1.0) > 1e-3 and max(moved[i] for i in spec.edge_params) > 1e-3
