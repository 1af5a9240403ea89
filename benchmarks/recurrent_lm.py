"""Learned checkpoints against Adam on a recurrent language model with a large vocabulary.

Commands::

    lopt-recurrent-lm                                          # default and v1 checkpoints, Adam 1e-3 / 1e-2
    lopt-recurrent-lm steps=200 told=true out=benchmarks/results/recurrent_lm/told200.json
    python -m benchmarks.recurrent_lm --help                   # the keys and their defaults

Meta-training never sees a recurrent network or an embedding table. This trains the LSTM language model of
``tests/graph/test_lm_optimizer.py`` (``Embedding(vocab, 8)``, an LSTM of 16 units, ``Linear(16, 12)``, tanh,
``Linear(12, vocab)``: 212k parameters at the default 10,000-token vocabulary, whose graph is sparsified for
the encoder) on synthetic stride sequences (each row counts from a random token of the first 16 by a stride of
1-3, modulo 16; context 12, batch 8: learnable, so the loss can fall far below ``log(vocab)``), with every
checkpoint (``NeuralGraphOptimizer.for_module``, ``lr=1``; told ``total_steps=steps`` when ``told``) and with
Adam at each of ``adam_lrs``, on seeds ``0 .. seeds-1`` (the same initialization and batches for every
optimizer of a seed). Reported per optimizer: the loss ratio (mean of the last 3 training losses over the first)
median and worst over the seeds, and the median curve (PNG). Prints a markdown table; writes JSON, markdown and
the plot next to ``out``.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import report_main
from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value
from lopt_graphs.io import finite_or_none
from lopt_graphs.optim import load_learned_update
from lopt_graphs.plotting import new_figure, save_figure

__all__ = ["RecurrentLMConfig", "RecurrentLM", "batch", "main", "run", "train_losses"]

#: Tokens the stride sequences use (the rest of the vocabulary never occurs).
USED_TOKENS = 16


@dataclass(frozen=True)
class RecurrentLMConfig:
    """Keys of ``lopt-recurrent-lm``.

    Attributes:
        ckpts: checkpoints (shipped names or paths; ``default``: the shipped default).
        adam_lrs: Adam's constant learning rates, run in the same process (each ``> 0``, distinct).
        vocab: vocabulary size (>= 16: the sequences use the first 16 tokens).
        steps: optimizer steps per run (>= 4: the ratio reads the last 3 losses).
        seeds: seeds per optimizer (0, 1, ...; >= 1).
        told: tell the learned optimizers their horizon (``total_steps=steps``).
        out: JSON output (the markdown ``.md`` and the plot ``.png`` go next to it).
        threads: torch intra-op threads (``0`` leaves torch's default).
    """

    ckpts: tuple[str, ...] = ("default", "meta_tbptt_clip3_1875")
    adam_lrs: tuple[float, ...] = (1e-3, 1e-2)
    vocab: int = 10000
    steps: int = 15
    seeds: int = 3
    told: bool = False
    out: str = "benchmarks/results/recurrent_lm/untold15.json"
    threads: int = 1

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        if not self.ckpts and not self.adam_lrs:
            bad_value("ckpts", self.ckpts, "at least one checkpoint or Adam lr")
        if self.adam_lrs:
            _cfg.check_grid(self, "adam_lrs")
        _cfg.check_minimums(self, vocab=USED_TOKENS, steps=4, seeds=1, threads=0)


class RecurrentLM(nn.Module):
    """Embedding -> LSTM -> Linear -> tanh -> Linear over the vocabulary."""

    def __init__(self, vocab: int, d: int = 8, h: int = 16, mid: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.rnn = nn.LSTM(d, h, batch_first=True)
        self.fc = nn.Linear(h, mid)
        self.out = nn.Linear(mid, vocab)

    def forward(self, t: Tensor) -> Tensor:
        return self.out(torch.tanh(self.fc(self.rnn(self.emb(t))[0])))


def batch(gen: torch.Generator, batch_size: int = 8, ctx: int = 12) -> tuple[Tensor, Tensor]:
    """Inputs and next-token targets ``[batch, ctx]``: stride sequences over the first ``USED_TOKENS`` tokens."""
    start = torch.randint(0, USED_TOKENS, (batch_size, 1), generator=gen)
    stride = torch.randint(1, 4, (batch_size, 1), generator=gen)
    seq = (start + stride * torch.arange(ctx + 1)) % USED_TOKENS
    return seq[:, :-1], seq[:, 1:]


def train_losses(model: nn.Module, opt: torch.optim.Optimizer, vocab: int, steps: int,
                 gen: torch.Generator) -> list[float]:
    """Train ``model`` (logits over ``vocab`` tokens) with ``opt`` for ``steps`` steps on batches drawn from
    ``gen``; the training loss of every step."""
    losses = []
    for _ in range(steps):
        x, y = batch(gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def train(make_opt: Callable[[nn.Module], torch.optim.Optimizer], vocab: int, steps: int, seed: int) -> list[float]:
    """The training losses of one run (the model initialized and the batches drawn from ``seed``)."""
    torch.manual_seed(seed)
    model = RecurrentLM(vocab)
    return train_losses(model, make_opt(model), vocab, steps, torch.Generator().manual_seed(seed))


def loss_ratio(losses: Sequence[float]) -> float:
    """Mean of the last 3 losses over the first (non-finite: ``inf``)."""
    r = sum(losses[-3:]) / 3 / losses[0]
    return r if math.isfinite(r) else math.inf


def _configs(cfg: RecurrentLMConfig) -> list[tuple[str, Callable[[nn.Module], torch.optim.Optimizer]]]:
    out: list[tuple[str, Callable[[nn.Module], torch.optim.Optimizer]]] = []
    total = cfg.steps if cfg.told else None
    # every checkpoint loads here, before any run: a missing one fails at the start
    learned = [load_learned_update(None if ck == "default" else ck) for ck in cfg.ckpts]
    for ck, lu in zip(cfg.ckpts, learned):
        out.append((ck, lambda m, lu=lu: NeuralGraphOptimizer.for_module(m, copy.deepcopy(lu), total_steps=total)))
    for lr in cfg.adam_lrs:
        out.append((f"Adam lr={lr:g}", lambda m, lr=lr: torch.optim.Adam(m.parameters(), lr=lr)))
    return out


def run(cfg: RecurrentLMConfig) -> dict[str, Any]:
    """Every optimizer on every seed."""
    rows = []
    n_params = sum(p.numel() for p in RecurrentLM(cfg.vocab).parameters())
    for label, make in _configs(cfg):
        curves = [train(make, cfg.vocab, cfg.steps, s) for s in range(cfg.seeds)]
        ratios = [loss_ratio(c) for c in curves]
        rows.append({"optimizer": label, "loss_ratio": [finite_or_none(r) for r in ratios],
                     "median_loss_ratio": finite_or_none(statistics.median(ratios)),
                     "worst_loss_ratio": finite_or_none(max(ratios)),
                     "curves": [[finite_or_none(v) for v in c] for c in curves]})
        print(f"{label}: loss ratio {', '.join(f'{r:.3f}' for r in ratios)}", file=sys.stderr, flush=True)
    return {"vocab": cfg.vocab, "params": n_params, "steps": cfg.steps, "seeds": list(range(cfg.seeds)),
            "total_steps": cfg.steps if cfg.told else None, "threads": torch.get_num_threads(), "rows": rows}


def _fmt(v: float | None) -> str:
    return "diverged" if v is None else f"{v:.3f}"


def markdown(doc: dict[str, Any]) -> str:
    how = f"told `total_steps={doc['steps']}`" if doc["total_steps"] else "without `total_steps`"
    lines = [f"LSTM language model, vocabulary {doc['vocab']:,} ({doc['params']:,} parameters), synthetic stride "
             f"sequences, {doc['steps']} steps, learned optimizers {how}, seeds {doc['seeds']}. Loss ratio: mean of "
             "the last 3 training losses over the first (lower is better).", "",
             "| optimizer | median loss ratio | worst | per seed |", "|---|---:|---:|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['optimizer']} | {_fmt(r['median_loss_ratio'])} | {_fmt(r['worst_loss_ratio'])} | "
                     f"{', '.join(_fmt(v) for v in r['loss_ratio'])} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path:
    """The median training loss per step of every optimizer."""
    fig, axes = new_figure(1, 1, figsize=(5.0, 3.4), squeeze=False)
    ax = axes[0, 0]
    for i, r in enumerate(doc["rows"]):
        steps = range(1, doc["steps"] + 1)
        med = [statistics.median(float("nan") if c[k] is None else c[k] for c in r["curves"]) for k in range(doc["steps"])]
        ax.plot(steps, med, color=f"C{i}", label=r["optimizer"])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (median of seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    how = "told" if doc["total_steps"] else "untold"
    ax.set_title(f"LSTM LM, vocab {doc['vocab']:,}, {how}", fontsize=9)
    return save_figure(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``[--config FILE] [key=value ...]`` (keys of :class:`RecurrentLMConfig`); returns the result document."""
    return report_main(RecurrentLMConfig, argv, __doc__, run, markdown, plot)


if __name__ == "__main__":
    main()
