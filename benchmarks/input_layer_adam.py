"""Validation of one variant of the orthogonalized direction, not shipped: the input layer on Adam's direction.

Muon's recipes keep a network's input layer on Adam. This runs ``lopt-meta-progress`` (same keys) with the
learned update's orthogonalized set (:func:`lopt_graphs.optim.functional.orthogonal_params`) less the weights
that read the graph's input neurons (neuron set 0), so it scores that variant of any orthogonal checkpoint::

    python -m benchmarks.input_layer_adam ckpts=default validate_seeds=4 family=mixture_v3 told=true out=F.json

(thirteenth session: ``benchmarks/results/v2_calibrated4_es60_fanin_ortho_conv/input_layer_adam_*.json``).
"""

from __future__ import annotations

from collections.abc import Sequence

from lopt_graphs.optim import functional as _functional

_orthogonal_params = _functional.orthogonal_params


def without_input_layer(cfg, spec, params) -> set[int]:
    """:func:`~lopt_graphs.optim.functional.orthogonal_params` less the weights whose sources are input neurons."""
    return {i for i in _orthogonal_params(cfg, spec, params) if int(spec.node_layer[spec.params[i].src_start]) != 0}


def main(argv: Sequence[str] | None = None) -> dict:
    """``lopt-meta-progress`` with :func:`without_input_layer` in place (for this process only)."""
    from benchmarks import meta_progress

    _functional.orthogonal_params = without_input_layer
    try:
        return meta_progress.main(list(argv) if argv is not None else None)
    finally:
        _functional.orthogonal_params = _orthogonal_params


if __name__ == "__main__":
    main()
