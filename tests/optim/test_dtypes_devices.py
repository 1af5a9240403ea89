"""Dtypes, devices, sparse and non-finite gradients, and parameters that fit no graph."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lopt_graphs.graph import GraphBuildError
from lopt_graphs.optim import NeuralGraphOptimizer

from .optim_infos import (
    assert_params_equal,
    assert_tree_equal,
    mse,
    random_head_learned,
    regression_data,
    snapshot,
    state_snapshot,
    tiny_mlp,
    train_steps,
)

MOMENTS = ("m_fast", "m_adam", "m_slow", "v")


# --------------------------------------------------------------------------- dtypes
def test_bfloat16_trains_with_float32_state():
    x, y = regression_data(dtype=torch.bfloat16)
    model = tiny_mlp(dtype=torch.bfloat16)
    # lr=10 (step 1e-2): Adam-size steps of 1e-3 are mostly below bfloat16's resolution at |w| ~ 0.3
    opt = NeuralGraphOptimizer(model.parameters(), random_head_learned(), lr=10.0, encoder_every=2)
    losses = train_steps(model, opt, x, y, 40)
    final = mse(model, x, y).item()
    assert final < 0.5 * losses[0], (losses[0], final)  # measured: 0.96 -> ~0.1
    for p in model.parameters():
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all()
        st = opt.state[p]
        for k, v in st.items():
            if k != "step":
                assert v.dtype == torch.float32, (k, v.dtype)
        assert set(MOMENTS) <= set(st)


def test_bfloat16_state_dict_round_trip_keeps_float32_state():
    x, y = regression_data(dtype=torch.bfloat16)
    model = tiny_mlp(dtype=torch.bfloat16)
    opt = NeuralGraphOptimizer(model.parameters(), lr=10.0)
    train_steps(model, opt, x, y, 3)
    model2 = copy.deepcopy(model)
    opt2 = NeuralGraphOptimizer(model2.parameters(), lr=10.0)
    opt2.load_state_dict(opt.state_dict())
    dtypes = {k: v.dtype for k, v in opt2.state[model2[0].weight].items() if k != "step"}
    assert set(dtypes.values()) == {torch.float32}, dtypes
    train_steps(model, opt, x, y, 5)
    train_steps(model2, opt2, x, y, 5)
    assert_params_equal(model.parameters(), model2.parameters())


def test_float64_model():
    x, y = regression_data(dtype=torch.float64)
    model = tiny_mlp(dtype=torch.float64)
    opt = NeuralGraphOptimizer(model.parameters(), lr=10.0)
    losses = train_steps(model, opt, x, y, 30)
    assert mse(model, x, y).item() < 0.5 * losses[0]
    for p in model.parameters():
        assert p.dtype == torch.float64
        for k in MOMENTS:
            assert opt.state[p][k].dtype == torch.float64, k


def test_float64_matches_adam_float64():
    """The untrained ``adam_init`` (and default) checkpoint is Adam at lr 1e-3, in float64 too."""
    x, y = regression_data(dtype=torch.float64)
    model, ref = tiny_mlp(dtype=torch.float64), tiny_mlp(dtype=torch.float64)
    train_steps(model, NeuralGraphOptimizer(model.parameters(), "adam_init"), x, y, 10)
    train_steps(ref, torch.optim.Adam(ref.parameters(), lr=1e-3), x, y, 10)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = regression_data()
    results = []
    for device in ("cpu", "cuda"):
        model = tiny_mlp().to(device)
        opt = NeuralGraphOptimizer(model.parameters(), random_head_learned(), encoder_every=2, lr=5.0)
        train_steps(model, opt, x.to(device), y.to(device), 5)
        assert next(opt.learned.parameters()).device.type == device
        assert all(v.device.type == device for s in opt.state.values() for v in s.values())
        results.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_orthogonal_default_matches_cpu():
    """The default's orthogonalized direction on CUDA: float32 iterations as on the CPU; ``"auto"`` iterates in
    bfloat16 there (``describe()`` says so) and stays within bfloat16's rounding of it."""
    x, y = regression_data()
    results = {}
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.float32), ("cuda", "auto")):
        model = tiny_mlp(sizes=(4, 32, 32, 1)).to(device)
        opt = NeuralGraphOptimizer(model.parameters(), total_steps=5, orthogonal_dtype=dtype)
        train_steps(model, opt, x.to(device), y.to(device), 5)
        results[(device, str(dtype))] = [p.detach().cpu() for p in model.parameters()]
        if dtype == "auto":
            assert "learned, orthogonal (bfloat16)" in str(opt.describe())
    for a, b in zip(results[("cpu", "torch.float32")], results[("cuda", "torch.float32")]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    for a, b in zip(results[("cpu", "torch.float32")], results[("cuda", "auto")]):  # on the CPU, bfloat16 against
        torch.testing.assert_close(a, b, atol=0.1, rtol=0)  # float32 after these 5 steps: up to 0.04 apart


# --------------------------------------------------------------------------- sparse gradients
def test_sparse_gradient_own_optimizer_raises():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = NeuralGraphOptimizer(emb.parameters())
    emb(torch.tensor([1, 2, 2])).sum().backward()
    assert emb.weight.grad.is_sparse
    before = snapshot(emb)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert_params_equal(emb.parameters(), before)


def test_sparse_gradient_own_group_raises():
    mlp = tiny_mlp(sizes=(4, 8, 1))
    emb = nn.Embedding(10, 4, sparse=True)
    opt = NeuralGraphOptimizer([{"params": mlp.parameters()}, {"params": emb.parameters()}])
    mse(mlp, emb(torch.tensor([1, 2, 3])), torch.zeros(3, 1)).backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# --------------------------------------------------------------------------- non-finite gradients
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("learned", ["default", "random_head"])
def test_nonfinite_gradient_skips_the_step(bad, learned):
    x, y = regression_data()
    model = tiny_mlp()
    opt = NeuralGraphOptimizer(model.parameters(), random_head_learned() if learned != "default" else None,
                               encoder_every=2)
    train_steps(model, opt, x, y, 2)
    opt.zero_grad()
    mse(model, x, y).backward()
    model[2].weight.grad[0, 3] = bad
    params, state = snapshot(model), state_snapshot(opt)
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        opt.step()
    assert_params_equal(model.parameters(), params)
    assert_tree_equal(opt.state_dict(), state)
    assert opt.nonfinite_steps == 1
    # the next finite step proceeds as if the bad one never happened
    ref = copy.deepcopy(model)
    ref_opt = NeuralGraphOptimizer(ref.parameters(), random_head_learned() if learned != "default" else None)
    ref_opt.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_steps(model, opt, x, y, 2)
    train_steps(ref, ref_opt, x, y, 2)
    assert_params_equal(model.parameters(), ref.parameters())
    assert opt.nonfinite_steps == 1
    assert int(opt.state[model[0].weight]["step"]) == 4


def test_nonfinite_gradient_skips_every_group():
    x, y = regression_data()
    model = tiny_mlp()
    opt = NeuralGraphOptimizer([{"params": model[0].parameters()}, {"params": model[2].parameters()}])
    mse(model, x, y).backward()
    model[0].weight.grad[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        opt.step()
    assert opt.nonfinite_steps == 1
    assert_params_equal(model.parameters(), before)  # fails: group 1 moved


# --------------------------------------------------------------------------- parameters without a graph
class _Holder(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(*shape) * 0.1)


class MLPWithExtras(nn.Module):
    """An MLP on the graph, then a dense embedding and a 5-D tensor (registered after it: they are free)."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
        self.emb = nn.Embedding(10, 6)
        self.extra = _Holder((1, 1, 2, 2, 3))

    def forward(self, idx):
        return self.mlp(self.emb(idx)) * (1 + self.extra.w.mean()) + self.extra.w.sum()


class EmbeddingFirst(nn.Module):
    """A dense embedding before the MLP: only the embedding (and the 5-D tensor) leave the graph."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
        self.extra = _Holder((1, 1, 2, 2, 3))

    def forward(self, idx):
        return self.mlp(self.emb(idx)) + self.extra.w.sum()


def _build(model_cls, how, **kw):
    torch.manual_seed(0)
    model = model_cls()
    if how.startswith("for_module"):
        emb = "free" if how == "for_module_free_embeddings" else "edge"
        return model, NeuralGraphOptimizer.for_module(model, embeddings=emb, **kw)
    return model, NeuralGraphOptimizer(model.parameters(), **kw)


CASES = [
    # (model, front end, expected kinds)
    (MLPWithExtras, "parameters", ["edge", "node", "edge", "node", "free", "free"]),
    # tracing: the embedding is on the graph (token neurons into the MLP); only the bare parameter is free
    (MLPWithExtras, "for_module", ["edge", "node", "edge", "node", "edge", "free"]),
    # with the embedding graph-free the MLP reads its output through pinned boundary neurons
    (MLPWithExtras, "for_module_free_embeddings", ["edge", "node", "edge", "node", "free", "free"]),
    (EmbeddingFirst, "parameters", None),
    (EmbeddingFirst, "for_module", ["edge", "edge", "node", "edge", "node", "free"]),
    (EmbeddingFirst, "for_module_free_embeddings", ["free", "edge", "node", "edge", "node", "free"]),
]


@pytest.mark.parametrize("model_cls, how, kinds", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("ckpt", ["default", "random_head"])
def test_free_parameters_train(model_cls, how, kinds, ckpt):
    learned = random_head_learned() if ckpt == "random_head" else None
    model, opt = _build(model_cls, how, ckpt=learned, lr=1.0, encoder_every=2)
    spec = opt.graph_spec(0)
    if kinds is not None:
        assert [s.kind for s in spec.params] == kinds
    # the 5-D tensor at least; the embedding too unless for_module put it on the graph
    assert len(spec.free_params) >= (1 if how == "for_module" else 2)
    idx = torch.arange(10).repeat(3)
    y = torch.linspace(-1, 1, 30)[:, None]
    before = snapshot(model)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (model(idx) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for (name, p), b in zip(model.named_parameters(), before):
        assert torch.isfinite(p).all(), name
        assert not torch.equal(p, b), f"{name} did not train"


@pytest.mark.parametrize("model_cls", [MLPWithExtras, EmbeddingFirst])
@pytest.mark.parametrize("how", ["parameters", "for_module"])
def test_free_parameters_error_mode_raises(model_cls, how):
    with pytest.raises(GraphBuildError, match="on_unsupported='free'"):
        _build(model_cls, how, on_unsupported="error")


def test_five_dim_tensor_alone():
    w = nn.Parameter(torch.randn(2, 1, 2, 2, 2))
    with pytest.raises(GraphBuildError, match=r"\(2, 1, 2, 2, 2\)"):
        NeuralGraphOptimizer([w], on_unsupported="error")
    opt = NeuralGraphOptimizer([w], lr=10.0)
    assert [s.kind for s in opt.graph_spec(0).params] == ["free"]
    before = w.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        (w - 1).square().sum().backward()
        opt.step()
    assert torch.isfinite(w).all()
    assert (w - 1).abs().sum() < (before - 1).abs().sum()
