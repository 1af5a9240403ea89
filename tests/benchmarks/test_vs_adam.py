"""Tests of ``benchmarks/vs_adam.py`` and ``benchmarks/suite``: the tiny suite end to end, the peers (present or
skipped), fair lr tuning, schedule-free's eval mode, warmup+cosine, summaries-only JSON, config errors."""

from __future__ import annotations

import gzip
import inspect
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from benchmarks import vs_adam
from benchmarks.suite import VsAdamConfig, peers, runner
from lopt_graphs.evaluation import train_run

ROOT = Path(__file__).resolve().parents[2]
TINY = ["suite=tiny", "steps=20", "long_steps=24,30", "seeds=0,1", "adam_lrs=1e-3,1e-2,3e-2", "smooth=5",
        "only=tiny_digits_mlp", "plot=false"]
SUMMARY = {"final_loss_mean", "final_loss_std", "final_loss_per_seed", "test_acc_mean", "test_acc_std", "ms_per_step",
           "lr", "label", "hyper"}
PEER_PKGS = ("prodigyopt", "dadaptation", "schedulefree")


def _load() -> ModuleType:
    return vs_adam


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One tiny-suite run shared by the tests that only read its outputs."""
    for pkg in PEER_PKGS:
        pytest.importorskip(pkg)
    out = tmp_path_factory.mktemp("tiny")
    return _load().main([*TINY, "plot=true", f"out={out}"]), out


def _longest_list(obj: Any) -> int:
    if isinstance(obj, dict):
        return max([0, *(_longest_list(v) for v in obj.values())])
    if isinstance(obj, list):
        return max([len(obj), *(_longest_list(v) for v in obj)])
    return 0


def test_tiny_suite_has_every_peer_and_summaries_only(tiny: tuple[dict[str, Any], Path]) -> None:
    returned, out = tiny
    doc = json.loads((out / "results.json").read_text())
    assert doc == json.loads(json.dumps(returned))
    assert doc["config"]["tune_seed"] == 1000 and doc["config"]["seeds"] == [0, 1]
    assert doc["machine"]["torch_threads"] == 1 and doc["skipped_optimizers"] == {}
    assert set(doc["peer_versions"]) == set(PEER_PKGS)
    ran = [t for t in doc["tasks"] if not t["skipped"]]
    assert [(t["name"], t["group"], t["steps"]) for t in ran] == [
        ("tiny_digits_mlp", "in_dist", 20), ("tiny_digits_mlp_elu", "ood", 20), ("long24_tiny_digits_mlp", "long", 24),
        ("long30_tiny_digits_mlp", "long", 30)]
    for t in ran:
        assert list(t["optimizers"]) == list(peers.PEERS)[:8]
        for name, o in t["optimizers"].items():
            assert SUMMARY <= set(o), name
            assert math.isfinite(o["final_loss_mean"]) and 0.0 <= o["test_acc_mean"] <= 1.0, (t["name"], name)
        o = t["optimizers"]
        assert o["adam"]["lr"] == 1e-3 and o["prodigy"]["lr"] == 1.0 and o["dadapt_adam"]["lr"] == 1.0
        assert o["sf_adamw"]["lr"] == 2.5e-3 and o["ngo"]["lr"] == 1.0
        assert math.isfinite(t["ngo_speedup_vs_tuned_adam"]["mean"])
    # no per-step curves in the JSON (the longest list is a grid or a seed list), they are in curves.json.gz
    assert _longest_list(doc) < 20 and all("curves" not in o for t in ran for o in t["optimizers"].values())
    curves = runner_read(out)
    assert set(curves) == {t["name"] for t in ran}
    for t in ran:
        per = curves[t["name"]]["optimizers"]
        assert set(per) == set(t["optimizers"]) and all(len(c) == t["steps"] for v in per.values() for c in v)
        assert len(per["adam"]) == 2
    md = (out / "results.md").read_text()
    for label in ("Prodigy", "D-Adaptation", "Schedule-free AdamW", "Adam warmup+cosine", "NGO", "Adam lr=1e-3"):
        assert label in md
    assert "chosen on seed 1000, which is not scored" in md and "- **long** (2 tasks)" in md
    assert ", told total_steps)" in md and doc["config"]["ngo_total_steps"] is True
    assert (out / "curves.png").stat().st_size > 1000


def runner_read(out: Path) -> dict[str, Any]:
    from benchmarks.suite import read_curves
    return read_curves(out / "curves.json.gz")


def test_tuned_lr_is_chosen_on_the_tuning_seed_and_scored_on_the_others(tiny: tuple[dict[str, Any], Path]) -> None:
    doc, _ = tiny
    for t in doc["tasks"]:
        if t["skipped"]:
            continue
        for name in ("adam_tuned", "adam_cosine_tuned", "sf_adamw_tuned"):
            o = t["optimizers"][name]
            crit = {g["lr"]: (math.inf if g["criterion"] is None else g["criterion"]) for g in o["grid"]}
            assert o["tune_seed"] == 1000 and o["scored_seeds"] == [0, 1]
            assert set(crit) == set(o["lr_grid"]) == {1e-3, 1e-2, 3e-2}
            assert crit[o["lr"]] == min(crit.values())  # best on the tuning seed
            assert all(len(g["final_loss_per_seed"]) == 1 for g in o["grid"])  # the grid ran on one seed
            assert len(o["final_loss_per_seed"]) == 2


def test_grid_runs_only_on_the_tuning_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []

    def fake_train_run(task, make_opt, steps, seed):  # records which seeds each optimizer ran on
        model = task.new_model(torch.Generator().manual_seed(0))
        made = make_opt(model)
        opt = made[0] if isinstance(made, tuple) else made
        calls.append((type(opt).__name__, opt.param_groups[0]["lr"], seed))
        # on the tuning seed the largest lr is best; on the scored seeds the smallest would be
        loss = -opt.param_groups[0]["lr"] if seed == 7 else opt.param_groups[0]["lr"]
        from lopt_graphs.evaluation import RunResult
        return RunResult([1.0] * steps, 1.0 + loss, 0.5, 1.0, 1.0, False, 1.0)

    monkeypatch.setattr(runner, "train_run", fake_train_run)
    doc = _load().main(["suite=tiny", "steps=5", "seeds=0,1", "tune_seed=7", "adam_lrs=1e-3,1e-2", "smooth=2",
                        "optimizers=ngo,adam_tuned", "only=tiny_digits_mlp_elu", "plot=false", f"out={tmp_path}"])
    (task,) = doc["tasks"]
    assert task["optimizers"]["adam_tuned"]["lr"] == 1e-2
    adam = [(lr, s) for name, lr, s in calls if name == "Adam"]
    assert adam == [(1e-3, 7), (1e-2, 7), (1e-2, 0), (1e-2, 1)]


def test_missing_peer_is_skipped_with_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import prodigyopt raises ImportError
    assert "pip install -e \".[bench]\"" in peers.missing("prodigy") and peers.missing("adam") is None
    doc = _load().main(["suite=tiny", "steps=5", "seeds=0", "adam_lrs=1e-3", "smooth=2", "only=tiny_digits_mlp_elu",
                        "optimizers=ngo,adam_tuned,prodigy", "plot=false", f"out={tmp_path}"])
    assert list(doc["skipped_optimizers"]) == ["prodigy"] and doc["optimizers_run"] == ["ngo", "adam_tuned"]
    assert set(doc["tasks"][0]["optimizers"]) == {"ngo", "adam_tuned"}
    printed = capsys.readouterr().out
    assert "skipped: Prodigy lr=1 needs prodigyopt, which is not installed" in printed
    assert "needs prodigyopt" in (tmp_path / "results.md").read_text()


def test_schedule_free_is_scored_in_eval_mode() -> None:
    schedulefree = pytest.importorskip("schedulefree")
    from meta_train.tasks.families import Task, TaskConfig

    task = Task(TaskConfig("digits", "mlp", (16,)))
    held: dict[str, Any] = {}

    def make(m: torch.nn.Module) -> torch.optim.Optimizer:
        held["model"], held["opt"] = m, schedulefree.AdamWScheduleFree(m.parameters(), lr=1e-2)
        return held["opt"]

    r = train_run(task, make, 30, seed=0)
    params = lambda: [p.detach().clone() for p in held["model"].parameters()]  # noqa: E731
    at_y = task.evaluate(params())["train_loss"]  # train_run left the optimizer in train mode (weights y)
    held["opt"].eval()
    at_x = task.evaluate(params())["train_loss"]
    assert r.final_loss == at_x and at_x != at_y


def test_muon_peer_orthogonalizes_matrices_and_runs_adam_on_the_rest() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 6))
    opt = peers.build("muon", 1e-2, 10, None)(model)
    assert [type(o).__name__ for o in opt.optimizers] == ["Muon", "Adam"]
    conv_w, conv_b, lin_w, lin_b = model.parameters()
    assert [p for g in opt.param_groups for p in g["params"]] == [lin_w, conv_w, conv_b, lin_b]
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(32, 1, 4, 4)).square().sum().backward()  # a full-rank 6 x 8 gradient
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    delta = [p.detach() - b for p, b in zip(model.parameters(), before)]
    # Adam's first step moves every entry by lr against its gradient's sign
    for d, g in ((delta[0], grads[0]), (delta[1], grads[1]), (delta[3], grads[3])):
        torch.testing.assert_close(d, -1e-2 * torch.sign(g), atol=1e-5, rtol=1e-3)
    # Muon's: an (approximately) orthogonalized gradient, its singular values close together, at Adam's RMS (0.2)
    sv = torch.linalg.svdvals(delta[2])
    assert sv.max() / sv.min() < 2 and torch.sum(delta[2] * grads[2]) < 0
    assert delta[2].square().mean().sqrt().item() == pytest.approx(0.2 * 1e-2, rel=0.35)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5)  # schedulers act on the inner groups
    assert {g["lr"] for o in opt.optimizers for g in o.param_groups} == {5e-3} and sched.last_epoch == 0
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    cfg = VsAdamConfig(warmup_fraction=0.1)
    opt2, sched2 = peers.build("muon_cosine", 1e-2, 10, cfg)(model)  # one warmup step, then a cosine to 0
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt2.param_groups])
        opt2.step()
        sched2.step()
    assert all(len(set(x)) == 1 for x in lrs)  # Muon's and Adam's groups follow the same schedule
    assert [x[0] for x in lrs] == pytest.approx([1e-2 * peers.warmup_cosine(10, 0.1)(k) for k in range(10)])
    again = peers.build("muon", 1e-2, 10, None)(model)
    again.load_state_dict(opt.state_dict())  # both inner states and the scheduled lr travel
    assert {g["lr"] for g in again.param_groups} == {5e-3} and len(again.optimizers[0].state) == 1


def test_muon_conv_peer_gives_kernels_muons_update_on_their_flattened_matrix() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 2), torch.nn.Flatten(), torch.nn.Linear(6 * 3 * 3, 4))
    opt = peers.build("muon_conv", 1e-2, 10, None)(model)
    assert [type(o).__name__ for o in opt.optimizers] == ["Muon", "FlatMuon", "Adam"]
    conv_w, conv_b, lin_w, lin_b = model.parameters()
    assert [p for g in opt.param_groups for p in g["params"]] == [lin_w, conv_w, conv_b, lin_b]
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(32, 2, 4, 4)).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    delta = [p.detach() - b for p, b in zip(model.parameters(), before)]
    k, gk = delta[0].reshape(6, 8), grads[0].reshape(6, 8)  # the kernel as its 6 x 8 matrix
    sv = torch.linalg.svdvals(k)
    assert sv.max() / sv.min() < 2 and torch.sum(k * gk) < 0
    # torch.optim.Muon's first step on that matrix: the same update (to bfloat16's precision, in which torch iterates)
    ref = torch.nn.Parameter(before[0].reshape(6, 8).clone())
    ref.grad = gk.clone()
    torch.optim.Muon([ref], lr=1e-2, weight_decay=0.0, adjust_lr_fn="match_rms_adamw").step()
    want = ref.detach() - before[0].reshape(6, 8)
    assert (k - want).norm() / want.norm() < 0.03
    torch.testing.assert_close(delta[1], -1e-2 * torch.sign(grads[1]), atol=1e-5, rtol=1e-3)  # bias: Adam
    with pytest.raises(ValueError, match="FlatMuon takes parameters of 2 or more dimensions"):
        peers.FlatMuon([conv_b], lr=1e-2)
    assert "flattened" in peers.hyper("muon_conv_cosine", VsAdamConfig())["muon"]


def test_warmup_cosine_and_ngo_total_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    f = peers.warmup_cosine(100, 0.05)  # 5 warmup steps, then cosine over 95
    assert [f(k) for k in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert f(5) == 1.0 and f(5 + 95 // 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 47 / 95)))
    assert f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 94 / 95))) and f(99) < 1e-3
    seen: list[dict[str, Any]] = []

    class WithTotal:
        def __init__(self, params, ckpt=None, *, lr=1.0, total_steps=None):
            pass

        @classmethod
        def for_module(cls, module, ckpt=None, **kw):
            seen.append(kw)

    class WithoutTotal(WithTotal):
        def __init__(self, params, ckpt=None, *, lr=1.0):
            pass

    cfg = SimpleCfg()
    monkeypatch.setattr(peers, "NeuralGraphOptimizer", WithTotal)
    assert "total_steps" in inspect.signature(WithTotal).parameters
    peers.build("ngo", 1.0, 3000, cfg)(torch.nn.Linear(2, 2))
    monkeypatch.setattr(peers, "NeuralGraphOptimizer", WithoutTotal)
    peers.build("ngo", 1.0, 3000, cfg)(torch.nn.Linear(2, 2))
    assert seen == [{"lr": 1.0, "compile": False, "total_steps": 3000}, {"lr": 1.0, "compile": False}]
    assert peers.hyper("ngo", cfg) == {"compile": False, "total_steps": False}  # WithoutTotal cannot be told
    monkeypatch.setattr(peers, "NeuralGraphOptimizer", WithTotal)
    untold = SimpleCfg()
    untold.ngo_total_steps = False  # what NeuralGraphOptimizer(params) without a horizon does
    peers.build("ngo", 1.0, 3000, untold)(torch.nn.Linear(2, 2))
    assert seen[-1] == {"lr": 1.0, "compile": False}
    assert peers.hyper("ngo", untold) == {"compile": False, "total_steps": False}
    assert peers.hyper("ngo", cfg) == {"compile": False, "total_steps": True}


class SimpleCfg:
    ngo_compile = False
    ngo_total_steps = True
    warmup_fraction = 0.05


def test_config_errors_and_shipped_configs(bench: ModuleType) -> None:
    from benchmarks.suite import VsAdamConfig, load, suite_tasks

    with pytest.raises(ValueError, match="unknown config key 'stepz'.*did you mean 'steps'"):
        load(None, ["stepz=3"])
    with pytest.raises(ValueError, match="unknown config key 'tune_on'"):
        load(None, ["tune_on=all_seeds"])
    with pytest.raises(ValueError, match="tune_seed=1: expected an integer >= 0 that is not a scored seed"):
        load(None, ["seeds=0,1,2", "tune_seed=1"])
    with pytest.raises(ValueError, match="optimizers"):
        load(None, ["optimizers=adam,adam_tuned"])
    with pytest.raises(ValueError, match="long_steps"):
        load(None, ["long_steps=1000,1000"])
    with pytest.raises(TypeError):
        load(None, ["steps=1.5"])
    with pytest.raises(SystemExit):
        bench.main(["--no-such-option"])
    default = load(ROOT / "configs" / "benchmarks" / "default.yaml")
    assert default == VsAdamConfig()  # the YAML spells out the defaults
    assert default.adam_lrs[0] == 1e-4 and default.adam_lrs[-1] == 1e-1 and default.long_steps == (1000, 3000)
    quick = load(ROOT / "configs" / "benchmarks" / "quick.yaml")
    assert quick.suite == "quick" and quick.out == "benchmarks/results/vs_adam_quick" and quick.seeds == (0, 1, 2)
    names = [s.name for s in suite_tasks("default")]
    assert len(names) == len(set(names))
    assert {s.group for s in suite_tasks("default")} == {"in_dist", "ood", "long", "paper"}


def test_empty_data_root_records_paper_tasks_skipped(bench: ModuleType, tmp_path: Path) -> None:
    empty = tmp_path / "no_data"
    empty.mkdir()
    doc = bench.main(["suite=tiny", "seeds=0", f"data_root={empty}", "only=tiny_fashion,tiny_mnist,tiny_cifar",
                      f"out={tmp_path / 'out'}"])
    assert [t["name"] for t in doc["tasks"]] == ["tiny_fashion_mnist_cnn", "tiny_mnist_mlp", "tiny_cifar10_cnn"]
    for t in doc["tasks"]:
        assert t["group"] == "paper" and t["skipped"] is True and t["optimizers"] == {}
        assert t["skip_reason"].startswith(f"skipped: {t['task_config']['dataset']} not found under {str(empty)!r}")
    assert "not found under" in (tmp_path / "out" / "results.md").read_text()


def test_paper_task_runs_when_the_dataset_loads(bench: ModuleType, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The torchvision path with a stand-in loader (random 28x28 images): exercises ``SplitsTask`` only."""
    from lopt_graphs.data import DatasetSplits

    gen = torch.Generator().manual_seed(0)
    loaded: list[tuple[str, int]] = []

    def fake_load(name: str, root: str, train_limit: int | None = None) -> DatasetSplits:
        loaded.append((name, train_limit))
        return DatasetSplits(torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen),
                             torch.rand(32, 1, 28, 28, generator=gen), torch.randint(0, 10, (32,), generator=gen),
                             name, (1, 28, 28), 10)

    monkeypatch.setattr(runner, "load_torchvision", fake_load)
    doc = bench.main(["suite=tiny", "steps=6", "seeds=0", "adam_lrs=1e-3", "smooth=2", "plot=false",
                      "optimizers=ngo,adam_tuned", f"data_root={tmp_path}", "only=tiny_mnist_mlp",
                      "paper_train_limit=64", f"out={tmp_path / 'o'}"])
    (task,) = doc["tasks"]
    assert loaded == [("mnist", 64)] and not task["skipped"] and task["group"] == "paper"
    assert math.isfinite(task["optimizers"]["ngo"]["final_loss_mean"])
    assert not (tmp_path / "o" / "curves.png").exists()


