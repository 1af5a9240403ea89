"""Recipe v2 of the learned update: horizon features, the learned per-tensor step size, the FF ablation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lopt_graphs.optim import LearnedUpdate, NeuralGraphOptimizer
from lopt_graphs.optim.functional import step_features
from lopt_graphs.optim.learned import v2_config

from .optim_infos import random_head_learned
from .test_equivariance import ARCHS, DT, _max_diff, _run_pair


def _random_v2(use_graph: bool = True, seed: int = 3) -> LearnedUpdate:
    learned = random_head_learned(seed=seed, dtype=DT, cfg=v2_config(use_graph))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        learned.lr_sched.weight.normal_(0, 0.5)
        if use_graph:
            learned.lr_readout.weight.normal_(0, 0.5)
    return learned


def _train(model, opt, steps=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=g, dtype=DT)
        y = torch.randn(16, 3, generator=g, dtype=DT)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)


def test_step_features_with_and_without_a_horizon():
    t = torch.tensor(30.0)
    base = step_features(t)
    assert base.shape == (3,)
    known = step_features(t, 100, (0.1, 0.5))
    torch.testing.assert_close(known[:3], base)
    torch.testing.assert_close(known[3:], torch.tensor([math.tanh(5 * 0.2), math.tanh(5 * -0.2), 1.0]))
    unknown = step_features(t, None, (0.1, 0.5))
    assert unknown.shape == (6,) and torch.equal(unknown[3:], torch.zeros(3))


def test_fresh_v2_is_adam_at_lr_0_01():
    a, b = _mlp(), _mlp()
    ngo = _train(a, NeuralGraphOptimizer(a.parameters(), LearnedUpdate(v2_config()).to(DT), total_steps=8))
    adam = _train(b, torch.optim.Adam(b.parameters(), lr=0.01, eps=1e-8))
    for u, v in zip(ngo, adam):
        torch.testing.assert_close(u, v, atol=1e-6, rtol=0)


def test_total_steps_drives_a_v2_update_and_is_ignored_by_v1():
    def run(learned, ts):
        model = _mlp()
        return _train(model, NeuralGraphOptimizer(model.parameters(), learned, total_steps=ts))

    runs = {ts: run(_random_v2(), ts) for ts in (None, 10, 1000)}
    assert _max_diff(runs[10], runs[1000]) > 1e-4 and _max_diff(runs[None], runs[10]) > 1e-4
    v1 = random_head_learned(seed=1, dtype=DT)
    assert _max_diff(run(v1, None), run(v1, 10)) == 0.0


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_invalid_total_steps_raise(bad):
    with pytest.raises(ValueError, match="Invalid total_steps"):
        NeuralGraphOptimizer(_mlp().parameters(), total_steps=bad)


@pytest.mark.parametrize("name, factory, xshape, how", ARCHS, ids=[a[0] for a in ARCHS])
def test_v2_is_equivariant_to_hidden_permutations(name, factory, xshape, how):
    """The per-tensor step size reads means over a tensor's neurons: invariant, so the step stays equivariant."""
    permuted_a, b, a1, a0 = _run_pair(factory, xshape, how, "hidden", _random_v2)
    for u, v in zip(permuted_a, b):
        torch.testing.assert_close(v, u, atol=1e-8, rtol=0)
    assert _max_diff(a1, a0) > 1e-2


def test_ff_ablation_has_no_encoder_and_still_trains():
    ff, graph = LearnedUpdate(v2_config(use_graph=False)), LearnedUpdate(v2_config())
    assert not hasattr(ff, "encoder") and sum(p.numel() for p in ff.parameters()) < 200
    assert sum(p.numel() for p in graph.parameters()) > 50 * sum(p.numel() for p in ff.parameters())
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    after = _train(model, NeuralGraphOptimizer(model.parameters(), _random_v2(use_graph=False), total_steps=8))
    assert _max_diff(before, after) > 1e-3 and all(torch.isfinite(p).all() for p in after)


def test_v2_config_round_trips_through_a_checkpoint(tmp_path):
    from lopt_graphs.optim import load_learned_update, save_checkpoint
    learned = _random_v2().float()
    save_checkpoint(learned, tmp_path / "v2.pt")
    back = load_learned_update(str(tmp_path / "v2.pt"))
    assert back.cfg == learned.cfg and back.cfg.horizon_taus == (0.1, 0.3, 0.5, 0.7, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(learned.parameters(), back.parameters()))


