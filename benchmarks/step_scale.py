"""How a learned per-tensor step size carries over to models far larger than meta-training's.

Commands::

    lopt-step-scale                                                  # default and v2 checkpoints, ResNet-18
    lopt-step-scale ckpts=default,v2_cosine_pes_100 models=resnet18,mlp_wide steps=60 out=benchmarks/results/step_scale.json
    python -m benchmarks.step_scale --help                           # the keys and their defaults

Meta-training sees MLPs and CNNs of at most ~20k parameters. A v2 update's per-tensor step is a learned schedule
plus a readout of the encoder's node embeddings; on a model with 500-wide layers the readout reads embeddings
it never saw, and its step can be off by orders of magnitude. For each checkpoint and model this trains the
model with ``NeuralGraphOptimizer.for_module`` **without** ``total_steps`` (the ``for_module`` default, what a
user who passes nothing gets; ``told=true``: with ``total_steps=steps``) and, in the same process, with Adam at
constant lrs ``adam_lrs`` (default 1e-3 and 1e-2), and reports:

* the per-tensor step ``lr * base_lr * e**sigma`` (v2, times the checkpoint's size prior
  ``NeuralGraphOptimizer.size_scale``; from the optimizer's public diagnostics) at the first
  step: median and maximum over the tensors, and the step with a zero readout (the schedule's alone);
* the loss before and after ``steps`` steps, in eval mode on the training batches (BatchNorm's running
  statistics must follow the weights) -- the set-up of ``tests/optim/test_batchnorm.py`` -- over ``seeds``
  initializations (median and worst): at steps several times Adam's, ResNet-18's end loss is chaotic (a 1e-5
  difference after the first step, as between the C step and the eager one, moved it from 2.04 to 0.013).

The per-tensor steps come from a separate one-step run with the diagnostics on, so the loss runs take the
optimizer's usual path.

Models: ``resnet18`` (torchvision, 11.2M parameters, 10 classes, 32x32 random inputs, 32 samples in two
batches of 16) ``mlp_wide`` (784-1024-1024-10 ReLU on the embedded MNIST-5k, batch 64) and ``mlp_mid`` (the same at width
256, 270k parameters). Prints a markdown
table and writes JSON + markdown.
"""

from __future__ import annotations

import copy
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs import config as _cfg
from lopt_graphs.config import bad_value
from lopt_graphs.io import write_json_and_markdown
from lopt_graphs.optim import LearnedUpdate
from meta_train.evaluate import check_checkpoints, load_any

MODELS = ("resnet18", "mlp_wide", "mlp_mid")


@dataclass(frozen=True)
class StepScaleConfig:
    """Keys of ``lopt-step-scale``.

    Attributes:
        ckpts: checkpoints (shipped names, paths, or a meta-training run's ``ckpt.pt``).
        models: models to train (``resnet18``, ``mlp_wide``).
        steps: optimizer steps per run (>= 1).
        seeds: initializations per model and optimizer (seeds 0, 1, ...; >= 1).
        out: JSON output (the markdown goes next to it, ``.md``).
        threads: torch intra-op threads (``0`` leaves torch's default).
        told: tell the optimizer its horizon (``total_steps=steps``, as the README recommends for v2 updates);
            the per-tensor steps are then read at the learned schedule's peak instead of the first step.
        lr: the optimizer's ``lr`` multipliers (each ``> 0``): one row per checkpoint and multiplier, a sweep
            of the step level on models beyond meta-training's (``lr=1,0.5,0.25``).
        adam_lrs: Adam's constant learning rates, run in the same process on the same initializations and
            batches (each ``> 0``, distinct): one column each (``adam_lrs=0.001,0.01,0.02,0.04`` asks what
            constant step size a model tolerates).
    """

    ckpts: tuple[str, ...] = ("default", "v2_cosine_pes_100", "v2_ff_cosine_pes_100")
    models: tuple[str, ...] = ("resnet18",)
    steps: int = 60
    seeds: int = 3
    out: str = "benchmarks/results/step_scale.json"
    threads: int = 1
    told: bool = False
    lr: tuple[float, ...] = (1.0,)
    adam_lrs: tuple[float, ...] = (1e-3, 1e-2)

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        if not self.ckpts:
            bad_value("ckpts", self.ckpts, "at least one checkpoint")
        for m in self.models:
            if m not in MODELS:
                bad_value("models", self.models, f"names from {list(MODELS)}")
        if not self.models:
            bad_value("models", self.models, f"at least one of {list(MODELS)}")
        _cfg.check_minimums(self, steps=1, seeds=1, threads=0)
        if not self.lr:
            bad_value("lr", self.lr, "at least one multiplier")
        _cfg.check_finite(self, "lr")
        _cfg.check_grid(self, "adam_lrs")


