"""Tests of ``benchmarks.recurrent_lm``: the runs it compares share their start, the ratio it reports is the
curve's, and bad keys raise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import recurrent_lm as mod
from lopt_graphs.optim import CheckpointError


def test_every_optimizer_starts_from_the_same_loss_and_the_ratio_is_the_curves(tmp_path: Path):
    out = tmp_path / "lm.json"
    doc = mod.main(["ckpts=default", "adam_lrs=0.001,0.01", "vocab=64", "steps=6", "seeds=2", "told=true",
                    f"out={out}"])
    assert [r["optimizer"] for r in doc["rows"]] == ["default", "Adam lr=0.001", "Adam lr=0.01"]
    assert doc["total_steps"] == 6 and doc["params"] == sum(p.numel() for p in mod.RecurrentLM(64).parameters())
    for s in range(2):  # the same initialization and first batch for every optimizer of a seed
        assert len({r["curves"][s][0] for r in doc["rows"]}) == 1
    assert doc["rows"][0]["curves"][0] != doc["rows"][0]["curves"][1]  # seeds differ
    for r in doc["rows"]:
        c = r["curves"][0]
        assert r["loss_ratio"][0] == pytest.approx(sum(c[-3:]) / 3 / c[0])
        assert r["worst_loss_ratio"] == max(r["loss_ratio"])
    # a larger Adam step learns the stride sequences faster in 6 steps
    assert doc["rows"][2]["median_loss_ratio"] < doc["rows"][1]["median_loss_ratio"] < 1.0
    assert json.loads(out.read_text())["rows"][0]["optimizer"] == "default"
    assert "| Adam lr=0.01 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0


def test_the_batches_use_the_first_16_tokens_and_continue_the_stride():
    x, y = mod.batch(torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 12) and int(x.max()) < mod.USED_TOKENS
    assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("bad, match", [("vocab=8", "vocab=8"), ("steps=3", "steps=3"), ("seeds=0", "seeds=0"),
                                        ("adam_lrs=0.01,0.01", "adam_lrs"), ("adam_lrs=0", "adam_lrs"),
                                        ("adam_lrs=nan", "adam_lrs")])
def test_bad_keys_raise(bad: str, match: str, tmp_path: Path):
    with pytest.raises(ValueError, match=match):
        mod.main([bad, f"out={tmp_path / 'x.json'}"])


def test_a_missing_checkpoint_fails_before_any_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def no_run(*args, **kwargs):
        raise AssertionError("trained before every checkpoint loaded")

    monkeypatch.setattr(mod, "train", no_run)
    out = tmp_path / "lm.json"
    with pytest.raises(CheckpointError, match="nope.pt"):
        mod.main(["ckpts=default," + str(tmp_path / "nope.pt"), "vocab=64", "steps=6", f"out={out}"])
    assert not out.exists()
