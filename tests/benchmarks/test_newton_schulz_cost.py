"""``benchmarks/newton_schulz_cost.py``: its rows and its key checks (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from benchmarks import newton_schulz_cost


def test_rows_and_json(tmp_path, capsys):
    out = tmp_path / "ns.json"
    doc = newton_schulz_cost.main(["shapes=8x12,5x5", "reps=2", f"out={out}"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert [r["shape"] for r in doc["rows"]] == [[8, 12], [5, 5]]
    for r in doc["rows"]:
        assert set(r["ms"]) == {"float32", "bfloat16", "muon_step", "adam_step"}
        assert r["ratio_to_adam"]["adam_step"] == pytest.approx(1.0)
        assert 0.0 < r["bf16_rel_diff"] < 0.2  # bfloat16 moves it, a little
    printed = capsys.readouterr().out
    assert "| 8x12 |" in printed and f"picks {doc['auto_orthogonal_dtype']} on this CPU" in printed
    assert doc["auto_orthogonal_dtype"] in ("torch.float32", "torch.bfloat16")


def test_the_isa_limit_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    doc = newton_schulz_cost.main(["shapes=4x6", "reps=1", f"out={tmp_path / 'ns.json'}"])
    assert doc["onednn_max_cpu_isa"] == "AVX2"


@pytest.mark.parametrize("argv, match", [(["shapes=256"], "shapes="), (["shapes=0x4"], "shapes="),
                                         (["reps=0"], "reps=0")])
def test_bad_keys_raise(argv, match):
    with pytest.raises(ValueError, match=match):
        newton_schulz_cost.main(argv)
