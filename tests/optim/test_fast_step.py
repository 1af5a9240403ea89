"""The eager fast step computes what the reference ``param_step`` computes."""

from __future__ import annotations

import pytest
import torch

from lopt_graphs.optim.fast_step import fast_param_step
from lopt_graphs.optim.functional import init_state, param_step

from .optim_infos import random_head_learned

CASES = [  # kind, parameter shape, head view
    ("edge", (7, 5), (7, 5)),
    ("edge", (6, 4, 3, 3), (6, 4, 9)),
    ("node", (6,), (6,)),
    ("free", (3, 2, 2, 2, 2), (3, 2, 2, 2, 2)),
]


@pytest.mark.parametrize("kind, shape, view", CASES, ids=[f"{c[0]}{len(c[1])}d" for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fast_step_matches_reference(kind, shape, view, dtype, weight_decay):
    learned = random_head_learned(seed=4).requires_grad_(False)
    hw = learned.head_weights(free=kind == "free")
    g = torch.Generator().manual_seed(0)
    p = torch.randn(*shape, generator=g, dtype=dtype)
    st = init_state(p)
    H = learned.cfg.head_hidden
    if kind == "edge":
        st["ctx_dst"] = torch.randn(view[0], H, generator=g)
        st["ctx_src"] = torch.randn(H, view[1], generator=g)
    elif kind == "node":
        st["ctx"] = torch.randn(H, view[0], generator=g)
    ref_p, ref_st, fast_p, fast_st = p, dict(st), p, dict(st)
    for _ in range(5):  # several steps: the moments and the step features evolve
        grad = torch.randn(*shape, generator=g, dtype=dtype)
        args = (kind, view, (0.9, 0.999), 1e-8, (0.5, 0.99), torch.tensor(3e-3), weight_decay)
        ref_p, ref_st = param_step(hw, ref_p, grad, ref_st, *args)
        fast_p, fast_st = fast_param_step(hw, fast_p, grad, fast_st, *args)
    assert fast_p.dtype == dtype and fast_p.shape == p.shape
    torch.testing.assert_close(fast_p, ref_p, rtol=1e-5, atol=1e-6)
    assert set(fast_st) == set(ref_st)
    for k in ref_st:
        torch.testing.assert_close(fast_st[k], ref_st[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")
    assert float((ref_p - p).abs().max()) > 1e-3  # the steps did something


def test_self_check_accepts_the_shipped_head_and_rejects_a_changed_one(monkeypatch):
    from lopt_graphs.optim import fast_step
    from lopt_graphs.optim.checkpoint import load_learned_update

    assert fast_step.fast_step_agrees(load_learned_update(None).requires_grad_(False))
    learned = random_head_learned(seed=5).requires_grad_(False)
    assert fast_step.fast_step_agrees(learned)
    real = fast_step.fast_param_step
    monkeypatch.setattr(fast_step, "fast_param_step", lambda *a: (lambda p, s: (p * 1.01, s))(*real(*a)))
    assert not fast_step.fast_step_agrees(learned)
