"""The graph ablation: recipe v2 with the encoder's neuron context (``learned=v2``) against the same recipe and
budget without it (``learned=v2_ff``, a per-parameter learned optimizer: the paper's "FF" baseline).

Command::

    python benchmarks/ablation_ff.py [--config FILE] [graph=runs/v2] [ff=runs/v2_ff] [seeds=0,1,2]
                                     [steps=300] [threads=1] [out=benchmarks/results/ablation_ff]

Reads both runs' ``metrics.jsonl`` (validation score every ``validate_every`` outer steps, the same scorer for
both: mean over the validation tasks of ``log((L + 0.01) / (L_adam + 0.01))``, lower is better) and compares
them at equal outer steps (the budget); then scores each run's ``best.pt`` (selected on validation) with
``meta_train.evaluate`` on the in-distribution and held-out evaluation tasks (tuned Adam's lr chosen on a
seed that is not scored). Prints markdown tables, writes ``results.json``, ``results.md`` and
``validation.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lopt_graphs import config as _cfg
from lopt_graphs.plotting import new_figure, save_figure
from meta_train.evaluate import ScoredRunKeys


def validation_curve(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(int(r["step"]), float(r["val_score"])) for r in rows if "val_score" in r]


@dataclass(frozen=True)
class AblationConfig(ScoredRunKeys):
    """Keys of ``benchmarks/ablation_ff.py``: the two run directories, the output, and the evaluation's
    :class:`~meta_train.evaluate.ScoredRunKeys` (3 seeds by default)."""

    graph: str = "runs/v2"
    ff: str = "runs/v2_ff"
    seeds: tuple[int, ...] = (0, 1, 2)
    out: str = "benchmarks/results/ablation_ff"


def main(argv: list[str] | None = None) -> dict:
    a = _cfg.parse_command(AblationConfig, argv, (__doc__ or "").split("\n")[0])
    _cfg.set_threads(a.threads)
    from meta_train.evaluate import evaluate_checkpoint

    runs = {"graph (v2)": Path(a.graph), "FF (v2_ff)": Path(a.ff)}
    curves = {k: validation_curve(p) for k, p in runs.items()}
    common = sorted(set.intersection(*(set(s for s, _ in c) for c in curves.values())))
    budget = common[-1] if common else 0
    lines = [f"Validation score at equal outer steps (lower is better; 0 = tuned Adam), budget {budget} outer steps:",
             "", "| outer step | " + " | ".join(runs) + " |", "|---:|" + "---:|" * len(runs)]
    for s in common:
        lines.append(f"| {s} | " + " | ".join(f"{dict(c)[s]:.3f}" for c in curves.values()) + " |")
    best = {k: min((v for s, v in c if s <= budget), default=float("nan")) for k, c in curves.items()}
    lines += ["", "Best validation score within the budget: " + ", ".join(f"{k} {v:.3f}" for k, v in best.items())]
    seeds = a.seeds
    evals = {}
    for k, p in runs.items():
        res = evaluate_checkpoint(str(p / "best.pt"), steps=a.steps, seeds=seeds)
        evals[k] = res["summary"]
    lines += ["", "Evaluation of each run's best.pt (`meta_train.evaluate`, seeds " + ",".join(map(str, seeds)) + "):", "",
              "| run | median fraction of tuned Adam's steps (in-dist) | held-out runs at or below tuned Adam |",
              "|---|---:|---:|"]
    for k, sm in evals.items():
        frac = sm["median_fraction_of_steps_to_tuned_adam_final_in_dist"]
        lines.append(f"| {k} | {frac:.2f} | {sm['held_out_beats_tuned_adam']}/{sm['held_out_tasks']} |")
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"runs": {k: str(p) for k, p in runs.items()}, "validation": curves, "budget": budget,
              "best_validation_within_budget": best, "evaluation": evals, "seeds": list(seeds), "steps": a.steps}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(text + "\n")
    fig, ax = new_figure(figsize=(6, 3.5))
    for k, c in curves.items():
        ax.plot([s for s, _ in c], [v for _, v in c], marker="o", label=k)
    ax.axhline(0.0, color="gray", lw=0.8, ls="--", label="tuned Adam")
    ax.set_xlabel("outer step")
    ax.set_ylabel("validation score (log ratio)")
    ax.legend()
    save_figure(fig, out / "validation.png", dpi=100)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
