"""Typed configuration of the neural-graph encoder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..config import reject_unknown_keys


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of :class:`~lopt_graphs.nn.NeuralGraphEncoder`.

    Attributes:
        variant: ``"gnn"`` (NG-GNN: PNA-style message passing with FiLM edge conditioning) or
            ``"transformer"`` (NG-Transformer: relational attention over graph edges with edge features).
        node_in: features per node slot (``x.shape[-1]``).
        edge_in: features per edge entry (``edge_attr.shape[-1]``).
        hidden: node embedding width.
        edge_hidden: edge embedding width (kept small: there are far more edges than neurons).
        layers: message-passing layers.
        heads: attention heads (transformer only); must divide ``hidden``.
        edge_out: outputs per edge entry from the equivariant edge head (0: no head).
        node_out: outputs per node slot from the equivariant node head (0: no head).
        graph_out: outputs of the invariant pooled readout (0: no readout).
        max_positions: size of the positional tables of input and output neurons.
        position_overflow: what a positional id ``>= max_positions`` does: ``"error"`` raises, ``"wrap"``
            uses ``id % max_positions`` (input/output neurons are never permuted, so wrapping only shares
            embeddings between far-apart inputs; the learned optimizer uses it to accept any width).
        max_kernel: kernel entries with a learned position embedding (later entries get none).
        entry_nonlinearity: apply a ReLU to each embedded kernel entry before averaging them (a DeepSets
            encoder of the kernel). Without it (the default, with which every shipped checkpoint and
            reported result was made) the average of linear maps sees only the kernel's mean plus positions
            when there is one feature per entry; turning it on is a pending experiment.
    """

    variant: Literal["gnn", "transformer"] = "gnn"
    node_in: int = 1
    edge_in: int = 1
    hidden: int = 32
    edge_hidden: int = 16
    layers: int = 2
    heads: int = 4
    edge_out: int = 0
    node_out: int = 0
    graph_out: int = 0
    max_positions: int = 4096
    position_overflow: Literal["error", "wrap"] = "error"
    max_kernel: int = 64
    entry_nonlinearity: bool = False

    def __post_init__(self) -> None:
        if self.variant not in ("gnn", "transformer"):
            raise ValueError(f"Invalid encoder variant: {self.variant!r} (expected 'gnn' or 'transformer')")
        for f in ("node_in", "edge_in", "hidden", "edge_hidden", "max_positions", "max_kernel", "heads"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise ValueError(f"Invalid {f}: {getattr(self, f)!r} (expected a positive int)")
        for f in ("layers", "edge_out", "node_out", "graph_out"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 0:
                raise ValueError(f"Invalid {f}: {getattr(self, f)!r} (expected a non-negative int)")
        if self.position_overflow not in ("error", "wrap"):
            raise ValueError(f"Invalid position_overflow: {self.position_overflow!r} (expected 'error' or 'wrap')")
        if self.variant == "transformer" and self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
        """Build from a dict; unknown keys are an error."""
        reject_unknown_keys(cls, d, "encoder")
        return cls(**d)
