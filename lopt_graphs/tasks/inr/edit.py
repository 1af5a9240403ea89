"""INR editing: change an INR's weights so that it represents its image *dilated* (3x3 max filter).

The NG editor runs :class:`~lopt_graphs.nn.NeuralGraphEncoder` with a per-edge head (``edge_out=1``) and a
per-node head (``node_out=1``); the outputs are read back into parameter shapes with ``spec.from_graph`` and
added to the INR's weights, scaled by ``delta_scale`` times each parameter tensor's training-set std::

    W_edited = W + delta_scale * std(W) * delta(W)

The weight change is equivariant to hidden-neuron permutations, so the edited INR's rendering is invariant.
The last layer of each head starts at zero (the first edit is the identity). The loss is the MSE between the
edited INR rendered on the image's pixel grid and ``F.max_pool2d(image, 3, 1, 1)``. Baselines: an MLP from the
flattened weights to a weight change (same scaling, zero-initialized output), and the do-nothing edit.

Usage::

    python -m lopt_graphs.tasks.inr.edit [--config configs/tasks/inr_edit.yaml] [key=value ...]

Writes ``<out>/results.json`` (test MSE per model and of the do-nothing edit), ``<out>/config.yaml`` and
``<out>/edits.png`` (input INR, target, edits of each model for a few test images).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lopt_graphs.config import bad_value, check_types
from lopt_graphs.plotting import new_figure, save_figure

from .cli import parse_command, setup_run, write_json
from .common import NG_MODELS, TrainFields, encoder_config, make_batcher, new_encoder, param_scales, train_loop
from .data import INRDataset, data_config_of, load_inr_dataset, validate_data_config
from .graphs import INRGraphBatcher
from .make_dataset import quick_data_overrides
from .siren import pixel_grid, siren_forward


@dataclass(frozen=True)
class EditConfig(TrainFields):
    """INR editing settings (see :class:`~lopt_graphs.tasks.inr.common.TrainFields`).

    Attributes:
        delta_scale: weight change per unit of head output, in units of each tensor's std.
        samples: test images shown in ``edits.png`` (0: no PNG).
    """

    models: tuple[str, ...] = ("ng_gnn", "mlp")
    delta_scale: float = 0.1
    samples: int = 6
    out: str = "runs/tasks/inr_edit"

    def __post_init__(self) -> None:
        check_types(self)
        validate_data_config(self)
        self.validate_train()
        if self.delta_scale <= 0:
            bad_value("delta_scale", self.delta_scale, "a positive float")
        if "mlp_probes" in self.models:
            bad_value("models", self.models, "editors from 'mlp' and the NG models ('mlp_probes' classifies only)")


def quick_overrides() -> dict:
    """Tiny digits setting (tests)."""
    return quick_data_overrides() | {"enc_hidden": 32, "enc_edge_hidden": 16, "enc_layers": 2, "epochs": 3,
                                     "mlp_epochs": 3, "batch_size": 32, "lr": 3e-3, "samples": 4,
                                     "models": ("ng_gnn", "mlp"), "progress": False}


def dilate(images: Tensor) -> Tensor:
    """3x3 max filter (grayscale dilation) of ``[n, 1, H, W]`` images."""
    return F.max_pool2d(images, kernel_size=3, stride=1, padding=1)


class NGEditor(nn.Module):
    """Weight change from the equivariant edge/node heads of a :class:`~lopt_graphs.nn.NeuralGraphEncoder`."""

    def __init__(self, batcher: INRGraphBatcher, variant: str, cfg: TrainFields, delta_scale: float):
        super().__init__()
        self.batcher = batcher
        self.delta_scale = float(delta_scale)
        self.encoder = new_encoder(encoder_config(cfg, variant, batcher.node_in, edge_out=1, node_out=1),
                                   cfg.train_seed)
        for head in (self.encoder.edge_head_out, self.encoder.node_head_out):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def delta(self, params: Sequence[Tensor]) -> list[Tensor]:
        """Weight change ``[B, *shape]`` per parameter (raw units)."""
        out = self.encoder(self.batcher.batch(params))
        raw = self.batcher.unbatch(out.edge_out, out.node_out, params[0].shape[0])
        return [d * (self.delta_scale * s) for d, s in zip(raw, self.batcher.scales)]

    def forward(self, params: Sequence[Tensor]) -> list[Tensor]:
        """Edited parameters."""
        return [p + d for p, d in zip(params, self.delta(params))]


class MLPEditor(nn.Module):
    """Weight change from an MLP on the flattened (normalized) weights."""

    def __init__(self, scales: Sequence[float], shapes: Sequence[torch.Size], width: int, delta_scale: float,
                 seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.scales = list(scales)
        self.shapes = [tuple(s) for s in shapes]
        self.delta_scale = float(delta_scale)
        dim = sum(int(torch.Size(s).numel()) for s in self.shapes)
        self.net = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def delta(self, params: Sequence[Tensor]) -> list[Tensor]:
        b = params[0].shape[0]
        flat = self.net(torch.cat([(p / s).flatten(1) for p, s in zip(params, self.scales)], dim=1))
        sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        return [c.reshape(b, *shape) * (self.delta_scale * s)
                for c, shape, s in zip(flat.split(sizes, dim=1), self.shapes, self.scales)]

    def forward(self, params: Sequence[Tensor]) -> list[Tensor]:
        return [p + d for p, d in zip(params, self.delta(params))]


def build_editor(name: str, cfg: EditConfig, ds: INRDataset, train_idx: Tensor) -> nn.Module:
    """A fresh editor by model name (``mlp`` or an NG model name)."""
    if name == "mlp":
        return MLPEditor(param_scales(ds, train_idx), [p.shape[1:] for p in ds.params], cfg.mlp_width,
                         cfg.delta_scale, seed=cfg.train_seed)
    variant, positional = NG_MODELS[name]
    return NGEditor(make_batcher(cfg, ds, train_idx, positional), variant, cfg, cfg.delta_scale)


class EditTask:
    """Targets and losses of the dilation task on an INR dataset."""

    def __init__(self, ds: INRDataset):
        self.ds = ds
        h, w = ds.image_shape
        self.coords = pixel_grid(h, w)
        self.targets = dilate(ds.images).reshape(ds.images.shape[0], h * w)

    def render(self, params: Sequence[Tensor]) -> Tensor:
        """``[B, H*W]`` renderings of stacked parameters."""
        return siren_forward(params, self.coords, self.ds.w0).squeeze(-1)

    def loss(self, params: Sequence[Tensor], idx: Tensor) -> Tensor:
        """Mean over INRs ``idx`` of the per-pixel MSE to the dilated images."""
        return (self.render(params) - self.targets[self.ds.image_id[idx]]).pow(2).mean()

    @torch.no_grad()
    def mse(self, editor: nn.Module | None, idx: Tensor, batch: int) -> float:
        """Test MSE of ``editor`` (``None``: the do-nothing edit) over the INRs ``idx``."""
        total = 0.0
        for s in range(0, len(idx), batch):
            part = idx[s: s + batch]
            params = self.ds.take(part)
            if editor is not None:
                params = editor(params)
            total += float(self.loss(params, part)) * len(part)
        return total / max(1, len(idx))


def run_model(name: str, cfg: EditConfig, task: EditTask) -> tuple[dict, nn.Module]:
    ds = task.ds
    train_idx, val_idx, test_idx = ds.indices("train"), ds.indices("val"), ds.indices("test")
    model = build_editor(name, cfg, ds, train_idx)

    def loss_fn(pos: Tensor) -> Tensor:
        idx = train_idx[pos]
        return task.loss(model(ds.take(idx)), idx)

    epochs = cfg.mlp_epochs if name == "mlp" else cfg.epochs
    fit = train_loop(model, loss_fn, len(train_idx), lambda: task.mse(model, val_idx, cfg.eval_batch), epochs,
                     cfg, desc=f"edit {name}", higher_is_better=False)
    row = {"model": name, "test_mse": task.mse(model, test_idx, cfg.eval_batch), "val_mse": fit["best_val"],
           "num_train_inrs": len(train_idx), "num_test_inrs": len(test_idx), "epochs_run": fit["epochs_run"],
           "best_epoch": fit["best_epoch"], "train_seconds": fit["train_seconds"],
           "num_params": sum(p.numel() for p in model.parameters()), "history": fit["history"]}
    return row, model


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_command(EditConfig, argv, "Edit INRs (dilation) with NG encoders and baselines.")
    if cfg.quick:
        cfg = dataclasses.replace(cfg, **quick_overrides())
    out = setup_run(cfg, cfg.out)
    ds = load_inr_dataset(data_config_of(cfg))
    task = EditTask(ds)
    test_idx = ds.indices("test")
    results = {"dataset": cfg.dataset, "psnr": ds.psnr_summary(), "num_test_inrs": len(test_idx),
               "do_nothing_test_mse": task.mse(None, test_idx, cfg.eval_batch), "models": []}
    models: dict[str, nn.Module] = {}
    for name in cfg.models:
        row, models[name] = run_model(name, cfg, task)
        results["models"].append(row)
        write_json(results, out / "results.json")
        print(f"{name}: test MSE {row['test_mse']:.5f} (do-nothing {results['do_nothing_test_mse']:.5f}, "
              f"{row['epochs_run']} epochs, {row['train_seconds']:.0f}s)")
    if cfg.samples:
        results["edits_png"] = str(save_edits(task, models, test_idx[: cfg.samples], out / "edits.png"))
        write_json(results, out / "results.json")
    return results


@torch.no_grad()
def save_edits(task: EditTask, models: dict[str, nn.Module], idx: Tensor, path):
    """Rows: test INRs; columns: input INR rendering, dilated target, each model's edited rendering."""
    ds = task.ds
    h, w = ds.image_shape
    params = ds.take(idx)
    cols = [("input INR", task.render(params)), ("target", task.targets[ds.image_id[idx]])]
    cols += [(name, task.render(m(params))) for name, m in models.items()]
    fig, axes = new_figure(len(idx), len(cols), figsize=(1.6 * len(cols), 1.6 * len(idx)), squeeze=False)
    for j, (title, img) in enumerate(cols):
        axes[0, j].set_title(title, fontsize=8)
        for i in range(len(idx)):
            axes[i, j].imshow(img[i].reshape(h, w).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    return save_figure(fig, path, dpi=100)


if __name__ == "__main__":
    main()
