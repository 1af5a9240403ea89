"""Train an MLP on the embedded 8x8 digits with NeuralGraphOptimizer and with Adam, side by side.

Command::

    python examples/train_digits.py [--steps 300] [--seed 0] [--out runs/train_digits]

Prints a table of final train loss / test accuracy for both optimizers, writes ``results.json`` and a
loss-curve plot ``curves.png`` to ``--out``. Runs on CPU in well under a minute; no download.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.data import MinibatchStream, load_embedded


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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/train_digits")
    a = ap.parse_args(argv)
    if a.steps < 1:
        raise ValueError(f"Invalid --steps: {a.steps} (expected >= 1)")
    data = load_embedded("digits", seed=a.seed).flat()
    results = {
        "NeuralGraphOptimizer": train(lambda m: NeuralGraphOptimizer(m.parameters()), data, a.steps, a.seed, "ngo"),
        "Adam(lr=1e-3)": train(lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), data, a.steps, a.seed, "adam"),
    }
    print("| optimizer | final train loss | test accuracy | seconds |\n|---|---:|---:|---:|")
    for k, r in results.items():
        print(f"| {k} | {r['final_train_loss']:.4f} | {r['test_accuracy']:.3f} | {r['seconds']:.2f} |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"steps": a.steps, "seed": a.seed, "results": results}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, r in results.items():
        ax.plot(r["curve"], label=k, alpha=0.8)
    ax.set(xlabel="step", ylabel="minibatch loss", yscale="log", title="MLP on 8x8 digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    print(f"wrote {out / 'results.json'} and {out / 'curves.png'}")
    return results


if __name__ == "__main__":
    main()
