"""Tests of ``meta_train.evaluate`` on ``lopt_graphs.evaluation``: tuned Adam's lr comes from the tuning seed."""

from __future__ import annotations

import math

import pytest
import torch

from lopt_graphs.evaluation import train_run
from lopt_graphs.optim import CheckpointError, load_learned_update
from meta_train.evaluate import (
    ADAM_LRS,
    TUNE_SEED,
    check_checkpoints,
    compare_with_adam,
    markdown,
    steps_to_reach,
    tune_seed_for,
)
from meta_train.tasks import IN_DISTRIBUTION, Task


def test_tune_seed_is_never_a_scored_seed() -> None:
    assert TUNE_SEED == 1000 and tune_seed_for([0, 1, 2]) == 1000 and tune_seed_for([1000, 1001, 5]) == 1002


def test_compare_with_adam_tunes_on_the_tuning_seed() -> None:
    cfg, steps = IN_DISTRIBUTION[0], 12
    r = compare_with_adam(load_learned_update("adam_init"), cfg, steps, seed=0)
    task = Task(cfg)
    finals = {lr: train_run(task, lambda m, lr=lr: torch.optim.Adam(m.parameters(), lr=lr), steps, 1000).final_loss
              for lr in ADAM_LRS}
    assert r["adam_tune_seed"] == 1000 and r["seed"] == 0
    assert r["adam_lr"] == min(finals, key=finals.get)  # the best lr on seed 1000, not on the scored seed 0
    scored = train_run(task, lambda m: torch.optim.Adam(m.parameters(), lr=r["adam_lr"]), steps, 0)
    assert r["adam_final_loss"] == scored.final_loss and r["adam_curve"] == scored.curve
    assert r["ngo_steps_to_adam_final"] == steps_to_reach(r["ngo_curve"], sum(scored.curve[-10:]) / 10)
    with pytest.raises(ValueError, match="tuning seed 0: it is also a scored seed"):
        compare_with_adam(load_learned_update("adam_init"), cfg, steps, seed=0, tune_seed=0)


def test_markdown_says_where_the_lr_was_tuned() -> None:
    row = {"group": "held_out", "task": "t", "adam_lr": 0.01, "adam_final_loss": 0.5, "ngo_final_loss": 0.4,
           "ngo_steps_to_adam_final": 5, "steps": 10, "adam_test_accuracy": 0.9, "ngo_test_accuracy": 0.91}
    res = {"rows": [row], "seeds": [0], "adam_tune_seed": 1000,
           "summary": {"median_fraction_of_steps_to_tuned_adam_final_in_dist": math.nan,
                       "held_out_beats_tuned_adam": 1, "held_out_tasks": 1}}
    assert "chosen per task on seed 1000, which is not scored" in markdown(res)


def test_check_checkpoints_names_the_first_that_does_not_load_and_skips_the_prefix(tmp_path):
    check_checkpoints(["default", "adam_init", "fresh:v2"], skip_prefix="fresh:")
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing.pt"):
        check_checkpoints(["default", missing, "fresh:v2"], skip_prefix="fresh:")
    with pytest.raises(CheckpointError, match="fresh:v2"):  # without the prefix it is a (missing) name
        check_checkpoints(["fresh:v2"])
