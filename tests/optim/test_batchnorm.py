"""Weights feeding a BatchNorm take the base step, so eval-mode (running-statistics) losses stay valid."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.graph import graph_from_module

from .optim_infos import random_head_learned


def _conv_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def test_scale_invariant_weights_are_recorded() -> None:
    spec = graph_from_module(_conv_bn())
    assert spec.scale_invariant == (0,)  # the first conv only: the second feeds a ReLU
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    names = [n for n, _ in model.named_parameters()]
    spec = graph_from_module(model)
    conv = [i for i, n in enumerate(names) if n.endswith("weight") and model.get_parameter(n).dim() == 4]
    assert list(spec.scale_invariant) == conv and len(conv) == 20


@pytest.mark.parametrize("bn_weights", ["base", "learned"])
def test_bn_fed_weight_follows_adam(bn_weights: str) -> None:
    torch.manual_seed(0)
    model = _conv_bn()
    opt = NeuralGraphOptimizer.for_module(model, random_head_learned(seed=1), encoder_every=1, lr=3.0,
                                          bn_weights=bn_weights)
    w = model[0].weight
    ref = nn.Parameter(w.detach().clone())
    adam = torch.optim.Adam([ref], lr=3.0 * opt.learned.cfg.base_lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.randn(8, 2, 7, 7, generator=g)
        opt.zero_grad()
        model(x).square().mean().backward()
        ref.grad = w.grad.clone()
        opt.step()
        adam.step()
    diff = float((w - ref).detach().abs().max())
    if bn_weights == "base":
        assert diff < 1e-6
    else:  # the learned head changes the step of this weight
        assert diff > 1e-4


def test_resnet18_eval_loss_falls_in_60_steps() -> None:
    """The case of issue 15: before the fix the eval-mode loss rose from 2.4 to 25 while the train-mode
    loss fell (BatchNorm running statistics no longer matched the weights)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def eval_loss(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            out = float(loss_fn(m(x), y))
        m.train()
        return out

    start = eval_loss(model)
    opt = NeuralGraphOptimizer.for_module(model)
    for i in range(60):
        xb, yb = x[(i % 2) * 16:(i % 2 + 1) * 16], y[(i % 2) * 16:(i % 2 + 1) * 16]
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()
    end = eval_loss(copy.deepcopy(model))
    assert end < start, (start, end)
