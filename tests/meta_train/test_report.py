"""Tests of meta_train.report: report.md, meta_loss.png and the evaluation table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]

from meta_train.config import MetaTrainConfig, save_resolved_config  # noqa: E402
from meta_train.report import ema_smooth, read_metrics, write_report  # noqa: E402


def _write_metrics(path: Path, n: int = 30) -> None:
    lines = [json.dumps({"step": s, "time": 0.0, "meta_loss": 2.0 / s + 0.1 * (s % 3)}) for s in range(1, n + 1)]
    lines.insert(5, json.dumps({"step": 5, "time": 0.0, "eval/loss": 0.3}))  # merged into step 5
    lines.append(json.dumps({"step": 3, "time": 1.0, "meta_loss": 9.0}))  # re-logged after a resume: wins
    lines.append('{"step": 31, "meta_lo')  # partial last line after a crash
    path.write_text("\n".join(lines) + "\n")


def test_read_metrics_dedups_and_skips_garbage(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _write_metrics(path)
    recs = read_metrics(path)
    assert [r["step"] for r in recs] == list(range(1, 31))
    assert recs[2]["meta_loss"] == 9.0
    assert recs[4]["eval/loss"] == 0.3 and "meta_loss" in recs[4]
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_ema_smooth() -> None:
    assert ema_smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    assert ema_smooth([4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0])  # debiased
    with pytest.raises(ValueError):
        ema_smooth([1.0], 1.0)


def test_report_with_eval_table(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics)
    save_resolved_config(MetaTrainConfig(outer_steps=30), tmp_path / "config.yaml")
    eval_results = {
        "mlp_digits": {
            "ngo_final_loss": 0.5,
            "adam_final_loss": 1.0,
            "adam_lr": 0.001,
            "ngo_steps_to_adam_final": 40,
            "steps": 200,
        },
        "cnn|tiny": {
            "ngo_final_loss": 2.0,
            "adam_final_loss": 1.0,
            "adam_lr": 0.003,
            "ngo_steps_to_adam_final": None,
            "steps": 100,
        },
    }
    report = write_report(tmp_path, metrics, eval_results)
    assert report == tmp_path / "report.md"
    png = tmp_path / "meta_loss.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.read_text()
    assert text.startswith("# Meta-training report")
    assert "![meta loss](meta_loss.png)" in text
    assert "outer_steps: 30" in text  # resolved config embedded
    assert "| mlp_digits | 200 | 0.5 | 1 | 0.001 | 0.500 | 40 | 0.200 |" in text
    assert "| cnn\\|tiny | 100 | 2 | 1 | 0.003 | 2.000 | never | — |" in text
    assert "**1.000**" in text and "**1/2**" in text  # geo-mean of 0.5 and 2.0; one task reached
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "meta_loss.png", "metrics.jsonl", "report.md"]


def test_report_without_eval_or_data(tmp_path: Path) -> None:
    empty = tmp_path / "metrics.jsonl"
    empty.write_text("")
    report = write_report(tmp_path / "out", empty, None)
    text = report.read_text()
    assert "No finite `meta_loss` records" in text and "## Evaluation" not in text
    assert "No `config.yaml`" in text
    assert not (tmp_path / "out" / "meta_loss.png").exists()


def test_report_tabulates_validation_and_says_when_the_start_was_best(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    recs = [{"step": 0, "val_score": 0.25}, {"step": 1, "meta_loss": 1.0}, {"step": 2, "meta_loss": 0.5, "val_score": 0.5},
            {"step": 4, "meta_loss": 0.2, "val_score": 0.4}]
    metrics.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    res = {"t": {"ngo_final_loss": 0.5, "adam_final_loss": 1.0, "adam_lr": 0.01, "ngo_steps_to_adam_final": 5,
                 "steps": 10}}
    text = write_report(tmp_path, metrics, res, {"t": {**res["t"], "ngo_final_loss": 2.0}}).read_text()
    assert "| outer step | 0 | 2 | 4 |" in text and "| validation | 0.250 | 0.500 | 0.400 |" in text
    assert "- `best.pt`: outer step 0, validation 0.250" in text
    assert "- `learned.pt`: the last outer step, validation 0.400 at step 4." in text
    assert "did not beat its starting point (step 0)" in text
    assert text.index("### `learned.pt`") < text.index("| t | 10 | 0.5 |") < text.index("### `best.pt`") < text.index(
        "| t | 10 | 2 |")
    recs[3]["val_score"] = 0.1  # a later step wins: no such note
    metrics.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    text = write_report(tmp_path, metrics, res).read_text()
    assert "- `best.pt`: outer step 4, validation 0.100" in text and "did not beat" not in text
    assert "the last validated step was the best" in text
    assert "###" not in text  # one table, as before, without best.pt's
