"""The examples run in CI-sized time and do what they say (Lightning / transformers ones skip when absent), and
take the one command line of every command: ``[--config FILE] [key=value ...]``, ``--help`` listing the keys."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lopt_graphs.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# name -> (a module it needs, the keys with their defaults as --help lists them)
HELP = {
    "train_digits": (None, ["steps=300", "seed=0", "threads=1", "out=runs/train_digits"]),
    "transformer_lm": (None, ["steps=200", "seed=0", "threads=1"]),
    "lightning_digits": ("lightning", ["steps=200", "seed=0", "threads=1"]),
    "hf_trainer_bert": ("transformers", ["steps=60", "seed=0", "threads=1"]),
}


@pytest.mark.parametrize("name", sorted(HELP))
def test_help_lists_the_keys_with_their_defaults(name: str, capsys) -> None:
    needs, keys = HELP[name]
    if needs:
        pytest.importorskip(needs)
    with pytest.raises(SystemExit) as exit_:
        _load(name).main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "[--config FILE] [key=value ...]" in out
    listed = out.split("(key=default):\n", 1)[1].split()
    assert listed == keys


def test_train_digits_runs_as_a_script() -> None:
    res = subprocess.run([sys.executable, str(EXAMPLES / "train_digits.py"), "--help"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "config keys of DigitsConfig" in res.stdout and "  steps=300\n" in res.stdout


@pytest.mark.parametrize("argv, error, match", [
    (["stpes=5"], ValueError, r"unknown config key 'stpes'.*did you mean 'steps'"),
    (["steps=0"], ValueError, r"steps=0"),
    (["steps=1.5"], TypeError, r"'steps'.*expects int"),
    (["threads=-1"], ValueError, r"threads=-1"),
])
def test_train_digits_rejects_bad_keys(argv: list[str], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _load("train_digits").main(argv)


def test_train_digits_rejects_the_old_flags(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        _load("train_digits").main(["--steps", "5"])
    assert exit_.value.code == 2 and "unrecognized arguments: --steps" in capsys.readouterr().err


def test_train_digits_writes_table_results_config_and_plot(tmp_path, capsys) -> None:
    mod = _load("train_digits")
    out = tmp_path / "run"
    res = mod.main(["steps=20", "seed=1", f"out={out}"])
    table = capsys.readouterr().out
    assert "| NeuralGraphOptimizer |" in table and "| Adam(lr=1e-3) |" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["steps"] == 20 and saved["seed"] == 1 and set(saved["results"]) == set(res)
    assert all(len(r["curve"]) == 20 for r in res.values())
    assert load_config(mod.DigitsConfig, out / "config.yaml") == mod.DigitsConfig(steps=20, seed=1, out=str(out))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_transformer_lm_trains_with_partial_graph() -> None:
    out = _load("transformer_lm").train(steps=60, quiet=True)
    assert out["last_loss"] < 0.7 * out["first_loss"]
    desc = out["description"]
    free = {r.name for r in desc.free}
    # the token embedding is on the graph (input neurons into the pinned residual stream); the position table is
    # read as a tensor (self.pos.weight), not called, so no rule sees an Embedding there
    assert free == {"pos.weight"} | {f"enc.layers.{i}.self_attn.in_proj_{k}" for i in range(2)
                                     for k in ("weight", "bias")}
    assert desc.built_by == "torch.fx" and desc.totals()["edge"][0] == 8


def test_lightning_module_with_scheduler_dict() -> None:
    pytest.importorskip("lightning")
    out = _load("lightning_digits").train(steps=60, quiet=True)
    assert out["optimizer"] == "NeuralGraphOptimizer" and out["steps"] == 60
    assert out["last_loss"] < 0.5 * out["first_loss"]
    assert out["lr_end"] < 0.01  # the cosine schedule stepped every step


def test_hf_trainer_tiny_bert() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = _load("hf_trainer_bert").train(steps=40, quiet=True, total_steps=40)  # as its main() does
    assert out["last_loss"] < 0.5 * out["first_loss"]
    assert out["test_accuracy"] > 0.9
    assert out["description"].totals()["edge"][0] >= 8  # dense layers of attention output, FFN, pooler, classifier
