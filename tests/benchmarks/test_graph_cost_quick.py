"""Smoke test of ``lopt-graph-cost quick=true`` (fields only, no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from benchmarks import graph_cost


def _load() -> ModuleType:
    return graph_cost


def test_quick_run_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    out = tmp_path / "nested" / "graph_cost.json"
    threads = torch.get_num_threads()
    try:  # one thread: no spin-waiting when the 2 cores are shared
        returned = bench.main(["quick=true", f"out={out}", "reps=2", "threads=1"])
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(out.read_text())
    assert doc == json.loads(json.dumps(returned))
    assert not list(out.parent.glob("*.tmp"))
    assert doc["quick"] is True and doc["reps"] == 2 and doc["features"] == 8
    assert isinstance(doc["torch_version"], str) and doc["torch_version"]
    assert {"processor", "cpu_count", "torch_num_threads"} <= set(doc["machine"])
    assert doc["machine"]["torch_num_threads"] == 1
    assert isinstance(doc["date"], str) and doc["date"][:2] == "20"
    cfg = doc["encoder_config"]
    assert (cfg["variant"], cfg["node_in"], cfg["edge_in"], cfg["edge_out"], cfg["node_out"]) == ("gnn", 8, 8, 2, 2)

    rows = doc["results"]
    assert len(rows) == 2  # the two smallest models only
    sizes = sorted(sum(p.numel() for p in d.make().parameters()) for d in bench.MODELS)
    assert sorted(r["params"] for r in rows) == sizes[:2]
    for r in rows:
        for key in ("build_ms", "fill_ms", "encoder_ms", "adam_ms", "build_over_adam", "encoder_over_adam"):
            assert isinstance(r[key], float) and r[key] > 0, key
        assert r["build_over_adam"] == pytest.approx(r["build_ms"] / r["adam_ms"])
        assert r["encoder_over_adam"] == pytest.approx(r["encoder_ms"] / r["adam_ms"])
        assert r["nodes"] > 0 and r["edges"] > 0 and r["kmax"] >= 1
        assert all(len(v) == 2 for v in r["samples_ms"].values())

    table = capsys.readouterr().out
    header = ("| model | params | nodes | edges | build ms | fill ms | encoder ms | adam step ms | build/adam "
              "| encoder/adam |")
    assert header in table
    assert all(r["model"] in table for r in rows)


def test_full_model_list_spans_3k_to_1m() -> None:
    bench = _load()
    sizes = {d.name: sum(p.numel() for p in d.make().parameters()) for d in bench.MODELS}
    for family in ("mlp", "cnn"):
        fam = [sizes[d.name] for d in bench.MODELS if d.family == family]
        assert min(fam) < 5_000 and 900_000 < max(fam) < 1_500_000, (family, fam)
