"""``higher.innerloop_ctx`` unrolls differentiable ``NeuralGraphOptimizer`` steps (meta-gradients)."""

from __future__ import annotations

import copy

import higher
import pytest
import torch
from torch import nn

from lopt_graphs.optim import DifferentiableNeuralGraphOptimizer, NeuralGraphOptimizer

from .optim_infos import random_head_learned

DT = torch.float64
K = 3
KW = dict(lr=20.0, encoder_every=2)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
    g = torch.Generator().manual_seed(seed + 1)
    batches = [(torch.randn(16, 4, generator=g, dtype=DT), torch.randn(16, 3, generator=g, dtype=DT))
               for _ in range(K + 1)]
    learned = random_head_learned(dtype=DT)
    return model, batches, learned


def _loss(model, batch):
    x, y = batch
    return (model(x) - y).square().mean()


def _meta_loss(model, batches, learned, grads_for=None):
    """Loss on the last batch after K differentiable steps on the others; optionally its gradients."""
    opt = NeuralGraphOptimizer(model.parameters(), learned, **KW)
    learned.requires_grad_(grads_for is not None)  # the constructor freezes it
    with higher.innerloop_ctx(model, opt, copy_initial_weights=True) as (fmodel, dopt):
        assert isinstance(dopt, DifferentiableNeuralGraphOptimizer)
        for b in batches[:K]:
            dopt.step(_loss(fmodel, b))
        loss = _loss(fmodel, batches[K])
        grads = torch.autograd.grad(loss, grads_for) if grads_for is not None else None
        params = [p.detach().clone() for p in fmodel.parameters()]
    return loss.detach(), grads, params


def test_meta_gradient_matches_finite_differences():
    model, batches, learned = _setup()
    enc_w = learned.encoder.layers[0].update[0].weight
    scalars = [(learned.w2, (0, 0)), (enc_w, (0, 0)), (learned.ctx_dst.weight, (0, 2))]
    _, grads, _ = _meta_loss(model, batches, learned, grads_for=[t for t, _ in scalars])
    for (t, idx), gt in zip(scalars, grads):
        h = 1e-5
        orig = t[idx].item()
        with torch.no_grad():
            t[idx] = orig + h
        up = _meta_loss(model, batches, learned)[0].item()
        with torch.no_grad():
            t[idx] = orig - h
        down = _meta_loss(model, batches, learned)[0].item()
        with torch.no_grad():
            t[idx] = orig
        fd = (up - down) / (2 * h)
        assert abs(fd) > 1e-7, "vacuous: the loss does not depend on this weight"
        assert gt[idx].item() == pytest.approx(fd, rel=1e-4)
    # the model itself was not touched (copy_initial_weights=True)
    fresh, _, _ = _setup()
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


def test_differentiable_steps_equal_plain_steps():
    model, batches, learned = _setup()
    _, _, diff_params = _meta_loss(model, batches, learned, grads_for=[learned.w2])

    plain = copy.deepcopy(model)
    opt = NeuralGraphOptimizer(plain.parameters(), random_head_learned(dtype=DT), **KW)
    for b in batches[:K]:
        opt.zero_grad()
        _loss(plain, b).backward()
        opt.step()
    for i, (p, q) in enumerate(zip(plain.parameters(), diff_params)):
        torch.testing.assert_close(p.detach(), q, atol=1e-12, rtol=0, msg=lambda m: f"parameter {i}: {m}")
    assert any(not torch.equal(p, q) for p, q in zip(plain.parameters(), model.parameters()))


def test_differentiable_steps_continue_from_optimizer_state():
    """higher starts from the optimizer's current state: 2 plain steps then 3 differentiable ones equal 5
    plain steps."""
    model, batches, learned = _setup()
    extra = [(b[0] * 0.5, b[1]) for b in batches[:2]]
    opt = NeuralGraphOptimizer(model.parameters(), learned, **KW)
    for b in extra:
        opt.zero_grad()
        _loss(model, b).backward()
        opt.step()
    plain = copy.deepcopy(model)
    plain_opt = NeuralGraphOptimizer(plain.parameters(), random_head_learned(dtype=DT), **KW)
    plain_opt.load_state_dict(opt.state_dict())
    with higher.innerloop_ctx(model, opt, copy_initial_weights=True) as (fmodel, dopt):
        for b in batches[:K]:
            dopt.step(_loss(fmodel, b))
        diff_params = [p.detach().clone() for p in fmodel.parameters()]
    for b in batches[:K]:
        plain_opt.zero_grad()
        _loss(plain, b).backward()
        plain_opt.step()
    for p, q in zip(plain.parameters(), diff_params):
        torch.testing.assert_close(p.detach(), q, atol=1e-12, rtol=0)
