"""Tests of meta_train.logging_utils: JSONL/stdout logging and offline/disabled wandb (no network)."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

_ROOT = Path(__file__).resolve().parents[2]

from meta_train.logging_utils import (  # noqa: E402
    WANDB_ID_FILE,
    MetricsLogger,
    format_metrics,
    progress,
    resolve_wandb_mode,
)

CONFIG = {"outer_steps": 3, "estimator": "pes", "sigma": 0.01}


@pytest.fixture()
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep wandb's side files in tmp, never online, never running git."""
    home = tmp_path / "wandb_home"
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    return out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with MetricsLogger(tmp_path, CONFIG, use_wandb=False, project="p") as logger:
        logger.log(1, {"meta_loss": 1.23456789, "grad_norm": torch.tensor(0.5), "pairs": np.int64(4)})
        logger.log(2, {"meta_loss": float("nan"), "lr": np.float32(0.25), "ok": True})
        assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2  # flushed on every call
    recs = _records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2]
    assert all(isinstance(r["time"], float) for r in recs)
    assert recs[0]["meta_loss"] == pytest.approx(1.23456789)
    assert recs[0]["grad_norm"] == 0.5 and recs[0]["pairs"] == 4
    assert recs[1]["meta_loss"] is None and recs[1]["lr"] == 0.25 and recs[1]["ok"] == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "step 1 | meta_loss 1.2346 | grad_norm 0.5 | pairs 4"
    assert out[1].startswith("step 2 | meta_loss nan | lr 0.25")
    assert not (tmp_path / "wandb").exists()


def test_bad_metrics(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, CONFIG, use_wandb=False, project="p")
    with pytest.raises(ValueError, match="reserved"):
        logger.log(1, {"step": 1.0})
    with pytest.raises(TypeError, match="'v'"):
        logger.log(1, {"v": torch.ones(3)})
    logger.close()
    logger.close()  # idempotent
    logger.log(3, {"x": 1.0})  # no-op after close


def test_only_rank_zero_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = MetricsLogger(tmp_path / "r1", CONFIG, use_wandb=True, project="p", rank=1)
    logger.log(1, {"meta_loss": 1.0})
    logger.close()
    assert not (tmp_path / "r1").exists()
    assert capsys.readouterr().out == ""


def test_fresh_run_moves_old_metrics_aside_and_resume_appends(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, CONFIG, use_wandb=False, project="p") as logger:
        for s in range(1, 5):
            logger.log(s, {"meta_loss": float(s)})
    with MetricsLogger(tmp_path, CONFIG, use_wandb=False, project="p", resume=True) as logger:
        assert logger.drop_after(2) == 2
        logger.log(3, {"meta_loss": 30.0})
    recs = _records(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["meta_loss"]) for r in recs] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    with pytest.warns(RuntimeWarning, match="moved"):
        logger = MetricsLogger(tmp_path, CONFIG, use_wandb=False, project="p")
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert len(list(tmp_path.glob("metrics.jsonl.prev-*"))) == 1


def test_format_and_progress() -> None:
    assert format_metrics(7, {"a": 0.000123456, "b": 3}) == "step 7 | a 0.00012346 | b 3"
    bar = progress(total=10, initial=4, disable=False)
    bar.update(2)
    assert bar.n == 6 and bar.total == 10
    bar.close()
    hidden = progress(total=10, initial=0, disable=True)
    assert hidden.disable
    hidden.close()


def test_resolve_wandb_mode() -> None:
    assert resolve_wandb_mode({}) == "offline"
    assert resolve_wandb_mode({"WANDB_API_KEY": "x" * 40}) == "online"
    assert resolve_wandb_mode({"WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}) == "disabled"
    assert resolve_wandb_mode({"WANDB_MODE": "offline", "WANDB_API_KEY": "x"}) == "offline"
    assert resolve_wandb_mode({"WANDB_MODE": "online"}) == "online"
    assert resolve_wandb_mode({"WANDB_MODE": "dryrun"}) == "offline"
    with pytest.warns(RuntimeWarning, match="WANDB_MODE"):
        assert resolve_wandb_mode({"WANDB_MODE": "weird"}) == "offline"


def test_wandb_offline_run_files(wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = wandb_env
    logger = MetricsLogger(out, CONFIG, use_wandb=True, project="lopt-graphs-test")
    assert logger.wandb_run is not None and logger.wandb_mode == "offline"
    run_id = logger.wandb_run.id
    logger.log(1, {"meta_loss": 2.0})
    logger.log(2, {"meta_loss": 1.5})
    logger.close()
    assert logger.wandb_run is None
    run_dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1 and run_dirs[0].name.endswith(run_id)
    assert list(run_dirs[0].glob("*.wandb")), "offline run file missing"
    assert (out / WANDB_ID_FILE).read_text().strip() == run_id
    assert len(_records(out / "metrics.jsonl")) == 2

    # A resumed run continues the same wandb run id.
    logger = MetricsLogger(out, CONFIG, use_wandb=True, project="lopt-graphs-test", resume=True)
    assert logger.wandb_run is not None and logger.wandb_run.id == run_id
    logger.log(3, {"meta_loss": 1.0})
    logger.close()


def test_wandb_default_mode_without_key_is_offline(wandb_env: Path) -> None:
    logger = MetricsLogger(wandb_env, CONFIG, use_wandb=True, project="lopt-graphs-test")
    try:
        assert logger.wandb_mode == "offline" and logger.wandb_run is not None
    finally:
        logger.close()
    assert list((wandb_env / "wandb").glob("offline-run-*"))


def test_wandb_disabled_writes_nothing(wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with MetricsLogger(wandb_env, CONFIG, use_wandb=True, project="p") as logger:
        logger.log(1, {"meta_loss": 1.0})
        assert logger.wandb_run is None
    assert not (wandb_env / "wandb").exists()
    assert not (wandb_env / WANDB_ID_FILE).exists()
    assert len(_records(wandb_env / "metrics.jsonl")) == 1


def test_wandb_failures_never_crash(wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no service")

    monkeypatch.setattr(wandb, "init", boom)
    with pytest.warns(RuntimeWarning, match="wandb.init failed"):
        logger = MetricsLogger(wandb_env, CONFIG, use_wandb=True, project="p")
    logger.log(1, {"meta_loss": 1.0})
    logger.close()
    assert len(_records(wandb_env / "metrics.jsonl")) == 1

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.warns(RuntimeWarning, match="cannot import wandb"):
        logger = MetricsLogger(wandb_env / "b", CONFIG, use_wandb=True, project="p")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.log(1, {"meta_loss": math.pi})
    logger.close()
