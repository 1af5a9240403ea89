"""What is on the graph: a per-parameter table of a :class:`GraphSpec` (``print(opt.describe())``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .spec import GraphSpec


@dataclass(frozen=True)
class ParamRow:
    """One parameter: its name, shape, kind (``"edge"``, ``"node"``, ``"free"``), why it is free, and (from an
    optimizer's :meth:`~lopt_graphs.optim.NeuralGraphOptimizer.describe`) the step it takes."""

    name: str
    shape: tuple[int, ...]
    kind: str
    numel: int
    reason: str = ""
    step: str = ""


@dataclass(frozen=True)
class GraphDescription:
    """Per-parameter placement of one or more parameter groups, with totals.

    ``str()`` gives a fixed-width table (one row per parameter, then totals per kind and any ``notes``, one line
    each); ``rows`` and :meth:`totals` give the same facts as data.
    """

    rows: tuple[ParamRow, ...]
    nodes: int
    edges: int
    built_by: str = ""
    notes: tuple[str, ...] = ()  # from an optimizer: for example the step schedule each group runs

    def totals(self) -> dict[str, tuple[int, int]]:
        """``kind -> (number of parameters, number of entries)`` for ``edge``, ``node`` and ``free``."""
        out = {k: (0, 0) for k in ("edge", "node", "free")}
        for r in self.rows:
            n, e = out[r.kind]
            out[r.kind] = (n + 1, e + r.numel)
        return out

    @property
    def free(self) -> list[ParamRow]:
        return [r for r in self.rows if r.kind == "free"]

    def __str__(self) -> str:
        name_w = max([len("parameter")] + [len(r.name) for r in self.rows])
        shape_w = max([len("shape")] + [len(str(tuple(r.shape))) for r in self.rows])
        step_w = max([len("step")] + [len(r.step) for r in self.rows]) if any(r.step for r in self.rows) else 0
        step = (lambda text: f"{text:<{step_w}}  ") if step_w else (lambda text: "")  # the column, if any
        rule = "-" * (name_w + shape_w + len(step("")) + 36)
        lines = [f"{'parameter':<{name_w}}  {'shape':<{shape_w}}  {'kind':<4}  {'entries':>10}  {step('step')}"
                 "reason (if free)", rule]
        for r in self.rows:
            lines.append(f"{r.name:<{name_w}}  {str(tuple(r.shape)):<{shape_w}}  {r.kind:<4}  {r.numel:>10,}  "
                         f"{step(r.step)}{r.reason}".rstrip())
        tot = self.totals()
        all_n = sum(n for n, _ in tot.values())
        all_e = sum(e for _, e in tot.values()) or 1
        lines.append(rule)
        for k in ("edge", "node", "free"):
            n, e = tot[k]
            lines.append(f"{k:<5} {n:>4} of {all_n} parameters, {e:>12,} entries ({100 * e / all_e:5.1f}%)")
        how = f", built by {self.built_by}" if self.built_by else ""
        lines.append(f"graph: {self.nodes:,} nodes, {self.edges:,} edges{how}")
        lines.extend(self.notes)
        return "\n".join(lines)

    __repr__ = __str__


def describe_spec(spec: GraphSpec | Sequence[GraphSpec], names: Sequence[str] | Sequence[Sequence[str]] | None = None,
                  ) -> GraphDescription:
    """Describe where each parameter of ``spec`` (or of several group specs) lives.

    Args:
        spec: one spec, or one per parameter group.
        names: parameter names (one list per spec when several); default ``"param {i}"``
            (``"group {g} param {i}"`` with several groups).

    Returns:
        A :class:`GraphDescription` (print it for a table).
    """
    specs = [spec] if isinstance(spec, GraphSpec) else list(spec)
    if names is None:
        all_names = [[f"param {i}" if len(specs) == 1 else f"group {g} param {i}" for i in range(len(s.params))]
                     for g, s in enumerate(specs)]
    else:
        all_names = [list(names)] if isinstance(spec, GraphSpec) else [list(n) for n in names]  # type: ignore[arg-type]
    rows = []
    for s, ns in zip(specs, all_names):
        if len(ns) != len(s.params):
            raise ValueError(f"Expected {len(s.params)} parameter names for this graph, got {len(ns)}")
        rows += [ParamRow(n, tuple(p.shape), p.kind, p.numel, p.reason) for n, p in zip(ns, s.params)]
    built = sorted({s.built_by for s in specs if s.built_by})
    return GraphDescription(tuple(rows), sum(s.num_nodes for s in specs), sum(s.num_edges for s in specs),
                            ", ".join(built))
