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

On by default in :meth:`NeuralGraphOptimizer.for_module <lopt_graphs.optim.NeuralGraphOptimizer.for_module>`
(its head reads a transposed weight as stored, ``[in, out]``, with the source and destination node terms
swapped: :func:`~lopt_graphs.optim.functional.head_view`); off by default in
:func:`~lopt_graphs.graph.graph_from_module` (``embeddings="free"``), whose spec other consumers read, and
``embeddings="edge"`` turns it on there.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .builder import GraphBuilder, GraphBuildError

Take = Callable[[nn.Parameter], int]

#: Why an ``Embedding`` is graph-free under ``embeddings="free"``.
FREE_REASON = ("Embedding is graph-free under embeddings='free' (the default of graph_from_module); "
               "embeddings='edge' (the default of NeuralGraphOptimizer.for_module) puts it on the graph as one "
               "input neuron per token")


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
