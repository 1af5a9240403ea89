"""``LearnedUpdateConfig.untold_horizon`` (``lopt-derive untold_horizon=T0``): a run not told ``total_steps`` steps
at step ``t`` as a told run of ``t + T0`` steps would; told runs do not move."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lopt_graphs.optim import NeuralGraphOptimizer, load_learned_update
from lopt_graphs.optim.learned import LearnedUpdateConfig, v2_config
from meta_train.derive import main

T0 = 50
SRC = "v2_calibrated4_es60_fanin_ortho_conv_untold"  # an untold readout and no assumed horizon


def _model() -> nn.Module:
    torch.manual_seed(0)  # a 5,120-entry matrix and a 4,608-entry kernel: sizes the fast step takes
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 4 * 4, 10))


def _run(learned, total_steps, per_step_total: bool = False, steps: int = 6, growth: float = 0.0
         ) -> list[torch.Tensor]:
    net = copy.deepcopy(_model())
    g = torch.Generator().manual_seed(3)
    opt = NeuralGraphOptimizer.for_module(net, copy.deepcopy(learned), total_steps=total_steps, encoder_every=4,
                                          orthogonal_dtype=torch.float32)
    for t in range(1, steps + 1):
        if per_step_total:  # what the assumed horizon stands for: a told run of t + max(T0, G t) steps at step t
            opt.param_groups[0]["total_steps"] = t + max(T0, growth * t)
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("path,growth", [("fast", 0.0), ("eager", 0.0), ("reference", 0.0), ("fast", 20.0),
                                         ("reference", 20.0)])  # G = 20: G t passes T0 = 50 at step 3 of 6
def test_an_untold_run_steps_as_a_told_run_of_t_plus_t0_steps(monkeypatch, path, growth):
    from lopt_graphs.optim import fast_step, native

    if path == "eager":  # the fast step without its C loop
        monkeypatch.setenv("LOPT_GRAPHS_NATIVE", "0")
        monkeypatch.setattr(native, "_tried", False)
        monkeypatch.setattr(native, "_lib", None)
    if path == "reference":
        monkeypatch.setattr(fast_step, "FAST_MIN_NUMEL", float("inf"))
    base = load_learned_update("default").with_config(untold_horizon=0.0)  # an untold readout, no assumed horizon
    assumed = base.with_config(untold_horizon=float(T0), untold_growth=growth)
    untold = _run(assumed, None)
    told = _run(base, T0 + 1, per_step_total=True, growth=growth)
    for a, b in zip(untold, told):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain_untold = _run(base, None)  # without the assumed horizon the untold readout and no fractions: different
    assert not all(torch.allclose(a, b) for a, b in zip(untold, plain_untold))
    told_a, told_b = _run(base, 40), _run(assumed, 40)  # told runs ignore it
    assert all(torch.equal(a, b) for a, b in zip(told_a, told_b))


def test_the_assumed_schedule_decays_towards_the_told_end():
    learned = load_learned_update("default").with_config(untold_horizon=300.0)
    steps = torch.tensor([300.0, 2700.0, 1e6])  # fractions 0.5, 0.9 and ~1 of the assumed horizon
    untold = learned.schedule_logit(steps, None)
    told = torch.stack([learned.schedule_logit(s[None], int(s + 300))[0] for s in steps])
    torch.testing.assert_close(untold, told)
    end = learned.schedule_logit(torch.tensor([1000.0]), 1000)[0]
    assert untold[0] > untold[1] > untold[2] and abs(float(untold[2] - end)) < 0.05


def test_with_growth_the_assumed_fraction_levels_off_at_one_over_one_plus_g():
    from lopt_graphs.optim.functional import horizon

    assert [horizon(t, None, 100.0, 0.5) for t in (0.0, 100.0, 200.0, 1e6)] == [100.0, 200.0, 300.0, 1.5e6]
    assert float(horizon(torch.tensor(1e6), None, 100.0, 0.5)) == 1.5e6  # the optimizer's tensor step count
    assert horizon(50.0, 400.0, 100.0, 0.5) == 400.0  # a told run keeps its total
    learned = load_learned_update("default").with_config(untold_horizon=100.0, untold_growth=0.5)
    steps = torch.tensor([100.0, 200.0, 1000.0, 1e6])  # fractions 1/2, 2/3 (from here on G t > T0), 2/3, 2/3
    untold = learned.schedule_logit(steps, None)
    told = torch.stack([learned.schedule_logit(s[None], int(s + max(100.0, 0.5 * s)))[0] for s in steps])
    torch.testing.assert_close(untold, told)
    no_growth = learned.with_config(untold_growth=0.0).schedule_logit(steps, None)
    assert torch.equal(untold[:2], no_growth[:2])  # up to t = T0 / G as before
    assert float((untold - no_growth).abs()[2:].min()) > 1e-3  # then the long run's schedule stops short


def test_derive_sets_and_removes_it_and_the_flag_round_trips(tmp_path):
    main([f"src={SRC}", f"dst={tmp_path / 'h.pt'}", "untold_horizon=300"])
    old, new = load_learned_update(SRC), load_learned_update(str(tmp_path / "h.pt"))
    assert new.cfg.untold_horizon == 300.0 and old.cfg.untold_horizon == 0.0
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in new.state_dict().items())
    assert torch.load(tmp_path / "h.pt", weights_only=False)["meta"]["untold_horizon"] == 300.0
    main([f"src={tmp_path / 'h.pt'}", f"dst={tmp_path / 'none.pt'}", "untold_horizon=0"])
    assert load_learned_update(str(tmp_path / "none.pt")).cfg == old.cfg
    main([f"src={tmp_path / 'h.pt'}", f"dst={tmp_path / 'g.pt'}", "untold_growth=1"])  # keeps T0 = 300
    grown = load_learned_update(str(tmp_path / "g.pt")).cfg
    assert (grown.untold_horizon, grown.untold_growth) == (300.0, 1.0)
    main([f"src={tmp_path / 'g.pt'}", f"dst={tmp_path / 'none2.pt'}", "untold_horizon=0"])  # removes both
    assert load_learned_update(str(tmp_path / "none2.pt")).cfg == old.cfg


def test_bad_values_name_the_value_and_the_fix(tmp_path):
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="untold_horizon"):
            LearnedUpdateConfig(**{**v2_config().__dict__, "untold_horizon": bad})
    with pytest.raises(ValueError, match="needs tensor_lr=True and horizon_taus"):
        LearnedUpdateConfig(untold_horizon=100.0)  # v1: no schedule to feed
    with pytest.raises(ValueError, match="untold_horizon"):
        main(["src=default", f"dst={tmp_path / 'a.pt'}", "untold_horizon=-5"])
    with pytest.raises(ValueError, match="needs tensor_lr=True and horizon_taus"):
        main(["src=meta_tbptt_clip3_1875", f"dst={tmp_path / 'b.pt'}", "untold_horizon=100"])
    for bad in (-0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="untold_growth"):
            LearnedUpdateConfig(**{**v2_config().__dict__, "untold_horizon": 100.0, "untold_growth": bad})
    with pytest.raises(ValueError, match="needs an untold_horizon > 0"):
        LearnedUpdateConfig(**{**v2_config().__dict__, "untold_growth": 1.0})
    with pytest.raises(ValueError, match="needs an untold_horizon > 0"):
        main([f"src={SRC}", f"dst={tmp_path / 'c.pt'}", "untold_growth=1"])  # a source without a horizon
    with pytest.raises(ValueError, match="untold_growth"):
        main(["src=default", f"dst={tmp_path / 'd.pt'}", "untold_growth=-2"])
    assert not any((tmp_path / n).exists() for n in ("a.pt", "b.pt", "c.pt", "d.pt"))


def test_an_untold_shift_or_calibration_of_an_unused_untold_readout_is_refused(tmp_path):
    from meta_train.calibrate import _check_untold

    main(["src=default", f"dst={tmp_path / 'h.pt'}", "untold_horizon=300"])
    with pytest.raises(ValueError, match="would do nothing"):
        main([f"src={tmp_path / 'h.pt'}", f"dst={tmp_path / 's.pt'}", "untold_shift=-0.5"])
    assert not (tmp_path / "s.pt").exists()
    with pytest.raises(ValueError, match="untold_horizon=0"):
        _check_untold(load_learned_update(str(tmp_path / "h.pt")))
    _check_untold(load_learned_update(SRC))  # no assumed horizon: the untold readout is calibrated as before
