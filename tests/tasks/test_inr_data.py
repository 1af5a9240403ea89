"""INR datasets: deterministic fitting, stored parameter order, graph building, cache, splits."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lopt_graphs.graph import collate, graph_from_module
from lopt_graphs.tasks.inr.data import (
    INRDataConfig,
    cache_path,
    fit_inrs,
    inr_seeds,
    load_images,
    load_inr_dataset,
)
from lopt_graphs.tasks.inr.graphs import INRGraphBatcher, build_graphs, siren_spec
from lopt_graphs.tasks.inr.siren import make_siren, param_shapes, pixel_grid, siren_forward


@pytest.fixture(scope="module")
def digits8() -> torch.Tensor:
    images, _ = load_images(INRDataConfig(dataset="digits", val_size=10))
    return images["train"][:8]


def test_fit_is_deterministic(digits8: torch.Tensor) -> None:
    seeds = inr_seeds(0, torch.arange(8), 0)
    a, pa = fit_inrs(digits8, seeds, steps=30, chunk=8)
    b, pb = fit_inrs(digits8, seeds, steps=30, chunk=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(pa, pb)
    assert float(pa.mean()) > 20.0  # 30 Adam steps already fit 8x8 digits well
    # Every INR is fitted independently of its neighbours in the chunk: fitting 3 alone gives the same INRs.
    c, _ = fit_inrs(digits8[:3], seeds[:3], steps=30, chunk=3)
    assert all(torch.allclose(x[:3], y, atol=1e-5) for x, y in zip(a, c))
    # Other seeds (augmentation copies) give other INRs.
    d, _ = fit_inrs(digits8, inr_seeds(0, torch.arange(8), 1), steps=30, chunk=8)
    assert not torch.allclose(a[2], d[2])


def test_parameter_order_matches_reference_module(digits8: torch.Tensor) -> None:
    params, _ = fit_inrs(digits8[:2], inr_seeds(0, torch.arange(2), 0), steps=5, chunk=2)
    module = make_siren(32, 30.0)
    assert [tuple(p.shape) for p in module.parameters()] == param_shapes(32)
    with torch.no_grad():
        for p, v in zip(module.parameters(), params):
            p.copy_(v[1])
    coords = pixel_grid(8, 8)
    assert torch.allclose(module(coords), siren_forward(params, coords)[1], atol=1e-5)
    spec = graph_from_module(module)
    assert spec.num_nodes == 2 + 32 + 32 + 1 and spec.num_edges == 2 * 32 + 32 * 32 + 32


def test_fast_batches_equal_neural_graph_collate(digits8: torch.Tensor) -> None:
    params, _ = fit_inrs(digits8[:5], inr_seeds(0, torch.arange(5), 0), steps=5, chunk=5)
    spec = siren_spec()
    batcher = INRGraphBatcher(spec, scales=[0.5, 2.0, 1.0, 3.0, 1.5, 1.0])
    fast = batcher.batch(params)
    ref = collate(build_graphs(spec, batcher.normalize(params)))
    for key in ref.keys():
        a, b = getattr(ref, key), getattr(fast, key)
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, key
    back = batcher.unbatch(fast.edge_attr, fast.x, 5)
    assert all(torch.allclose(x, y) for x, y in zip(back, batcher.normalize(params)))
    # The template is not modified by building batches.
    assert float(batcher.template(5).edge_attr.abs().sum()) == 0.0


def test_cache_roundtrip_and_splits(tmp_path) -> None:
    cfg = INRDataConfig(dataset="digits", val_size=6, max_train=10, max_test=5, fit_steps=3, augment=2,
                        cache_dir=str(tmp_path), progress=False)
    ds = load_inr_dataset(cfg)
    assert cache_path(cfg).is_file() and not list(tmp_path.glob(".*tmp"))
    assert len(ds) == 10 * 3 + 6 + 5
    assert [int(ds.indices(s, augmented=False).numel()) for s in ("train", "val", "test")] == [10, 6, 5]
    # Splits are by image: no image appears in two splits.
    ids = [set(ds.image_id[ds.indices(s)].tolist()) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    again = load_inr_dataset(cfg)
    assert all(torch.equal(a, b) for a, b in zip(ds.params, again.params))
    other = dataclasses.replace(cfg, fit_steps=4)
    assert cache_path(other) != cache_path(cfg)


def test_missing_torchvision_data_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_images(INRDataConfig(dataset="fashion_mnist", data_root=str(tmp_path)))
    with pytest.raises(FileNotFoundError):
        load_images(INRDataConfig(dataset="cifar10"))
