"""benchmarks/headroom.py: the issue-13 targets scored for every optimizer of a suite run."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.headroom import BEST_TUNED, best_per_task, headroom, main
from benchmarks.suite.report import write_curves
from meta_train.tasks import HELD_OUT, IN_DISTRIBUTION

STEPS = 300


def _curve(reach_at: int | None) -> list[float]:
    """1.0 until ``reach_at`` (1-based, of the 10-step smoothed curve), then 0.0; never below 0.5 if ``None``."""
    if reach_at is None:
        return [1.0] * STEPS
    # the smoothed curve is <= 0.5 once at least 5 of the last 10 values are 0
    return [1.0] * (reach_at - 5) + [0.0] * (STEPS - reach_at + 5)


def _suite(tmp_path, name: str, with_curves: bool, ngo_final: float, ngo_reach: int | None,
           muon_reach: int | None = None) -> str:
    """A suite run over IN_DISTRIBUTION + HELD_OUT: tuned Adam's smoothed loss ends at 0.5;
    ``adam_cosine_tuned`` reaches that at step 150 on seeds 0-1 and never on seed 2; NGO at ``ngo_reach``."""
    tasks, curves = [], {}
    for i, cfg in enumerate((*IN_DISTRIBUTION, *HELD_OUT)):
        tname = f"t{i}"
        adam = [[1.0] * (STEPS - 10) + [0.5] * 10 for _ in range(3)]  # smoothed final 0.5
        cos = [_curve(150), _curve(150), _curve(None)]
        ngo = [_curve(ngo_reach)] * 3
        fl = lambda v: {"final_loss_per_seed": [v] * 3, "final_loss_mean": v}  # noqa: E731
        tasks.append({"name": tname, "group": "x", "skipped": False, "steps": STEPS, "task_config": cfg.to_dict(),
                      "optimizers": {"adam_tuned": {**fl(1.0), "scored_seeds": [0, 1, 2]},
                                     "adam_cosine_tuned": fl(0.5), "ngo": fl(ngo_final)},
                      "ngo_speedup_vs_tuned_adam": {"reached": [ngo_reach is not None] * 3,
                                                    "ngo_steps": [ngo_reach] * 3}})
        curves[tname] = {"steps": STEPS, "optimizers": {"adam_tuned": adam, "adam_cosine_tuned": cos, "ngo": ngo}}
        if muon_reach is not None:  # a peer only this run has
            tasks[-1]["optimizers"]["muon_tuned"] = fl(0.4)
            curves[tname]["optimizers"]["muon_tuned"] = [_curve(muon_reach)] * 3
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"ckpt": {"arg": name, "sha256": name}, "tasks": tasks}))
    if with_curves:
        write_curves(d / "curves.json.gz", curves)
    return str(d / "results.json")


def test_fractions_and_counts(tmp_path):
    a = _suite(tmp_path, "a", True, ngo_final=2.0, ngo_reach=None)
    b = _suite(tmp_path, "b", False, ngo_final=0.9, ngo_reach=60)  # no curves: NGO from its speed-up record
    doc = headroom([a, b])
    cols = doc["columns"]
    assert list(cols) == ["adam_tuned", "adam_cosine_tuned", BEST_TUNED, "ngo: a", "ngo: b"]
    best = cols[BEST_TUNED]  # warmup+cosine is faster on every in-dist task and lower on every held-out one
    assert set(best["chosen"].values()) == {"adam_cosine_tuned"} and len(best["chosen"]) == 8
    assert best["summary"] == cols["adam_cosine_tuned"]["summary"]
    cos = cols["adam_cosine_tuned"]
    assert [r["fraction"] for r in cos["in_dist"]["t0"]] == [150 / STEPS, 150 / STEPS, math.inf]
    s = cos["summary"]
    assert s["median_fraction_in_dist"] == pytest.approx(150 / STEPS)  # 8 of 12 runs at 150/300, 4 never
    assert (s["in_dist_runs"], s["in_dist_runs_reached"]) == (12, 8)
    assert (s["held_out_runs_at_or_below_tuned_adam"], s["held_out_tasks_at_or_below_tuned_adam_by_mean"]) == (12, 4)
    sa, sb = cols["ngo: a"]["summary"], cols["ngo: b"]["summary"]
    assert math.isinf(sa["median_fraction_in_dist"]) and sa["held_out_runs_at_or_below_tuned_adam"] == 0
    assert sb["median_fraction_in_dist"] == pytest.approx(60 / STEPS) and sb["held_out_tasks"] == 4
    assert sb["held_out_runs_at_or_below_tuned_adam"] == 12


def test_each_peer_comes_from_the_first_run_that_has_it(tmp_path):
    a = _suite(tmp_path, "a", True, ngo_final=2.0, ngo_reach=None)
    c = _suite(tmp_path, "c", True, ngo_final=0.9, ngo_reach=60, muon_reach=90)
    main([f"results={a},{c}", f"out={tmp_path / 'out'}"])
    doc = json.loads((tmp_path / "out" / "headroom.json").read_text())
    assert list(doc["columns"]) == ["adam_tuned", "adam_cosine_tuned", "muon_tuned", BEST_TUNED, "ngo: a", "ngo: c"]
    # per task the fastest: Muon (90 steps) in-distribution; on held-out tasks the lowest mean final loss (Muon 0.4)
    assert set(doc["columns"][BEST_TUNED]["chosen"].values()) == {"muon_tuned"}
    assert doc["peer_sources"] == {"adam_tuned": a, "adam_cosine_tuned": a, "muon_tuned": c}
    assert doc["columns"]["muon_tuned"]["summary"]["median_fraction_in_dist"] == pytest.approx(90 / STEPS)
    assert f"(muon_tuned from `{c}`)" in (tmp_path / "out" / "headroom.md").read_text()


def test_writes_strict_json_and_table(tmp_path):
    a = _suite(tmp_path, "a", True, ngo_final=2.0, ngo_reach=None)
    main([f"results={a}", f"out={tmp_path / 'out'}"])
    doc = json.loads((tmp_path / "out" / "headroom.json").read_text())  # not reached: null, not Infinity
    assert doc["columns"]["ngo: a"]["summary"]["median_fraction_in_dist"] is None
    assert "| adam_cosine_tuned | tuned | 0.50 | 8/12 | 12/12 | 4/4 |" in (tmp_path / "out" / "headroom.md").read_text()


def test_errors(tmp_path):
    b = _suite(tmp_path, "b", False, ngo_final=0.9, ngo_reach=60)
    with pytest.raises(ValueError, match="curves.json.gz"):
        headroom([b])
    a = _suite(tmp_path, "a", True, ngo_final=2.0, ngo_reach=None)
    doc = json.loads(open(a).read())
    json.dump({**doc, "tasks": doc["tasks"][:3]}, open(a, "w"))
    with pytest.raises(ValueError, match="3 of 4 in-distribution"):
        headroom([a])
    with pytest.raises(ValueError, match="results"):
        main([])


def test_best_per_task_picks_per_task_and_never_a_diverged_run():
    def run(f, final):
        return {"fraction": f, "final_loss": final, "adam_tuned_final_loss": 1.0,
                "at_or_below_tuned_adam": math.isfinite(final) and final <= 1.0}

    x = {"kind": "tuned", "in_dist": {"A": [run(0.3, 1), run(0.4, 1)], "B": [run(0.9, 1), run(math.inf, 1)]},
         "held_out": {"H": [run(1, 0.1), run(1, math.inf)]}}
    y = {"kind": "tuned", "in_dist": {"A": [run(0.6, 1), run(0.6, 1)], "B": [run(0.5, 1), run(0.7, 1)]},
         "held_out": {"H": [run(1, 0.9), run(1, 0.9)]}}
    best = best_per_task({"x": x, "y": y})
    assert best["chosen"] == {"A": "x", "B": "y", "H": "y"}  # x diverged on one held-out seed
    assert best["summary"]["median_fraction_in_dist"] == pytest.approx(0.45)  # of 0.3, 0.4, 0.5, 0.7
    assert best["summary"]["held_out_runs_at_or_below_tuned_adam"] == 2
