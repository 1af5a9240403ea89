"""The task lists of the vs-Adam suite (``default``, ``quick``, ``tiny``) and torchvision-backed tasks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lopt_graphs.data import DatasetSplits
from lopt_graphs.graph import graph_from_module
from meta_train.tasks.families import HELD_OUT, IN_DISTRIBUTION, Task, TaskConfig, build_module

__all__ = ["GROUPS", "SplitsTask", "TaskSpec", "expand_long", "suite_tasks"]

#: Task groups, in table order. ``long``: in-distribution configs at the ``long_steps`` horizons.
GROUPS: tuple[str, ...] = ("in_dist", "ood", "long", "paper")


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task.

    Attributes:
        name: short unique name (used in tables, plots, ``only=``).
        group: one of :data:`GROUPS`.
        description: why the task is in the suite (what is in or out of distribution).
        config: the optimizee; ``config.dataset`` is an embedded dataset, or for ``group == "paper"`` a
            torchvision one (``mnist``, ``fashion_mnist``, ``cifar10``).
        steps: training steps; ``None`` = the config's ``steps``.
    """

    name: str
    group: str
    description: str
    config: TaskConfig
    steps: int | None = None


def _id(i: int, name: str) -> TaskSpec:
    return TaskSpec(name, "in_dist", "IN_DISTRIBUTION config (sampled by the meta-training families)",
                    IN_DISTRIBUTION[i])


def _held(i: int, name: str, why: str) -> TaskSpec:
    return TaskSpec(name, "ood", f"HELD_OUT config: {why}", HELD_OUT[i])


def _long(name: str, cfg: TaskConfig) -> TaskSpec:
    return TaskSpec(name, "long", "in-distribution config at a long horizon (meta-training unrolls 200 steps)",
                    cfg)


def _paper(name: str, dataset: str, arch: str, widths: tuple[int, ...], batch: int) -> TaskSpec:
    what = "small CNN (stride-2 convs, global average pooling)" if arch == "cnn" else "MLP"
    return TaskSpec(name, "paper", f"{dataset} (torchvision files under data_root), {what}",
                    TaskConfig(dataset, arch, widths, "relu", batch, 1.0))


def expand_long(specs: list[TaskSpec], steps: int, long_steps: tuple[int, ...]) -> list[TaskSpec]:
    """Give every task its step count: ``steps``, or one copy per horizon of ``long_steps`` for the ``long``
    group (named ``long{N}_...``)."""
    out = []
    for s in specs:
        if s.group == "long":
            out += [TaskSpec(f"long{n}_{s.name}", s.group, s.description, s.config, n) for n in long_steps]
        else:
            out.append(TaskSpec(s.name, s.group, s.description, s.config, steps))
    return out


def suite_tasks(suite: str) -> list[TaskSpec]:
    """The task list of ``suite`` (``"default"``, ``"quick"`` or ``"tiny"``), before :func:`expand_long`."""
    if suite == "tiny":
        return [
            TaskSpec("tiny_digits_mlp", "in_dist", "tiny in-distribution MLP", TaskConfig("digits", "mlp", (16,))),
            TaskSpec("tiny_digits_mlp_elu", "ood", "ELU (not sampled in meta-training), batch 16",
                     TaskConfig("digits", "mlp", (16, 16), "elu", 16)),
            _long("tiny_digits_mlp", TaskConfig("digits", "mlp", (16,))),
            _paper("tiny_fashion_mnist_cnn", "fashion_mnist", "cnn", (8, 8), 32),
            _paper("tiny_mnist_mlp", "mnist", "mlp", (32,), 32),
            _paper("tiny_cifar10_cnn", "cifar10", "cnn", (8, 8), 32),
        ]
    id_digits_mlp = _id(0, "id_digits_mlp32_relu")
    id_mnist1d = _id(3, "id_mnist1d_mlp64-32_gelu")
    elu_b16 = _held(0, "ood_digits_mlp96-96_elu_b16", "ELU, width 96, batch 16")
    fashion_cnn = _paper("paper_fashion_mnist_cnn16-32-32", "fashion_mnist", "cnn", (16, 32, 32), 128)
    if suite == "quick":
        # one task per group (about 65 s of CPU time): the check that every optimizer runs, not the table
        return [id_digits_mlp, elu_b16, _long("digits_mlp32_relu", IN_DISTRIBUTION[0]), fashion_cnn]
    if suite != "default":
        raise ValueError(f"unknown suite {suite!r}; expected one of ['default', 'quick', 'tiny']")
    return [
        id_digits_mlp,
        _id(1, "id_digits_cnn16-32_relu"),
        _id(2, "id_mnist5k_mlp32_tanh_b128"),
        id_mnist1d,
        TaskSpec("ood_digits_mlp256-256_wide", "ood", "width 256 (meta-training samples widths 16-64)",
                 TaskConfig("digits", "mlp", (256, 256), "relu", 64)),
        TaskSpec("ood_mnist5k_mlp64x4_deep", "ood", "depth 4 hidden layers (meta-training samples 1-2)",
                 TaskConfig("mnist5k", "mlp", (64, 64, 64, 64), "relu", 64)),
        TaskSpec("ood_mnist5k_cnn16-32-32_deep", "ood", "CNN with 3 conv layers (meta-training samples 1-2)",
                 TaskConfig("mnist5k", "cnn", (16, 32, 32), "relu", 64)),
        TaskSpec("ood_digits_mlp64_init3", "ood", "init scale 3.0 (meta-training samples 0.5-2.0)",
                 TaskConfig("digits", "mlp", (64,), "relu", 64, 3.0)),
        elu_b16,
        _held(1, "ood_mnist5k_mlp48_tanh_b256", "width 48, batch 256"),
        _held(2, "ood_mnist1d_cnn24-24_elu", "ELU CNN, width 24"),
        _held(3, "ood_digits_cnn12-12_b256", "width 12, batch 256"),
        _long("digits_mlp32_relu", IN_DISTRIBUTION[0]),
        _long("mnist1d_mlp64-32_gelu", IN_DISTRIBUTION[3]),
        fashion_cnn,
        _paper("paper_fashion_mnist_mlp128", "fashion_mnist", "mlp", (128,), 128),
        _paper("paper_mnist_cnn16-32-32", "mnist", "cnn", (16, 32, 32), 128),
        _paper("paper_cifar10_cnn16-32-32", "cifar10", "cnn", (16, 32, 32), 128),
    ]


class SplitsTask(Task):
    """A :class:`~meta_train.tasks.families.Task` over given :class:`DatasetSplits` (e.g. torchvision data)
    instead of an embedded dataset; same interface (``module``, ``new_model``, ``evaluate``)."""

    def __init__(self, cfg: TaskConfig, data: DatasetSplits):  # noqa: D107 - replaces Task.__init__'s loading
        self.cfg = cfg
        self.data = data
        self.module = build_module(cfg, data.input_shape, data.num_classes)
        self.names = [n for n, _ in self.module.named_parameters()]
        self.spec = graph_from_module(self.module)
        self.loss_scale = math.log(data.num_classes)
