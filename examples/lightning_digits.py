"""PyTorch Lightning: a ``LightningModule`` whose ``configure_optimizers`` returns a NeuralGraphOptimizer.

Command::

    python examples/lightning_digits.py [steps=200] [seed=0] [threads=1]     # --help: the keys and defaults

An MLP on the embedded 8x8 digits (no download). ``configure_optimizers`` builds the optimizer with
``NeuralGraphOptimizer.for_module(self)`` and returns it with a per-step cosine schedule in Lightning's
scheduler dict; Lightning calls ``optimizer.step(closure)``, which the optimizer supports like any
``torch.optim`` optimizer. Needs ``pip install lightning`` (the ``models`` extra). Prints the first and last
training losses.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.config import TrainKeys, parse_command, set_threads
from lopt_graphs.data import load_embedded


class DigitsMLP(L.LightningModule):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.steps = steps
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        opt = NeuralGraphOptimizer.for_module(self)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def train(steps: int = 200, seed: int = 0, quiet: bool = False) -> dict:
    """Fit with a Lightning ``Trainer`` (CPU, no logger, no checkpoints); returns first/last losses."""
    L.seed_everything(seed, verbose=False)
    data = load_embedded("digits")
    ds = torch.utils.data.TensorDataset(data.x_train.reshape(len(data.x_train), -1).float(), data.y_train)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    model = DigitsMLP(steps)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():  # Lightning's hints about dataloader workers on a tiny CPU run
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    opt = trainer.optimizers[0]
    out = {"first_loss": sum(model.losses[:10]) / 10, "last_loss": sum(model.losses[-10:]) / 10,
           "steps": len(model.losses), "lr_end": opt.param_groups[0]["lr"], "optimizer": type(opt).__name__}
    if not quiet:
        print(f"{out['optimizer']}: loss {out['first_loss']:.3f} -> {out['last_loss']:.3f} in {out['steps']} steps "
              f"(lr multiplier at the end {out['lr_end']:.3f})")
    return out


@dataclass(frozen=True)
class LightningConfig(TrainKeys):
    """Keys of ``examples/lightning_digits.py``: ``steps``, ``seed`` (of Lightning's ``seed_everything`` and the
    minibatch order) and ``threads``."""

    steps: int = 200


def main(argv: Sequence[str] | None = None) -> dict:
    """``[--config FILE] [key=value ...]`` (keys of :class:`LightningConfig`); returns what :func:`train` returns."""
    cfg = parse_command(LightningConfig, argv, __doc__.split("\n")[0])
    set_threads(cfg.threads)
    return train(cfg.steps, cfg.seed)


if __name__ == "__main__":
    main()
