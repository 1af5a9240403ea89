"""Index arithmetic that turns layer records into a :class:`GraphSpec`.

Both front ends (a bare parameter list, an ``nn.Module``) describe a network as *neuron sets* (the outputs of
a layer, the network's input) and *layers* connecting two sets. Residual additions merge two sets into one
(their neurons must be permuted together), so sets live in a union-find structure. *Ties* say that blocks of
(possibly different) sets share one permutation of their units (an LSTM's gate blocks and hidden state);
a tie touching a pinned, input or output set is pinned as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import ACTIVATIONS, NODE_SLOTS, ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT, GraphSpec, ParamSlot


def _act_id(name: str) -> int:
    return ACTIVATIONS.index(name) if name in ACTIVATIONS else ACTIVATIONS.index("other")


class GraphBuildError(ValueError):
    """A parameter or module cannot be placed on a neural graph."""


@dataclass
class _Weight:
    param: int
    shape: tuple[int, ...]  # the parameter's shape
    src: int
    dst: int
    cols: int
    entries: int
    rows: int = 0  # 0: shape[0]
    transposed: bool = False
    src_offset: int = 0  # first neuron of the source set this weight reads
    dst_offset: int = 0  # first neuron of the destination set this weight writes


class GraphBuilder:
    """Collects neuron sets, layers and per-neuron parameters, then lays out nodes and edges."""

    def __init__(self, num_params: int):
        self.num_params = num_params
        self._parent: list[int] = []
        self._size: list[int | None] = []
        self._act: list[int] = []
        self._pinned: set[int] = set()
        self.weights: list[_Weight] = []
        self.node_params: dict[int, tuple[int, int, tuple[int, ...]]] = {}  # param -> (set, slot, shape)
        self.free: dict[int, tuple[tuple[int, ...], str]] = {}
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.ties: list[tuple[int, list[tuple[int, int, int]]]] = []  # (unit, [(set, offset, blocks)])
        self._block_act: dict[int, list[int]] = {}  # set -> activation id per neuron

    # -------------------------------------------------------------- neuron sets
    def new_set(self, size: int | None = None) -> int:
        self._parent.append(len(self._parent))
        self._size.append(size)
        self._act.append(0)
        return len(self._parent) - 1

    def find(self, s: int) -> int:
        while self._parent[s] != s:
            self._parent[s] = self._parent[self._parent[s]]
            s = self._parent[s]
        return s

    def size(self, s: int) -> int | None:
        return self._size[self.find(s)]

    def set_size(self, s: int, n: int, what: str) -> None:
        r = self.find(s)
        if self._size[r] is None:
            self._size[r] = n
        elif self._size[r] != n:
            raise GraphBuildError(f"{what}: expected {self._size[r]} neurons, got {n}")

    def union(self, a: int, b: int, what: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        sa, sb = self._size[ra], self._size[rb]
        if sa is not None and sb is not None and sa != sb:
            raise GraphBuildError(f"{what}: cannot merge neuron sets of sizes {sa} and {sb}")
        lo, hi = min(ra, rb), max(ra, rb)
        self._parent[hi] = lo
        self._size[lo] = sa if sa is not None else sb
        self._act[lo] = max(self._act[ra], self._act[rb])
        return lo

    def pin(self, s: int) -> None:
        """Mark set ``s`` as not freely permutable: something outside the graph (a free parameter, an
        unknown operation) reads its neurons by position, so they get positional ids like input neurons."""
        self._pinned.add(s)

    def set_activation(self, s: int, name: str) -> None:
        self._act[self.find(s)] = _act_id(name)

    def set_block_activations(self, s: int, names: list[str], unit: int) -> None:
        """Activations of consecutive blocks of ``unit`` neurons of set ``s`` (an LSTM's gate blocks)."""
        self._block_act[s] = [_act_id(n) for n in names for _ in range(unit)]

    def tie(self, unit: int, members: list[tuple[int, int, int]]) -> None:
        """Blocks of ``unit`` neurons that share one permutation of their units.

        Args:
            unit: neurons per block (an LSTM's hidden size).
            members: ``(set, offset, blocks)``: ``blocks`` consecutive blocks of set ``set`` starting at its
                neuron ``offset``. Every neuron of a set in a tie must be covered by ties (else the ties on
                it are pinned).
        """
        self.ties.append((unit, list(members)))

    # -------------------------------------------------------------- records
    def add_weight(self, param: int, shape: tuple[int, ...], src: int, dst: int, what: str,
                   flatten_ok: bool = False, transposed: bool = False) -> None:
        """A weight ``[O, I, *kernel]`` (conv) or ``[O, I]`` (linear) from set ``src`` to set ``dst``.

        For a linear layer reading a flattened conv output, ``I = C * S`` with ``C`` the size of ``src``:
        one edge per channel carries the ``S`` entries; ``flatten_ok`` says the source is a (pooled or
        flattened) conv output, where that grouping is legal. ``transposed``: the parameter is ``[I, O]``
        (an ``Embedding``'s ``[num_embeddings, dim]``).
        """
        if transposed:
            if len(shape) != 2:
                raise GraphBuildError(f"{what}: only a 2-D weight can be transposed, got shape {shape}")
            self.set_size(dst, shape[1], what)
            self.set_size(src, shape[0], what)
            self.weights.append(_Weight(param, tuple(shape), src, dst, cols=shape[0], entries=1, rows=shape[1],
                                        transposed=True))
            return
        out_f, in_f = shape[0], shape[1]
        kernel = 1
        for k in shape[2:]:
            kernel *= k
        self.set_size(dst, out_f, what)
        c = self.size(src)
        if c is None or (len(shape) > 2 and c == in_f):
            self.set_size(src, in_f, what)
            cols, entries = in_f, kernel
        elif len(shape) == 2 and (in_f == c or (flatten_ok and in_f % c == 0)):
            cols, entries = c, in_f // c  # identity (S=1), global pooling (S=1), or flatten (S>1)
        else:
            raise GraphBuildError(f"{what}: weight of shape {shape} takes {in_f} inputs, which does not fit "
                                  f"the {c} neurons/channels it is connected to")
        self.weights.append(_Weight(param, tuple(shape), src, dst, cols, entries))

    def add_block(self, param: int, shape: tuple[int, ...], src: int, src_offset: int, dst: int, dst_offset: int,
                  what: str) -> None:
        """A 2-D weight ``[O, I]`` reading neurons ``src_offset .. src_offset + I`` of set ``src`` and writing
        neurons ``dst_offset .. dst_offset + O`` of set ``dst`` (sets of known size; one direction of a
        bidirectional LSTM reads its half of the layer's output). Only sound when ties keep those ranges
        apart: a free permutation of the whole set would mix them."""
        for s, off, n in ((src, src_offset, shape[1]), (dst, dst_offset, shape[0])):
            size = self.size(s)
            if size is None or off < 0 or off + n > size:
                raise GraphBuildError(f"{what}: neurons {off}..{off + n} do not fit a set of {size} neurons")
        self.weights.append(_Weight(param, tuple(shape), src, dst, cols=shape[1], entries=1,
                                    src_offset=src_offset, dst_offset=dst_offset))

    def add_node_param(self, param: int, shape: tuple[int, ...], s: int, slot: str, what: str) -> None:
        numel = 1
        for d in shape:
            numel *= d
        self.set_size(s, numel, what)
        self.node_params[param] = (s, NODE_SLOTS.index(slot), tuple(shape))

    def add_free(self, param: int, shape: tuple[int, ...], reason: str) -> None:
        self.free[param] = (tuple(shape), reason)

    # -------------------------------------------------------------- layout
    def build(self, hidden_positions: bool = False) -> GraphSpec:
        """Lay out nodes (input set first, then sets in order of creation) and edges (weights in order).

        Args:
            hidden_positions: debugging switch that gives hidden neurons positional ids too, which breaks
                permutation equivariance on purpose (the tests use it to show they can fail).
        """
        missing = [i for i in range(self.num_params)
                   if i not in self.node_params and i not in self.free and all(w.param != i for w in self.weights)]
        if missing:
            raise GraphBuildError(f"Parameters {missing} were not placed on the graph (internal error)")
        if not self.weights and len(self.free) == self.num_params:
            return free_spec([shape for shape, _ in (self.free[i] for i in range(self.num_params))],
                             [reason for _, reason in (self.free[i] for i in range(self.num_params))])
        if not self.weights:
            raise GraphBuildError("The network has no weight that fits a neural graph (Linear/Conv1d/Conv2d); "
                                  "nothing to build a graph from")
        roots: list[int] = []
        for s in range(len(self._parent)):
            r = self.find(s)
            if r not in roots and self._size[r] is not None:
                roots.append(r)
        in_roots = {self.find(s) for s in self.inputs}
        pinned = {self.find(s) for s in self._pinned}
        out_roots = {self.find(s) for s in self.outputs}
        if in_roots & out_roots:
            raise GraphBuildError("The network's input and output neurons coincide; nothing to optimize as a graph")
        ties, tie_pinned = self._resolve_ties(in_roots | out_roots | pinned, hidden_positions)
        pinned |= tie_pinned
        block_act = {self.find(s): a for s, a in self._block_act.items()}
        order = [r for r in roots if r in in_roots] + [r for r in roots if r not in in_roots]
        start: dict[int, int] = {}
        roles, pos, acts, layers = [], [], [], []
        n = 0
        for layer_id, r in enumerate(order):
            size = self._size[r]
            start[r] = n
            role = ROLE_INPUT if r in in_roots else ROLE_OUTPUT if r in out_roots else ROLE_HIDDEN
            roles.append(torch.full((size,), role, dtype=torch.long))
            if role == ROLE_HIDDEN and not hidden_positions and r not in pinned:
                pos.append(torch.full((size,), -1, dtype=torch.long))
            else:
                pos.append(torch.arange(size))
            if r in block_act and len(block_act[r]) == size:
                acts.append(torch.tensor(block_act[r], dtype=torch.long))
            else:
                acts.append(torch.full((size,), self._act[r], dtype=torch.long))
            layers.append(torch.full((size,), layer_id, dtype=torch.long))
            n += size

        slots: list[ParamSlot | None] = [None] * self.num_params
        src_l, dst_l, size_l = [], [], []
        e = 0
        kmax = 1
        # Edges in parameter order, so that filling them is a concatenation in parameter order.
        for w in sorted(self.weights, key=lambda w: w.param):
            s0, d0 = start[self.find(w.src)] + w.src_offset, start[self.find(w.dst)] + w.dst_offset
            rows = w.rows or w.shape[0]
            slots[w.param] = ParamSlot("edge", w.shape, edge_start=e, rows=rows, cols=w.cols, entries=w.entries,
                                       dst_start=d0, src_start=s0, transposed=w.transposed)
            dst_l.append(d0 + torch.arange(rows).repeat_interleave(w.cols))
            src_l.append(s0 + torch.arange(w.cols).repeat(rows))
            size_l.append(torch.full((rows * w.cols,), w.entries, dtype=torch.long))
            e += rows * w.cols
            kmax = max(kmax, w.entries)
        used: dict[int, int] = {}  # neuron set -> slots taken
        placed = []
        for i in sorted(self.node_params):
            s, slot, shape = self.node_params[i]
            r = self.find(s)
            placed.append((i, r, slot, shape, used.get(r, 0)))
            used[r] = used.get(r, 0) + 1
        nslots = max(used.values(), default=1)
        slot_type = torch.zeros(n, nslots, dtype=torch.long)
        slot_index = []
        for i, r, slot, shape, pos_ in placed:
            n0 = start[r]
            slots[i] = ParamSlot("node", shape, dst_start=n0, slot=slot, slot_pos=pos_)
            numel = slots[i].numel
            slot_type[n0: n0 + numel, pos_] = 1 + slot
            slot_index.append((n0 + torch.arange(numel)) * nslots + pos_)
        for i, (shape, reason) in self.free.items():
            slots[i] = ParamSlot("free", shape, reason=reason)
        return GraphSpec(
            num_nodes=n, kmax=kmax, params=tuple(slots),
            edge_index=torch.stack([torch.cat(src_l), torch.cat(dst_l)]),
            edge_size=torch.cat(size_l), node_role=torch.cat(roles), node_pos=torch.cat(pos),
            node_act=torch.cat(acts), node_layer=torch.cat(layers), num_slots=nslots, node_slot_type=slot_type,
            node_slot_index=torch.cat(slot_index) if slot_index else torch.zeros(0, dtype=torch.long),
            tied=tuple(torch.cat([start[r] + off + torch.arange(cnt * unit).view(cnt, unit) for r, off, cnt in ms])
                       for unit, ms in ties),
        )

    def _resolve_ties(self, fixed: set[int], hidden_positions: bool
                      ) -> tuple[list[tuple[int, list[tuple[int, int, int]]]], set[int]]:
        """Ties on root sets: identical blocks join their ties into one group; a group whose blocks overlap
        others unevenly, leave part of a set uncovered, or touch a set in ``fixed`` (pinned, input, output)
        is pinned, and so are all sets it touches (transitively).

        Returns:
            ``(groups, pinned)``: the unpinned groups as ``(unit, [(root, offset, blocks)])`` and the roots
            to pin.
        """
        n = len(self.ties)
        parent = list(range(n))

        def find(g: int) -> int:
            while parent[g] != g:
                g = parent[g]
            return g

        bad: set[int] = set()
        by_root: dict[int, list[tuple[int, int, int, int]]] = {}
        for g, (unit, members) in enumerate(self.ties):
            for s, off, cnt in members:
                by_root.setdefault(self.find(s), []).append((off, off + cnt * unit, unit, g))
        for r, blocks in by_root.items():
            blocks.sort()
            covered, prev = 0, None
            for a, end, unit, g in blocks:
                if prev is not None and (a, end, unit) == prev[:3]:
                    parent[find(g)] = find(prev[3])  # the same neurons: one permutation
                    continue
                if a != covered:  # a gap or an uneven overlap
                    bad.update(b[3] for b in blocks)
                covered, prev = end, (a, end, unit, g)
            if self._size[r] is None or covered != self._size[r]:
                bad.update(b[3] for b in blocks)
        comps: dict[int, list[int]] = {}
        for g in range(n):
            comps.setdefault(find(g), []).append(g)
        roots_of = {c: {self.find(s) for g in gs for s, _, _ in self.ties[g][1]} for c, gs in comps.items()}
        pinned_c = {c for c, gs in comps.items() if hidden_positions or any(g in bad for g in gs)}
        pinned_r: set[int] = set()
        while True:
            pinned_r = set().union(*(roots_of[c] for c in pinned_c)) if pinned_c else set()
            more = {c for c in comps if c not in pinned_c and roots_of[c] & (fixed | pinned_r)}
            if not more:
                break
            pinned_c |= more
        groups = []
        for c, gs in comps.items():
            if c in pinned_c:
                continue
            members = list(dict.fromkeys((self.find(s), off, cnt) for g in gs for s, off, cnt in self.ties[g][1]))
            groups.append((self.ties[gs[0]][0], members))
        return groups, pinned_r


def free_spec(shapes: list[tuple[int, ...]], reasons: list[str]) -> GraphSpec:
    """A spec with no graph: every parameter takes the graph-free path."""
    z = torch.zeros(0, dtype=torch.long)
    return GraphSpec(num_nodes=0, kmax=1, params=tuple(ParamSlot("free", s, reason=r) for s, r in zip(shapes, reasons)),
                     edge_index=torch.zeros(2, 0, dtype=torch.long), edge_size=z, node_role=z, node_pos=z,
                     node_act=z, node_layer=z, num_slots=1, node_slot_type=torch.zeros(0, 1, dtype=torch.long),
                     node_slot_index=z)
