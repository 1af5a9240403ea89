"""NeuralGraphOptimizer (NGO) against Adam, tuned Adam, Adam warmup+cosine and the tuning-free optimizers on PyPI.

Commands (from the repository root)::

    python benchmarks/vs_adam.py --config configs/benchmarks/quick.yaml    # < 3 min on 2 cores
    python benchmarks/vs_adam.py --config configs/benchmarks/default.yaml  # the README table (18 min, 11 min CPU)
    python benchmarks/vs_adam.py --config configs/benchmarks/default.yaml ckpt=PATH out=DIR   # another checkpoint
    python benchmarks/vs_adam.py ... data_root=~/data/torchvision    # + FashionMNIST / MNIST / CIFAR-10 tasks
    python benchmarks/vs_adam.py --report benchmarks/results/vs_adam/results.json   # re-render md + png only
    python benchmarks/vs_adam.py --merge A/results.json B/results.json out=DIR   # join runs split with only=

Every ``key=value`` after the options overrides a key of :class:`benchmarks.suite.VsAdamConfig` (unknown
keys are errors). The peers (Prodigy, D-Adaptation, schedule-free AdamW) are the ``bench`` extra:
``pip install -e ".[bench]"``; a missing one is skipped with a message.

What runs. For each task and each scored seed (``seeds``, default 0, 1, 2), every optimizer starts from the
same initial weights and sees the same minibatches, in the same process (``lopt_graphs.evaluation.train_run``):

* ``ngo``: ``NeuralGraphOptimizer.for_module(model, ckpt, lr=ngo_lr)`` (``total_steps=steps`` when the
  optimizer takes it); never tuned.
* ``adam``: Adam lr=1e-3. ``adam_tuned``: Adam with a tuned constant lr. ``adam_cosine_tuned``: Adam with a
  linear warmup over ``warmup_fraction`` of the steps, then cosine decay to 0, tuned lr.
* ``sf_adamw`` / ``sf_adamw_tuned``: ``schedulefree.AdamWScheduleFree`` at its default lr 2.5e-3 / tuned;
  trained in ``opt.train()`` mode, final loss and accuracy measured in ``opt.eval()`` mode.
* ``prodigy``: ``prodigyopt.Prodigy(lr=1.0)``. ``dadapt_adam``: ``dadaptation.DAdaptAdam(lr=1.0)``.
* optional: ``adamw_tuned``, ``sgd_tuned``, ``muon_tuned`` (``torch.optim.Muon`` on 2-D weights, Adam on the
  rest, one tuned lr: :class:`benchmarks.suite.peers.MuonAdam`), ``muon_cosine_tuned`` (the same with Adam
  warmup+cosine's schedule) (``optimizers=...``).

Fair tuning: a tuned optimizer runs its lr grid (``adam_lrs``, 1e-4 to 1e-1) on ``tune_seed`` (1000) only and
takes the lr of the lowest final full-training loss; that lr is then scored on the scored seeds.

Task groups: ``in_dist`` (meta-training's ``IN_DISTRIBUTION`` configs, ``steps`` = 300), ``ood`` (wider,
deeper, other activation / init scale / batch, ``HELD_OUT``), ``long`` (in-distribution configs at each
horizon of ``long_steps``: 1,000 and 3,000) and ``paper`` (torchvision data under ``data_root``; skipped and
recorded as skipped when absent).

Outputs in ``out``: ``results.md`` (also printed), ``results.json`` (summaries only: per optimizer the final
training loss and test accuracy per seed and mean ± std, the tuned lr and its grid on the tuning seed, time
per step; per task NGO's speed-up over tuned Adam), ``curves.json.gz`` (per-step minibatch losses per seed),
``curves.png`` and ``config.yaml`` (the resolved config). ``results.json["definitions"]`` defines each field.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.suite import VsAdamConfig, load, merge, report, run
from lopt_graphs import config as _cfg

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: ``[--config YAML] [key=value ...]``, ``--report RESULTS_JSON`` or ``--merge
    RESULTS_JSON ... out=DIR``; returns the result document."""
    ap = _cfg.command_parser(VsAdamConfig, (__doc__ or "").split("\n")[0])
    ap.add_argument("--report", default=None, metavar="RESULTS_JSON",
                    help="only re-render results.md (and curves.png) next to an existing results.json")
    ap.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                    help="join the results.json of runs split with only=... into the folder out=DIR")
    args = ap.parse_args(argv)
    if args.report:
        if args.config or args.overrides:
            ap.error("--report takes no config")
        return report(args.report)
    if args.merge:  # argparse's nargs="+" also swallows the key=value after the files
        args.overrides = [*args.overrides, *(a for a in args.merge if "=" in a)]
        args.merge = [a for a in args.merge if "=" not in a]
        outs = [o for o in args.overrides if o.startswith("out=")]
        if args.config or len(outs) != 1 or len(args.overrides) != 1:
            ap.error("--merge takes exactly one key, out=DIR (the merged folder), and no --config")
        return merge(args.merge, outs[0][len("out="):])
    cfg = load(args.config, args.overrides)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    return run(cfg, command=" ".join(["python benchmarks/vs_adam.py", *argv_list]))


if __name__ == "__main__":
    main()
