"""meta_train.calibrate: the per-task step multiplier fitted into the readout."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from meta_train.calibrate import (
    CalibrateConfig,
    annotate_rows,
    best_log_multiplier,
    calibrate,
    collect,
    context_for,
    leave_one_out,
    load_rows,
    main,
    mean_log_step,
    ridge_fit,
)
from meta_train.trainer import fresh_learned_update

GRID = (0.25, 0.5, 1.0, 2.0, 4.0)


def test_best_log_multiplier_refines_inside_and_keeps_edges():
    lm = [math.log(m) for m in GRID]
    # log(L + 0.01) symmetric around m = 1: the vertex is exactly there
    assert best_log_multiplier(GRID, [0.5, 0.2, 0.1, 0.2, 0.5]) == pytest.approx(0.0, abs=1e-12)
    # a parabola in log m with its vertex at log 1.5 (inside the grid step around m = 2's neighbour 1)
    c = [(x - math.log(1.5)) ** 2 for x in lm]
    losses = [math.exp(v) - 0.01 for v in c]
    assert best_log_multiplier(GRID, losses) == pytest.approx(math.log(1.5), abs=1e-9)
    assert best_log_multiplier(GRID, [0.1, 0.2, 0.3, 0.4, 0.5]) == lm[0]  # edge: stays the edge
    assert best_log_multiplier(GRID, [float("nan"), 0.3, 0.2, 0.1, float("inf")]) == pytest.approx(lm[3], abs=0.35)


def test_ridge_fit_recovers_a_linear_relation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0, 3.0]) + 2.0
    w0 = torch.tensor([0.5, -0.02, 3.0, 0.0, 0.1])
    y = x @ w0 + 0.3
    w, b = ridge_fit(x, y, 1e-6)
    assert torch.allclose(w.float(), w0, atol=1e-3) and b == pytest.approx(0.3, abs=1e-3)
    assert leave_one_out(x, y, 1e-6)["r2"] > 0.999
    noise = torch.randn(40, generator=g)
    assert leave_one_out(x, noise, 1.0)["r2"] < 0.2  # nothing to predict: no skill out of sample


def _rows(learned, n=12, scale=1.0, steps=50, seed=1, told=True):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, learned.lr_readout.in_features, generator=g)
    rows = [{"feature": f.tolist(), "target_log_multiplier": float(scale * (f[0] - 0.5 * f[1])) / 4,
             "config": {"arch": "mlp" if i % 2 else "cnn"}, **({} if told else {"told": False})}
            for i, f in enumerate(feats)]
    annotate_rows(rows, learned, steps)
    return rows, feats


def _log_steps(learned, feats, steps=50):
    with torch.no_grad():
        return mean_log_step(learned, learned.cfg.bound_readout(learned.lr_readout(feats)[:, 0]), steps)


def test_context_for_inverts_the_mean_log_step():
    learned = fresh_learned_update("v2_cosine_bounded")
    ctx = torch.tensor([-0.5, 0.0, 0.3], dtype=torch.float64)
    wanted = mean_log_step(learned, ctx, 40)
    assert torch.allclose(context_for(learned, wanted, 40), ctx, atol=1e-6)
    # beyond what 95% of the readout's bound reaches: the nearest reachable context
    far = context_for(learned, wanted + torch.tensor([-50.0, 0.0, 50.0], dtype=torch.float64), 40)
    b = learned.cfg.readout_bound
    assert far[0] == pytest.approx(-0.95 * b, abs=1e-6) and far[2] == pytest.approx(0.95 * b, abs=1e-6)
    learned.cfg = dataclasses.replace(learned.cfg, readout_bound=2 * b, readout_bound_up=b / 2)  # asymmetric
    far = context_for(learned, wanted + torch.tensor([-50.0, 0.0, 50.0], dtype=torch.float64), 40)
    assert far[0] == pytest.approx(-1.9 * b, abs=1e-6) and far[2] == pytest.approx(0.475 * b, abs=1e-6)
    assert far[1] == pytest.approx(0.0, abs=1e-6)


def test_calibrate_moves_the_mean_log_step_by_the_target():
    learned = fresh_learned_update("v2_cosine_bounded")
    rows, feats = _rows(learned)
    before = _log_steps(learned, feats)
    fit = calibrate(learned, rows, ridge=1e-3)
    change = _log_steps(learned, feats) - before
    target = torch.tensor([r["target_log_multiplier"] for r in rows], dtype=torch.float64)
    assert torch.allclose(change, target, atol=0.02)
    assert fit["tasks"] == 12 and fit["weight_l1"] > 0.1 and set(fit["by_arch"]) == {"cnn", "mlp"}
    assert fit["applied_mean"] == pytest.approx(float(target.mean()), abs=0.02)
    with pytest.raises(ValueError, match="do not fit the readout"):
        calibrate(learned, [{"feature": [0.0] * (feats.shape[1] + 1), "target_log_multiplier": 0.0, "log_step": 0.0,
                             "steps": 5}] * 3, ridge=1.0)
    nan_rows = [dict(r) for r in rows]
    nan_rows[3]["feature"] = [float("nan")] * feats.shape[1]
    nan_rows[3]["task"] = "diverged"
    with pytest.raises(ValueError, match=r"tasks \['diverged'\] have a non-finite"):
        calibrate(learned, nan_rows, ridge=1e-3)
    with pytest.raises(ValueError, match="annotate_rows"):
        calibrate(learned, [{"feature": [0.0] * feats.shape[1], "target_log_multiplier": 0.0}] * 3, ridge=1.0)


def test_untold_calibration_fits_an_untold_readout_and_leaves_told_runs():
    learned = fresh_learned_update("v2_cosine_bounded")
    rows, feats = _rows(learned, told=False)
    told_readout = {k: v.clone() for k, v in learned.lr_readout.state_dict().items()}
    t = torch.arange(1, 301)
    sched = (learned.schedule_logit(t, 300), learned.schedule_logit(t, None))
    with torch.no_grad():
        before = mean_log_step(learned, learned.cfg.bound_readout(learned.lr_readout(feats)[:, 0]), 50, told=False)
    assert torch.allclose(before, torch.tensor([r["log_step"] for r in rows], dtype=torch.float64))
    fit = calibrate(learned, rows, ridge=1e-3, told=False)
    assert learned.cfg.untold_readout and fit["horizon"] == "untold" and fit["weight_l1"] > 0.1
    assert all(torch.equal(v, told_readout[k]) for k, v in learned.lr_readout.state_dict().items())  # told: as was
    assert torch.equal(learned.schedule_logit(t, 300), sched[0]) and torch.equal(learned.schedule_logit(t, None), sched[1])
    with torch.no_grad():
        after = mean_log_step(learned, learned.cfg.bound_readout(learned.lr_readout_untold(feats)[:, 0]), 50, told=False)
    target = torch.tensor([r["target_log_multiplier"] for r in rows], dtype=torch.float64)
    assert torch.allclose(after - before, target, atol=0.02)
    # rows measured on the calibrated update read its untold readout: nothing left to move
    again = [{k: v for k, v in r.items() if k not in ("log_step", "steps")} for r in rows]
    annotate_rows(again, learned, 50)
    assert torch.allclose(torch.tensor([r["log_step"] for r in again], dtype=torch.float64), after, atol=1e-6)


def test_the_untold_shift_reaches_levels_beyond_the_readouts_bound():
    learned = fresh_learned_update("v2_cosine_bounded")
    rows, feats = _rows(learned, told=False)
    for r in rows:
        r["target_log_multiplier"] = 1.2  # the readout's context would need ~1.9: beyond its bound, 1
    assert learned.cfg.readout_bounds[1] == 1.0
    fit = calibrate(learned, rows, ridge=1.0, told=False)
    assert fit["untold_shift"] > 0.5 and float(learned.lr_untold_shift) == pytest.approx(fit["untold_shift"])
    assert fit["applied_mean"] == pytest.approx(1.2, abs=0.05) and fit["squared_error"] < 0.01
    again = [{k: v for k, v in r.items() if k not in ("log_step", "steps")} for r in rows]
    annotate_rows(again, learned, 50)  # the shift is part of the untold context
    moved = torch.tensor([a["log_step"] - r["log_step"] for a, r in zip(again, rows)])
    assert torch.allclose(moved, torch.full_like(moved, 1.2), atol=0.1)


def test_an_untold_readout_steps_untold_runs_only():
    from torch import nn

    from lopt_graphs.optim import NeuralGraphOptimizer

    learned = fresh_learned_update("v2_cosine_bounded")
    plain = copy.deepcopy(learned)
    learned.add_untold_readout_()
    with torch.no_grad():
        learned.lr_readout_untold.bias.fill_(-1.0)  # untold runs: a smaller step

    def train(lu, total):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        opt = NeuralGraphOptimizer(model.parameters(), copy.deepcopy(lu), total_steps=total)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(train(learned, 20), train(plain, 20)))  # told: the same
    moved = [(a - b).abs().max() for a, b in zip(train(learned, None), train(plain, None))]
    assert max(moved) > 1e-4
    assert learned.add_untold_readout_() is learned and learned.lr_readout_untold.bias.item() == -1.0  # kept


def test_told_and_untold_rows_do_not_mix():
    learned = fresh_learned_update("v2_cosine_bounded")
    told_rows, _ = _rows(learned)
    untold_rows, _ = _rows(learned, told=False)
    with pytest.raises(ValueError, match="measured on told runs; a horizon=untold fit"):
        calibrate(learned, told_rows, ridge=1.0, told=False)
    with pytest.raises(ValueError, match="measured on untold runs; a horizon=told fit"):
        calibrate(learned, untold_rows, ridge=1.0)
    learned.cfg = dataclasses.replace(learned.cfg, horizon_taus=())
    with pytest.raises(ValueError, match="needs a learned update with horizon features"):
        calibrate(learned, untold_rows, ridge=1.0, told=False)


def test_per_task_false_fits_one_step_level_for_all():
    learned = fresh_learned_update("v2_cosine_bounded")
    with torch.no_grad():
        learned.lr_readout.weight.normal_()  # a readout with per-task terms, which the ablation removes
    rows, feats = _rows(learned)
    fit = calibrate(learned, rows, ridge=1e-3, per_task=False)
    assert fit["per_task"] is False and float(learned.lr_readout.weight.detach().abs().sum()) == 0.0
    r = learned.lr_readout(feats).detach()[:, 0]
    assert torch.allclose(r, r[0].expand_as(r))  # the same step for every task
    wanted = torch.tensor([x["log_step"] + x["target_log_multiplier"] for x in rows], dtype=torch.float64)
    got = _log_steps(learned, feats)
    assert abs(float(got.mean() - wanted.mean())) < 0.15  # near the mean wanted level (fitted before the bounds)
    assert float(wanted.min()) < float(got[0]) < float(wanted.max())


def test_a_wider_readout_bound_reaches_targets_the_old_one_cannot():
    narrow, wide = fresh_learned_update("v2_cosine_bounded"), fresh_learned_update("v2_cosine_bounded")
    rows, feats = _rows(narrow, scale=6.0)  # targets up to about 2 e-folds: beyond e**(+-1)
    before = _log_steps(narrow, feats)
    target = torch.tensor([r["target_log_multiplier"] for r in rows], dtype=torch.float64)
    calibrate(narrow, rows, ridge=1e-3)
    fit = calibrate(wide, rows, ridge=1e-3, readout_bound=3 * narrow.cfg.readout_bound)
    assert wide.cfg.readout_bound == fit["readout_bound"] == 3 * narrow.cfg.readout_bound
    err_narrow = ((_log_steps(narrow, feats) - before) - target).abs().mean()
    err_wide = ((_log_steps(wide, feats) - before) - target).abs().mean()
    assert err_wide < 0.5 * err_narrow, (err_wide, err_narrow)
    assert (narrow.cfg.bound_readout(narrow.lr_readout(feats)[:, 0]).abs() <= narrow.cfg.readout_bound).all()


def test_load_rows_annotates_records_and_checks_the_encoder(tmp_path, monkeypatch):
    import json

    import meta_train.evaluate as ev

    learned = fresh_learned_update("v2_cosine_bounded")
    rows, _ = _rows(learned, n=4)
    bare = [{k: v for k, v in r.items() if k not in ("log_step", "steps")} for r in rows]
    path = tmp_path / "rec.json"
    path.write_text(json.dumps({"config": {"src": "SRC", "steps": 50}, "rows": bare}))
    monkeypatch.setattr(ev, "load_any", lambda name: learned if name == "SRC" else None)
    loaded = load_rows([str(path)], learned)
    assert [r["log_step"] for r in loaded] == pytest.approx([r["log_step"] for r in rows])
    other = fresh_learned_update("v2_cosine_bounded")
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if n.startswith("encoder.")).add_(1.0)
    with pytest.raises(ValueError, match="encoder differs"):
        load_rows([str(path)], other)
    resched = fresh_learned_update("v2_cosine_bounded")
    resched.load_state_dict(learned.state_dict())
    with torch.no_grad():
        resched.lr_sched.weight.add_(0.5)  # another schedule, same encoder: the rows carry over
    assert len(load_rows([str(path)], resched)) == 4
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a record"):
        load_rows([str(tmp_path / "bad.json")], learned)


@pytest.mark.parametrize("arch", ["v1", "v2_ff_cosine"])
def test_needs_a_graph_readout(arch):
    with pytest.raises(ValueError, match="no per-tensor step readout"):
        calibrate(fresh_learned_update(arch), [{"feature": [0.0], "target_log_multiplier": 0.0, "log_step": 0.0,
                                                 "steps": 5}] * 3, ridge=1.0)


def test_collect_small(tmp_path):
    learned = fresh_learned_update("v2_cosine_bounded")
    c = CalibrateConfig(family="digits", tasks=2, steps=8, multipliers=(0.5, 1.0, 2.0), max_params=5000)
    rows = collect(learned, c, log=lambda *_: None)
    assert [r["seed"] for r in rows] == [5000, 5001]
    for r in rows:
        assert len(r["losses"]) == 3 and len(r["feature"]) == learned.lr_readout.in_features
        assert math.log(0.5) - 1e-9 <= r["target_log_multiplier"] <= math.log(2.0) + 1e-9
        assert r["steps"] == 8 and math.isfinite(r["log_step"])
    assert not learned.lr_readout._forward_hooks  # the feature hook is removed
    untold = collect(learned, dataclasses.replace(c, horizon="untold"), log=lambda *_: None)[0]
    assert untold["told"] is False and untold["task"] == rows[0]["task"] and rows[0]["told"] is True
    assert untold["losses"] != rows[0]["losses"]  # runs without the horizon: another schedule
    with torch.no_grad():
        ctx = learned.cfg.bound_readout(learned.lr_readout(torch.tensor([untold["feature"]]))[:, 0])
    assert untold["log_step"] == pytest.approx(float(mean_log_step(learned, ctx, 8, told=False)[0]))


def test_seeds_per_task_average_the_seeds_in_the_targets_log_space():
    from meta_train.calibrate import mean_over_seeds

    assert mean_over_seeds([0.09, 0.99]) == pytest.approx(math.sqrt(0.1 * 1.0) - 0.01)
    assert mean_over_seeds([float("nan"), 0.0]) > 1e3  # a diverged seed counts as 1e9, as in the target
    learned = fresh_learned_update("v2_cosine_bounded")
    c = CalibrateConfig(family="digits", tasks=2, steps=6, multipliers=(0.5, 1.0, 2.0), max_params=5000,
                        seeds_per_task=2)
    rows = collect(learned, c, log=lambda *_: None)
    one = collect(learned, dataclasses.replace(c, seeds_per_task=1), log=lambda *_: None)
    assert [r["seeds"] for r in rows] == [[5000, 5001], [5002, 5003]] and [r["seed"] for r in rows] == [5000, 5002]
    for r in rows:
        assert [len(f) for f in r["losses_per_seed"]] == [2, 2, 2]
        assert r["losses"] == pytest.approx([mean_over_seeds(f) for f in r["losses_per_seed"]])
        assert r["target_log_multiplier"] == pytest.approx(best_log_multiplier(c.multipliers, r["losses"]))
    # the first seed of task 0 is the one-seed collection's own run
    assert rows[0]["losses_per_seed"][1][0] == pytest.approx(one[0]["losses"][1])
    assert "seeds" not in one[0]


def test_collect_resumes_from_its_progress_file(tmp_path, monkeypatch):
    import meta_train.calibrate as mod

    calls = []
    real = mod.train_run
    monkeypatch.setattr(mod, "train_run", lambda *a, **k: calls.append(1) or real(*a, **k))
    learned = fresh_learned_update("v2_cosine_bounded")
    progress = tmp_path / "c.partial.json"
    c = CalibrateConfig(family="digits", tasks=2, steps=4, multipliers=(0.5, 1.0, 2.0), max_params=5000)
    first = collect(learned, c, log=lambda *_: None, progress=progress)
    assert len(calls) == 6 and progress.is_file()
    more = collect(learned, dataclasses.replace(c, tasks=3), log=lambda *_: None, progress=progress)
    assert len(calls) == 9  # only the new task trained
    assert [r["task"] for r in more[:2]] == [r["task"] for r in first] and len(more) == 3
    assert more[1]["losses"] == first[1]["losses"] and more[1]["log_step"] == pytest.approx(first[1]["log_step"])
    with pytest.raises(ValueError, match="other keys"):
        collect(learned, dataclasses.replace(c, steps=5), log=lambda *_: None, progress=progress)
    progress.write_text('{"keys": {"src"')  # cut short by hand: named, not a JSON traceback
    with pytest.raises(ValueError, match="not a partial collection"):
        collect(learned, c, log=lambda *_: None, progress=progress)


@pytest.mark.parametrize("args, match", [(["multipliers=0.5,2,4"], "contains 1"), (["multipliers=2,1,4"], "increasing"),
                                         (["train_seed=0"], "train_seed"), (["train_seed=999"], "train_seed"),
                                         (["ridge=0"], "ridge"), (["readout_bound=-1"], "readout_bound"),
                                         (["horizon=sometimes"], "horizon"), (["seeds_per_task=0"], "seeds_per_task"),
                                         ([], "dst")])
def test_bad_keys(args, match):
    with pytest.raises(ValueError, match=match):
        main(["tasks=2", "steps=2", *args])


def test_a_fan_in_prior_is_refused_with_the_way_around_it():
    learned = fresh_learned_update("v2_cosine_bounded").with_config(fan_in_power=0.5)
    with pytest.raises(ValueError, match="fan_in_prior=0,64"):
        calibrate(learned, [{"feature": [0.0], "target_log_multiplier": 0.0, "log_step": 0.0, "steps": 5}] * 3,
                  ridge=1.0)
