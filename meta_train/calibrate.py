"""Calibrate a learned update's per-tensor step readout to each task's best step multiplier: a supervised
meta-training stage.

Why: ``lopt-lr-sweep`` shows that the missing piece of the v2 learned updates is the per-task step level (their
best ``lr`` multiplier ranges over 0.25-4 across the evaluation tasks; chosen per task it doubles the runs that
reach tuned Adam's loss), and evolution strategies over the readout did not find it. But the readout's own
input, the encoder's mean row and column embeddings of a tensor, predicts the best multiplier of a task well
(leave-one-out R^2 about 0.6 on 48 ``mixture_v2`` tasks, as much as the task's dataset, architecture,
activation and batch size do). So this stage measures it directly:

1. ``tasks`` tasks are drawn from ``family`` (seeded ``sample_seed``; at most ``max_params`` parameters), each
   trained ``steps`` steps by ``NeuralGraphOptimizer(..., lr=m, total_steps=steps)`` for every ``m`` of
   ``multipliers`` on its own training seed (``train_seed + i``: never an evaluation seed 0-2 or a tuning seed
   1000+). The task's target is the log multiplier of the lowest final ``log(L + 0.01)`` (refined by a parabola
   through the grid's best point and its neighbours; a grid edge stays the edge).
2. The feature of a task is the readout's input averaged over its tensors and the encoder calls of the
   ``m = 1`` run; with it each row keeps the mean per-tensor log step of that run (``log_step``), so the task's
   wanted mean log step is ``log_step + target``.
3. The fit is made in that log-step space, through both soft bounds: per task, the readout context whose mean
   log step over a told run of ``steps`` steps is the wanted one (bisection; within 95% of ``readout_bound``,
   and as far as the step bound ``lr_bound`` lets it), mapped back through the readout's tanh to the readout's
   pre-activation. A ridge regression (``ridge``, on standardized features, intercept free) of that
   pre-activation's change on the features is added to the readout's linear layer (``weight += w``,
   ``bias += b``). ``readout_bound`` can widen the readout's bound first (the first calibration added to the
   pre-activation instead: at the bound, where transformers' and many CNNs' readouts sit, it moved their
   steps by a third of the target or less).

``horizon=untold`` calibrates the other half of the update, runs that are not told ``total_steps`` (a user who
passes nothing): the runs of step 1 go without the horizon, and the fit goes into a second readout that only
such runs read (``LearnedUpdateConfig.untold_readout``; added as a copy of the readout when ``src`` has none),
through the untold schedule. A told run (and with it every told result of ``src``) is unchanged.

Rows measured before (``rows=A.json,B.json``: records of earlier runs, on learned updates with this encoder)
replace the collection; rows without ``log_step`` get it from their record's ``src``.

Commands::

    lopt-calibrate src=v2_cosine_pes_100_bounded dst=runs/calib/calibrated.pt     # 48 tasks: ~15 min, 1 core
    lopt-calibrate src=... dst=... tasks=8 steps=100 multipliers=0.5,1,2           # a quick look
    lopt-calibrate src=... dst=... rows=a.json,b.json readout_bound=2              # refit measured rows: seconds
    lopt-calibrate src=v2_calibrated3 dst=runs/calib/untold.pt horizon=untold      # the untold step level
    lopt-calibrate --help                                                           # the keys and their defaults

While it measures, ``dst`` with ``.partial.json`` holds the rows so far; the same command resumes from it.

Writes ``dst`` (a ``NeuralGraphOptimizer`` checkpoint; ``meta["calibration"]`` records the keys and the fit)
and ``dst`` with ``.json`` (every task's losses per multiplier, its target and features, the fit's
leave-one-out quality).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs import config as _cfg
from lopt_graphs.evaluation import train_run
from lopt_graphs.io import atomic_write_text
from lopt_graphs.optim import LearnedUpdate, save_checkpoint

from .tasks import num_params, sample_task

#: Offset of the loss in the target's ``log(L + c)`` (the ``log_final`` meta-objective's and validation's).
LOSS_OFFSET = 0.01
#: What calibration runs are told: their horizon (``total_steps``), or nothing.
HORIZONS = ("told", "untold")


@dataclass(frozen=True)
class CalibrateConfig(_cfg.CheckedConfig):
    """Keys of ``lopt-calibrate`` (``python -m meta_train.calibrate``).

    Attributes:
        src: learned update to calibrate (shipped name, path, or a meta-training run's ``ckpt.pt``); it needs a
            per-tensor step readout (v2 with the graph encoder).
        dst: the calibrated checkpoint to write.
        family: task family of the calibration tasks (``meta_train.tasks.FAMILIES``).
        tasks: number of calibration tasks.
        steps: training steps per run (told as ``total_steps`` unless ``horizon=untold``).
        multipliers: ``lr`` grid per task (at least 3 values, each > 0, increasing).
        ridge: ridge penalty on the standardized features (> 0).
        max_params: skip drawn tasks with more parameters (0: no limit).
        sample_seed: seed of the task draws.
        train_seed: task ``i`` trains on seed ``train_seed + i`` (with ``seeds_per_task`` ``k``: on seeds
            ``train_seed + k i ... train_seed + k i + k - 1``).
        seeds_per_task: training seeds per task and multiplier; a task's loss per multiplier is the geometric
            mean of ``L + 0.01`` over them (minus 0.01), which the target reads: less seed noise in the target
            at ``k`` times the cost (>= 1).
        threads: torch intra-op threads.
        readout_bound: widen (or set) the readout's soft bound before the fit (``0``: keep ``src``'s).
        readout_bound_up: a separate upward bound of the readout (``LearnedUpdateConfig.readout_bound_up``;
            ``0``: ``readout_bound`` both ways).
        rows: records (``.json`` written by earlier runs) whose rows to fit instead of collecting new ones.
        per_task: ``False`` zeroes the readout's weights and fits only its bias: one step level for every tensor
            of every task, the ablation of what the encoder's per-task information is worth.
        horizon: ``told`` (runs told ``total_steps``; the fit moves the readout) or ``untold`` (runs without it;
            the fit moves the untold readout, see the module docstring).
    """

    src: str = "v2_cosine_pes_100_bounded"
    dst: str = ""
    family: str = "mixture_v2"
    tasks: int = 48
    steps: int = 300
    multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    ridge: float = 3.0
    max_params: int = 30000
    sample_seed: int = 777
    train_seed: int = 5000
    threads: int = 1
    readout_bound: float = 0.0
    readout_bound_up: float = 0.0
    rows: tuple[str, ...] = ()
    per_task: bool = True
    horizon: str = "told"
    seeds_per_task: int = 1

    def validate(self) -> None:
        if self.horizon not in HORIZONS:
            _cfg.bad_value("horizon", self.horizon, f"one of {list(HORIZONS)}")
        m = self.multipliers
        if len(m) < 3 or any(not x > 0 for x in m) or list(m) != sorted(set(m)):
            _cfg.bad_value("multipliers", m, "at least 3 increasing values > 0")
        if 1.0 not in m:
            _cfg.bad_value("multipliers", m, "a grid that contains 1 (the features come from the m = 1 run)")
        _cfg.check_minimums(self, tasks=2, steps=1, max_params=0, threads=0, seeds_per_task=1)
        if not self.ridge > 0:
            _cfg.bad_value("ridge", self.ridge, "a value > 0")
        _cfg.check_finite(self, "readout_bound", strict=False, note=" (0 keeps the source's bound)")
        _cfg.check_finite(self, "readout_bound_up", strict=False, note=" (0: readout_bound both ways)")
        if self.train_seed < 3 or (self.train_seed < 1100 and self.train_seed + self.tasks * self.seeds_per_task > 1000):
            _cfg.bad_value("train_seed", self.train_seed, "seeds away from the evaluation (0-2) and tuning (1000+) "
                           "seeds, e.g. 5000")


def _check_readout(learned: LearnedUpdate) -> None:
    if not (learned.cfg.tensor_lr and learned.cfg.use_graph) or getattr(learned, "lr_readout", None) is None:
        raise ValueError("This learned update has no per-tensor step readout of the graph encoder (it needs a v2 "
                         "update with use_graph=True and tensor_lr=True): there is nothing to calibrate")
    if learned.cfg.fan_in_power > 0:
        raise ValueError(f"This learned update has a fan-in prior (fan_in_power={learned.cfg.fan_in_power:g}), which "
                         "shifts each weight's log step by its own fan-in; a calibration models one readout context "
                         "per task. Calibrate the update without it (lopt-derive fan_in_prior=0,"
                         f"{learned.cfg.fan_in_ref:g}) and give the result the prior again")


def log_loss(loss: float) -> float:
    """``log(L + 0.01)``, the space targets are chosen in; a non-finite loss counts as ``1e9``."""
    return math.log((loss if math.isfinite(loss) else 1e9) + LOSS_OFFSET)


def best_log_multiplier(multipliers: Sequence[float], losses: Sequence[float]) -> float:
    """The log multiplier of the lowest ``log(L + 0.01)``, refined by the parabola through the best grid point
    and its neighbours (in log multiplier, on an evenly spaced log grid); a best point at a grid edge is returned
    as it is. A non-finite loss counts as ``1e9``."""
    lm = [math.log(m) for m in multipliers]
    c = [log_loss(x) for x in losses]
    k = min(range(len(c)), key=c.__getitem__)
    if k in (0, len(c) - 1):
        return lm[k]
    a, b, d = c[k - 1], c[k], c[k + 1]
    curv = a - 2 * b + d
    off = 0.5 * (a - d) / curv if curv > 0 else 0.0
    return lm[k] + max(-0.5, min(0.5, off)) * (lm[k + 1] - lm[k - 1]) / 2


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float]:
    """``(w, b)`` of ``y ~ x @ w + b`` with a ridge penalty ``ridge`` on the standardized weights (the intercept is
    not penalized); returned for the raw features."""
    x, y = x.double(), y.double()
    mu, sd = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    z = torch.cat([(x - mu) / sd, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    pen = torch.diag(torch.cat([torch.full((x.shape[1],), float(ridge), dtype=x.dtype), torch.zeros(1, dtype=x.dtype)]))
    wz = torch.linalg.solve(z.T @ z + pen, z.T @ y)
    w = wz[:-1] / sd
    return w, float(wz[-1] - (w * mu).sum())


def leave_one_out(x: torch.Tensor, y: torch.Tensor, ridge: float) -> dict[str, float]:
    """Leave-one-out predictions of :func:`ridge_fit`: ``r2`` (against the held-out mean) and correlation."""
    preds = []
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        w, b = ridge_fit(x[keep], y[keep], ridge)
        preds.append(float(x[i].double() @ w + b))
    p, t = torch.tensor(preds), y.double()
    r2 = 1 - float(((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum().clamp_min(1e-12))
    corr = float(torch.corrcoef(torch.stack([p, t]))[0, 1]) if len(y) > 2 else math.nan
    return {"r2": r2, "corr": corr}


#: Keys a partial collection must share with the command that resumes it (``tasks`` may grow).
RESUME_KEYS = ("src", "family", "steps", "multipliers", "max_params", "sample_seed", "train_seed", "horizon")


def _resume_keys(c: CalibrateConfig) -> dict[str, Any]:
    keys = {k: v for k, v in _cfg.config_to_dict(c).items() if k in RESUME_KEYS}
    if c.seeds_per_task != 1:  # a partial collection of one seed per task (older ones too) resumes as before
        keys["seeds_per_task"] = c.seeds_per_task
    return keys


def mean_over_seeds(losses: Sequence[float]) -> float:
    """The loss whose :func:`log_loss` is the mean of the seeds'."""
    return math.exp(sum(map(log_loss, losses)) / len(losses)) - LOSS_OFFSET


