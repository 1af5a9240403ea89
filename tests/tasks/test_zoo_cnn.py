"""CNN zoos and accuracy prediction from weights (lopt_graphs.tasks.cnn_zoo)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lopt_graphs.graph import graph_from_module
from lopt_graphs.tasks.cnn_zoo import CNNArch, ZooCNN, ZooTaskConfig, batched_forward, build_zoo, load_task_config
from lopt_graphs.tasks.cnn_zoo.predict import AccuracyPredictor, checkpoint_graph, kendall_tau, run_task
from lopt_graphs.tasks.cnn_zoo.zoo import load_or_build_zoo, load_tensors, sample_archs, zoo_cache_path

QUICK = Path(__file__).resolve().parents[2] / "configs" / "tasks" / "zoo_quick.yaml"

SMALL = CNNArch(1, 10, (16, 16, 16), (3, 3, 3), (1, 2, 2), (False, False, False))
#: residual blocks of both kernel sizes, a stride-2 conv between them
RESIDUAL = CNNArch(1, 10, (6, 6, 5, 5), (5, 3, 3, 5), (1, 1, 2, 1), (False, True, False, True))


def _randomize(m: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return m


def test_zoo_is_deterministic_and_cached(tmp_path):
    cfg = load_task_config(QUICK, ["num_runs=5", "epochs=1", "batch_size=128", "kind=variant", "num_archs=2", f"cache_dir={tmp_path}"])
    a, b = build_zoo(cfg), build_zoo(cfg)
    assert a.num_runs == b.num_runs == 5 and a.num_checkpoints == 3
    assert torch.equal(a.test_acc, b.test_acc) and torch.equal(a.split, b.split)
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params))
    assert a.activation == b.activation and a.archs == b.archs
    z1, path, cached1 = load_or_build_zoo(cfg)
    z2, path2, cached2 = load_or_build_zoo(cfg)
    assert (cached1, cached2) == (False, True) and path == path2 and path.exists()
    assert torch.equal(z2.test_acc, a.test_acc) and all(torch.equal(x, y) for x, y in zip(z2.params, a.params))
    # another seed is another zoo, under another cache key
    assert zoo_cache_path(dataclasses.replace(cfg, seed=1)) != path
    assert zoo_cache_path(dataclasses.replace(cfg, models=("statnn",))) == path  # prediction keys: same zoo
    # the stored checkpoint reproduces its recorded accuracy through the nn.Module
    from lopt_graphs.data import load_embedded

    data = load_embedded(cfg.dataset, seed=cfg.data_seed)
    with torch.no_grad():
        acc = (a.module(0, 2)(data.x_test).argmax(-1) == data.y_test).float().mean()
    assert abs(float(acc) - float(a.test_acc[0, 2])) < 1e-6


@pytest.mark.parametrize("arch", [SMALL, RESIDUAL], ids=["small", "residual"])
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_batched_forward_matches_module(arch, act):
    mods = [_randomize(ZooCNN(arch, act), s).double() for s in range(3)]
    params = [torch.stack(ps) for ps in zip(*(list(m.parameters()) for m in mods))]
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    out = batched_forward(arch, act, [p.detach() for p in params], x)
    for i, m in enumerate(mods):
        torch.testing.assert_close(out[i], m(x), atol=1e-10, rtol=0)


def test_variant_archs_are_valid_and_traceable():
    cfg = ZooTaskConfig(kind="variant", num_archs=12)
    archs = sample_archs(cfg, 1, 10, 8, torch.Generator().manual_seed(0))
    assert len(archs) == 12 and any(any(a.residual) for a in archs)
    for a in archs:
        assert 2 <= len(a.widths) <= 4 and all(8 <= w <= 32 for w in a.widths) and set(a.kernels) <= {3, 5}
        spec = graph_from_module(ZooCNN(a, "relu"))
        assert not spec.free_params
        assert ZooCNN(a)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("arch", [SMALL, RESIDUAL], ids=["small", "residual"])
def test_hidden_channel_permutation_keeps_function(arch):
    m = _randomize(ZooCNN(arch, "tanh"), 1).double().eval()
    spec = graph_from_module(m)
    tensors = [p.detach() for p in m.parameters()]
    perm = spec.random_node_permutation(torch.Generator().manual_seed(3))
    assert not torch.equal(perm, torch.arange(spec.num_nodes))
    permuted = spec.permute(tensors, perm)
    assert any(not torch.equal(a, b) for a, b in zip(tensors, permuted))
    m2 = load_tensors(ZooCNN(arch, "tanh").double(), permuted).eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(m2(x), m(x), atol=1e-10, rtol=0)
    # shuffling input or output neurons is not a symmetry: the check above can fail
    bad = spec.permute(tensors, spec.random_node_permutation(torch.Generator().manual_seed(3), include="output"))
    assert not torch.allclose(load_tensors(ZooCNN(arch, "tanh").double(), bad)(x), m(x))


@pytest.mark.parametrize("variant, feats", [("gnn", "kernel"), ("gnn", "value"), ("transformer", "kernel")])
@pytest.mark.parametrize("arch", [SMALL, RESIDUAL], ids=["small", "residual"])
def test_predictor_is_invariant_to_hidden_permutations(variant, feats, arch):
    from torch_geometric.data import Batch

    net = _randomize(ZooCNN(arch, "gelu"), 2).double()
    spec = graph_from_module(net)
    kmax = 25  # as in a variant zoo: 3x3 kernels padded to 5x5 ones

    def predict(ts: list[torch.Tensor]) -> torch.Tensor:
        g = checkpoint_graph(spec, ts, (0.5, 0.3), kmax, spec.num_slots, feats, torch.float64)
        return model(Batch.from_data_list([g]))

    torch.manual_seed(0)
    model = AccuracyPredictor(variant, hidden=16, edge_hidden=8, layers=2, heads=4, max_kernel=kmax,
                              edge_in=kmax if feats == "kernel" else 1).double().eval()
    tensors = [p.detach() for p in net.parameters()]
    with torch.no_grad():
        ref = predict(tensors)
        for seed in range(3):
            perm = spec.random_node_permutation(torch.Generator().manual_seed(seed))
            torch.testing.assert_close(predict(spec.permute(tensors, perm)), ref, atol=1e-5, rtol=0)
        # sanity: the predictor does read the weights
        other = predict([t * 1.5 for t in tensors])
    assert not torch.allclose(other, ref, atol=1e-5)


def test_quick_run_beats_chance(tmp_path):
    cfg = load_task_config(QUICK, [f"cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'out'}"])
    res = run_task(cfg, progress=False)
    tau = res["kendall_tau"]
    assert tau["NG-GNN"] > 0.2, tau
    assert math.isfinite(tau["StatNN"])
    out = tmp_path / "out" / "zoo_quick"
    for f in ("results.json", "scatter.png", "config.yaml"):
        assert (out / f).exists()
    assert load_task_config(out / "config.yaml") == cfg


def test_unknown_and_invalid_config_keys_raise(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        load_task_config(QUICK, ["epochz=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: small\nnum_run: 3\n")
    with pytest.raises(ValueError, match="unknown config key 'num_run'"):
        load_task_config(bad)
    with pytest.raises(ValueError, match="kind"):
        load_task_config(None, ["kind=huge"])
    with pytest.raises(ValueError, match="ckpt_fractions"):
        load_task_config(None, ["ckpt_fractions=0.5,0.25"])
    with pytest.raises(TypeError, match="num_runs"):
        load_task_config(None, ["num_runs=2.5"])


def test_kendall_tau_fallback_matches_scipy(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)  # with ties
    y[:10] = y[10:20]
    ref = kendall_tau(x, y)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # makes `from scipy.stats import ...` fail
    assert kendall_tau(x, y) == pytest.approx(ref, abs=1e-12)


def test_kernel_features_see_kernel_structure():
    """With one feature per entry the encoder only sees each kernel's mean; "kernel" features see more."""
    from torch_geometric.data import Batch

    net = _randomize(ZooCNN(SMALL, "relu"), 4)
    spec = graph_from_module(net)
    tensors = [p.detach() for p in net.parameters()]
    flipped = [t.flip(-1) if t.dim() == 4 else t for t in tensors]  # same kernel means, other kernels
    outs = {}
    for feats in ("value", "kernel"):
        torch.manual_seed(0)
        model = AccuracyPredictor("gnn", 16, 8, 2, 4, max_kernel=9, edge_in=9 if feats == "kernel" else 1).eval()
        with torch.no_grad():
            outs[feats] = [model(Batch.from_data_list([checkpoint_graph(spec, ts, (1.0, 1.0), 9, 1, feats)]))
                           for ts in (tensors, flipped)]
    torch.testing.assert_close(outs["value"][0], outs["value"][1], atol=1e-5, rtol=0)
    assert not torch.allclose(outs["kernel"][0], outs["kernel"][1], atol=1e-5)


