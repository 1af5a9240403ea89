"""The eager fast step computes what the reference computes: per parameter (``param_step``, the base step), per
group (``ngo_update``), and in the optimizer (against itself with the fast path off); v1 and v2 heads, with and
without a known horizon, over several blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lopt_graphs.optim import NeuralGraphOptimizer, fast_step
from lopt_graphs.optim.bn_scale import base_step
from lopt_graphs.optim.fast_step import fast_encoder_step_, fast_group_step_, fast_param_step
from lopt_graphs.optim.functional import ngo_update, param_step
from lopt_graphs.optim.learned import v2_config

from .optim_infos import random_head_learned

CASES = [  # kind, parameter shape, head view
    ("edge", (7, 5), (7, 5)),
    ("edge", (6, 4, 3, 3), (6, 4, 9)),
    ("node", (10,), (10,)),
    ("free", (3, 2, 2, 2, 2), (3, 2, 2, 2, 2)),
]
BETAS, EPS = (0.9, 0.999), 1e-8


def _learned(version: str, seed: int = 4, dtype: torch.dtype | None = None):
    if version == "v1":
        return random_head_learned(seed=seed, dtype=dtype).requires_grad_(False)
    learned = random_head_learned(seed=seed, dtype=dtype, cfg=v2_config())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        learned.lr_sched.weight.normal_(0, 0.5)
    return learned.requires_grad_(False)


def _state(p: torch.Tensor, kind: str, view: tuple[int, ...], hdim: int, v2: bool, g: torch.Generator) -> dict:
    from lopt_graphs.optim.fast_step import random_state
    return random_state(p, kind, view, hdim, v2, g)


def _atol(new: torch.Tensor, old: torch.Tensor) -> float:
    """Float rounding of a step: 1e-6 plus 1e-5 of the largest change."""
    return 1e-6 + 1e-5 * float((new - old).detach().abs().max())


def _state_tol(key: str, scale: float = 1.0) -> dict[str, float]:
    """Float rounding of a state entry; the encoder's node terms carry the rounding of its inputs through its
    layers (``scale``: more steps of drift)."""
    return {"rtol": 1e-4 * scale, "atol": 1e-5 * scale} if key.startswith("ctx") else {"rtol": 1e-5 * scale,
                                                                                        "atol": 1e-6 * scale}


@pytest.fixture(params=[None, 7], ids=["one_block", "block7"])
def block(request, monkeypatch):
    """The default block size (one block per test tensor), and blocks of 7 entries (several blocks, whole rows
    of a weight, a shorter last block)."""
    if request.param is not None:
        monkeypatch.setattr(fast_step, "BLOCK", request.param)
    return request.param


@pytest.mark.parametrize("kind, shape, view", CASES, ids=[f"{c[0]}{len(c[1])}d" for c in CASES])
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("total", [None, 12], ids=["horizon_unknown", "horizon12"])
@pytest.mark.parametrize("dtype, weight_decay", [(torch.float32, 0.0), (torch.float32, 0.1), (torch.float64, 0.1)])
def test_fast_step_matches_reference(kind, shape, view, version, total, dtype, weight_decay, block):
    learned = _learned(version)
    hw = learned.head_weights(free=kind == "free")
    g = torch.Generator().manual_seed(0)
    p = torch.randn(*shape, generator=g, dtype=dtype)
    st = _state(p, kind, view, learned.cfg.head_hidden, version == "v2", g)
    before = (p.clone(), {k: v.clone() for k, v in st.items()})
    ref_p, ref_st, fast_p, fast_st = p, st, p, st
    for _ in range(5):  # several steps: the moments and the step features evolve
        grad = torch.randn(*shape, generator=g, dtype=dtype)
        args = (kind, view, BETAS, EPS, learned.cfg.momenta, torch.tensor(3e-3), weight_decay)
        ref_p, ref_st = param_step(hw, ref_p, grad, ref_st, *args, total=total)
        fast_p, fast_st = fast_param_step(hw, fast_p, grad, fast_st, *args, total=total)
    assert fast_p.dtype == dtype and fast_p.shape == p.shape
    # float rounding of the steps (v2's steps are larger: up to e**4 times): both paths are that close to the
    # same update computed in float64
    torch.testing.assert_close(fast_p, ref_p, rtol=1e-5, atol=_atol(ref_p, p))
    assert set(fast_st) == set(ref_st)
    for k in ref_st:
        torch.testing.assert_close(fast_st[k], ref_st[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")
    assert float((ref_p - p).abs().max()) > 1e-3  # the steps did something
    torch.testing.assert_close(p, before[0], rtol=0, atol=0)  # fast_param_step works on copies
    assert all(torch.equal(st[k], v) for k, v in before[1].items())


@pytest.mark.parametrize("shape, view", [((5, 4), (5, 4)), ((3, 4, 2, 2), (3, 4, 4))], ids=["linear", "conv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_step_with_an_orthogonal_direction_matches_reference(shape, view, dtype, block):
    """The usual step of an orthogonalized weight (a matrix, a kernel as its flattened matrix): the direction
    computed before the step replaces Adam's, and the features are Adam's, as in the reference."""
    learned = _learned("v2")
    hw = learned.head_weights(free=False)
    g = torch.Generator().manual_seed(3)
    p = torch.randn(*shape, generator=g, dtype=dtype)
    st = _state(p, "edge", view, learned.cfg.head_hidden, True, g)
    ref_p, ref_st, fast_p, fast_st, adam_p = p, st, p, st, p
    adam_st = st
    for _ in range(5):
        grad = torch.randn(*shape, generator=g, dtype=dtype)
        args = ("edge", view, BETAS, EPS, learned.cfg.momenta, torch.tensor(3e-3), 0.1)
        ref_p, ref_st = param_step(hw, ref_p, grad, ref_st, *args, total=12, orthogonal=True)
        fast_p, fast_st = fast_param_step(hw, fast_p, grad, fast_st, *args, total=12, orthogonal=True)
        adam_p, adam_st = fast_param_step(hw, adam_p, grad, adam_st, *args, total=12)
    torch.testing.assert_close(fast_p, ref_p, rtol=1e-5, atol=_atol(ref_p, p))
    for k in ref_st:
        torch.testing.assert_close(fast_st[k], ref_st[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")
    assert (fast_p - adam_p).abs().max() > 1e-4  # not Adam's direction


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fast_step_bfloat16_parameter(version, block):
    """A bfloat16 parameter: float32 state and arithmetic, one rounding to bfloat16 per step (as the reference)."""
    learned = _learned(version)
    kind, shape, view = CASES[1]
    hw = learned.head_weights()
    g = torch.Generator().manual_seed(3)
    p = torch.randn(*shape, generator=g).to(torch.bfloat16)
    st = _state(p, kind, view, learned.cfg.head_hidden, version == "v2", g)
    ref_p, ref_st, fast_p, fast_st = p, st, p, st
    for _ in range(3):
        grad = torch.randn(*shape, generator=g).to(torch.bfloat16)
        args = (kind, view, BETAS, EPS, learned.cfg.momenta, torch.tensor(3e-3), 0.0)
        ref_p, ref_st = param_step(hw, ref_p, grad, ref_st, *args)
        fast_p, fast_st = fast_param_step(hw, fast_p, grad, fast_st, *args)
    assert fast_p.dtype == torch.bfloat16 and fast_st["v"].dtype == torch.float32
    torch.testing.assert_close(fast_p, ref_p)  # bfloat16 tolerances
    torch.testing.assert_close(fast_st["m_adam"], ref_st["m_adam"])


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("kind, shape, view", CASES[:2], ids=["linear", "conv"])
def test_fast_base_step_matches_reference(kind, shape, view, version, block):
    """The base step (weights feeding a BatchNorm): moments advanced as the reference, then ``base_step``."""
    learned = _learned(version)
    hw = learned.head_weights()
    g = torch.Generator().manual_seed(1)
    p = torch.randn(*shape, generator=g)
    st = _state(p, kind, view, learned.cfg.head_hidden, version == "v2", g)
    ref_p, ref_st, fast_p, fast_st = p, st, p, st
    eta = torch.tensor(3e-3)
    for _ in range(4):
        grad = torch.randn(*shape, generator=g)
        args = (kind, view, BETAS, EPS, learned.cfg.momenta, eta, 0.1)
        _, ref_st = param_step(hw, ref_p, grad, ref_st, *args, total=12)
        ref_p = base_step(ref_p, ref_st, BETAS, EPS, eta, 0.1)
        fast_p, fast_st = fast_param_step(hw, fast_p, grad, fast_st, *args, total=12, base=True)
    torch.testing.assert_close(fast_p, ref_p, rtol=1e-5, atol=_atol(ref_p, p))
    for k in ref_st:
        torch.testing.assert_close(fast_st[k], ref_st[k], rtol=1e-5, atol=1e-7)


class _Net(nn.Module):
    """Conv, flatten, linear, plus a graph-free parameter: every kind of slot in one group."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.free = nn.Parameter(torch.randn(2, 3, 2))

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1)).sum(1) + self.free.sum()


