"""Wall time of ``NeuralGraphOptimizer.step()`` and of a full training step against ``torch.optim.Adam``.

Command::

    python benchmarks/step_cost.py [--quick] [--steps N] [--encoder-every K] [--no-compile]
                                   [--out benchmarks/results/step_cost.json]
    python benchmarks/step_cost.py --loops [--loop-steps 400] [--out benchmarks/results/step_cost_loops.json]

``--loops`` measures the two cost targets of issue 15 instead: the wall time of a whole ``--loop-steps``-step
training loop (forward + backward + step, first steps and every encoder run included) of ResNet-18
(``torchvision.models.resnet18(num_classes=10)``, 32x32 inputs, batch 32, ``NeuralGraphOptimizer.for_module``
with default options) and of the 269K-weight 784-256-256-10 MLP (MNIST-5k, batch 128,
``NeuralGraphOptimizer(model.parameters())`` with default options), each against ``torch.optim.Adam`` on an
identical copy in this process, in interleaved chunks of 25 steps (so drifts of a shared machine hit both).
One torch thread.

For each model (an MLP on 8x8 digits, a 784-256-256-10 MLP and a small CNN on 28x28 MNIST-5k images; batch
128) both optimizers run in this process on identical copies of the model and data. Reported, as medians
over ``--steps`` timed steps after warm-up: ``opt.step()`` alone, the full training step (forward + backward
+ step), their ratios to Adam (``foreach=True``), the mean full step (the encoder runs only every
``encoder_every`` steps, so the mean includes its amortized cost), the first two steps apart (where
``torch.compile`` compiles) and the memory of the optimizer state. NGO runs eager and with ``compile=True``. Prints a markdown
table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lopt_graphs import NeuralGraphOptimizer
from lopt_graphs.data import load_embedded


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


def _time_run(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, warmup: int,
              steps: int, raw: bool = False) -> dict:
    loss_fn = nn.CrossEntropyLoss()
    full, step = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[i % len(x)]), y[i % len(y)]).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if i >= warmup:
            full.append(t2 - t0)
            step.append(t2 - t1)
    if raw:
        return {"full": full, "step": step}
    if not steps:
        return {}
    return {"step_ms": statistics.median(step) * 1e3, "full_ms": statistics.median(full) * 1e3,
            "full_mean_ms": statistics.fmean(full) * 1e3, "step_mean_ms": statistics.fmean(step) * 1e3}


def _state_mb(opt: torch.optim.Optimizer) -> float:
    """Memory held in optimizer state tensors (moments, cached node terms)."""
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if isinstance(v, torch.Tensor)) / 2**20


def run(quick: bool = False, steps: int = 100, encoder_every: int | None = None, compile: bool = True,
        out: str | os.PathLike = "benchmarks/results/step_cost.json") -> dict:
    """Run the benchmark; returns (and writes) the result dict."""
    batch = 128
    warmup = 5 if quick else 20
    steps = 10 if quick else steps
    rows = []
    models = _models()
    if quick:
        models = {k: v for k, v in models.items() if k.startswith("mlp_digits")}
    for name, (model, data_name) in models.items():
        data = load_embedded(data_name)
        g = torch.Generator().manual_seed(0)
        batches = 8
        idx = torch.randint(0, data.num_train, (batches, batch), generator=g)
        x = data.x_train[idx]
        y = data.y_train[idx]
        n_params = sum(p.numel() for p in model.parameters())
        res = {"model": name, "data": data_name, "params": n_params, "batch": batch}
        makers = [("adam", lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, foreach=True)),
                  ("ngo", lambda m: NeuralGraphOptimizer(m.parameters(), encoder_every=encoder_every))]
        if compile:
            makers.append(("ngo_compiled", lambda m: NeuralGraphOptimizer(m.parameters(), encoder_every=encoder_every,
                                                                          compile=True)))
        runs = {}
        for label, make in makers:
            m = copy.deepcopy(model)
            opt = make(m)
            t0 = time.perf_counter()
            _time_run(m, opt, x, y, 2, 0)  # first steps: torch.compile compiles here (reported apart)
            first = (time.perf_counter() - t0) * 1e3
            _time_run(m, opt, x, y, warmup, 0)
            runs[label] = (m, opt, first)
            if label == "ngo":
                res["encoder_every"] = opt.param_groups[0]["encoder_every"] or opt.learned.cfg.encoder_every
        # Interleave rounds so that drifts of the machine's speed hit every optimizer alike.
        samples: dict[str, list[dict[str, float]]] = {label: [] for label, _ in makers}
        rounds = 1 if quick else 4
        for _ in range(rounds):
            for label, (m, opt, _) in runs.items():
                samples[label].append(_time_run(m, opt, x, y, 0, max(steps // rounds, 1), raw=True))
        for label, (m, opt, first) in runs.items():
            full = [v for r in samples[label] for v in r["full"]]
            step = [v for r in samples[label] for v in r["step"]]
            res[label] = {"step_ms": statistics.median(step) * 1e3, "full_ms": statistics.median(full) * 1e3,
                          "full_mean_ms": statistics.fmean(full) * 1e3, "step_mean_ms": statistics.fmean(step) * 1e3,
                          "first_2_steps_ms": first, "state_mb": _state_mb(opt)}
        for label, _ in makers[1:]:
            r = res[label]
            r["step_ratio"] = r["step_ms"] / res["adam"]["step_ms"]
            r["full_ratio"] = r["full_ms"] / res["adam"]["full_ms"]
            r["full_mean_ratio"] = r["full_mean_ms"] / res["adam"]["full_mean_ms"]
        rows.append(res)
    result = {
        "benchmark": "step_cost", "date": _dt.date.today().isoformat(), "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "steps": steps, "warmup": warmup, "rows": rows,
    }
    print(table(result))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


def table(result: dict) -> str:
    """Markdown table of a result dict."""
    lines = ["| model | params | optimizer | step ms | step / Adam | full step ms (median) | full / Adam (median) | "
             "full / Adam (mean, incl. encoder runs) | first 2 steps ms | state MB |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        for label in ("adam", "ngo", "ngo_compiled"):
            if label not in r:
                continue
            x = r[label]
            ratio = lambda k: "1.00x" if label == "adam" else f"{x[k]:.2f}x"  # noqa: E731
            lines.append(f"| {r['model']} | {r['params']:,} | {label} | {x['step_ms']:.2f} | {ratio('step_ratio')} | "
                         f"{x['full_ms']:.2f} | {ratio('full_ratio')} | {ratio('full_mean_ratio')} | "
                         f"{x['first_2_steps_ms']:.0f} | {x['state_mb']:.1f} |")
    return "\n".join(lines)


def _loop_models() -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor, str]]:
    """The two models of the loop targets, with fixed batches (8 of them, cycled)."""
    import torchvision

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10)
    xr = torch.randn(8, 32, 3, 32, 32, generator=g)
    yr = torch.randint(0, 10, (8, 32), generator=g)
    data = load_embedded("mnist5k")
    idx = torch.randint(0, data.num_train, (8, 128), generator=g)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 10))
    return {"resnet18_32x32_b32": (resnet, xr, yr, "for_module"),
            "mlp_784-256-256-10": (mlp, data.x_train[idx], data.y_train[idx], "parameters")}


def run_loops(steps: int = 400, chunk: int = 25, out: str | os.PathLike = "benchmarks/results/step_cost_loops.json",
              models: list[str] | None = None) -> dict:
    """Whole training loops, NGO (default options) against Adam; returns (and writes) the result dict."""
    torch.set_num_threads(1)
    rows = []
    for name, (model, x, y, how) in _loop_models().items():
        if models and name not in models:
            continue
        loss_fn = nn.CrossEntropyLoss()
        runs = {}
        for label in ("adam", "ngo"):
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            if label == "adam":
                opt = torch.optim.Adam(m.parameters(), lr=1e-3, foreach=True)
            elif how == "for_module":
                opt = NeuralGraphOptimizer.for_module(m)
            else:
                opt = NeuralGraphOptimizer(m.parameters())
            runs[label] = {"model": m, "opt": opt, "build_s": time.perf_counter() - t0, "loop_s": 0.0, "done": 0,
                           "losses": []}
        while any(r["done"] < steps for r in runs.values()):
            for r in runs.values():
                m, opt = r["model"], r["opt"]
                n = min(chunk, steps - r["done"])
                t0 = time.perf_counter()
                for i in range(r["done"], r["done"] + n):
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(m(x[i % len(x)]), y[i % len(y)])
                    loss.backward()
                    opt.step()
                    r["losses"].append(loss.item())
                r["loop_s"] += time.perf_counter() - t0
                r["done"] += n
        spec = runs["ngo"]["opt"].graph_spec(0)
        res = {"model": name, "params": sum(p.numel() for p in model.parameters()), "front_end": how,
               "graph": {"nodes": spec.num_nodes, "edges": spec.num_edges, "free_params": len(spec.free_params)},
               "steps": steps}
        for label, r in runs.items():
            res[label] = {"loop_s": r["loop_s"], "build_s": r["build_s"], "ms_per_step": r["loop_s"] / steps * 1e3,
                          "final_loss": statistics.fmean(r["losses"][-10:])}
        res["ratio"] = (res["ngo"]["loop_s"] + res["ngo"]["build_s"]) / res["adam"]["loop_s"]
        rows.append(res)
        print(f"{name}: adam {res['adam']['loop_s']:.1f}s, ngo {res['ngo']['loop_s']:.1f}s "
              f"(+{res['ngo']['build_s']:.2f}s build) -> {res['ratio']:.2f}x", flush=True)
    result = {"benchmark": "step_cost_loops", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="minutes"),
              "torch": torch.__version__,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(),
                          "load_average_1min": os.getloadavg()[0]},
              "chunk": chunk, "rows": rows}
    print(loops_table(result))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


def loops_table(result: dict) -> str:
    """Markdown table of a ``run_loops`` result."""
    lines = ["| model | params | front end | graph (nodes / edges / free params) | steps | Adam loop s | NGO loop s "
             "(+ build) | NGO / Adam | target |", "|---|---:|---|---|---:|---:|---:|---:|---|"]
    targets = {"resnet18_32x32_b32": 3.0, "mlp_784-256-256-10": 2.0}
    for r in result["rows"]:
        g, t = r["graph"], targets.get(r["model"])
        ok = "" if t is None else f"<= {t:.0f}x: {'met' if r['ratio'] <= t else 'NOT met'}"
        lines.append(f"| {r['model']} | {r['params']:,} | {r['front_end']} | {g['nodes']:,} / {g['edges']:,} / "
                     f"{g['free_params']} | {r['steps']} | {r['adam']['loop_s']:.1f} | {r['ngo']['loop_s']:.1f} "
                     f"(+{r['ngo']['build_s']:.2f}) | {r['ratio']:.2f}x | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smallest model, few steps (smoke test)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--encoder-every", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--out", default=None)
    ap.add_argument("--loops", action="store_true", help="the 400-step loop targets (ResNet-18, 269K MLP)")
    ap.add_argument("--loop-steps", type=int, default=400)
    ap.add_argument("--models", nargs="*", default=None, help="with --loops: only these rows")
    a = ap.parse_args(argv)
    if a.loops:
        return run_loops(steps=a.loop_steps, out=a.out or "benchmarks/results/step_cost_loops.json", models=a.models)
    a.out = a.out or "benchmarks/results/step_cost.json"
    return run(quick=a.quick, steps=a.steps, encoder_every=a.encoder_every, compile=not a.no_compile, out=a.out)


if __name__ == "__main__":
    main()
