"""The meta-training harness's parts: tasks, unrolls and gradient estimators."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lopt_graphs.optim import LearnedUpdate
from meta_train.estimators import PES, AntitheticES, FullRunES, TruncatedBackprop, make_estimator
from meta_train.runs import RunGroup, new_group
from meta_train.tasks import FAMILIES, HELD_OUT, Task, TaskConfig, arch_key, sample_group, sample_task
from meta_train.unroll import Stepper, ThetaSpace, unroll


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    learned = LearnedUpdate()
    with torch.no_grad():
        learned.w2.normal_(0, 0.3)
    space = ThetaSpace(learned)
    return learned, space, Stepper(learned), space.flatten(learned)


TINY = TaskConfig("digits", "mlp", (8,), "tanh", 16, 1.0)


def test_families_sample_every_kind_and_never_held_out():
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(60):
        t = FAMILIES["mixture"](gen)
        seen.add((t.dataset, t.arch))
        assert t not in HELD_OUT
        assert t.activation != "elu" and not set(t.widths) & {12, 24, 48, 96}
    assert len(seen) == 6
    with pytest.raises(ValueError, match="Unknown task family 'nope'"):
        sample_task("nope", gen)


def test_broad_mixture_samples_wide_deep_and_small_batch_but_never_held_out():
    gen = torch.Generator().manual_seed(0)
    cfgs = [FAMILIES["mixture_broad"](gen) for _ in range(120)]
    assert {(t.dataset, t.arch) for t in cfgs} == {(d, a) for d in ("digits", "mnist5k", "mnist1d")
                                                  for a in ("mlp", "cnn")}
    mlps, cnns = [t for t in cfgs if t.arch == "mlp"], [t for t in cfgs if t.arch == "cnn"]
    assert max(max(t.widths) for t in mlps) == 256 and max(len(t.widths) for t in mlps) == 4
    assert max(max(t.widths) for t in cnns) == 64 and max(len(t.widths) for t in cnns) <= 3
    assert 16 in {t.batch_size for t in cfgs}
    for t in cfgs:
        assert t not in HELD_OUT
        assert t.activation != "elu" and not set(t.widths) & {12, 24, 48, 96} and t.batch_size != 256


def test_mixture_draws_from_its_six_families_only():
    # (it once drew from sorted(FAMILIES) at call time, so registering a family changed its task stream)
    gen = torch.Generator().manual_seed(0)
    names = [FAMILIES["mixture"](gen).name for _ in range(3)]
    assert names == ["mnist1d_cnn_64-16_silu_b32_s0.99", "digits_mlp_16-64_gelu_b32_s0.63",
                     "mnist5k_cnn_16_relu_b128_s0.74"]
    assert all(not t.widths or max(t.widths) <= 64 for t in (FAMILIES["mixture"](gen) for _ in range(40)))


def test_task_is_deterministic_for_a_seed():
    a, b = Task(TINY), Task(TINY)
    pa, pb = a.init_params(torch.Generator().manual_seed(3)), b.init_params(torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    xa, _ = a.batches(torch.Generator().manual_seed(3), 2)
    xb, _ = b.batches(torch.Generator().manual_seed(3), 2)
    assert torch.equal(xa, xb) and xa.shape == (2, 16, 1, 8, 8)


def test_theta_space_round_trip():
    learned, space, _, theta = _setup()
    assert theta.shape == (space.dim,) and space.dim == sum(p.numel() for p in learned.parameters())
    space.load_into(learned, theta * 2)
    assert torch.equal(space.flatten(learned), theta * 2)


def test_unroll_under_vmap_matches_a_loop_and_meta_loss_is_capped():
    _, space, stepper, theta = _setup()
    task, gen = Task(TINY), torch.Generator().manual_seed(0)
    params = task.init_params(gen)
    xs, ys = task.batches(gen, 3)
    thetas = theta + 0.01 * torch.randn(3, space.dim, generator=gen)
    f = lambda th: unroll(stepper, space, th, task, params, [{} for _ in params], 0, xs, ys, 10.0)[0]  # noqa: E731
    torch.testing.assert_close(torch.func.vmap(f)(thetas), torch.stack([f(t) for t in thetas]), rtol=1e-5, atol=1e-6)
    capped = unroll(stepper, space, theta, task, params, [{} for _ in params], 0, xs, ys, 0.5)[0]
    assert capped.item() == pytest.approx(0.5)


def _group(n: int, gen: torch.Generator, cfg: TaskConfig = TINY) -> RunGroup:
    cfgs = [cfg] + [replace(cfg, init_scale=0.5 + 0.5 * i) for i in range(1, n)]
    return new_group(cfgs, gen, 100)


def test_tasks_of_one_architecture_share_one_traced_module_and_spec():
    a, b = Task(TINY), Task(replace(TINY, init_scale=2.0, batch_size=32))
    assert a.module is b.module and a.spec is b.spec
    pa = a.init_params(torch.Generator().manual_seed(0))
    pb = b.init_params(torch.Generator().manual_seed(0))
    assert all(torch.allclose(2 * x, y) for x, y in zip(pa, pb))  # same draw, own init scale
    assert Task(replace(TINY, widths=(9,))).module is not a.module
    cfgs = sample_group("mixture", torch.Generator().manual_seed(0), 5)
    assert len({arch_key(c) for c in cfgs}) == 1 and len({c.batch_size for c in cfgs}) == 1
    assert len({c.init_scale for c in cfgs}) > 1
    with pytest.raises(ValueError, match="one architecture and batch size"):
        new_group([TINY, replace(TINY, widths=(9,))], torch.Generator(), 10)


@pytest.mark.parametrize("cfg", [TINY, TaskConfig("mnist1d", "cnn", (4,), "relu", 8, 1.0, kernel=5)])
def test_a_batched_group_gives_the_per_task_losses_of_unbatched_runs(cfg):
    """N tasks stacked in one vmap call = N separate unrolls (to float tolerance), trajectories included."""
    _, space, stepper, theta = _setup()
    gen = torch.Generator().manual_seed(4)
    runs = _group(3, gen, cfg)
    xs, ys = runs.batches(gen, 4)
    tb = TruncatedBackprop(stepper, space, 1e-2, 100.0)
    out = tb.estimate(theta, runs, (xs, ys), None, [0])
    single = []
    for j, task in enumerate(runs.tasks):
        p = [q[j] for q in runs.params]
        loss, (p1, _) = unroll(stepper, space, theta, task, p, [{} for _ in p], 0, xs[j], ys[j], 100.0)
        single.append(loss)
        for a, b in zip(p1, out.runs.params):
            torch.testing.assert_close(b[j], a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.meta_loss, torch.stack(single).mean(), rtol=1e-5, atol=1e-6)
    es = AntitheticES(stepper, space, 1e-2, 100.0).estimate(theta, runs, (xs, ys), torch.zeros(3, 1, space.dim), [0])
    torch.testing.assert_close(es.meta_loss, out.meta_loss, rtol=1e-5, atol=1e-6)
    assert out.runs.step == es.runs.step == 4 and runs.step == 0  # the input record is left as it was


def test_es_pair_difference_matches_the_backprop_directional_derivative():
    """(L(theta + s e) - L(theta - s e)) / 2s ~ grad . e: ES and TBPTT see the same meta-loss."""
    _, space, stepper, theta = _setup()
    gen = torch.Generator().manual_seed(1)
    runs = _group(1, gen)
    batches = runs.batches(gen, 3)
    g = TruncatedBackprop(stepper, space, 1e-2, 100.0).estimate(theta, runs, batches, None, [0]).grad
    k = int(g.abs().argmax())  # the most sensitive coordinate
    e = torch.zeros(1, 1, space.dim)
    e[0, 0, k] = 1.0
    es = AntitheticES(stepper, space, 1e-2, 100.0).estimate(theta, runs, batches, e, [0])
    # ES's gradient along e is the pair difference / 2 sigma
    assert es.grad[k].item() == pytest.approx(g[k].item(), rel=0.1)


def test_pes_accumulates_perturbations_and_keeps_member_states():
    _, space, stepper, theta = _setup()
    gen = torch.Generator().manual_seed(2)
    runs = _group(2, gen)
    pes = PES(stepper, space, 1e-2, 100.0)
    e1, e2 = torch.randn(2, 2, space.dim, generator=gen), torch.randn(2, 2, space.dim, generator=gen)
    r1 = pes.estimate(theta, runs, runs.batches(gen, 2), e1, [0, 1]).runs
    assert r1.step == 2 and r1.member_params[0].shape[:2] == (2, 4)  # 2 runs x (2 pairs -> 4 members)
    out = pes.estimate(theta, r1, r1.batches(gen, 2), e2, [0, 1])
    torch.testing.assert_close(out.runs.xi, e1 + e2)
    assert not torch.equal(out.runs.member_params[0], r1.member_params[0])
    # members of one pair move apart: + and - perturbations give different trajectories
    assert not torch.equal(out.runs.member_params[0][:, 0], out.runs.member_params[0][:, 2])


def test_full_run_es_over_truncations_is_antithetic_es_over_the_whole_run():
    """One perturbation per pair from the reset on: two 2-step truncations give the ES gradient of the 4-step
    run (mean_loss averages a truncation's steps, so the 4-step gradient is the mean of the two), and the
    second draw of noise is ignored."""
    _, space, stepper, theta = _setup()
    gen = torch.Generator().manual_seed(3)
    runs = _group(2, gen)
    xs, ys = runs.batches(gen, 4)
    e1, e2 = torch.randn(2, 2, space.dim, generator=gen), torch.randn(2, 2, space.dim, generator=gen)
    whole = AntitheticES(stepper, space, 1e-2, 100.0).estimate(theta, runs, (xs, ys), e1, [0, 1])
    fes = FullRunES(stepper, space, 1e-2, 100.0)
    a = fes.estimate(theta, runs, (xs[:, :2], ys[:, :2]), e1, [0, 1])
    b = fes.estimate(theta, a.runs, (xs[:, 2:], ys[:, 2:]), e2, [0, 1])
    torch.testing.assert_close(b.runs.xi, e1)
    torch.testing.assert_close((a.grad + b.grad) / 2, whole.grad, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(a.grad, b.grad)  # each truncation carries its own signal
    assert b.runs.step == 4 and b.runs.member_params[0].shape[:2] == (2, 4)


@pytest.mark.parametrize("name", ["es", "pes", "full_es"])
def test_es_estimators_record_no_autograd_graph_through_frozen_weights(name, monkeypatch):
    """Frozen weights are nn.Parameters the unroll reads from the module: with autograd on, a truncation's
    whole unroll stayed recorded (~20 GB on a group of 64-channel MNIST CNNs). ES-type estimators only
    evaluate losses, so they unroll with autograd off; the inner gradients are torch.func transforms."""
    learned, _, stepper, _ = _setup()
    space = ThetaSpace(learned, frozen=("encoder.",))
    assert any(p.requires_grad for n, p in learned.named_parameters() if n.startswith("encoder."))
    theta = space.flatten(learned)
    est = make_estimator(name, stepper, space, 1e-2, 100.0)
    seen = []
    make = est._unroll_fn

    def spy(runs):
        f = make(runs)
        return lambda *a: (seen.append(torch.is_grad_enabled()), f(*a))[1]

    monkeypatch.setattr(est, "_unroll_fn", spy)
    gen = torch.Generator().manual_seed(4)
    runs = _group(2, gen)
    out = est.estimate(theta, runs, runs.batches(gen, 2), torch.randn(2, 1, space.dim, generator=gen), [0])
    assert seen and not any(seen)
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0  # the loss differences still count


def test_make_estimator_rejects_unknown_names():
    _, space, stepper, _ = _setup()
    assert isinstance(make_estimator("es", stepper, space, 0.1, 3.0), AntitheticES)
    assert isinstance(make_estimator("full_es", stepper, space, 0.1, 3.0), FullRunES)
    with pytest.raises(ValueError, match="Unknown estimator 'sgd'"):
        make_estimator("sgd", stepper, space, 0.1, 3.0)


def test_initial_learned_update_overrides_mag_clip_and_keeps_weights():
    from lopt_graphs.optim import load_learned_update
    from meta_train.config import MetaTrainConfig
    from meta_train.trainer import initial_learned_update
    base = load_learned_update("meta_tbptt_1100")
    kept = initial_learned_update("meta_tbptt_1100", 0.0)
    clipped = initial_learned_update("meta_tbptt_1100", 3.0)
    assert kept.cfg.mag_clip == 10.0 and clipped.cfg.mag_clip == 3.0
    for (n, a), (_, b) in zip(base.named_parameters(), clipped.named_parameters()):
        assert torch.equal(a, b), n
    assert initial_learned_update("", 2.0).cfg.mag_clip == 2.0
    with pytest.raises(ValueError, match="mag_clip=-1.0"):
        MetaTrainConfig(mag_clip=-1)


def test_derive_writes_the_same_weights_with_a_new_mag_clip(tmp_path):
    from lopt_graphs.optim import load_learned_update
    from lopt_graphs.optim.checkpoint import read_checkpoint
    from meta_train.derive import derive
    derive("meta_tbptt_1100", tmp_path / "c.pt", 3.0)
    a, b = load_learned_update("meta_tbptt_1100"), load_learned_update(str(tmp_path / "c.pt"))
    assert b.cfg.mag_clip == 3.0 and all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    meta = read_checkpoint(str(tmp_path / "c.pt"))["meta"]
    assert meta["derived_from"] == "meta_tbptt_1100" and meta["meta_train_step"] == 1100
    with pytest.raises(ValueError, match="Invalid mag_clip: 0"):
        derive("meta_tbptt_1100", tmp_path / "d.pt", 0.0)


def test_derive_mag_affine_maps_the_log_step_and_keeps_the_direction(tmp_path):
    from lopt_graphs.optim import load_learned_update
    from lopt_graphs.optim.checkpoint import read_checkpoint
    from lopt_graphs.optim.learned import FEATURES, head
    from meta_train.derive import derive
    derive("meta_tbptt_1100", tmp_path / "c.pt", 3.0, (0.25, -0.8))
    a, b = load_learned_update("meta_tbptt_1100"), load_learned_update(str(tmp_path / "c.pt"))
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(5, 7, generator=gen) for _ in FEATURES]
    ctx_t = torch.randn(a.cfg.head_hidden, 5, 7, generator=gen)
    sb = torch.randn(a.cfg.head_hidden, generator=gen)
    (da, ma), (db, mb) = (head(xs, lambda h: ctx_t[h], m.head_weights(), sb) for m in (a, b))
    torch.testing.assert_close(db, da)
    torch.testing.assert_close(b.cfg.mag_scale * mb, 0.25 * (a.cfg.mag_scale * ma) - 0.8)
    assert b.cfg.mag_clip == 3.0
    assert read_checkpoint(str(tmp_path / "c.pt"))["meta"]["mag_affine"] == [0.25, -0.8]
    with pytest.raises(ValueError, match=r"Invalid mag_affine: \(0.0, 1.0\)"):
        derive("meta_tbptt_1100", tmp_path / "d.pt", 3.0, (0.0, 1.0))
    assert not (tmp_path / "d.pt").exists()
