"""Cost of the neural-graph path compared with one Adam step, for MLPs and CNNs of ~3K to ~1M parameters.

Commands::

    lopt-graph-cost [quick=true] [out=benchmarks/results/graph_cost.json] [reps=7] [warmup=2] [threads=1]
    python -m benchmarks.graph_cost --help      # the keys and their defaults

For every model, in the same process and on CPU, it measures

(a) ``build``: building the :class:`~lopt_graphs.graph.GraphSpec` with ``graph_from_parameters``;
(b) ``fill``: placing per-parameter features (``F = 8`` per entry) on the graph with ``neural_graph``;
(c) ``encoder``: one forward pass of ``NeuralGraphEncoder`` (``gnn`` variant, default config with
    ``node_in = edge_in = 8``, ``edge_out = node_out = 2``) under ``torch.no_grad()``;
(d) ``adam``: one ``torch.optim.Adam(foreach=True)`` step on the model's parameters with random gradients;

each as the median of ``reps`` repetitions (``time.perf_counter``) after ``warmup`` untimed ones (the
minimum and every sample are kept in the JSON too: on a shared machine the minimum is the least disturbed
number). It prints a markdown table and writes every number, the torch version, machine info and the date
as JSON. ``quick=true`` runs only the two smallest models with fewer repetitions (a smoke test).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lopt_graphs import config as _cfg
from lopt_graphs.graph import graph_from_parameters, neural_graph
from lopt_graphs.nn import EncoderConfig, NeuralGraphEncoder

FEATURES = 8
DEFAULT_OUT = "benchmarks/results/graph_cost.json"


@dataclass(frozen=True)
class ModelDef:
    name: str
    family: str
    make: Callable[[], nn.Module]


def mlp(sizes: Sequence[int]) -> nn.Module:
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            mods.append(nn.ReLU())
        mods.append(nn.Linear(a, b))
    return nn.Sequential(*mods)


def cnn(channels: Sequence[int], classes: int = 10) -> nn.Module:
    """28x28x1 input: conv3x3 -> pool -> conv3x3 -> pool -> conv3x3 -> flatten (7x7) -> linear."""
    c1, c2, c3 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(c3 * 7 * 7, classes),
    )


def _mlp_def(sizes: Sequence[int]) -> ModelDef:
    return ModelDef("mlp " + "-".join(map(str, sizes)), "mlp", lambda: mlp(sizes))


def _cnn_def(channels: Sequence[int]) -> ModelDef:
    return ModelDef("cnn " + "-".join(map(str, channels)), "cnn", lambda: cnn(channels))


MODELS: list[ModelDef] = [
    _mlp_def([64, 32, 32, 10]),  # 3.5K
    _mlp_def([784, 128, 10]),  # 102K
    _mlp_def([784, 256, 256, 10]),  # 269K
    _mlp_def([784, 1024, 256, 10]),  # 1.07M
    _cnn_def([4, 4, 6]),  # 3.4K
    _cnn_def([8, 24, 40]),  # 30K
    _cnn_def([48, 96, 192]),  # 302K
    _cnn_def([96, 192, 384]),  # 1.02M
]


def median_ms(fn: Callable[[], Any], reps: int, warmup: int) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` in milliseconds, and every timed sample."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples), samples


def measure(model_def: ModelDef, reps: int, warmup: int, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = model_def.make()
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)

    build_ms, build_s = median_ms(lambda: graph_from_parameters(params), reps, warmup)
    spec = graph_from_parameters(params)

    feats = [torch.randn(*p.shape, FEATURES) for p in params]
    fill_ms, fill_s = median_ms(lambda: neural_graph(spec, feats), reps, warmup)
    graph = neural_graph(spec, feats)

    enc = NeuralGraphEncoder(EncoderConfig(variant="gnn", node_in=FEATURES, edge_in=FEATURES, edge_out=2,
                                           node_out=2)).eval()

    def encode() -> None:
        with torch.no_grad():
            enc(graph)

    enc_ms, enc_s = median_ms(encode, reps, warmup)

    opt = torch.optim.Adam(params, lr=1e-3, foreach=True)
    for p in params:
        p.grad = torch.randn_like(p)
    adam_ms, adam_s = median_ms(opt.step, reps, max(warmup, 1))  # the first step allocates the state

    return {
        "model": model_def.name, "family": model_def.family, "params": n_params, "nodes": spec.num_nodes,
        "edges": spec.num_edges, "kmax": spec.kmax, "edge_entries": int(spec.edge_size.sum()),
        "build_ms": build_ms, "fill_ms": fill_ms, "encoder_ms": enc_ms, "adam_ms": adam_ms,
        "build_over_adam": build_ms / adam_ms, "fill_over_adam": fill_ms / adam_ms,
        "encoder_over_adam": enc_ms / adam_ms,
        "min_ms": {"build": min(build_s), "fill": min(fill_s), "encoder": min(enc_s), "adam": min(adam_s)},
        "samples_ms": {"build": build_s, "fill": fill_s, "encoder": enc_s, "adam": adam_s},
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | params | nodes | edges | build ms | fill ms | encoder ms | adam step ms | build/adam "
            "| encoder/adam |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['nodes']:,} | {r['edges']:,} | {r['build_ms']:.2f} "
                     f"| {r['fill_ms']:.2f} | {r['encoder_ms']:.1f} | {r['adam_ms']:.3f} "
                     f"| {r['build_over_adam']:.3g} | {r['encoder_over_adam']:.3g} |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {"processor": platform.processor(), "machine": platform.machine(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch_num_threads": torch.get_num_threads()}


@dataclass(frozen=True)
class GraphCostConfig:
    """Keys of ``lopt-graph-cost``: ``reps`` ``0`` means 7 (3 with ``quick``), ``warmup`` ``-1`` means 2 (1 with
    ``quick``)."""

    quick: bool = False
    out: str = DEFAULT_OUT
    reps: int = 0
    warmup: int = -1
    threads: int = 1

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        if self.reps < 0 or self.warmup < -1 or self.threads < 0:
            _cfg.bad_value("reps/warmup/threads", (self.reps, self.warmup, self.threads),
                           "reps >= 0, warmup >= -1, threads >= 0")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON document it writes."""
    args = _cfg.parse_command(GraphCostConfig, argv, (__doc__ or "").split("\n\n")[0])
    reps = args.reps or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup >= 0 else (1 if args.quick else 2)
    _cfg.set_threads(args.threads)
    models = MODELS
    if args.quick:
        sizes = {d.name: sum(p.numel() for p in d.make().parameters()) for d in MODELS}
        smallest = sorted(sizes, key=sizes.__getitem__)[:2]
        models = [d for d in MODELS if d.name in smallest]
    rows = []
    for d in models:
        rows.append(measure(d, reps, warmup))
        print(f"  measured {d.name}", file=sys.stderr, flush=True)
    doc = {
        "benchmark": "graph_cost",
        "command": "lopt-graph-cost" + (" quick=true" if args.quick else "") + f" out={args.out}",
        "quick": args.quick, "reps": reps, "warmup": warmup, "features": FEATURES,
        "encoder_config": EncoderConfig(variant="gnn", node_in=FEATURES, edge_in=FEATURES, edge_out=2,
                                        node_out=2).to_dict(),
        "torch_version": torch.__version__, "machine": machine_info(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": rows,
    }
    table = markdown_table(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return doc


if __name__ == "__main__":
    main()