@dataclass(frozen=True)
class Problem:
    """A model factory and its fixed data: ``batches[i % len(batches)]`` trains step ``i``; the loss before and
    after is measured on all of them (eval mode)."""

    make: Callable[[], nn.Module]
    batches: list[tuple[Tensor, Tensor]]


def problem(name: str) -> Problem:
    """The model ``name`` (one of :data:`MODELS`) with its data, seeded."""
    g = torch.Generator().manual_seed(0)
    if name == "resnet18":
        import torchvision

        x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
        return Problem(lambda: torchvision.models.resnet18(num_classes=10), [(x[:16], y[:16]), (x[16:], y[16:])])
    if name in ("mlp_wide", "mlp_mid"):
        from lopt_graphs.data import load_embedded

        data = load_embedded("mnist5k")
        x, y = data.x_train.flatten(1), data.y_train
        idx = torch.randperm(len(x), generator=g)[:640]
        batches = [(x[idx[i:i + 64]], y[idx[i:i + 64]]) for i in range(0, 640, 64)]
        w = 1024 if name == "mlp_wide" else 256
        return Problem(lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, w), nn.ReLU(), nn.Linear(w, w),
                                             nn.ReLU(), nn.Linear(w, 10)), batches)
    raise ValueError(f"Unknown model {name!r}; expected one of {list(MODELS)}")


