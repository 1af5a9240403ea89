"""``torch.optim.lr_scheduler`` drives ``NeuralGraphOptimizer`` exactly as it drives Adam.

``lr`` of the learned optimizer multiplies its learned step size, so a scheduler's ``group["lr"]`` sequence
must be the same as for Adam built with the same base lr (both use ``lr=1.0`` here), including the schedulers
that also cycle ``betas[0]`` (OneCycleLR, CyclicLR with ``cycle_momentum=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch.optim import lr_scheduler as S

from lopt_graphs.optim import NeuralGraphOptimizer

from .optim_infos import mse, random_head_learned, regression_data, snapshot, tiny_mlp

STEPS = 12
BASE_LR = 1.0


@dataclass(frozen=True)
class SchedulerCase:
    name: str
    make: Callable[[torch.optim.Optimizer], object]
    #: ReduceLROnPlateau is stepped with a metric
    metric: bool = False
    #: the case cycles betas[0] as well
    cycles_betas: bool = False


def _seq(o):
    return S.SequentialLR(o, [S.ConstantLR(o, factor=0.5, total_iters=2), S.ExponentialLR(o, gamma=0.8)],
                          milestones=[4])


SCHEDULERS = [
    SchedulerCase("StepLR", lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
    SchedulerCase("MultiStepLR", lambda o: S.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3)),
    SchedulerCase("ExponentialLR", lambda o: S.ExponentialLR(o, gamma=0.8)),
    SchedulerCase("CosineAnnealingLR", lambda o: S.CosineAnnealingLR(o, T_max=8, eta_min=0.01)),
    SchedulerCase("CosineAnnealingWarmRestarts", lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
    SchedulerCase("LinearLR", lambda o: S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=6)),
    SchedulerCase("ConstantLR", lambda o: S.ConstantLR(o, factor=0.25, total_iters=5)),
    SchedulerCase("LambdaLR", lambda o: S.LambdaLR(o, lambda e: 1.0 / (1.0 + e))),
    SchedulerCase("MultiplicativeLR", lambda o: S.MultiplicativeLR(o, lambda e: 0.9)),
    SchedulerCase("PolynomialLR", lambda o: S.PolynomialLR(o, total_iters=8, power=2.0)),
    SchedulerCase("OneCycleLR", lambda o: S.OneCycleLR(o, max_lr=BASE_LR, total_steps=STEPS), cycles_betas=True),
    SchedulerCase("CyclicLR", lambda o: S.CyclicLR(o, base_lr=0.1, max_lr=BASE_LR, step_size_up=3,
                                                   cycle_momentum=True, base_momentum=0.8, max_momentum=0.95),
                  cycles_betas=True),
    SchedulerCase("CyclicLR_no_momentum", lambda o: S.CyclicLR(o, base_lr=0.1, max_lr=BASE_LR, step_size_up=2,
                                                               mode="triangular2", cycle_momentum=False)),
    SchedulerCase("SequentialLR", _seq),
    SchedulerCase("ChainedScheduler", lambda o: S.ChainedScheduler(
        [S.ConstantLR(o, factor=0.5, total_iters=3), S.ExponentialLR(o, gamma=0.9)])),
    SchedulerCase("ReduceLROnPlateau", lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1, threshold=0.0),
                  metric=True),
]

# a plateau for ReduceLROnPlateau: improves, then stalls
METRICS = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]


def _run(case: SchedulerCase, kind: str):
    """Train STEPS steps under the scheduler; returns (lr sequence, betas sequence, model)."""
    x, y = regression_data()
    model = tiny_mlp()
    if kind == "ngo":
        opt = NeuralGraphOptimizer(model.parameters(), random_head_learned(), lr=BASE_LR, encoder_every=2)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=BASE_LR)
    sched = case.make(opt)
    lrs, betas = [opt.param_groups[0]["lr"]], [opt.param_groups[0]["betas"]]
    for i in range(STEPS):
        opt.zero_grad()
        mse(model, x, y).backward()
        opt.step()
        sched.step(METRICS[i]) if case.metric else sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        betas.append(tuple(opt.param_groups[0]["betas"]))
    return lrs, betas, model


@pytest.mark.parametrize("case", SCHEDULERS, ids=lambda c: c.name)
def test_scheduler_matches_adam(case):
    try:
        adam_lrs, adam_betas, _ = _run(case, "adam")
    except Exception as exc:  # only run what works for Adam
        pytest.skip(f"{case.name} does not work with Adam either: {exc!r}")
    lrs, betas, model = _run(case, "ngo")
    assert lrs == adam_lrs
    assert len(set(lrs)) > 1, "the scheduler did not change lr: the comparison is vacuous"
    assert betas == adam_betas
    if case.cycles_betas:
        assert len({b[0] for b in betas}) > 1
        assert all(b[1] == 0.999 for b in betas)
    for p in model.parameters():
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("case", [c for c in SCHEDULERS if c.name in ("OneCycleLR", "CyclicLR")],
                         ids=lambda c: c.name)
def test_cycled_betas_reach_the_update(case):
    """The cycled betas[0] is read by the step: the run differs from one with betas frozen."""
    _, _, model = _run(case, "ngo")
    x, y = regression_data()
    frozen = tiny_mlp()
    opt = NeuralGraphOptimizer(frozen.parameters(), random_head_learned(), lr=BASE_LR, encoder_every=2)
    sched = case.make(opt)
    b0 = opt.param_groups[0]["betas"]
    for _ in range(STEPS):
        opt.zero_grad()
        mse(frozen, x, y).backward()
        opt.step()
        sched.step()
        opt.param_groups[0]["betas"] = b0
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), frozen.parameters()))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lr_scheduled_to_zero_stops_the_parameters(weight_decay):
    x, y = regression_data()
    model = tiny_mlp()
    opt = NeuralGraphOptimizer(model.parameters(), random_head_learned(), lr=BASE_LR, encoder_every=2,
                               weight_decay=weight_decay)
    sched = S.LambdaLR(opt, lambda e: 1.0 if e < 3 else 0.0)
    history = []
    for _ in range(8):
        history.append(snapshot(model))
        opt.zero_grad()
        mse(model, x, y).backward()
        opt.step()
        sched.step()
    history.append(snapshot(model))
    moved = [any(not torch.equal(a, b) for a, b in zip(s, t)) for s, t in zip(history, history[1:])]
    assert moved == [True] * 3 + [False] * 5
    assert int(opt.state[next(model.parameters())]["step"]) == 8  # moments still advance
