"""Neural graph of an ``nn.Module`` with exact wiring, traced with ``torch.fx``.

The trace follows which *neuron set* every intermediate tensor carries:

* ``Linear`` / ``Conv1d`` / ``Conv2d`` (``groups=1``) create a new set and add edges;
* ``BatchNorm1d/2d``, ``LayerNorm`` over the feature dim, ``GroupNorm`` put their affine parameters on the
  neurons they normalize (node slots ``norm_weight`` / ``norm_bias``);
* activations, dropout, pooling and flattening keep the set (activations are recorded on it);
* ``nn.Unflatten`` of the last dim of the network's input splits it into tokens (a sequence ``[B, T, F]``):
  the ``F`` features are a new set of input neurons, read by every token alike (as a conv's input channels
  are at every position); Linear layers, norms and attention keep the token dim, and a mean (sum, max) over
  it keeps the neurons (sequence pooling);
* adding (or multiplying) two tensors merges their sets: the neurons of a residual stream are one set
  and are permuted together;
* ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder``
  (:mod:`.attention_rules`), ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (:mod:`.recurrent_rules`: gate blocks and
  hidden state tied into one permutation group) and, with ``embeddings="edge"``, ``nn.Embedding``
  (:mod:`.embedding_rules`: one input neuron per token) have rules of their own.

Any other operation is unknown: with ``on_unsupported="error"`` the build fails naming it; with ``"free"``
only the parameters of the unknown module (an ``Embedding`` by default, attention in-projections, a custom
layer) take the graph-free path. The layers around it stay on the graph: the neurons an unknown operation reads
or writes are *pinned* (they get positional ids, so no permutation through the unknown operation is
claimed), and a layer reading an unknown operation's output reads a fresh pinned set of neurons (a
boundary). Wiring is never guessed.

When ``torch.fx`` cannot trace the module, :func:`trace_module` tries
``transformers.utils.fx.symbolic_trace`` (for Hugging Face models, if ``transformers`` is installed) and
then :mod:`.module_walk`, which only wires what each layer proves by itself.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .attention_rules import encoder_layer_rule, encoder_rule, mha_rule
from .builder import GraphBuilder, GraphBuildError
from .embedding_rules import FREE_REASON, embedding_rule
from .recurrent_rules import recurrent_rule
from .spec import GraphSpec


class _Multi(tuple):
    """A module's tuple output (``MultiheadAttention`` returns ``(output, weights)``): elements are ``_Val`` or
    ``None``; ``operator.getitem`` with a constant index picks one."""


@dataclass(frozen=True)
class _Val:
    set: int
    conv: bool  # carries conv channels (possibly pooled/flattened): a linear may group its inputs
    # dims of the tensor with batch: 2 for [B, C(*S)], 3 for conv1d maps, 4 for conv2d maps; a non-conv value
    # has its neurons last and counts token dims only where they are known ([B, T, C]: 3, after nn.Unflatten
    # of the input), so it never counts more dims than the tensor has (the rules below stay conservative)
    ndim: int = 2


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
    """Flattening from ``start`` keeps the neurons if the channel dim stays put (``start >= 1``) and, for a
    sequence (neurons last), no token dim is folded into the neurons."""
    if not isinstance(start, int) or start < 0:
        start = start + v.ndim if isinstance(start, int) else -1
    if start < 1 or (not v.conv and start < v.ndim - 1):
        return None
    return _Val(v.set, v.conv, ndim=min(v.ndim, start + 1))


def _reduce(v: _Val, dims: Any, keepdim: Any) -> _Val | None:
    """Pooling by reduction keeps the neurons only if it reduces spatial dims (``>= 2``) of a conv map, or
    token dims (``1 .. ndim - 2``, the neurons being last) of a sequence."""
    if dims is None:
        return None
    dims = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (tuple, list)) else None
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    dims = [d + v.ndim if d < 0 else d for d in dims]
    lo, hi = (2, v.ndim) if v.conv else (1, v.ndim - 1)
    if any(d < lo or d >= hi for d in dims):
        return None
    return _Val(v.set, v.conv, ndim=v.ndim if keepdim else v.ndim - len(dims))
_MERGE_FUNCS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, torch.add, torch.sub,
                torch.mul}
_MERGE_METHODS = {"add", "add_", "sub", "mul"}


class _Tracer(torch.fx.Tracer):
    """Standard leaf rules: every ``torch.nn`` layer is a leaf, user modules are traced through."""


class _Root(nn.Module):
    """Wraps a module whose ``forward`` takes ``**kwargs`` (which ``torch.fx`` cannot trace as the root):
    the wrapper's forward passes one positional tensor (``input_ids`` for Hugging Face models)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class _LeafRetryTracer(_Tracer):
    """Records the innermost module whose tracing failed, so it can be retried as a leaf (unknown)."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:
                self.failed = self.path_of_module(m)
            raise


def _first_line(exc: Exception) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}"


def trace_module(module: nn.Module, max_leaves: int = 64) -> tuple[torch.fx.Graph | None, nn.Module, str]:
    """Trace ``module``: ``torch.fx``; else ``transformers.utils.fx`` (Hugging Face models, transformers < 5);
    else ``torch.fx`` again, with every submodule whose code cannot be traced turned into a leaf (an unknown
    module: its parameters go free, the layers around it stay on the graph).

    Returns:
        ``(graph, root, how)``: the fx graph, the module it was traced from (``module`` or a wrapper holding
        it as ``.model``, with the same parameters in the same order) and ``"torch.fx"`` /
        ``"transformers.fx"`` / ``"torch.fx with leaves ..."``; or ``(None, module, reasons)``.
    """
    try:
        return _Tracer().trace(module), module, "torch.fx"
    except Exception as exc:  # fx raises many types; fall back
        reasons = [f"torch.fx: {_first_line(exc)}"]
    try:
        from transformers import PreTrainedModel
        from transformers.utils.fx import symbolic_trace as hf_trace
    except Exception:  # not installed, or transformers >= 5 (no fx tracer)
        hf_trace = None
    if hf_trace is not None and isinstance(module, PreTrainedModel):
        try:
            return hf_trace(module).graph, module, "transformers.fx"
        except Exception as exc:
            reasons.append(f"transformers.fx: {_first_line(exc)}")
    root: nn.Module = _Root(module)
    leaves: set[str] = set()
    for _ in range(max_leaves):
        tracer = _LeafRetryTracer(leaves)
        try:
            graph = tracer.trace(root)
        except Exception as exc:
            if tracer.failed in (None, "", "model"):  # the model's own code: nothing to make a leaf of
                reasons.append(f"torch.fx (untraceable submodules as leaves): {_first_line(exc)}")
                break
            leaves.add(tracer.failed)
            continue
        names = ", ".join(sorted(n.removeprefix("model.") for n in leaves)) or "none"
        return graph, root, f"torch.fx with untraceable submodules as leaves ({names})"
    return None, module, "; ".join(reasons)


def graph_from_module(module: nn.Module, on_unsupported: Literal["error", "free"] = "error",
                      hidden_positions: bool = False, fallback: bool = True,
                      embeddings: Literal["free", "edge"] = "free") -> GraphSpec:
    """Build a :class:`GraphSpec` with the module's exact wiring.

    Args:
        module: the network. Parameter ``i`` of the result is ``list(module.parameters())[i]``.
        on_unsupported: ``"error"`` raises :class:`GraphBuildError` naming the first operation or parameter
            that fits no graph; ``"free"`` routes the parameters of unsupported modules (and only those) to
            the graph-free path, pinning the neurons at the boundary.
        hidden_positions: debugging switch, see :meth:`GraphBuilder.build`.
        fallback: with ``on_unsupported="free"``, when no tracer works use the module walk
            (:func:`~lopt_graphs.graph.module_walk.graph_from_module_walk`) and warn once.
        embeddings: ``"free"`` (default) treats ``nn.Embedding`` as a module without a rule; ``"edge"`` puts
            its weight on the graph as a transposed edge block from one input neuron per token
            (:mod:`~lopt_graphs.graph.embedding_rules`; ``NeuralGraphOptimizer.for_module`` traces with
            ``"edge"``, its default).

    Raises:
        GraphBuildError: see ``on_unsupported``; also when the module cannot be traced and there is no
            fallback (use :func:`graph_from_parameters` for a plain chain then).
    """
    if on_unsupported not in ("error", "free"):
        raise ValueError(f"Invalid on_unsupported: {on_unsupported!r} (expected 'error' or 'free')")
    if embeddings not in ("free", "edge"):
        raise ValueError(f"Invalid embeddings: {embeddings!r} (expected 'free' or 'edge')")
    graph, root, how = trace_module(module)
    if graph is None:
        if on_unsupported == "free" and fallback:
            from .module_walk import graph_from_module_walk

            spec = graph_from_module_walk(module, hidden_positions=hidden_positions)
            warnings.warn(f"lopt_graphs: could not trace {type(module).__name__} ({how}); built its graph by a "
                          f"module walk: each Linear/Conv layer is wired on its own with pinned (positional) "
                          f"neurons, {len(spec.free_params)} of {len(spec.params)} parameters are graph-free "
                          f"(see NeuralGraphOptimizer.describe())", UserWarning, stacklevel=2)
            return spec
        raise GraphBuildError(f"torch.fx could not trace {type(module).__name__} ({how}); build the graph "
                              f"from its parameters (graph_from_parameters) if it is a plain chain, or pass "
                              f"on_unsupported='free' to use the module walk")
    if root is not module and on_unsupported == "error":
        raise GraphBuildError(f"torch.fx could not trace {type(module).__name__} as a whole ({how}). Pass "
                              f"on_unsupported='free' to optimize the untraceable submodules without a graph")
    return graph_from_fx(root, graph, on_unsupported, hidden_positions, built_by=how, embeddings=embeddings)


_WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _shared(module: nn.Module, graph: torch.fx.Graph) -> dict[str, str]:
    """Modules whose parameters cannot have one place on the graph: called twice, or sharing (tying) a
    parameter with another module. Maps module name -> reason."""
    out: dict[str, str] = {}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    owners: dict[int, list[str]] = {}
    for name, m in module.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    for name, n in calls.items():
        if n > 1 and any(True for _ in dict(module.named_modules())[name].parameters()):
            out[name] = f"module {name} is called {n} times (tied weights): one place per parameter is needed"
    for names in owners.values():
        if len(set(names)) > 1:
            for name in names:
                out[name] = f"a parameter of {name} is shared with {sorted(set(names) - {name})} (tied weights)"
    return out


def graph_from_fx(module: nn.Module, graph: torch.fx.Graph, on_unsupported: Literal["error", "free"] = "error",
                  hidden_positions: bool = False, built_by: str = "torch.fx",
                  embeddings: Literal["free", "edge"] = "free") -> GraphSpec:
    """Build the spec from an fx graph of ``module`` (see :func:`graph_from_module`)."""
    params = list(module.parameters())
    index = {id(p): i for i, p in enumerate(params)}
    modules = dict(module.named_modules())
    b = GraphBuilder(len(params))
    placed: set[int] = set()
    reasons: dict[int, str] = {}  # free parameter -> why
    vals: dict[torch.fx.Node, _Val | None] = {}
    boundary: dict[tuple[torch.fx.Node, str], int] = {}
    weight_of: dict[torch.fx.Node, int] = {}  # output of a Linear/Conv call -> its weight's index
    scale_invariant: set[int] = set()
    problems: list[str] = []
    shared = _shared(module, graph)
    if shared and on_unsupported == "error":
        raise GraphBuildError(f"{next(iter(shared.values()))}. Pass on_unsupported='free' to optimize the tied "
                              f"parameters without a graph")

    def unsupported(msg: str, ins: list[_Val | None] = (), m: nn.Module | None = None) -> None:
        if on_unsupported == "error":
            raise GraphBuildError(f"{msg}. Pass on_unsupported='free' to optimize the affected parameters "
                                  f"without a graph")
        problems.append(msg)
        for v in ins:  # whatever reads these neurons is outside the graph: they are no longer permutable
            if v is not None:
                b.pin(v.set)
        if m is not None:
            for p in m.parameters():
                if index[id(p)] not in placed:
                    reasons.setdefault(index[id(p)], msg)

    def source(arg: torch.fx.Node, kind: str, conv: bool, ndim: int) -> _Val:
        """The neurons a layer reads: the traced set, or a pinned boundary set when the producer is unknown."""
        v = vals.get(arg)
        if isinstance(v, _Val):
            return v
        key = (arg, kind)
        if key not in boundary:
            boundary[key] = b.new_set()
            b.pin(boundary[key])
        return _Val(boundary[key], conv=conv, ndim=ndim)

    def unplace(m: nn.Module) -> None:
        # undo a layer rule that failed halfway (a size conflict found while adding its parameters)
        ids = {index[id(p)] for p in m.parameters(recurse=False)}
        placed.difference_update(ids)
        b.weights = [w for w in b.weights if w.param not in ids]
        for i in ids:
            b.node_params.pop(i, None)

    def give_up(node: torch.fx.Node, m: nn.Module, what: str, ins: list[_Val | None], exc: Exception) -> None:
        # a layer rule failed: re-raise in error mode, else undo what it placed and free the module's parameters
        if on_unsupported == "error":
            raise exc
        for sub in m.modules():
            unplace(sub)
        unsupported(f"{what}: {exc}", ins, m)
        vals[node] = None

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
            outs: list[Any] = []
            torch.fx.node.map_aggregate(node.args[0], outs.append)  # tuples, lists, dicts of outputs
            for o in outs:
                v = vals.get(o) if isinstance(o, torch.fx.Node) else None
                for e in (v if isinstance(v, _Multi) else (v,)):  # a module's tuple output, returned whole
                    if isinstance(e, _Val):
                        b.outputs.append(e.set)
                if v is None and isinstance(o, torch.fx.Node):
                    problems.append(f"output {o} does not carry known neurons")
            continue
        if node.op == "get_attr":
            vals[node] = None
            continue
        args = tensor_args(node)
        ins = [vals[a] if isinstance(vals[a], _Val) else None for a in args]
        what = f"{node.op} {node.target!s} ({node.name})"
        if (node.op == "call_function" and node.target is operator.getitem and node.args
                and isinstance(vals.get(node.args[0]), _Multi) and isinstance(node.args[1], int)):
            multi = vals[node.args[0]]
            vals[node] = multi[node.args[1]] if -len(multi) <= node.args[1] < len(multi) else None
            continue
        if node.op == "call_module":
            m = modules[node.target]
            has_params = any(True for _ in m.parameters())
            if node.target in shared:
                unsupported(f"{what}: {shared[node.target]}", ins, m)
                vals[node] = None
                continue
            if isinstance(m, nn.Embedding) and len(args) == 1:
                if embeddings == "free":
                    unsupported(f"{what}: {FREE_REASON}", ins, m)
                    vals[node] = None
                    continue
                for v in ins:  # token ids are data, not neurons: whatever produced them is read by position
                    if v is not None:
                        b.pin(v.set)
                try:
                    vals[node] = _Val(embedding_rule(b, m, lambda p: _take(p, index, placed), what), conv=False)
                except GraphBuildError as exc:
                    give_up(node, m, what, ins, exc)
                continue
            if isinstance(m, nn.RNNBase):
                try:
                    if len(args) != 1:
                        raise GraphBuildError(f"called with {len(args)} tensor inputs (an initial state is read "
                                              f"by position)")
                    x = source(args[0], "last", False, 2)
                    if x.conv:
                        raise GraphBuildError("it reads conv channels (features must be the last dim)")
                    out = recurrent_rule(b, m, x.set, lambda p: _take(p, index, placed), what,
                                         pin_states=not _only_output_read(node))
                    vals[node] = _Multi((_Val(out, conv=False), None))
                except GraphBuildError as exc:
                    give_up(node, m, what, ins, exc)
                continue
            if isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)):
                take = lambda p: _take(p, index, placed)  # noqa: E731
                first = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
                try:
                    # the output has the query's shape (its token dims too)
                    if isinstance(m, nn.MultiheadAttention):
                        qkv = [source(a, "last", False, 2) for a in node.args[:3] if isinstance(a, torch.fx.Node)]
                        out = mha_rule(b, m, [v.set for v in qkv], take, what)
                        vals[node] = _Multi((_Val(out, conv=False, ndim=qkv[0].ndim if qkv else 2), None))
                    else:
                        if not isinstance(first, torch.fx.Node):
                            raise GraphBuildError("its input is not a traced tensor")
                        rule = encoder_rule if isinstance(m, nn.TransformerEncoder) else encoder_layer_rule
                        x = source(first, "last", False, 2)
                        vals[node] = _Val(rule(b, m, x.set, take, what), conv=False, ndim=x.ndim)
                except (GraphBuildError, ValueError) as exc:
                    give_up(node, m, what, ins, exc)
                    continue
                for p in m.parameters():  # the attention's in-projections
                    if index[id(p)] not in placed:
                        reasons.setdefault(index[id(p)], f"{what}: attention in-projection (q/k/v) reads its "
                                                         f"input by position through the attention scores")
                for v in ins:  # masks and keys/values read by position
                    if v is not None:
                        b.pin(v.set)
                continue
            if isinstance(m, nn.Unflatten) and len(args) == 1 and ins[0] is not None:
                tokens = _unflatten_input(b, ins[0], m.dim, len(m.unflattened_size))
                if tokens is not None:
                    vals[node] = tokens
                    continue
            known = isinstance(m, _WEIGHT_TYPES + _NORM_TYPES) or type(m) in _ACT_MODULES or isinstance(
                m, _KEEP_MODULES) or isinstance(m, nn.Flatten)
            if not known or len(args) != 1:
                if has_params:
                    why = (f"{what}: module type {type(m).__name__} has no neural-graph rule" if not known
                           else f"{what}: called with {len(args)} tensor inputs")
                    unsupported(why, ins, m)
                else:
                    for v in ins:
                        if v is not None:
                            b.pin(v.set)
                vals[node] = None
                continue
            if ins[0] is None and not isinstance(m, _WEIGHT_TYPES + _NORM_TYPES):
                vals[node] = None  # an activation or pooling of unknown neurons: still unknown
                continue
            try:
                vals[node] = _module_rule(b, m, what, args[0], source, pidx=lambda p: _take(p, index, placed),
                                          unsupported=unsupported)
                if isinstance(m, _WEIGHT_TYPES):
                    weight_of[node] = index[id(m.weight)]
                elif (isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and args[0] in weight_of
                      and len(args[0].users) == 1):  # the weight's output goes nowhere but into the BN
                    scale_invariant.add(weight_of[args[0]])
            except GraphBuildError as exc:
                give_up(node, m, what, ins, exc)
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
        try:
            vals[node] = _function_rule(b, node, ins, what, unsupported)
        except GraphBuildError as exc:
            if on_unsupported == "error":
                raise
            unsupported(f"{what}: {exc}", ins)
            vals[node] = None

    for i, p in enumerate(params):
        if i not in placed:
            msg = reasons.get(i) or (f"parameter {i} of shape {tuple(p.shape)} is not used by any layer with a "
                                     f"neural-graph rule (read directly by an operation, or unused)")
            if on_unsupported == "error":
                raise GraphBuildError(msg + ". Pass on_unsupported='free' to optimize it without a graph")
            b.add_free(i, tuple(p.shape), msg)
    if not b.weights and b.node_params:  # norms without any weight: nothing to build a graph of
        for i, (_, _, shape) in list(b.node_params.items()):
            b.add_free(i, shape, "no Linear/Conv weight of the graph touches its neurons")
        b.node_params.clear()
    spec = b.build(hidden_positions=hidden_positions)
    kept = tuple(sorted(i for i in scale_invariant if spec.params[i].kind == "edge"))
    return dataclasses.replace(spec, built_by=built_by, scale_invariant=kept, _cache={})


def _unflatten_input(b: GraphBuilder, v: _Val, dim: Any, parts: int) -> _Val | None:
    """``nn.Unflatten`` of the last dim of the network's input into ``parts`` dims (tokens, then features):
    a new set of input neurons, the features, with the token dims counted; ``None`` for any other unflatten
    (its result is unknown: hidden neurons read by position must be pinned)."""
    inputs = {b.find(s) for s in b.inputs}
    if v.conv or b.find(v.set) not in inputs or not isinstance(dim, int) or dim not in (-1, v.ndim - 1):
        return None
    features = b.new_set()
    b.inputs.append(features)  # input neurons are positional: nothing is claimed about their order
    return _Val(features, conv=False, ndim=v.ndim + parts - 1)


def _only_output_read(node: torch.fx.Node) -> bool:
    """Whether only element 0 (the output sequence) of a recurrent module's ``(output, states)`` is read."""
    for u in node.users:
        if not (u.op == "call_function" and u.target is operator.getitem and u.args[0] is node
                and isinstance(u.args[1], int)):
            return False
        if u.args[1] not in (0, -2) and len(u.users) > 0:
            return False
    return True


