"""``python -m benchmarks.step_schedule``: the per-tensor step of told and untold runs, as the optimizer takes it."""

from __future__ import annotations

import json

import pytest

from benchmarks.step_schedule import main
from lopt_graphs.optim.checkpoint import DEFAULT_CHECKPOINT


def test_an_untold_run_steps_as_the_told_run_of_its_assumed_horizon(tmp_path):
    out = tmp_path / "s.json"
    doc = main(["ckpts=default,v2_calibrated4_es60_fanin_ortho_conv_untold", "told=101,6", "untold_steps=6",
                f"out={out}"])
    assert json.loads(out.read_text()) == doc and out.with_suffix(".png").stat().st_size > 0
    rows = {(r["ckpt"], r["total_steps"]): r for r in doc["rows"]}
    assert len(rows) == 6 and all(len(r["step_size"]) == len(r["loss"]) == r["steps"] for r in doc["rows"])
    told, untold = rows[DEFAULT_CHECKPOINT, 101], rows[DEFAULT_CHECKPOINT, None]
    # the default assumes t + 100 steps: at its first step, a told run of 101 steps
    assert untold["untold_horizon"] == 100.0 and untold["step_size"][0] == pytest.approx(told["step_size"][0])
    plain = rows["v2_calibrated4_es60_fanin_ortho_conv_untold", None]  # the untold readout's constant level
    assert plain["untold_horizon"] == 0.0 and plain["step_size"][0] < 0.5 * untold["step_size"][0]
    md = out.with_suffix(".md").read_text()
    assert "untold, assumes t + 100" in md and "| t=1 |" in md


def test_bad_keys_name_the_value():
    with pytest.raises(ValueError, match="task"):
        main(["task=cifar_resnet"])
    with pytest.raises(ValueError, match="told"):
        main(["told=0"])
