"""The typed config of the vs-Adam suite (YAML keys / ``key=value`` overrides; unknown keys are errors)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value as _bad
from lopt_graphs.config import check_finite

from .peers import PEERS

__all__ = ["DEFAULT_OUT", "DEFAULT_OPTIMIZERS", "SUITES", "VsAdamConfig", "load"]

SUITES: tuple[str, ...] = ("default", "quick", "tiny")
DEFAULT_OUT = "benchmarks/results/vs_adam"
DEFAULT_OPTIMIZERS: tuple[str, ...] = ("ngo", "adam", "adam_tuned", "adam_cosine_tuned", "sf_adamw",
                                       "sf_adamw_tuned", "prodigy", "dadapt_adam")


@dataclass(frozen=True)
class VsAdamConfig(_cfg.CheckedConfig):
    """Every knob of the benchmark.

    Attributes:
        suite: task list: ``"default"``, ``"quick"`` (< 3 min on 2 cores) or ``"tiny"`` (tests).
        ckpt: NGO checkpoint: a path or a shipped name; ``""`` = the shipped default checkpoint.
        seeds: the scored seeds (init weights and minibatch order); aggregates are over these.
        tune_seed: the seed on which tuned optimizers choose their lr (never a scored seed).
        steps: training steps of the in-distribution, out-of-distribution and paper tasks.
        long_steps: horizons of the ``long`` group (each long task runs once per horizon).
        adam_lrs: lr grid of the tuned Adam-family optimizers (constant, warmup+cosine, schedule-free, AdamW).
        sgd_lrs: lr grid of tuned SGD with momentum.
        warmup_fraction: linear warmup length of Adam warmup+cosine, as a fraction of the steps.
        adamw_weight_decay: AdamW's decoupled weight decay.
        sgd_momentum: SGD's momentum.
        optimizers: which of :data:`~.peers.PEERS` to run (``ngo`` and ``adam_tuned`` are required: the
            speed-up compares them). Those whose package is missing are skipped with a message.
        ngo_lr: NGO's ``lr`` (multiplier of the learned step; 1.0 is the meta-trained setting).
        ngo_compile: run NGO with ``compile=True``.
        ngo_total_steps: tell NGO each run's length (``total_steps=steps``, as a user gives ``T_max`` to a
            scheduler); ``false`` measures ``NeuralGraphOptimizer(params)`` without a horizon.
        smooth: window (steps) of the trailing moving average of the minibatch loss.
        data_root: torchvision root holding MNIST / FashionMNIST / CIFAR-10; ``""`` skips the paper tasks.
        paper_train_limit: training images kept per torchvision dataset (the test split is complete).
        only: keep only tasks whose name contains one of these substrings (empty: the whole suite).
        out: output directory.
        threads: torch intra-op threads (``0`` leaves torch's default).
        plot: write ``curves.png``.
    """

    suite: str = "default"
    ckpt: str = ""
    seeds: tuple[int, ...] = (0, 1, 2)
    tune_seed: int = 1000
    steps: int = 300
    long_steps: tuple[int, ...] = (1000, 3000)
    adam_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    sgd_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
    warmup_fraction: float = 0.05
    adamw_weight_decay: float = 0.01
    sgd_momentum: float = 0.9
    optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS
    ngo_lr: float = 1.0
    ngo_compile: bool = False
    ngo_total_steps: bool = True
    smooth: int = 20
    data_root: str = ""
    paper_train_limit: int = 10000
    only: tuple[str, ...] = ()
    out: str = DEFAULT_OUT
    threads: int = 1
    plot: bool = True

    def validate(self) -> None:
        """Check value constraints.

        Raises:
            ValueError: naming the first offending key, its value and what is expected.
        """
        if self.suite not in SUITES:
            _bad("suite", self.suite, f"one of {list(SUITES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            _bad("seeds", self.seeds, "a non-empty list of distinct integers >= 0")
        if self.tune_seed < 0 or self.tune_seed in self.seeds:
            _bad("tune_seed", self.tune_seed, f"an integer >= 0 that is not a scored seed ({list(self.seeds)}): "
                                              "the lr is chosen on it and scored on the others")
        for key in ("steps", "smooth", "paper_train_limit"):
            if getattr(self, key) < 1:
                _bad(key, getattr(self, key), "an integer >= 1")
        if not self.long_steps or min(self.long_steps) < 1 or len(set(self.long_steps)) != len(self.long_steps):
            _bad("long_steps", self.long_steps, "a non-empty list of distinct integers >= 1")
        _cfg.check_grid(self, "adam_lrs", "sgd_lrs")
        if not 0 <= self.warmup_fraction < 1:
            _bad("warmup_fraction", self.warmup_fraction, "a float in [0, 1)")
        check_finite(self, "adamw_weight_decay", strict=False)
        if not 0 <= self.sgd_momentum < 1:
            _bad("sgd_momentum", self.sgd_momentum, "a float in [0, 1)")
        if (not set(self.optimizers) <= set(PEERS) or len(set(self.optimizers)) != len(self.optimizers)
                or not {"ngo", "adam_tuned"} <= set(self.optimizers)):
            _bad("optimizers", self.optimizers, f"distinct names among {list(PEERS)} including 'ngo' and "
                                                "'adam_tuned'")
        check_finite(self, "ngo_lr")
        if self.threads < 0:
            _bad("threads", self.threads, "an integer >= 0 (0: torch's default)")
        if not self.out:
            _bad("out", self.out, "a non-empty directory path")


def load(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> VsAdamConfig:
    """:func:`lopt_graphs.config.load_config` for :class:`VsAdamConfig`."""
    return _cfg.load_config(VsAdamConfig, path, overrides)
