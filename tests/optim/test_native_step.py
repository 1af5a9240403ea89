"""The C step (:mod:`lopt_graphs.optim.native`) computes what the eager blocks compute, is built once and
cached, and falls back to the eager blocks when it cannot be built or is switched off."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch import nn

from lopt_graphs.optim import NeuralGraphOptimizer, fast_step, native
from lopt_graphs.optim.fast_step import fast_param_step, random_state

from .test_fast_step import BETAS, CASES, EPS, _learned

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A native module that builds afresh into an empty cache (restored afterwards by monkeypatch)."""
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("LOPT_GRAPHS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _steps(learned, kind, shape, view, weight_decay, base, use_native, monkeypatch, steps=4, orthogonal=False):
    with monkeypatch.context() as m:
        if not use_native:
            m.setattr(native, "available", lambda: False)
        hw = learned.head_weights(free=kind == "free")
        g = torch.Generator().manual_seed(1)
        p = torch.randn(*shape, generator=g)
        st = random_state(p, kind, view, learned.cfg.head_hidden, learned.cfg.tensor_lr, g)
        for _ in range(steps):
            grad = torch.randn(*shape, generator=g)
            p, st = fast_param_step(hw, p, grad, st, kind, view, BETAS, EPS, learned.cfg.momenta,
                                    torch.tensor(3e-3), weight_decay, total=9, base=base, orthogonal=orthogonal)
    return p, st


@needs_cc
@pytest.mark.parametrize("kind, shape, view", CASES, ids=[f"{c[0]}{len(c[1])}d" for c in CASES])
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("weight_decay, base", [(0.0, False), (0.1, False), (0.1, True)])
def test_native_step_matches_the_eager_blocks(kind, shape, view, version, weight_decay, base, monkeypatch):
    assert native.available()
    learned = _learned(version)
    calls = []
    real = native.param_step_
    monkeypatch.setattr(native, "param_step_", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    p_n, st_n = _steps(learned, kind, shape, view, weight_decay, base, True, monkeypatch)
    assert calls, "the C step was not used"
    calls.clear()
    p_e, st_e = _steps(learned, kind, shape, view, weight_decay, base, False, monkeypatch)
    assert not calls
    torch.testing.assert_close(p_n, p_e, rtol=1e-5, atol=1e-6)
    for k in st_e:
        torch.testing.assert_close(st_n[k], st_e[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")


@needs_cc
@needs_cc
@pytest.mark.parametrize("shape, view", [((5, 4), (5, 4)), ((3, 4, 2, 2), (3, 4, 4)), ((40, 300), (40, 300))],
                         ids=["linear", "conv", "linear_rows_over_a_chunk"])
def test_native_step_with_an_orthogonal_direction_matches_the_eager_blocks(shape, view, monkeypatch):
    learned = _learned("v2")
    calls = []
    real = native.param_step_
    monkeypatch.setattr(native, "param_step_", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    p_n, st_n = _steps(learned, "edge", shape, view, 0.1, False, True, monkeypatch, orthogonal=True)
    assert calls and all(d is not None for d in calls), "the C step did not take the direction"
    p_e, _ = _steps(learned, "edge", shape, view, 0.1, False, False, monkeypatch, orthogonal=True)
    torch.testing.assert_close(p_n, p_e, rtol=1e-5, atol=1e-6)
    p_a, _ = _steps(learned, "edge", shape, view, 0.1, False, True, monkeypatch)
    assert (p_n - p_a).abs().max() > 1e-4  # not Adam's direction


def test_native_exp_is_accurate_over_the_clip_range(monkeypatch):
    # a free parameter whose head output is a chosen log multiplier: exp(clip(o_mag)) through the C polynomial
    learned = _learned("v1")
    hw = learned.head_weights(free=True)
    mc = hw.mag_clip
    for target in (-mc - 1, -mc / 2, -0.3, 0.0, 0.7, mc / 3, mc, mc + 2):
        h = hw._replace(w1=torch.zeros_like(hw.w1), w2=torch.zeros_like(hw.w2), b2=torch.tensor([0.0, 0.0]),
                        step_w=torch.zeros_like(hw.step_w), step_b=torch.full_like(hw.step_b, 1.0))
        h = h._replace(b2=torch.tensor([0.0, target / h.mag_scale]))
        p, grad = torch.zeros(64), torch.randn(64, generator=torch.Generator().manual_seed(0))
        st = random_state(p, "free", (64,), learned.cfg.head_hidden, False, torch.Generator().manual_seed(0))
        out_n, _ = fast_param_step(h, p, grad, st, "free", (64,), BETAS, EPS, learned.cfg.momenta, 1.0, 0.0)
        with monkeypatch.context() as m:
            m.setattr(native, "available", lambda: False)
            out_e, _ = fast_param_step(h, p, grad, st, "free", (64,), BETAS, EPS, learned.cfg.momenta, 1.0, 0.0)
        torch.testing.assert_close(out_n, out_e, rtol=4e-7, atol=0)


@needs_cc
def test_optimizer_trains_the_same_with_and_without_the_c_step(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))  # a 6,144-entry weight: fast path
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    runs = {}
    for use in (True, False):
        with monkeypatch.context() as m:
            if not use:
                m.setattr(native, "available", lambda: False)
            m_ = copy.deepcopy(model)
            # Adam's direction (the default's orthogonal one takes the reference step)
            opt = NeuralGraphOptimizer(m_.parameters(), "v2_calibrated4_es60_fanin", weight_decay=0.01)
            for _ in range(30):
                opt.zero_grad()
                nn.functional.cross_entropy(m_(x), y).backward()
                opt.step()
            runs[use] = [p.detach().clone() for p in m_.parameters()]
    assert any(p.numel() >= fast_step.FAST_MIN_NUMEL for p in model.parameters())
    for a, b in zip(runs[True], runs[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(runs[True][0], model[0].weight)


@needs_cc
def test_build_is_cached_and_keyed_by_the_source(fresh_native, monkeypatch):
    assert native.available()
    built = sorted(fresh_native.glob("ngo_step_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_tried", False)
    assert native.available() and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_SOURCE", native._SOURCE + "\n/* changed */\n")
    assert native.available() and len(list(fresh_native.glob("ngo_step_*.so"))) == 2


@needs_cc
def test_a_damaged_cached_library_is_rebuilt(fresh_native, monkeypatch, tmp_path, caplog):
    assert native.available()
    name = next(fresh_native.glob("ngo_step_*.so")).name
    other = tmp_path / "other_cache"  # a cache this process has not loaded from (a loaded file is mapped)
    other.mkdir()
    (other / name).write_bytes(b"not a shared library")
    monkeypatch.setenv("LOPT_GRAPHS_CACHE", str(other))
    monkeypatch.setattr(native, "_tried", False)
    with caplog.at_level("WARNING"):
        assert native.available()
    assert "does not load" in caplog.text and "rebuilding it" in caplog.text
    assert (other / name).stat().st_size > 1000 and [p.name for p in other.iterdir()] == [name]


def test_falls_back_without_a_compiler_or_when_switched_off(fresh_native, monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert not native.available() and native.library() is None
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    if shutil.which("false") is not None:
        with caplog.at_level("WARNING"):
            assert not native.available()
        assert "building the C step failed" in caplog.text
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("LOPT_GRAPHS_NATIVE", "0")
    assert not native.available()
    # and the fast step still works (the eager blocks)
    learned = _learned("v1")
    p, st = _steps(learned, "edge", (7, 5), (7, 5), 0.0, False, True, monkeypatch, steps=1)
    assert torch.isfinite(p).all()


def test_eligible_only_float32_contiguous_cpu():
    x = torch.zeros(4, 3)
    assert native.eligible(x, None, x.t().contiguous())
    assert not native.eligible(x.t())
    assert not native.eligible(x.double())
    assert not native.eligible(x.bfloat16())