def _resume_rows(progress: Path | None, keys: dict[str, Any]) -> list[dict[str, Any]]:
    if progress is None or not progress.is_file():
        return []
    try:
        saved = json.loads(progress.read_text())
        saved_keys, rows = saved.get("keys"), list(saved["rows"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{str(progress)!r} is not a partial collection of lopt-calibrate ({e!r}): delete it to "
                         "start over") from e
    if saved_keys != keys:
        raise ValueError(f"{str(progress)!r} holds a partial collection made with other keys ({saved_keys}, "
                         f"now {keys}): run with the same keys to resume it, or delete it to start over")
    return rows


def collect(learned: LearnedUpdate, c: CalibrateConfig, log=print, progress: Path | None = None,
            ) -> list[dict[str, Any]]:
    """Step 1 and 2: per calibration task, its final losses per multiplier, target and feature (see the module
    docstring). With ``progress``, the rows so far are written there after every task, and the tasks it already
    holds (same draws, same keys) are not trained again: an interrupted collection resumes."""
    _check_readout(learned)
    told = c.horizon == "told"
    if not told:
        _check_untold(learned)
    keys = _resume_keys(c)
    done = _resume_rows(progress, keys)
    seen: list[torch.Tensor] = []
    hook = learned.lr_readout.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach().clone()))
    gen = torch.Generator().manual_seed(c.sample_seed)
    rows: list[dict[str, Any]] = []
    t0, draws = time.perf_counter(), 0
    try:
        while len(rows) < c.tasks:
            task = sample_task(c.family, gen)
            draws += 1
            if draws > 100 * c.tasks:
                raise ValueError(f"Family {c.family!r} drew {draws} tasks and only {len(rows)} have at most "
                                 f"max_params={c.max_params} parameters: raise max_params")
            if c.max_params and num_params(task.cfg) > c.max_params:
                continue
            seeds = [c.train_seed + c.seeds_per_task * len(rows) + j for j in range(c.seeds_per_task)]
            if len(rows) < len(done):
                if done[len(rows)]["task"] != task.name:
                    raise ValueError(f"{str(progress)!r}: task {len(rows)} was {done[len(rows)]['task']!r}, the "
                                     f"draws now give {task.name!r}: delete it to start over")
                rows.append(done[len(rows)])
                continue
            per_seed, feature = [], None
            for m in c.multipliers:
                seen.clear()
                finals = []
                for seed in seeds:
                    with warnings.catch_warnings():  # transformers: "attention in-projections are graph-free"
                        warnings.filterwarnings("ignore", message=r".*graph-free", category=UserWarning)
                        r = train_run(task, lambda mod, m=m: NeuralGraphOptimizer.for_module(
                            mod, learned, lr=m, total_steps=c.steps if told else None), c.steps, seed)
                    finals.append(r.final_loss)
                per_seed.append(finals)
                if m == 1.0:
                    if not seen:
                        raise RuntimeError(f"{task.name}: the readout was never called (no weight on the graph?)")
                    feature = torch.stack(seen).mean(0)  # over the tensors, encoder calls and seeds
            losses = [mean_over_seeds(f) for f in per_seed]
            target = best_log_multiplier(c.multipliers, losses)
            row = {"task": task.name, "config": task.cfg.to_dict(), "seed": seeds[0], "losses": losses,
                   "target_log_multiplier": target, "feature": feature.tolist(), "told": told}
            if c.seeds_per_task > 1:
                row.update(seeds=seeds, losses_per_seed=per_seed)
            rows.append(row)
            log(f"[{len(rows)}/{c.tasks}] {task.name}: best lr x{math.exp(target):.2f} "
                f"({time.perf_counter() - t0:.0f} s)")
            if progress is not None:
                atomic_write_text(progress, json.dumps({"keys": keys, "rows": rows}))
    finally:
        hook.remove()
    annotate_rows(rows, learned, c.steps)
    return rows


