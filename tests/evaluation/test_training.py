"""Tests of ``lopt_graphs.evaluation.train_run`` and the fair tuning of ``tuned_baseline``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lopt_graphs.evaluation import RunResult, train_run, tune_lr, tuned_baseline


class _Task:
    """A 2-class linear problem on 32 fixed points (the :class:`TrainTask` interface, nothing else)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, generator=g)
        self.data = SimpleNamespace(x_train=x, y_train=(x[:, 0] > 0).long(), num_train=32)
        self.cfg = SimpleNamespace(batch_size=8)
        self.evaluated_at: list[torch.Tensor] = []

    def new_model(self, gen: torch.Generator) -> nn.Module:
        model = nn.Linear(4, 2)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        return model

    def evaluate(self, params: list[torch.Tensor]) -> dict[str, float]:
        self.evaluated_at.append(params[0].clone())
        w, b = params
        loss = nn.functional.cross_entropy(self.data.x_train @ w.T + b, self.data.y_train).item()
        return {"train_loss": loss, "test_accuracy": 0.5}


class _ModalSGD(torch.optim.SGD):
    """SGD with schedule-free-style ``train()``/``eval()``: eval mode shifts the weights by +100."""

    def __init__(self, params, log: list[str]) -> None:
        super().__init__(params, lr=0.1)
        self.log, self.mode = log, "train"

    def train(self) -> None:
        self.log.append("train")
        if self.mode == "eval":
            self._shift(-100.0)
        self.mode = "train"

    def eval(self) -> None:
        self.log.append("eval")
        if self.mode == "train":
            self._shift(100.0)
        self.mode = "eval"

    def step(self, closure=None):
        self.log.append("step")
        return super().step(closure)

    @torch.no_grad()
    def _shift(self, by: float) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(by)


class _NaNAfter(torch.optim.SGD):
    """SGD whose ``n``-th step writes NaN into the weights (the next loss is NaN)."""

    def __init__(self, params, n: int) -> None:
        super().__init__(params, lr=0.1)
        self.n, self.count = n, 0

    @torch.no_grad()
    def step(self, closure=None):
        self.count += 1
        super().step(closure)
        if self.count == self.n:
            for p in self.param_groups[0]["params"]:
                p.fill_(math.nan)


def test_same_seed_same_init_and_batches_for_every_optimizer() -> None:
    task = _Task()
    a = train_run(task, lambda m: torch.optim.SGD(m.parameters(), lr=0.0), 5, seed=3)
    b = train_run(task, lambda m: torch.optim.Adam(m.parameters(), lr=0.0), 5, seed=3)
    assert a.curve == b.curve and len(a.curve) == 5  # lr 0: same weights, so the same minibatches give equal losses
    c = train_run(task, lambda m: torch.optim.SGD(m.parameters(), lr=0.0), 5, seed=4)
    assert c.curve != a.curve


def test_eval_mode_is_applied_for_the_final_evaluation_only() -> None:
    task, log = _Task(), []
    holder = {}

    def make(m: nn.Module) -> torch.optim.Optimizer:
        holder["model"] = m
        return _ModalSGD(m.parameters(), log)

    r = train_run(task, make, 3, seed=0)
    assert log == ["train", "step", "step", "step", "eval", "train"]
    # evaluated at the eval-mode weights (shifted by +100), and the model is back at its training weights
    assert torch.allclose(task.evaluated_at[0], holder["model"].weight.detach() + 100.0)
    assert math.isfinite(r.final_loss) and not r.diverged


def test_scheduler_steps_after_every_step_and_divergence_stops_the_run() -> None:
    task = _Task()
    seen: list[float] = []

    def make(m: nn.Module):
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (k + 1))
        opt.register_step_post_hook(lambda o, *_: seen.append(o.param_groups[0]["lr"]))
        return opt, sched

    train_run(task, make, 3, seed=0)
    assert seen == [1.0, 0.5, pytest.approx(1 / 3)]
    bad = train_run(task, lambda m: _NaNAfter(m.parameters(), 2), 6, seed=0)
    assert bad.diverged and bad.final_loss == math.inf and math.isnan(bad.test_acc)
    assert len(bad.curve) == 6 and all(math.isfinite(v) for v in bad.curve[:2]) and bad.curve[2:] == [math.inf] * 4


