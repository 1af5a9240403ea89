"""Tests of ``benchmarks.hf_bert``: which runs it makes, how it counts trained runs, its config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import hf_bert as mod
from lopt_graphs.optim import CheckpointError


def test_every_checkpoint_runs_with_and_without_the_horizon_and_adam_in_the_same_process(tmp_path: Path):
    calls = []

    def fake_train(steps, seed, quiet, ckpt=None, total_steps=None, lr=1.0, make_opt=None):
        calls.append((ckpt, total_steps, seed))
        if make_opt is not None:
            opt = make_opt(torch.nn.Linear(2, 2))
            acc = 1.0 if opt.param_groups[0]["lr"] < 0.015 else 0.5
        else:
            acc = 0.95 if total_steps is None else 0.5 + 0.2 * seed
        return {"test_accuracy": acc, "last_loss": 1.0 - acc, "first_loss": 0.69}

    cfg = mod.HFBertConfig(ckpts=("adam_init",), adam_lrs=(1e-2, 2e-2), steps=12, seeds=3, out=str(tmp_path / "h.json"))
    doc = mod.run(cfg, fake_train)
    assert [r["optimizer"] for r in doc["rows"]] == ["adam_init", "adam_init, total_steps", "Adam lr=0.01",
                                                     "Adam lr=0.02"]
    assert [r["trained"] for r in doc["rows"]] == [3, 1, 3, 0]  # 0.5, 0.7, 0.9: only 0.9 reaches trained_acc
    a = "adam_init"
    assert calls[:6] == [(a, None, 0), (a, None, 1), (a, None, 2), (a, 12, 0), (a, 12, 1), (a, 12, 2)]
    md = mod.markdown(doc)
    assert "| adam_init, total_steps | 1/3 | 0.500, 0.700, 0.900 |" in md
    json.dumps(doc)  # the document is JSON as written


def test_ngo_lr_makes_labelled_runs_with_that_multiplier(tmp_path: Path):
    made = []

    def fake_train(steps, seed, quiet, ckpt=None, total_steps=None, lr=1.0, make_opt=None):
        made.append((ckpt, lr, total_steps))
        return {"test_accuracy": 1.0, "last_loss": 0.0, "first_loss": 0.69}

    cfg = mod.HFBertConfig(ckpts=("adam_init",), adam_lrs=(), steps=12, seeds=1, ngo_lr=0.5, out=str(tmp_path / "h.json"))
    doc = mod.run(cfg, fake_train)
    assert [r["optimizer"] for r in doc["rows"]] == ["adam_init, lr=0.5", "adam_init, lr=0.5, total_steps"]
    assert made == [("adam_init", 0.5, None), ("adam_init", 0.5, 12)]
    with pytest.raises(ValueError, match="ngo_lr"):
        mod.HFBertConfig(ngo_lr=0.0)


@pytest.mark.parametrize("kw, match", [({"steps": 5}, "steps=5"), ({"trained_acc": 0.5}, "trained_acc"),
                                       ({"adam_lrs": (0.0,)}, "adam_lrs"), ({"adam_lrs": (float("inf"),)}, "adam_lrs"),
                                       ({"ckpts": (), "adam_lrs": ()}, "ckpts")])
def test_config_errors_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        mod.HFBertConfig(**kw)


def test_example_train_takes_a_checkpoint_a_horizon_or_another_optimizer():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    train = mod._example().train
    adam = train(steps=10, seed=0, quiet=True, make_opt=lambda m: torch.optim.Adam(m.parameters(), lr=1e-2))
    assert adam["description"] is None and adam["first_loss"] > 0
    ngo = train(steps=10, seed=0, quiet=True, ckpt="adam_init", total_steps=10)
    assert ngo["description"].totals()["edge"][0] >= 8


def test_a_missing_checkpoint_fails_before_any_run(tmp_path: Path):
    def no_run(**kwargs):
        raise AssertionError("trained before every checkpoint loaded")

    cfg = mod.HFBertConfig(ckpts=("default", str(tmp_path / "nope.pt")), steps=12, seeds=1,
                           out=str(tmp_path / "h.json"))
    with pytest.raises(CheckpointError, match="nope.pt"):
        mod.run(cfg, no_run)
