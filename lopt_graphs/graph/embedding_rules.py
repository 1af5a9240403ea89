"""The neural-graph rule for ``nn.Embedding``: rows are input neurons.

``emb(t)`` is ``one_hot(t) @ weight``: a linear layer from one input neuron per token to ``dim`` output
neurons, whose weight is stored ``[num_embeddings, dim]`` = ``[in, out]``, transposed relative to a
``Linear``'s ``[out, in]``. On the graph:

* the tokens are a set of ``num_embeddings`` *input* neurons (positional ids: token ids are fixed inputs,
  like an MLP's input features);
* the ``dim`` outputs are a new neuron set, wired to what reads them like any layer's output (permutable
  when only layers with rules read them; merged into a pinned residual stream in a transformer);
* the weight is a *transposed* edge block (:attr:`ParamSlot.transposed`): edges in the usual ``(dst, src)``
  = ``(dim, token)`` order, so ``spec.to_edge_attr`` / ``from_edge_attr`` / ``permute`` transpose.

Options of the layer: ``padding_idx`` changes nothing on the graph (its row is an input neuron whose
gradient is always zero); ``max_norm`` renormalizes rows, and a permutation of the output neurons keeps row
norms, so the symmetry holds; ``sparse=True`` stays graph-free: its gradients are sparse tensors, which the
graph's dense per-entry features (and ``NeuralGraphOptimizer``) do not take.

Off by default in :func:`~lopt_graphs.graph.graph_from_module` (``embeddings="free"``):
``NeuralGraphOptimizer``'s per-entry head reads every edge parameter as ``param.reshape(rows, cols)`` with
destinations along dim 0, which a transposed weight is not; ``embeddings="edge"`` turns the rule on.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .builder import GraphBuilder, GraphBuildError

Take = Callable[[nn.Parameter], int]

#: Why an ``Embedding`` is graph-free under the default ``embeddings="free"``.
FREE_REASON = ("Embedding is graph-free by default: its weight is [num_embeddings, dim] = [in, out], transposed "
               "relative to a Linear, and NeuralGraphOptimizer reads weights as [out, in]; "
               "graph_from_module(..., embeddings='edge') puts it on the graph")


def embedding_rule(b: GraphBuilder, emb: nn.Embedding, take: Take, what: str) -> int:
    """Wire ``emb``: a new input set of ``num_embeddings`` token neurons, edges to a new set of ``dim``
    neurons (returned).

    Raises:
        GraphBuildError: for ``sparse=True`` (see module docstring).
    """
    if emb.sparse:
        raise GraphBuildError("Embedding with sparse=True has sparse gradients, which the graph's dense "
                              "per-entry features do not take (use torch.optim.SparseAdam for it)")
    tokens = b.new_set(emb.num_embeddings)
    b.inputs.append(tokens)
    out = b.new_set(emb.embedding_dim)
    b.add_weight(take(emb.weight), tuple(emb.weight.shape), tokens, out, what, transposed=True)
    return out
