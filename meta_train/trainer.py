"""The outer loop: truncated unrolls over task slots, a gradient estimator, Adam on the meta-parameters,
atomic checkpoints, exact resume, logging, and torch.distributed population splitting."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from lopt_graphs.optim import LearnedUpdate, load_learned_update, save_checkpoint

from .checkpointing import load_checkpoint, rng_state, save_checkpoint_atomic, set_rng_state
from .config import MetaTrainConfig, config_to_dict
from .estimators import TruncatedBackprop, make_estimator
from .tasks import Task, TaskConfig, sample_task
from .unroll import InnerState, Stepper, ThetaSpace

CKPT_FORMAT, CKPT_VERSION = "lopt_graphs.meta_train", 1


def initial_learned_update(init_ckpt: str | Mapping = "", mag_clip: float = 0.0) -> LearnedUpdate:
    """The learned update a run starts from: ``init_ckpt`` (a checkpoint path, shipped name or loaded
    checkpoint dict; empty for a fresh one), with its ``mag_clip`` replaced when ``mag_clip > 0``."""
    learned = load_learned_update(init_ckpt) if init_ckpt else LearnedUpdate()
    if mag_clip > 0 and mag_clip != learned.cfg.mag_clip:
        clipped = LearnedUpdate(replace(learned.cfg, mag_clip=float(mag_clip)))
        clipped.load_state_dict(learned.state_dict())
        learned = clipped
    return learned


class MetaTrainer:
    """Meta-trains a :class:`LearnedUpdate`.

    Args:
        cfg: the resolved configuration.
        rank, world: this process's rank and the number of processes (``torch.distributed``).
    """

    def __init__(self, cfg: MetaTrainConfig, rank: int = 0, world: int = 1):
        self.cfg, self.rank, self.world = cfg, rank, world
        if cfg.estimator == "tbptt" and world > 1:
            raise ValueError("estimator='tbptt' runs on one process; use 'es' or 'pes' under torchrun")
        torch.manual_seed(cfg.seed)
        self.learned = initial_learned_update(cfg.init_ckpt, cfg.mag_clip)
        self.space = ThetaSpace(self.learned)
        self.stepper = Stepper(self.learned)
        self.theta = torch.nn.Parameter(self.space.flatten(self.learned))
        self.outer = torch.optim.Adam([self.theta], lr=cfg.outer_lr)
        self.estimator = make_estimator(cfg.estimator, self.stepper, self.space, cfg.sigma, cfg.loss_clip)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.slots = [self._new_slot(i, first=True) for i in range(cfg.num_tasks)]

    # ------------------------------------------------------------------ inner runs
    def _new_slot(self, i: int, first: bool = False, task_cfg: TaskConfig | None = None) -> InnerState:
        cfg = self.cfg
        task = Task(task_cfg) if task_cfg is not None else sample_task(cfg.family, self.gen)
        params = task.init_params(self.gen)
        # staggered resets: the first run of slot i lasts (i + 1) / num_tasks of the horizon
        length = cfg.horizon if not first else max(cfg.truncation, cfg.horizon * (i + 1) // cfg.num_tasks)
        return InnerState(task=task, params=params, states=[{} for _ in params], step=0, length=length)

    def _members(self, pairs: int) -> list[int]:
        return list(range(self.rank, pairs, self.world))

    def outer_step(self) -> dict[str, float]:
        """One outer step: one truncation of every slot, one Adam step on theta."""
        cfg = self.cfg
        theta = self.theta.detach()
        grads, losses = [], []
        for i, slot in enumerate(self.slots):
            if slot.step + cfg.truncation > slot.length:
                slot = self.slots[i] = self._new_slot(i)
            xs, ys = slot.task.batches(self.gen, cfg.truncation)
            if isinstance(self.estimator, TruncatedBackprop):
                g, loss = self.estimator.grad(theta, slot, xs, ys)
            else:
                pairs = cfg.population // 2
                eps = torch.randn(pairs, self.space.dim, generator=self.gen)
                diffs, loss, _ = self.estimator.pair_diffs(theta, slot, xs, ys, eps, self._members(pairs))
                if self.world > 1:
                    dist.all_reduce(diffs)  # each rank filled its own pairs; only [pairs] scalars travel
                    if cfg.estimator == "pes":
                        packed = torch.stack([torch.nan_to_num(loss) * len(self._members(pairs)),
                                              torch.tensor(float(len(self._members(pairs))))])
                        dist.all_reduce(packed)
                        loss = packed[0] / packed[1]
                g = self.estimator.gradient(diffs, eps, slot)
            slot.step += cfg.truncation
            grads.append(g)
            losses.append(float(loss))
        g = torch.stack(grads).mean(0)
        gnorm = float(g.norm())
        if cfg.grad_clip > 0 and gnorm > cfg.grad_clip:
            g = g * (cfg.grad_clip / gnorm)
        self.outer.zero_grad()
        self.theta.grad = g
        self.outer.step()
        self.space.load_into(self.learned, self.theta.detach())
        self.step += 1
        return {"meta_loss": sum(losses) / len(losses), "grad_norm": gnorm,
                "theta_norm": float(self.theta.detach().norm())}

    # ------------------------------------------------------------------ checkpoints
    def _slot_dict(self, s: InnerState) -> dict:
        extra = {k: v for k, v in s.extra.items()}
        return {"task": asdict(s.task.cfg), "params": s.params, "states": s.states, "step": s.step,
                "length": s.length, "extra": extra}

    def _load_slot(self, d: dict) -> InnerState:
        tc = dict(d["task"])
        tc["widths"] = tuple(tc["widths"])
        task = Task(TaskConfig(**tc))
        return InnerState(task=task, params=list(d["params"]), states=[dict(s) for s in d["states"]],
                          step=int(d["step"]), length=int(d["length"]), extra=dict(d["extra"]))

    def state_dict(self) -> dict:
        return {
            "format": CKPT_FORMAT, "format_version": CKPT_VERSION, "step": self.step,
            "config": config_to_dict(self.cfg), "theta": self.theta.detach().clone(),
            "outer": self.outer.state_dict(), "gen": self.gen.get_state(), "rng": rng_state(),
            "slots": [self._slot_dict(s) for s in self.slots], "world": self.world,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Atomic checkpoint; under torchrun every rank writes its own shard (PES member states differ)."""
        path = Path(path)
        if self.world > 1:
            dist.barrier()
        if self.rank == 0:
            save_checkpoint_atomic(self.state_dict(), path)
        if self.world > 1 and self.cfg.estimator == "pes":
            save_checkpoint_atomic({**self.state_dict(), "rank": self.rank}, path.with_suffix(f".rank{self.rank}.pt"))
        if self.world > 1:
            dist.barrier()

    def load(self, path: str | os.PathLike) -> None:
        """Continue exactly from a checkpoint written by :meth:`save`."""
        path = Path(path)
        if self.world > 1 and self.cfg.estimator == "pes":
            path = path.with_suffix(f".rank{self.rank}.pt")
        ck = load_checkpoint(path)
        if ck.get("format") != CKPT_FORMAT or ck.get("format_version") != CKPT_VERSION:
            raise RuntimeError(f"{path} is not a meta-training checkpoint of format {CKPT_FORMAT} v{CKPT_VERSION}")
        if int(ck.get("world", 1)) != self.world:
            raise ValueError(f"Checkpoint {path} was written by {ck.get('world')} processes; resume with the same "
                             f"number (got {self.world})")
        with torch.no_grad():
            self.theta.copy_(ck["theta"])
        self.outer.load_state_dict(ck["outer"])
        self.space.load_into(self.learned, self.theta.detach())
        self.gen.set_state(ck["gen"])
        set_rng_state(ck["rng"])
        self.slots = [self._load_slot(d) for d in ck["slots"]]
        self.step = int(ck["step"])

    def export(self, path: str | os.PathLike, meta: dict | None = None) -> None:
        """Write the learned update as a ``NeuralGraphOptimizer`` checkpoint."""
        save_checkpoint(self.learned, path, meta={"trained": True, "meta_train_step": self.step,
                                                  "config": config_to_dict(self.cfg),
                                                  **(meta or {})})

