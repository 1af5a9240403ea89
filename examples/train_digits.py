"""Train an MLP on the embedded 8x8 digits with NeuralGraphOptimizer and with Adam, side by side.

Commands::

    python examples/train_digits.py                              # 300 steps, seed 0, to runs/train_digits
    python examples/train_digits.py steps=100 seed=1 out=runs/digits_s1
    python examples/train_digits.py --help                       # the keys and their defaults

Prints a table of final train loss / test accuracy for both optimizers, writes ``results.json``, the resolved
``config.yaml`` and a loss-curve plot ``curves.png`` to ``out``. Runs on CPU in well under a minute; no
download.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.config import TrainKeys, parse_command, save_resolved_config, set_threads
from lopt_graphs.data import MinibatchStream, load_embedded
from lopt_graphs.plotting import new_figure, save_figure


@dataclass(frozen=True)
class DigitsConfig(TrainKeys):
    """Keys of ``examples/train_digits.py``: ``steps`` of each optimizer, ``seed`` (of the data split, the
    initialisation and the minibatch order), ``threads``, and ``out``, the output folder."""

    steps: int = 300
    out: str = "runs/train_digits"


def train(make_opt, data, steps: int, seed: int, label: str) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = make_opt(model)
    stream = MinibatchStream(data, batch_size=64, seed=seed)
    loss_fn = nn.CrossEntropyLoss()
    curve = []
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), desc=label, leave=False):
        x, y = stream.next()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    secs = time.perf_counter() - t0
    with torch.no_grad():
        train_loss = loss_fn(model(data.x_train), data.y_train).item()
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    return {"curve": curve, "final_train_loss": train_loss, "test_accuracy": acc, "seconds": secs}


def main(argv: Sequence[str] | None = None) -> dict:
    """``[--config FILE] [key=value ...]`` (keys of :class:`DigitsConfig`); returns the results per optimizer."""
    cfg = parse_command(DigitsConfig, argv, __doc__.split("\n")[0])
    set_threads(cfg.threads)
    data = load_embedded("digits", seed=cfg.seed).flat()
    results = {
        "NeuralGraphOptimizer": train(lambda m: NeuralGraphOptimizer(m.parameters()), data, cfg.steps, cfg.seed,
                                      "ngo"),
        "Adam(lr=1e-3)": train(lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), data, cfg.steps, cfg.seed,
                               "adam"),
    }
    print("| optimizer | final train loss | test accuracy | seconds |\n|---|---:|---:|---:|")
    for k, r in results.items():
        print(f"| {k} | {r['final_train_loss']:.4f} | {r['test_accuracy']:.3f} | {r['seconds']:.2f} |")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, out / "config.yaml", header="Resolved examples/train_digits.py config")
    (out / "results.json").write_text(json.dumps({"steps": cfg.steps, "seed": cfg.seed, "results": results},
                                                 indent=1))
    fig, ax = new_figure(figsize=(6, 4))
    for k, r in results.items():
        ax.plot(r["curve"], label=k, alpha=0.8)
    ax.set(xlabel="step", ylabel="minibatch loss", yscale="log", title="MLP on 8x8 digits")
    ax.legend()
    save_figure(fig, out / "curves.png", dpi=120)
    print(f"wrote {out / 'results.json'} and {out / 'curves.png'}")
    return results


if __name__ == "__main__":
    main()
