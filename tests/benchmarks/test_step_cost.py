"""``lopt-step-cost``: its typed command line, and smoke runs of both modes (fields only, no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import step_cost
from lopt_graphs.config import field_names


def test_help_lists_every_key_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        step_cost.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for key in field_names(step_cost.StepCostConfig):
        assert f"  {key}=" in out, key
    for line in ("loops=false", "loop_steps=400", "ckpts=default", "threads=1", "compile=true"):
        assert f"  {line}\n" in out


@pytest.mark.parametrize("argv, error, match", [
    (["loop_step=3"], ValueError, "unknown config key 'loop_step'.*did you mean 'loop_steps'"),
    (["--steps", "3"], SystemExit, None),  # the old argparse flags are gone
    (["loops=yes please"], TypeError, "true/false"),
    (["models=resnet50"], ValueError, "models="),
    (["chunk=0"], ValueError, "chunk=0"),
    (["ckpts="], ValueError, "ckpts="),
    (["peers=sgd"], ValueError, "peers="),
    (["orthogonal_dtypes=float16"], ValueError, "orthogonal_dtypes="),
])
def test_bad_command_lines_raise(argv, error, match, capsys) -> None:
    with pytest.raises(error, match=match):
        step_cost.main(argv)


def test_quick_per_step_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sc.json"
    res = step_cost.main(["quick=true", "compile=false", f"out={out}"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    (row,) = res["rows"]
    assert row["model"] == "mlp_digits_64-64-10" and set(row) >= {"adam", "ngo"} and "ngo_compiled" not in row
    assert row["ngo"]["step_ratio"] == pytest.approx(row["ngo"]["step_ms"] / row["adam"]["step_ms"])
    assert res["machine"]["torch_threads"] == 1
    assert "| mlp_digits_64-64-10 | 4,810 | ngo |" in capsys.readouterr().out


def test_loops_rows_per_checkpoint_and_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loops.json"
    base = ["loops=true", "loop_steps=3", "chunk=2", "models=mlp_784-256-256-10", f"out={out}"]
    res = step_cost.main(base + ["ckpts=default,adam_init"])
    assert [(r["model"], r["ckpt"]) for r in res["rows"]] == [("mlp_784-256-256-10", "default"),
                                                             ("mlp_784-256-256-10", "adam_init")]
    for r in res["rows"]:
        assert r["steps"] == 3 and r["graph"]["edges"] == 268_800 and len(r["load_average_1min"]) == 2
        assert r["ratio"] == pytest.approx((r["ngo"]["loop_s"] + r["ngo"]["build_s"]) / r["adam"]["loop_s"])
    assert res["rows"][0]["adam"] == res["rows"][1]["adam"]  # one Adam loop, interleaved with both
    table = capsys.readouterr().out
    assert "| mlp_784-256-256-10 | default | 269,322 | 1,306 / 268,800 / 0 | 3 |" in table and "<= 2x" in table
    first = json.loads(out.read_text())["rows"]
    again = step_cost.main(base + ["ckpts=adam_init", "merge=true"])["rows"]
    assert [(r["model"], r["ckpt"]) for r in again] == [("mlp_784-256-256-10", "adam_init"),
                                                        ("mlp_784-256-256-10", "default")]
    assert again[1] == first[0]  # the default row kept from the file (merged rows sorted by model, checkpoint)
    assert json.loads(out.read_text())["rows"] == again


def test_a_peer_loop_is_a_row_against_the_same_adam_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loops.json"
    res = step_cost.main(["loops=true", "loop_steps=3", "chunk=2", "models=mlp_784-256-256-10", "peers=muon",
                          f"out={out}"])
    ngo, muon = res["rows"]
    assert (ngo["ckpt"], muon["ckpt"]) == ("default", "peer:muon") and "graph" not in muon
    assert muon["adam"] == ngo["adam"] and muon["ratio"] == pytest.approx(
        (muon["ngo"]["loop_s"] + muon["ngo"]["build_s"]) / muon["adam"]["loop_s"])
    assert muon["ngo"]["final_loss"] < 2.5  # it trained (3 steps from ~2.3)
    table = capsys.readouterr().out
    assert "| mlp_784-256-256-10 | peer:muon | 269,322 | - | 3 |" in table
    assert table.count("<= 2x") == 1  # issue 15's target is the learned optimizer's, not a peer's


def test_orthogonal_dtypes_add_a_loop_per_checkpoint_and_dtype(tmp_path: Path) -> None:
    res = step_cost.main(["loops=true", "loop_steps=3", "chunk=2", "models=mlp_784-256-256-10",
                          "orthogonal_dtypes=bfloat16", f"out={tmp_path / 'loops.json'}"])
    full, half = res["rows"]
    assert (full["ckpt"], half["ckpt"]) == ("default", "default@bfloat16") and full["adam"] == half["adam"]
    assert half["ngo"]["final_loss"] < 2.5 and half["ngo"]["final_loss"] != full["ngo"]["final_loss"]
