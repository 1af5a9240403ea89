"""Neural graph of an ``nn.Module`` with exact wiring, traced with ``torch.fx``.

The trace follows which *neuron set* every intermediate tensor carries:

* ``Linear`` / ``Conv1d`` / ``Conv2d`` (``groups=1``) create a new set and add edges;
* ``BatchNorm1d/2d``, ``LayerNorm`` over the feature dim, ``GroupNorm`` put their affine parameters on the
  neurons they normalize (node slots ``norm_weight`` / ``norm_bias``);
* activations, dropout, pooling and flattening keep the set (activations are recorded on it);
* adding (or multiplying) two tensors merges their sets: the neurons of a residual stream are one set
  and are permuted together.

Any other operation is unknown: with ``on_unsupported="error"`` the build fails naming it; with ``"free"``
the parameters that depend on it take the graph-free path. Wiring is never guessed.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .builder import GraphBuilder, GraphBuildError
from .spec import GraphSpec


@dataclass(frozen=True)
class _Val:
    set: int
    conv: bool  # carries conv channels (possibly pooled/flattened): a linear may group its inputs
    ndim: int = 2  # dims of the tensor with batch: 2 for [B, C(*S)], 3 for conv1d maps, 4 for conv2d maps


_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.GELU: "gelu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.ELU: "elu",
    nn.LeakyReLU: "leaky_relu", nn.Softplus: "softplus", nn.ReLU6: "relu", nn.Mish: "other",
    nn.Hardtanh: "other", nn.Softsign: "other", nn.Tanhshrink: "other", nn.SELU: "other", nn.CELU: "other",
}
_KEEP_MODULES: tuple[type, ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_ACT_FUNCS: dict[Any, str] = {
    torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", torch.sigmoid: "sigmoid", F.gelu: "gelu",
    F.silu: "silu", F.elu: "elu", F.leaky_relu: "leaky_relu", F.softplus: "softplus", torch.sin: "sin",
    F.sigmoid: "sigmoid", F.tanh: "tanh",
}
_ACT_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "sin": "sin"}
_KEEP_FUNCS = {
    F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}
_KEEP_METHODS = {"contiguous", "clone", "float", "to"}
_REDUCE_FUNCS = {torch.mean, torch.amax, torch.sum}
_REDUCE_METHODS = {"mean", "amax", "sum"}


def _arg(node: torch.fx.Node, pos: int, name: str, default: Any) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _flatten(v: _Val, start: Any) -> _Val | None:
    """Flattening from ``start`` keeps the neurons if the channel dim stays put (``start >= 1``)."""
    if not isinstance(start, int) or start < 0:
        start = start + v.ndim if isinstance(start, int) else -1
    if start < 1:
        return None
    return _Val(v.set, v.conv, ndim=min(v.ndim, start + 1))


def _reduce(v: _Val, dims: Any, keepdim: Any) -> _Val | None:
    """Pooling by reduction keeps the neurons only if it reduces spatial dims (``>= 2``) of a conv map."""
    if not v.conv or dims is None:
        return None
    dims = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (tuple, list)) else None
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    dims = [d + v.ndim if d < 0 else d for d in dims]
    if any(d < 2 or d >= v.ndim for d in dims):
        return None
    return _Val(v.set, True, ndim=v.ndim if keepdim else v.ndim - len(dims))
_MERGE_FUNCS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, torch.add, torch.sub,
                torch.mul}
_MERGE_METHODS = {"add", "add_", "sub", "mul"}


class _Tracer(torch.fx.Tracer):
    """Standard leaf rules: every ``torch.nn`` layer is a leaf, user modules are traced through."""


def graph_from_module(module: nn.Module, on_unsupported: Literal["error", "free"] = "error",
                      hidden_positions: bool = False) -> GraphSpec:
    """Build a :class:`GraphSpec` with the module's exact wiring.

    Args:
        module: the network. Parameter ``i`` of the result is ``list(module.parameters())[i]``.
        on_unsupported: ``"error"`` raises :class:`GraphBuildError` naming the first operation or parameter
            that fits no graph; ``"free"`` routes the parameters it affects to the graph-free path.
        hidden_positions: debugging switch, see :meth:`GraphBuilder.build`.

    Raises:
        GraphBuildError: see ``on_unsupported``; also when ``torch.fx`` cannot trace the module (use
            :func:`graph_from_parameters` for a plain chain then).
    """
    if on_unsupported not in ("error", "free"):
        raise ValueError(f"Invalid on_unsupported: {on_unsupported!r} (expected 'error' or 'free')")
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # fx raises many types; the user needs to know it was tracing
        raise GraphBuildError(f"torch.fx could not trace {type(module).__name__} ({exc}); build the graph "
                              f"from its parameters (graph_from_parameters) if it is a plain chain") from exc
    params = list(module.parameters())
    index = {id(p): i for i, p in enumerate(params)}
    modules = dict(module.named_modules())
    b = GraphBuilder(len(params))
    placed: set[int] = set()
    vals: dict[torch.fx.Node, _Val | None] = {}
    problems: list[str] = []

    def unsupported(msg: str, ins: list[_Val | None] = ()) -> None:
        if on_unsupported == "error":
            raise GraphBuildError(f"{msg}. Pass on_unsupported='free' to optimize the affected parameters "
                                  f"without a graph")
        problems.append(msg)
        for v in ins:  # whatever reads these neurons is outside the graph: they are no longer permutable
            if v is not None:
                b.pin(v.set)

    def pidx(p: torch.Tensor, what: str) -> int:
        i = index[id(p)]
        if i in placed:
            raise GraphBuildError(f"{what}: parameter {i} is used twice (tied weights); a neural graph needs "
                                  f"one place per parameter")
        placed.add(i)
        return i

    def tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
        # every input that is a tensor of the trace (nested in lists/tuples too); shape queries are skipped
        return [a for a in node.all_input_nodes if a in vals]

    for node in graph.nodes:
        if node.op == "placeholder":
            s = b.new_set()
            b.inputs.append(s)
            vals[node] = _Val(s, conv=False)
            continue
        if node.op == "output":
            outs = node.args[0]
            outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
            for o in outs:
                v = vals.get(o) if isinstance(o, torch.fx.Node) else None
                if v is None:
                    unsupported(f"output {o} does not carry known neurons")
                else:
                    b.outputs.append(v.set)
            continue
        if node.op == "get_attr":
            vals[node] = None
            continue
        args = tensor_args(node)
        ins = [vals[a] for a in args]
        what = f"{node.op} {node.target!s} ({node.name})"
        if node.op == "call_module":
            m = modules[node.target]
            if any(v is None for v in ins) or len(ins) != 1:
                if any(True for _ in m.parameters(recurse=False)):
                    unsupported(f"{what}: its input does not carry known neurons", ins)
                else:
                    for v in ins:
                        if v is not None:
                            b.pin(v.set)
                vals[node] = None
                continue
            v = ins[0]
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups != 1:
                    unsupported(f"{what}: grouped convolution (groups={m.groups})", ins)
                    vals[node] = None
                    continue
                dst = b.new_set()
                b.add_weight(pidx(m.weight, what), tuple(m.weight.shape), v.set, dst, what,
                             flatten_ok=v.conv and isinstance(m, nn.Linear))
                if m.bias is not None:
                    b.add_node_param(pidx(m.bias, what), tuple(m.bias.shape), dst, "bias", what)
                vals[node] = (_Val(dst, conv=False) if isinstance(m, nn.Linear)
                              else _Val(dst, conv=True, ndim=m.weight.dim()))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                if isinstance(m, nn.LayerNorm) and (len(m.normalized_shape) != 1 or v.ndim != 2):
                    unsupported(f"{what}: LayerNorm over {tuple(m.normalized_shape)} is not per neuron", ins)
                    vals[node] = None
                    continue
                if isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels:
                    unsupported(f"{what}: GroupNorm with {m.num_groups} groups of channels only allows "
                                f"permutations within a group", ins)
                    vals[node] = None
                    continue
                for p, slot in ((m.weight, "norm_weight"), (m.bias, "norm_bias")):
                    if p is not None:
                        b.add_node_param(pidx(p, what), tuple(p.shape), v.set, slot, what)
                vals[node] = v
            elif type(m) in _ACT_MODULES:
                b.set_activation(v.set, _ACT_MODULES[type(m)])
                vals[node] = v
            elif isinstance(m, _KEEP_MODULES):
                vals[node] = v
            elif isinstance(m, nn.Flatten) and m.end_dim == -1:
                vals[node] = _flatten(v, m.start_dim)
                if vals[node] is None:
                    unsupported(f"{what}: flatten from dim {m.start_dim} mixes the neuron dim", ins)
            else:
                unsupported(f"{what}: module type {type(m).__name__} has no neural-graph rule", ins)
                vals[node] = None
            continue
        # call_function / call_method
        tgt = node.target
        if node.op == "call_method" and tgt in ("size", "dim") or (node.op == "call_function"
                                                                  and tgt is getattr):
            continue  # shape queries carry no neurons
        if len(args) == 0:
            continue  # constants, shapes
        if any(v is None for v in ins):
            for v in ins:
                if v is not None:
                    b.pin(v.set)
            vals[node] = None
            continue
        if (node.op == "call_function" and tgt in _MERGE_FUNCS) or (node.op == "call_method"
                                                                   and tgt in _MERGE_METHODS):
            s = ins[0].set
            for v in ins[1:]:
                s = b.union(s, v.set, what)
            vals[node] = _Val(s, conv=any(v.conv for v in ins), ndim=max(v.ndim for v in ins))
        elif len(ins) == 1 and node.op == "call_function" and tgt in _ACT_FUNCS:
            b.set_activation(ins[0].set, _ACT_FUNCS[tgt])
            vals[node] = ins[0]
        elif len(ins) == 1 and node.op == "call_method" and tgt in _ACT_METHODS:
            b.set_activation(ins[0].set, _ACT_METHODS[tgt])
            vals[node] = ins[0]
        elif len(ins) == 1 and ((node.op == "call_function" and tgt in _KEEP_FUNCS)
                                or (node.op == "call_method" and tgt in _KEEP_METHODS)):
            vals[node] = ins[0]
        elif len(ins) == 1 and ((node.op == "call_function" and tgt is torch.flatten)
                                or (node.op == "call_method" and tgt == "flatten")) and _arg(node, 2, "end_dim", -1) == -1:
            vals[node] = _flatten(ins[0], _arg(node, 1, "start_dim", 0))
            if vals[node] is None:
                unsupported(f"{what}: flatten that mixes the neuron dim", ins)
        elif len(ins) == 1 and ((node.op == "call_function" and tgt in _REDUCE_FUNCS)
                                or (node.op == "call_method" and tgt in _REDUCE_METHODS)):
            vals[node] = _reduce(ins[0], _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False))
            if vals[node] is None:
                unsupported(f"{what}: reduction over the neuron dim (or over unknown dims)", ins)
        elif (len(ins) == 1 and node.op == "call_method" and tgt in ("view", "reshape") and ins[0].conv
              and len(node.args) == 3 and node.args[2] == -1):
            vals[node] = _Val(ins[0].set, True, ndim=2)  # x.view(B, -1): channel-major flatten of a conv map
        else:
            unsupported(f"{what}: operation has no neural-graph rule", ins)
            vals[node] = None

    for i, p in enumerate(params):
        if i not in placed:
            msg = f"parameter {i} of shape {tuple(p.shape)} is not used by any layer with a neural-graph rule"
            if on_unsupported == "error":
                raise GraphBuildError(msg + ". Pass on_unsupported='free' to optimize it without a graph")
            b.add_free(i, tuple(p.shape), "; ".join(problems) or msg)
    return b.build(hidden_positions=hidden_positions)
