"""The last-resort graph of a module that no tracer can follow: each layer wired on its own.

Without a trace, the data flow between layers is unknown, so nothing links one layer to the next. What a
layer proves by itself is kept: a ``Linear``/``Conv1d``/``Conv2d`` (``groups=1``) weight connects its input
neurons to its output neurons and its bias sits on the output neurons; a norm's affine parameters sit on
the neurons it normalizes. Every neuron set is *pinned* (positional ids), so no permutation symmetry is
claimed: the encoder still sees each weight matrix as a bipartite graph. Everything else is graph-free.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .builder import GraphBuilder
from .spec import GraphSpec

_WEIGHTS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def graph_from_module_walk(module: nn.Module, hidden_positions: bool = False) -> GraphSpec:
    """A :class:`GraphSpec` of ``module`` from its layers alone (see module docstring).

    Args:
        module: the network; parameter ``i`` of the result is ``list(module.parameters())[i]``.
        hidden_positions: unused (every neuron is pinned already); kept for a uniform signature.

    Returns:
        The spec; parameters outside ``Linear``/``Conv``/norm layers (or shared between modules) are free.
    """
    params = list(module.parameters())
    index = {id(p): i for i, p in enumerate(params)}
    owners: dict[int, int] = {}
    for _, m in module.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    b = GraphBuilder(len(params))
    placed: set[int] = set()
    for name, m in module.named_modules():
        own = list(m.parameters(recurse=False))
        if not own or any(owners[id(p)] > 1 for p in own):
            continue
        if isinstance(m, _WEIGHTS) and (isinstance(m, nn.Linear) or m.groups == 1):
            src, dst = b.new_set(), b.new_set()
            b.pin(src)
            b.pin(dst)
            b.add_weight(index[id(m.weight)], tuple(m.weight.shape), src, dst, name)
            placed.add(index[id(m.weight)])
            if m.bias is not None:
                b.add_node_param(index[id(m.bias)], tuple(m.bias.shape), dst, "bias", name)
                placed.add(index[id(m.bias)])
        elif isinstance(m, _NORMS) and not (isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1) \
                and not (isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels):
            s = b.new_set()
            b.pin(s)
            for p, slot in ((m.weight, "norm_weight"), (m.bias, "norm_bias")):
                if p is not None:
                    b.add_node_param(index[id(p)], tuple(p.shape), s, slot, name)
                    placed.add(index[id(p)])
    names = {id(p): n for n, p in module.named_parameters()}
    if not b.weights:
        for i in list(b.node_params):
            b.node_params.pop(i)
        placed.clear()
    for i, p in enumerate(params):
        if i not in placed:
            owner = names.get(id(p), f"parameter {i}").rsplit(".", 1)[0]
            b.add_free(i, tuple(p.shape), f"untraceable model: {owner} is not a Linear/Conv/norm layer whose "
                                          f"wiring it proves by itself" if owners.get(id(p), 0) <= 1
                       else f"untraceable model: {owner} shares this parameter (tied weights)")
    return dataclasses.replace(b.build(), built_by="module walk", _cache={})
