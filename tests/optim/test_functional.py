"""The pure update ``ngo_update``: no side effects, same result as the class, ``torch.func`` transforms."""

from __future__ import annotations

import copy

import higher
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from lopt_graphs.graph import graph_from_parameters
from lopt_graphs.optim import LearnedUpdate, NeuralGraphOptimizer, ngo_update

from .optim_infos import assert_tree_equal, random_head_learned

KW = dict(lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, encoder_every=2)
K = 3


class Stepper(nn.Module):
    """``forward`` = one ``ngo_update`` with ``self.learned``, so ``functional_call`` can swap its weights
    (keys ``"learned.<name>"``)."""

    def __init__(self, learned: LearnedUpdate, spec, **kw):
        super().__init__()
        self.learned = learned
        self.spec = spec
        self.kw = kw

    def forward(self, params, grads, states):
        return ngo_update(self.learned, self.spec, params, grads, states, **self.kw)


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).to(dtype)


def _fixed_grads(params, steps=K, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(steps)]


def _clone_tree(obj):
    """Deep copy of nested lists/tuples/dicts of tensors (tensors detached and cloned)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_tree(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- purity and the class
def test_ngo_update_does_not_mutate_inputs():
    params = [p.detach().clone() for p in _mlp().parameters()]
    spec = graph_from_parameters(params)
    learned = random_head_learned()
    learned_before = _clone_tree(learned.state_dict())
    grads_seq = _fixed_grads(params)
    grads_seq[1][1] = None  # a parameter without grad at one step
    states = [{} for _ in params]
    for grads in grads_seq:
        ins = _clone_tree((params, grads, states))
        new_params, new_states = ngo_update(learned, spec, params, grads, states, **KW)
        assert_tree_equal((params, grads, states), ins)  # inputs untouched, tensors and containers
        assert all(a is not b for a, b, g in zip(new_params, params, grads) if g is not None)
        for n, p, g in zip(new_params, params, grads):
            assert n.shape == p.shape and n.dtype == p.dtype
            assert torch.equal(n, p) == (g is None)
        params, states = new_params, new_states
    assert_tree_equal(learned.state_dict(), learned_before)
    assert int(states[0]["step"]) == K and int(states[1]["step"]) == K - 1


@pytest.mark.parametrize("learned", ["default", "random_head"])
def test_ngo_update_equals_the_optimizer(learned):
    make = (lambda: random_head_learned()) if learned == "random_head" else (lambda: None)
    model = _mlp()
    params = [p.detach().clone() for p in model.parameters()]
    spec = graph_from_parameters(params)
    opt = NeuralGraphOptimizer(model.parameters(), make(), **KW)
    fn_learned = opt.learned if learned == "default" else make()
    states = [{} for _ in params]
    for grads in _fixed_grads(params):
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        opt.step()
        params, states = ngo_update(fn_learned, spec, params, grads, states, **KW)
    for i, (p, q) in enumerate(zip(model.parameters(), params)):
        assert torch.equal(p.detach(), q), f"parameter {i}: {(p - q).abs().max().item()}"
    for p, st in zip(model.parameters(), states):
        assert_tree_equal(dict(opt.state[p]), st)


# --------------------------------------------------------------------------- vmap over a population
def test_vmap_over_a_population_of_learned_weights():
    learned = [random_head_learned(seed=s) for s in range(3)]
    params0 = [p.detach().clone() for p in _mlp().parameters()]
    spec = graph_from_parameters(params0)
    grads_seq = _fixed_grads(params0)
    base = Stepper(copy.deepcopy(learned[0]).to("meta"), spec, **KW)
    weights, buffers = stack_module_state(learned)

    def unroll(w, b):
        wts = {f"learned.{k}": v for k, v in {**w, **b}.items()}
        params, states = params0, [{} for _ in params0]
        for grads in grads_seq:
            params, states = functional_call(base, wts, (params, grads, states))
        return params

    batched = vmap(unroll)(weights, buffers)
    sequential = []
    for lrn in learned:
        params, states = params0, [{} for _ in params0]
        for grads in grads_seq:
            params, states = ngo_update(lrn, spec, params, grads, states, **KW)
        sequential.append(params)
    for j in range(3):
        for i in range(len(params0)):
            torch.testing.assert_close(batched[i][j], sequential[j][i], atol=1e-6, rtol=0)
    # the members really differ
    assert max((sequential[0][i] - sequential[1][i]).abs().max().item() for i in range(len(params0))) > 1e-5


# --------------------------------------------------------------------------- meta-gradients
DT = torch.float64
META_KW = dict(lr=20.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, encoder_every=2)
#: two scalars: an output-layer weight of the head, and a weight deep in the encoder
SCALARS = [("learned.w2", (0, 0)), ("learned.encoder.layers.0.update.0.weight", (0, 0))]


def _meta_problem():
    model = _mlp(DT)
    names = [n for n, _ in model.named_parameters()]
    params0 = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 4, generator=g, dtype=DT), torch.randn(16, 3, generator=g, dtype=DT)
    learned = random_head_learned(dtype=DT)
    stepper = Stepper(learned, graph_from_parameters(params0), **META_KW)

    def inner_loss(ps):
        return (functional_call(model, dict(zip(names, ps)), (x,)) - y).square().mean()

    def meta_loss(w):
        ps, states = params0, [{} for _ in params0]
        for _ in range(K):
            ps, states = functional_call(stepper, w, (ps, grad(inner_loss)(ps), states))
        return inner_loss(ps)

    w = {k: v.detach().clone() for k, v in stepper.named_parameters()}
    return model, x, y, learned, meta_loss, w


def test_func_grad_through_unrolled_steps_matches_finite_differences_and_higher():
    model, x, y, learned, meta_loss, w = _meta_problem()
    g = grad(meta_loss)(w)
    h = 1e-5
    for key, idx in SCALARS:
        wp = {k: v.clone() for k, v in w.items()}
        wm = {k: v.clone() for k, v in w.items()}
        wp[key][idx] += h
        wm[key][idx] -= h
        fd = (meta_loss(wp) - meta_loss(wm)).item() / (2 * h)
        assert abs(fd) > 1e-7, f"{key}: the loss does not depend on it, the check is vacuous"
        assert g[key][idx].item() == pytest.approx(fd, rel=1e-4), key

    # the same meta-gradient from higher (a different autodiff path: create_graph backward)
    learned.requires_grad_(True)
    opt = NeuralGraphOptimizer(model.parameters(), learned, **META_KW)
    learned.requires_grad_(True)  # the constructor freezes the learned weights
    with higher.innerloop_ctx(model, opt, copy_initial_weights=True) as (fmodel, dopt):
        for _ in range(K):
            dopt.step((fmodel(x) - y).square().mean())
        loss = (fmodel(x) - y).square().mean()
        names = [n for n, _ in learned.named_parameters()]
        gh = torch.autograd.grad(loss, list(learned.parameters()), allow_unused=True)
    assert loss.item() == pytest.approx(meta_loss(w).item(), rel=1e-12)
    for n, t in zip(names, gh):
        ref = g[f"learned.{n}"]
        if t is None:
            assert torch.count_nonzero(ref) == 0, n
        else:
            torch.testing.assert_close(t, ref, rtol=1e-6, atol=1e-12, msg=lambda m: f"{n}: {m}")


def test_compiled_step_matches_eager():
    """``compile=True`` (torch.compile of the fused per-parameter step; the encoder runs eager: its coarsened graph
    changes shape between runs, which would recompile it at almost every run) computes the same update as the eager
    reference, including a step where the encoder re-runs."""
    import copy

    from lopt_graphs import NeuralGraphOptimizer
    from lopt_graphs.optim import LearnedUpdate

    torch.manual_seed(0)
    learned = LearnedUpdate()
    with torch.no_grad():
        learned.w2.normal_(0, 0.5)
        learned.b2.normal_(0, 0.1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    results = []
    for compile_ in (False, True):
        m = copy.deepcopy(model)
        opt = NeuralGraphOptimizer(m.parameters(), copy.deepcopy(learned), encoder_every=3, compile=compile_)
        for _ in range(4):
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            opt.step()
        results.append([p.detach().clone() for p in m.parameters()])
        assert set(opt._fns) == ({"features", "apply", "step"} if compile_ else set())
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(results[0], model.parameters()))


@pytest.mark.parametrize("clip", [10.0, 3.0, 0.5])
def test_mag_clip_bounds_the_step_multiplier(clip: float):
    import dataclasses

    from lopt_graphs.optim import LearnedUpdateConfig
    torch.manual_seed(0)
    learned = LearnedUpdate(dataclasses.replace(LearnedUpdateConfig(), mag_clip=clip, dir_scale=0.0))
    with torch.no_grad():
        learned.b2.copy_(torch.tensor([0.0, 50.0]))  # a huge log-magnitude on every entry
    model = _mlp(torch.float64)
    spec = graph_from_parameters(list(model.parameters()))
    params = [p.detach() for p in model.parameters()]
    grads = _fixed_grads(params, 1)[0]
    new, _ = ngo_update(learned, spec, params, grads, [{} for _ in params], lr=1.0, weight_decay=0.0)
    for p, q, g in zip(params, new, grads):
        # first step: the Adam direction is g / sqrt(g^2 + eps^2) (bias-corrected), so the step is base_lr * e^clip
        adam = g / (g.square() + 1e-16).sqrt()
        torch.testing.assert_close(p - q, 1e-3 * torch.exp(torch.tensor(clip, dtype=p.dtype)) * adam,
                                   rtol=1e-5, atol=1e-12)


def test_mag_clip_is_validated_and_defaults_to_the_old_bound():
    from lopt_graphs.optim import LearnedUpdateConfig, load_learned_update
    with pytest.raises(ValueError, match="Invalid mag_clip: 0"):
        LearnedUpdateConfig(mag_clip=0)
    assert load_learned_update("adam_init").cfg.mag_clip == 10.0  # checkpoints written before the field