def test_diagnostics_report_the_learned_step_per_parameter():
    model = _mlp()
    learned = _random_v2()
    opt = NeuralGraphOptimizer(model.parameters(), learned, total_steps=8)
    opt.record_diagnostics = True
    _train(model, opt, steps=2)
    d = opt.last_diagnostics
    assert [x["u"].numel() for x in d] == [p.numel() for p in model.parameters()]
    assert all(x["mag_clip"] == 5.0 and abs(x["sigma"]) < 4.0 for x in d)
    assert len({round(x["sigma"], 6) for x in d}) > 1  # a step size per tensor
    opt.record_diagnostics = False
    _train(model, opt, steps=1)
    assert opt.last_diagnostics is d  # left as it was
    with pytest.raises(ValueError, match="eager mode only"):
        c = NeuralGraphOptimizer(model.parameters(), learned, compile=True)
        c.record_diagnostics = True
        _train(model, c, steps=1)


def test_warmup_cosine_values_and_errors():
    from lopt_graphs.optim.learned import warmup_cosine
    lr = warmup_cosine(0.05, warmup=0.1, final=0.02)
    f = torch.tensor([0.0, 0.1, 0.55, 1.0], dtype=torch.float64)
    torch.testing.assert_close(lr(f), torch.tensor([0.05 / 6, 0.05, 0.05 * 0.51, 0.001], dtype=torch.float64))
    for bad in ({"peak": 0.0}, {"peak": 0.1, "warmup": 1.0}, {"peak": 0.1, "final": 0.0}):
        with pytest.raises(ValueError, match="Invalid warmup-cosine schedule"):
            warmup_cosine(**bad)


def test_fit_schedule_follows_the_prior_for_every_horizon_and_keeps_the_unknown_horizon_step():
    from lopt_graphs.optim.learned import warmup_cosine
    learned = LearnedUpdate(v2_config(lr_bound=5.0))
    assert learned.cfg.lr_bound == 5.0
    unknown = learned.schedule(torch.linspace(0, 1, 5), total=None)
    torch.testing.assert_close(unknown, torch.full((5,), 0.01))  # fresh: Adam at 0.01, with or without a horizon
    learned.fit_schedule_(warmup_cosine(0.05))
    torch.testing.assert_close(learned.schedule(torch.linspace(0, 1, 5), total=None), unknown)  # bias untouched
    f = torch.linspace(0, 1, 21)
    curves = [learned.schedule(f, total) for total in (300, 3000)]
    torch.testing.assert_close(curves[0], curves[1])  # a function of t / T only
    c = curves[0]
    assert 0.04 < c[5] < 0.06 and c[-1] < 0.005  # near the peak at a quarter of training, decayed at the end
    assert bool((c[8:].diff() < 0).all())  # decreasing over the second half (cosine)
    assert float(learned.lr_sched.weight.detach()[0, :3].abs().sum()) == 0.0  # no step-count terms
    with pytest.raises(ValueError, match="tensor_lr=True and horizon_taus"):
        LearnedUpdate().fit_schedule_(warmup_cosine(0.05))


def test_readout_bound_limits_a_tensors_step_factor_on_any_model():
    from lopt_graphs.graph import graph_from_module
    from lopt_graphs.optim.functional import node_contexts
    model = nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 3))
    spec = graph_from_module(model)
    feats = [torch.randn(*p.shape, 6) * 100 for p in model.parameters()]  # far outside meta-training's range
    free = LearnedUpdate(v2_config(readout_bound=0.0))
    bounded = LearnedUpdate(v2_config(readout_bound=1.0))
    bounded.load_state_dict(free.state_dict())
    with torch.no_grad():
        for m in (free, bounded):
            m.lr_readout.weight.fill_(1.0)
    raw = torch.stack([c["ctx_lr"] for c in node_contexts(free, spec, feats)])
    got = torch.stack([c["ctx_lr"] for c in node_contexts(bounded, spec, feats)])
    assert raw.abs().max() > 3.0  # unbounded, the readout runs away
    torch.testing.assert_close(got, torch.tanh(raw))  # bounded: 1 * tanh(raw / 1), within +-1
    with pytest.raises(ValueError, match="Invalid readout_bound: -1.0"):
        v2_config(readout_bound=-1.0)
    old = {k: v for k, v in free.cfg.to_dict().items() if k != "readout_bound"}  # a checkpoint from before
    assert LearnedUpdate(type(free.cfg).from_dict(old)).cfg.readout_bound == 0.0


