"""INR editing: equivariance of the NG weight change, invariance of the edited rendering, a quick run."""

from __future__ import annotations

import json

import pytest
import torch

from lopt_graphs.tasks.inr.data import INRDataConfig, fit_inrs, inr_seeds, load_images
from lopt_graphs.tasks.inr.edit import EditConfig, NGEditor, dilate, main
from lopt_graphs.tasks.inr.graphs import INRGraphBatcher, siren_spec
from lopt_graphs.tasks.inr.siren import pixel_grid, siren_forward


@pytest.fixture(scope="module")
def params() -> list[torch.Tensor]:
    images, _ = load_images(INRDataConfig(dataset="digits", val_size=10))
    p, _ = fit_inrs(images["train"][:3], inr_seeds(0, torch.arange(3), 0), steps=10, chunk=3)
    return [x.double() for x in p]


def test_dilate_is_a_3x3_max_filter() -> None:
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0
    out = dilate(img)
    assert out[0, 0, 1:4, 1:4].eq(1).all() and out.sum() == 9


@pytest.mark.parametrize("variant", ["gnn", "transformer"])
def test_weight_change_is_equivariant_and_edit_invariant(params, variant: str) -> None:
    spec = siren_spec()
    cfg = EditConfig(enc_hidden=16, enc_edge_hidden=8, enc_layers=2, probes=3)
    editor = NGEditor(INRGraphBatcher(spec, scales=[0.5, 0.5, 0.05, 0.1, 0.05, 0.1], probes=3), variant, cfg,
                      delta_scale=0.5).double().eval()
    torch.manual_seed(0)
    for head in (editor.encoder.edge_head_out, editor.encoder.node_head_out):  # non-trivial heads
        torch.nn.init.normal_(head.weight)
        torch.nn.init.normal_(head.bias)
    perm = spec.random_node_permutation(torch.Generator().manual_seed(5))
    n = params[0].shape[0]
    permuted = [torch.stack(t) for t in zip(*[spec.permute([p[i] for p in params], perm) for i in range(n)])]
    with torch.no_grad():
        d, dp = editor.delta(params), editor.delta(permuted)
        expect = [torch.stack(t) for t in zip(*[spec.permute([x[i] for x in d], perm) for i in range(n)])]
        assert any(float(x.abs().max()) > 1e-3 for x in d)
        for a, b in zip(dp, expect):
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
        grid = pixel_grid(8, 8).double()
        r, rp = siren_forward(editor(params), grid), siren_forward(editor(permuted), grid)
        assert torch.allclose(r, rp, atol=1e-5)
        assert not torch.allclose(r, siren_forward(params, grid), atol=1e-3)  # the edit does something


def test_quick_run_beats_do_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOPT_GRAPHS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    res = main(["quick=true", f"out={out}"])
    saved = json.loads((out / "results.json").read_text())
    assert (out / "edits.png").is_file() and (out / "config.yaml").is_file()
    assert saved["do_nothing_test_mse"] == res["do_nothing_test_mse"]
    ng = next(m for m in res["models"] if m["model"] == "ng_gnn")
    assert ng["test_mse"] < 0.9 * res["do_nothing_test_mse"], (ng["test_mse"], res["do_nothing_test_mse"])
