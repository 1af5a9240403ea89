"""Tests of ``benchmarks.step_scale``: the per-tensor steps it reads off the optimizer's diagnostics, and the
readout bound that keeps them near the schedule's on a model far larger than meta-training's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import step_scale as mod
from lopt_graphs.optim import save_checkpoint
from meta_train.trainer import fresh_learned_update


def _runaway(bound: bool, path: Path) -> str:
    torch.manual_seed(0)  # the same encoder for both
    learned = fresh_learned_update("v2_cosine_bounded" if bound else "v2_cosine")
    with torch.no_grad():
        learned.lr_readout.weight.fill_(1.0)  # a readout that extrapolates on wide layers
    save_checkpoint(learned, path)
    return str(path)


def test_readout_bound_keeps_every_tensor_within_e_of_the_schedule(tmp_path: Path):
    free, bounded = _runaway(False, tmp_path / "free.pt"), _runaway(True, tmp_path / "bounded.pt")
    res = mod.main([f"ckpts=adam_init,{free},{bounded}", "models=mlp_wide", "steps=1", "seeds=1", f"out={tmp_path / 's.json'}"])
    v1, f, b = res["rows"]
    assert v1["ckpt"] == "adam_init" and "median_step" not in v1  # v1: no per-tensor step
    assert f["schedule_step"] == pytest.approx(0.01, rel=0.02) == b["schedule_step"]
    assert b["tensors"] == f["tensors"] == 6
    assert b["schedule_step"] / math.e <= b["min_step"] <= b["max_step"] <= b["schedule_step"] * math.e
    assert max(f["max_step"] / f["schedule_step"], f["schedule_step"] / f["min_step"]) > 3  # unbounded: runs away
    assert res["rows"][0]["adam_0.001_loss_end"] == res["rows"][2]["adam_0.001_loss_end"]  # one Adam run per model
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == res["rows"]
    assert "| schedule step |" in (tmp_path / "s.md").read_text()


def test_told_reads_the_steps_at_the_schedules_peak(tmp_path: Path):
    learned = fresh_learned_update("v2_cosine_bounded")  # the warmup-cosine prior: peak near 0.05 early on
    path = tmp_path / "prior.pt"
    save_checkpoint(learned, path)
    peak = mod.peak_step(learned, 20)
    sched = learned.schedule(torch.arange(1, 21) / 20, 20)
    assert 1 < peak < 10 and float(sched[peak - 1]) == float(sched.max())
    assert mod.peak_step(learned, None) == 1 and mod.peak_step(fresh_learned_update("v1"), 20) == 1
    res = mod.main([f"ckpts={path}", "models=mlp_wide", "steps=20", "seeds=1", "told=true", "lr=0.5",
                    f"out={tmp_path / 't.json'}"])
    row = res["rows"][0]
    assert res["total_steps"] == 20 and row["probe_step"] == peak
    assert row["schedule_step"] == pytest.approx(0.5 * float(sched.max()), rel=1e-4) and res["lr"] == [0.5]
    assert row["schedule_step"] / math.e <= row["min_step"] <= row["max_step"] <= row["schedule_step"] * math.e
    assert (tmp_path / "t.md").read_text().startswith("Told `total_steps=20`, 20 steps, NGO `lr=0.5`")


def test_an_lr_sweep_gives_a_row_per_multiplier_against_one_adam_run(tmp_path: Path):
    learned = fresh_learned_update("v2_cosine_bounded")
    path = tmp_path / "prior.pt"
    save_checkpoint(learned, path)
    res = mod.main([f"ckpts={path}", "models=mlp_mid", "steps=3", "seeds=1", "told=true", "lr=1,0.25",
                    f"out={tmp_path / 'w.json'}"])
    big, small = res["rows"]
    assert (big["lr"], small["lr"], res["lr"]) == (1.0, 0.25, [1.0, 0.25]) and big["params"] == 269_322
    assert small["schedule_step"] == pytest.approx(0.25 * big["schedule_step"], rel=1e-5)
    assert small["median_step"] == pytest.approx(0.25 * big["median_step"], rel=1e-4)
    assert big["adam_0.01_loss_ends"] == small["adam_0.01_loss_ends"]
    md = (tmp_path / "w.md").read_text()
    assert "| params | lr | median step |" in md and f"| {path} | mlp_mid | 269,322 | 0.25 |" in md


def test_adam_lrs_give_one_column_each_on_the_same_inits(tmp_path: Path):
    res = mod.main(["ckpts=adam_init", "models=mlp_mid", "steps=2", "seeds=1", "adam_lrs=0.001,0.04",
                    f"out={tmp_path / 'a.json'}"])
    (row,) = res["rows"]
    assert res["adam_lrs"] == [0.001, 0.04] and "adam_0.01_loss_end" not in row
    # a larger constant step moves the loss differently from the same start
    assert row["adam_0.001_loss_end"] != row["adam_0.04_loss_end"]
    header = (tmp_path / "a.md").read_text().splitlines()[2]
    assert header.endswith("| NGO end | Adam 0.001 end | Adam 0.04 end |")


@pytest.mark.parametrize("bad, match", [("models=vgg", "models"), ("steps=0", "steps=0"), ("ckpts=", "ckpts"), ("seeds=0", "seeds=0"),
                                        ("lr=0", "lr"), ("lr=1,nan", "lr"), ("lr=", "lr"), ("adam_lrs=", "adam_lrs"),
                                        ("adam_lrs=0.01,0.01", "adam_lrs"), ("adam_lrs=-1", "adam_lrs"),
                                        ("adam_lrs=inf", "adam_lrs")])
def test_bad_keys_raise(bad: str, match: str, tmp_path: Path):
    with pytest.raises(ValueError, match=match):
        mod.main(["ckpts=adam_init", bad, f"out={tmp_path / 'x.json'}"])
