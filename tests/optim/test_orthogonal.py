"""``LearnedUpdateConfig.orthogonal``: each 2-D weight matrix (and with ``orthogonal_conv`` each convolution kernel)
steps along its orthogonalized Adam momentum (5 Newton-Schulz iterations) at the RMS of the Adam direction it
replaces; every other parameter keeps Adam's direction; the optimizer's fast step takes the same direction."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lopt_graphs.optim import NeuralGraphOptimizer, load_learned_update
from lopt_graphs.optim.functional import (
    _rms,
    auto_orthogonal_dtype,
    entry_features,
    init_state,
    orthogonal_direction,
    orthogonalize,
)

from .test_fan_in_prior import _Bag, _Net

#: The shipped checkpoint the orthogonal default was derived from (Adam's direction).
FANIN = "v2_calibrated4_es60_fanin"


@pytest.mark.parametrize("shape", [(8, 24), (24, 8), (16, 16)])
def test_orthogonalize_pushes_every_singular_value_near_one(shape):
    m = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    o = orthogonalize(m)
    sv = torch.linalg.svdvals(o)
    assert o.shape == m.shape and sv.min() > 0.6 and sv.max() < 1.25  # the quintic iteration's band, not exactly 1
    cos = torch.sum(o * (u @ vh)) / (o.norm() * (u @ vh).norm())  # and it points along U V^T
    assert cos > 0.98
    assert torch.equal(orthogonalize(torch.zeros(*shape)), torch.zeros(*shape))


def test_the_direction_keeps_the_adam_rms_and_only_2d_weights_ask_for_it():
    g = torch.Generator().manual_seed(1)
    p, grad = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    xs, adam, st = entry_features(p, grad, init_state(p), (0.9, 0.999), 1e-8, (0.5, 0.99))
    xs_o, ortho, st_o = entry_features(p, grad, init_state(p), (0.9, 0.999), 1e-8, (0.5, 0.99), orthogonal=True)
    assert all(torch.equal(a, b) for a, b in zip(xs, xs_o)) and all(torch.equal(st[k], st_o[k]) for k in st)
    torch.testing.assert_close(_rms(ortho), _rms(adam))
    torch.testing.assert_close(ortho, orthogonal_direction(st["m_adam"] / (1 - 0.9), adam))
    sv = torch.linalg.svdvals(ortho)
    assert sv.max() / sv.min() < 2.0 and not torch.allclose(ortho, adam)


#: a conv + linear net and an embedding bag, each with a batch maker
_NETS = pytest.mark.parametrize("net, inputs", [
    (_Net, lambda g: (torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g))),
    (_Bag, lambda g: (torch.randint(0, 1000, (4, 3), generator=g), torch.randint(0, 4, (4,), generator=g)))])


def _one_step(learned, model, x, y):
    opt = NeuralGraphOptimizer.for_module(model, copy.deepcopy(learned), total_steps=10)
    nn.functional.cross_entropy(model(x), y).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    model.zero_grad()
    return delta, opt


@_NETS
def test_only_linear_weights_change_direction(net, inputs):
    torch.manual_seed(0)
    model = net()
    x, y = inputs(torch.Generator().manual_seed(2))
    learned = load_learned_update(FANIN)
    plain, _ = _one_step(learned, model, x, y)
    ortho, opt = _one_step(learned.with_config(orthogonal=True), model, x, y)
    for name in plain:
        if name == "fc.weight":
            assert not torch.allclose(plain[name], ortho[name]), name
        else:  # convolutions, biases, an embedding (stored [in, out]): Adam's direction, the same step
            torch.testing.assert_close(plain[name], ortho[name], msg=name)


@pytest.mark.parametrize("engine", ["c", "eager"])  # the fast step's C loop (where a compiler is) or eager blocks
@pytest.mark.parametrize("encoder_every, conv", [(3, False), (100, False), (3, True)])
def test_the_fast_step_trains_an_orthogonal_update_as_the_reference_step(monkeypatch, encoder_every, conv, engine):
    """With the fast step (every parameter in place, the orthogonalized ones with their direction; encoder steps on
    the reference path) and without it (every step on the reference path), an orthogonal update trains the same."""
    from lopt_graphs.optim import fast_step, native

    if engine == "eager":
        monkeypatch.setenv("LOPT_GRAPHS_NATIVE", "0")
        monkeypatch.setattr(native, "_tried", False)
        monkeypatch.setattr(native, "_lib", None)
        assert not native.available()

    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 4 * 4, 10))  # a 4,608-entry conv and a 5,120-entry matrix: fast-path sizes
    learned = load_learned_update("default")
    assert learned.cfg.orthogonal
    learned = learned.with_config(orthogonal_conv=conv)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(8)]
    runs = {}
    for fast in (True, False):
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(fast_step, "FAST_MIN_NUMEL", float("inf"))
            torch.manual_seed(0)
            net = copy.deepcopy(model)
            opt = NeuralGraphOptimizer.for_module(net, copy.deepcopy(learned), total_steps=8,  # the same maths:
                                                  encoder_every=encoder_every,  # bfloat16 rounds the two apart
                                                  orthogonal_dtype=torch.float32)
            for x, y in batches:
                opt.zero_grad()
                nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
            runs[fast] = ([p.detach().clone() for p in net.parameters()], opt._fast_ok)
    assert runs[True][1] is True and runs[False][1] is None  # the fast step was taken, and not
    for a, b in zip(runs[True][0], runs[False][0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(runs[True][0][-2], model[-1].weight)


def test_the_flag_travels_in_checkpoints_and_old_ones_load_without_it(tmp_path):
    from lopt_graphs.optim import save_checkpoint
    from lopt_graphs.optim.learned import LearnedUpdateConfig

    learned = load_learned_update(FANIN)
    assert learned.cfg.orthogonal is False  # a checkpoint written before the flag
    save_checkpoint(learned.with_config(orthogonal=True), tmp_path / "o.pt")
    assert load_learned_update(str(tmp_path / "o.pt")).cfg.orthogonal is True
    assert LearnedUpdateConfig.from_dict({**learned.cfg.to_dict(), "orthogonal": True}).orthogonal is True


def test_derive_turns_it_on_and_off_and_keeps_the_weights(tmp_path):
    from lopt_graphs.optim.checkpoint import read_checkpoint
    from meta_train.derive import main

    main([f"src={FANIN}", f"dst={tmp_path / 'o.pt'}", "orthogonal=true"])
    a, b = load_learned_update(FANIN), load_learned_update(str(tmp_path / "o.pt"))
    assert b.cfg.orthogonal and b.cfg.fan_in_power == a.cfg.fan_in_power  # the rest of the config kept
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert read_checkpoint(str(tmp_path / "o.pt"))["meta"]["orthogonal"] is True
    main([f"src={tmp_path / 'o.pt'}", f"dst={tmp_path / 'p.pt'}", "orthogonal=false"])
    assert load_learned_update(str(tmp_path / "p.pt")).cfg == a.cfg
    with pytest.raises(ValueError, match="orthogonal"):
        main([f"src={FANIN}", f"dst={tmp_path / 'q.pt'}", "orthogonal=yes"])


def test_the_constructor_overrides_the_checkpoint_setting():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    base = load_learned_update(FANIN)
    ortho = base.with_config(orthogonal=True)
    assert NeuralGraphOptimizer(model.parameters(), ortho).learned.cfg.orthogonal is True
    off = NeuralGraphOptimizer(model.parameters(), ortho, orthogonal=False)
    assert off.learned.cfg.orthogonal is False and ortho.cfg.orthogonal is True  # the given update is unchanged
    assert NeuralGraphOptimizer(model.parameters(), base, orthogonal=True).learned.cfg.orthogonal is True
    with pytest.raises(TypeError, match="orthogonal"):
        NeuralGraphOptimizer(model.parameters(), base, orthogonal=1)


def test_a_convolution_is_orthogonalized_as_its_flattened_matrix():
    g = torch.Generator().manual_seed(4)
    m, adam = torch.randn(8, 3, 3, 3, generator=g), torch.randn(8, 3, 3, 3, generator=g)
    o = orthogonal_direction(m, adam)
    assert o.shape == m.shape
    torch.testing.assert_close(o.reshape(8, 27), orthogonal_direction(m.reshape(8, 27), adam.reshape(8, 27)))
    torch.testing.assert_close(_rms(o), _rms(adam))
    sv = torch.linalg.svdvals(o.reshape(8, 27))
    assert sv.max() / sv.min() < 2.0  # the flattened matrix's singular values pushed together, not each kernel's


@_NETS
def test_orthogonal_conv_changes_convolutions_and_nothing_else(net, inputs):
    torch.manual_seed(0)
    model = net()
    x, y = inputs(torch.Generator().manual_seed(2))
    linear = load_learned_update(FANIN).with_config(orthogonal=True)
    plain, _ = _one_step(linear, model, x, y)
    conv, _ = _one_step(linear.with_config(orthogonal_conv=True), model, x, y)
    for name in plain:
        if name == "conv.weight":
            assert not torch.allclose(plain[name], conv[name]), name
            sv = torch.linalg.svdvals(conv[name].reshape(conv[name].shape[0], -1))
            assert sv.max() / sv.min() < 2.0, name  # the step itself is (nearly) orthogonal: one step from Adam's 0
        else:  # the linear layer as with orthogonal alone; biases and an embedding: Adam's direction
            torch.testing.assert_close(plain[name], conv[name], msg=name)


def test_orthogonal_conv_needs_orthogonal_and_the_constructor_turns_both_off():
    from lopt_graphs.optim.learned import LearnedUpdateConfig

    base = load_learned_update(FANIN)
    with pytest.raises(ValueError, match="orthogonal_conv=True needs orthogonal=True"):
        base.with_config(orthogonal_conv=True)
    assert LearnedUpdateConfig.from_dict(base.cfg.to_dict()).orthogonal_conv is False  # old checkpoints load
    both = base.with_config(orthogonal=True, orthogonal_conv=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    off = NeuralGraphOptimizer(model.parameters(), both, orthogonal=False).learned.cfg
    assert off.orthogonal is False and off.orthogonal_conv is False


def test_derive_orthogonal_conv(tmp_path):
    from lopt_graphs.optim.checkpoint import read_checkpoint
    from meta_train.derive import main

    main([f"src={FANIN}", f"dst={tmp_path / 'c.pt'}", "orthogonal_conv=true"])  # turns orthogonal on too
    cfg = load_learned_update(str(tmp_path / "c.pt")).cfg
    assert cfg.orthogonal and cfg.orthogonal_conv
    assert read_checkpoint(str(tmp_path / "c.pt"))["meta"]["orthogonal_conv"] is True
    main([f"src={tmp_path / 'c.pt'}", f"dst={tmp_path / 'l.pt'}", "orthogonal_conv=false"])
    cfg = load_learned_update(str(tmp_path / "l.pt")).cfg
    assert cfg.orthogonal and not cfg.orthogonal_conv
    main([f"src={tmp_path / 'c.pt'}", f"dst={tmp_path / 'a.pt'}", "orthogonal=false"])
    assert load_learned_update(str(tmp_path / "a.pt")).cfg == load_learned_update(FANIN).cfg
    with pytest.raises(ValueError, match="orthogonal=false with orthogonal_conv=true"):
        main([f"src={FANIN}", f"dst={tmp_path / 'q.pt'}", "orthogonal=false", "orthogonal_conv=true"])
    with pytest.raises(ValueError, match="orthogonal_conv"):
        main([f"src={FANIN}", f"dst={tmp_path / 'q.pt'}", "orthogonal_conv=1"])


@pytest.mark.parametrize("big", [False, True])  # the reference step alone, and the fast step with it
def test_weights_that_feed_a_batchnorm_spend_no_newton_schulz(monkeypatch, big):
    """Their learned step is replaced by the base step (``bn_weights="base"``), so their direction is Adam's and
    only the linear layer is orthogonalized."""
    from lopt_graphs.optim import functional

    width = 64 if big else 4  # 64 x 3 x 3 x 3... and a 64 * 6 * 6 * 10 = 23,040-entry linear: fast-path sizes
    model = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Flatten(),
                          nn.Linear(width * 6 * 6, 10))
    calls = []
    real = functional.orthogonalize
    monkeypatch.setattr(functional, "orthogonalize",
                        lambda m, steps=5, dtype=None: calls.append(tuple(m.shape)) or real(m, steps, dtype))
    learned = load_learned_update(FANIN).with_config(orthogonal=True, orthogonal_conv=True)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    deltas = {}
    for cfg in (learned, learned.with_config(orthogonal_conv=False)):
        torch.manual_seed(0)
        net = copy.deepcopy(model)
        before = [p.detach().clone() for p in net.parameters()]
        opt = NeuralGraphOptimizer.for_module(net, copy.deepcopy(cfg), total_steps=10)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        deltas[cfg.cfg.orthogonal_conv] = [p.detach() - b for p, b in zip(net.parameters(), before)]
    mine = [c for c in calls if c in {(10, width * 36), (width, 27)}]  # not the fast step's one-off check's
    assert mine == [(10, width * 36)] * 2  # the linear layer's matrix only, once per optimizer
    for a, b in zip(deltas[True], deltas[False]):
        torch.testing.assert_close(a, b)
    assert deltas[True][0].abs().sum() > 0


def test_bfloat16_iterations_stay_close_to_float32_and_return_float32():
    m = torch.randn(48, 160, generator=torch.Generator().manual_seed(6))
    full, half = orthogonalize(m), orthogonalize(m, dtype=torch.bfloat16)
    assert half.dtype == torch.float32 and half.shape == m.shape
    rel = float((half - full).norm() / full.norm())
    assert 1e-4 < rel < 0.05  # rounded (not silently float32), and still the same direction
    assert torch.equal(orthogonalize(m, dtype=torch.float32), full)
    adam = torch.randn(48, 160, generator=torch.Generator().manual_seed(7))
    d = orthogonal_direction(m, adam, torch.bfloat16)
    assert d.dtype == torch.float32 and torch.isclose(_rms(d), _rms(adam), rtol=1e-4)


def test_auto_orthogonal_dtype_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert auto_orthogonal_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert auto_orthogonal_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # small matrices stay in float32
    assert auto_orthogonal_dtype("cpu", (256, 784)) == torch.bfloat16 == auto_orthogonal_dtype("cpu", (784, 256))
    assert auto_orthogonal_dtype("cpu", (64, 784)) == torch.float32 == auto_orthogonal_dtype("cpu", (64, 64))
    assert auto_orthogonal_dtype("cpu", (128, 64, 3, 3)) == torch.bfloat16  # a kernel: its [128, 576] matrix
    assert auto_orthogonal_dtype("cpu", (16, 8, 3, 3)) == torch.float32
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe: the safe choice
    assert auto_orthogonal_dtype("cpu") == torch.float32
    assert auto_orthogonal_dtype("meta") == torch.float32


@pytest.mark.parametrize("big", [False, True])  # the reference step, and the fast step
@pytest.mark.parametrize("dtype", [None, torch.bfloat16, "auto"])
def test_the_optimizer_runs_the_iterations_in_orthogonal_dtype(monkeypatch, big, dtype):
    from lopt_graphs.optim import functional

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(functional, "AUTO_BF16_MIN_WORK", 0)  # "auto" means bfloat16 here, at any size
    seen = []
    real = functional.orthogonalize
    monkeypatch.setattr(functional, "orthogonalize",
                        lambda m, steps=5, dtype=None: seen.append(dtype) or real(m, steps, dtype))
    width = 96 if big else 8
    net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    opt = NeuralGraphOptimizer(net.parameters(), load_learned_update(FANIN).with_config(orthogonal=True),
                               total_steps=10, orthogonal_dtype=dtype)
    x, y = torch.randn(16, 64, generator=torch.Generator().manual_seed(8)), torch.arange(16) % 10
    for _ in range(3):  # step 3 is a usual step: the fast one when big
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    want = torch.bfloat16 if dtype in (torch.bfloat16, "auto") else torch.float32  # None: the compute dtype
    mine = seen[-2:]  # the last step's two weight matrices (the fast step's one-off check runs the default)
    assert mine == [want, want]
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("bad", [torch.int32, "bfloat16", 16])
def test_a_bad_orthogonal_dtype_is_refused(bad):
    with pytest.raises(TypeError, match="orthogonal_dtype"):
        NeuralGraphOptimizer(nn.Linear(4, 2).parameters(), orthogonal_dtype=bad)