def test_readout_bound_up_bounds_the_upward_share_separately():
    import dataclasses

    cfg = v2_config(readout_bound=2.0)
    asym = dataclasses.replace(cfg, readout_bound_up=0.5)
    r = torch.linspace(-20, 20, 401, dtype=torch.float64)
    got = asym.bound_readout(r)
    assert float(got.max()) == pytest.approx(0.5, abs=1e-6) and float(got.min()) == pytest.approx(-2.0, abs=1e-6)
    torch.testing.assert_close(got[r < 0], cfg.bound_readout(r)[r < 0])  # downward: readout_bound's as before
    assert bool((asym.bound_readout(torch.linspace(-5, 5, 101, dtype=torch.float64)).diff() > 0).all())  # monotone
    small = torch.tensor([-1e-4, 1e-4], dtype=torch.float64)  # slope 1 at 0 from both sides
    torch.testing.assert_close(asym.bound_readout(small), small, rtol=1e-6, atol=0)
    inside = torch.tensor([-1.9, -0.3, 0.0, 0.2, 0.49], dtype=torch.float64)
    torch.testing.assert_close(asym.bound_readout(asym.unbound_readout(inside)), inside)
    assert cfg.readout_bound_up == 0.0 and torch.equal(cfg.bound_readout(r), 2.0 * torch.tanh(r / 2.0))
    assert type(cfg).from_dict(asym.to_dict()) == asym  # stored in checkpoints
    with pytest.raises(ValueError, match="Invalid readout_bound_up: -1.0"):
        dataclasses.replace(cfg, readout_bound_up=-1.0)
    with pytest.raises(ValueError, match="needs a readout_bound > 0"):
        v2_config(readout_bound=0.0).__class__(**{**v2_config().__dict__, "readout_bound_up": 1.0})


def test_fresh_v2_cosine_starts_at_the_prior():
    from meta_train.trainer import COSINE_PEAK, fresh_learned_update
    learned = fresh_learned_update("v2_cosine")
    assert learned.cfg.lr_bound == 5.0 and learned.cfg.use_graph
    peak = float(learned.schedule(torch.linspace(0, 1, 41), total=1000).max())
    assert 0.8 * COSINE_PEAK < peak < 1.2 * COSINE_PEAK
    assert not fresh_learned_update("v2_ff_cosine").cfg.use_graph
    assert learned.cfg.readout_bound == 0.0
    bounded = fresh_learned_update("v2_cosine_bounded")
    assert bounded.cfg.readout_bound == 1.0 and bounded.cfg.use_graph and bounded.cfg.lr_bound == 5.0
    torch.testing.assert_close(bounded.schedule(torch.linspace(0, 1, 41), total=1000),
                               learned.schedule(torch.linspace(0, 1, 41), total=1000))
    with pytest.raises(ValueError, match="Unknown learned-update architecture 'v3'"):
        fresh_learned_update("v3")


def test_an_untold_readout_round_trips_and_needs_a_graph_readout(tmp_path):
    import dataclasses

    from lopt_graphs.optim import load_learned_update, save_checkpoint
    from lopt_graphs.optim.fast_step import fast_step_agrees
    from lopt_graphs.optim.learned import LearnedUpdateConfig

    learned = _random_v2().add_untold_readout_()
    with torch.no_grad():
        learned.lr_readout_untold.weight.normal_(0, 0.5)
    save_checkpoint(learned, tmp_path / "u.pt")
    back = load_learned_update(str(tmp_path / "u.pt"))
    assert back.cfg.untold_readout
    torch.testing.assert_close(back.lr_readout_untold.weight, learned.lr_readout_untold.weight.to(back.lr_readout_untold.weight))
    assert fast_step_agrees(back)  # the fast path reads the untold readout's context as the reference does
    with pytest.raises(ValueError, match="untold_readout=True needs"):
        dataclasses.replace(v2_config(use_graph=False), untold_readout=True)
    with pytest.raises(ValueError, match="untold_readout=True needs"):
        LearnedUpdateConfig(untold_readout=True)  # v1: no per-tensor step, no horizon features


def test_with_config_keeps_the_weights_dtype_and_the_original():
    learned = _random_v2().to(torch.float64)
    sized = learned.with_config(size_ref=1000, size_power=0.5, mag_clip=2.0)
    assert (sized.cfg.size_ref, sized.cfg.size_power, sized.cfg.mag_clip) == (1000, 0.5, 2.0)
    assert learned.cfg.size_ref != 1000 and learned.cfg.mag_clip != 2.0  # the source is unchanged
    for (name, a), (_, b) in zip(learned.state_dict().items(), sized.state_dict().items()):
        assert a.dtype == b.dtype == torch.float64 and torch.equal(a, b), name
    with pytest.raises(ValueError, match="changes the parameters.*lr_readout_untold"):
        learned.with_config(untold_readout=True)
    with pytest.raises(ValueError, match="size_power"):
        learned.with_config(size_power=-1.0)  # checked as a new config is
