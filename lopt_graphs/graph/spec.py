"""The frozen description of a network's weight space as a neural graph.

A :class:`GraphSpec` holds only topology and index maps. It is computed once per architecture (from a
parameter list or a module) and reused: placing per-parameter features on the graph and reading
per-edge/per-node outputs back are reshapes, pads, ``cat`` and ``index_copy``/``index_select`` over whole
tensors, with Python loops over *parameters* only, never over neurons or edges.

Conventions
-----------
* Nodes are neurons (channels for convolutions). Node ``n`` has a role (``ROLE_INPUT``, ``ROLE_HIDDEN``,
  ``ROLE_OUTPUT``) and a positional id (``node_pos``): ``0..n-1`` for input and output neurons, ``-1`` for
  hidden neurons, so that an encoder reading these ids is equivariant to exactly the permutations of
  hidden neurons that leave the network's function unchanged.
* Edges are weights. The weight of a layer with ``O`` outputs and ``C`` input groups is viewed as
  ``[O, C, S]``: one edge per ``(o, c)`` carrying ``S`` entries (the flattened conv kernel, or the
  ``S`` spatial positions a flattened conv channel feeds into a linear layer; ``S = 1`` for a plain
  linear layer). Edge vectors are padded to ``kmax`` entries and masked.
* Edges of one weight are stored contiguously in row-major ``(o, c)`` order, so filling them is a reshape.
  A *transposed* weight (``ParamSlot.transposed``: an ``Embedding``'s ``[num_embeddings, dim]`` = ``[in, out]``)
  keeps the same edge order: its parameter is transposed when edges are filled and read back.
* Some hidden neurons are permutable only together (``GraphSpec.tied``): an LSTM's four gate blocks and its
  hidden state share one permutation of the hidden units.
* Biases and per-neuron norm parameters are node features, in ``num_slots`` typed slots per node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import Tensor

ROLE_INPUT, ROLE_HIDDEN, ROLE_OUTPUT = 0, 1, 2
#: Types of per-neuron parameters: a layer's bias, a norm's scale, a norm's shift. A node has as many
#: slots as the most per-neuron parameters any neuron of the graph has (residual streams collect several
#: biases); ``node_slot_type`` holds ``1 + NODE_SLOTS.index(type)`` per slot, 0 for an empty slot.
NODE_SLOTS: tuple[str, ...] = ("bias", "norm_weight", "norm_bias")
#: Activation ids stored on nodes (the activation applied to a neuron's pre-activation).
ACTIVATIONS: tuple[str, ...] = (
    "none", "relu", "gelu", "tanh", "sigmoid", "silu", "elu", "leaky_relu", "softplus", "sin", "other",
)


@dataclass(frozen=True)
class ParamSlot:
    """Where one parameter tensor lives on the graph.

    Attributes:
        kind: ``"edge"`` (a weight), ``"node"`` (a bias or a per-neuron norm parameter) or ``"free"``
            (fits no graph; handled by a graph-free per-parameter path).
        shape: the parameter's shape.
        edge_start: first edge id (``kind == "edge"``).
        rows: ``O``, number of destination neurons (``kind == "edge"``).
        cols: ``C``, number of source neurons/channels (``kind == "edge"``).
        entries: ``S``, entries per edge (``kind == "edge"``).
        dst_start: first destination node id (edge), or first node id (node).
        src_start: first source node id (``kind == "edge"``).
        slot: index into ``NODE_SLOTS`` (``kind == "node"``).
        slot_pos: which of its node's slots holds the parameter (``kind == "node"``).
        reason: why the parameter is free (``kind == "free"``).
        transposed: the parameter stores the weight as ``[cols, rows]`` (``[in, out]``, an ``Embedding``)
            instead of ``[rows, cols]``. Edges are still laid out in ``(dst, src)`` row-major order; the
            spec's methods transpose. A consumer that reads the weight's entries by reshaping the
            parameter to ``(rows, cols, entries)`` must transpose first.
    """

    kind: Literal["edge", "node", "free"]
    shape: tuple[int, ...]
    edge_start: int = 0
    rows: int = 0
    cols: int = 0
    entries: int = 1
    dst_start: int = 0
    src_start: int = 0
    slot: int = 0
    slot_pos: int = 0
    reason: str = ""
    transposed: bool = False

    @property
    def stored(self) -> tuple[int, int]:
        """``(rows, cols)`` of an edge weight as its parameter stores them: ``(cols, rows)`` when transposed."""
        return (self.cols, self.rows) if self.transposed else (self.rows, self.cols)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True, eq=False)
class GraphSpec:
    """Topology and index maps of a neural graph (see module docstring).

    Attributes:
        num_nodes: ``N``.
        kmax: entries per edge vector after padding (largest kernel or flatten group).
        params: one :class:`ParamSlot` per parameter, in the order the parameters were given.
        edge_index: ``[2, E]`` long, rows ``(source, destination)``.
        edge_size: ``[E]`` long, valid entries of each edge vector.
        node_role: ``[N]`` long, ``ROLE_*``.
        node_pos: ``[N]`` long, positional id for input/output neurons (and for hidden neurons read by
            something outside the graph), ``-1`` for freely permutable hidden ones.
        node_act: ``[N]`` long, index into ``ACTIVATIONS``.
        node_layer: ``[N]`` long, index of the neuron set (layer) a neuron belongs to.
        num_slots: ``P``, node slots per node.
        node_slot_type: ``[N, P]`` long, ``1 + NODE_SLOTS.index(type)`` of each slot, 0 where empty.
        node_slot_index: ``[M]`` long, flat index ``node * P + slot_pos`` of every node-parameter entry, in
            parameter order (used by ``index_copy``/``index_select``).
        built_by: how the wiring was found (``"torch.fx"``, ``"transformers.fx"``, ``"module walk"``,
            ``"parameters"``; empty when unknown).
        scale_invariant: indices of weights whose output feeds a ``BatchNorm`` directly, so that in training
            mode the network is invariant to scaling each of their output rows (see
            :mod:`lopt_graphs.optim.bn_scale`: those weights take its :func:`~lopt_graphs.optim.bn_scale.base_step`).
        tied: groups of hidden neurons that are permutable only together, each a ``[k, U]`` long tensor of
            node ids: one permutation of the ``U`` units moves every row the same way (an LSTM layer's
            rows are its four gate blocks and its hidden state). Their neurons have ``node_pos == -1`` but
            are not in :meth:`hidden_sets`.
    """

    num_nodes: int
    kmax: int
    params: tuple[ParamSlot, ...]
    edge_index: Tensor
    edge_size: Tensor
    node_role: Tensor
    node_pos: Tensor
    node_act: Tensor
    node_layer: Tensor
    num_slots: int
    node_slot_type: Tensor
    node_slot_index: Tensor
    built_by: str = ""
    scale_invariant: tuple[int, ...] = ()
    tied: tuple[Tensor, ...] = ()
    _cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ basic facts
    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def edge_params(self) -> list[int]:
        return [i for i, p in enumerate(self.params) if p.kind == "edge"]

    @property
    def node_params(self) -> list[int]:
        return [i for i, p in enumerate(self.params) if p.kind == "node"]

    @property
    def free_params(self) -> list[int]:
        return [i for i, p in enumerate(self.params) if p.kind == "free"]

    def edge_blocks(self) -> Tensor:
        """``[W, 5]`` long rows ``(edge_start, rows, cols, dst_start, src_start)``, one per weight (cached)."""
        if "blocks" not in self._cache:
            rows = [[p.edge_start, p.rows, p.cols, p.dst_start, p.src_start] for p in self.params if p.kind == "edge"]
            self._cache["blocks"] = torch.tensor(rows, dtype=torch.long, device=self.edge_index.device).view(-1, 5)
        return self._cache["blocks"]

    def edge_mask(self, device: torch.device | None = None) -> Tensor:
        """``[E, kmax]`` bool mask of valid edge entries."""
        size = self.edge_size.to(device)
        return torch.arange(self.kmax, device=size.device) < size[:, None]

    def to(self, device: torch.device | str) -> "GraphSpec":
        """A copy with its index tensors on ``device`` (cached)."""
        device = torch.device(device)
        if self.edge_index.device == device:
            return self
        key = ("to", str(device))
        if key not in self._cache:
            self._cache[key] = GraphSpec(
                self.num_nodes, self.kmax, self.params,
                *(t.to(device) for t in (self.edge_index, self.edge_size, self.node_role, self.node_pos,
                                         self.node_act, self.node_layer)),
                self.num_slots, self.node_slot_type.to(device), self.node_slot_index.to(device),
                self.built_by, self.scale_invariant, tuple(t.to(device) for t in self.tied),
            )
        return self._cache[key]

    def check_tensors(self, tensors: Sequence[Tensor | None], feat_dims: int = 0) -> None:
        """Raise ``ValueError`` unless ``tensors`` match the spec's parameter shapes (plus feature dims)."""
        if len(tensors) != len(self.params):
            raise ValueError(f"Expected {len(self.params)} tensors (one per parameter), got {len(tensors)}")
        for i, (t, p) in enumerate(zip(tensors, self.params)):
            if t is None or p.kind == "free":
                continue
            shape = tuple(t.shape[: t.dim() - feat_dims]) if feat_dims else tuple(t.shape)
            if shape != p.shape:
                raise ValueError(f"Tensor {i} has shape {tuple(t.shape)}, expected {p.shape} for this graph")

    # ------------------------------------------------------------------ parameters -> graph
    def to_edge_attr(self, tensors: Sequence[Tensor | None], kmax: int | None = None) -> Tensor:
        """Place per-entry values of the weights on the edges.

        Args:
            tensors: one tensor per parameter, shaped ``param.shape + feat`` (``None`` allowed for non-edge
                parameters).
            kmax: pad edge vectors to this many entries (default ``self.kmax``).

        Returns:
            ``[E, kmax, *feat]``, zero where the edge mask is False.
        """
        kmax = self.kmax if kmax is None else kmax
        chunks = []
        for i in self.edge_params:
            p, t = self.params[i], tensors[i]
            feat = tuple(t.shape[len(p.shape):])
            if p.transposed:
                t = t.transpose(0, 1)
            t = t.reshape(p.rows * p.cols, p.entries, *feat)
            if p.entries < kmax:
                t = torch.cat([t, t.new_zeros(p.rows * p.cols, kmax - p.entries, *feat)], dim=1)
            chunks.append(t)
        return torch.cat(chunks, dim=0)

    def to_node_attr(self, tensors: Sequence[Tensor | None], feat: tuple[int, ...] | None = None,
                     like: Tensor | None = None) -> Tensor:
        """Place per-entry values of biases and norm parameters on the nodes.

        Args:
            tensors: one tensor per parameter, shaped ``param.shape + feat``.
            feat: trailing feature shape, needed only when the graph has no node parameters.
            like: tensor giving dtype/device when the graph has no node parameters.

        Returns:
            ``[N, P, *feat]``, zero in empty slots.
        """
        node_idx = self.node_params
        nslots = self.num_slots
        if not node_idx:
            ref = like if like is not None else next(t for t in tensors if t is not None)
            feat = feat if feat is not None else ()
            return ref.new_zeros(self.num_nodes, nslots, *feat)
        first = tensors[node_idx[0]]
        feat = tuple(first.shape[1:])
        flat = torch.cat([tensors[i].reshape(self.params[i].numel, *feat) for i in node_idx], dim=0)
        out = flat.new_zeros(self.num_nodes * nslots, *feat)
        out = out.index_copy(0, self.node_slot_index.to(flat.device), flat)
        return out.view(self.num_nodes, nslots, *feat)

    # ------------------------------------------------------------------ graph -> parameters
    def from_edge_attr(self, edge_out: Tensor) -> list[Tensor | None]:
        """Read per-entry edge outputs ``[E, k, *feat]`` (``k >= kmax``) back into parameter shapes.

        Returns:
            One tensor per parameter (``param.shape + feat``) for weights, ``None`` elsewhere.
        """
        feat = tuple(edge_out.shape[2:])
        out: list[Tensor | None] = [None] * len(self.params)
        for i in self.edge_params:
            p = self.params[i]
            rows = edge_out[p.edge_start: p.edge_start + p.rows * p.cols, : p.entries]
            if p.transposed:
                out[i] = rows.reshape(p.rows, p.cols, *feat).transpose(0, 1).contiguous()
            else:
                out[i] = rows.reshape(*p.shape, *feat)
        return out

    def from_node_attr(self, node_out: Tensor) -> list[Tensor | None]:
        """Read per-slot node outputs ``[N, P, *feat]`` back into parameter shapes.

        Returns:
            One tensor per parameter (``param.shape + feat``) for biases/norm parameters, ``None`` elsewhere.
        """
        out: list[Tensor | None] = [None] * len(self.params)
        node_idx = self.node_params
        if not node_idx:
            return out
        feat = tuple(node_out.shape[2:])
        flat = node_out.reshape(-1, *feat).index_select(0, self.node_slot_index.to(node_out.device))
        sizes = [self.params[i].numel for i in node_idx]
        for i, chunk in zip(node_idx, flat.split(sizes, dim=0)):
            out[i] = chunk.reshape(*self.params[i].shape, *feat)
        return out

    def from_graph(self, edge_out: Tensor, node_out: Tensor) -> list[Tensor | None]:
        """Per-parameter tensors from edge and node outputs (``None`` for free parameters)."""
        e, n = self.from_edge_attr(edge_out), self.from_node_attr(node_out)
        return [a if a is not None else b for a, b in zip(e, n)]

    # ------------------------------------------------------------------ symmetries
    def hidden_sets(self) -> list[Tensor]:
        """Node ids of every hidden neuron set whose neurons may be permuted among themselves (neurons in
        :attr:`tied` groups are left out: they are permutable only together with their group)."""
        free = (self.node_role == ROLE_HIDDEN) & (self.node_pos < 0)
        for ids in self.tied:
            free[ids.flatten()] = False
        sets = []
        for layer in torch.unique(self.node_layer).tolist():
            ids = torch.nonzero((self.node_layer == layer) & free).flatten()
            if ids.numel() > 0:
                sets.append(ids)
        return sets

    def random_node_permutation(self, generator: torch.Generator | None = None,
                                include: Literal["hidden", "input", "output"] = "hidden") -> Tensor:
        """A permutation ``perm`` of node ids (``[N]`` long) shuffling neurons within each set.

        ``include="hidden"`` gives a symmetry of the network (its function is unchanged): every hidden set
        is shuffled, and every :attr:`tied` group by one permutation of its units applied to all its rows;
        ``"input"``/``"output"`` shuffles the input or output neurons of each set instead (not a symmetry;
        a set per ``Embedding`` of the tokens it reads).
        """
        perm = torch.arange(self.num_nodes)
        if include == "hidden":
            groups = self.hidden_sets()
        else:
            role = ROLE_INPUT if include == "input" else ROLE_OUTPUT
            groups = [torch.nonzero((self.node_role == role) & (self.node_layer == layer)).flatten()
                      for layer in torch.unique(self.node_layer[self.node_role == role]).tolist()]
        for ids in groups:
            perm[ids] = ids[torch.randperm(ids.numel(), generator=generator)]
        if include == "hidden":
            for ids in self.tied:
                ids = ids.cpu()
                perm[ids] = ids[:, torch.randperm(ids.shape[1], generator=generator)]
        return perm

    def permute(self, tensors: Sequence[Tensor | None], perm: Tensor) -> list[Tensor | None]:
        """Apply a node permutation to per-parameter tensors.

        Node ``perm[n]`` of the result plays the role node ``n`` played before: weight rows/columns, biases
        and norm parameters move with their neurons. Trailing feature dims are carried along.

        Args:
            tensors: one tensor per parameter (``param.shape + feat``); free ones are returned unchanged.
            perm: ``[N]`` long permutation of node ids, e.g. from :meth:`random_node_permutation`.
        """
        perm = perm.cpu()
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel())
        out: list[Tensor | None] = []
        for t, p in zip(tensors, self.params):
            if t is None or p.kind == "free":
                out.append(t)
                continue
            feat = tuple(t.shape[len(p.shape):])
            if p.kind == "edge":
                rows = (inv[p.dst_start: p.dst_start + p.rows] - p.dst_start).to(t.device)
                cols = (inv[p.src_start: p.src_start + p.cols] - p.src_start).to(t.device)
                if p.transposed:  # [cols, rows]: sources along dim 0
                    out.append(t.index_select(0, cols).index_select(1, rows))
                    continue
                v = t.reshape(p.rows, p.cols, p.entries, *feat)
                v = v.index_select(0, rows).index_select(1, cols)
                out.append(v.reshape(*p.shape, *feat))
            else:
                idx = (inv[p.dst_start: p.dst_start + p.numel] - p.dst_start).to(t.device)
                out.append(t.reshape(p.numel, *feat).index_select(0, idx).reshape(*p.shape, *feat))
        return out

    def summary(self) -> str:
        kinds = [p.kind for p in self.params]
        return (f"GraphSpec(nodes={self.num_nodes}, edges={self.num_edges}, kmax={self.kmax}, "
                f"edge_params={kinds.count('edge')}, node_params={kinds.count('node')}, "
                f"free_params={kinds.count('free')}" + (f", tied_groups={len(self.tied)}" if self.tied else "") + ")")

    __repr__ = summary
