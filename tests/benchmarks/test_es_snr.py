"""Tests of ``benchmarks.es_snr``: the statistics recover a known signal and noise, the pairs it trains are
antithetic around the checkpoint, and bad keys raise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import es_snr as mod


def test_the_statistics_recover_a_known_signal_and_noise():
    gen = torch.Generator().manual_seed(0)
    g, noise = torch.full((50,), 0.2), 1.0  # |g|^2 = 2, per-pair tr(C) = 50
    grads = [[g + noise * torch.randn(50, generator=gen) for _ in range(20)] for _ in range(40)]
    s = mod.snr_stats(grads)
    assert (s["tasks"], s["pairs"], s["dim"]) == (40, 800, 50)
    assert s["signal_sq"] == pytest.approx(2.0, rel=0.2)
    assert s["noise_per_pair"] == pytest.approx(50.0, rel=0.1)
    assert s["pairs_for_snr_1"] == pytest.approx(25.0, rel=0.25)
    assert s["task_signal_sq"] == pytest.approx(2.0, abs=1.0)  # every task shares g here
    assert 0 < s["signal_sq_se"] < 1.0 and s["pairs_for_snr_1_at_least"] < s["pairs_for_snr_1"]
    assert s["cosine_halves"] > 0.8  # 400 pairs a half against N* = 25
    pure_noise = [[torch.randn(50, generator=gen) for _ in range(2)] for _ in range(10)]
    s = mod.snr_stats(pure_noise)
    assert abs(s["signal_sq"]) < 0.05 * s["noise_per_pair"]  # no signal: what is left is sampling error
    assert s["pairs_for_snr_1"] > 20 and abs(s["cosine_halves"]) < 0.6
    assert abs(s["signal_sq"]) < 3 * s["signal_sq_se"]  # unresolved, and the error says so
    two = mod.snr_stats(grads[:2])  # no jackknife over 2 tasks: no bound either, rather than an infinite one
    assert math.isnan(two["signal_sq_se"]) and math.isnan(two["pairs_for_snr_1_at_least"])
    with pytest.raises(ValueError, match="2 tasks"):
        mod.snr_stats([[g]])


def test_pairs_are_antithetic_around_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen = []

    def fake_values(learned, tasks, steps, seed, told=True):  # f = the first perturbed meta-parameter
        seen.append((tasks[0].name, seed, steps))
        return [float(learned.lr_readout.weight[0, 0].detach())]

    monkeypatch.setattr(mod, "family_values", fake_values)
    out = tmp_path / "s.json"
    doc = mod.main(["ckpt=default", "meta_params=step_size", "sigma=0.01", "tasks=3", "pairs=2", "steps=7",
                    f"out={out}"])
    assert len(doc["rows"]) == 6 and len(seen) == 12
    assert [s[1] for s in seen[::4]] == [0, 1, 2] and all(s[2] == 7 for s in seen)  # one seed per task, told steps
    base = float(mod.load_any("default").lr_readout.weight[0, 0].detach())
    for r in doc["rows"]:  # f+ and f- sit symmetrically around the checkpoint's value
        assert (r["f_plus"] + r["f_minus"]) / 2 == pytest.approx(base, abs=1e-6)
        assert r["f_plus"] != r["f_minus"]
    assert doc["stats"]["dim"] == mod.ThetaSpace(mod.load_any("default"), mod.META_PARAMS["step_size"]).dim
    assert json.loads(out.read_text())["stats"]["pairs"] == 6
    assert "| signal" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("bad, match", [("sigma=0", "sigma"), ("sigma=nan", "sigma"), ("tasks=1", "tasks"),
                                        ("pairs=0", "pairs"), ("meta_params=nope", "meta_params"),
                                        ("family=nope", "family")])
def test_bad_keys_raise(bad: str, match: str, tmp_path: Path):
    with pytest.raises(ValueError, match=match):
        mod.main([bad, f"out={tmp_path / 'x.json'}"])
