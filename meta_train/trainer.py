"""The outer loop: truncated unrolls over run groups, a gradient estimator, Adam on the meta-parameters,
atomic checkpoints, exact resume, logging, and torch.distributed population splitting."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist

from lopt_graphs.optim import LearnedUpdate, load_learned_update, save_checkpoint
from lopt_graphs.optim.learned import v2_config, warmup_cosine

from .checkpointing import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    load_checkpoint,
    rng_state,
    save_checkpoint_atomic,
    set_rng_state,
)
from .config import LEARNED_ARCHS, META_PARAMS, MetaTrainConfig, config_to_dict
from .estimators import PERSISTENT_ESTIMATORS, make_estimator
from .runs import RunGroup, new_group
from .sampling import log_uniform
from .tasks import sample_group
from .unroll import FINAL_FRACTION, Stepper, ThetaSpace

CKPT_FORMAT, CKPT_VERSION = CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION
#: Peak step of the warmup-cosine schedule prior of ``learned=v2_cosine`` (chosen on the validation tasks).
COSINE_PEAK = 0.05
#: Bound of the encoder readout's log-step share in ``learned=v2_cosine_bounded`` (a tensor's step within
#: ``e**+-1`` of the schedule's, whatever the size of the model).
READOUT_BOUND = 1.0


def fresh_learned_update(arch: str = "v1") -> LearnedUpdate:
    """A fresh learned update of architecture ``arch`` (one of :data:`~meta_train.config.LEARNED_ARCHS`):
    ``"v1"``, ``"v2"``, ``"v2_ff"``, or ``"v2_cosine"`` / ``"v2_ff_cosine"``: v2 with a step bound of
    ``e**5`` whose schedule starts as a warmup-cosine prior (peak :data:`COSINE_PEAK`) when told its horizon
    (Adam at 0.01 without one); ``"v2_cosine_bounded"``: ``"v2_cosine"`` with the readout's share of the log
    step bounded by :data:`READOUT_BOUND`."""
    if arch == "v1":
        return LearnedUpdate()
    if arch in ("v2", "v2_ff"):
        return LearnedUpdate(v2_config(use_graph=arch == "v2"))
    if arch in ("v2_cosine", "v2_ff_cosine", "v2_cosine_bounded"):
        bound = READOUT_BOUND if arch == "v2_cosine_bounded" else 0.0
        learned = LearnedUpdate(v2_config(use_graph=arch != "v2_ff_cosine", lr_bound=5.0, readout_bound=bound))
        return learned.fit_schedule_(warmup_cosine(COSINE_PEAK))
    raise ValueError(f"Unknown learned-update architecture {arch!r}; expected one of {list(LEARNED_ARCHS)}")


def initial_learned_update(init_ckpt: str | Mapping = "", mag_clip: float = 0.0, arch: str = "v1") -> LearnedUpdate:
    """The learned update a run starts from: ``init_ckpt`` (a checkpoint path, shipped name or loaded
    checkpoint dict; empty for a fresh one of architecture ``arch``), with its ``mag_clip`` replaced when
    ``mag_clip > 0`` (not for a fresh v2, which keeps its own)."""
    learned = load_learned_update(init_ckpt) if init_ckpt else fresh_learned_update(arch)
    if arch != "v1" and not init_ckpt:
        return learned  # a fresh v2 keeps its own bound (v2_config)
    if mag_clip > 0 and mag_clip != learned.cfg.mag_clip:
        learned = learned.with_config(mag_clip=float(mag_clip))
    return learned


def restore_frozen(learned: LearnedUpdate, frozen: Mapping[str, torch.Tensor]) -> None:
    """Copy the values of parameters that a run does not meta-train (``meta_params``), as its checkpoint
    holds them under ``"frozen"``, into ``learned``."""
    with torch.no_grad():
        params = dict(learned.named_parameters())
        for name, value in frozen.items():
            params[name].copy_(value)


class MetaTrainer:
    """Meta-trains a :class:`LearnedUpdate`.

    Each outer step advances ``groups`` run groups by one truncation each (a group: ``tasks_per_group``
    inner runs of one sampled architecture, stacked in one vmap call), asks the estimator for each group's
    meta-gradient, averages them, clips the norm and takes one Adam step on the meta-parameters.

    Args:
        cfg: the resolved configuration.
        rank, world: this process's rank and the number of processes (``torch.distributed``).
    """

    def __init__(self, cfg: MetaTrainConfig, rank: int = 0, world: int = 1):
        self.cfg, self.rank, self.world = cfg, rank, world
        if cfg.estimator == "tbptt" and world > 1:
            raise ValueError("estimator='tbptt' runs on one process; use 'es', 'pes' or 'full_es' under torchrun")
        torch.manual_seed(cfg.seed)
        self.learned = initial_learned_update(cfg.init_ckpt, cfg.mag_clip, cfg.learned)
        self.space = ThetaSpace(self.learned, META_PARAMS[cfg.meta_params])
        self.stepper = Stepper(self.learned)
        self.theta = torch.nn.Parameter(self.space.flatten(self.learned))
        self.outer = torch.optim.Adam([self.theta], lr=cfg.outer_lr)
        self.estimator = make_estimator(cfg.estimator, self.stepper, self.space, cfg.sigma, cfg.loss_clip,
                                        cfg.objective)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.inner_steps = 0  # inner steps taken, summed over runs and population members
        self.runs = [self._new_group(i, first=True) for i in range(cfg.groups)]
        self.validation: dict = {"refs": None, "best_score": float("inf"), "best_step": -1}

    # ------------------------------------------------------------------ inner runs
    def _new_group(self, i: int, first: bool = False) -> RunGroup:
        cfg = self.cfg
        cfgs = sample_group(cfg.family, self.gen, cfg.tasks_per_group, cfg.input_scale, cfg.max_group_params,
                            cfg.max_group_activations)
        horizon = cfg.horizon
        if cfg.horizon_min:  # log-uniform, whole truncations
            h = log_uniform(self.gen, cfg.horizon_min, cfg.horizon)
            horizon = max(cfg.truncation, round(h / cfg.truncation) * cfg.truncation)
        known = float(torch.rand((), generator=self.gen)) >= cfg.hidden_horizon_prob
        # staggered resets: the first runs of group i last (i + 1) / groups of the horizon
        length = horizon if not first else max(cfg.truncation, horizon * (i + 1) // cfg.groups)
        return new_group(cfgs, self.gen, length, horizon_known=known)

    def _members(self, pairs: int) -> list[int]:
        return list(range(self.rank, pairs, self.world))

    def outer_step(self) -> dict[str, float]:
        """One outer step: one truncation of every run group, one Adam step on theta.

        The logged ``meta_loss`` is the mean over the groups whose truncation the objective scores (``log_final``
        scores only the last :data:`~meta_train.unroll.FINAL_FRACTION` of a run; the others every step), NaN when
        none is (``scored_groups``: how many were)."""
        cfg = self.cfg
        theta = self.theta.detach()
        pairs = cfg.population // 2
        grads, losses, scored = [], [], []
        for i in range(len(self.runs)):
            if self.runs[i].step + cfg.truncation > self.runs[i].length:
                self.runs[i] = self._new_group(i)
            runs = self.runs[i]
            scored.append(cfg.objective != "log_final"
                          or runs.step + cfg.truncation > (1.0 - FINAL_FRACTION) * runs.length)
            batches = runs.batches(self.gen, cfg.truncation)
            eps = None
            if cfg.estimator != "tbptt":
                eps = torch.randn(runs.size, pairs, self.space.dim, generator=self.gen)
            out = self.estimator.estimate(theta, runs, batches, eps, self._members(pairs))
            self.runs[i] = out.runs
            members = 1 if cfg.estimator == "tbptt" else cfg.population + (cfg.estimator == "es")
            self.inner_steps += runs.size * members * cfg.truncation
            grads.append(out.grad)
            losses.append(float(out.meta_loss))
        g = torch.stack(grads).mean(0)
        gnorm = float(g.norm())
        if cfg.grad_clip > 0 and gnorm > cfg.grad_clip:
            g = g * (cfg.grad_clip / gnorm)
        self.outer.zero_grad()
        self.theta.grad = g
        self.outer.step()
        self.space.load_into(self.learned, self.theta.detach())
        self.step += 1
        kept = [v for v, sc in zip(losses, scored) if sc]
        return {"meta_loss": sum(kept) / len(kept) if kept else float("nan"), "scored_groups": float(len(kept)),
                "grad_norm": gnorm, "theta_norm": float(self.theta.detach().norm()),
                "inner_steps": float(self.inner_steps)}

    def validate(self, out_dir: str | os.PathLike) -> dict[str, float]:
        """Score the current meta-parameters on the validation tasks; export ``best.pt`` when they beat the
        best so far. Returns the metrics to log (``val_score``, ``val_best``)."""
        from .validate import adam_references, references_match, validation_score

        v = self.validation
        steps, seeds = self.cfg.validate_steps, self.cfg.validate_seeds
        if v["refs"] is not None and not references_match(v["refs"], steps, seeds=seeds):
            # resumed after the validation set changed: old scores are not comparable, the record restarts
            v.update(refs=None, best_score=float("inf"), best_step=-1)
        if v["refs"] is None:
            v["refs"] = adam_references(steps, seeds=seeds)
        res = validation_score(self.learned, v["refs"], steps, seeds=seeds)
        if res["score"] < v["best_score"]:
            v["best_score"], v["best_step"] = res["score"], self.step
            self.export(Path(out_dir) / "best.pt", meta={"validation": res})
        return {"val_score": res["score"], "val_best": v["best_score"], "val_best_step": float(v["best_step"])}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "format": CKPT_FORMAT, "format_version": CKPT_VERSION, "step": self.step,
            "config": config_to_dict(self.cfg), "theta": self.theta.detach().clone(),
            "outer": self.outer.state_dict(), "gen": self.gen.get_state(), "rng": rng_state(),
            "runs": [r.to_dict() for r in self.runs], "inner_steps": self.inner_steps, "world": self.world,
            "frozen": {n: p.detach().clone() for n, p in self.learned.named_parameters()
                       if n not in set(self.space.names)},
            "validation": self.validation,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Atomic checkpoint; under torchrun every rank writes its own shard (PES member states differ)."""
        path = Path(path)
        if self.world > 1:
            dist.barrier()
        if self.rank == 0:
            save_checkpoint_atomic(self.state_dict(), path)
        if self.world > 1 and self.cfg.estimator in PERSISTENT_ESTIMATORS:
            save_checkpoint_atomic({**self.state_dict(), "rank": self.rank}, path.with_suffix(f".rank{self.rank}.pt"))
        if self.world > 1:
            dist.barrier()

    def load(self, path: str | os.PathLike) -> None:
        """Continue exactly from a checkpoint written by :meth:`save`; from a resume point (a checkpoint
        without its inner runs, :func:`~meta_train.checkpointing.resume_point`) the meta-parameters, outer
        Adam state, RNG states and validation record continue and the inner runs start afresh."""
        path = Path(path)
        if self.world > 1 and self.cfg.estimator in PERSISTENT_ESTIMATORS:
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
        for group in self.outer.param_groups:  # the checkpoint's lr would silently override outer_lr
            group["lr"] = self.cfg.outer_lr
        self.space.load_into(self.learned, self.theta.detach())
        self.gen.set_state(ck["gen"])
        set_rng_state(ck["rng"])
        restore_frozen(self.learned, ck.get("frozen", {}))
        self.step, self.inner_steps = int(ck["step"]), int(ck["inner_steps"])
        self.validation = dict(ck["validation"])
        if ck["runs"] is None:  # a resume point (meta_train.checkpointing.resume_point): fresh inner runs
            self.runs = [self._new_group(i, first=True) for i in range(self.cfg.groups)]
        else:
            self.runs = [RunGroup.from_dict(d) for d in ck["runs"]]

    def export(self, path: str | os.PathLike, meta: dict | None = None) -> None:
        """Write the learned update as a ``NeuralGraphOptimizer`` checkpoint."""
        save_checkpoint(self.learned, path, meta={"trained": True, "meta_train_step": self.step,
                                                  "config": config_to_dict(self.cfg),
                                                  **(meta or {})})

