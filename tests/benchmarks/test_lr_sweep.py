"""benchmarks/lr_sweep.py: NGO's lr multiplier swept and tuned per task on the issue-13 targets."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.lr_sweep import hindsight, main, summarize


def _row(group: str, adam: list[float], per_m: dict[str, tuple[list[float], list[float]]], tuned: float) -> dict:
    return {"group": group, "adam_final_loss_per_seed": adam, "tuned_multiplier": tuned,
            "multipliers": {k: {"final_loss_per_seed": f, "fraction_per_seed": fr} for k, (f, fr) in per_m.items()}}


def test_summarize_counts_the_chosen_multiplier():
    rows = [_row("in_distribution", [1.0, 1.0], {"0.5": ([2.0, 2.0], [math.inf, math.inf]),
                                                  "2.0": ([0.5, 0.5], [0.4, 0.6])}, 2.0),
            _row("held_out", [1.0, 1.0], {"0.5": ([0.9, 1.1], [0.9, math.inf]),
                                           "2.0": ([math.inf, 0.2], [math.inf, 0.1])}, 0.5)]
    s = summarize(rows, lambda r: "0.5")
    assert math.isinf(s["median_fraction_in_dist"]) and s["in_dist_runs_reached"] == 0
    assert (s["held_out_runs_at_or_below_tuned_adam"], s["held_out_runs"]) == (1, 2)
    t = summarize(rows, lambda r: str(r["tuned_multiplier"]))
    assert t["median_fraction_in_dist"] == pytest.approx(0.5) and t["in_dist_runs_reached"] == 2
    assert summarize(rows, lambda r: "2.0")["held_out_runs_at_or_below_tuned_adam"] == 1  # a diverged run never counts


def test_hindsight_takes_the_best_setting_per_run():
    rows = [_row("in_distribution", [1.0, 1.0], {"0.5": ([2.0, 0.3], [math.inf, 0.2]),
                                                  "2.0": ([0.5, math.nan], [0.4, math.inf])}, 2.0),
            _row("held_out", [1.0, 1.0], {"0.5": ([0.9, 1.1], [0.9, math.inf]),
                                           "2.0": ([math.inf, 1.05], [math.inf, 0.1])}, 0.5)]
    h = hindsight(rows)  # in-dist runs: 0.4 and 0.2; held-out finals: 0.9 (<= 1) and 1.05 (> 1)
    assert h["median_fraction_in_dist"] == pytest.approx(0.3) and h["in_dist_runs_reached"] == 2
    assert (h["held_out_runs_at_or_below_tuned_adam"], h["held_out_runs"]) == (1, 2)


def test_small_sweep_end_to_end(tmp_path):
    doc = main(["ckpt=default", "multipliers=0.5,1", "steps=20", "seeds=0", "only=digits_mlp_32_relu",
                f"out={tmp_path}"])
    (row,) = doc["rows"]
    assert row["adam_tune_seed"] == 1000 and set(row["multipliers"]) == {"0.5", "1.0"}
    tune = {float(k): v["tune_seed_final_loss"] for k, v in row["multipliers"].items()}
    assert row["tuned_multiplier"] == min(tune, key=tune.get)  # chosen on the tuning seed, never a scored one
    for v in row["multipliers"].values():
        assert all(f == math.inf or 0 < f <= 1 for f in v["fraction_per_seed"])
    fastest = min(row["multipliers"], key=lambda k: (row["multipliers"][k]["tune_seed_fraction"], tune[float(k)]))
    assert row["fastest_key"] == fastest  # also chosen on the tuning seed: fewest steps to its tuned Adam's loss
    assert set(doc["summary"]) == {"x0.5", "x1.0", "tuned per task (on the tuning seed)",
                                   "tuned per task for speed (fewest steps on the tuning seed)",
                                   "best per run in hindsight (a bound, not a procedure)"}
    saved = json.loads((tmp_path / "lr_sweep.json").read_text())  # strict JSON (not reached -> null)
    assert saved["rows"][0]["task"] == row["task"] and (tmp_path / "lr_sweep.md").read_text().count("|") > 10


def test_a_shorter_told_horizon_is_its_own_setting_and_changes_the_run(tmp_path):
    doc = main(["ckpt=default", "multipliers=1", "horizons=0.5,1", "steps=20", "seeds=0",
                "only=digits_mlp_32_relu", f"out={tmp_path}"])
    (row,) = doc["rows"]
    assert list(row["multipliers"]) == ["1.0@T0.5", "1.0"]
    short, full = row["multipliers"]["1.0@T0.5"], row["multipliers"]["1.0"]
    assert (short["horizon"], full["horizon"]) == (0.5, 1.0)
    # told half the run, the learned schedule has decayed by step 10: a different run from the same seed
    assert short["final_loss_per_seed"] != full["final_loss_per_seed"]
    assert row["tuned_key_at_horizon_1"] == "1.0" and row["fastest_key"] in row["multipliers"]
    assert {"x1.0, told 0.5 x steps", "x1.0", "multiplier tuned per task, told steps (on the tuning seed)",
            "tuned per task for speed (fewest steps on the tuning seed)"} <= set(doc["summary"])
    assert "told 0.5 x steps" in (tmp_path / "lr_sweep.md").read_text()


@pytest.mark.parametrize("args, match", [(["multipliers=0,1"], "multipliers"), (["only=no_such_task"], "only"),
                                         (["seeds="], "seeds"), (["horizons=0,1"], "horizons"),
                                         (["horizons=0.01"], "horizons"),
                                         (["horizons=0.5", "total_steps=false"], "horizons")])
def test_bad_keys(args, match):
    with pytest.raises(ValueError, match=match):
        main(["steps=2", *args])
