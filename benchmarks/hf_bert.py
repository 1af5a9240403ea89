"""Learned checkpoints against Adam on a transformer: the tiny BERT of ``examples/hf_trainer_bert.py``.

Commands::

    lopt-hf-bert                                       # default, v2_cosine_pes_100_bounded; Adam 1e-3/1e-2/2e-2
    lopt-hf-bert ckpts=default,v2_cosine_pes_100 steps=40 seeds=3 out=benchmarks/results/hf_bert.json
    python -m benchmarks.hf_bert --help                # the keys and their defaults

Meta-training sees MLPs and CNNs on 8x8 to 28x28 images; nothing there is a transformer, whose good Adam lr is
lower than theirs. Each run is the example's ``train()`` (Hugging Face ``Trainer``, a 10-step linear warm-up,
batch 16, synthetic first-token task, nothing downloaded) with the optimizer swapped: every checkpoint without
and with ``total_steps`` (a v1 checkpoint has no horizon features: both are the same run), and Adam at each lr
of ``adam_lrs``, on seeds ``0 .. seeds-1`` (initialisation, data and ``Trainer`` seed). A run *trains* when its
held-out accuracy is at least ``trained_acc`` (chance is 0.5). Prints a markdown table and writes JSON +
markdown. Needs ``transformers`` and ``accelerate`` (the ``models`` extra).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value
from lopt_graphs.optim import load_learned_update

__all__ = ["HFBertConfig", "main", "run"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer_bert.py"


@dataclass(frozen=True)
class HFBertConfig:
    """Keys of ``lopt-hf-bert``.

    Attributes:
        ckpts: checkpoints (shipped names or paths).
        adam_lrs: Adam's learning rates, run in the same process.
        steps: ``Trainer`` steps per run (>= 10: the warm-up is 10 steps).
        seeds: seeds per configuration (0, 1, ...; >= 1).
        trained_acc: held-out accuracy at which a run counts as trained, in (0.5, 1].
        out: JSON output (the markdown goes next to it, ``.md``).
        threads: torch intra-op threads (``0`` leaves torch's default).
        ngo_lr: the ``lr`` multiplier of every ``NeuralGraphOptimizer`` run (``> 0``; labelled when not 1).
    """

    ckpts: tuple[str, ...] = ("default", "v2_cosine_pes_100_bounded")
    adam_lrs: tuple[float, ...] = (1e-3, 1e-2, 2e-2)
    steps: int = 40
    seeds: int = 3
    trained_acc: float = 0.9
    out: str = "benchmarks/results/hf_bert.json"
    threads: int = 1
    ngo_lr: float = 1.0

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        _cfg.check_finite(self, "ngo_lr", "adam_lrs")
        if not self.ckpts and not self.adam_lrs:
            bad_value("ckpts", self.ckpts, "at least one checkpoint or Adam lr")
        if not 0.5 < self.trained_acc <= 1.0:
            bad_value("trained_acc", self.trained_acc, "a float in (0.5, 1]")
        _cfg.check_minimums(self, steps=10, seeds=1, threads=0)


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("hf_trainer_bert", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _configs(cfg: HFBertConfig) -> list[tuple[str, dict[str, Any]]]:
    """``(label, keyword arguments of train())`` for every optimizer configuration."""
    out: list[tuple[str, dict[str, Any]]] = []
    for ck in cfg.ckpts:
        name = ck if cfg.ngo_lr == 1.0 else f"{ck}, lr={cfg.ngo_lr:g}"
        out.append((name, {"ckpt": ck, "lr": cfg.ngo_lr}))
        out.append((f"{name}, total_steps", {"ckpt": ck, "lr": cfg.ngo_lr, "total_steps": cfg.steps}))
    for lr in cfg.adam_lrs:
        make: Callable[[torch.nn.Module], torch.optim.Optimizer] = \
            lambda m, lr=lr: torch.optim.Adam(m.parameters(), lr=lr)  # noqa: E731
        out.append((f"Adam lr={lr:g}", {"make_opt": make}))
    return out


def run(cfg: HFBertConfig, train: Callable[..., dict] | None = None) -> dict[str, Any]:
    """Every configuration on every seed; ``train`` defaults to the example's (tests pass a small stand-in)."""
    for ck in cfg.ckpts:  # a missing or broken checkpoint fails here, before any run
        load_learned_update(ck)
    train = train or _example().train
    rows = []
    for label, kw in _configs(cfg):
        runs = [train(steps=cfg.steps, seed=s, quiet=True, **kw) for s in range(cfg.seeds)]
        accs = [float(r["test_accuracy"]) for r in runs]
        last = [float(r["last_loss"]) for r in runs]
        rows.append({"optimizer": label, "test_accuracy": accs, "last_loss": last,
                     "first_loss": [float(r["first_loss"]) for r in runs],
                     "trained": sum(a >= cfg.trained_acc for a in accs), "median_last_loss": statistics.median(last)})
        print(f"{label}: accuracy {', '.join(f'{a:.3f}' for a in accs)}; last logged loss "
              f"{', '.join(f'{v:.3g}' for v in last)}", flush=True)
    return {"steps": cfg.steps, "seeds": list(range(cfg.seeds)), "trained_acc": cfg.trained_acc,
            "threads": cfg.threads, "rows": rows}


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"Tiny BERT (`examples/hf_trainer_bert.py`), {doc['steps']} `Trainer` steps, seeds {doc['seeds']}; a run "
             f"trains when its held-out accuracy is >= {doc['trained_acc']:g} (chance 0.5).", "",
             "| optimizer | runs trained | held-out accuracy per seed | last logged loss per seed |",
             "|---|---:|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['optimizer']} | {r['trained']}/{len(r['test_accuracy'])} | "
                     f"{', '.join(f'{a:.3f}' for a in r['test_accuracy'])} | "
                     f"{', '.join(f'{v:.3g}' for v in r['last_loss'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``[--config FILE] [key=value ...]`` (keys of :class:`HFBertConfig`); returns the result document."""
    return _cfg.document_command(HFBertConfig, argv, (__doc__ or "").split("\n")[0], run, markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
