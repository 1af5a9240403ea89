"""The fan-in prior of a checkpoint: ``-fan_in_power * log(fan_in / fan_in_ref)`` on each weight's per-tensor log
step (inside the soft bound), nothing on biases and transposed weights; the fast path steps as the reference path;
and ``lopt-derive fan_in_prior=`` that writes it."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from lopt_graphs.optim import LearnedUpdate, NeuralGraphOptimizer, load_learned_update
from lopt_graphs.optim.learned import LearnedUpdateConfig, v2_config

from .test_size_prior import _train

#: A shipped recipe-v2 checkpoint without a fan-in prior (the default has one).
NO_PRIOR = "v2_calibrated4_es60"


class _Net(nn.Module):
    """A conv (3 input channels, 3x3: fan-in 27), a linear (fan-in 8 * 4 * 4 = 128) and an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(128, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


class _Bag(nn.Module):
    """An embedding (1,000 tokens of width 16; stored ``[in, out]``), averaged, and a linear of fan-in 16."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(1000, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(x).mean(1))


def _with_prior(learned: LearnedUpdate, power: float, ref: float = 64.0) -> LearnedUpdate:
    return learned.with_config(fan_in_power=power, fan_in_ref=ref)


def _log_steps(learned: LearnedUpdate, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The per-tensor log step ``sigma`` of each parameter at a first step on ``(x, y)`` (the reference path's
    diagnostics); the model's weights are left as they were."""
    opt = NeuralGraphOptimizer.for_module(model, copy.deepcopy(learned), total_steps=10)
    opt.record_diagnostics = True
    nn.functional.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        saved = [p.clone() for p in model.parameters()]
        opt.step()
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
    model.zero_grad()
    names = [n for n, _ in model.named_parameters()]
    return {n: float(d["sigma"]) for n, d in zip(names, opt.last_diagnostics)}


def _logit_shift(learned: LearnedUpdate, shifted: float, plain: float) -> float:
    """How far the prior moved a log step inside the soft bound ``lr_bound``."""
    bound = learned.cfg.lr_bound
    return bound * (math.atanh(shifted / bound) - math.atanh(plain / bound))


def test_fan_in_shift():
    cfg = dataclasses.replace(v2_config(), fan_in_power=0.5, fan_in_ref=64.0)
    assert cfg.fan_in_shift(64) == 0.0
    assert cfg.fan_in_shift(256) == pytest.approx(-math.log(2.0)) and cfg.fan_in_shift(16) == pytest.approx(math.log(2.0))
    assert v2_config().fan_in_shift(10**6) == 0.0  # no prior


def test_each_weight_shifts_by_its_own_fan_in_and_biases_not_at_all():
    torch.manual_seed(0)
    learned = load_learned_update(NO_PRIOR)
    model = _Net()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)
    plain, shifted = _log_steps(learned, model, x, y), _log_steps(_with_prior(learned, 0.5), model, x, y)
    for name, fan_in in (("conv.weight", 27), ("fc.weight", 128)):
        want = -0.5 * math.log(fan_in / 64)
        assert _logit_shift(learned, shifted[name], plain[name]) == pytest.approx(want, abs=1e-4), name
    assert shifted["conv.weight"] > plain["conv.weight"] and shifted["fc.weight"] < plain["fc.weight"]
    for name in ("conv.bias", "fc.bias"):
        assert shifted[name] == pytest.approx(plain[name], abs=1e-6), name


def test_an_embedding_gets_no_prior():
    torch.manual_seed(0)
    learned = load_learned_update(NO_PRIOR)
    model = _Bag()
    x, y = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([0, 1])
    plain, shifted = _log_steps(learned, model, x, y), _log_steps(_with_prior(learned, 0.5, ref=8.0), model, x, y)
    assert shifted["emb.weight"] == pytest.approx(plain["emb.weight"], abs=1e-6)  # transposed: no fan-in
    # the linear: fan-in 16 against 8
    assert _logit_shift(learned, shifted["fc.weight"], plain["fc.weight"]) == pytest.approx(-0.5 * math.log(2.0), abs=1e-4)


def test_the_fast_path_steps_as_the_reference_path_with_a_prior():
    prior = _with_prior(load_learned_update(NO_PRIOR), 0.5, ref=16.0)  # fan-ins 20 and 32: both shifted
    fast, _ = _train(prior, lr=1.0, fast=True)
    reference, _ = _train(prior, lr=1.0, fast=False)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b)
    plain, _ = _train(load_learned_update(NO_PRIOR), lr=1.0)
    assert any(not torch.allclose(a, c) for a, c in zip(fast, plain))


@pytest.mark.parametrize("kw, match", [({"fan_in_power": -0.5}, "Invalid fan_in_power"),
                                       ({"fan_in_power": float("nan")}, "Invalid fan_in_power"),
                                       ({"fan_in_ref": 0.0}, "Invalid fan_in_ref"),
                                       ({"fan_in_ref": float("inf")}, "Invalid fan_in_ref")])
def test_bad_fan_in_prior(kw, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(v2_config(), **kw)
    with pytest.raises(ValueError, match="needs tensor_lr=True"):
        LearnedUpdateConfig(fan_in_power=0.5)


def test_derive_writes_a_fan_in_prior_and_keeps_the_weights(tmp_path):
    from lopt_graphs.optim.checkpoint import read_checkpoint
    from meta_train.derive import derive, main

    derive(NO_PRIOR, tmp_path / "f.pt", 0.0, fan_in_prior=(0.5, 64))
    a, b = load_learned_update(NO_PRIOR), load_learned_update(str(tmp_path / "f.pt"))
    assert (b.cfg.fan_in_power, b.cfg.fan_in_ref) == (0.5, 64.0)
    assert dataclasses.replace(b.cfg, fan_in_power=0.0) == a.cfg
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert read_checkpoint(str(tmp_path / "f.pt"))["meta"]["fan_in_prior"] == [0.5, 64.0]
    main(["src=" + str(tmp_path / "f.pt"), "dst=" + str(tmp_path / "g.pt"), "fan_in_prior=0,64"])  # removes it
    assert load_learned_update(str(tmp_path / "g.pt")).cfg == a.cfg
    with pytest.raises(ValueError, match="Invalid fan_in_prior"):
        derive(NO_PRIOR, tmp_path / "t.pt", 0.0, fan_in_prior=(0.5, 0.0))
    with pytest.raises(ValueError, match="needs tensor_lr=True"):
        derive("meta_tbptt_clip3_1875", tmp_path / "v1.pt", 0.0, fan_in_prior=(0.5, 64))
    with pytest.raises(ValueError, match="fan_in_prior"):
        main(["src=default", "dst=" + str(tmp_path / "h.pt"), "fan_in_prior=0.5"])
