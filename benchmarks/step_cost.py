"""Wall time of ``NeuralGraphOptimizer.step()`` and of whole training loops against ``torch.optim.Adam``.

Commands::

    lopt-step-cost                                    # per-step table, 100 timed steps per optimizer
    lopt-step-cost quick=true compile=false           # smoke test: the digits MLP, 10 steps
    lopt-step-cost loops=true                         # issue 15's loop targets, the default checkpoint
    lopt-step-cost loops=true ckpts=default,v2_pes_80 models=mlp_784-256-256-10 merge=true
    lopt-step-cost loops=true peers=muon              # and Muon's loop beside them, for scale
    lopt-step-cost loops=true orthogonal_dtypes=bfloat16  # and each checkpoint with bfloat16 Newton-Schulz too
    python benchmarks/step_cost.py --help             # the keys and their defaults

Per-step table (``loops=false``): for each model (an MLP on 8x8 digits, a 784-256-256-10 MLP and a small CNN on
28x28 MNIST-5k images; batch 128) both optimizers run in this process on identical copies of the model and
data, in interleaved rounds. Reported, as medians over ``steps`` timed steps after warm-up: ``opt.step()``
alone, the full training step (forward + backward + step), their ratios to Adam (``foreach=True``), the mean
full step (the encoder runs only at some steps, so the mean includes its amortized cost), the first two steps
apart (where ``torch.compile`` compiles) and the memory of the optimizer state. NGO runs eager and, with
``compile=true``, with ``compile=True``.

Loops (``loops=true``): the wall time of a whole ``loop_steps``-step training loop (forward + backward + step,
first steps and every encoder run included) of ResNet-18 (``torchvision.models.resnet18(num_classes=10)``, 32x32
inputs, batch 32, ``NeuralGraphOptimizer.for_module(model, ckpt)``) and of the 269K-weight 784-256-256-10 MLP
(MNIST-5k, batch 128, ``NeuralGraphOptimizer(model.parameters(), ckpt)``), default options otherwise (eager),
for each checkpoint of ``ckpts``, against ``torch.optim.Adam`` on an identical copy in this process, all of a
model's optimizers interleaved in chunks of ``chunk`` steps (so drifts of a shared machine hit them alike). Each
row records its date and the 1-minute load average before and after it. ``merge=true`` keeps the rows of an
existing ``out`` that this run does not measure (to measure models or checkpoints in separate runs).
``peers=muon`` adds a hand-made optimizer's loop to the same interleaving, reported as a row against the same
Adam loop: ``muon`` is the suite's ``MuonAdam`` (``torch.optim.Muon``'s 5 Newton-Schulz iterations on each 2-D
weight, Adam on the rest), the cost that an orthogonalized direction (``LearnedUpdateConfig.orthogonal``) shares.
``orthogonal_dtypes=bfloat16`` adds, per checkpoint, a loop with ``NeuralGraphOptimizer(...,
orthogonal_dtype=torch.bfloat16)`` (row ``<ckpt>@bfloat16``; ``auto`` and ``float32`` too).

Both print a markdown table and write a summary JSON (``out``; default
``benchmarks/results/step_cost.json`` or ``benchmarks/results/step_cost_loops.json``).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs import config as _cfg
from lopt_graphs.data import load_embedded
from lopt_graphs.io import atomic_write_text
from lopt_graphs.optim.functional import ORTHOGONAL_DTYPE_NAMES

LOOP_MODELS = ("resnet18_32x32_b32", "mlp_784-256-256-10")
#: issue 15's targets: a whole loop at most this many times Adam's
TARGETS = {"resnet18_32x32_b32": 3.0, "mlp_784-256-256-10": 2.0}
#: hand-made optimizers ``peers=`` can time beside the checkpoints (row label: ``peer:<name>``)
LOOP_PEERS = ("muon",)


@dataclass(frozen=True)
class StepCostConfig:
    """Keys of ``lopt-step-cost``.

    Attributes:
        loops: measure whole training loops (issue 15's targets) instead of the per-step table.
        quick: per-step table of the smallest model only, 10 steps (a smoke test).
        steps: timed steps per optimizer (per-step table).
        encoder_every: the optimizer's ``encoder_every`` (per-step table; 0: the checkpoint's setting).
        compile: also time ``compile=True`` (per-step table; compiling takes tens of seconds).
        loop_steps: steps of each training loop (loops).
        chunk: steps per interleaved chunk (loops).
        models: the loop models to run (loops; empty: all of ``LOOP_MODELS``).
        ckpts: the checkpoints to run (loops; shipped names or paths), each against the same Adam loop.
        peers: hand-made optimizers timed in the same loops (loops; among ``LOOP_PEERS``; rows ``peer:<name>``).
        orthogonal_dtypes: per checkpoint, more loops with ``orthogonal_dtype=`` each of these (loops; among
            ``lopt_graphs.optim.functional.ORTHOGONAL_DTYPE_NAMES``; rows ``<ckpt>@<dtype>``).
        merge: keep the rows of an existing ``out`` that this run does not measure (loops).
        out: the JSON output (empty: ``benchmarks/results/step_cost.json`` or ``step_cost_loops.json``).
        threads: torch intra-op threads (``0`` leaves torch's default).
    """

    loops: bool = False
    quick: bool = False
    steps: int = 100
    encoder_every: int = 0
    compile: bool = True
    loop_steps: int = 400
    chunk: int = 25
    models: tuple[str, ...] = ()
    ckpts: tuple[str, ...] = ("default",)
    peers: tuple[str, ...] = ()
    orthogonal_dtypes: tuple[str, ...] = ()
    merge: bool = False
    out: str = ""
    threads: int = 1

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        for key in ("steps", "loop_steps", "chunk"):
            if getattr(self, key) < 1:
                _cfg.bad_value(key, getattr(self, key), "an integer >= 1")
        if self.encoder_every < 0:
            _cfg.bad_value("encoder_every", self.encoder_every, "an integer >= 0 (0: the checkpoint's setting)")
        unknown = sorted(set(self.models) - set(LOOP_MODELS))
        if unknown:
            _cfg.bad_value("models", self.models, f"names among {', '.join(LOOP_MODELS)}")
        if not self.ckpts:
            _cfg.bad_value("ckpts", self.ckpts, "at least one checkpoint")
        if sorted(set(self.peers) - set(LOOP_PEERS)):
            _cfg.bad_value("peers", self.peers, f"names among {', '.join(LOOP_PEERS)}")
        if sorted(set(self.orthogonal_dtypes) - set(ORTHOGONAL_DTYPE_NAMES)):
            _cfg.bad_value("orthogonal_dtypes", self.orthogonal_dtypes, f"names among {', '.join(ORTHOGONAL_DTYPE_NAMES)}")
        if self.threads < 0:
            _cfg.bad_value("threads", self.threads, "an integer >= 0 (0: torch's default)")


def _machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def _markdown(header: str, rows: list[list[str]]) -> str:
    """A markdown table: ``header`` cells separated by ``|`` (a trailing ``:`` right-aligns a column), body rows."""
    cells = [c.strip() for c in header.split("|")]
    lines = ["| " + " | ".join(c.rstrip(":") for c in cells) + " |",
             "|" + "|".join("---:" if c.endswith(":") else "---" for c in cells) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ----------------------------------------------------------------------------------------------- per-step table
def _models() -> dict[str, tuple[nn.Module, str]]:
    torch.manual_seed(0)
    return {
        "mlp_digits_64-64-10": (nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)),
                                "digits"),
        "mlp_784-256-256-10": (nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                                             nn.ReLU(), nn.Linear(256, 10)), "mnist5k"),
        "cnn_mnist_16-32": (nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Flatten(), nn.Linear(32 * 7 * 7, 10)), "mnist5k"),
    }


def _time_steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                steps: int) -> dict[str, list[float]]:
    """Seconds of each full training step and of each ``opt.step()`` (the batches cycled)."""
    loss_fn = nn.CrossEntropyLoss()
    full, step = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[i % len(x)]), y[i % len(y)]).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        full.append(t2 - t0)
        step.append(t2 - t1)
    return {"full": full, "step": step}


def _state_mb(opt: torch.optim.Optimizer) -> float:
    """Memory held in optimizer state tensors (moments, cached node terms)."""
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if isinstance(v, torch.Tensor)) / 2**20


def run_steps(cfg: StepCostConfig) -> dict:
    """The per-step table; returns the result dict."""
    batch, warmup = 128, (5 if cfg.quick else 20)
    steps = 10 if cfg.quick else cfg.steps
    every = cfg.encoder_every or None
    makers: list[tuple[str, Callable[[nn.Module], torch.optim.Optimizer]]] = [
        ("adam", lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, foreach=True)),
        ("ngo", lambda m: NeuralGraphOptimizer(m.parameters(), encoder_every=every))]
    if cfg.compile:
        makers.append(("ngo_compiled", lambda m: NeuralGraphOptimizer(m.parameters(), encoder_every=every,
                                                                      compile=True)))
    models = _models()
    if cfg.quick:
        models = {k: v for k, v in models.items() if k.startswith("mlp_digits")}
    rows = []
    for name, (model, data_name) in models.items():
        data = load_embedded(data_name)
        idx = torch.randint(0, data.num_train, (8, batch), generator=torch.Generator().manual_seed(0))
        x, y = data.x_train[idx], data.y_train[idx]
        res = {"model": name, "data": data_name, "params": sum(p.numel() for p in model.parameters()),
               "batch": batch}
        runs = {}
        for label, make in makers:
            m = copy.deepcopy(model)
            opt = make(m)
            t0 = time.perf_counter()
            _time_steps(m, opt, x, y, 2)  # first steps: torch.compile compiles here (reported apart)
            first = (time.perf_counter() - t0) * 1e3
            _time_steps(m, opt, x, y, warmup)
            runs[label] = (m, opt, first)
            if label == "ngo":
                res["encoder_every"] = opt.param_groups[0]["encoder_every"] or opt.learned.cfg.encoder_every
        # interleaved rounds, so that drifts of the machine's speed hit every optimizer alike
        samples: dict[str, list[dict[str, list[float]]]] = {label: [] for label, _ in makers}
        rounds = 1 if cfg.quick else 4
        for _ in range(rounds):
            for label, (m, opt, _) in runs.items():
                samples[label].append(_time_steps(m, opt, x, y, max(steps // rounds, 1)))
        for label, (_, opt, first) in runs.items():
            full = [v for r in samples[label] for v in r["full"]]
            step = [v for r in samples[label] for v in r["step"]]
            res[label] = {"step_ms": statistics.median(step) * 1e3, "full_ms": statistics.median(full) * 1e3,
                          "full_mean_ms": statistics.fmean(full) * 1e3, "step_mean_ms": statistics.fmean(step) * 1e3,
                          "first_2_steps_ms": first, "state_mb": _state_mb(opt)}
        for label, _ in makers[1:]:
            r = res[label]
            for key, ref in (("step_ratio", "step_ms"), ("full_ratio", "full_ms"), ("full_mean_ratio", "full_mean_ms")):
                r[key] = r[ref] / res["adam"][ref]
        rows.append(res)
    return {"benchmark": "step_cost", "date": _dt.date.today().isoformat(), "torch": torch.__version__,
            "machine": _machine(), "steps": steps, "warmup": warmup, "rows": rows}


def table(result: dict) -> str:
    """Markdown table of a :func:`run_steps` result."""
    rows = []
    for r in result["rows"]:
        for label in ("adam", "ngo", "ngo_compiled"):
            if label in r:
                x = r[label]
                ratio = lambda k: "1.00x" if label == "adam" else f"{x[k]:.2f}x"
                rows.append([r["model"], f"{r['params']:,}", label, f"{x['step_ms']:.2f}", ratio("step_ratio"),
                             f"{x['full_ms']:.2f}", ratio("full_ratio"), ratio("full_mean_ratio"),
                             f"{x['first_2_steps_ms']:.0f}", f"{x['state_mb']:.1f}"])
    return _markdown("model | params: | optimizer | step ms: | step / Adam: | full step ms (median): | full / Adam "
                     "(median): | full / Adam (mean, incl. encoder runs): | first 2 steps ms: | state MB:", rows)


# ----------------------------------------------------------------------------------------------- loops
def _loop_model(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """A loop model with its fixed batches (8 of them, cycled) and its optimizer front end."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "resnet18_32x32_b32":
        import torchvision

        return (torchvision.models.resnet18(num_classes=10), torch.randn(8, 32, 3, 32, 32, generator=g),
                torch.randint(0, 10, (8, 32), generator=g), "for_module")
    data = load_embedded("mnist5k")
    idx = torch.randint(0, data.num_train, (8, 128), generator=g)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 10))
    return mlp, data.x_train[idx], data.y_train[idx], "parameters"


