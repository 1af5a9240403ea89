"""Meta-train the NeuralGraphOptimizer's learned update.

Commands::

    python meta_train/run.py                                     # default config: ~5 min on 2 CPU cores
    python meta_train/run.py --config configs/meta_train/smoke.yaml
    python meta_train/run.py estimator=es outer_steps=50 seed=1 out=runs/es
    python meta_train/run.py resume=runs/meta_train/ckpt.pt      # continue exactly where a run stopped
    torchrun --nproc_per_node=2 meta_train/run.py estimator=es   # population split across processes

Writes to ``out``: ``config.yaml`` (resolved), ``ckpt.pt`` (atomic, every ``checkpoint_every`` outer steps),
``metrics.jsonl``, ``learned.pt`` (a ``NeuralGraphOptimizer`` checkpoint of the last outer step), with
``validate_every`` ``best.pt`` (the outer step best on the validation tasks), and with ``report=true``
``report.md`` + ``meta_loss.png``: the validation scores and ``learned.pt`` and ``best.pt`` each against per-task
tuned Adam (``eval.json``, ``eval_best.json``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from lopt_graphs.config import command_parser, set_threads
from lopt_graphs.io import atomic_write_text
from meta_train.config import MetaTrainConfig, config_to_dict, load_config, save_resolved_config
from meta_train.logging_utils import MetricsLogger, progress
from meta_train.trainer import MetaTrainer


def _dist_setup() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def main(argv: list[str] | None = None) -> MetaTrainer:
    """Command-line entry point (``lopt-meta-train``, ``python meta_train/run.py``): ``[--config FILE]
    [key=value ...]``; returns the trainer."""
    a = command_parser(MetaTrainConfig, "Meta-train the learned update of NeuralGraphOptimizer.").parse_args(argv)
    cfg = load_config(a.config, a.overrides)
    set_threads(cfg.threads)
    rank, world = _dist_setup()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = MetaTrainer(cfg, rank=rank, world=world)
    if cfg.resume:
        trainer.load(cfg.resume)
        if trainer.step >= cfg.outer_steps and rank == 0:
            warnings.warn(f"resume={cfg.resume!r} is at outer step {trainer.step}, at or past outer_steps="
                          f"{cfg.outer_steps}: no outer step will run (raise outer_steps to continue the run)",
                          RuntimeWarning, stacklevel=2)
    if rank == 0:
        save_resolved_config(cfg, out / "config.yaml")
    logger = MetricsLogger(out, config_to_dict(cfg), use_wandb=cfg.wandb and rank == 0, project=cfg.wandb_project, rank=rank,
                           resume=bool(cfg.resume))
    if cfg.resume:
        logger.drop_after(trainer.step)  # records logged after the checkpoint will be logged again
    bar = progress(cfg.outer_steps, trainer.step, disable=rank != 0)
    if cfg.validate_every and rank == 0 and trainer.step == 0:
        # score the starting point too, so best.pt is never worse on validation than where the run began
        logger.log(0, trainer.validate(out))
    try:
        while trainer.step < cfg.outer_steps:
            metrics = trainer.outer_step()
            if cfg.validate_every and rank == 0 and (trainer.step % cfg.validate_every == 0
                                                     or trainer.step == cfg.outer_steps):
                metrics.update(trainer.validate(out))
            bar.update(1)
            bar.set_postfix(meta_loss=f"{metrics['meta_loss']:.4f}")
            if trainer.step % cfg.log_every == 0 or trainer.step == cfg.outer_steps:
                logger.log(trainer.step, metrics)
            if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.outer_steps:
                trainer.save(out / "ckpt.pt")
    finally:
        bar.close()
        logger.close()
    if rank == 0:
        trainer.export(out / "learned.pt")
        if cfg.report:
            from meta_train.evaluate import compare_with_adam
            from meta_train.report import write_report
            from meta_train.tasks import HELD_OUT, IN_DISTRIBUTION

            def scored(learned) -> dict:
                results = {}
                for tc in (IN_DISTRIBUTION[0], HELD_OUT[0]):
                    r = compare_with_adam(learned, tc, steps=cfg.report_steps, seed=cfg.seed)
                    results[r["task"]] = {k: v for k, v in r.items() if not k.endswith("curve")}
                return results

            results = scored(trainer.learned)
            best = None
            if (cfg.validate_every and (out / "best.pt").is_file()
                    and trainer.validation["best_step"] != trainer.step):  # validation chose another step
                from lopt_graphs.optim import load_learned_update
                best = scored(load_learned_update(str(out / "best.pt")))
            atomic_write_text(out / "eval.json", json.dumps(results, indent=1))
            if best is not None:
                atomic_write_text(out / "eval_best.json", json.dumps(best, indent=1))
            path = write_report(out, out / "metrics.jsonl", results, best)
            print(f"report: {path}")
        print(f"learned update: {out / 'learned.pt'}  (NeuralGraphOptimizer(params, ckpt='{out / 'learned.pt'}'))")
        if cfg.validate_every and (out / "best.pt").is_file():
            v = trainer.validation
            print(f"best on validation: {out / 'best.pt'}  (outer step {v['best_step']}, validation "
                  f"{v['best_score']:.3f}; lower is better, 0 = tuned Adam)")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return trainer


if __name__ == "__main__":
    main()
