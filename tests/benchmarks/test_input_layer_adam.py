"""``benchmarks/input_layer_adam.py``: the orthogonalized set less the input layer's weights."""

from __future__ import annotations

from torch import nn

from benchmarks.input_layer_adam import without_input_layer
from lopt_graphs.optim import load_learned_update
from lopt_graphs.optim.functional import orthogonal_params


def test_the_input_layer_leaves_the_orthogonalized_set_and_nothing_else_does():
    from lopt_graphs.graph import graph_from_module

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    params = list(model.parameters())
    spec = graph_from_module(model)
    cfg = load_learned_update("default").cfg
    assert orthogonal_params(cfg, spec, params) == {0, 2, 4}  # the kernel and both matrices
    assert without_input_layer(cfg, spec, params) == {2, 4}  # the kernel reads the input neurons
