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

import dataclasses
import difflib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
ESTIMATORS: tuple[str, ...] = ("es", "pes", "tbptt")

#: Estimators that sample antithetic perturbation pairs (``population`` must be even and >= 2).
_ANTITHETIC_ESTIMATORS: frozenset[str] = frozenset({"es", "pes"})


@dataclass(frozen=True)
class MetaTrainConfig:
    """Every knob of a meta-training run.

    Construction coerces ``int`` values of ``float`` fields to ``float``, raises :class:`TypeError` for
    values of the wrong type and calls :meth:`validate` (which raises :class:`ValueError`).

    Attributes:
        outer_steps: Total number of outer (meta) steps of the run; a resumed run continues up to this
            count. ``0`` is allowed (e.g. evaluate or report only).
        estimator: Meta-gradient estimator: ``"es"`` (antithetic evolution strategies on each
            truncation), ``"pes"`` (persistent ES, unbiased across truncations) or ``"tbptt"``
            (truncated backpropagation through the unroll).
        population: Number of perturbed unrolls per outer step for ``es``/``pes``; they are drawn as
            ``population // 2`` antithetic pairs, so it must be even and >= 2. Ignored (but must be
            >= 1) for ``tbptt``.
        sigma: Standard deviation of the Gaussian perturbations of the meta-parameters (es/pes); > 0.
        outer_lr: Learning rate of the outer optimizer on the meta-parameters; > 0.
        grad_clip: Maximum global L2 norm of the meta-gradient; ``0`` disables clipping; >= 0.
        truncation: ``K``, the number of inner steps unrolled per outer step; 1 <= K <= ``horizon``.
        horizon: ``T``, the number of inner steps of one inner run before its task is reset; >= 1.
        num_tasks: Number of inner runs unrolled in parallel; they are reset at staggered times so
            the outer gradient mixes early and late phases of training; >= 1.
        family: Name of the task family inner problems are sampled from (interpreted by the engine).
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
        threads: Number of torch intra-op threads; ``0`` leaves torch's default; >= 0.
    """

    outer_steps: int = 1000
    estimator: str = "pes"
    population: int = 8
    sigma: float = 0.01
    outer_lr: float = 3e-3
    grad_clip: float = 1.0
    truncation: int = 10
    horizon: int = 200
    num_tasks: int = 2
    family: str = "mixture"
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
    threads: int = 0

    def __post_init__(self) -> None:
        """Type-check (coercing ints of float fields to float), then :meth:`validate`."""
        for f in dataclasses.fields(self):
            value = _check_type(f.name, getattr(self, f.name), source="MetaTrainConfig")
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Check the value constraints of every field.

        Raises:
            ValueError: naming the first offending key, its value and what is expected.
        """
        if self.estimator not in ESTIMATORS:
            _bad("estimator", self.estimator, f"one of {list(ESTIMATORS)}")
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
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            _bad("sigma", self.sigma, "a finite float > 0")
        if not (math.isfinite(self.outer_lr) and self.outer_lr > 0):
            _bad("outer_lr", self.outer_lr, "a finite float > 0")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            _bad("grad_clip", self.grad_clip, "a finite float >= 0 (0 disables clipping)")
        if self.horizon < 1:
            _bad("horizon", self.horizon, "an integer >= 1")
        if self.truncation < 1:
            _bad("truncation", self.truncation, "an integer >= 1")
        if self.truncation > self.horizon:
            _bad("truncation", self.truncation, f"an integer <= horizon ({self.horizon})")
        if self.num_tasks < 1:
            _bad("num_tasks", self.num_tasks, "an integer >= 1")
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
        if self.threads < 0:
            _bad("threads", self.threads, "an integer >= 0 (0 = torch default)")

    @property
    def num_pairs(self) -> int:
        """Number of antithetic perturbation pairs per outer step (``population // 2``)."""
        return self.population // 2


def _bad(key: str, value: Any, expected: str) -> None:
    """Raise the uniform :class:`ValueError` of :meth:`MetaTrainConfig.validate`."""
    raise ValueError(f"invalid config value {key}={value!r}: expected {expected}")


_FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(MetaTrainConfig)}
_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}
#: Python type of every field (annotations are strings because of ``from __future__ import annotations``).
_FIELD_TYPES: dict[str, type] = {name: _TYPES[str(f.type)] for name, f in _FIELDS.items()}


