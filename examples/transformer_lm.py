"""A small transformer language model trained with ``NeuralGraphOptimizer.for_module``.

Command::

    python examples/transformer_lm.py [steps=200] [seed=0] [threads=1]     # --help: the keys and defaults

The data are synthetic token sequences with a learnable rule (each token is the previous one plus a
per-sequence stride, modulo the vocabulary), so the causal LM's next-token loss can fall far below
``log(vocab)``. Prints what is on the graph (``opt.describe()``: the Embedding and the attention
in-projections are graph-free, the feed-forward, output-projection, LayerNorm and head layers are on it)
and the loss before and after. CPU, a few seconds; no download.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.config import TrainKeys, parse_command, set_threads


class TinyLM(nn.Module):
    """Token + position embeddings, a causal ``nn.TransformerEncoder``, a linear head (inputs ``[B, ctx]``)."""

    def __init__(self, vocab: int = 16, d: int = 32, heads: int = 2, layers: int = 2, ctx: int = 16) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        # sequences of exactly ``ctx`` tokens (slicing a buffer by a traced length would stop torch.fx)
        h = self.tok(t) + self.pos.weight
        return self.head(self.enc(h, mask=self.mask, is_causal=True))


def batches(vocab: int, ctx: int, batch: int, seed: int):
    """Endless batches ``(inputs, targets)`` of stride sequences."""
    g = torch.Generator().manual_seed(seed)
    while True:
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        stride = torch.randint(1, 4, (batch, 1), generator=g)
        seq = (start + stride * torch.arange(ctx + 1)) % vocab
        yield seq[:, :-1], seq[:, 1:]


def train(steps: int = 200, seed: int = 0, vocab: int = 16, ctx: int = 16, quiet: bool = False) -> dict:
    """Train the LM; returns the first and last losses and the optimizer's description."""
    torch.manual_seed(seed)
    model = TinyLM(vocab=vocab, ctx=ctx)
    with warnings.catch_warnings():  # the warning lists the graph-free parameters; describe() says the same
        warnings.simplefilter("ignore", UserWarning)
        opt = NeuralGraphOptimizer.for_module(model)
    loss_fn = nn.CrossEntropyLoss()
    data = batches(vocab, ctx, 32, seed)
    losses = []
    for _ in range(steps):
        x, y = next(data)
        opt.zero_grad()
        loss = loss_fn(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    if not quiet:
        print(opt.describe())
        print(f"\nnext-token loss: {first:.3f} (first 10 steps, log(vocab) = {math.log(vocab):.3f}) -> {last:.3f} "
              f"(last 10 of {steps})")
    return {"first_loss": first, "last_loss": last, "description": opt.describe()}


@dataclass(frozen=True)
class LMConfig(TrainKeys):
    """Keys of ``examples/transformer_lm.py``: ``steps``, ``seed`` (of the token sequences and the
    initialisation) and ``threads``."""

    steps: int = 200


def main(argv: Sequence[str] | None = None) -> dict:
    """``[--config FILE] [key=value ...]`` (keys of :class:`LMConfig`); returns what :func:`train` returns."""
    cfg = parse_command(LMConfig, argv, __doc__.split("\n")[0])
    set_threads(cfg.threads)
    return train(cfg.steps, cfg.seed)


if __name__ == "__main__":
    main()
