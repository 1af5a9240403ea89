"""Neural graphs of many SIRENs that share one architecture, built fast.

Every INR of a dataset has the same :class:`~lopt_graphs.graph.GraphSpec` (computed once from the reference
module with ``graph_from_module``). One INR's graph is ``neural_graph(spec, params)``; a minibatch of ``B``
INRs is ``collate([...])``. Since only the features differ between INRs, :class:`INRGraphBatcher` collates a
zero-feature *template* once per batch size and then fills ``edge_attr`` and ``x`` of all ``B`` graphs with
one ``to_edge_attr``/``to_node_attr`` call each, carrying the batch as a trailing feature dim. The result is
identical to ``collate([neural_graph(spec, p_b) for b ...])`` (tested) but costs a few tensor ops per batch.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch

from lopt_graphs.graph import GraphSpec, collate, graph_from_module, neural_graph
from lopt_graphs.graph.spec import ROLE_INPUT

from .siren import make_siren, pixel_grid, siren_forward


def siren_spec(hidden: int = 32, w0: float = 30.0, hidden_positions: bool = False) -> GraphSpec:
    """The graph spec of the reference SIREN (``hidden_positions=True``: hidden neurons get positional ids,
    which makes an encoder reading them *non*-equivariant; used as a baseline)."""
    return graph_from_module(make_siren(hidden, w0), hidden_positions=hidden_positions)


def probe_coords(count: int, image_shape: tuple[int, int] = (28, 28), seed: int = 1234) -> Tensor:
    """``count`` fixed probe coordinates: a seeded random subset of the image's pixel centers (the same for
    every INR). Pixel centers, because a SIREN with ``w0 = 30`` is only constrained there: between the pixels
    of a small image it oscillates freely."""
    grid = pixel_grid(*image_shape)
    if count > grid.shape[0]:
        raise ValueError(f"probes={count} exceeds the {grid.shape[0]} pixels of a {image_shape} image")
    gen = torch.Generator().manual_seed(seed)
    return grid[torch.randperm(grid.shape[0], generator=gen)[:count]]


class INRGraphBatcher:
    """Builds PyG batches of neural graphs of stacked SIREN parameters.

    Args:
        spec: graph spec of the SIREN (from :func:`siren_spec`).
        scales: one positive float per parameter; parameter ``j`` is divided by ``scales[j]`` before it is
            placed on the graph (a per-tensor normalization, so it commutes with neuron permutations).
        probes: number of probe coordinates (0: none). With probes, every node slot gets ``probes`` extra
            features: the neuron's activation (post-sine; the output value for the output neuron) at the fixed
            probe coordinates. Activations permute with their neurons, so equivariance is kept.
        w0: sine frequency (for the probe features).
        image_shape: pixel grid the probes are drawn from (see :func:`probe_coords`).

    Node features are ``[N, P, 1 + probes]`` (``x[..., 0]`` the bias), edge features ``[E, 1, 1]``.
    """

    def __init__(self, spec: GraphSpec, scales: Sequence[float] | None = None, probes: int = 0,
                 w0: float = 30.0, image_shape: tuple[int, int] = (28, 28)):
        self.spec = spec
        self.scales = [1.0] * len(spec.params) if scales is None else [float(s) for s in scales]
        self.probes = int(probes)
        self.w0 = float(w0)
        self.coords = probe_coords(self.probes, image_shape) if self.probes else None
        self._templates: dict[int, Batch] = {}
        counts = torch.bincount(spec.node_layer).tolist()
        n_in = int((spec.node_role == ROLE_INPUT).sum())
        if spec.node_role[:n_in].ne(ROLE_INPUT).any():
            raise ValueError("expected the spec's input neurons first")
        self._layer_sizes = counts

    @property
    def node_in(self) -> int:
        return 1 + self.probes

    def template(self, size: int) -> Batch:
        """The collated batch of ``size`` zero-feature graphs (cached)."""
        if size not in self._templates:
            zeros = [torch.zeros(p.shape) for p in self.spec.params]
            one = neural_graph(self.spec, zeros)
            self._templates[size] = collate([one] * size)
        return self._templates[size]

    def normalize(self, params: Sequence[Tensor]) -> list[Tensor]:
        return [p / s for p, s in zip(params, self.scales)]

    def probe_features(self, params: Sequence[Tensor]) -> Tensor:
        """``[B, N, probes]`` activations of every neuron at the probe coordinates (raw parameters)."""
        b = params[0].shape[0]
        _, acts = siren_forward(params, self.coords, self.w0, return_hidden=True)
        inputs = self.coords.t().unsqueeze(0).expand(b, -1, -1)
        feats = torch.cat([inputs] + [a.transpose(1, 2) for a in acts], dim=1)
        if feats.shape[1] != self.spec.num_nodes:
            raise ValueError(f"probe features for {feats.shape[1]} neurons, spec has {self.spec.num_nodes}")
        return feats

    def batch(self, params: Sequence[Tensor]) -> Batch:
        """A batch of the ``B`` graphs of stacked raw parameters ``params`` (``[B, *shape]`` each)."""
        b = params[0].shape[0]
        spec = self.spec
        normed = self.normalize(params)
        feats = [p.movedim(0, -1) for p in normed]  # param.shape + (B,)
        edge = spec.to_edge_attr(feats).permute(2, 0, 1).reshape(b * spec.num_edges, spec.kmax, 1)
        node = spec.to_node_attr(feats).permute(2, 0, 1).reshape(b * spec.num_nodes, spec.num_slots, 1)
        if self.probes:
            pf = self.probe_features(params).reshape(b * spec.num_nodes, 1, self.probes)
            filled = (spec.node_slot_type > 0).to(pf.dtype).repeat(b, 1).unsqueeze(-1)
            node = torch.cat([node, pf.expand(-1, spec.num_slots, -1) * filled], dim=-1)
        out = copy.copy(self.template(b))
        out.edge_attr = edge
        out.x = node
        return out

    def unbatch(self, edge_out: Tensor, node_out: Tensor, size: int) -> list[Tensor]:
        """Per-parameter tensors ``[B, *shape]`` from per-entry edge ``[B*E, K, 1]`` and per-slot node
        ``[B*N, P, 1]`` outputs of an encoder run on :meth:`batch` output (inverse placement)."""
        spec = self.spec
        e = edge_out.reshape(size, spec.num_edges, edge_out.shape[1]).permute(1, 2, 0)
        n = node_out.reshape(size, spec.num_nodes, node_out.shape[1]).permute(1, 2, 0)
        return [t.movedim(-1, 0) for t in spec.from_graph(e, n)]


def build_graphs(spec: GraphSpec, params: Sequence[Tensor]) -> list:
    """One :class:`~lopt_graphs.graph.NeuralGraph` per INR with ``neural_graph`` (the reference path)."""
    return [neural_graph(spec, [p[i] for p in params]) for i in range(params[0].shape[0])]
