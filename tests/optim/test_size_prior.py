"""The size prior of a checkpoint: ``lr`` times ``(N / size_ref) ** -size_power`` on models above ``size_ref``
parameters, nothing below; and ``lopt-derive size_prior=`` that writes it."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from lopt_graphs.optim import LearnedUpdate, NeuralGraphOptimizer, load_learned_update
from lopt_graphs.optim.learned import LearnedUpdateConfig, v2_config


def _with_prior(learned: LearnedUpdate, ref: int, power: float) -> LearnedUpdate:
    sized = LearnedUpdate(dataclasses.replace(learned.cfg, size_ref=ref, size_power=power))
    sized.load_state_dict(learned.state_dict())
    return sized


def _train(learned: LearnedUpdate, lr: float, steps: int = 5, fast: bool = True,
           ) -> tuple[list[torch.Tensor], NeuralGraphOptimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 4))  # 804 parameters
    opt = NeuralGraphOptimizer(model.parameters(), copy.deepcopy(learned), lr=lr, total_steps=10)
    if not fast:
        opt._fast_ok = False
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt


def test_size_factor():
    cfg = dataclasses.replace(v2_config(), size_ref=1000, size_power=0.5)
    assert cfg.size_factor(1000) == 1.0 and cfg.size_factor(10) == 1.0
    assert cfg.size_factor(4000) == pytest.approx(0.5) and cfg.size_factor(16000) == pytest.approx(0.25)
    assert v2_config().size_factor(10**9) == 1.0  # no prior


@pytest.mark.parametrize("fast", [True, False])
def test_a_model_above_the_reference_trains_as_with_a_scaled_lr(fast: bool):
    learned = LearnedUpdate(v2_config())
    sized = _with_prior(learned, ref=201, power=0.5)  # 804 / 201 = 4: lr x 0.5
    got, opt = _train(sized, lr=1.0, fast=fast)
    want, _ = _train(learned, lr=0.5, fast=fast)
    plain, _ = _train(learned, lr=1.0, fast=fast)
    assert opt.size_scale == pytest.approx(0.5) and opt.param_groups[0]["lr"] == 1.0  # the user's lr stays
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, c) for a, c in zip(got, plain))


def test_a_model_within_the_reference_is_untouched():
    learned = LearnedUpdate(v2_config())
    got, opt = _train(_with_prior(learned, ref=804, power=0.5), lr=1.0)
    want, _ = _train(learned, lr=1.0)
    assert opt.size_scale == 1.0
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_the_size_counts_every_group():
    sized = _with_prior(LearnedUpdate(v2_config()), ref=100, power=1.0)
    a, b = nn.Linear(10, 10), nn.Linear(10, 10)  # 110 parameters each
    opt = NeuralGraphOptimizer(a.parameters(), sized)
    assert opt.size_scale == pytest.approx(100 / 110)
    opt.add_param_group({"params": b.parameters()})
    assert opt.size_scale == pytest.approx(100 / 220)


@pytest.mark.parametrize("kw, match", [({"size_ref": -1}, "Invalid size_ref"), ({"size_ref": 1.5}, "Invalid size_ref"),
                                       ({"size_ref": 10, "size_power": float("nan")}, "Invalid size_power"),
                                       ({"size_power": 0.5}, "needs a size_ref > 0")])
def test_bad_size_prior(kw, match):
    with pytest.raises(ValueError, match=match):
        LearnedUpdateConfig(**kw)


def test_derive_writes_a_size_prior_and_keeps_the_weights(tmp_path):
    from lopt_graphs.optim.checkpoint import read_checkpoint
    from meta_train.derive import derive, main

    derive("v2_calibrated3", tmp_path / "s.pt", 0.0, size_prior=(100000, 0.25))
    a, b = load_learned_update("v2_calibrated3"), load_learned_update(str(tmp_path / "s.pt"))
    assert (b.cfg.size_ref, b.cfg.size_power) == (100000, 0.25) and b.cfg.mag_clip == a.cfg.mag_clip
    assert dataclasses.replace(b.cfg, size_ref=0, size_power=0.0) == a.cfg
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    meta = read_checkpoint(str(tmp_path / "s.pt"))["meta"]
    assert meta["size_prior"] == [100000, 0.25] and meta["derived_from"] == "v2_calibrated3" and "mag_clip" not in meta
    derive("meta_tbptt_1100_clip3", tmp_path / "v1.pt", 0.0, size_prior=(1000, 0.5))  # its meta records mag_clip 3
    v1_meta = read_checkpoint(str(tmp_path / "v1.pt"))["meta"]
    assert v1_meta["mag_clip"] == 3.0 == load_learned_update(str(tmp_path / "v1.pt")).cfg.mag_clip  # kept, not dropped
    with pytest.raises(ValueError, match="Invalid size_prior"):
        derive("v2_calibrated3", tmp_path / "t.pt", 0.0, size_prior=(100000, -1.0))
    with pytest.raises(ValueError, match="Invalid mag_clip: 0"):
        derive("v2_calibrated3", tmp_path / "t.pt", 0.0)
    with pytest.raises(ValueError, match="size_prior"):
        main(["src=v2_calibrated3", f"dst={tmp_path / 'u.pt'}", "size_prior=1000"])
    assert not (tmp_path / "t.pt").exists() and not (tmp_path / "u.pt").exists()
