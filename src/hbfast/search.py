"""Exact search: top-k and the ranks of known relevant items (plain-PyTorch stand-in for the fused kernels)."""
from __future__ import annotations

import torch

_METRICS = ("ip", "cos")
_CHUNK_ELEMENTS = 1 << 24  # scores held at once: [chunk, nc] float32 = 64 MiB


def _scores_setup(queries: torch.Tensor, corpus: torch.Tensor, metric: str, what: str):
    if metric not in _METRICS:
        raise ValueError(f"{what}: metric must be one of {_METRICS}, got {metric!r}")
    for name, x in (("queries", queries), ("corpus", corpus)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{what}: {name} must be 2-D [n, d], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{what}: {name} must be a float tensor, got {x.dtype}")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"{what}: queries [.., {queries.shape[1]}] and corpus [.., {corpus.shape[1]}] differ in d")
    if corpus.shape[0] == 0:
        raise ValueError(f"{what}: the corpus is empty")
    q, c = queries.float(), corpus.float()
    if metric == "cos":
        q = torch.nn.functional.normalize(q, dim=1)
        c = torch.nn.functional.normalize(c, dim=1)
    chunk = max(1, _CHUNK_ELEMENTS // corpus.shape[0])
    return q, c, chunk


def topk(queries: torch.Tensor, corpus: torch.Tensor, k: int, *, metric: str = "ip"):
    """Exact top-k: (scores float32 [nq, k], ids int64 [nq, k]); higher score first, then lower id."""
    q, c, chunk = _scores_setup(queries, corpus, metric, "topk")
    if not 1 <= k <= corpus.shape[0]:
        raise ValueError(f"topk: k must be in [1, {corpus.shape[0]}], got {k}")
    out_scores, out_ids = [], []
    for start in range(0, q.shape[0], chunk):
        scores = q[start:start + chunk] @ c.T  # [chunk, nc]
        # stable descending sort keeps lower ids first among equal scores
        s, i = torch.sort(scores, dim=1, descending=True, stable=True)
        out_scores.append(s[:, :k])
        out_ids.append(i[:, :k])
    if not out_scores:
        return torch.empty(0, k, device=queries.device), torch.empty(0, k, dtype=torch.int64, device=queries.device)
    return torch.cat(out_scores), torch.cat(out_ids)


def relevant_ranks(queries: torch.Tensor, corpus: torch.Tensor, relevant: torch.Tensor, *, metric: str = "ip"):
    """1-based ranks [nq, r] (int64) of the corpus ids in ``relevant`` in each query's full ranking.

    Ties are broken by lower corpus id; entries of ``relevant`` equal to -1 are padding and give -1.
    """
    q, c, chunk = _scores_setup(queries, corpus, metric, "relevant_ranks")
    if not isinstance(relevant, torch.Tensor) or relevant.dtype != torch.int64:
        raise TypeError("relevant_ranks: relevant must be an int64 tensor")
    if relevant.dim() != 2 or relevant.shape[0] != queries.shape[0]:
        raise ValueError(f"relevant_ranks: relevant must be [nq={queries.shape[0]}, r], got {tuple(relevant.shape)}")
    if ((relevant < -1) | (relevant >= corpus.shape[0])).any():
        raise ValueError(f"relevant_ranks: relevant ids must be -1 (padding) or in [0, {corpus.shape[0]})")
    relevant = relevant.to(queries.device)
    ranks = torch.full(relevant.shape, -1, dtype=torch.int64, device=queries.device)
    ids = torch.arange(corpus.shape[0], device=queries.device)
    for start in range(0, q.shape[0], chunk):
        scores = q[start:start + chunk] @ c.T  # [chunk, nc]
        rel = relevant[start:start + chunk]  # [chunk, r]
        rel_scores = scores.gather(1, rel.clamp(min=0))  # [chunk, r]
        for j in range(rel.shape[1]):
            threshold = rel_scores[:, j:j + 1]
            higher = (scores > threshold).sum(1)
            tied_before = ((scores == threshold) & (ids < rel[:, j:j + 1])).sum(1)
            ranks[start:start + chunk, j] = torch.where(rel[:, j] >= 0, 1 + higher + tied_before, -1)
    return ranks