def _check_untold(learned: LearnedUpdate) -> None:
    if not learned.cfg.horizon_taus:
        raise ValueError("horizon=untold needs a learned update with horizon features (horizon_taus): without them "
                         "told and untold runs are the same, calibrate them with horizon=told")
    if learned.cfg.untold_horizon:
        raise ValueError(f"horizon=untold: this learned update assumes a horizon for untold runs (untold_horizon="
                         f"{learned.cfg.untold_horizon:g}), so they read the told readout and the untold one is "
                         "unused; calibrate horizon=told, or remove it first (lopt-derive untold_horizon=0)")


def load_rows(paths: Sequence[str], learned: LearnedUpdate) -> list[dict[str, Any]]:
    """The rows of earlier records (``dst`` ``.json`` files), each annotated (:func:`annotate_rows`) with its
    record's ``src`` when it has no ``log_step``. Their learned updates must share ``learned``'s encoder and head
    (:func:`same_encoder`)."""
    from .evaluate import load_any

    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            rows, keys = record["rows"], record["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"rows: {path!r} is not a record written by lopt-calibrate ({e})") from e
        if any("log_step" not in r for r in rows):
            source = load_any(keys["src"])
            if not same_encoder(source, learned):
                raise ValueError(f"rows: {path!r} was measured on {keys['src']!r}, whose encoder differs from the "
                                 "learned update being calibrated: its features do not carry over")
            annotate_rows(rows, source, int(keys["steps"]))
        out.extend(rows)
    return out


def mean_log_step(learned: LearnedUpdate, ctx: torch.Tensor, steps: int,
                  logit: torch.Tensor | None = None, told: bool = True) -> torch.Tensor:
    """``[N]``: the per-tensor log step ``sigma`` averaged over a run of ``steps`` steps that is told its horizon
    (``told=False``: that is not), for tensors whose readout contexts are ``ctx`` ``[N]`` (the learned schedule
    and its bound ``lr_bound``). ``logit``: the schedule's :meth:`~lopt_graphs.optim.LearnedUpdate.schedule_logit`
    over the run, if the caller has it already."""
    if logit is None:  # the step counts the update sees
        logit = learned.schedule_logit(torch.arange(1, steps + 1), steps if told else None)
    s = logit.double()[None, :] + ctx.double()[:, None]
    return (learned.cfg.lr_bound * torch.tanh(s / learned.cfg.lr_bound)).mean(1)


def context_for(learned: LearnedUpdate, wanted: torch.Tensor, steps: int, iters: int = 60,
                told: bool = True, offset: float = 0.0) -> torch.Tensor:
    """``[N]``: the readout contexts whose :func:`mean_log_step` (of a told run, or an untold one) is ``wanted``
    ``[N]`` (bisection), kept within 95% of the readout's bounds (``+-10`` when unbounded), moved by ``offset``
    (an unbounded shift added after the bound): an unreachable value gets the nearest reachable one."""
    bounds = learned.cfg.readout_bounds
    low, high = (-0.95 * bounds[0], 0.95 * bounds[1]) if bounds else (-10.0, 10.0)
    low, high = low + offset, high + offset
    lo = torch.full_like(wanted, low, dtype=torch.float64)
    hi = torch.full_like(wanted, high, dtype=torch.float64)
    logit = learned.schedule_logit(torch.arange(1, steps + 1), steps if told else None)  # once
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = mean_log_step(learned, mid, steps, logit) > wanted
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return (lo + hi) / 2


def annotate_rows(rows: list[dict[str, Any]], source: LearnedUpdate, steps: int) -> None:
    """Give rows measured on ``source`` (runs of ``steps`` steps, told their horizon unless a row says
    ``"told": false``) their ``steps`` and ``log_step``: the mean per-tensor log step of ``source`` at each row's
    feature (in place)."""
    _check_readout(source)
    x = torch.tensor([r["feature"] for r in rows], dtype=source.lr_readout.weight.dtype)
    told = torch.tensor([r.get("told", True) for r in rows])
    with torch.no_grad():
        ctx, ctx_untold = source.readout_contexts(x)
        ctx_untold = ctx if ctx_untold is None else ctx_untold
        ls = torch.where(told, mean_log_step(source, ctx, steps), mean_log_step(source, ctx_untold, steps, told=False))
    for r, v in zip(rows, ls.tolist()):
        r["steps"], r["log_step"] = steps, v


#: Meta-parameters a calibration may differ in from the update its rows were measured on (the step size's).
STEP_SIZE_PARAMS = ("lr_readout.", "lr_readout_untold.", "lr_untold_shift", "lr_sched.")


def same_encoder(a: LearnedUpdate, b: LearnedUpdate) -> bool:
    """Whether ``a`` and ``b`` differ at most in their per-tensor step size (readout and schedule), so the readout
    inputs measured on one are inputs of the other's readout (each row keeps the log step it was measured at)."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = {k for k in sa if not k.startswith(STEP_SIZE_PARAMS)}
    return keys == {k for k in sb if not k.startswith(STEP_SIZE_PARAMS)} and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in keys)


def _row_tensors(learned: LearnedUpdate, rows: list[dict[str, Any]], told: bool,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features [N, D], target log multipliers [N], log steps [N])`` of annotated rows, checked: complete,
    finite, of ``learned``'s readout, and all measured told (``told``) or all untold."""
    missing = [i for i, r in enumerate(rows) if "log_step" not in r or "steps" not in r]
    if missing:
        raise ValueError(f"Rows {missing[:5]} have no 'log_step'/'steps' (the mean log step of the run they were "
                         "measured on): pass them through annotate_rows with the learned update they come from")
    other = [r.get("task", i) for i, r in enumerate(rows) if r.get("told", True) != told]
    if other:
        mode, theirs = ("told", "untold") if told else ("untold", "told")
        raise ValueError(f"Rows of tasks {other[:5]} were measured on {theirs} runs; a horizon={mode} fit needs rows "
                         f"of {mode} runs (horizon={mode} when collecting them)")
    x = torch.tensor([r["feature"] for r in rows])
    y = torch.tensor([r["target_log_multiplier"] for r in rows], dtype=torch.float64)
    old = torch.tensor([r["log_step"] for r in rows], dtype=torch.float64)
    bad = [r.get("task", i) for i, r in enumerate(rows)
           if not (bool(x[i].isfinite().all()) and math.isfinite(y[i]) and math.isfinite(old[i]))]
    if bad:
        raise ValueError(f"Rows of tasks {bad[:5]} have a non-finite feature, target or log step (a diverged lr=1 "
                         "run?): drop them from the rows before fitting, or the readout would be NaN")
    if x.shape[1] != learned.lr_readout.in_features:
        raise ValueError(f"Features of {x.shape[1]} dims do not fit the readout's {learned.lr_readout.in_features} "
                         "inputs: the rows come from another learned update")
    return x, y, old


def _by_arch(rows: list[dict[str, Any]], y: torch.Tensor, applied: torch.Tensor) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for arch in sorted({str(r.get("config", {}).get("arch", "?")) for r in rows}):
        k = torch.tensor([str(r.get("config", {}).get("arch", "?")) == arch for r in rows])
        out[arch] = {"tasks": int(k.sum()), "target": float(y[k].mean()), "applied": float(applied[k].mean())}
    return out


#: Shifts of the untold readout (``lr_untold_shift``) a ``horizon=untold`` fit tries: the one whose bounded
#: readout fit leaves the smallest squared error on the rows wins.
UNTOLD_SHIFTS = tuple(round(0.1 * k, 1) for k in range(-20, 21))


def _fit_readout(learned: LearnedUpdate, readout: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor,
                 old: torch.Tensor, steps: list[int], ridge: float, told: bool, offset: float = 0.0,
                 ) -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]:
    """Fit ``readout`` (in place) so the rows' mean log steps move by their targets, through its bound and, for
    untold runs, the unbounded ``offset`` added after it. Returns ``(w, b, wanted pre-activation change,
    applied change of mean log step)``."""
    by_length = {n: torch.tensor([s == n for s in steps]) for n in sorted(set(steps))}  # rows sharing a schedule
    with torch.no_grad():
        r_now = readout(x.to(readout.weight.dtype))[:, 0].double()
        r_new = torch.empty_like(r_now)
        for n, k in by_length.items():
            ctx = context_for(learned, old[k] + y[k], n, told=told, offset=offset)
            r_new[k] = learned.cfg.unbound_readout(ctx - offset)
        w, c = ridge_fit(x, r_new - r_now, ridge)
        readout.weight += w.to(readout.weight.dtype)[None]
        readout.bias += c
        r_fit = readout(x.to(readout.weight.dtype))[:, 0]
        applied = torch.empty_like(old)
        for n, k in by_length.items():
            ctx = learned.cfg.bound_readout(r_fit[k]).double() + offset
            applied[k] = mean_log_step(learned, ctx, n, told=told) - old[k]
    return w, c, r_new - r_now, applied


