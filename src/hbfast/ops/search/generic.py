"""The rank count of ``relevant_ranks`` in plain PyTorch, on any device: the same tile walk as the CUDA
kernel (``count_beating_cuda``), the count written with torch operations.

Exists for the CUDA safety net (``ops.safety``): when the CUDA kernels fail their first-use check on a
device, relevant_ranks (and ShardedIndex.relevant_ranks) count with this instead, within the same
memory bound. (topk and range_search fall back to ``hbfast.reference`` on the whole corpus.)
"""
from __future__ import annotations

import torch

_ELEMENTS = 1 << 25  # [rows, r, tile] comparisons at a time


def count_tile(tile: torch.Tensor, first_id: int, rel_scores: torch.Tensor, rel: torch.Tensor,
               counts: torch.Tensor, own: torch.Tensor) -> None:
    """tile [tq, tc]: the scores of candidates first_id.. for tq queries; rel_scores, rel [tq, r]: each
    relevant item's score and id (-1: padding). Adds to counts [tq, r] the candidates that beat each item
    (a higher score, or an equal one and a lower id; never the item itself) and writes into own [tq, r]
    the score this tile gives each item it holds (hbfast's tie rule, common/select.h)."""
    tq, tc = tile.shape
    ids = torch.arange(first_id, first_id + tc, device=tile.device)  # [tc]
    step = max(1, _ELEMENTS // max(1, rel.shape[1] * tc))
    for i0 in range(0, tq, step):
        s = tile[i0 : i0 + step, None, :]  # [rows, 1, tc]
        rs, rid = rel_scores[i0 : i0 + step, :, None], rel[i0 : i0 + step, :, None]  # [rows, r, 1]
        beats = ((s > rs) | ((s == rs) & (ids < rid))) & (ids != rid) & (rid >= 0)
        counts[i0 : i0 + step] += beats.sum(-1)
    inside = (rel >= first_id) & (rel < first_id + tc)
    own.copy_(torch.where(inside, tile.gather(1, (rel - first_id).clamp(0, tc - 1)), own))
