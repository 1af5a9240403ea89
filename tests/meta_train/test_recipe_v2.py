"""Recipe v2 of meta-training: the final-loss-weighted log objective, sampled horizons, augmentation,
group-size budgets and validation-based selection."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from lopt_graphs.optim import LearnedUpdate, load_learned_update
from lopt_graphs.optim.learned import v2_config
from meta_train.config import load_config
from meta_train.tasks import (
    HELD_OUT,
    IN_DISTRIBUTION,
    VALIDATION,
    VALIDATION_LONG,
    Task,
    TaskConfig,
    num_activations,
    num_params,
    sample_group,
)
from meta_train.unroll import Stepper, ThetaSpace, unroll

TINY = TaskConfig("digits", "mlp", (8,), "tanh", 16, 1.0)


def _tiny_run():
    """A fresh v2 update and a TINY task: ``(stepper, space, theta, task, params, states, xs, ys)``, 4 batches."""
    learned = LearnedUpdate(v2_config())
    space, stepper = ThetaSpace(learned), Stepper(learned)
    task, gen = Task(TINY), torch.Generator().manual_seed(0)
    params = task.init_params(gen)
    xs, ys = task.batches(gen, 4)
    return stepper, space, space.flatten(learned), task, params, [{} for _ in params], xs, ys


def test_log_late_objective_is_the_weighted_mean_of_log_losses():
    stepper, space, theta, task, params, states, xs, ys = _tiny_run()
    got, _ = unroll(stepper, space, theta, task, params, states, 10, xs, ys, 100.0, objective="log_late", length=40,
                    total_steps=40)
    losses, p, s = [], params, states  # the same steps one at a time: each one's pre-update loss
    for k in range(4):
        loss, (p, s) = unroll(stepper, space, theta, task, p, s, 10 + k, xs[k:k + 1], ys[k:k + 1], 100.0,
                              total_steps=40)
        losses.append(loss.item())
    want = sum(2 * (11 + k) / 40 * math.log(v / math.log(10)) for k, v in enumerate(losses)) / 4
    assert got.item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="needs the run length"):
        unroll(stepper, space, theta, task, params, states, 0, xs, ys, 100.0, objective="log_late")


def test_log_final_objective_scores_the_offset_loss_over_the_last_fifth():
    from meta_train.unroll import LOSS_OFFSET
    from meta_train.validate import SCORE_OFFSET
    assert LOSS_OFFSET == SCORE_OFFSET == 0.01  # the objective scores what validation scores
    stepper, space, theta, task, params, states, xs, ys = _tiny_run()
    losses, p, s = [], params, states
    for k in range(4):
        loss, (p, s) = unroll(stepper, space, theta, task, p, s, 14 + k, xs[k:k + 1], ys[k:k + 1], 100.0,
                              total_steps=20)
        losses.append(loss.item())
    # steps 15..18 of a 20-step run: only 17 and 18 are in the last fifth (t > 16), weighted 1 / 0.2
    got, _ = unroll(stepper, space, theta, task, params, states, 14, xs, ys, 100.0, objective="log_final",
                    length=20, total_steps=20)
    want = sum(5.0 * math.log((v + 0.01) / math.log(10)) for v in losses[2:]) / 4
    assert got.item() == pytest.approx(want, rel=1e-5)
    early, _ = unroll(stepper, space, theta, task, params, states, 0, xs, ys, 100.0, objective="log_final",
                      length=20, total_steps=20)
    assert early.item() == 0.0  # before the last fifth nothing is scored
    with pytest.raises(ValueError, match="'log_final' needs the run length"):
        unroll(stepper, space, theta, task, params, states, 0, xs, ys, 100.0, objective="log_final")
    with pytest.raises(ValueError, match="Unknown objective 'final'"):
        unroll(stepper, space, theta, task, params, states, 0, xs, ys, 100.0, objective="final", length=20)


def test_group_budget_and_input_scale_augmentation():
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        cfgs = sample_group("mixture", gen, 8, input_scale=2.0, max_params=20000)
        assert 1 <= len(cfgs) <= max(1, 20000 // num_params(cfgs[0]))
        assert all(0.5 <= c.input_scale <= 2.0 for c in cfgs)
    big = TaskConfig("mnist5k", "cnn", (64,), "silu", 128, 1.0)  # 1,290 parameters, 3.2M activation values
    assert num_activations(big) == 128 * num_activations(replace(big, batch_size=1)) > 3_000_000
    capped = []
    for _ in range(30):
        cfgs = sample_group("mixture", gen, 4, max_params=20000, max_activations=2_000_000)
        assert len(cfgs) == 1 or len(cfgs) * num_activations(cfgs[0]) <= 2_000_000
        capped.append(len(cfgs) < min(4, 20000 // num_params(cfgs[0])))
    assert any(capped)  # some MNIST CNN groups shrink on activations alone
    c = replace(TINY, input_scale=3.0)
    x1, _ = Task(c).batches(torch.Generator().manual_seed(1), 1)
    x0, _ = Task(TINY).batches(torch.Generator().manual_seed(1), 1)
    torch.testing.assert_close(x1, 3.0 * x0)
    assert "_x3.00" in c.name and "_x" not in TINY.name


def test_sampled_and_hidden_horizons():
    from meta_train.trainer import MetaTrainer
    cfg = load_config(None, ["learned=v2", "objective=log_late", "horizon=200", "horizon_min=20", "truncation=10",
                             "groups=6", "tasks_per_group=1", "hidden_horizon_prob=0.5", "wandb=false", "seed=3"])
    tr = MetaTrainer(cfg)
    tr.runs = [tr._new_group(i) for i in range(6)]
    lengths = [r.length for r in tr.runs]
    assert all(20 <= n <= 200 and n % 10 == 0 for n in lengths) and len(set(lengths)) > 1
    known = {r.horizon_known for r in tr.runs}
    assert known == {True, False}
    assert all((r.total_steps is None) != r.horizon_known for r in tr.runs)


def test_validation_set_is_disjoint_from_the_evaluation_sets():
    from benchmarks.suite.tasks import suite_tasks
    val = set(VALIDATION) | {c for c, _ in VALIDATION_LONG}
    assert len(val) == len(VALIDATION) + len(VALIDATION_LONG)
    assert not val & (set(IN_DISTRIBUTION) | set(HELD_OUT))
    suite = {replace(t.config, init_scale=1.0) for t in suite_tasks("default")}
    assert not {replace(c, init_scale=1.0) for c in val} & suite
    # wide, deep, small-batch and long runs are represented
    assert any(max(c.widths) >= 128 for c in val) and any(len(c.widths) >= 3 for c in val)
    assert any(c.batch_size <= 16 for c in val) and VALIDATION_LONG


def test_validation_references_must_match_the_tasks(tmp_path):
    from meta_train.trainer import MetaTrainer
    from meta_train.validate import adam_references, references_match, validation_score
    tasks = (VALIDATION[0], (TINY, 3))
    refs = adam_references(4, tasks)
    assert [r["task"] for r in refs] == [f"{VALIDATION[0].name}@4", f"{TINY.name}@12"]  # the long one: 3 x 4 steps
    assert references_match(refs, 4, tasks) and not references_match(refs, 5, tasks)
    assert [r["steps"] for r in validation_score(LearnedUpdate(v2_config()), refs, 4, tasks)["tasks"]] == [4, 12]
    with pytest.raises(ValueError, match="recompute them"):
        validation_score(LearnedUpdate(v2_config()), refs, 4, tasks[:1])
    # a run resumed after the validation set changed recomputes its references and restarts its record
    cfg = load_config(None, ["learned=v2_ff", "validate_every=1", "validate_steps=2", "wandb=false",
                             "groups=1", "tasks_per_group=1", "truncation=2", "horizon=4", "horizon_min=0",
                             "population=2"])
    tr = MetaTrainer(cfg)
    tr.validation = {"refs": refs, "best_score": -100.0, "best_step": 7}
    m = tr.validate(tmp_path)
    assert references_match(tr.validation["refs"], 2)
    assert m["val_best"] == m["val_score"] > -100.0 and m["val_best_step"] == 0.0


def test_validation_scores_and_exports_the_best(tmp_path):
    from meta_train.trainer import MetaTrainer
    from meta_train.validate import adam_references, validation_score
    tasks = VALIDATION[:1]
    refs = adam_references(5, tasks)
    assert refs[0]["adam_lr"] > 0 and math.isfinite(refs[0]["adam_final_loss"])
    res = validation_score(LearnedUpdate(v2_config()), refs, 5, tasks)
    row = res["tasks"][0]
    assert res["score"] == pytest.approx(math.log((row["ngo_final_loss"] + 0.01) / (row["adam_final_loss"] + 0.01)))
    cfg = load_config(None, ["learned=v2_ff", "validate_every=1", "validate_steps=3", "wandb=false",
                             "groups=1", "tasks_per_group=1", "truncation=2", "horizon=4", "horizon_min=0",
                             "population=2"])
    tr = MetaTrainer(cfg)
    m = tr.validate(tmp_path)
    assert m["val_best"] == m["val_score"] and m["val_best_step"] == 0.0
    assert load_learned_update(str(tmp_path / "best.pt")).cfg == v2_config(use_graph=False)


@pytest.mark.parametrize("override, key", [("learned=v3", "learned"), ("objective=final", "objective"),
                                           ("horizon_min=5", "horizon_min"), ("hidden_horizon_prob=2", "hidden_horizon_prob"),
                                           ("input_scale=0.5", "input_scale"), ("max_group_params=-1", "max_group_params"),
                                           ("validate_every=-1", "validate_every")])
def test_new_keys_reject_bad_values(override, key):
    with pytest.raises(ValueError, match=f"{key}="):
        load_config(None, [override])


def test_meta_params_no_encoder_trains_only_the_rest_and_evaluate_rebuilds_it(tmp_path):
    from meta_train.evaluate import load_any
    from meta_train.trainer import MetaTrainer
    cfg = load_config(None, ["meta_params=no_encoder", "wandb=false", "groups=1", "tasks_per_group=1", "truncation=2",
                             "horizon=4", "horizon_min=0", "population=2", "validate_every=0", "seed=5"])
    tr = MetaTrainer(cfg)
    enc0 = {n: p.clone() for n, p in tr.learned.named_parameters() if n.startswith("encoder.")}
    assert tr.space.dim < 500 and not any(n.startswith("encoder.") for n in tr.space.names)
    theta0 = tr.theta.detach().clone()
    tr.outer_step()
    assert not torch.equal(tr.theta.detach(), theta0)
    assert all(torch.equal(p, enc0[n]) for n, p in tr.learned.named_parameters() if n.startswith("encoder."))
    tr.save(tmp_path / "ckpt.pt")
    back = load_any(str(tmp_path / "ckpt.pt"))
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), tr.learned.parameters()))


def test_meta_params_step_size_trains_only_the_schedule_and_its_readout():
    from meta_train.trainer import MetaTrainer
    cfg = load_config(None, ["learned=v2_cosine", "meta_params=step_size", "wandb=false", "groups=1",
                             "tasks_per_group=1", "truncation=2", "horizon=4", "horizon_min=0", "population=2",
                             "validate_every=0", "seed=5"])
    tr = MetaTrainer(cfg)
    assert tr.space.names == ["lr_readout.weight", "lr_readout.bias", "lr_sched.weight", "lr_sched.bias"]
    before = {n: p.detach().clone() for n, p in tr.learned.named_parameters()}
    tr.outer_step()
    moved = {n for n, p in tr.learned.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and moved <= set(tr.space.names)


def test_meta_params_head_trains_the_head_and_keeps_the_step_size(tmp_path):
    from lopt_graphs.optim import save_checkpoint
    from meta_train.trainer import MetaTrainer, fresh_learned_update
    init = fresh_learned_update("v2_cosine_bounded").add_untold_readout_()
    save_checkpoint(init, tmp_path / "init.pt")
    cfg = load_config(None, [f"init_ckpt={tmp_path / 'init.pt'}", "meta_params=head", "wandb=false", "groups=1",
                             "tasks_per_group=1", "truncation=2", "horizon=4", "horizon_min=0", "population=2",
                             "validate_every=0", "seed=5", "mag_clip=0"])
    tr = MetaTrainer(cfg)
    names = set(tr.space.names)
    assert {"w1", "w2", "b2", "step_proj.weight", "ctx_dst.weight", "slot_type.weight"} <= names
    assert not any(n.startswith(("encoder.", "lr_")) for n in names)
    step_size = {n for n, _ in tr.learned.named_parameters() if n.startswith("lr_")}
    assert step_size >= {"lr_readout.weight", "lr_readout_untold.weight", "lr_untold_shift", "lr_sched.bias"}
    before = {n: p.detach().clone() for n, p in tr.learned.named_parameters()}
    tr.outer_step()
    moved = {n for n, p in tr.learned.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and moved <= names and not moved & step_size


def test_a_resume_point_is_small_and_continues_the_meta_parameters(tmp_path):
    from meta_train.checkpointing import load_checkpoint, resume_point
    from meta_train.trainer import MetaTrainer
    over = ["wandb=false", "groups=2", "tasks_per_group=2", "truncation=2", "horizon=6", "horizon_min=0",
            "population=2", "validate_every=0", "meta_params=no_encoder"]
    cfg = load_config(None, over)
    a = MetaTrainer(cfg)
    a.outer_step()
    a.save(tmp_path / "ckpt.pt")
    resume_point(tmp_path / "ckpt.pt", tmp_path / "point.pt")
    assert (tmp_path / "point.pt").stat().st_size < (tmp_path / "ckpt.pt").stat().st_size / 2
    assert load_checkpoint(tmp_path / "point.pt")["runs"] is None
    b = MetaTrainer(load_config(None, over + ["seed=9"]))  # another seed: everything comes from the point
    b.load(tmp_path / "point.pt")
    assert b.step == 1 and torch.equal(b.theta.detach(), a.theta.detach())
    assert all(torch.equal(x, y) for x, y in zip(b.learned.parameters(), a.learned.parameters()))
    assert len(b.runs) == 2 and all(r.step == 0 for r in b.runs)
    b.outer_step()
    assert b.step == 2


def test_validation_on_several_seeds_scores_each_seed_against_its_own_reference():
    from meta_train.validate import adam_references, references_match, validation_score
    tasks = VALIDATION[:1]
    refs = adam_references(4, tasks, seeds=2)
    name = VALIDATION[0].name
    assert [r["task"] for r in refs] == [f"{name}@4", f"{name}@4#seed1"] and [r["seed"] for r in refs] == [0, 1]
    assert refs[0]["adam_lr"] == refs[1]["adam_lr"]  # tuned once, on the tuning seed
    assert refs[0]["adam_final_loss"] != refs[1]["adam_final_loss"]  # different data order and init
    assert references_match(refs, 4, tasks, seeds=2) and not references_match(refs, 4, tasks, seeds=1)
    res = validation_score(LearnedUpdate(v2_config()), refs, 4, tasks, seeds=2)
    assert [r["seed"] for r in res["tasks"]] == [0, 1]
    assert res["score"] == pytest.approx(sum(r["log_ratio"] for r in res["tasks"]) / 2)
    with pytest.raises(ValueError, match="recompute them"):
        validation_score(LearnedUpdate(v2_config()), refs, 4, tasks, seeds=1)
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        adam_references(4, tasks, seeds=0)
    with pytest.raises(ValueError, match="validate_seeds"):
        load_config(None, ["validate_seeds=0"])


def test_validation_on_fresh_seeds_past_the_selection_ones():
    """``first_seed``: the same references and scores for later seeds (a choice made on seeds 0-1 confirmed on 2-3)."""
    from meta_train.validate import adam_references, references_match, validation_score
    tasks = VALIDATION[:1]
    both = adam_references(4, tasks, seeds=4)
    fresh = adam_references(4, tasks, seeds=2, first_seed=2)
    assert [r["seed"] for r in fresh] == [2, 3] and fresh == both[2:]  # the same runs as the last two of four
    assert references_match(fresh, 4, tasks, seeds=2, first_seed=2) and not references_match(fresh, 4, tasks, seeds=2)
    res = validation_score(LearnedUpdate(v2_config()), fresh, 4, tasks, seeds=2, first_seed=2)
    assert [r["seed"] for r in res["tasks"]] == [2, 3]
    with pytest.raises(ValueError, match="recompute them"):
        validation_score(LearnedUpdate(v2_config()), fresh, 4, tasks, seeds=2)
    with pytest.raises(ValueError, match="first_seed"):
        adam_references(4, tasks, seeds=2, first_seed=999)  # seeds 999 and 1000: the tuning seed
    with pytest.raises(ValueError, match="first_seed"):
        adam_references(4, tasks, seeds=1, first_seed=-1)


def test_resume_takes_the_configured_outer_lr(tmp_path):
    from meta_train.trainer import MetaTrainer
    args = ["learned=v2_ff", "wandb=false", "groups=1", "tasks_per_group=1", "truncation=2", "horizon=4",
            "horizon_min=0", "population=2", "outer_lr=0.003"]
    tr = MetaTrainer(load_config(None, args))
    tr.outer_step()
    tr.save(tmp_path / "ck.pt")
    again = MetaTrainer(load_config(None, [*args[:-1], "outer_lr=0.001"]))
    again.load(tmp_path / "ck.pt")
    assert again.outer.param_groups[0]["lr"] == 0.001
    assert torch.equal(again.theta.detach(), tr.theta.detach()) and again.step == 1


def test_resuming_at_or_past_outer_steps_warns_and_runs_nothing(tmp_path):
    from meta_train.run import main
    from meta_train.trainer import MetaTrainer
    args = ["learned=v2_ff", "wandb=false", "groups=1", "tasks_per_group=1", "truncation=2", "horizon=4",
            "horizon_min=0", "population=2", "report=false", "validate_every=0"]
    tr = MetaTrainer(load_config(None, args))
    tr.outer_step()
    tr.outer_step()
    tr.save(tmp_path / "ck.pt")
    with pytest.warns(RuntimeWarning, match=r"at outer step 2, at or past outer_steps=1: no outer step will run"):
        again = main([*args, "outer_steps=1", f"resume={tmp_path / 'ck.pt'}", f"out={tmp_path / 'run'}"])
    assert again.step == 2 and torch.equal(again.theta.detach(), tr.theta.detach())


def test_log_final_logs_the_meta_loss_of_the_scored_groups_only():
    # a run of 10 steps in truncations of 2 is scored on its last 2 steps (the last fifth): one truncation in 5
    import math

    from meta_train.trainer import MetaTrainer
    args = ["learned=v2_ff", "wandb=false", "groups=1", "tasks_per_group=1", "truncation=2", "horizon=10",
            "horizon_min=0", "population=2", "estimator=full_es"]
    tr = MetaTrainer(load_config(None, [*args, "objective=log_final"]))
    logs = [tr.outer_step() for _ in range(10)]
    assert [m["scored_groups"] for m in logs] == [0, 0, 0, 0, 1] * 2
    for m in logs:
        if m["scored_groups"]:
            assert math.isfinite(m["meta_loss"]) and m["meta_loss"] != 0 and m["grad_norm"] > 0
        else:  # nothing scored: no loss to report (it used to log 0) and no gradient
            assert math.isnan(m["meta_loss"]) and m["grad_norm"] == 0
    late = MetaTrainer(load_config(None, [*args, "objective=log_late"])).outer_step()
    assert late["scored_groups"] == 1 and math.isfinite(late["meta_loss"])
