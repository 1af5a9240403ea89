"""Tests of ``benchmarks.meta_progress``: validation and training-family scores of checkpoints side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import meta_progress as mod
from lopt_graphs.optim import save_checkpoint


def test_scores_and_per_task_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # a copy of the fresh update whose step schedule is 100x lower trains far less: worse on every task
    slow = mod.load("fresh:v2_cosine_bounded")
    with torch.no_grad():
        slow.lr_sched.bias.sub_(5.0)
    save_checkpoint(slow, tmp_path / "slow.pt")
    res = mod.main(["ckpts=fresh:v2_cosine_bounded," + str(tmp_path / "slow.pt"), "validate_steps=10",
                    "validate_seeds=1", "tasks=3", "steps=20", f"out={tmp_path / 'p.json'}"])
    fresh, worse = res["rows"]
    assert fresh["validation_lower"] == "-" and len(fresh["train_family_values"]) == 3 == len(res["tasks"])
    assert worse["train_family"] > fresh["train_family"] and worse["train_family_lower"] == "0/3"
    assert worse["validation"] > fresh["validation"] and worse["validation_lower"].endswith("/8")
    assert fresh["validation_vs_first"] is None
    d = worse["validation_vs_first"]
    assert d["mean"] == pytest.approx(worse["validation"] - fresh["validation"]) and d["se"] > 0
    assert json.loads((tmp_path / "p.json").read_text())["rows"][1]["train_family"] == worse["train_family"]
    assert "| train_family |" in (tmp_path / "p.md").read_text()
    err = capsys.readouterr().err  # a progress bar over every training run: 2 checkpoints x (8 validation + 3)
    assert "meta-progress" in err and "22/22" in err
    assert mod.family_tasks(mod.MetaProgressConfig(ckpts=("x",), tasks=3)) == mod.family_tasks(
        mod.MetaProgressConfig(ckpts=("y",), tasks=3))  # a fixed draw


def test_paired_difference():
    d = mod.paired_difference([1.0, 2.0, 6.0], [0.0, 0.0, 3.0])
    assert d["mean"] == pytest.approx(2.0) and d["se"] == pytest.approx(((1 + 0 + 1) / 2 / 3) ** 0.5)
    assert mod.paired_difference([1.0], [0.5])["se"] != mod.paired_difference([1.0], [0.5])["se"]  # nan


def test_told_false_scores_the_untold_path(tmp_path: Path):
    # the untold schedule 100x lower, the told one as it was (the flag's weight takes the bias change back)
    slow = mod.load("fresh:v2_cosine_bounded")
    with torch.no_grad():
        slow.lr_sched.bias.sub_(5.0)
        slow.lr_sched.weight[0, -1].add_(5.0)
    save_checkpoint(slow, tmp_path / "untold_slow.pt")
    keys = ["ckpts=fresh:v2_cosine_bounded," + str(tmp_path / "untold_slow.pt"), "validate_steps=10",
            "validate_seeds=1", "tasks=2", "steps=20"]
    told = mod.main([*keys, f"out={tmp_path / 't.json'}"])["rows"]
    untold = mod.main([*keys, "told=false", f"out={tmp_path / 'u.json'}"])["rows"]
    assert told[1]["validation"] == pytest.approx(told[0]["validation"], abs=1e-4)
    assert told[1]["train_family"] == pytest.approx(told[0]["train_family"], abs=1e-4)
    assert untold[1]["validation"] > untold[0]["validation"] and untold[1]["train_family_lower"] == "0/2"
    assert untold[0]["validation"] != pytest.approx(told[0]["validation"], abs=1e-3)  # another schedule
    assert (tmp_path / "u.md").read_text().startswith("Runs **not** told `total_steps`")


def test_a_dtype_suffix_sets_the_optimizers_orthogonal_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert mod.split_dtype("default@bfloat16") == ("default", torch.bfloat16)
    assert mod.split_dtype("runs/a@b/ckpt.pt") == ("runs/a@b/ckpt.pt", "auto")  # not a dtype: part of a path
    seen = []
    real = mod.NeuralGraphOptimizer.for_module
    monkeypatch.setattr(mod.NeuralGraphOptimizer, "for_module",
                        lambda m, ckpt, **kw: seen.append(kw["orthogonal_dtype"]) or real(m, ckpt, **kw))
    import meta_train.validate as validate

    monkeypatch.setattr(validate.NeuralGraphOptimizer, "for_module", mod.NeuralGraphOptimizer.for_module)
    res = mod.main(["ckpts=default,default@float32", "validate_steps=5", "validate_seeds=1", "tasks=1", "steps=5",
                    f"out={tmp_path / 'd.json'}"])
    assert [r["ckpt"] for r in res["rows"]] == ["default", "default@float32"]
    assert set(seen[:len(seen) // 2]) == {"auto"} and set(seen[len(seen) // 2:]) == {torch.float32}


def test_validate_first_seed_scores_fresh_seeds(tmp_path: Path):
    keys = ["ckpts=fresh:v2_cosine_bounded", "validate_steps=5", "tasks=1", "steps=5"]
    res = mod.main([*keys, "validate_seeds=1", "validate_first_seed=3", f"out={tmp_path / 'f.json'}"])
    assert {t["seed"] for t in res["rows"][0]["validation_tasks"]} == {3}
    assert "1 seeds from seed 3" in (tmp_path / "f.md").read_text()
    with pytest.raises(ValueError, match="validate_first_seed"):
        mod.main([*keys, "validate_first_seed=-1", f"out={tmp_path / 'g.json'}"])


@pytest.mark.parametrize("bad, match", [("ckpts=fresh:v9", "fresh:ARCH"), ("tasks=0", "tasks=0"),
                                        ("family=nope", "family")])
def test_bad_keys_raise(bad: str, match: str, tmp_path: Path):
    with pytest.raises(ValueError, match=match):
        mod.main(["ckpts=fresh:v2", bad, f"out={tmp_path / 'x.json'}"])


def test_refs_from_a_file_without_references_is_an_error(tmp_path: Path):
    save_checkpoint(mod.load("fresh:v2"), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="holds no validation references"):
        mod.main(["ckpts=fresh:v2", f"refs_from={tmp_path / 'plain.pt'}", f"out={tmp_path / 'x.json'}"])
