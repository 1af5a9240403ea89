"""benchmarks/suite_compare.py: merging split suite runs and counting who is ahead."""

from __future__ import annotations

import json

import pytest

from benchmarks.suite_compare import load_runs, main, scorecard


def _task(name: str, group: str, losses: dict[str, float]) -> dict:
    return {"name": name, "group": group, "skipped": False,
            "optimizers": {k: {"final_loss_mean": v} for k, v in losses.items()}}


def _write(path, ckpt: str, sha: str, tasks: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ckpt": {"arg": ckpt, "sha256": sha}, "tasks": tasks}))
    return str(path)


PEERS = {"adam": 1.0, "adam_tuned": 0.1, "prodigy": 0.3, "dadapt_adam": 2.0, "sf_adamw": 0.5}


def test_split_runs_merge_and_counts(tmp_path):
    a1 = _write(tmp_path / "a1" / "results.json", "v2x", "h1", [_task("t1", "in_dist", {"ngo": 0.2, **PEERS})])
    a2 = _write(tmp_path / "a2" / "results.json", "v2x", "h1",
                [_task("t2", "long", {"ngo": 0.05, **PEERS}), {"name": "p", "skipped": True}])
    b = _write(tmp_path / "b" / "results.json", "", "h0",
               [_task("t1", "in_dist", {"ngo": 0.4, **PEERS}), _task("t2", "long", {"ngo": 2.0, **PEERS})])
    runs = load_runs([a1, a2, b])
    assert set(runs) == {"v2x", "default"} and set(runs["v2x"]) == {"t1", "t2"}
    card = scorecard(runs)
    s, d = card["summary"]["v2x"], card["summary"]["default"]
    assert (s["ahead_of_adam_1e-3"], s["ahead_of_tuned_adam"], s["ahead_of_every_tuning_free"]) == (2, 1, 2)
    assert (d["ahead_of_adam_1e-3"], d["ahead_of_tuned_adam"], d["ahead_of_every_tuning_free"]) == (1, 0, 0)
    # a long run "trains" when its final loss is below half the uniform-prediction loss ln(10) / 2 = 1.15
    assert (s["long_tasks"], s["long_tasks_trained"], d["long_tasks_trained"]) == (1, 1, 0)


def test_a_run_without_total_steps_is_its_own_column(tmp_path):
    told = _write(tmp_path / "a" / "results.json", "x", "h", [_task("t1", "in_dist", {"ngo": 0.2, **PEERS})])
    untold = tmp_path / "b" / "results.json"
    _write(untold, "x", "h", [_task("t1", "in_dist", {"ngo": 0.05, **PEERS})])
    doc = json.loads(untold.read_text())
    untold.write_text(json.dumps({**doc, "config": {"ngo_total_steps": False}}))
    runs = load_runs([told, str(untold)])
    assert runs["x"]["t1"]["optimizers"]["ngo"]["final_loss_mean"] == 0.2
    assert runs["x (no total_steps)"]["t1"]["optimizers"]["ngo"]["final_loss_mean"] == 0.05


def test_errors(tmp_path):
    a = _write(tmp_path / "a" / "results.json", "x", "h", [_task("t1", "in_dist", {"ngo": 0.2, **PEERS})])
    with pytest.raises(ValueError, match="already in an earlier file"):
        load_runs([a, a])
    other = _write(tmp_path / "o" / "results.json", "x", "h2", [_task("t2", "in_dist", {"ngo": 0.2, **PEERS})])
    with pytest.raises(ValueError, match="another file hash"):
        load_runs([a, other])
    with pytest.raises(FileNotFoundError, match="No suite results"):
        load_runs([tmp_path / "missing.json"])
    with pytest.raises(ValueError, match="results="):
        main([])