def _loop_row(name: str, cfg: StepCostConfig) -> list[dict]:
    """One model's loops: Adam, NGO with every checkpoint of ``cfg.ckpts`` and every peer of ``cfg.peers``,
    interleaved; a row per checkpoint and peer."""
    model, x, y, how = _loop_model(name)
    loss_fn = nn.CrossEntropyLoss()
    load_before, date = os.getloadavg()[0], _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="minutes")
    runs = {}
    ngos = [*cfg.ckpts, *(f"{c}@{d}" for c in cfg.ckpts for d in cfg.orthogonal_dtypes)]
    for label in ("adam", *ngos, *(f"peer:{p}" for p in cfg.peers)):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        if label == "adam":
            opt = torch.optim.Adam(m.parameters(), lr=1e-3, foreach=True)
        elif label == "peer:muon":
            from benchmarks.suite.peers import MuonAdam

            opt = MuonAdam(m.parameters(), lr=1e-3)
        else:
            ckpt, _, dtype = label.partition("@")
            kw = {"orthogonal_dtype": ORTHOGONAL_DTYPE_NAMES[dtype]} if dtype else {}
            opt = (NeuralGraphOptimizer.for_module(m, ckpt, **kw) if how == "for_module"
                   else NeuralGraphOptimizer(m.parameters(), ckpt, **kw))
        runs[label] = {"model": m, "opt": opt, "build_s": time.perf_counter() - t0, "loop_s": 0.0, "losses": []}
    for start in range(0, cfg.loop_steps, cfg.chunk):
        for r in runs.values():
            m, opt = r["model"], r["opt"]
            t0 = time.perf_counter()
            for i in range(start, min(start + cfg.chunk, cfg.loop_steps)):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(m(x[i % len(x)]), y[i % len(y)])
                loss.backward()
                opt.step()
                r["losses"].append(loss.item())
            r["loop_s"] += time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    adam = runs.pop("adam")
    rows = []
    for ckpt, r in runs.items():
        row = {"model": name, "ckpt": ckpt, "params": sum(p.numel() for p in model.parameters()), "front_end": how,
               "steps": cfg.loop_steps, "date": date, "load_average_1min": [load_before, load_after]}
        if not ckpt.startswith("peer:"):  # the timed optimizer sits under "ngo" (a peer's too: the row says which)
            spec = r["opt"].graph_spec(0)
            row["graph"] = {"nodes": spec.num_nodes, "edges": spec.num_edges, "free_params": len(spec.free_params)}
        for label, rr in (("adam", adam), ("ngo", r)):
            row[label] = {"loop_s": rr["loop_s"], "build_s": rr["build_s"], "ms_per_step": rr["loop_s"] / cfg.loop_steps * 1e3,
                          "final_loss": statistics.fmean(rr["losses"][-10:])}
        row["ratio"] = (row["ngo"]["loop_s"] + row["ngo"]["build_s"]) / row["adam"]["loop_s"]
        rows.append(row)
        print(f"{name} [{ckpt}]: adam {row['adam']['loop_s']:.1f}s, ngo {row['ngo']['loop_s']:.1f}s "
              f"(+{row['ngo']['build_s']:.2f}s build) -> {row['ratio']:.2f}x (load {load_before:.2f}-{load_after:.2f})",
              file=sys.stderr, flush=True)
    return rows


