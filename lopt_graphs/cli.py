"""Console scripts: each runs its command's ``main()`` and exits with status 0 when it returns.

A command's ``main(argv)`` returns its result (a document, a trainer) to Python callers. The wrapper pip writes
for a console script calls ``sys.exit(main())``, and ``sys.exit`` of an object that is not an int or ``None``
prints it to stderr and exits with status 1, so every command that returns its result failed in a shell
(``lopt-evaluate ... && next`` never ran ``next``). ``setup.cfg``'s entry points name the functions here instead,
which drop the result: ``lopt-evaluate = lopt_graphs.cli:lopt_evaluate``.
"""

from __future__ import annotations

import importlib
from typing import Callable

#: Console script name -> the ``module:function`` it runs (``setup.cfg`` declares ``lopt_graphs.cli:<name>``
#: with ``-`` as ``_``).
COMMANDS: dict[str, str] = {
    "lopt-meta-train": "meta_train.run:main",
    "lopt-evaluate": "meta_train.evaluate:main",
    "lopt-derive": "meta_train.derive:main",
    "lopt-calibrate": "meta_train.calibrate:main",
    "lopt-vs-adam": "benchmarks.vs_adam:main",
    "lopt-throughput": "benchmarks.meta_train_throughput:main",
    "lopt-step-cost": "benchmarks.step_cost:main",
    "lopt-step-saturation": "benchmarks.step_saturation:main",
    "lopt-step-scale": "benchmarks.step_scale:main",
    "lopt-meta-progress": "benchmarks.meta_progress:main",
    "lopt-hf-bert": "benchmarks.hf_bert:main",
    "lopt-graph-cost": "benchmarks.graph_cost:main",
    "lopt-suite-compare": "benchmarks.suite_compare:main",
    "lopt-headroom": "benchmarks.headroom:main",
    "lopt-lr-sweep": "benchmarks.lr_sweep:main",
    "lopt-recurrent-lm": "benchmarks.recurrent_lm:main",
    "lopt-es-snr": "benchmarks.es_snr:main",
}


def target(name: str) -> Callable[..., object]:
    """The ``main`` function console script ``name`` runs (imported on call: a command's imports stay its own).

    Raises:
        KeyError: ``name`` is not in :data:`COMMANDS`.
    """
    if name not in COMMANDS:
        raise KeyError(f"Unknown command {name!r}; expected one of {sorted(COMMANDS)}")
    module, func = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), func)


def _entry(name: str) -> Callable[[], None]:
    def entry() -> None:
        target(name)()  # the command line comes from sys.argv; the result is for Python callers only

    entry.__name__ = entry.__qualname__ = name.replace("-", "_")
    entry.__doc__ = f"Console script ``{name}``: runs ``{COMMANDS[name]}`` and returns ``None`` (exit status 0)."
    return entry


globals().update({name.replace("-", "_"): _entry(name) for name in COMMANDS})
