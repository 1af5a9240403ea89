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
