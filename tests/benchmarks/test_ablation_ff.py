"""benchmarks/ablation_ff.py: validation curves read from a run's metrics and its typed command line."""

from __future__ import annotations

import json

import pytest

from benchmarks.ablation_ff import AblationConfig, validation_curve


def test_validation_curve_reads_only_the_validated_steps(tmp_path):
    rows = [{"step": 1, "meta_loss": 0.5}, {"step": 2, "meta_loss": 0.4, "val_score": 0.3},
            {"step": 3, "meta_loss": 0.2}, {"step": 4, "val_score": -0.1}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert validation_curve(tmp_path) == [(2, 0.3), (4, -0.1)]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps=0"):
        AblationConfig(steps=0)
    with pytest.raises(TypeError):
        AblationConfig(steps="300")
    with pytest.raises(ValueError, match="seeds=()"):
        AblationConfig(seeds=())
    with pytest.raises(ValueError, match="threads=-1"):
        AblationConfig(threads=-1)


def test_command_line_parses_seeds_as_integers():
    from lopt_graphs import config as _cfg
    a = _cfg.parse_command(AblationConfig, ["seeds=0,2", "threads=0"], "")
    assert a.seeds == (0, 2) and a.threads == 0
    from meta_train.evaluate import EvaluateConfig
    assert AblationConfig().seeds == EvaluateConfig().seeds == (0, 1, 2)  # scored seeds; tuning seed 1000
