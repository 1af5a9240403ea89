"""Tests of ``benchmarks/vs_adam.py``: the tiny suite end to end, lr tuning, config errors, skipped paper tasks."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "vs_adam.py"
OPT_FIELDS = {"final_loss_mean", "final_loss_std", "test_acc_mean", "test_acc_std", "ms_per_step", "lr", "curves"}
TINY = ["suite=tiny", "steps=25", "long_steps=30", "seeds=0,1", "adam_lrs=1e-3,1e-2,3e-2", "sgd_lrs=0.01,0.1",
        "smooth=5"]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vs_adam_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread (the other core is busy), restored afterwards (the script sets ``threads=1``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _all_finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_all_finite(v) for v in obj)
    return True


def test_tiny_suite_writes_documented_fields(bench: ModuleType, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny"
    returned = bench.main([*TINY, f"out={out}"])
    doc = json.loads((out / "results.json").read_text())
    assert doc == json.loads(json.dumps(returned))
    assert {"date", "machine", "torch", "config", "tasks", "ckpt", "seconds"} <= set(doc)
    assert doc["config"]["suite"] == "tiny" and doc["config"]["seeds"] == [0, 1]
    assert doc["machine"]["torch_threads"] == 1
    assert doc["ckpt"]["path"].endswith("default.pt") and len(doc["ckpt"]["sha256"]) == 64
    ran = [t for t in doc["tasks"] if not t["skipped"]]
    assert {t["group"] for t in ran} == {"in_dist", "ood"}
    assert {t["steps"] for t in ran} == {25, 30}  # the long-horizon task uses long_steps
    for t in doc["tasks"]:
        assert {"name", "group", "skipped", "optimizers", "ngo_speedup_vs_tuned_adam"} <= set(t)
        assert t["group"] in ("in_dist", "ood", "paper")
    for t in ran:
        assert set(t["optimizers"]) == {"ngo", "adam", "adam_tuned", "adamw_tuned", "sgd_tuned"}
        for name, o in t["optimizers"].items():
            assert OPT_FIELDS <= set(o), name
            for key in ("final_loss_mean", "final_loss_std", "test_acc_mean", "test_acc_std", "ms_per_step", "lr"):
                assert isinstance(o[key], float) and math.isfinite(o[key]), (t["name"], name, key, o[key])
            assert 0.0 <= o["test_acc_mean"] <= 1.0
            curves = o["curves"]
            assert len(curves["loss_per_seed"]) == 2 and all(len(c) == t["steps"] for c in curves["loss_per_seed"])
            assert len(curves["smoothed_mean"]) == len(curves["smoothed_std"]) == t["steps"]
            assert _all_finite(curves)
        assert t["optimizers"]["adam"]["lr"] == 1e-3 and t["optimizers"]["ngo"]["lr"] == 1.0
        sp = t["ngo_speedup_vs_tuned_adam"]
        assert {"mean", "std", "per_seed", "reached"} <= set(sp)
        assert math.isfinite(sp["mean"]) and len(sp["per_seed"]) == 2
    # the tuned lr is the one of minimal final loss among the grid results recorded in the JSON
    for t in ran:
        for name in ("adam_tuned", "adamw_tuned", "sgd_tuned"):
            o = t["optimizers"][name]
            crit = {g["lr"]: (math.inf if g["criterion"] is None else g["criterion"]) for g in o["grid"]}
            assert set(crit) == set(o["lr_grid"]) and o["tuned_on_seeds"] == [0]
            assert crit[o["lr"]] == min(crit.values())
            assert o["final_loss_per_seed"][0] == crit[o["lr"]]  # seed 0 reuses the grid run
    # without data_root the paper tasks are recorded as skipped, with the message
    paper = [t for t in doc["tasks"] if t["group"] == "paper"]
    assert paper and all(t["skipped"] and "not found under" in t["skip_reason"] and not t["optimizers"]
                         for t in paper)
    printed = capsys.readouterr().out
    assert "skipped: fashion_mnist not found under" in printed
    md = (out / "results.md").read_text()
    assert md in printed and "| tiny_digits_mlp |" in md
    assert (out / "curves.png").stat().st_size > 1000
    assert bench.load(out / "config.yaml") == bench.load(None, [*TINY, f"out={out}"])


def _fake_run(bench: ModuleType, final: float) -> Any:
    return bench.RunResult(curve=[final], final_loss=final, test_acc=0.5, ms_per_step=1.0, ms_per_opt_step=0.5,
                           diverged=not math.isfinite(final))


def test_tune_lr_picks_lowest_final_loss(bench: ModuleType) -> None:
    calls: list[tuple[float, int]] = []

    def train(lr: float, seed: int) -> Any:  # a bowl in log-lr with its minimum at 3e-3; lr=1 diverges
        calls.append((lr, seed))
        if lr >= 1.0:
            return _fake_run(bench, math.inf)
        return _fake_run(bench, (math.log10(lr) - math.log10(3e-3)) ** 2 + 0.1 * seed)

    lrs = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1.0)
    best, grid, runs = bench.tune_lr(train, lrs, [0])
    assert best == 3e-3
    assert [g["lr"] for g in grid] == list(lrs) and grid[-1]["criterion"] == math.inf
    assert calls == [(lr, 0) for lr in lrs] and set(runs) == {(lr, 0) for lr in lrs}

    # all_seeds: the mean over seeds decides, not the first seed
    def noisy(lr: float, seed: int) -> Any:
        table = {(1e-3, 0): 0.1, (1e-3, 1): 0.9, (1e-2, 0): 0.2, (1e-2, 1): 0.3}
        return _fake_run(bench, table[(lr, seed)])

    assert bench.tune_lr(noisy, (1e-3, 1e-2), [0])[0] == 1e-3
    assert bench.tune_lr(noisy, (1e-3, 1e-2), [0, 1])[0] == 1e-2


def test_smoothing_and_speedup(bench: ModuleType) -> None:
    assert bench.smooth([4.0, 2.0, 0.0, 2.0], 2) == [4.0, 3.0, 1.0, 1.0]
    assert bench.first_step_at_or_below([3.0, 2.0, 1.0], 2.0) == 2
    adam = [5.0, 4.0, 3.0, 2.0]  # final 2.0, reached at step 4
    sp = bench.speedup(adam, [4.0, 2.0, 1.0, 1.0])
    assert sp["reached"] and sp["adam_steps"] == 4 and sp["ngo_steps"] == 2 and sp["speedup"] == 2.0
    slow = bench.speedup(adam, [5.0, 5.0, 5.0, 3.0])  # NGO ends at 3.0: Adam got there at step 3, NGO at 4
    assert not slow["reached"] and slow["target"] == 3.0 and slow["speedup"] == 0.75
    assert math.isnan(bench.speedup(adam, [5.0, math.inf, math.inf, math.inf])["speedup"])


def test_unknown_and_invalid_config_keys_raise(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown config key 'stepz'.*did you mean 'steps'"):
        bench.load(None, ["stepz=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: tiny\nlearning_rates: [0.1]\n")
    with pytest.raises(ValueError, match="unknown config key 'learning_rates'"):
        bench.load(bad)
    with pytest.raises(ValueError, match="suite"):
        bench.load(None, ["suite=huge"])
    with pytest.raises(ValueError, match="optimizers"):
        bench.load(None, ["optimizers=adam,adam_tuned"])
    with pytest.raises(TypeError):
        bench.load(None, ["steps=1.5"])
    with pytest.raises(SystemExit):
        bench.main(["--no-such-option"])


def test_shipped_configs_load(bench: ModuleType) -> None:
    default = bench.load(ROOT / "configs" / "benchmarks" / "default.yaml")
    assert default == bench.VsAdamConfig()  # the YAML spells out the defaults
    quick = bench.load(ROOT / "configs" / "benchmarks" / "quick.yaml")
    assert quick.suite == "quick" and quick.out == "benchmarks/results/vs_adam_quick"
    names = [s.name for s in bench.suite_tasks("default")]
    assert len(names) == len(set(names))
    assert {s.group for s in bench.suite_tasks("default")} == {"in_dist", "ood", "paper"}
    assert any(s.long for s in bench.suite_tasks("quick"))


def test_empty_data_root_records_paper_tasks_skipped(bench: ModuleType, tmp_path: Path) -> None:
    empty = tmp_path / "no_data"
    empty.mkdir()
    out = tmp_path / "out"
    doc = bench.main([*TINY, f"data_root={empty}", "only=tiny_fashion,tiny_mnist,tiny_cifar", f"out={out}"])
    assert [t["name"] for t in doc["tasks"]] == ["tiny_fashion_mnist_cnn", "tiny_mnist_mlp", "tiny_cifar10_cnn"]
    for t in doc["tasks"]:
        assert t["group"] == "paper" and t["skipped"] is True and t["optimizers"] == {}
        assert t["skip_reason"].startswith(f"skipped: {t['task_config']['dataset']} not found under {str(empty)!r}")
        assert t["ngo_speedup_vs_tuned_adam"] is None
    saved = json.loads((out / "results.json").read_text())
    assert [t["skipped"] for t in saved["tasks"]] == [True, True, True]
    assert "not found under" in (out / "results.md").read_text()


def test_paper_task_runs_when_the_dataset_loads(bench: ModuleType, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The torchvision path with a stand-in loader (random 28x28 images): exercises ``SplitsTask`` only."""
    from lopt_graphs.data import DatasetSplits

    gen = torch.Generator().manual_seed(0)
    loaded: list[tuple[str, int]] = []

    def fake_load(name: str, root: str, train_limit: int | None = None) -> DatasetSplits:
        loaded.append((name, train_limit))
        return DatasetSplits(torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen),
                             torch.rand(32, 1, 28, 28, generator=gen), torch.randint(0, 10, (32,), generator=gen),
                             name, (1, 28, 28), 10)

    monkeypatch.setattr(bench, "load_torchvision", fake_load)
    doc = bench.main(["suite=tiny", "steps=6", "seeds=0", "adam_lrs=1e-3", "sgd_lrs=0.1", "smooth=2", "plot=false",
                      f"data_root={tmp_path}", "only=tiny_mnist_mlp", "paper_train_limit=64", f"out={tmp_path / 'o'}"])
    (task,) = doc["tasks"]
    assert loaded == [("mnist", 64)]
    assert not task["skipped"] and task["group"] == "paper"
    assert math.isfinite(task["optimizers"]["ngo"]["final_loss_mean"])
    assert not (tmp_path / "o" / "curves.png").exists()


def test_speedup_is_zero_when_ngo_makes_no_progress():
    from benchmarks.vs_adam import speedup

    adam = [2.3, 1.0, 0.5, 0.2]
    assert speedup(adam, [2.3, 2.5, 3.0, 3.7])["speedup"] == 0.0  # diverged
    assert speedup(adam, [2.3, 1.2, 0.6, 0.2])["speedup"] == 1.0  # same curve