def _group_case(version: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    model = _Net().to(dtype)
    learned = _learned(version)
    with pytest.warns(UserWarning, match="graph-free"):
        spec = NeuralGraphOptimizer.for_module(model, learned).graph_spec(0)
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    return learned, spec, [p.detach().clone() for p in model.parameters()], index


def _ref_step(learned, spec, params, grads, states, base, total, kw, **extra):
    """``ngo_update`` then, as the optimizer, the base step for the parameters in ``base`` and new states only
    for parameters with a gradient."""
    new_p, new_st = ngo_update(learned, spec, params, grads, states, total_steps=total, **kw, **extra)
    eta = kw["lr"] * learned.cfg.base_lr
    return ([base_step(p, s, BETAS, EPS, eta, kw["weight_decay"]) if i in base and g is not None else n
             for i, (p, n, s, g) in enumerate(zip(params, new_p, new_st, grads))],
            [s if g is not None else old for s, old, g in zip(new_st, states, grads)])


def _assert_group_close(fast_p, fast_st, ref_p, ref_st, params):
    for i, (a, b, p0) in enumerate(zip(fast_p, ref_p, params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=_atol(b, p0), msg=lambda m: f"param {i}: {m}")
    for a, b in zip(fast_st, ref_st):
        assert set(a) == set(b)
        for k in b:
            torch.testing.assert_close(a[k], b[k], **_state_tol(k), msg=lambda m: f"{k}: {m}")


KW = dict(lr=0.7, betas=BETAS, eps=EPS, weight_decay=0.01)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("total", [None, 30], ids=["horizon_unknown", "horizon30"])
def test_group_step_matches_ngo_update(version, total, block):
    """``fast_group_step_`` (in place) against ``ngo_update`` + the optimizer's base step, on usual steps of a
    group holding conv, linear, bias and graph-free parameters, one parameter without a gradient, one base."""
    learned, spec, params, index = _group_case(version)
    base = {index["conv.weight"]}  # takes the base step
    g = torch.Generator().manual_seed(2)
    grads = lambda: [torch.randn(p.shape, generator=g) for p in params]  # noqa: E731
    params, states = _ref_step(learned, spec, params, grads(), [{}] * len(params), base, total, KW)
    ref_p, ref_st = params, states
    fast_p = [p.clone() for p in params]
    fast_st = [{k: v.clone() for k, v in s.items()} for s in states]
    for _ in range(2, 7):  # steps 2 and 4 would run the encoder in the optimizer; here every step is usual
        gs = grads()
        gs[index["fc.bias"]] = None
        # step=3 and encoder_every=1000: no encoder run (the states hold node terms)
        ref_p, ref_st = _ref_step(learned, spec, ref_p, gs, ref_st, base, total, KW, encoder_every=1000, step=3)
        fast_group_step_(learned, spec, fast_p, gs, fast_st, total_steps=total, base=base, **KW)
    _assert_group_close(fast_p, fast_st, ref_p, ref_st, params)
    assert float(fast_st[index["fc.bias"]]["step"]) == 1.0 and float(fast_st[index["free"]]["step"]) == 6.0


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("total", [None, 30], ids=["horizon_unknown", "horizon30"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64_params"])
def test_encoder_step_matches_ngo_update(version, total, dtype, block):
    """``fast_encoder_step_`` against ``ngo_update``'s encoder steps (features, node terms, head), from fresh
    states (step 1) and from states at step 4; float64 parameters with a float32 learned update."""
    learned, spec, params, index = _group_case(version, dtype)
    base = {index["conv.weight"]}
    g = torch.Generator().manual_seed(3)
    grads = lambda: [torch.randn(p.shape, generator=g, dtype=dtype) for p in params]  # noqa: E731
    ref_p, ref_st = params, [{} for _ in params]
    fast_p, fast_st = [p.clone() for p in params], [{} for _ in params]
    for step in range(1, 5):
        gs = grads()
        if step == 3:
            gs[index["fc.weight"]] = None  # the encoder reads zeros for it
        ref_p, ref_st = _ref_step(learned, spec, ref_p, gs, ref_st, base, total, KW, encoder_every=1)
        fast_encoder_step_(learned, spec, fast_p, gs, fast_st, total_steps=total, base=base, **KW)
        _assert_group_close(fast_p, fast_st, ref_p, ref_st, params)
    assert {"ctx_dst", "ctx_src"} <= set(fast_st[index["fc.weight"]]) and "ctx" in fast_st[index["fc.bias"]]
    assert not any(k.startswith("ctx") for k in fast_st[index["free"]])


def _big_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # 70 x 64 = 4480 weights: above FAST_MIN_NUMEL, so the optimizer takes the fast path
    return nn.Sequential(nn.Linear(70, 64), nn.Tanh(), nn.Linear(64, 3))


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("total", [None, 40], ids=["horizon_unknown", "horizon40"])
def test_optimizer_fast_path_matches_reference_path(version, total, monkeypatch):
    learned = _learned(version)
    a, b = _big_model(), _big_model()
    assert max(p.numel() for p in a.parameters()) >= fast_step.FAST_MIN_NUMEL
    calls = []
    for name, fn in (("fast_group_step_", fast_group_step_), ("fast_encoder_step_", fast_encoder_step_)):
        monkeypatch.setattr(f"lopt_graphs.optim.optimizer.{name}",
                            lambda *x, _n=name, _f=fn, **k: calls.append(_n) or _f(*x, **k))
    fast = NeuralGraphOptimizer(a.parameters(), copy.deepcopy(learned), total_steps=total, weight_decay=0.01)
    ref = NeuralGraphOptimizer(b.parameters(), copy.deepcopy(learned), total_steps=total, weight_decay=0.01)
    ref._fast = lambda *_: None  # the reference path at every step
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        x, y = torch.randn(32, 70, generator=g), torch.randn(32, 3, generator=g)
        for model, opt in ((a, fast), (b, ref)):
            opt.zero_grad()
            (model(x) - y).square().mean().backward()
            opt.step()
    assert [i + 1 for i, c in enumerate(calls) if c == "fast_encoder_step_"] == [1, 2, 4, 8]
    assert len(calls) == 12
    for p, q, p0 in zip(a.parameters(), b.parameters(), _big_model().parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=_atol(q, p0))
        for k, v in ref.state[q].items():
            torch.testing.assert_close(fast.state[p][k], v, **_state_tol(k, 10), msg=lambda m: f"{k}: {m}")


def test_diagnostics_keep_the_reference_path():
    model = _big_model()
    opt = NeuralGraphOptimizer(model.parameters(), _learned("v2"), total_steps=10)
    opt.record_diagnostics = True
    x, y = torch.randn(8, 70), torch.randn(8, 3)
    for _ in range(3):  # step 3 is a usual step (no encoder run)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
    d = opt.last_diagnostics
    assert [x["u"].numel() for x in d] == [p.numel() for p in model.parameters()]
    assert all(x["sigma"] is not None for x in d)


def test_self_check_accepts_the_shipped_heads_and_rejects_a_changed_one(monkeypatch):
    from lopt_graphs.optim.checkpoint import load_learned_update

    for name in ("default", "v2_pes_80"):
        assert fast_step.fast_step_agrees(load_learned_update(name).requires_grad_(False)), name
    for version in ("v1", "v2"):
        assert fast_step.fast_step_agrees(_learned(version, seed=5))
    learned = _learned("v2", seed=5)
    real = fast_step.fast_param_step
    monkeypatch.setattr(fast_step, "fast_param_step", lambda *a, **k: (lambda p, s: (p * 1.01, s))(*real(*a, **k)))
    assert not fast_step.fast_step_agrees(learned)
    monkeypatch.setattr(fast_step, "fast_param_step", real)
    real_scalars = fast_step._scalars
    monkeypatch.setattr(fast_step, "_scalars", lambda hw, t, *a: real_scalars(hw, t + 1, *a))  # off by one step
    assert not fast_step.fast_step_agrees(learned)


def _train_big(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 70, generator=g), torch.randn(16, 3, generator=g)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()


def test_fast_path_resumes_exactly_and_follows_replaced_state():
    """The fast step keeps block views and node terms between steps: a resumed optimizer (``load_state_dict``)
    must continue identically, also across steps on the reference path (diagnostics on: new state tensors)."""
    learned = _learned("v2")
    a = _big_model()
    opt = NeuralGraphOptimizer(a.parameters(), copy.deepcopy(learned), total_steps=30)
    _train_big(a, opt, 5, seed=0)
    b = copy.deepcopy(a)
    resumed = NeuralGraphOptimizer(b.parameters(), copy.deepcopy(learned), total_steps=30)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for model, o in ((a, opt), (b, resumed)):
        _train_big(model, o, 3, seed=1)
        o.record_diagnostics = True  # the reference path replaces the state tensors...
        _train_big(model, o, 2, seed=2)
        o.record_diagnostics = False  # ...and the fast path must read the new ones
        _train_big(model, o, 4, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def _flushing() -> bool:
    return bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)


@pytest.mark.parametrize("before", [False, True])
def test_subnormal_moments_step_as_the_reference_and_the_flush_mode_is_restored(before):
    """Moments decaying through the subnormal range (a unit whose gradient stopped) are flushed to zero inside the
    fast step only: the update equals the reference's up to float rounding, and the caller's mode is kept."""
    learned = _learned("v1")
    a, b = _big_model(), _big_model()
    fast = NeuralGraphOptimizer(a.parameters(), copy.deepcopy(learned))
    ref = NeuralGraphOptimizer(b.parameters(), copy.deepcopy(learned))
    ref._fast = lambda *_: None
    g = torch.Generator().manual_seed(0)
    old = torch.set_flush_denormal(before) and before
    try:
        assert _flushing() == old
        for step in range(12):
            x, y = torch.randn(16, 70, generator=g), torch.randn(16, 3, generator=g)
            for model, opt in ((a, fast), (b, ref)):
                opt.zero_grad()
                (model(x) - y).square().mean().backward()
                if step >= 3:  # hidden units 0-9 stop learning: their moments decay
                    model[0].weight.grad[:10] = 0.0
                if step == 8:  # and sit in the subnormal range
                    for st in opt.state.values():
                        st["m_fast"].view(-1)[:700] = 1e-39
                opt.step()
                assert _flushing() == old
        for p, q, p0 in zip(a.parameters(), b.parameters(), _big_model().parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=_atol(q, p0))
    finally:
        torch.set_flush_denormal(False)
