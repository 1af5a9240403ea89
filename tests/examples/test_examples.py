"""The examples run in CI-sized time and do what they say (Lightning / transformers ones skip when absent)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_transformer_lm_trains_with_partial_graph() -> None:
    out = _load("transformer_lm").train(steps=60, quiet=True)
    assert out["last_loss"] < 0.7 * out["first_loss"]
    desc = out["description"]
    free = {r.name for r in desc.free}
    assert free == {"tok.weight", "pos.weight"} | {f"enc.layers.{i}.self_attn.in_proj_{k}" for i in range(2)
                                                  for k in ("weight", "bias")}
    assert desc.built_by == "torch.fx" and desc.totals()["edge"][0] == 7


def test_lightning_module_with_scheduler_dict() -> None:
    pytest.importorskip("lightning")
    out = _load("lightning_digits").train(steps=60, quiet=True)
    assert out["optimizer"] == "NeuralGraphOptimizer" and out["steps"] == 60
    assert out["last_loss"] < 0.5 * out["first_loss"]
    assert out["lr_end"] < 0.01  # the cosine schedule stepped every step


def test_hf_trainer_tiny_bert() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = _load("hf_trainer_bert").train(steps=40, quiet=True)
    assert out["last_loss"] < 0.5 * out["first_loss"]
    assert out["test_accuracy"] > 0.9
    assert out["description"].totals()["edge"][0] >= 8  # dense layers of attention output, FFN, pooler, classifier
