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


def _log_steps(learned: LearnedUpdate, model: nn.Module, total: int = 10) -> dict[str, float]:
    """The per-tensor log step ``sigma`` of each parameter at the first step (the reference path's diagnostics)."""
    opt = NeuralGraphOptimizer.for_module(model, copy.deepcopy(learned), total_steps=total)
    opt.record_diagnostics = True
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)
    nn.functional.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        saved = [p.clone() for p in model.parameters()]
        opt.step()
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
    model.zero_grad()
    names = [n for n, _ in model.named_parameters()]
    return {n: float(d["sigma"]) for n, d in zip(names, opt.last_diagnostics)}


def test_fan_in_shift():
    cfg = dataclasses.replace(v2_config(), fan_in_power=0.5, fan_in_ref=64.0)
    assert cfg.fan_in_shift(64) == 0.0
    assert cfg.fan_in_shift(256) == pytest.approx(-math.log(2.0)) and cfg.fan_in_shift(16) == pytest.approx(math.log(2.0))
    assert v2_config().fan_in_shift(10**6) == 0.0  # no prior


def test_each_weight_shifts_by_its_own_fan_in_and_biases_not_at_all():
    torch.manual_seed(0)
    learned = load_learned_update(NO_PRIOR)
    model = _Net()
    plain = _log_steps(learned, model)
    prior = _with_prior(learned, 0.5)
    shifted = _log_steps(prior, model)
    bound = learned.cfg.lr_bound
    unbound = lambda s: bound * math.atanh(s / bound)  # noqa: E731  the logit inside the soft bound
    for name, fan_in in (("conv.weight", 27), ("fc.weight", 128)):
        want = -0.5 * math.log(fan_in / 64)
        assert unbound(shifted[name]) - unbound(plain[name]) == pytest.approx(want, abs=1e-4), name
    assert shifted["conv.weight"] > plain["conv.weight"] and shifted["fc.weight"] < plain["fc.weight"]
    for name in ("conv.bias", "fc.bias"):
        assert shifted[name] == pytest.approx(plain[name], abs=1e-6), name


def test_an_embedding_gets_no_prior():
    torch.manual_seed(0)
    learned = load_learned_update(NO_PRIOR)
    model = _Bag()

    def sigmas(lu: LearnedUpdate) -> list[float]:
        opt = NeuralGraphOptimizer.for_module(model, copy.deepcopy(lu), total_steps=10)
        opt.record_diagnostics = True
        nn.functional.cross_entropy(model(torch.tensor([[1, 2, 3], [4, 5, 6]])), torch.tensor([0, 1])).backward()
        with torch.no_grad():
            saved = [p.clone() for p in model.parameters()]
            opt.step()
            for p, s in zip(model.parameters(), saved):
                p.copy_(s)
        model.zero_grad()
        return [float(d["sigma"]) for d in opt.last_diagnostics]

    plain, shifted = sigmas(learned), sigmas(_with_prior(learned, 0.5, ref=8.0))
    assert shifted[0] == pytest.approx(plain[0], abs=1e-6)  # the embedding: transposed, no fan-in
    bound = learned.cfg.lr_bound
    logit_shift = bound * (math.atanh(shifted[1] / bound) - math.atanh(plain[1] / bound))
    assert logit_shift == pytest.approx(-0.5 * math.log(2.0), abs=1e-4)  # the linear: fan-in 16 against 8


def test_the_fast_path_steps_as_the_reference_path_with_a_prior():
    prior = _with_prior(load_learned_update(NO_PRIOR), 0.5, ref=16.0)

    def train(fast: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(200, 64), nn.Tanh(), nn.Linear(64, 4))  # large enough for the fast path
        opt = NeuralGraphOptimizer(model.parameters(), copy.deepcopy(prior), total_steps=10)
        if not fast:
            opt._fast_ok = False
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            x, y = torch.randn(16, 200, generator=g), torch.randint(0, 4, (16,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(train(True), train(False)):
        torch.testing.assert_close(a, b)


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