def _eval_loss(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    model.eval()
    with torch.no_grad():
        out = statistics.mean(float(nn.functional.cross_entropy(model(x), y)) for x, y in batches)
    model.train()
    return out


def train(prob: Problem, make_opt: Callable[[nn.Module], torch.optim.Optimizer], steps: int,
          seed: int = 0) -> tuple[float, float, torch.optim.Optimizer]:
    """``(loss before, loss after, optimizer)`` of ``steps`` steps from the initialization of ``seed``."""
    torch.manual_seed(seed)
    model = prob.make()
    start = _eval_loss(model, prob.batches)
    opt = make_opt(model)
    for i in range(steps):
        x, y = prob.batches[i % len(prob.batches)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return start, _eval_loss(model, prob.batches), opt


def _ends(prob: Problem, make_opt: Callable[[nn.Module], torch.optim.Optimizer], steps: int, seeds: int,
          ) -> tuple[float, list[float]]:
    """Seed 0's start loss and the end losses over ``seeds`` initializations."""
    runs = [train(prob, make_opt, steps, s) for s in range(seeds)]
    return runs[0][0], [r[1] for r in runs]


def peak_step(learned: LearnedUpdate, total: int | None) -> int:
    """The step (1-based) at which a run of ``total`` steps told its horizon takes the learned schedule's largest
    step (``1`` without a horizon or a learned schedule)."""
    if total is None or not learned.cfg.tensor_lr:
        return 1
    t = torch.arange(1, total + 1, dtype=torch.float32)
    return int(learned.schedule(t / total, total).argmax()) + 1


def tensor_steps(opt: NeuralGraphOptimizer, learned: LearnedUpdate, total: int | None = None, step: int = 1,
                 ) -> dict[str, float] | None:
    """Median and maximum per-tensor step ``lr * base_lr * e**sigma`` of the optimizer's last step (v2, its
    ``step``-th of a run of ``total``), and the step of a zero readout there (the schedule alone); ``None`` for an
    update without a per-tensor step."""
    sig = [d["sigma"] for d in opt.last_diagnostics if d["sigma"] is not None]
    if not sig:
        return None
    base = learned.cfg.base_lr
    lr = float(opt.param_groups[0]["lr"]) * opt.size_scale  # the checkpoint's size prior, if it has one
    steps = [lr * base * float(torch.tensor(s).exp()) for s in sig]
    return {"median_step": statistics.median(steps), "max_step": max(steps), "min_step": min(steps),
            "schedule_step": lr * float(learned.schedule(torch.tensor([step / (total or 1000)]), total=total)[0]),
            "probe_step": step, "tensors": len(steps)}


def _summary(prefix: str, ends: list[float]) -> dict:
    return {f"{prefix}_loss_end": statistics.median(ends), f"{prefix}_loss_end_worst": max(ends),
            f"{prefix}_loss_ends": ends}


def measure(ckpt: str, model: str, steps: int, seeds: int, told: bool = False, lr: float = 1.0) -> dict:
    """One row: the checkpoint's per-tensor steps and losses on ``model`` (``told``: ``total_steps=steps``) at
    ``lr``."""
    learned, prob = load_any(ckpt), problem(model)
    total = steps if told else None

    def make_opt(m: nn.Module, diagnostics: bool = False) -> NeuralGraphOptimizer:
        opt = NeuralGraphOptimizer.for_module(m, copy.deepcopy(learned), lr=lr, total_steps=total)
        opt.record_diagnostics = diagnostics
        return opt

    probe = peak_step(learned, total)
    per_tensor = tensor_steps(train(prob, lambda m: make_opt(m, True), probe)[2], learned, total, probe)
    start, ends = _ends(prob, make_opt, steps, seeds)
    row = {"ckpt": ckpt, "model": model, "params": sum(p.numel() for p in prob.make().parameters()), "lr": lr,
           "loss_start": start, **_summary("ngo", ends), **(per_tensor or {})}
    print(f"  {ckpt} on {model}: {start:.3f} -> {[f'{e:.4g}' for e in ends]}", file=sys.stderr)
    return row


def adam_rows(model: str, steps: int, seeds: int, lrs: Sequence[float] = (1e-3, 1e-2)) -> dict:
    """Adam at the constant ``lrs`` on ``model``, on the same initializations and batches as :func:`measure`'s."""
    prob = problem(model)
    out: dict = {}
    for lr in lrs:
        out.update(_summary(f"adam_{lr:g}", _ends(prob, lambda m, lr=lr: torch.optim.Adam(m.parameters(), lr=lr),
                                                  steps, seeds)[1]))
    return out


def markdown(rows: list[dict], steps: int, seeds: int, told: bool = False,
             adam_lrs: Sequence[float] = (1e-3, 1e-2)) -> str:
    """The table of the result rows (one ``lr`` column when they hold other multipliers than 1; one column per
    Adam lr)."""
    lrs = sorted({r.get("lr", 1.0) for r in rows}, reverse=True)
    how = (f"Told `total_steps={steps}`" if told else "Without `total_steps`") + f", {steps} steps"
    how += f", NGO `lr={lrs[0]:g}`" if len(lrs) == 1 and lrs[0] != 1.0 else ""
    col = len(lrs) > 1
    at = "the learned schedule's peak (step `probe_step` in the JSON)" if told else "the first step"
    lines = [f"{how}; loss in eval mode on the training batches, median (worst) over {seeds} initializations. "
             f"Per-tensor step (v2): at {at}, median / max over the tensors, and the schedule's (zero readout).", "",
             "| checkpoint | model | params | " + ("lr | " if col else "") + "median step | max step | schedule step | "
             "loss start | NGO end | " + "".join(f"Adam {lr:g} end | " for lr in adam_lrs).rstrip(),
             "|---|---|---:|" + ("---:|" if col else "") + "---:|---:|---:|---:|---:|" + "---:|" * len(adam_lrs)]

    def f(r: dict, k: str, fmt: str = ".3g") -> str:
        return "-" if r.get(k) is None else f"{r[k]:{fmt}}"

    def end(r: dict, prefix: str) -> str:
        return f"{r[f'{prefix}_loss_end']:.3g} ({r[f'{prefix}_loss_end_worst']:.3g})"

    for r in rows:
        lr = f"{r.get('lr', 1.0):g} | " if col else ""
        lines.append(f"| {r['ckpt']} | {r['model']} | {r['params']:,} | {lr}{f(r, 'median_step')} | {f(r, 'max_step')} | "
                     f"{f(r, 'schedule_step')} | {r['loss_start']:.3f} | {end(r, 'ngo')} | "
                     + "".join(f"{end(r, f'adam_{lr:g}')} | " for lr in adam_lrs).rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point: ``[--config FILE] [key=value ...]``; returns the result document."""
    cfg = _cfg.parse_command(StepScaleConfig, argv, (__doc__ or "").split("\n")[0])
    _cfg.set_threads(cfg.threads)
    check_checkpoints(cfg.ckpts)
    rows = []
    for model in cfg.models:
        adam = adam_rows(model, cfg.steps, cfg.seeds, cfg.adam_lrs)
        rows += [{**measure(c, model, cfg.steps, cfg.seeds, cfg.told, lr), **adam} for c in cfg.ckpts for lr in cfg.lr]
    text = markdown(rows, cfg.steps, cfg.seeds, cfg.told, cfg.adam_lrs)
    print(text)
    res = {"steps": cfg.steps, "seeds": list(range(cfg.seeds)), "threads": torch.get_num_threads(),
           "total_steps": cfg.steps if cfg.told else None, "lr": list(cfg.lr), "adam_lrs": list(cfg.adam_lrs),
           "rows": rows}
    write_json_and_markdown(cfg.out, res, text + "\n")
    return res


if __name__ == "__main__":
    main()
