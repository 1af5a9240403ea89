"""Configuration of a meta-training run: a frozen dataclass, YAML loading and CLI overrides.

A run is configured by an optional YAML file (a flat mapping of the fields of
:class:`MetaTrainConfig`) followed by ``key=value`` overrides from the command line, applied in order::

    cfg = load_config("configs/meta_train/smoke.yaml", ["outer_steps=5", "wandb=false"])

Types are checked strictly (a typo never silently becomes a string): ``bool`` fields take YAML
booleans only, ``int`` fields take integers only, ``float`` fields take integers or floats, and ``str``
fields take strings (an override's raw text is used as-is for them). One deliberate leniency: PyYAML
follows YAML 1.1, where ``3e-3`` (no dot) is a *string*, so ``float`` fields also accept a string that
Python's :func:`float` parses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value as _bad
from lopt_graphs.config import check_finite

__all__ = [
    "ESTIMATORS",
    "MetaTrainConfig",
    "config_field_names",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_override",
    "save_resolved_config",
]

#: Valid values of :attr:`MetaTrainConfig.estimator`.
ESTIMATORS: tuple[str, ...] = ("es", "pes", "full_es", "tbptt")

#: Valid values of :attr:`MetaTrainConfig.learned`.
LEARNED_ARCHS: tuple[str, ...] = ("v1", "v2", "v2_ff", "v2_cosine", "v2_ff_cosine", "v2_cosine_bounded")
#: Valid values of :attr:`MetaTrainConfig.objective` (see :func:`meta_train.unroll.unroll`).
OBJECTIVES: tuple[str, ...] = ("mean_loss", "log_late", "log_final")

#: Valid values of :attr:`MetaTrainConfig.meta_params`, and the parameter-name prefixes each freezes.
META_PARAMS: dict[str, tuple[str, ...]] = {
    "all": (),
    "no_encoder": ("encoder.",),
    # only the per-tensor step size: its schedule (lr_sched) and its readout of the encoder (lr_readout)
    "step_size": ("encoder.", "ctx_", "slot_type.", "w1", "w2", "b2", "step_proj."),
    # only the per-entry head and its node terms: the per-tensor step size (schedule, readouts) stays as given
    "head": ("encoder.", "lr_readout", "lr_untold_shift", "lr_sched."),
}

#: Estimators that sample antithetic perturbation pairs (``population`` must be even and >= 2).
_ANTITHETIC_ESTIMATORS: frozenset[str] = frozenset({"es", "pes", "full_es"})


@dataclass(frozen=True)
class MetaTrainConfig(_cfg.CheckedConfig):
    """Every knob of a meta-training run.

    Construction coerces ``int`` values of ``float`` fields to ``float``, raises :class:`TypeError` for
    values of the wrong type and calls :meth:`validate` (which raises :class:`ValueError`).

    Attributes:
        outer_steps: Total number of outer (meta) steps of the run; a resumed run continues up to this
            count. ``0`` is allowed (e.g. evaluate or report only).
        estimator: Meta-gradient estimator: ``"es"`` (antithetic evolution strategies on each
            truncation), ``"pes"`` (persistent ES, unbiased across truncations), ``"full_es"`` (antithetic ES
            over whole runs: one perturbation per pair from a run's reset to its end, computed a truncation at
            a time; unbiased, and its variance does not grow with the truncations of a run as PES's does) or
            ``"tbptt"`` (truncated backpropagation through the unroll).
        population: Number of perturbed unrolls per outer step for ``es``/``pes``/``full_es``; they are drawn as
            ``population // 2`` antithetic pairs, so it must be even and >= 2. Ignored (but must be
            >= 1) for ``tbptt``.
        sigma: Standard deviation of the Gaussian perturbations of the meta-parameters (es/pes/full_es); > 0.
        outer_lr: Learning rate of the outer optimizer on the meta-parameters (a resumed run takes this value,
            not the checkpoint's); > 0.
        grad_clip: Maximum global L2 norm of the meta-gradient; ``0`` disables clipping; >= 0.
        truncation: ``K``, the number of inner steps unrolled per outer step; 1 <= K <= ``horizon``.
        horizon: ``T``, the number of inner steps of one inner run before its task is reset; >= 1.
        groups: Number of run groups per outer step, each of one architecture drawn from ``family``;
            groups are reset at staggered times so the outer gradient mixes early and late phases of
            training; >= 1.
        tasks_per_group: Inner runs per group: tasks sharing the group's architecture, dataset and batch
            size (own init, init scale and data order), run stacked in one ``vmap`` call with the whole
            population; >= 1.
        family: Name of the task family inner problems are sampled from (a key of :data:`meta_train.tasks.FAMILIES`).
        seed: Seed of every random number generator of the run; >= 0.
        out: Output directory (config, metrics, checkpoints, report, wandb files).
        resume: Path of a checkpoint to resume from; ``""`` starts a fresh run.
        checkpoint_every: Save a checkpoint every this many outer steps; ``0`` disables periodic
            checkpoints; >= 0.
        log_every: Log metrics every this many outer steps; >= 1.
        wandb: Log metrics to Weights & Biases as well (offline unless ``WANDB_MODE``/``WANDB_API_KEY``
            say otherwise).
        wandb_project: Weights & Biases project name.
        report: Write ``report.md`` and the meta-loss plot at the end of the run.
        report_steps: Inner steps of each evaluation run in the report (against per-task tuned Adam).
        loss_clip: The meta-loss of each inner step is ``min(loss, loss_clip * initial_loss_estimate)``
            so diverging inner runs cannot dominate the estimate; > 0 (``.inf`` disables).
        init_ckpt: Learned-update checkpoint to initialise the meta-parameters from; ``""`` = fresh
            initialisation.
        mag_clip: Bound of the learned log step multiplier (``LearnedUpdateConfig.mag_clip``) of the
            learned update being trained: steps stay within ``e**mag_clip`` times Adam's; ``0`` keeps the
            initialisation's (10 for a fresh one, which lets the default PES run diverge after ~150
            outer steps); a fresh ``learned=v2``/``v2_ff`` update keeps its own (5); >= 0.
        threads: Number of torch intra-op threads (1, as every command; ``0`` leaves torch's default); >= 0.
        learned: Architecture of a fresh learned update (when ``init_ckpt`` is empty): ``"v1"`` (the
            default ``LearnedUpdateConfig``), ``"v2"`` (recipe v2: horizon features, learned per-tensor
            step size and schedule, small log-magnitude; :func:`lopt_graphs.optim.learned.v2_config`) or
            ``"v2_ff"`` (v2 without the encoder: the per-parameter "FF" ablation); ``"v2_cosine"`` /
            ``"v2_ff_cosine"``: the same with a step bound of ``e**5`` and a warmup-cosine schedule prior when
            the horizon is known (:func:`meta_train.trainer.fresh_learned_update`); ``"v2_cosine_bounded"``:
            ``"v2_cosine"`` with the encoder readout's factor on a tensor's step bounded to ``e**+-1`` (safe on
            models far larger than meta-training's).
        objective: Meta-loss of a truncation: ``"mean_loss"`` (mean minibatch loss) or ``"log_late"``
            (``log(L / L_0)`` per task, weighted ``2 t / T`` toward the end of the run) or ``"log_final"``
            (``log((L + 0.01) / L_0)`` over the last fifth of the run: the final loss as validation scores
            it); see :func:`meta_train.unroll.unroll`.
        horizon_min: ``> 0`` samples each group's run length log-uniformly in ``[horizon_min, horizon]``
            (rounded to whole truncations); ``0`` keeps every run at ``horizon``.
        hidden_horizon_prob: Probability that a group's learned update is not told its horizon
            (``total_steps=None``), so it learns to train without one too; in [0, 1].
        input_scale: ``> 1`` draws each task's input scale log-uniformly in ``[1/x, x]`` (augmentation);
            ``1`` leaves the data as they are; >= 1.
        max_group_params: ``> 0`` caps the parameters of a group (tasks x params per task): wide nets come
            in smaller groups; ``0``: always ``tasks_per_group``; >= 0.
        max_group_activations: ``> 0`` caps the activation values of a group's minibatch forward pass (tasks x
            batch x activations per example, :func:`meta_train.tasks.families.num_activations`): a 64-channel
            MNIST CNN at batch 128 (3.2M) then runs alone instead of four at a time (~35 s per truncation
            of 20 steps against ~4 s for the other groups); ``0``: no cap; >= 0.
        validate_every: Score the meta-parameters on the validation tasks (``meta_train.tasks.VALIDATION``,
            disjoint from the evaluation sets) every this many outer steps and keep the best as
            ``best.pt``; ``0`` disables; >= 0.
        validate_steps: Inner steps of each validation run; >= 1.
        validate_seeds: Seeds each validation task is scored on (both optimizers; tuned Adam's lr is chosen on
            a separate seed); the score is the mean over tasks and seeds. A single seed's score moves by
            ~0.1 between outer steps by chance alone; >= 1.
        meta_params: Which parameters of the learned update are meta-trained: ``"all"``, or
            ``"no_encoder"`` (the encoder's message-passing weights stay at their seeded initialisation, a
            fixed equivariant feature map; its readouts, the head and the step-size schedule are trained:
            ~350 dimensions instead of ~11,000 for v2, which PES can estimate on a small budget), or
            ``"step_size"`` (only the learned per-tensor step size of a v2 update: its schedule and its
            readout of the fixed encoder, 43 dimensions; the per-entry head stays Adam's direction), or ``"head"``
            (the per-entry head and the encoder's node terms it reads, the complement of ``"step_size"`` outside
            the encoder: a calibrated step size stays as it is).
    """

    outer_steps: int = 300
    estimator: str = "pes"
    population: int = 8
    sigma: float = 0.01
    outer_lr: float = 1e-3
    grad_clip: float = 1.0
    truncation: int = 10
    horizon: int = 200
    groups: int = 2
    tasks_per_group: int = 4
    family: str = "digits"
    seed: int = 0
    out: str = "runs/meta_train"
    resume: str = ""
    checkpoint_every: int = 10
    log_every: int = 1
    wandb: bool = True
    wandb_project: str = "lopt-graphs"
    report: bool = True
    report_steps: int = 300
    loss_clip: float = 3.0
    init_ckpt: str = ""
    mag_clip: float = 3.0
    threads: int = 1
    learned: str = "v2"
    objective: str = "log_late"
    horizon_min: int = 50
    hidden_horizon_prob: float = 0.2
    input_scale: float = 1.0
    max_group_params: int = 20000
    max_group_activations: int = 0
    validate_every: int = 100
    validate_steps: int = 300
    validate_seeds: int = 1
    meta_params: str = "all"

    def validate(self) -> None:
        """Check the value constraints of every field.

        Raises:
            ValueError: naming the first offending key, its value and what is expected.
        """
        if self.estimator not in ESTIMATORS:
            _bad("estimator", self.estimator, f"one of {list(ESTIMATORS)}")
        from meta_train.tasks import FAMILIES  # here, not at import: the tasks pull in the datasets

        if self.family not in FAMILIES:
            _bad("family", self.family, f"one of {sorted(FAMILIES)}")
        if self.outer_steps < 0:
            _bad("outer_steps", self.outer_steps, "an integer >= 0")
        if self.population < 1:
            _bad("population", self.population, "an integer >= 1")
        if self.estimator in _ANTITHETIC_ESTIMATORS and (self.population < 2 or self.population % 2):
            _bad(
                "population",
                self.population,
                f"an even integer >= 2 for estimator {self.estimator!r} (population // 2 antithetic pairs)",
            )
        check_finite(self, "sigma", "outer_lr")
        check_finite(self, "grad_clip", strict=False, note=" (0 disables clipping)")
        if self.horizon < 1:
            _bad("horizon", self.horizon, "an integer >= 1")
        if self.truncation < 1:
            _bad("truncation", self.truncation, "an integer >= 1")
        if self.truncation > self.horizon:
            _bad("truncation", self.truncation, f"an integer <= horizon ({self.horizon})")
        if self.groups < 1:
            _bad("groups", self.groups, "an integer >= 1")
        if self.tasks_per_group < 1:
            _bad("tasks_per_group", self.tasks_per_group, "an integer >= 1")
        if not self.family.strip():
            _bad("family", self.family, "a non-empty task family name")
        if self.seed < 0:
            _bad("seed", self.seed, "an integer >= 0")
        if not self.out.strip():
            _bad("out", self.out, "a non-empty output directory")
        if self.checkpoint_every < 0:
            _bad("checkpoint_every", self.checkpoint_every, "an integer >= 0 (0 disables)")
        if self.log_every < 1:
            _bad("log_every", self.log_every, "an integer >= 1")
        if not self.wandb_project.strip():
            _bad("wandb_project", self.wandb_project, "a non-empty project name")
        if math.isnan(self.loss_clip) or self.loss_clip <= 0:
            _bad("loss_clip", self.loss_clip, "a float > 0 (.inf disables clipping)")
        if self.report_steps < 1:
            _bad("report_steps", self.report_steps, "an integer >= 1")
        check_finite(self, "mag_clip", strict=False, note=" (0 keeps the initialisation's)")
        if self.threads < 0:
            _bad("threads", self.threads, "an integer >= 0 (0 = torch default)")
        if self.learned not in LEARNED_ARCHS:
            _bad("learned", self.learned, f"one of {list(LEARNED_ARCHS)}")
        if self.objective not in OBJECTIVES:
            _bad("objective", self.objective, f"one of {list(OBJECTIVES)}")
        if self.horizon_min < 0 or self.horizon_min > self.horizon:
            _bad("horizon_min", self.horizon_min, f"an integer in [0, horizon={self.horizon}] (0 = fixed horizon)")
        if self.horizon_min and self.horizon_min < self.truncation:
            _bad("horizon_min", self.horizon_min, f"0 or an integer >= truncation ({self.truncation})")
        if not 0.0 <= self.hidden_horizon_prob <= 1.0:
            _bad("hidden_horizon_prob", self.hidden_horizon_prob, "a float in [0, 1]")
        check_finite(self, "input_scale", low=1.0, strict=False, note=" (1 = no augmentation)")
        if self.max_group_params < 0:
            _bad("max_group_params", self.max_group_params, "an integer >= 0 (0 = no cap)")
        if self.max_group_activations < 0:
            _bad("max_group_activations", self.max_group_activations, "an integer >= 0 (0 = no cap)")
        if self.validate_every < 0:
            _bad("validate_every", self.validate_every, "an integer >= 0 (0 disables)")
        if self.meta_params not in META_PARAMS:
            _bad("meta_params", self.meta_params, f"one of {list(META_PARAMS)}")
        if self.validate_steps < 1:
            _bad("validate_steps", self.validate_steps, "an integer >= 1")
        if self.validate_seeds < 1:
            _bad("validate_seeds", self.validate_seeds, "an integer >= 1")

    @property
    def num_pairs(self) -> int:
        """Number of antithetic perturbation pairs per outer step (``population // 2``)."""
        return self.population // 2


def config_field_names() -> list[str]:
    """Names of all config keys, in declaration order."""
    return _cfg.field_names(MetaTrainConfig)


def config_from_dict(data: Mapping[str, Any], base: MetaTrainConfig | None = None,
                     source: str = "config dict") -> MetaTrainConfig:
    """Build a config from a flat mapping, on top of ``base`` (see :func:`lopt_graphs.config.config_from_dict`)."""
    return _cfg.config_from_dict(MetaTrainConfig, data, base, source)


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override (see :func:`lopt_graphs.config.parse_override`)."""
    return _cfg.parse_override(MetaTrainConfig, item)


def load_config(path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> MetaTrainConfig:
    """Load the YAML config at ``path`` (or the defaults), then apply ``key=value`` overrides in order."""
    return _cfg.load_config(MetaTrainConfig, path, overrides)


def config_to_dict(cfg: MetaTrainConfig) -> dict[str, Any]:
    """Plain ``{key: value}`` dict of ``cfg``, in field order."""
    return _cfg.config_to_dict(cfg)


def save_resolved_config(cfg: MetaTrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as YAML atomically; it loads back with :func:`load_config` to an equal config."""
    return _cfg.save_resolved_config(cfg, path, header="Resolved meta-training config")
