"""``meta_train.sampling.log_uniform``: the one log-uniform draw of the trainer (run lengths) and the task
families (init and input scales, rounded to two decimals), with the trainer's horizons unchanged."""

from __future__ import annotations

import math

import torch

from meta_train.config import load_config
from meta_train.sampling import log_uniform
from meta_train.tasks.families import _log_uniform as families_log_uniform


def _inline(gen: torch.Generator, lo: float, hi: float) -> float:
    """The trainer's draw as it was written before the helper (the reference)."""
    u = float(torch.rand((), generator=gen))
    return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def test_full_precision_draws_match_the_trainers_former_inline_draw():
    g_ref, g_new = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for lo, hi in [(20, 200), (50, 400), (0.5, 2.0)] * 200:
        assert log_uniform(g_new, lo, hi) == _inline(g_ref, lo, hi)  # bit for bit
    assert torch.equal(g_new.get_state(), g_ref.get_state())


def test_rounded_draws_match_the_task_families():
    g_ref, g_new = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    draws = [log_uniform(g_new, 0.5, 2.0, ndigits=2) for _ in range(300)]
    assert draws == [round(_inline(g_ref, 0.5, 2.0), 2) for _ in range(300)]  # the families' former draw
    g_fam = torch.Generator().manual_seed(5)
    assert draws == [families_log_uniform(g_fam, 0.5, 2.0) for _ in range(300)]
    assert all(0.5 <= d <= 2.0 for d in draws) and len(set(draws)) > 50


def test_trainer_horizons_are_unchanged():
    """Run lengths of seed 3 as the trainer drew them before it used the helper (pinned from commit b8157a4)."""
    from meta_train.trainer import MetaTrainer
    cfg = load_config(None, ["learned=v2", "objective=log_late", "horizon=200", "horizon_min=20", "truncation=10",
                             "groups=6", "tasks_per_group=1", "hidden_horizon_prob=0.5", "wandb=false", "seed=3"])
    tr = MetaTrainer(cfg)
    assert [r.length for r in tr.runs] == [20, 60, 15, 40, 150, 40]
    assert [tr._new_group(i).length for i in range(8)] == [110, 20, 40, 100, 30, 20, 50, 40]
