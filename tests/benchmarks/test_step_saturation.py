"""Tests of ``benchmarks.step_saturation``: the fractions at each bound and the median of the log step, read
through the optimizer's public diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import step_saturation as mod
from meta_train.derive import derive


def test_fractions_at_each_bound_follow_the_log_step(tmp_path: Path):
    # adam_init's head outputs u = 0 everywhere; the affine map u -> 1e-6 u + shift makes u = shift
    derive("adam_init", tmp_path / "up.pt", 3.0, (1e-6, 5.0))
    derive("adam_init", tmp_path / "down.pt", 3.0, (1e-6, -4.0))
    derive("adam_init", tmp_path / "inside.pt", 3.0, (1e-6, 1.5))
    ckpts = ",".join(str(tmp_path / f"{n}.pt") for n in ("up", "down", "inside"))
    res = mod.main([f"ckpts={ckpts}", "steps=10", f"out={tmp_path / 's.json'}"])
    by = {}
    for r in res["rows"]:
        by.setdefault(Path(r["ckpt"]).stem, []).append(r)
    assert all(len(v) == 8 for v in by.values())
    for name, up, lo, med in (("up", 1.0, 0.0, 5.0), ("down", 0.0, 1.0, -4.0), ("inside", 0.0, 0.0, 1.5)):
        for r in by[name]:
            for w in ("first", "middle", "last"):
                assert r[f"at_upper_{w}"] == up and r[f"at_lower_{w}"] == lo, (name, r["task"])
                assert r[f"median_u_{w}"] == pytest.approx(med, abs=1e-3)
                assert r[f"sigma_at_bound_{w}"] is None  # v1: no per-tensor log step
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == res["rows"]
    assert "u >= mag_clip" in (tmp_path / "s.md").read_text()
    with pytest.raises(ValueError, match="steps=3"):
        mod.main(["ckpts=adam_init", "steps=3", f"out={tmp_path / 'x.json'}"])
