"""The learned step is equivariant to permutations of hidden neurons (and only to those).

Model B is model A with its hidden neurons permuted (``spec.permute``), a symmetry of the network. B gets
A's gradients, permuted, at every step. After a few steps B must equal A's parameters permuted. The learned
head is random and nonzero, float64 throughout, and the encoder runs every step, so its output matters.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lopt_graphs.optim import LearnedUpdate, NeuralGraphOptimizer

from .optim_infos import random_head_learned

STEPS = 3
DT = torch.float64


class SmallCNN(nn.Module):
    """Conv2d -> ReLU -> flatten -> Linear (a flattened conv channel feeds S=16 entries of each edge)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class ResidualLN(nn.Module):
    """Linear in -> 2 pre-LayerNorm residual blocks -> LayerNorm -> Linear out (norms and biases are node
    parameters; the residual stream is one neuron set)."""

    def __init__(self, d_in=5, d=8, d_out=3):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({"ln": nn.LayerNorm(d), "fc1": nn.Linear(d, 12), "fc2": nn.Linear(12, d)}) for _ in range(2)])
        self.ln_f = nn.LayerNorm(d)
        self.out = nn.Linear(d, d_out)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b["fc2"](torch.relu(b["fc1"](b["ln"](h))))
        return self.out(self.ln_f(h))


def _mlp():
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


ARCHS = [
    # (name, factory, input shape, front end)
    ("mlp", _mlp, (16, 5), "parameters"),
    ("cnn", SmallCNN, (8, 2, 6, 6), "parameters"),
    ("cnn_traced", SmallCNN, (8, 2, 6, 6), "for_module"),
    ("residual_layernorm", ResidualLN, (16, 5), "for_module"),
]


def _opt(model, how, learned: LearnedUpdate):
    if how == "for_module":
        return NeuralGraphOptimizer.for_module(model, learned, encoder_every=1, lr=20.0)
    return NeuralGraphOptimizer(model.parameters(), learned, encoder_every=1, lr=20.0)


def _run_pair(factory, xshape, how, include, learned_factory):
    """A and B = A permuted (``include`` neurons); B gets A's grads permuted.

    Returns:
        ``(perm(A), B, A, A0)`` after the steps (A0: A before them).
    """
    torch.manual_seed(0)
    a = factory().to(DT)
    b = copy.deepcopy(a)
    opt_a, opt_b = _opt(a, how, learned_factory()), _opt(b, how, learned_factory())
    spec = opt_a.graph_spec(0)
    assert not spec.free_params, spec
    perm = spec.random_node_permutation(torch.Generator().manual_seed(1), include=include)
    assert not torch.equal(perm, torch.arange(spec.num_nodes)), "trivial permutation"
    with torch.no_grad():
        for pb, v in zip(b.parameters(), spec.permute([p.detach() for p in a.parameters()], perm)):
            pb.copy_(v)
    a0 = [p.detach().clone() for p in a.parameters()]
    g = torch.Generator().manual_seed(2)
    for _ in range(STEPS):
        x = torch.randn(*xshape, generator=g, dtype=DT)
        y = torch.randn(xshape[0], 3, generator=g, dtype=DT)
        opt_a.zero_grad()
        (a(x) - y).square().mean().backward()
        for pb, gb in zip(b.parameters(), spec.permute([p.grad for p in a.parameters()], perm)):
            pb.grad = gb.clone()
        opt_a.step()
        opt_b.step()
    a1 = [p.detach() for p in a.parameters()]
    return spec.permute(a1, perm), [p.detach() for p in b.parameters()], a1, a0


def _random_head():
    return random_head_learned(seed=3, dtype=DT)


def _adam_head():  # the zero-head (untrained) learned update: exactly Adam
    return LearnedUpdate().to(DT)


def _max_diff(xs, ys):
    return max((u - v).abs().max().item() for u, v in zip(xs, ys))


@pytest.mark.parametrize("name, factory, xshape, how", ARCHS, ids=[a[0] for a in ARCHS])
def test_hidden_permutation_equivariance(name, factory, xshape, how):
    permuted_a, b, a1, a0 = _run_pair(factory, xshape, how, "hidden", _random_head)
    for i, (u, v) in enumerate(zip(permuted_a, b)):
        torch.testing.assert_close(v, u, atol=1e-8, rtol=0, msg=lambda m: f"parameter {i}: {m}")
    # not vacuous: the parameters moved, and the learned head made the steps differ from Adam's
    assert _max_diff(a1, a0) > 1e-2
    adam_a1 = _run_pair(factory, xshape, how, "hidden", _adam_head)[2]
    assert _max_diff(a1, adam_a1) > 1e-4


@pytest.mark.parametrize("name, factory, xshape, how", ARCHS[:2] + ARCHS[3:], ids=["mlp", "cnn", "residual_layernorm"])
def test_input_permutation_is_not_equivariant(name, factory, xshape, how):
    """Input neurons carry positional embeddings: permuting them is not a symmetry of the learned step."""
    permuted_a, b, _, _ = _run_pair(factory, xshape, how, "input", _random_head)
    assert _max_diff(permuted_a, b) > 1e-6
    # control: the Adam-equivalent head is elementwise, hence equivariant to any relabelling
    permuted_a, b, _, _ = _run_pair(factory, xshape, how, "input", _adam_head)
    assert _max_diff(permuted_a, b) < 1e-10
