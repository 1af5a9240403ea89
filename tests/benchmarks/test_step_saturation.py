"""Tests of ``benchmarks/step_saturation.py``: the fractions at each bound and the median of the log step."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "step_saturation.py"


def _load():
    spec = importlib.util.spec_from_file_location("step_saturation_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))
    spec.loader.exec_module(mod)
    return mod


def test_fractions_at_each_bound_follow_the_log_step(tmp_path: Path):
    from meta_train.derive import derive
    mod = _load()
    # adam_init's head outputs u = 0 everywhere; the affine map u -> 1e-6 u + shift makes u = shift
    derive("adam_init", tmp_path / "up.pt", 3.0, (1e-6, 5.0))
    derive("adam_init", tmp_path / "down.pt", 3.0, (1e-6, -4.0))
    derive("adam_init", tmp_path / "inside.pt", 3.0, (1e-6, 1.5))
    res = mod.main(["--ckpt", str(tmp_path / "up.pt"), str(tmp_path / "down.pt"), str(tmp_path / "inside.pt"),
                    "--steps", "10", "--out", str(tmp_path / "s.json")])
    by = {}
    for r in res["rows"]:
        by.setdefault(Path(r["ckpt"]).stem, []).append(r)
    assert all(len(v) == 8 for v in by.values())
    for name, up, lo, med in (("up", 1.0, 0.0, 5.0), ("down", 0.0, 1.0, -4.0), ("inside", 0.0, 0.0, 1.5)):
        for r in by[name]:
            for w in ("first", "middle", "last"):
                assert r[f"at_upper_{w}"] == up and r[f"at_lower_{w}"] == lo, (name, r["task"])
                assert r[f"median_u_{w}"] == pytest.approx(med, abs=1e-3)
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == res["rows"]
    assert "u >= mag_clip" in (tmp_path / "s.md").read_text()
    with pytest.raises(ValueError, match="--steps: 3"):
        mod.main(["--ckpt", "adam_init", "--steps", "3", "--out", str(tmp_path / "x.json")])
