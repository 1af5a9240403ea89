"""Pieces shared by the INR classification and editing commands: encoder settings, normalization,
minibatches, learning-rate schedule, model selection on the validation split."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from lopt_graphs.config import bad_value
from lopt_graphs.nn import EncoderConfig, NeuralGraphEncoder

from .data import INRDataConfig, INRDataset
from .graphs import INRGraphBatcher, siren_spec

#: Model names accepted by the ``models`` config key: the equivariant NG-GNN / NG-Transformer, the same
#: encoders with positional ids on hidden neurons (not equivariant), and a plain MLP on flattened weights.
NG_MODELS: dict[str, tuple[str, bool]] = {
    "ng_gnn": ("gnn", False), "ng_transformer": ("transformer", False),
    "ng_gnn_noneq": ("gnn", True), "ng_transformer_noneq": ("transformer", True),
}
MODELS: tuple[str, ...] = tuple(NG_MODELS) + ("mlp", "mlp_probes")


@dataclass(frozen=True)
class TrainFields(INRDataConfig):
    """Training settings shared by the INR commands (on top of the INR data settings).

    Attributes:
        models: models to train in order (see :data:`MODELS`).
        enc_hidden / enc_edge_hidden / enc_layers / enc_heads: encoder widths and depth (EncoderConfig).
        probes: probe coordinates whose neuron activations are appended to the node features (0: none).
        mlp_width: hidden width of the MLP baseline (two hidden layers).
        epochs: epochs of the NG models; ``mlp_epochs`` for the (much cheaper) MLP.
        batch_size: INRs per minibatch.
        lr / weight_decay: AdamW; cosine decay to 0 with a 3% warm-up.
        time_budget: seconds of training per model (0: no limit); training stops at the end of the epoch
            in which the budget runs out.
        train_seed: seed of model initialization and minibatch order.
        eval_batch: INRs per evaluation batch.
        out: output directory.
        threads: torch threads (0: torch's default).
        quick: tiny digits setting for tests.
    """

    models: tuple[str, ...] = ("ng_gnn", "ng_transformer", "ng_gnn_noneq", "mlp")
    enc_hidden: int = 64
    enc_edge_hidden: int = 32
    enc_layers: int = 3
    enc_heads: int = 4
    probes: int = 0
    mlp_width: int = 512
    epochs: int = 20
    mlp_epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    time_budget: float = 0.0
    train_seed: int = 0
    eval_batch: int = 250
    out: str = "runs/tasks/inr"
    threads: int = 1
    quick: bool = False

    def validate_train(self) -> None:
        for m in self.models:
            if m not in MODELS:
                bad_value("models", self.models, f"names from {list(MODELS)}")
        for key in ("enc_hidden", "enc_edge_hidden", "enc_heads", "mlp_width", "batch_size", "eval_batch"):
            if getattr(self, key) < 1:
                bad_value(key, getattr(self, key), "a positive int")
        for key in ("enc_layers", "probes", "epochs", "mlp_epochs"):
            if getattr(self, key) < 0:
                bad_value(key, getattr(self, key), "a non-negative int")
        if self.lr <= 0 or self.weight_decay < 0 or self.time_budget < 0:
            bad_value("lr/weight_decay/time_budget", (self.lr, self.weight_decay, self.time_budget),
                      "lr > 0, weight_decay >= 0, time_budget >= 0")


def param_scales(ds: INRDataset, idx: Tensor) -> list[float]:
    """Per-parameter-tensor standard deviation over the INRs ``idx`` (a permutation-invariant scale)."""
    return [float(p.index_select(0, idx).std().clamp(min=1e-8)) for p in ds.params]


def encoder_config(cfg: TrainFields, variant: str, node_in: int, **heads: int) -> EncoderConfig:
    """The encoder of an NG model (``heads``: ``graph_out`` / ``edge_out`` / ``node_out``)."""
    return EncoderConfig(variant=variant, node_in=node_in, edge_in=1, hidden=cfg.enc_hidden,
                         edge_hidden=cfg.enc_edge_hidden, layers=cfg.enc_layers, heads=cfg.enc_heads,
                         max_positions=64, **heads)


def make_batcher(cfg: TrainFields, ds: INRDataset, train_idx: Tensor, positional: bool) -> INRGraphBatcher:
    """Graph batcher of the dataset's SIRENs, normalized by training-set scales."""
    spec = siren_spec(cfg.hidden, cfg.w0, hidden_positions=positional)
    return INRGraphBatcher(spec, param_scales(ds, train_idx), probes=cfg.probes, w0=cfg.w0,
                           image_shape=ds.image_shape)


def minibatches(n: int, size: int, gen: torch.Generator | None, shuffle: bool = True) -> Iterator[Tensor]:
    """Index minibatches over ``range(n)`` (a fresh permutation per call when ``shuffle``)."""
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for s in range(0, n, size):
        yield order[s: s + size]


def cosine_lr(step: int, total: int, warmup_frac: float = 0.03) -> float:
    """Multiplier of the base learning rate: linear warm-up then cosine decay to 0."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def train_loop(model: nn.Module, loss_fn: Callable[[Tensor], Tensor], n_train: int,
               evaluate: Callable[[], float], epochs: int, cfg: TrainFields, desc: str,
               higher_is_better: bool) -> dict:
    """Train ``model`` with AdamW on minibatches of training positions, select the epoch with the best
    validation score (``evaluate()``), and restore those weights.

    Args:
        loss_fn: maps training positions ``[b]`` (indices into the training set) to a scalar loss.
        evaluate: validation score of the current model.

    Returns:
        ``{"epochs_run", "best_epoch", "best_val", "train_seconds", "history": [...]}``.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(cfg.train_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = max(1, epochs * steps_per_epoch)
    step = 0
    best, best_state, best_epoch = None, copy.deepcopy(model.state_dict()), -1
    history = []
    t0 = time.time()
    bar = tqdm(total=total, desc=desc, disable=not cfg.progress)
    epochs_run = 0
    for epoch in range(epochs):
        model.train()
        run_loss, seen = 0.0, 0
        for pos in minibatches(n_train, cfg.batch_size, gen):
            for g in opt.param_groups:
                g["lr"] = cfg.lr * cosine_lr(step, total)
            loss = loss_fn(pos)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            run_loss += float(loss.detach()) * len(pos)
            seen += len(pos)
            bar.update(1)
        model.eval()
        with torch.no_grad():
            score = evaluate()
        epochs_run = epoch + 1
        history.append({"epoch": epochs_run, "train_loss": run_loss / max(1, seen), "val": score,
                        "seconds": time.time() - t0})
        bar.set_postfix(loss=f"{run_loss / max(1, seen):.4g}", val=f"{score:.4g}")
        if best is None or (score > best if higher_is_better else score < best):
            best, best_epoch = score, epochs_run
            best_state = copy.deepcopy(model.state_dict())
        if cfg.time_budget and time.time() - t0 > cfg.time_budget:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return {"epochs_run": epochs_run, "best_epoch": best_epoch, "best_val": best,
            "train_seconds": time.time() - t0, "history": history}


def new_encoder(cfg: EncoderConfig, seed: int, table_scale: float = 0.1) -> NeuralGraphEncoder:
    """A freshly initialized encoder (seeded), with its embedding tables scaled by ``table_scale``.

    The encoder's role/activation/position/slot-type/kernel-position embeddings start as ``N(0, 1)`` tables,
    the same for every INR, while the INR-dependent input (standardized weights through a ``Linear``) starts
    several times smaller; scaling the tables down at initialization lets the weights dominate the first
    node and edge embeddings, which speeds up training a lot on INR tasks (the architecture is unchanged).
    """
    torch.manual_seed(seed)
    enc = NeuralGraphEncoder(cfg)
    with torch.no_grad():
        emb = enc.embed
        for table in (emb.role, emb.act, emb.pos, emb.slot_type, emb.entry_pos):
            table.weight.mul_(table_scale)
    return enc
