"""Neural-graph rules for ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` / ``Encoder``.

What is on the graph, and why it is exact:

* ``MultiheadAttention``: the output projection ``out_proj`` is a weight from the concatenated heads'
  outputs to new neurons. The in-projections (``in_proj_weight`` or ``q/k/v_proj_weight``, their biases,
  ``bias_k``/``bias_v``) read the input by position through the attention scores: they are graph-free, the
  input neurons and the heads' outputs are pinned. (Heads as permutable neuron groups would need the
  in-projections on the graph: not done yet.)
* ``TransformerEncoderLayer``: ``x + out_proj(attn(x))`` and ``x + linear2(act(linear1(x)))`` are residual
  additions, so the stream is one neuron set (pinned: the attention reads it by position); ``norm1``/``norm2``
  are per-neuron LayerNorms on it. The feed-forward hidden neurons (``linear1``'s outputs) are freely
  permutable: permuting ``linear1``'s rows, its bias and ``linear2``'s columns leaves the layer unchanged.
  Both ``norm_first`` orders are followed. ``TransformerEncoder`` chains its layers and its final norm.

The rules work on neuron-set ids of a :class:`~lopt_graphs.graph.builder.GraphBuilder`; ``take(p)`` returns a
parameter's index (and marks it placed). Parameters they leave unplaced are made free by the caller.
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import nn

from .builder import GraphBuilder

Take = Callable[[nn.Parameter], int]
_ACT = {F.relu: "relu", F.gelu: "gelu"}


def _linear(b: GraphBuilder, lin: nn.Linear, src: int, take: Take, what: str) -> int:
    dst = b.new_set()
    b.add_weight(take(lin.weight), tuple(lin.weight.shape), src, dst, what)
    if lin.bias is not None:
        b.add_node_param(take(lin.bias), tuple(lin.bias.shape), dst, "bias", what)
    return dst


def _norm(b: GraphBuilder, ln: nn.Module, s: int, take: Take, what: str) -> int:
    if not isinstance(ln, nn.LayerNorm) or len(ln.normalized_shape) != 1:
        raise ValueError(f"{what}: expected a LayerNorm over the feature dim, got {ln!r}")
    for p, slot in ((ln.weight, "norm_weight"), (ln.bias, "norm_bias")):
        if p is not None:
            b.add_node_param(take(p), tuple(p.shape), s, slot, what)
    return s


def mha_rule(b: GraphBuilder, attn: nn.MultiheadAttention, srcs: list[int], take: Take, what: str) -> int:
    """Pin the query/key/value inputs ``srcs`` and wire ``out_proj`` from pinned head outputs; returns the
    set of the attention output's neurons."""
    for s in srcs:
        b.pin(s)
    heads = b.new_set()
    b.pin(heads)
    return _linear(b, attn.out_proj, heads, take, f"{what}.out_proj")


def encoder_layer_rule(b: GraphBuilder, layer: nn.TransformerEncoderLayer, x: int, take: Take, what: str) -> int:
    """Wire one ``TransformerEncoderLayer`` reading neuron set ``x``; returns its output set."""
    act = layer.activation
    act_name = _ACT.get(act) if not isinstance(act, nn.Module) else {nn.ReLU: "relu", nn.GELU: "gelu"}.get(type(act))

    def sa(s: int) -> int:
        return mha_rule(b, layer.self_attn, [s], take, f"{what}.self_attn")

    def ff(s: int) -> int:
        h = _linear(b, layer.linear1, s, take, f"{what}.linear1")
        b.set_activation(h, act_name or "other")
        return _linear(b, layer.linear2, h, take, f"{what}.linear2")

    if layer.norm_first:
        x = b.union(x, sa(_norm(b, layer.norm1, x, take, f"{what}.norm1")), what)
        x = b.union(x, ff(_norm(b, layer.norm2, x, take, f"{what}.norm2")), what)
    else:
        x = _norm(b, layer.norm1, b.union(x, sa(x), what), take, f"{what}.norm1")
        x = _norm(b, layer.norm2, b.union(x, ff(x), what), take, f"{what}.norm2")
    return x


def encoder_rule(b: GraphBuilder, enc: nn.TransformerEncoder, x: int, take: Take, what: str) -> int:
    """Wire a ``TransformerEncoder``: its layers in order, then its final norm (if any)."""
    for i, layer in enumerate(enc.layers):
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise ValueError(f"{what}.layers.{i}: expected a TransformerEncoderLayer, got {type(layer).__name__}")
        x = encoder_layer_rule(b, layer, x, take, f"{what}.layers.{i}")
    if enc.norm is not None:
        x = _norm(b, enc.norm, x, take, f"{what}.norm")
    return x
