"""Transformer tasks of meta-training: their graphs, stacked (vmapped) losses, families and errors."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch
from torch.func import grad_and_value, vmap

from lopt_graphs.data import load_embedded
from lopt_graphs.optim import LearnedUpdate, NeuralGraphOptimizer
from meta_train.estimators import AntitheticES, TruncatedBackprop
from meta_train.runs import new_group
from meta_train.tasks import (
    FAMILIES,
    HELD_OUT,
    VALIDATION,
    VALIDATION_TRANSFORMER,
    Task,
    TaskConfig,
    arch_key,
    build_module,
    num_activations,
    sample_group,
)
from meta_train.unroll import Stepper, ThetaSpace, unroll

DATASETS = ("digits", "mnist5k", "mnist1d")
#: (tokens, features) of each dataset's examples
TOKENS = {"digits": (8, 8), "mnist5k": (28, 28), "mnist1d": (10, 4)}
SMALL = TaskConfig("mnist1d", "transformer", (8, 8), "gelu", 8, 1.0)


@pytest.mark.parametrize("dataset", DATASETS)
def test_graph_holds_everything_but_the_in_projections(dataset):
    task = Task(TaskConfig(dataset, "transformer", (16, 16), "relu", 32, 1.0))
    spec, names = task.spec, task.names
    assert [names[i] for i in spec.free_params] == [f"layers.{i}.self_attn.in_proj_{k}" for i in range(2)
                                                     for k in ("weight", "bias")]
    t, f = TOKENS[dataset]
    assert int((spec.node_role == 0).sum()) == f + t  # token features and positions are the inputs
    pos = spec.params[names.index("pos.weight")]
    assert pos.kind == "edge" and pos.transposed and pos.shape == (t, 16)
    assert len(spec.hidden_sets()) == 2  # each layer's feed-forward neurons; the stream is pinned
    with torch.no_grad():
        assert task.logits(task.init_params(torch.Generator()), task.data.x_test[:3]).shape == (3, 10)


def test_meta_training_sees_the_graph_the_optimizer_uses():
    task = Task(VALIDATION_TRANSFORMER[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # for_module names the graph-free in-projections
        spec = NeuralGraphOptimizer.for_module(task.new_model(torch.Generator())).graph_spec()
    assert [p.kind for p in spec.params] == [p.kind for p in task.spec.params]
    assert torch.equal(spec.edge_index, task.spec.edge_index) and torch.equal(spec.node_role, task.spec.node_role)


def test_stacked_tasks_give_the_per_task_losses_and_gradients():
    a, b = Task(SMALL), Task(replace(SMALL, init_scale=0.6))
    assert a.module is b.module
    gen = torch.Generator().manual_seed(0)
    pa, pb = a.init_params(gen), b.init_params(gen)
    (xa, ya), (xb, yb) = a.batches(gen, 1), b.batches(gen, 1)
    params = [torch.stack(p) for p in zip(pa, pb)]
    x, y = torch.cat([xa, xb]), torch.cat([ya, yb])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no vmap fallback of the fused attention kernel
        grads, losses = vmap(grad_and_value(a.loss))(params, x, y)
    for j, (task, p) in enumerate(((a, pa), (b, pb))):
        g, loss = grad_and_value(task.loss)(p, x[j], y[j])
        torch.testing.assert_close(losses[j], loss, rtol=1e-5, atol=1e-6)
        for gs, g1 in zip(grads, g):
            torch.testing.assert_close(gs[j], g1, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(losses[0], losses[1])


def test_a_stacked_group_unrolls_as_separate_runs():
    """The estimators' nested vmap over a group = one unroll per task, except the attention's key bias: its
    gradient is zero but for rounding (softmax ignores a shift shared by all keys), which the learned update's
    normalized features blow up, so it drifts by rounding noise (the function does not depend on it)."""
    torch.manual_seed(0)
    learned = LearnedUpdate()
    space, stepper = ThetaSpace(learned), Stepper(learned)
    theta = space.flatten(learned)
    gen = torch.Generator().manual_seed(4)
    runs = new_group([SMALL, replace(SMALL, init_scale=1.5)], gen, 100)
    xs, ys = runs.batches(gen, 3)
    out = TruncatedBackprop(stepper, space, 1e-2, 100.0).estimate(theta, runs, (xs, ys), None, [0])
    losses = []
    for j, task in enumerate(runs.tasks):
        p = [q[j] for q in runs.params]
        loss, (p1, _) = unroll(stepper, space, theta, task, p, [{} for _ in p], 0, xs[j], ys[j], 100.0)
        losses.append(loss)
        for name, a, b in zip(task.names, p1, out.runs.params):
            if name.endswith("in_proj_bias"):
                a, b = torch.cat([a[:8], a[16:]]), torch.cat([b[j][:8], b[j][16:]])  # q and v biases
            else:
                b = b[j]
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.meta_loss, torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)
    es = AntitheticES(stepper, space, 1e-2, 100.0).estimate(theta, runs, (xs, ys), torch.zeros(2, 1, space.dim), [0])
    torch.testing.assert_close(es.meta_loss, out.meta_loss, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0


def test_init_draws_every_parameter_and_follows_pytorch_defaults():
    task = Task(SMALL)
    p1, p2 = task.init_params(torch.Generator().manual_seed(0)), task.init_params(torch.Generator().manual_seed(1))
    drawn = [n for n, x, y in zip(task.names, p1, p2) if not torch.equal(x, y)]
    assert "layers.0.self_attn.in_proj_weight" in drawn and "pos.weight" in drawn
    zeros = {"layers.0.self_attn.in_proj_bias", "layers.0.self_attn.out_proj.bias"}  # as nn.MultiheadAttention
    assert set(task.names) - set(drawn) == zeros | {"layers.0.norm1.weight", "layers.0.norm1.bias",
                                                    "layers.0.norm2.weight", "layers.0.norm2.bias",
                                                    "layers.1.self_attn.in_proj_bias",
                                                    "layers.1.self_attn.out_proj.bias", "layers.1.norm1.weight",
                                                    "layers.1.norm1.bias", "layers.1.norm2.weight",
                                                    "layers.1.norm2.bias"}
    assert all(not p.any() for n, p in zip(task.names, p1) if n in zeros)


def test_activations_count_the_attention_outputs_and_scores():
    one = replace(SMALL, widths=(8,), batch_size=1)
    t, d = TOKENS["mnist1d"]
    # per layer and example: attention output, dropout1, norm1, linear1 (2d), dropout (2d), linear2, dropout2,
    # norm2 (10 T d in all) and the scores of 2 heads (2 T T)
    assert num_activations(SMALL) - 8 * num_activations(one) == 8 * (10 * t * 8 + 2 * t * t)
    gen = torch.Generator().manual_seed(0)
    cfgs = sample_group("mnist5k_transformer", gen, 4, max_activations=200_000)
    assert len(cfgs) == max(1, min(4, 200_000 // num_activations(cfgs[0])))


@pytest.mark.parametrize("family", [f"{d}_transformer" for d in DATASETS] + ["mixture_v3"])
def test_families_are_deterministic_and_sample_valid_configs(family):
    first = FAMILIES[family](torch.Generator().manual_seed(7))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    draws = [FAMILIES[family](g1) for _ in range(80)]
    assert draws == [FAMILIES[family](g2) for _ in range(80)] and draws[0] == first
    tf = [c for c in draws if c.arch == "transformer"]
    for c in tf:
        assert len(c.widths) in (1, 2) and len(set(c.widths)) == 1 and c.widths[0] in (16, 32)
        assert c.activation in ("relu", "gelu") and c.batch_size in (32, 64, 128) and 0.5 <= c.init_scale <= 2.0
        assert c not in HELD_OUT and c not in VALIDATION
    if family == "mixture_v3":
        assert 8 <= len(tf) <= 32  # 1 in 4
        assert {c.dataset for c in tf} == set(DATASETS) and {c.arch for c in draws} == {"mlp", "cnn", "transformer"}
    else:
        assert len(tf) == len(draws) and {c.dataset for c in tf} == {family.split("_")[0]}
        assert {len(c.widths) for c in tf} == {1, 2} and {c.widths[0] for c in tf} == {16, 32}
        assert {c.activation for c in tf} == {"relu", "gelu"}
    for key in {arch_key(c) for c in tf}:  # every sampled architecture builds and traces
        Task(next(c for c in tf if arch_key(c) == key))


def test_validation_candidate_is_in_the_family_and_apart_from_the_selection_sets():
    (c,) = VALIDATION_TRANSFORMER
    assert c.arch == "transformer" and c not in VALIDATION and c not in HELD_OUT
    gen = torch.Generator().manual_seed(0)
    assert any(replace(d, init_scale=1.0) == c for d in (FAMILIES["digits_transformer"](gen) for _ in range(200)))


@pytest.mark.parametrize("cfg, match", [
    (TaskConfig("digits", "transformer", (16,), "tanh"), "Invalid activation for arch 'transformer': 'tanh'"),
    (TaskConfig("digits", "transformer", (16, 32), "relu"), r"Invalid widths for arch 'transformer': \(16, 32\)"),
    (TaskConfig("digits", "transformer", (), "relu"), r"Invalid widths for arch 'transformer': \(\)"),
    (TaskConfig("digits", "rnn", (16,), "relu"), "Unknown arch 'rnn'"),
])
def test_bad_configs_raise_value_errors_naming_the_value(cfg, match):
    data = load_embedded(cfg.dataset, seed=0)
    with pytest.raises(ValueError, match=match):
        build_module(cfg, data.input_shape, data.num_classes)
    with pytest.raises(ValueError, match=match):
        Task(cfg)