def _take(p: torch.Tensor, index: dict[int, int], placed: set[int]) -> int:
    i = index[id(p)]
    if i in placed:
        raise GraphBuildError(f"parameter {i} is used twice (tied weights); a neural graph needs one place per "
                              f"parameter")
    placed.add(i)
    return i


def _module_rule(b: GraphBuilder, m: nn.Module, what: str, arg: torch.fx.Node, source, pidx, unsupported
                 ) -> _Val | None:
    """Neurons out of a known ``torch.nn`` layer applied to ``arg`` (adds its parameters to ``b``)."""
    if isinstance(m, _WEIGHT_TYPES):
        conv = not isinstance(m, nn.Linear)
        v = source(arg, "channel" if conv else "last", conv, m.weight.dim() if conv else 2)
        if conv and m.groups != 1:
            raise GraphBuildError(f"grouped convolution (groups={m.groups})")
        dst = b.new_set()
        b.add_weight(pidx(m.weight), tuple(m.weight.shape), v.set, dst, what,
                     flatten_ok=v.conv and isinstance(m, nn.Linear))
        if m.bias is not None:
            b.add_node_param(pidx(m.bias), tuple(m.bias.shape), dst, "bias", what)
        if conv:
            return _Val(dst, conv=True, ndim=m.weight.dim())
        return _Val(dst, conv=False, ndim=2 if v.conv else v.ndim)  # a Linear keeps a sequence's token dims
    if isinstance(m, _NORM_TYPES):
        last = isinstance(m, nn.LayerNorm)
        v = source(arg, "last" if last else "channel", not last, 2 if last else 3)
        if isinstance(m, nn.LayerNorm) and (len(m.normalized_shape) != 1 or (v.conv and v.ndim != 2)):
            raise GraphBuildError(f"LayerNorm over {tuple(m.normalized_shape)} is not per neuron")
        if isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels:
            raise GraphBuildError(f"GroupNorm with {m.num_groups} groups of channels only allows permutations "
                                  f"within a group")
        for p, slot in ((m.weight, "norm_weight"), (m.bias, "norm_bias")):
            if p is not None:
                b.add_node_param(pidx(p), tuple(p.shape), v.set, slot, what)
        return v
    v = source(arg, "last", False, 2)
    if type(m) in _ACT_MODULES:
        b.set_activation(v.set, _ACT_MODULES[type(m)])
        return v
    if isinstance(m, _KEEP_MODULES):
        return v
    if isinstance(m, nn.Flatten) and m.end_dim == -1:
        out = _flatten(v, m.start_dim)
        if out is None:
            unsupported(f"{what}: flatten from dim {m.start_dim} mixes the neuron dim", [v])
        return out
    unsupported(f"{what}: module type {type(m).__name__} has no neural-graph rule", [v])
    return None


