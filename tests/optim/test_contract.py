"""The ``torch.optim.Optimizer`` contract of ``NeuralGraphOptimizer``, over the table in ``optim_infos``
(in the style of PyTorch's ``test/test_optim.py``)."""

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
    optim_error_inputs,
    optim_inputs,
    regression_data,
    snapshot,
    state_snapshot,
    tiny_mlp,
    train_steps,
)

STEPS = 60


def _setup(inp, **kwargs):
    """The tiny MLP, the optimizer of table entry ``inp`` over all its parameters, and the regression data."""
    x, y = regression_data()
    model = tiny_mlp()
    return model, inp.build(model.parameters(), **kwargs), x, y


def _loss_backward(model, x, y):
    loss = mse(model, x, y)
    loss.backward()
    return loss


# --------------------------------------------------------------------------- it optimizes
@pytest.mark.parametrize("info, inp", optim_inputs())
def test_goes_downhill(info, inp):
    model, opt, x, y = _setup(inp)
    losses = train_steps(model, opt, x, y, STEPS)
    final = mse(model, x, y).item()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # measured: final/initial = 0.30 .. 0.62 over the table; lr=0.5 is the slowest
    assert final < 0.75 * losses[0], (losses[0], final)
    assert final < min(losses[:STEPS // 2])


# --------------------------------------------------------------------------- steps without gradients
@pytest.mark.parametrize("info, inp", optim_inputs())
def test_step_without_grads_is_noop(info, inp):
    model, opt, x, y = _setup(inp)
    before = snapshot(model)
    opt.step()  # no backward yet: every grad is None
    assert_params_equal(model.parameters(), before)
    assert len(opt.state) == 0

    train_steps(model, opt, x, y, 3)
    before, state = snapshot(model), state_snapshot(opt)
    opt.zero_grad(set_to_none=True)
    opt.step()
    assert_params_equal(model.parameters(), before)
    assert_tree_equal(opt.state_dict(), state)


@pytest.mark.parametrize("info, inp", optim_inputs())
def test_params_without_grad_are_skipped(info, inp):
    model, opt, x, y = _setup(inp)
    skipped = [model[0].bias, model[2].weight]
    for step in range(3):
        opt.zero_grad()
        _loss_backward(model, x, y)
        for p in skipped:
            p.grad = None
        before = snapshot(model)
        opt.step()
        for p, b in zip(model.parameters(), before):
            if any(p is s for s in skipped):
                assert torch.equal(p, b), "a parameter without grad moved"
                assert p not in opt.state, "a parameter without grad got optimizer state"
            else:
                assert not torch.equal(p, b), "a parameter with a grad did not move"
                assert int(opt.state[p]["step"]) == step + 1

    # the skipped parameters join later and start their own step count
    opt.zero_grad()
    _loss_backward(model, x, y)
    opt.step()
    for p in skipped:
        assert int(opt.state[p]["step"]) == 1
    assert int(opt.state[model[0].weight]["step"]) == 4


# --------------------------------------------------------------------------- closure
@pytest.mark.parametrize("info, inp", optim_inputs())
def test_step_closure(info, inp):
    model, opt, x, y = _setup(inp)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        return _loss_backward(model, x, y)

    before = snapshot(model)
    with torch.no_grad():  # step must enable grad for the closure even inside no_grad
        loss = opt.step(closure)
    assert calls == [True]
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert loss.item() == pytest.approx(mse(tiny_mlp(), x, y).item())
    assert not any(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert opt.step() is None  # no closure: returns None (grads still there: it steps again)


# --------------------------------------------------------------------------- zero_grad
@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("info, inp", optim_inputs())
def test_zero_grad_as_adam(info, inp, set_to_none):
    """zero_grad leaves the same grads as Adam's, and a following step moves (or not) the same parameters.

    With ``set_to_none=False`` the next step sees zero gradients and moves every parameter by its momentum
    (as Adam does); with ``set_to_none=True`` it is a no-op."""
    x, y = regression_data()
    results = {}
    for kind in ("ngo", "adam"):
        model = tiny_mlp()
        opt = inp.build(model.parameters()) if kind == "ngo" else torch.optim.Adam(model.parameters(), lr=1e-3)
        train_steps(model, opt, x, y, 2)
        _loss_backward(model, x, y)
        opt.zero_grad(set_to_none=set_to_none)
        grads = [p.grad for p in model.parameters()]
        if set_to_none:
            assert all(g is None for g in grads)
        else:
            assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
        before = snapshot(model)
        opt.step()
        results[kind] = [not torch.equal(p, b) for p, b in zip(model.parameters(), before)]
    assert results["ngo"] == results["adam"] == [not set_to_none] * 4


# --------------------------------------------------------------------------- parameter groups
@pytest.mark.parametrize("info, inp", optim_inputs())
def test_per_group_options(info, inp):
    x, y = regression_data()
    model = tiny_mlp()
    opt = inp.build([{"params": model[0].parameters(), "lr": 0.0},
                     {"params": model[2].parameters(), "lr": 2.0, "weight_decay": 0.1}])
    assert [g["lr"] for g in opt.param_groups] == [0.0, 2.0]
    assert opt.param_groups[1]["weight_decay"] == 0.1
    assert opt.param_groups[0]["betas"] == inp.kwargs.get("betas", (0.9, 0.999))
    frozen = snapshot(model[0])
    losses = train_steps(model, opt, x, y, 10)
    assert_params_equal(model[0].parameters(), frozen)
    assert losses[-1] < losses[0]
    for p in model[0].parameters():  # lr 0 still advances the moments (as Adam with lr=0 does)
        assert int(opt.state[p]["step"]) == 10
    # each group has its own graph: layer 0 alone is a 4 -> 16 chain
    assert opt.graph_spec(0).num_nodes == 4 + 16
    assert opt.graph_spec(1).num_nodes == 16 + 1


@pytest.mark.parametrize("info, inp", optim_inputs())
def test_add_param_group(info, inp):
    x, y = regression_data()
    model = tiny_mlp()
    opt = inp.build(model[0].parameters())
    with pytest.raises(IndexError):
        opt.graph_spec(1)
    opt.add_param_group({"params": list(model[2].parameters()), "lr": 3.0})
    assert len(opt.param_groups) == 2
    g1 = opt.param_groups[1]
    assert g1["lr"] == 3.0 and g1["betas"] == opt.defaults["betas"] and g1["eps"] == opt.defaults["eps"]
    spec = opt.graph_spec(1)
    assert [s.kind for s in spec.params] == ["edge", "node"]
    assert spec.num_nodes == 16 + 1
    before = snapshot(model)
    losses = train_steps(model, opt, x, y, 20)
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": [model[2].bias]})


def test_failed_add_param_group_leaves_optimizer_unchanged():
    model = tiny_mlp()
    opt = NeuralGraphOptimizer(model[0].parameters(), on_unsupported="error")
    odd = nn.Parameter(torch.randn(1, 2, 2, 2, 2))
    with pytest.raises(GraphBuildError):
        opt.add_param_group({"params": [odd]})
    assert len(opt.param_groups) == 1  # fails: the half-added group is still there
    odd.grad = torch.ones_like(odd)
    x, y = regression_data()
    _loss_backward(model, x, y)
    opt.step()  # with the half-added group: IndexError: list index out of range (self._specs[1])


# --------------------------------------------------------------------------- state_dict
def _resume_run(inp, via, tmp_path):
    model, opt, x, y = _setup(inp, encoder_every=2)  # the encoder (and its cached ctx) runs in both halves
    train_steps(model, opt, x, y, 3)
    sd = opt.state_dict()
    if via == "file":
        path = tmp_path / "opt.pt"
        torch.save(sd, path)
        sd = torch.load(path, weights_only=True)
    model2 = copy.deepcopy(model)
    opt2 = inp.build(model2.parameters())  # note: encoder_every comes from the loaded param_groups
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["encoder_every"] == 2
    train_steps(model, opt, x, y, 5)
    train_steps(model2, opt2, x, y, 5)
    return (model, opt), (model2, opt2)


@pytest.mark.parametrize("via", ["memory", "file"])
@pytest.mark.parametrize("info, inp", optim_inputs())
def test_state_dict_resume_is_exact(info, inp, via, tmp_path):
    (model, opt), (model2, opt2) = _resume_run(inp, via, tmp_path)
    assert_params_equal(model.parameters(), model2.parameters())
    assert_tree_equal(opt.state_dict(), opt2.state_dict())


@pytest.mark.parametrize("info, inp", optim_inputs())
def test_state_dict_holds_state_not_learned_weights(info, inp):
    model, opt, x, y = _setup(inp)
    train_steps(model, opt, x, y, 2)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    learned_keys = set(opt.learned.state_dict())

    def keys(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield k
                yield from keys(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from keys(v)

    found = set(map(str, keys(sd))) & learned_keys
    assert not found, f"learned weights in the optimizer state_dict: {sorted(found)}"
    assert set(sd["state"]) == {0, 1, 2, 3}
    assert {"step", "m_fast", "m_adam", "m_slow", "v"} <= set(sd["state"][0])
    n_learned = sum(t.numel() for t in opt.learned.state_dict().values())
    n_state = sum(t.numel() for s in sd["state"].values() for t in s.values())
    assert n_state < n_learned  # a tiny model's state is far smaller than the encoder


@pytest.mark.parametrize("info, inp", optim_inputs())
def test_deepcopy_continues_identically(info, inp):
    model, opt, x, y = _setup(inp)
    train_steps(model, opt, x, y, 3)
    model2, opt2 = copy.deepcopy((model, opt))
    assert opt2.param_groups[0]["params"][0] is next(model2.parameters())
    train_steps(model, opt, x, y, 5)
    train_steps(model2, opt2, x, y, 5)
    assert_params_equal(model.parameters(), model2.parameters())


# --------------------------------------------------------------------------- invalid configurations
@pytest.mark.parametrize("info, err", optim_error_inputs())
def test_invalid_config_raises(info, err):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says so without warnings
        with pytest.raises(err.error_type, match=err.error_regex):
            info.optim_cls(err.params(), **err.kwargs)
