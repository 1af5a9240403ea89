"""Inner training runs of the meta-training harness, stacked by task group.

A :class:`RunGroup` holds ``N`` inner runs whose tasks share one architecture (:func:`~meta_train.tasks.arch_key`)
and batch size: every tensor carries a leading task dimension ``[N, ...]``, so one ``torch.func.vmap`` call
advances all of them (and, nested, all members of an ES/PES population). The record is immutable: an
estimator returns the advanced group (:class:`~meta_train.estimators.EstimatorOut` ``.runs``), and only
the trainer swaps it in; nothing else mutates run state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from torch.func import vmap

from lopt_graphs.optim.functional import init_state

from .tasks import Task, TaskConfig, arch_key


@dataclass(frozen=True)
class RunGroup:
    """``N`` inner runs of one architecture.

    Attributes:
        tasks: the ``N`` tasks (one :func:`arch_key`, one batch size; own init scale, init and data order).
        params: per parameter, ``[N, *shape]``: the runs' current values (the unperturbed trajectory).
        states: per parameter, the optimizer state dict, each tensor ``[N, ...]``.
        step: inner steps taken (shared by the group: its runs start and reset together).
        length: inner steps the runs last before the group is replaced.
        horizon_known: whether the learned update is told ``length`` (``total_steps``) or not.
        member_params, member_states: PES only: every population member's own trajectory,
            ``[N, 2m, ...]`` for the ``m`` antithetic pairs this process evaluates (``None`` before the first
            truncation).
        xi: PES only: ``[N, pairs, D]``, the perturbations each pair has accumulated since the reset.
    """

    tasks: tuple[Task, ...]
    params: tuple[Tensor, ...]
    states: tuple[dict[str, Tensor], ...]
    step: int = 0
    length: int = 0
    horizon_known: bool = True
    member_params: tuple[Tensor, ...] | None = None
    member_states: tuple[dict[str, Tensor], ...] | None = None
    xi: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_one_architecture(self.tasks)

    @property
    def size(self) -> int:
        """``N``, the number of runs."""
        return len(self.tasks)

    @property
    def task(self) -> Task:
        """The group's shared module, spec and loss (the first task's)."""
        return self.tasks[0]

    @property
    def total_steps(self) -> int | None:
        """The horizon the learned update is told (``None``: unknown to it)."""
        return self.length if self.horizon_known else None

    @property
    def loss_scale(self) -> float:
        """Loss of a uniform prediction (one dataset per group)."""
        return self.task.loss_scale

    def batches(self, gen: torch.Generator, k: int) -> tuple[Tensor, Tensor]:
        """``k`` minibatches per run, each run its own draw: ``(x [N, k, B, ...], y [N, k, B])``."""
        xs, ys = zip(*(t.batches(gen, k) for t in self.tasks))
        return torch.stack(xs), torch.stack(ys)

    def to_dict(self) -> dict:
        """A ``torch.load(weights_only=True)``-safe dict (see :func:`from_dict`)."""
        return {"tasks": [asdict(t.cfg) for t in self.tasks], "params": list(self.params),
                "states": [dict(s) for s in self.states], "step": self.step, "length": self.length,
                "horizon_known": self.horizon_known, "member_params": None if self.member_params is None else list(self.member_params),
                "member_states": None if self.member_states is None else [dict(s) for s in self.member_states],
                "xi": self.xi}

    @classmethod
    def from_dict(cls, d: dict) -> "RunGroup":
        tasks = tuple(Task(TaskConfig(**{**tc, "widths": tuple(tc["widths"])})) for tc in d["tasks"])
        tup = lambda xs: None if xs is None else tuple(xs)  # noqa: E731
        return cls(tasks=tasks, params=tuple(d["params"]), states=tuple(dict(s) for s in d["states"]),
                   step=int(d["step"]), length=int(d["length"]), horizon_known=bool(d["horizon_known"]),
                   member_params=tup(d["member_params"]),
                   member_states=tup(d["member_states"]), xi=d["xi"])


def _check_one_architecture(tasks: tuple[Task, ...]) -> None:
    if len({arch_key(t.cfg) for t in tasks}) != 1 or len({t.cfg.batch_size for t in tasks}) != 1:
        raise ValueError(f"A run group needs one architecture and batch size, got tasks {[t.name for t in tasks]}")


def init_states(params: tuple[Tensor, ...]) -> tuple[dict[str, Tensor], ...]:
    """Fresh optimizer states for stacked ``[N, *shape]`` parameters (each tensor ``[N, ...]``)."""
    return tuple(vmap(init_state)(p) for p in params)


def new_group(cfgs: list[TaskConfig], gen: torch.Generator, length: int, horizon_known: bool = True) -> RunGroup:
    """Fresh runs of ``cfgs`` (one architecture), each initialized from ``gen`` in order."""
    tasks = tuple(Task(c) for c in cfgs)
    _check_one_architecture(tasks)
    inits = [t.init_params(gen) for t in tasks]
    params = tuple(torch.stack(ps) for ps in zip(*inits))
    return RunGroup(tasks=tasks, params=params, states=init_states(params), step=0, length=length,
                    horizon_known=horizon_known)
