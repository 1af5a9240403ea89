"""Scatter aggregations written out-of-place, so they work under ``torch.func.vmap`` and ``grad``."""

from __future__ import annotations

import torch
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, num: int) -> Tensor:
    """Sum rows of ``src`` ``[E, D]`` into ``[num, D]`` by ``index`` ``[E]``."""
    return src.new_zeros(num, *src.shape[1:]).index_add(0, index, src)


def degree(index: Tensor, num: int, like: Tensor) -> Tensor:
    """``[num, 1]`` count of entries per target (float, dtype of ``like``)."""
    return scatter_sum(like.new_ones(index.shape[0], 1), index, num)


def scatter_max(src: Tensor, index: Tensor, num: int) -> Tensor:
    """Max of rows of ``src`` per target; 0 for targets with no entry."""
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    out = src.new_zeros(num, *src.shape[1:])
    return out.scatter_reduce(0, idx, src, reduce="amax", include_self=False)


def pna_aggregate(msg: Tensor, index: Tensor, num: int, avg_log_deg: float = 1.0) -> Tensor:
    """PNA-style aggregation: ``[mean, max, std]`` and the same scaled by ``log(deg+1)/avg_log_deg``.

    Args:
        msg: ``[E, D]`` messages.
        index: ``[E]`` target of each message.
        num: number of targets.
        avg_log_deg: normaliser of the amplification scaler.

    Returns:
        ``[num, 6 * D]``.
    """
    deg = degree(index, num, msg)
    denom = deg.clamp(min=1.0)
    mean = scatter_sum(msg, index, num) / denom
    sq = scatter_sum(msg * msg, index, num) / denom
    std = (sq - mean * mean).clamp(min=0.0).add(1e-6).sqrt()
    mx = scatter_max(msg, index, num)
    base = torch.cat([mean, mx, std], dim=-1)
    scale = torch.log(deg + 1.0) / avg_log_deg
    return torch.cat([base, base * scale], dim=-1)


def segment_softmax(scores: Tensor, index: Tensor, num: int) -> Tensor:
    """Softmax of ``scores`` ``[E, H]`` over the entries sharing a target (numerically stable)."""
    mx = scatter_max(scores.detach(), index, num)
    ex = (scores - mx.index_select(0, index)).exp()
    den = scatter_sum(ex, index, num).index_select(0, index)
    return ex / den.clamp(min=1e-16)


def pna_aggregate_blocks(msg: Tensor, blocks: list[list[int]], num: int, to: str,
                         avg_log_deg: float = 1.0) -> Tensor:
    """:func:`pna_aggregate` for graphs made of dense weight blocks, with dense reductions.

    Edges of one weight ``[O, C]`` are stored contiguously in row-major order (see
    :class:`~lopt_graphs.graph.GraphSpec`), so aggregating to destinations is a reduction over dim 1 of a
    ``[O, C, D]`` view and to sources one over dim 0: far cheaper than scatters on CPU for large weights.
    Same result as :func:`pna_aggregate` up to float summation order.

    Args:
        msg: ``[E, D]`` messages.
        blocks: rows ``(edge_start, rows, cols, dst_start, src_start)``, one per weight.
        num: number of nodes.
        to: ``"dst"`` (aggregate at the neuron a weight feeds) or ``"src"`` (at the neuron it reads).
    """
    d = msg.shape[-1]
    tot = msg.new_zeros(num, d)
    sq = msg.new_zeros(num, d)
    deg = msg.new_zeros(num, 1)
    idx_l, mx_l = [], []
    for e0, rows, cols, d0, s0 in blocks:
        v = msg[e0: e0 + rows * cols].view(rows, cols, d)
        dim, start, n, cnt = (1, d0, rows, cols) if to == "dst" else (0, s0, cols, rows)
        idx = torch.arange(start, start + n, device=msg.device)
        tot = tot.index_add(0, idx, v.sum(dim))
        sq = sq.index_add(0, idx, (v * v).sum(dim))
        deg = deg.index_add(0, idx, msg.new_full((n, 1), float(cnt)))
        idx_l.append(idx)
        mx_l.append(v.amax(dim))
    mx = scatter_max(torch.cat(mx_l), torch.cat(idx_l), num)
    denom = deg.clamp(min=1.0)
    mean = tot / denom
    std = (sq / denom - mean * mean).clamp(min=0.0).add(1e-6).sqrt()
    base = torch.cat([mean, mx, std], dim=-1)
    scale = torch.log(deg + 1.0) / avg_log_deg
    return torch.cat([base, base * scale], dim=-1)
