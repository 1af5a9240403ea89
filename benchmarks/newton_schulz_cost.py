"""Cost of the orthogonalized direction's Newton-Schulz iterations per weight matrix, against one Adam step.

Commands::

    python -m benchmarks.newton_schulz_cost [shapes=256x784,256x256] [reps=50] [threads=1] [out=F.json]

For each matrix shape, in the same process on CPU, as the median of ``reps`` timed repetitions after 3 untimed
ones: ``float32``, :func:`lopt_graphs.optim.functional.orthogonalize` as the learned update runs it; ``bfloat16``,
the same iterations in bfloat16 (how ``torch.optim.Muon`` runs them); ``muon_step``, one whole
``torch.optim.Muon`` step on a parameter of that shape; ``adam_step``, one ``torch.optim.Adam(foreach=True)`` step
on it (the reference: every time also as a ratio to it). ``bf16_rel_diff`` is ``||O_bf16 - O_f32|| / ||O_f32||``
on a random matrix: how far the cheaper precision moves the direction. Prints a markdown table, writes JSON.

bfloat16 matrix products are fast only on CPUs with AMX tiles; ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` (or
``AVX512_CORE``, ``AVX2``) makes oneDNN use an older instruction set, to see what a CPU without them pays (recorded
in the JSON as ``onednn_max_cpu_isa``; the optimizer's ``orthogonal_dtype="auto"`` reads the hardware, not this).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lopt_graphs import config as _cfg
from lopt_graphs.io import atomic_write_text
from lopt_graphs.optim.functional import auto_orthogonal_dtype, orthogonalize


@dataclass(frozen=True)
class NewtonSchulzCostConfig:
    """Keys of ``python -m benchmarks.newton_schulz_cost``.

    Attributes:
        shapes: matrix shapes ``ROWSxCOLS``.
        reps: timed repetitions per measurement (the median is reported).
        threads: torch intra-op threads (``0`` leaves torch's default).
        out: the JSON output.
    """

    shapes: tuple[str, ...] = ("256x784", "256x256")
    reps: int = 50
    threads: int = 1
    out: str = "benchmarks/results/newton_schulz_cost.json"

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        for s in self.shapes:
            parts = s.split("x")
            if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
                _cfg.bad_value("shapes", self.shapes, "ROWSxCOLS pairs of positive integers, e.g. 256x784")
        if self.reps < 1:
            _cfg.bad_value("reps", self.reps, "an integer >= 1")
        if self.threads < 0:
            _cfg.bad_value("threads", self.threads, "an integer >= 0 (0: torch's default)")


def _median_ms(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _step_timer(opt_cls: Callable[..., torch.optim.Optimizer], shape: tuple[int, int], **kw: Any) -> Callable[[], None]:
    p = torch.nn.Parameter(torch.randn(*shape))
    p.grad = torch.randn(*shape)
    opt = opt_cls([p], **kw)
    return opt.step


def measure(shape: tuple[int, int], reps: int) -> dict[str, Any]:
    """One shape's row (times in ms, ratios to the Adam step)."""
    m = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    o32 = orthogonalize(m)
    ms = {"float32": _median_ms(lambda: orthogonalize(m), reps),
          "bfloat16": _median_ms(lambda: orthogonalize(m, dtype=torch.bfloat16), reps),
          "muon_step": _median_ms(_step_timer(torch.optim.Muon, shape, lr=1e-3, weight_decay=0.0,
                                              adjust_lr_fn="match_rms_adamw"), reps),
          "adam_step": _median_ms(_step_timer(torch.optim.Adam, shape, lr=1e-3, foreach=True), reps)}
    diff = float((orthogonalize(m, dtype=torch.bfloat16) - o32).norm() / o32.norm())
    return {"shape": list(shape), "ms": ms, "ratio_to_adam": {k: v / ms["adam_step"] for k, v in ms.items()},
            "bf16_rel_diff": diff}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| matrix | float32 NS ms (x Adam step) | bfloat16 NS ms (x Adam) | torch.optim.Muon step ms (x Adam) | "
            "Adam step ms | bfloat16 moves the direction by |")
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms, x = r["ms"], r["ratio_to_adam"]
        lines.append(f"| {r['shape'][0]}x{r['shape'][1]} | {ms['float32']:.2f} ({x['float32']:.0f}x) | "
                     f"{ms['bfloat16']:.2f} ({x['bfloat16']:.0f}x) | {ms['muon_step']:.2f} ({x['muon_step']:.0f}x) | "
                     f"{ms['adam_step']:.3f} | {100 * r['bf16_rel_diff']:.1f}% |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: ``[--config FILE] [key=value ...]``; prints the table, writes and returns the
    result."""
    c = _cfg.parse_command(NewtonSchulzCostConfig, argv, (__doc__ or "").split("\n")[0])
    _cfg.set_threads(c.threads)
    rows = [measure(tuple(int(v) for v in s.split("x")), c.reps) for s in c.shapes]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    doc = {"benchmark": "newton_schulz_cost", "torch": torch.__version__, "threads": torch.get_num_threads(),
           "reps": c.reps, "onednn_max_cpu_isa": isa, "auto_orthogonal_dtype": str(auto_orthogonal_dtype("cpu")),
           "rows": rows}
    print(f"ONEDNN_MAX_CPU_ISA={isa or '(unset: the best the CPU has)'}; NeuralGraphOptimizer's orthogonal_dtype='auto' "
          f"picks {doc['auto_orthogonal_dtype']} on this CPU")
    print(table(rows))
    atomic_write_text(Path(c.out), json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {c.out}")
    return doc


if __name__ == "__main__":
    main()
