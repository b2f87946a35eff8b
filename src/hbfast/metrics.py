"""Retrieval metrics from ranks (plain-PyTorch stand-in for the fused kernels)."""
from __future__ import annotations

import torch


def average_precision(ranks: torch.Tensor, n_relevant) -> torch.Tensor:
    """Per-query AP (float64 [nq]) from 1-based ranks [nq, r] of relevant items (-1 = padding).

    trec_eval definition: sum over relevant items of (relevant items ranked at or above it) / rank,
    divided by ``n_relevant`` (an int or a [nq] tensor).
    """
    if ranks.dim() != 2:
        raise ValueError(f"average_precision: ranks must be [nq, r], got shape {tuple(ranks.shape)}")
    valid = ranks > 0
    big = torch.iinfo(torch.int64).max
    sorted_ranks, _ = torch.sort(torch.where(valid, ranks, big), dim=1)  # padding last
    position = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=ranks.device)
    found = sorted_ranks != big
    precision = torch.where(found, position / sorted_ranks.clamp(max=2**52).double(), 0.0)
    n = torch.as_tensor(n_relevant, dtype=torch.float64, device=ranks.device)
    return precision.sum(1) / n


def max_rank_distance(ranks: torch.Tensor) -> float:
    """Mean over queries of max - min of the non-padding ranks (0 for queries with fewer than 2)."""
    if ranks.dim() != 2:
        raise ValueError(f"max_rank_distance: ranks must be [nq, r], got shape {tuple(ranks.shape)}")
    if ranks.shape[0] == 0:
        return 0.0
    valid = ranks > 0
    big = torch.iinfo(torch.int64).max
    highest = torch.where(valid, ranks, 0).max(1).values
    lowest = torch.where(valid, ranks, big).min(1).values
    distance = torch.where(valid.sum(1) >= 2, highest - lowest, 0)
    return float(distance.double().mean())
