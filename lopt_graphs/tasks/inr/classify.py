"""INR classification: predict the class of the image an INR represents, from the INR's weights.

Models (all trained on the same splits, selected on the validation split, reported on the test split):

* ``ng_gnn`` / ``ng_transformer``: :class:`~lopt_graphs.nn.NeuralGraphEncoder` over the INR's neural graph
  with its invariant pooled readout (``graph_out=10``) as logits. Invariant to hidden-neuron permutations.
* ``ng_gnn_noneq`` / ``ng_transformer_noneq``: the same encoder on a graph whose hidden neurons carry
  positional ids (``graph_from_module(..., hidden_positions=True)``), i.e. without equivariance.
* ``mlp``: an MLP on the flattened (per-tensor normalized) weights.
* ``mlp_probes``: the same MLP on the flattened weights plus the INR's output at the ``probes`` coordinates
  (the pixels the NG models see through the output neuron's probe features): it shows how much of an NG
  model's accuracy the probe values alone explain.

Usage::

    python -m lopt_graphs.tasks.inr.classify [--config configs/tasks/inr_classify.yaml] [key=value ...]

Writes ``<out>/results.json`` (a row per model: test/val accuracy, number of training INRs, epochs, time),
``<out>/config.yaml`` and ``<out>/curves.png`` (validation accuracy per epoch).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lopt_graphs.config import bad_value, check_types
from lopt_graphs.plotting import new_figure, save_figure

from .augment import WEIGHT_AUGS, augment_weights
from .cli import parse_command, setup_run, write_json
from .common import NG_MODELS, TrainFields, encoder_config, make_batcher, new_encoder, param_scales, train_loop
from .data import INRDataset, data_config_of, load_inr_dataset, validate_data_config
from .graphs import INRGraphBatcher, probe_coords
from .make_dataset import quick_data_overrides
from .siren import siren_forward


@dataclass(frozen=True)
class ClassifyConfig(TrainFields):
    """INR classification settings (``readout``: width of the encoder's pooled ``graph_out``, followed by
    BatchNorm, ReLU and a linear layer to the logits; 0: ``graph_out`` are the logits; ``weight_aug``:
    augmentation of the training INRs' weights, one of ``none``, ``sign`` (random sign flips of hidden
    neurons, function-preserving), ``affine`` (small rotation/scale/shift of the represented image, done
    exactly on the first layer) or ``sign_affine``, see :mod:`~lopt_graphs.tasks.inr.augment`); see
    :class:`~lopt_graphs.tasks.inr.common.TrainFields` and :class:`~lopt_graphs.tasks.inr.data.INRDataConfig`."""

    out: str = "runs/tasks/inr_classify"
    readout: int = 64
    weight_aug: str = "none"

    def __post_init__(self) -> None:
        check_types(self)
        validate_data_config(self)
        self.validate_train()
        if self.weight_aug not in WEIGHT_AUGS:
            bad_value("weight_aug", self.weight_aug, f"one of {list(WEIGHT_AUGS)}")


def quick_overrides() -> dict:
    """Tiny digits setting (tests): a few hundred INRs, a small encoder, a few epochs."""
    return quick_data_overrides() | {"enc_hidden": 32, "enc_edge_hidden": 16, "enc_layers": 2, "epochs": 5,
                                     "mlp_epochs": 5, "batch_size": 16, "lr": 1e-3, "probes": 32,
                                     "models": ("ng_gnn", "mlp"), "progress": False}


class NGClassifier(nn.Module):
    """Logits from the invariant readout of a :class:`~lopt_graphs.nn.NeuralGraphEncoder` over INR graphs.

    Args:
        batcher: turns stacked SIREN parameters into a graph batch (normalization, probe features).
        variant: ``"gnn"`` or ``"transformer"``.
        cfg: the command config (encoder widths).
        num_classes: logits per INR.
    """

    def __init__(self, batcher: INRGraphBatcher, variant: str, cfg: TrainFields, num_classes: int = 10):
        super().__init__()
        self.batcher = batcher
        width = cfg.readout if cfg.readout else num_classes
        self.encoder = new_encoder(encoder_config(cfg, variant, batcher.node_in, graph_out=width),
                                   cfg.train_seed)
        # Pooled embeddings of different INRs share a large common part (role/activation/position embeddings);
        # standardizing the readout across the batch exposes the INR-dependent part to the final layer.
        self.head = (nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, num_classes))
                     if cfg.readout else nn.Identity())

    def forward(self, params: Sequence[Tensor]) -> Tensor:
        """``params``: stacked raw SIREN parameters ``[B, *shape]``; returns ``[B, num_classes]``."""
        return self.head(self.encoder(self.batcher.batch(params)).graph_out)


class MLPClassifier(nn.Module):
    """MLP on flattened weights (each parameter tensor divided by its training-set std)."""

    def __init__(self, scales: Sequence[float], in_dim: int, width: int, num_classes: int = 10, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.scales = list(scales)
        self.net = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, width),
                                 nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, num_classes))

    def inputs(self, params: Sequence[Tensor]) -> Tensor:
        """``[B, in_dim]``: the flattened, per-tensor normalized weights."""
        return torch.cat([(p / s).flatten(1) for p, s in zip(params, self.scales)], dim=1)

    def forward(self, params: Sequence[Tensor]) -> Tensor:
        return self.net(self.inputs(params))


class ProbeMLPClassifier(MLPClassifier):
    """:class:`MLPClassifier` on the flattened weights and the INR's output at fixed probe coordinates."""

    def __init__(self, scales: Sequence[float], in_dim: int, width: int, coords: Tensor, w0: float,
                 num_classes: int = 10, seed: int = 0):
        super().__init__(scales, in_dim + coords.shape[0], width, num_classes, seed)
        self.register_buffer("coords", coords)
        self.w0 = float(w0)

    def inputs(self, params: Sequence[Tensor]) -> Tensor:
        values = siren_forward(params, self.coords, self.w0)[..., 0]  # [B, probes]
        return torch.cat([super().inputs(params), values], dim=1)