def run_loops(cfg: StepCostConfig, out: Path) -> dict:
    """Whole training loops, NGO (default options, each checkpoint) against Adam; returns the result (with the
    rows of ``out`` it did not measure when ``cfg.merge``)."""
    rows = [row for name in (cfg.models or LOOP_MODELS) for row in _loop_row(name, cfg)]
    if cfg.merge and out.exists():
        done = {(r["model"], r["ckpt"]) for r in rows}
        old = [r for r in json.loads(out.read_text()).get("rows", [])  # rows of this format only (with a ckpt)
               if "ckpt" in r and r.get("model") in LOOP_MODELS and (r["model"], r["ckpt"]) not in done]
        rows = sorted(old + rows, key=lambda r: (LOOP_MODELS.index(r["model"]), r["ckpt"]))
    return {"benchmark": "step_cost_loops", "torch": torch.__version__, "machine": _machine(), "chunk": cfg.chunk,
            "rows": rows}


def loops_table(result: dict) -> str:
    """Markdown table of a :func:`run_loops` result."""
    rows = []
    for r in result["rows"]:
        g, peer = r.get("graph"), r["ckpt"].startswith("peer:")
        t = None if peer else TARGETS.get(r["model"])
        rows.append([r["model"], r["ckpt"], f"{r['params']:,}",
                     "-" if g is None else f"{g['nodes']:,} / {g['edges']:,} / {g['free_params']}", str(r["steps"]), r["date"],
                     "-".join(f"{v:.1f}" for v in r["load_average_1min"]), f"{r['adam']['loop_s']:.1f}",
                     f"{r['ngo']['loop_s']:.1f} (+{r['ngo']['build_s']:.2f})", f"{r['ratio']:.2f}x",
                     "" if t is None else f"<= {t:.0f}x: {'met' if r['ratio'] <= t else 'NOT met'}"])
    return _markdown("model | checkpoint (or peer) | params: | graph (nodes / edges / free params) | steps: | "
                     "date (UTC) | load avg | Adam loop s: | its loop s (+ build): | its loop / Adam: | target", rows)


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point: ``[--config FILE] [key=value ...]``; prints the table, writes and returns the
    result document."""
    cfg = _cfg.parse_command(StepCostConfig, argv, (__doc__ or "").split("\n")[0])
    _cfg.set_threads(cfg.threads)
    out = Path(cfg.out or f"benchmarks/results/step_cost{'_loops' if cfg.loops else ''}.json")
    result = run_loops(cfg, out) if cfg.loops else run_steps(cfg)
    print((loops_table if cfg.loops else table)(result))
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
