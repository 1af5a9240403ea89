"""Neural graph of a feed-forward chain, from parameter shapes alone.

``torch.optim`` optimizers only see ``model.parameters()``; this front end infers a chain of
Linear / Conv1d / Conv2d layers from shapes in registration order:

* a 2-D tensor ``[O, I]`` is a linear weight, a 3-D ``[O, I, k]`` a Conv1d weight, a 4-D ``[O, I, kh, kw]``
  a Conv2d weight (``groups=1``); each must take the previous layer's ``O`` as its input (a linear layer
  after convolutions may take ``C`` inputs, global pooling, or ``C * S``, a flatten of ``S`` positions);
* a 1-D tensor of size ``O`` right after a weight is that layer's bias.

Anything else (an embedding table, a 1-D tensor that is not a bias, a 5-D tensor, a shape that breaks
the chain) either goes to the graph-free path (``on_unsupported="free"``) or raises
:class:`GraphBuildError` (``on_unsupported="error"``). Use :func:`graph_from_module` for exact wiring of
residual connections and norms: from shapes alone an embedding ``[V, D]`` looks like a linear layer.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Literal, Sequence

import torch

from .builder import GraphBuilder, GraphBuildError
from .spec import GraphSpec

Shape = Sequence[int]


def graph_from_parameters(params: Iterable[torch.Tensor | Shape],
                          on_unsupported: Literal["error", "free"] = "error",
                          hidden_positions: bool = False) -> GraphSpec:
    """Build a :class:`GraphSpec` for a feed-forward chain from parameters (or their shapes).

    Args:
        params: tensors or shapes, in registration order (``model.parameters()``).
        on_unsupported: ``"error"`` raises :class:`GraphBuildError` for a parameter that does not fit the
            chain; ``"free"`` marks it ``kind="free"`` (graph-free per-parameter path). Once a
            multi-dimensional parameter breaks the chain, every later one is free too: wiring is never
            guessed.
        hidden_positions: debugging switch, see :meth:`GraphBuilder.build`.

    Returns:
        The graph spec; ``spec.params[i]`` says where parameter ``i`` lives.

    Raises:
        GraphBuildError: a parameter does not fit and ``on_unsupported="error"``, or nothing fits at all.
    """
    if on_unsupported not in ("error", "free"):
        raise ValueError(f"Invalid on_unsupported: {on_unsupported!r} (expected 'error' or 'free')")
    shapes = [tuple(p.shape) if isinstance(p, torch.Tensor) else tuple(int(d) for d in p) for p in params]
    b = GraphBuilder(len(shapes))
    cur = b.new_set()
    b.inputs.append(cur)
    prev_kind: str | None = None  # "linear" or "conv"
    prev_param: int | None = None  # last weight, for bias attachment
    bias_done = True
    broken: str | None = None

    for i, shape in enumerate(shapes):
        what = f"parameter {i} of shape {shape}"
        if broken is not None:
            b.add_free(i, shape, f"after parameter that broke the chain: {broken}")
            continue
        reason = None
        if len(shape) in (2, 3, 4) and 0 not in shape:
            kind = "linear" if len(shape) == 2 else "conv"
            if prev_kind == "linear" and kind == "conv":
                reason = f"{what}: a convolution after a linear layer is not a feed-forward chain"
            elif prev_kind == "linear" and shape[1] != b.size(cur):
                reason = f"{what}: takes {shape[1]} inputs but the previous layer has {b.size(cur)} outputs"
            elif prev_kind == "conv" and kind == "conv" and shape[1] != b.size(cur):
                reason = f"{what}: takes {shape[1]} channels but the previous conv has {b.size(cur)}"
            elif prev_kind == "conv" and kind == "linear" and shape[1] % b.size(cur) != 0:
                reason = (f"{what}: takes {shape[1]} inputs, not a multiple of the previous conv's "
                          f"{b.size(cur)} channels")
            if reason is None:
                nxt = b.new_set()
                b.add_weight(i, shape, cur, nxt, what, flatten_ok=prev_kind == "conv")
                cur, prev_kind, prev_param, bias_done = nxt, kind, i, False
                continue
        elif len(shape) == 1 and prev_param is not None and not bias_done and shape[0] == b.size(cur):
            b.add_node_param(i, shape, cur, "bias", what)
            bias_done = True
            continue
        else:
            reason = f"{what} is neither a Linear/Conv1d/Conv2d weight nor the bias of the preceding one"
        if on_unsupported == "error":
            raise GraphBuildError(f"{reason}. Pass on_unsupported='free' to optimize it without a graph, or "
                                  f"build the graph from the module (graph_from_module) for exact wiring")
        b.add_free(i, shape, reason)
        b.pin(cur)  # the free parameter may act on these neurons by position: they are not permutable
        if len(shape) != 1:  # a stray vector cannot mis-wire later layers; a stray matrix can
            broken = reason
    b.outputs.append(cur)
    return dataclasses.replace(b.build(hidden_positions=hidden_positions), built_by="parameters", _cache={})