def _fake(final: float) -> RunResult:
    return RunResult(curve=[final], final_loss=final, test_acc=0.5)


def test_tuned_lr_is_chosen_on_the_tuning_seed_and_never_on_a_scored_one() -> None:
    calls: list[tuple[float, int]] = []
    # on the tuning seed 1000 lr 1e-2 is best; on the scored seeds lr 1e-3 would be: it must not be picked
    table = {1000: {1e-3: 0.5, 1e-2: 0.2, 1e-1: math.inf}, 0: {1e-3: 0.1, 1e-2: 0.3}, 1: {1e-3: 0.1, 1e-2: 0.4}}

    def train(lr: float, seed: int) -> RunResult:
        calls.append((lr, seed))
        return _fake(table[seed][lr])

    tuned = tuned_baseline(train, (1e-3, 1e-2, 1e-1), 1000, [0, 1])
    assert tuned.lr == 1e-2 and tuned.tune_seed == 1000 and tuned.scored_seeds == [0, 1]
    assert [r.final_loss for r in tuned.runs] == [0.3, 0.4]
    assert [g["lr"] for g in tuned.grid] == [1e-3, 1e-2, 1e-1] and tuned.grid[2]["criterion"] == math.inf
    assert calls == [(1e-3, 1000), (1e-2, 1000), (1e-1, 1000), (1e-2, 0), (1e-2, 1)]  # grid on 1000 only
    assert not tuned.at_grid_edge
    assert tuned.tune_run.final_loss == 0.2  # the grid's own run of the chosen lr on the tuning seed, not re-run
    with pytest.raises(ValueError, match="tuning seed 0: it is also a scored seed"):
        tuned_baseline(train, (1e-3,), 0, [0, 1])


def test_tune_lr_mean_over_seeds_and_first_of_ties() -> None:
    table = {(1e-3, 0): 0.1, (1e-3, 1): 0.9, (1e-2, 0): 0.2, (1e-2, 1): 0.3}
    assert tune_lr(lambda lr, s: _fake(table[(lr, s)]), (1e-3, 1e-2), [0])[0] == 1e-3
    assert tune_lr(lambda lr, s: _fake(table[(lr, s)]), (1e-3, 1e-2), [0, 1])[0] == 1e-2
    assert tune_lr(lambda lr, s: _fake(1.0), (3e-3, 1e-3), [0])[0] == 3e-3


def test_minibatches_are_those_of_task_batches() -> None:
    from meta_train.tasks.families import Task, TaskConfig

    task, seen = Task(TaskConfig("digits", "mlp", (8,), batch_size=16)), []

    def make(m: nn.Module) -> torch.optim.Optimizer:
        m.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
        return torch.optim.SGD(m.parameters(), lr=0.1)

    train_run(task, make, 4, seed=5)
    gen = torch.Generator().manual_seed(5)
    task.new_model(gen)
    xs, _ = task.batches(gen, 4)
    assert len(seen) == 4 and all(torch.equal(a, b) for a, b in zip(seen, xs))


def test_input_scale_multiplies_the_minibatch_inputs() -> None:
    task, scaled, seen = _Task(), _Task(), []
    scaled.cfg.input_scale = 2.0

    def make(m: nn.Module) -> torch.optim.Optimizer:
        m.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
        return torch.optim.SGD(m.parameters(), lr=0.0)

    train_run(task, make, 2, seed=0)
    train_run(scaled, make, 2, seed=0)
    assert torch.equal(seen[2], 2.0 * seen[0]) and torch.equal(seen[3], 2.0 * seen[1])