def config_field_names() -> list[str]:
    """Names of all config keys, in declaration order."""
    return list(_FIELDS)


def _check_type(key: str, value: Any, source: str) -> Any:
    """Return ``value`` converted to the type of field ``key``, or raise :class:`TypeError`.

    ``int`` is accepted (and converted) for ``float`` fields, as is a string :func:`float` parses;
    ``None`` is accepted as ``""`` for the string fields whose default is ``""``; ``bool`` is never
    accepted for numeric fields.
    """
    expected = _FIELD_TYPES[key]
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif expected is str:
        if isinstance(value, str):
            return value
        if value is None and _FIELDS[key].default == "":
            return ""
    hint = " (use true/false)" if expected is bool else ""
    raise TypeError(
        f"config key {key!r} ({source}) expects {expected.__name__}{hint}, "
        f"got {value!r} of type {type(value).__name__}"
    )


def _unknown_key_error(key: str, source: str) -> ValueError:
    """Build the error of an unknown key, with a close-match suggestion and the valid keys."""
    close = difflib.get_close_matches(key, list(_FIELDS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown config key {key!r} in {source}{hint}; valid keys: {', '.join(_FIELDS)}")


def config_from_dict(
    data: Mapping[str, Any], base: MetaTrainConfig | None = None, source: str = "config dict"
) -> MetaTrainConfig:
    """Build a config from a flat mapping, on top of ``base`` (default: all defaults).

    Args:
        data: Key/value pairs; every key must be a field of :class:`MetaTrainConfig`.
        base: Config whose values are kept for keys absent from ``data``.
        source: Where ``data`` came from, used in error messages (e.g. the YAML path).

    Raises:
        ValueError: for unknown keys (listing the valid ones) or invalid values.
        TypeError: for values of the wrong type.
    """
    values = config_to_dict(base) if base is not None else {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in _FIELDS:
            raise _unknown_key_error(str(key), source)
        values[key] = _check_type(key, value, source)
    return MetaTrainConfig(**values)


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override into ``(key, typed value)``.

    The value is parsed with :func:`yaml.safe_load` and type-checked like a YAML file value, except
    for ``str`` fields, which take the raw text after the first ``=`` (so ``family=123`` is the string
    ``"123"`` and ``resume=`` is ``""``).

    Raises:
        ValueError: if ``item`` has no ``=``, or the key is unknown.
        TypeError: if the value has the wrong type for the key.
    """
    if "=" not in item:
        raise ValueError(
            f"override {item!r} is not of the form key=value (e.g. outer_steps=10); "
            f"valid keys: {', '.join(_FIELDS)}"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    source = f"override {item!r}"
    if key not in _FIELDS:
        raise _unknown_key_error(key, source)
    if _FIELD_TYPES[key] is str:
        return key, raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse the value of {source}: {exc}") from exc
    return key, _check_type(key, value, source)


def load_config(path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> MetaTrainConfig:
    """Load a config from an optional YAML file, then apply ``key=value`` overrides in order.

    Args:
        path: YAML file holding a flat mapping of config keys (``None`` or ``""``: start from the
            defaults). An empty file is an empty mapping.
        overrides: ``key=value`` strings (later ones win).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for a file that is not a YAML mapping, unknown keys, malformed overrides or
            invalid values.
        TypeError: for values of the wrong type.
    """
    cfg = MetaTrainConfig()
    if path:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot parse YAML config {str(path)!r}: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"YAML config {str(path)!r} must contain a mapping of config keys, got {type(data).__name__}"
            )
        cfg = config_from_dict(data, source=f"YAML config {str(path)!r}")
    if isinstance(overrides, str):  # a lone string would otherwise be iterated character by character
        overrides = [overrides]
    parsed = dict(parse_override(item) for item in overrides)
    if parsed:
        cfg = dataclasses.replace(cfg, **parsed)
    return cfg


def config_to_dict(cfg: MetaTrainConfig) -> dict[str, Any]:
    """Plain ``{key: value}`` dict of ``cfg`` (only ints, floats, bools and strings), in field order."""
    return {name: getattr(cfg, name) for name in _FIELDS}


def save_resolved_config(cfg: MetaTrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as YAML to ``path`` atomically (temporary file in the same directory + ``os.replace``).

    The file loads back with :func:`load_config` to an equal config. Parent directories are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Resolved meta-training config (written by meta_train.config.save_resolved_config).\n"
    text += yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