def test_report_rerenders_from_the_json_and_the_side_file(bench: ModuleType, tiny: tuple[dict[str, Any], Path],
                                                          tmp_path: Path) -> None:
    _, out = tiny
    for name in ("results.json", "curves.json.gz"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    bench.main(["--report", str(tmp_path / "results.json")])
    assert (tmp_path / "results.md").read_text() == (out / "results.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_bench_extra_lists_every_peer_package_and_dev_includes_it() -> None:
    import configparser

    extras = configparser.ConfigParser()
    extras.read(ROOT / "setup.cfg")
    bench = set(extras["options.extras_require"]["bench"].split())
    assert bench == {p.package for p in peers.PEERS.values() if p.package} == set(PEER_PKGS)
    assert bench <= set(extras["options.extras_require"]["dev"].split())


def test_table_cells_keep_small_losses_readable() -> None:
    from benchmarks.suite.report import fmt, fmt_speedup

    assert fmt(0.0331, 0.0052) == "0.033 ± 0.005" and fmt(0.00042, 0.0001) == "4.2e-04 ± 1.0e-04"
    assert fmt(0.9712, 0.0104, 1, 100.0) == "97.1 ± 1.0" and fmt(None, None) == "diverged"
    assert fmt_speedup({"mean": 0.95, "std": 0.09, "reached": [True, False, False]}) == "0.95× ± 0.09 (1/3)"


def test_merge_joins_parts_split_with_only_and_refuses_mismatched_parts(bench: ModuleType, tmp_path: Path) -> None:
    for pkg in PEER_PKGS:
        pytest.importorskip(pkg)
    common = [a for a in TINY if not a.startswith("only=")]
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    doc_a = bench.main([*common, "only=long", f"out={out_a}"])  # the part that ran second in the suite's order
    doc_b = bench.main([*common, "only=_elu", f"out={out_b}"])
    merged = bench.main(["--merge", str(out_a / "results.json"), str(out_b / "results.json"), f"out={tmp_path / 'm'}"])
    assert [t["group"] for t in merged["tasks"]] == ["ood", "long", "long"]
    assert merged["seconds"] == pytest.approx(doc_a["seconds"] + doc_b["seconds"])
    assert merged["config"]["only"] == ["long", "_elu"]
    md = (tmp_path / "m" / "results.md").read_text()
    assert "tiny_digits_mlp_elu" in md and "- **ood** (1 task)" in md and "- **long** (2 tasks)" in md
    assert "(summed over 2 runs merged with --merge" in md
    with gzip.open(tmp_path / "m" / "curves.json.gz") as fh:
        assert set(json.load(fh)) == {t["name"] for t in merged["tasks"]}
    with pytest.raises(ValueError, match=r"tasks \['long24_tiny_digits_mlp'"):
        bench.main(["--merge", str(out_a / "results.json"), str(out_a / "results.json"), f"out={tmp_path / 'x'}"])
    other = json.loads((out_b / "results.json").read_text())
    other["config"]["seeds"] = [5]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"\['seeds'\] differ"):
        bench.main(["--merge", str(out_a / "results.json"), str(tmp_path / "other.json"), f"out={tmp_path / 'x'}"])
    with pytest.raises(SystemExit):
        bench.main(["--merge", str(out_a / "results.json"), str(out_b / "results.json")])  # no out=DIR
