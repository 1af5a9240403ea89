"""Hugging Face ``Trainer`` with ``optimizers=(NeuralGraphOptimizer, scheduler)`` on a tiny BERT.

Command::

    python examples/hf_trainer_bert.py [steps=60] [seed=0] [threads=1]     # --help: the keys and defaults

The BERT (``BertForSequenceClassification``, 2 layers, hidden 32) is built from a ``BertConfig``, so
nothing is downloaded. The task is synthetic: a sequence of random tokens is labelled by whether its first
token is in the lower half of the vocabulary (BERT's pooler reads the first position). The optimizer comes
from ``NeuralGraphOptimizer.for_module(model, total_steps=steps)`` (the ``Trainer``'s ``max_steps``: the
default checkpoint learned its schedule from the fraction of training done): torch.fx traces BERT with
its embeddings and self-attention blocks as unknown leaves (graph-free), and its dense and LayerNorm
layers on the graph (see ``opt.describe()``). Needs ``pip install transformers`` (the ``models`` extra).
Prints the first and last training losses and the accuracy on held-out sequences.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import transformers

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.config import TrainKeys, parse_command, set_threads


class FirstToken(torch.utils.data.Dataset):
    """Random token sequences, label 1 iff the first token is below ``vocab // 2``."""

    def __init__(self, n: int, length: int = 12, vocab: int = 40, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        self.labels = (self.ids[:, 0] < vocab // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class _Losses(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def train(steps: int = 60, seed: int = 0, quiet: bool = False, ckpt: str | None = None,
          total_steps: int | None = None, lr: float = 1.0,
          make_opt: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None) -> dict:
    """Train with ``Trainer``; returns first/last logged losses and held-out accuracy.

    ``ckpt``, ``total_steps`` and ``lr`` go to ``NeuralGraphOptimizer.for_module``; ``make_opt(model)`` replaces it
    (another optimizer, for comparisons: ``benchmarks/hf_bert.py``)."""
    transformers.set_seed(seed)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg)
    with warnings.catch_warnings():  # lists the graph-free parameters; describe() says the same
        warnings.simplefilter("ignore", UserWarning)
        opt = make_opt(model) if make_opt else NeuralGraphOptimizer.for_module(model, ckpt, lr=lr,
                                                                                        total_steps=total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))  # 10-step warm-up
    losses = _Losses()
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=16,
                                              logging_steps=5, save_strategy="no", report_to=[], use_cpu=True,
                                              seed=seed, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=FirstToken(2000, seed=seed),
                                       optimizers=(opt, sched), callbacks=[losses])
        trainer.train()
    test = FirstToken(400, seed=seed + 1)
    model.eval()
    with torch.no_grad():
        acc = float((model(input_ids=test.ids).logits.argmax(-1) == test.labels).float().mean())
    describe = getattr(opt, "describe", None)
    out = {"first_loss": losses.losses[0], "last_loss": losses.losses[-1], "test_accuracy": acc,
           "description": describe() if describe else None}
    if not quiet and describe:
        print(out["description"])
        print(f"\nloss {out['first_loss']:.3f} -> {out['last_loss']:.3f} in {steps} steps; held-out accuracy "
              f"{acc:.3f}")
    return out


@dataclass(frozen=True)
class HFExampleConfig(TrainKeys):
    """Keys of ``examples/hf_trainer_bert.py``: ``steps``, ``seed`` (of the initialisation, the data and the
    ``Trainer``) and ``threads``."""

    steps: int = 60


def main(argv: Sequence[str] | None = None) -> dict:
    """``[--config FILE] [key=value ...]`` (keys of :class:`HFExampleConfig`); returns what :func:`train` returns."""
    cfg = parse_command(HFExampleConfig, argv, __doc__.split("\n")[0])
    set_threads(cfg.threads)
    return train(cfg.steps, cfg.seed, total_steps=cfg.steps)


if __name__ == "__main__":
    main()
