"""INR classification: invariance of the NG classifiers, the non-equivariant baseline, a quick run."""

from __future__ import annotations

import json

import pytest
import torch

from lopt_graphs.tasks.inr.classify import ClassifyConfig, NGClassifier, main, quick_overrides
from lopt_graphs.tasks.inr.data import INRDataConfig, fit_inrs, inr_seeds, load_images
from lopt_graphs.tasks.inr.graphs import siren_spec


@pytest.fixture(scope="module")
def params() -> list[torch.Tensor]:
    images, _ = load_images(INRDataConfig(dataset="digits", val_size=10))
    p, _ = fit_inrs(images["train"][:4], inr_seeds(0, torch.arange(4), 0), steps=10, chunk=4)
    return [x.double() for x in p]


def _permuted(params: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    spec = siren_spec()
    perm = spec.random_node_permutation(torch.Generator().manual_seed(seed))
    out = [spec.permute([p[i] for p in params], perm) for i in range(params[0].shape[0])]
    return [torch.stack([o[j] for o in out]) for j in range(len(params))]


@pytest.mark.parametrize("variant", ["gnn", "transformer"])
@pytest.mark.parametrize("probes", [0, 4])
def test_logits_invariant_to_hidden_permutations(params, variant: str, probes: int) -> None:
    cfg = ClassifyConfig(enc_hidden=16, enc_edge_hidden=8, enc_layers=2, probes=probes)
    from lopt_graphs.tasks.inr.graphs import INRGraphBatcher
    batcher = INRGraphBatcher(siren_spec(), scales=[0.5, 0.5, 0.05, 0.1, 0.05, 0.1], probes=probes)
    model = NGClassifier(batcher, variant, cfg).double().eval()
    perm_params = _permuted(params, seed=3)
    assert not torch.allclose(perm_params[2], params[2])  # the permutation does move weights
    with torch.no_grad():
        a, b = model(params), model(perm_params)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_non_equivariant_baseline_is_not_invariant(params) -> None:
    cfg = ClassifyConfig(enc_hidden=16, enc_edge_hidden=8, enc_layers=2)
    from lopt_graphs.tasks.inr.graphs import INRGraphBatcher
    batcher = INRGraphBatcher(siren_spec(hidden_positions=True), scales=[1.0] * 6)
    model = NGClassifier(batcher, "gnn", cfg).double().eval()
    with torch.no_grad():
        a, b = model(params), model(_permuted(params, seed=3))
    assert not torch.allclose(a, b, atol=1e-5)


def test_quick_run_beats_chance(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOPT_GRAPHS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    res = main(["quick=true", f"out={out}"])
    saved = json.loads((out / "results.json").read_text())
    assert (out / "config.yaml").is_file() and (out / "curves.png").is_file()
    assert [m["model"] for m in saved["models"]] == list(quick_overrides()["models"])
    best = max(m["test_acc"] for m in res["models"] if m["model"].startswith("ng_"))
    assert best > 0.2, res["models"]


def test_probe_mlp_reads_the_inr_output_at_the_probe_pixels(params) -> None:
    from lopt_graphs.tasks.inr.classify import ProbeMLPClassifier
    from lopt_graphs.tasks.inr.graphs import probe_coords
    from lopt_graphs.tasks.inr.siren import siren_forward
    coords = probe_coords(6, (8, 8))
    model = ProbeMLPClassifier([1.0] * 6, sum(p[0].numel() for p in params), 16, coords, 30.0).double().eval()
    with torch.no_grad():
        logits = model(params)
    assert logits.shape == (params[0].shape[0], 10)
    # the input is [flattened weights, the INR's values at the 6 probe pixels]
    values = siren_forward(params, coords.double(), 30.0)[..., 0]
    flat = torch.cat([p.flatten(1) for p in params], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(logits, model.net(torch.cat([flat, values], 1)))
    changed = [p.clone() for p in params]
    changed[-1] = changed[-1] + 1.0  # shifts every probe value (output bias), weights input shifts too
    with torch.no_grad():
        assert not torch.allclose(model(changed), logits)


def test_probe_mlp_needs_probes_and_is_not_an_editor() -> None:
    from lopt_graphs.tasks.inr.edit import EditConfig
    with pytest.raises(ValueError, match="mlp_probes"):
        EditConfig(models=("mlp_probes",))
