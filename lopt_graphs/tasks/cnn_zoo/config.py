"""Typed configuration of a CNN-zoo task: how the zoo is generated and how accuracy is predicted from it.

One flat YAML file (``configs/tasks/zoo_<name>.yaml``) configures both commands::

    python -m lopt_graphs.tasks.cnn_zoo.make_zoo --config configs/tasks/zoo_small.yaml [key=value ...]
    python -m lopt_graphs.tasks.cnn_zoo.predict  --config configs/tasks/zoo_small.yaml [key=value ...]

The fields listed in :data:`ZOO_KEYS` decide the zoo's content and form its cache key; the others only
affect prediction. Unknown keys are errors (see :mod:`lopt_graphs.config`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value

__all__ = ["ZOO_KEYS", "ZooTaskConfig", "load_task_config"]

#: Activations a zoo may sample (names of ``lopt_graphs.graph.ACTIVATIONS``).
ZOO_ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "gelu")


@dataclass(frozen=True)
class ZooTaskConfig(_cfg.CheckedConfig):
    """Every knob of a CNN-zoo task.

    Zoo generation (these keys, in :data:`ZOO_KEYS`, form the zoo's cache key):
        kind: ``"small"`` (Small CNN Zoo: three 3x3 convs of 16 channels, global average pooling, a linear
            layer) or ``"variant"`` (sampled depths, widths, kernel sizes and residual connections).
        dataset: embedded dataset the CNNs are trained on (``"digits"`` 8x8 or ``"mnist5k"`` 28x28).
        num_runs: training runs (one hyper-parameter sample each); every run saves ``len(ckpt_fractions)``
            checkpoints.
        epochs: training budget in epochs of the full training set (the same number of steps for every run,
            whatever its training fraction).
        batch_size: minibatch size of the CNNs' training.
        ckpt_fractions: fractions of the step budget after which a checkpoint is saved (increasing, in
            ``(0, 1]``).
        lr_min, lr_max: Adam learning rate, log-uniform.
        init_min, init_max: init scale ``s`` (weights ~ N(0, s^2 / fan_in), biases 0), log-uniform.
        l2_min, l2_max: L2 penalty coefficient, log-uniform.
        dropout_max: dropout probability, uniform in ``[0, dropout_max]``.
        frac_min, frac_max: fraction of the training set a run may see, uniform.
        activations: activations sampled uniformly per run.
        depth_min, depth_max, width_min, width_max, kernels, residual_prob: architecture sampling of the
            ``"variant"`` zoo (convs, channels, kernel sizes, probability that a conv after the first is a
            residual ``h = h + f(conv(h))`` block).
        num_archs: distinct architectures of the ``"variant"`` zoo (runs of one architecture and activation
            are trained together).
        max_group: most networks trained together in one batched group.
        val_fraction, test_fraction: fractions of runs in the validation and test splits (split by run).
        data_seed: seed of the dataset's train/test split.
        seed: seed of the zoo (hyper-parameters, inits, minibatches, dropout, splits).

    Other:
        name: task name; results go to ``{out_dir}/zoo_{name}``.
        cache_dir: zoo cache directory (``""``: ``default_cache_dir()/cnn_zoo``).
        out_dir: parent directory of the results.
        threads: torch intra-op threads (1, as every command; ``0`` leaves torch's default).

    Prediction:
        models: predictors to train: ``"gnn"`` (NG-GNN), ``"transformer"`` (NG-T), ``"statnn"``.
        hidden, edge_hidden, layers, heads: encoder size.
        edge_features: ``"kernel"`` (each kernel position in its own input channel, so the encoder's
            per-entry linear map reads whole kernels) or ``"value"`` (one channel: the encoder then sees only
            each kernel's mean); see :class:`~lopt_graphs.tasks.cnn_zoo.predict.ZooGraphs`.
        pred_epochs: training epochs of the encoder predictors (the best validation epoch is kept).
        pred_batch: graphs per batch.
        pred_lr: AdamW learning rate (cosine decay).
        pred_weight_decay: AdamW weight decay.
        max_train_checkpoints: cap on training checkpoints (``0``: all).
        statnn_model: ``"hgb"`` (HistGradientBoostingRegressor) or ``"gbr"`` (GradientBoostingRegressor).
        pred_seed: seed of the predictors.
        pred_ensemble: encoder predictors trained with seeds ``pred_seed, pred_seed + 1, ...`` whose
            predictions are averaged (1: a single predictor).
    """

    kind: str = "small"
    dataset: str = "digits"
    num_runs: int = 1000
    epochs: int = 8
    batch_size: int = 32
    ckpt_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    lr_min: float = 1e-4
    lr_max: float = 3e-2
    init_min: float = 0.2
    init_max: float = 3.0
    l2_min: float = 1e-6
    l2_max: float = 1e-2
    dropout_max: float = 0.5
    frac_min: float = 0.05
    frac_max: float = 1.0
    activations: tuple[str, ...] = ZOO_ACTIVATIONS
    depth_min: int = 2
    depth_max: int = 4
    width_min: int = 8
    width_max: int = 32
    kernels: tuple[int, ...] = (3, 5)
    residual_prob: float = 0.5
    num_archs: int = 16
    max_group: int = 64
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    data_seed: int = 0
    seed: int = 0
    name: str = "small"
    cache_dir: str = ""
    out_dir: str = "runs/tasks"
    threads: int = 1
    models: tuple[str, ...] = ("gnn", "statnn")
    hidden: int = 32
    edge_hidden: int = 16
    layers: int = 3
    heads: int = 4
    edge_features: str = "kernel"
    pred_epochs: int = 30
    pred_batch: int = 32
    pred_lr: float = 2e-3
    pred_weight_decay: float = 1e-4
    max_train_checkpoints: int = 0
    statnn_model: str = "hgb"
    pred_seed: int = 0
    pred_ensemble: int = 1

    def validate(self) -> None:
        """Check value constraints.

        Raises:
            ValueError: naming the first offending key.
        """
        if self.kind not in ("small", "variant"):
            bad_value("kind", self.kind, "'small' or 'variant'")
        if self.dataset not in ("digits", "mnist5k"):
            bad_value("dataset", self.dataset, "'digits' or 'mnist5k'")
        for k in ("num_runs", "epochs", "batch_size", "max_group", "hidden", "edge_hidden", "heads",
                  "pred_batch", "num_archs", "pred_ensemble"):
            if getattr(self, k) < 1:
                bad_value(k, getattr(self, k), "an int >= 1")
        for k in ("layers", "pred_epochs", "max_train_checkpoints", "threads", "seed", "data_seed", "pred_seed"):
            if getattr(self, k) < 0:
                bad_value(k, getattr(self, k), "an int >= 0")
        f = self.ckpt_fractions
        if not f or any(not 0 < a <= 1 for a in f) or any(b <= a for a, b in zip(f, f[1:])):
            bad_value("ckpt_fractions", f, "a non-empty increasing list of fractions in (0, 1]")
        for lo, hi in (("lr_min", "lr_max"), ("init_min", "init_max"), ("l2_min", "l2_max"),
                       ("frac_min", "frac_max")):
            a, b = getattr(self, lo), getattr(self, hi)
            if not 0 < a <= b:
                bad_value(lo, (a, b), f"0 < {lo} <= {hi}")
        if self.frac_max > 1:
            bad_value("frac_max", self.frac_max, "a fraction <= 1")
        if not 0 <= self.dropout_max < 1:
            bad_value("dropout_max", self.dropout_max, "a probability in [0, 1)")
        if not self.activations or any(a not in ZOO_ACTIVATIONS for a in self.activations):
            bad_value("activations", self.activations, f"a non-empty list from {ZOO_ACTIVATIONS}")
        if not 1 <= self.depth_min <= self.depth_max:
            bad_value("depth_min", (self.depth_min, self.depth_max), "1 <= depth_min <= depth_max")
        if not 1 <= self.width_min <= self.width_max:
            bad_value("width_min", (self.width_min, self.width_max), "1 <= width_min <= width_max")
        if not self.kernels or any(k < 1 or k % 2 == 0 for k in self.kernels):
            bad_value("kernels", self.kernels, "a non-empty list of odd kernel sizes")
        if not 0 <= self.residual_prob <= 1:
            bad_value("residual_prob", self.residual_prob, "a probability")
        if not (0 < self.test_fraction < 1 and 0 <= self.val_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            bad_value("test_fraction", (self.val_fraction, self.test_fraction),
                      "val_fraction >= 0, test_fraction > 0, val_fraction + test_fraction < 1")
        if not self.models or any(m not in ("gnn", "transformer", "statnn") for m in self.models):
            bad_value("models", self.models, "a non-empty list from 'gnn', 'transformer', 'statnn'")
        if self.edge_features not in ("value", "kernel"):
            bad_value("edge_features", self.edge_features, "'value' or 'kernel'")
        if self.statnn_model not in ("hgb", "gbr"):
            bad_value("statnn_model", self.statnn_model, "'hgb' or 'gbr'")
        if self.hidden % self.heads and "transformer" in self.models:
            bad_value("heads", self.heads, f"a divisor of hidden={self.hidden}")
        if not self.name:
            bad_value("name", self.name, "a non-empty string")

    def zoo_key(self) -> dict[str, object]:
        """The fields that decide the zoo's content (its cache key)."""
        d = _cfg.config_to_dict(self)
        return {k: d[k] for k in ZOO_KEYS}

    @property
    def out(self) -> Path:
        """Results directory of this task."""
        return Path(self.out_dir) / f"zoo_{self.name}"


#: Fields of :class:`ZooTaskConfig` that decide the zoo's content.
ZOO_KEYS: tuple[str, ...] = (
    "kind", "dataset", "num_runs", "epochs", "batch_size", "ckpt_fractions", "lr_min", "lr_max", "init_min",
    "init_max", "l2_min", "l2_max", "dropout_max", "frac_min", "frac_max", "activations", "depth_min",
    "depth_max", "width_min", "width_max", "kernels", "residual_prob", "num_archs", "max_group",
    "val_fraction", "test_fraction", "data_seed", "seed",
)


def load_task_config(path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> ZooTaskConfig:
    """Load a :class:`ZooTaskConfig` from an optional YAML file and ``key=value`` overrides."""
    return _cfg.load_config(ZooTaskConfig, path, overrides)