def _function_rule(b: GraphBuilder, node: torch.fx.Node, ins: list[_Val], what: str, unsupported) -> _Val | None:
    """Neurons out of a function or method call on known neurons."""
    tgt = node.target
    if (node.op == "call_function" and tgt in _MERGE_FUNCS) or (node.op == "call_method"
                                                               and tgt in _MERGE_METHODS):
        s = ins[0].set
        for v in ins[1:]:
            s = b.union(s, v.set, what)
        return _Val(s, conv=any(v.conv for v in ins), ndim=max(v.ndim for v in ins))
    if len(ins) == 1 and node.op == "call_function" and tgt in _ACT_FUNCS:
        b.set_activation(ins[0].set, _ACT_FUNCS[tgt])
        return ins[0]
    if len(ins) == 1 and node.op == "call_method" and tgt in _ACT_METHODS:
        b.set_activation(ins[0].set, _ACT_METHODS[tgt])
        return ins[0]
    if len(ins) == 1 and ((node.op == "call_function" and tgt in _KEEP_FUNCS)
                          or (node.op == "call_method" and tgt in _KEEP_METHODS)):
        return ins[0]
    if len(ins) == 1 and ((node.op == "call_function" and tgt is torch.flatten)
                          or (node.op == "call_method" and tgt == "flatten")) and _arg(node, 2, "end_dim", -1) == -1:
        out = _flatten(ins[0], _arg(node, 1, "start_dim", 0))
        if out is None:
            unsupported(f"{what}: flatten that mixes the neuron dim", ins)
        return out
    if len(ins) == 1 and ((node.op == "call_function" and tgt in _REDUCE_FUNCS)
                          or (node.op == "call_method" and tgt in _REDUCE_METHODS)):
        out = _reduce(ins[0], _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False))
        if out is None:
            unsupported(f"{what}: reduction over the neuron dim (or over unknown dims)", ins)
        return out
    if (len(ins) == 1 and node.op == "call_method" and tgt in ("view", "reshape") and ins[0].conv
            and len(node.args) == 3 and node.args[2] == -1):
        return _Val(ins[0].set, True, ndim=2)  # x.view(B, -1): channel-major flatten of a conv map
    unsupported(f"{what}: operation has no neural-graph rule", ins)
    return None
