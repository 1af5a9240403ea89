"""End-to-end runs of ``meta_train/run.py``: exact resume (also after SIGKILL), torchrun, CLI errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

from meta_train.run import main  # noqa: E402

SMOKE = str(ROOT / "configs" / "meta_train" / "smoke.yaml")
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _theta(out: Path) -> torch.Tensor:
    sd = torch.load(out / "learned.pt", weights_only=True)["state_dict"]
    return torch.cat([v.reshape(-1) for v in sd.values()])


@pytest.mark.parametrize("estimator", ["es", "pes", "full_es", "tbptt"])
def test_resume_continues_exactly(tmp_path: Path, estimator: str):
    common = ["--config", SMOKE, f"estimator={estimator}", "wandb=false", "report=false"]
    a = main(common + ["outer_steps=4", f"out={tmp_path / 'a'}"])
    main(common + ["outer_steps=2", f"out={tmp_path / 'b'}"])
    b = main(common + ["outer_steps=4", f"out={tmp_path / 'b'}", f"resume={tmp_path / 'b' / 'ckpt.pt'}"])
    assert a.step == b.step == 4
    assert torch.equal(a.theta.detach(), b.theta.detach())
    assert torch.equal(_theta(tmp_path / "a"), _theta(tmp_path / "b"))
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (tmp_path / "a" / "config.yaml").exists()


def _run(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "meta_train" / "run.py"), *args], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path):
    common = ["--config", SMOKE, "estimator=pes", "outer_steps=10", "checkpoint_every=1", "report=false"]
    ref = _run(common + [f"out={tmp_path / 'ref'}"])
    killed = _run(common + [f"out={tmp_path / 'k'}"])
    metrics = tmp_path / "k" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "k" / "learned.pt").exists(), "the run finished before it was killed"
    resumed = _run(common + [f"out={tmp_path / 'k'}", f"resume={tmp_path / 'k' / 'ckpt.pt'}"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]
    assert torch.equal(_theta(tmp_path / "ref"), _theta(tmp_path / "k"))


@pytest.mark.parametrize("estimator", ["es", "pes", "full_es"])
def test_torchrun_two_processes_match_one(tmp_path: Path, estimator: str):
    common = ["--config", SMOKE, f"estimator={estimator}", "outer_steps=3", "report=false", "population=8"]
    one = _run(common + [f"out={tmp_path / 'one'}"])
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "meta_train" / "run.py"), *common, f"out={tmp_path / 'two'}"],
                         env=ENV, cwd=ROOT, capture_output=True, timeout=300)
    assert two.returncode == 0, two.stderr.decode()[-3000:]
    assert one.wait(timeout=300) == 0, one.stderr.read().decode()[-2000:]
    torch.testing.assert_close(_theta(tmp_path / "one"), _theta(tmp_path / "two"), rtol=0, atol=1e-6)
    if estimator != "es":  # member states live on their rank: one shard per rank
        assert (tmp_path / "two" / "ckpt.rank1.pt").exists()


def test_cli_rejects_unknown_keys_and_bad_types(tmp_path: Path):
    bad = subprocess.run([sys.executable, str(ROOT / "meta_train" / "run.py"), "outer_stepz=3"], env=ENV, cwd=ROOT,
                         capture_output=True, timeout=120)
    assert bad.returncode != 0 and b"outer_stepz" in bad.stderr
    with pytest.raises(TypeError, match="outer_steps"):
        main(["outer_steps=many", f"out={tmp_path}"])


def test_corrupt_checkpoint_is_refused(tmp_path: Path):
    ck = tmp_path / "ckpt.pt"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="ckpt.pt"):
        main(["--config", SMOKE, f"out={tmp_path}", f"resume={ck}", "wandb=false"])


def test_wandb_offline_run_writes_files(tmp_path: Path):
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_DISABLE_GIT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
           "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, str(ROOT / "meta_train" / "run.py"), "--config", SMOKE, "wandb=true",
                        "outer_steps=2", f"out={tmp_path / 'o'}"], env=env, cwd=ROOT, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    runs = list((tmp_path / "o" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_evaluate_reads_a_meta_training_checkpoint_in_progress(tmp_path: Path):
    from meta_train.evaluate import load_any
    main(["--config", SMOKE, "estimator=es", "wandb=false", "report=false", "outer_steps=2",
              f"out={tmp_path}"])
    from_run = load_any(str(tmp_path / "ckpt.pt"))  # the run's meta-parameters, as a learned update
    exported = load_any(str(tmp_path / "learned.pt"))
    for (n, a), (_, b) in zip(from_run.named_parameters(), exported.named_parameters()):
        assert torch.equal(a, b), n
    assert not torch.equal(from_run.w2, torch.zeros_like(from_run.w2))  # trained, not a fresh init
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    ck["theta"] = ck["theta"][:-1]
    torch.save(ck, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="meta-parameters"):
        load_any(str(tmp_path / "short.pt"))


def test_evaluate_records_threads_and_per_seed_summaries(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import json

    from meta_train.evaluate import main as evaluate_main
    before = torch.get_num_threads()
    res = evaluate_main(["ckpt=adam_init", "steps=12", "seeds=0,1", "threads=1", f"out={tmp_path / 'e.json'}"])
    assert torch.get_num_threads() == before  # restored
    assert res["threads"] == 1 and set(res["per_seed"]) == {"0", "1"}
    assert len(res["rows"]) == 16 and {r["seed"] for r in res["rows"]} == {0, 1}
    for k, s in res["per_seed"].items():
        held = [r for r in res["rows"] if r["seed"] == int(k) and r["group"] == "held_out"]
        assert s["held_out_tasks"] == 4
        assert s["held_out_beats_tuned_adam"] == sum(r["ngo_final_loss"] < r["adam_final_loss"] for r in held)
    assert json.loads((tmp_path / "e.json").read_text())["per_seed"] == res["per_seed"]
    assert "Per seed: seed 0:" in (tmp_path / "e.md").read_text()
    assert "8/8" in capsys.readouterr().err  # a progress bar over the 4 in-distribution and 4 held-out tasks
    with pytest.raises(ValueError, match="threads=-1"):
        evaluate_main(["ckpt=adam_init", "threads=-1"])


def test_the_report_shows_validation_and_scores_best_pt_beside_learned_pt(tmp_path: Path):
    import json

    from meta_train.report import read_metrics

    # outer_lr 0.1 overshoots on the second step (measured validation 0.299, 0.131, 0.443): best.pt is step 1
    main(["--config", SMOKE, "wandb=false", "report=true", "outer_steps=2", "validate_every=1", "validate_steps=10",
          "report_steps=10", "outer_lr=0.1", f"out={tmp_path}"])
    vals = [(r["step"], r["val_score"]) for r in read_metrics(tmp_path / "metrics.jsonl") if "val_score" in r]
    assert [s for s, _ in vals] == [0, 1, 2]  # the start is scored too
    best_step, best = min(vals, key=lambda x: (x[1], x[0]))
    text = (tmp_path / "report.md").read_text()
    assert "## Validation" in text and "| outer step | 0 | 1 | 2 |" in text
    assert f"- `best.pt`: outer step {best_step}, validation {best:.3f}" in text
    assert torch.load(tmp_path / "best.pt", weights_only=False)["meta"]["validation"]["score"] == pytest.approx(best)
    assert best_step == 1
    assert "### `learned.pt` (the last outer step)" in text and "### `best.pt` (the outer step best" in text
    last, chosen = (json.loads((tmp_path / n).read_text()) for n in ("eval.json", "eval_best.json"))
    assert set(last) == set(chosen) and len(last) == 2  # one in-distribution and one held-out task each
    assert [r["ngo_final_loss"] for r in last.values()] != [r["ngo_final_loss"] for r in chosen.values()]
    assert [r["adam_final_loss"] for r in last.values()] == [r["adam_final_loss"] for r in chosen.values()]