def calibrate(learned: LearnedUpdate, rows: list[dict[str, Any]], ridge: float,
              readout_bound: float = 0.0, readout_bound_up: float = 0.0, per_task: bool = True,
              told: bool = True) -> dict[str, Any]:
    """Step 3: fit the rows' wanted mean log steps into ``learned``'s readout (in place; ``readout_bound > 0``
    sets the readout's bound first, ``readout_bound_up > 0`` a separate upward one; ``per_task=False`` fits one
    bias for all, the readout's weights zeroed). ``told=False``: rows of untold runs, fitted into the untold
    readout (added first as a copy of the readout, :meth:`~lopt_graphs.optim.LearnedUpdate.add_untold_readout_`)
    and its unbounded shift (the one of :data:`UNTOLD_SHIFTS` with the smallest squared error after the fit:
    it moves the level where the bounded readout cannot); told runs are unchanged. Each row needs
    ``feature``, ``target_log_multiplier``, ``log_step`` and ``steps`` (:func:`collect`, :func:`annotate_rows`).
    Returns the fit's record: weights' norm, intercept,
    leave-one-out quality of the pre-activation change, targets' spread, and per architecture the mean target
    against the mean change of log step the fitted readout gives the rows (``applied``: short of the target
    where the bounds stop it)."""
    _check_readout(learned)
    x, y, old = _row_tensors(learned, rows, told=told)
    if not told:
        _check_untold(learned)
        learned.add_untold_readout_()
    readout = learned.lr_readout if told else learned.lr_readout_untold
    if readout_bound > 0 or readout_bound_up > 0:
        learned.cfg = dataclasses.replace(learned.cfg, readout_bound=float(readout_bound or learned.cfg.readout_bound),
                                          readout_bound_up=float(readout_bound_up))
    if not per_task:
        with torch.no_grad():
            readout.weight.zero_()
        x = torch.zeros_like(x)  # no feature: the fit is the intercept alone
    steps = [int(r["steps"]) for r in rows]
    record: dict[str, Any] = {}
    if told:
        w, c, dr, applied = _fit_readout(learned, readout, x, y, old, steps, ridge, True)
    else:
        start = {k: v.clone() for k, v in readout.state_dict().items()}
        trials = []
        for shift in UNTOLD_SHIFTS:
            readout.load_state_dict(start)
            _, _, _, applied = _fit_readout(learned, readout, x, y, old, steps, ridge, False, shift)
            trials.append((float(((applied - y) ** 2).mean()), shift))
        err, shift = min(trials)
        readout.load_state_dict(start)
        w, c, dr, applied = _fit_readout(learned, readout, x, y, old, steps, ridge, False, shift)
        with torch.no_grad():
            learned.lr_untold_shift.fill_(shift)
        record = {"untold_shift": shift, "squared_error": err}
    return {"tasks": len(rows), "horizon": "told" if told else "untold", **record, "ridge": ridge,
            "per_task": per_task, "readout_bound": learned.cfg.readout_bound,
            "readout_bound_up": learned.cfg.readout_bound_up, "weight_l1": float(w.abs().sum()),
            "intercept": c, "target_mean": float(y.mean()), "target_std": float(y.std()),
            "applied_mean": float(applied.mean()), "by_arch": _by_arch(rows, y, applied),
            "leave_one_out": leave_one_out(x, dr, ridge)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``lopt-calibrate [--config FILE] src=... dst=PATH [tasks=48] ...``; returns the record written beside
    ``dst``."""
    from .evaluate import load_any

    c = _cfg.parse_command(CalibrateConfig, argv, (__doc__ or "").split("\n")[0])
    if not c.dst:
        _cfg.bad_value("dst", c.dst, "the path of the calibrated checkpoint to write")
    progress = Path(c.dst).with_suffix(".partial.json")  # the rows so far while measuring
    before = torch.get_num_threads()
    _cfg.set_threads(c.threads)
    try:
        learned = load_any(c.src)
        rows = load_rows(c.rows, learned) if c.rows else collect(learned, c, progress=progress)
        fit = calibrate(learned, rows, c.ridge, c.readout_bound, c.readout_bound_up, c.per_task,
                        told=c.horizon == "told")
    finally:
        torch.set_num_threads(before)
    keys = _cfg.config_to_dict(c)
    save_checkpoint(learned, c.dst, meta={"derived_from": c.src, "calibration": {**keys, **fit}})
    record = {"config": keys, "fit": fit, "rows": rows}
    atomic_write_text(Path(c.dst).with_suffix(".json"), json.dumps(record, indent=1))
    if not c.rows:
        progress.unlink(missing_ok=True)
    loo = fit["leave_one_out"]
    print(f"calibrated {c.src} ({c.horizon} runs) on {len(rows)} tasks: target log multiplier "
          f"{fit['target_mean']:+.2f} +- {fit['target_std']:.2f}, leave-one-out R^2 {loo['r2']:.2f} "
          f"(corr {loo['corr']:.2f}); wrote {c.dst}")
    for arch, a in fit["by_arch"].items():
        print(f"  {arch}: {a['tasks']} tasks, mean target {a['target']:+.2f}, applied {a['applied']:+.2f}")
    return record


if __name__ == "__main__":
    main()
