"""meta_train.calibrate: the per-task step multiplier fitted into the readout."""

from __future__ import annotations

import math

import pytest
import torch

from meta_train.calibrate import (
    CalibrateConfig,
    best_log_multiplier,
    calibrate,
    collect,
    leave_one_out,
    main,
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


def test_calibrate_moves_the_readout_by_the_prediction():
    learned = fresh_learned_update("v2_cosine_bounded")
    d = learned.lr_readout.in_features
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(12, d, generator=g)
    rows = [{"feature": f.tolist(), "target_log_multiplier": float(f[0] - 0.5 * f[1])} for f in feats]
    before = learned.lr_readout(feats).detach().squeeze(1)
    fit = calibrate(learned, rows, ridge=1e-3)
    after = learned.lr_readout(feats).detach().squeeze(1)
    target = feats[:, 0] - 0.5 * feats[:, 1]
    assert torch.allclose(after - before, target, atol=0.05)
    assert fit["tasks"] == 12 and fit["weight_l1"] > 1.0
    with pytest.raises(ValueError, match="do not fit the readout"):
        calibrate(learned, [{"feature": [0.0] * (d + 1), "target_log_multiplier": 0.0}] * 3, ridge=1.0)


@pytest.mark.parametrize("arch", ["v1", "v2_ff_cosine"])
def test_needs_a_graph_readout(arch):
    with pytest.raises(ValueError, match="no per-tensor step readout"):
        calibrate(fresh_learned_update(arch), [{"feature": [0.0], "target_log_multiplier": 0.0}] * 3, ridge=1.0)


def test_collect_small(tmp_path):
    learned = fresh_learned_update("v2_cosine_bounded")
    c = CalibrateConfig(family="digits", tasks=2, steps=8, multipliers=(0.5, 1.0, 2.0), max_params=5000)
    rows = collect(learned, c, log=lambda *_: None)
    assert [r["seed"] for r in rows] == [5000, 5001]
    for r in rows:
        assert len(r["losses"]) == 3 and len(r["feature"]) == learned.lr_readout.in_features
        assert math.log(0.5) - 1e-9 <= r["target_log_multiplier"] <= math.log(2.0) + 1e-9
    assert not learned.lr_readout._forward_hooks  # the feature hook is removed


@pytest.mark.parametrize("args, match", [(["multipliers=0.5,2,4"], "contains 1"), (["multipliers=2,1,4"], "increasing"),
                                         (["train_seed=0"], "train_seed"), (["train_seed=999"], "train_seed"),
                                         (["ridge=0"], "ridge"), ([], "dst")])
def test_bad_keys(args, match):
    with pytest.raises(ValueError, match=match):
        main(["tasks=2", "steps=2", *args])