def test_ensemble_averages_its_members_predictions(tmp_path):
    from lopt_graphs.tasks.cnn_zoo.predict import ZooGraphs, _items, _targets, train_encoder_ensemble
    cfg = load_task_config(QUICK, [f"cache_dir={tmp_path / 'cache'}", "pred_epochs=2", "models=[gnn]"])
    zoo, _, _ = load_or_build_zoo(cfg, progress=False)
    train, val, test = _items(zoo, 0), _items(zoo, 1), _items(zoo, 2)
    zg = ZooGraphs(zoo, fit_runs=sorted({r for r, _ in train}))
    ens = train_encoder_ensemble(dataclasses.replace(cfg, pred_ensemble=2), "gnn", zg, train, val, test, False)
    one = [train_encoder_ensemble(dataclasses.replace(cfg, pred_seed=s), "gnn", zg, train, val, test, False)
           for s in (0, 1)]
    np.testing.assert_allclose(ens.test_pred, (one[0].test_pred + one[1].test_pred) / 2, rtol=1e-6)
    assert ens.extra["member_test_tau"] == pytest.approx([r.test_tau for r in one])
    assert ens.test_tau == pytest.approx(kendall_tau(ens.test_pred, _targets(zoo, test)))
    with pytest.raises(ValueError, match="pred_ensemble"):
        load_task_config(QUICK, ["pred_ensemble=0"])


def test_report_command_tabulates_result_dirs(tmp_path, capsys) -> None:
    from lopt_graphs.tasks.cnn_zoo.report import main as report_main
    zoo = {"runs": 10, "runs_train_val_test": [6, 2, 2], "checkpoints": 30, "checkpoints_train_val_test": [18, 6, 6],
           "archs": 3, "build_seconds": 1.5}
    for name, tau in (("a", 0.5), ("b", 0.25)):
        (tmp_path / name).mkdir()
        doc = {"task": name, "zoo": zoo, "kendall_tau": {"gnn": tau}}
        (tmp_path / name / "results.json").write_text(json.dumps(doc))
    text = report_main([f"dirs={tmp_path / 'a'},{tmp_path / 'b'}", f"out={tmp_path / 'table.md'}"])
    assert (tmp_path / "table.md").read_text() == text and capsys.readouterr().out == text
    rows = text.splitlines()
    assert rows[0].endswith("| gnn tau |") and rows[2].startswith("| a | 10 (6/2/2)") and rows[3].endswith("| 0.250 |")
    with pytest.raises(ValueError, match="dirs="):
        report_main([])
