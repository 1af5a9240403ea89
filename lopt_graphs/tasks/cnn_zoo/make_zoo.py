"""Build (or load from the cache) the CNN zoo of a task config and print its summary.

Commands::

    python -m lopt_graphs.tasks.cnn_zoo.make_zoo --config configs/tasks/zoo_small.yaml
    python -m lopt_graphs.tasks.cnn_zoo.make_zoo --config configs/tasks/zoo_variant.yaml num_runs=200
    python -m lopt_graphs.tasks.cnn_zoo.make_zoo --config configs/tasks/zoo_quick.yaml --rebuild

The zoo is cached at ``{cache_dir}/{kind}_{dataset}_{hash}.pt`` (hash of the zoo version and the zoo keys of
the config), written atomically; a summary goes to ``{out_dir}/zoo_{name}/zoo_summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lopt_graphs.config import command_parser, save_resolved_config, set_threads
from lopt_graphs.io import atomic_write_text

from .config import ZooTaskConfig, load_task_config
from .zoo import Zoo, load_or_build_zoo


def main(argv: list[str] | None = None) -> Zoo:
    """Parse arguments, build or load the zoo, write its summary; returns the zoo."""
    ap = command_parser(ZooTaskConfig, "Train a zoo of small CNNs (cached on disk).")
    ap.add_argument("--rebuild", action="store_true", help="rebuild even if the zoo is cached")
    a = ap.parse_args(argv)
    cfg = load_task_config(a.config, a.overrides)
    set_threads(cfg.threads)
    zoo, path, cached = load_or_build_zoo(cfg, progress=True, rebuild=a.rebuild)
    summary = {"cache": str(path), "loaded_from_cache": cached, **zoo.summary(),
               "models_per_second": zoo.meta.get("models_per_second")}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, out / "zoo_config.yaml", header="Resolved CNN-zoo task config")
    atomic_write_text(out / "zoo_summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return zoo


if __name__ == "__main__":
    main()