def build_model(name: str, cfg: TrainFields, ds: INRDataset, train_idx: Tensor) -> nn.Module:
    """A fresh classifier by model name (see module docstring)."""
    if name in ("mlp", "mlp_probes"):
        dim = sum(p[0].numel() for p in ds.params)
        if name == "mlp":
            return MLPClassifier(param_scales(ds, train_idx), dim, cfg.mlp_width, seed=cfg.train_seed)
        if cfg.probes < 1:
            bad_value("probes", cfg.probes, "probes >= 1 for model 'mlp_probes'")
        return ProbeMLPClassifier(param_scales(ds, train_idx), dim, cfg.mlp_width,
                                  probe_coords(cfg.probes, ds.image_shape), cfg.w0, seed=cfg.train_seed)
    variant, positional = NG_MODELS[name]
    return NGClassifier(make_batcher(cfg, ds, train_idx, positional), variant, cfg)


@torch.no_grad()
def accuracy(model: nn.Module, ds: INRDataset, idx: Tensor, batch: int) -> float:
    """Top-1 accuracy of ``model`` on the INRs ``idx``."""
    model.eval()
    correct = 0
    for s in range(0, len(idx), batch):
        part = idx[s: s + batch]
        correct += int((model(ds.take(part)).argmax(-1) == ds.labels[part]).sum())
    return correct / max(1, len(idx))


def run_model(name: str, cfg: ClassifyConfig, ds: INRDataset) -> dict:
    """Train one model and evaluate it on the test split."""
    train_idx, val_idx, test_idx = ds.indices("train"), ds.indices("val"), ds.indices("test")
    model = build_model(name, cfg, ds, train_idx)
    labels = ds.labels

    aug_gen = torch.Generator().manual_seed(cfg.train_seed + 1)

    def loss_fn(pos: Tensor) -> Tensor:
        idx = train_idx[pos]
        params = ds.take(idx)
        if cfg.weight_aug != "none":
            params = augment_weights(params, cfg.weight_aug, aug_gen)
        return F.cross_entropy(model(params), labels[idx])

    epochs = cfg.mlp_epochs if name.startswith("mlp") else cfg.epochs
    fit = train_loop(model, loss_fn, len(train_idx), lambda: accuracy(model, ds, val_idx, cfg.eval_batch),
                     epochs, cfg, desc=f"classify {name}", higher_is_better=True)
    t0 = time.time()
    test_acc = accuracy(model, ds, test_idx, cfg.eval_batch)
    return {"model": name, "test_acc": test_acc, "val_acc": fit["best_val"],
            "train_acc": accuracy(model, ds, train_idx[:2000], cfg.eval_batch),
            "num_train_inrs": len(train_idx), "num_train_images": int(ds.indices("train", False).numel()),
            "num_test_inrs": len(test_idx), "epochs_run": fit["epochs_run"], "best_epoch": fit["best_epoch"],
            "train_seconds": fit["train_seconds"], "test_seconds": time.time() - t0,
            "num_params": sum(p.numel() for p in model.parameters()), "history": fit["history"]}


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_command(ClassifyConfig, argv, "Classify INRs from their weights (NG-GNN, NG-T, baselines).")
    if cfg.quick:
        cfg = dataclasses.replace(cfg, **quick_overrides())
    out = setup_run(cfg, cfg.out)
    ds = load_inr_dataset(data_config_of(cfg))
    results = {"dataset": cfg.dataset, "psnr": ds.psnr_summary(), "chance": 1.0 / int(ds.labels.max() + 1),
               "probes": cfg.probes, "models": []}
    for name in cfg.models:
        row = run_model(name, cfg, ds)
        results["models"].append(row)
        write_json(results, out / "results.json")
        print(f"{name}: test acc {row['test_acc']:.4f} (val {row['val_acc']:.4f}, {row['num_train_inrs']} train "
              f"INRs, {row['epochs_run']} epochs, {row['train_seconds']:.0f}s)")
    save_curves(results, out / "curves.png")
    return results


def save_curves(results: dict, path) -> None:
    """Validation accuracy per epoch of every model."""
    fig, ax = new_figure(figsize=(5, 3.5))
    for row in results["models"]:
        h = row["history"]
        ax.plot([r["epoch"] for r in h], [r["val"] for r in h], label=f"{row['model']} ({row['test_acc']:.3f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val accuracy")
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=100)


if __name__ == "__main__":
    main()
