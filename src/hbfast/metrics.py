"""Retrieval metrics with trec_eval's definitions, computed in C++ from ranks or from runs.

Two inputs:
- ranks: int64 [nq, r], the 1-based rank of each relevant item of each query (``relevant_ranks``
  gives them over a full ranking), -1 for padding or an item that was not retrieved;
- runs: (scores [nq, depth], ids [nq, depth]) arrays (``topk`` output) with qrels as
  (ids [nq, r], gains [nq, r]) arrays padded with -1, or pytrec_eval-style dicts
  ``{qid: {docid: score}}`` and ``{qid: {docid: gain}}`` (converted first, which costs time).

Definitions (trec_eval): an item is relevant when its gain is > 0 (trec_eval's relevance level 1
for integer gains). AP sums the precision at the rank of every retrieved relevant item and divides
by the number of relevant items, retrieved or not; reciprocal rank is 1 / rank of the first
relevant item (0 if none); nDCG uses the gain itself with a 1 / log2(rank + 1) discount and the
ideal ordering of all relevant items; recall@k divides by the number of relevant items and
precision@k by k. Runs rank by score, ties by lower corpus id; dict runs map doc ids to integers in
descending string order, so ties fall as in trec_eval (higher docno first). Results are numpy.
"""
from __future__ import annotations

import re
from numbers import Integral
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .ops.ext import kernels

# Kinds in csrc/cpu/metrics_cpu.h.
_AP, _RR, _NDCG, _RECALL, _PRECISION = range(5)
_NAMES = {"map": _AP, "ap": _AP, "mrr": _RR, "recip_rank": _RR, "ndcg": _NDCG, "recall": _RECALL, "precision": _PRECISION, "p": _PRECISION}
_TREC_CUT = {"map_cut": _AP, "ndcg_cut": _NDCG, "recall": _RECALL, "p": _PRECISION}
SUPPORTED = "map, mrr, ndcg, recall, with optional @k, and precision@k (pytrec_eval names map_cut_k, recip_rank, ndcg_cut_k, recall_k, P_k too)"


def parse_metric(name: str) -> Tuple[int, int]:
    """'ndcg@10' / 'ndcg_cut_10' -> (kind, cutoff); cutoff 0 means the whole ranking."""
    if not isinstance(name, str):
        raise TypeError(f"metric names are strings, got {type(name).__name__}")
    low = name.strip().lower()
    m = re.fullmatch(r"([a-z_]+)@(\d+)", low)
    if m and m.group(1) in _NAMES and int(m.group(2)) > 0:
        return _NAMES[m.group(1)], int(m.group(2))
    m = re.fullmatch(r"([a-z_]+?)_(\d+)", low)
    if m and m.group(1) in _TREC_CUT and int(m.group(2)) > 0:
        return _TREC_CUT[m.group(1)], int(m.group(2))
    if low in _NAMES and _NAMES[low] != _PRECISION:
        return _NAMES[low], 0
    raise ValueError(f"unknown metric {name!r}: supported are {SUPPORTED}")


# ----------------------------------------------------------------------------------------------
def _to_numpy(name: str, x) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_ranks(ranks) -> np.ndarray:
    r = _to_numpy("ranks", ranks)
    if r.dtype == np.bool_ or not np.issubdtype(r.dtype, np.integer):
        raise TypeError(f"ranks must hold integers (1-based ranks, -1 for padding), got dtype {r.dtype}")
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2:
        raise ValueError(f"ranks must be [nq, r] (or [nq]), got shape {r.shape}")
    r = np.ascontiguousarray(r, dtype=np.int64)
    if r.size and ((r < 1) & (r != -1)).any():
        raise ValueError("ranks must be 1-based (>= 1), or -1 for padding / not retrieved")
    return r


def _check_n_relevant(n_relevant, nq: int) -> Optional[np.ndarray]:
    if n_relevant is None:
        return None
    if isinstance(n_relevant, Integral) and not isinstance(n_relevant, bool):
        n = np.full(nq, float(n_relevant))
    else:
        n = _to_numpy("n_relevant", n_relevant)
        if n.dtype == np.bool_ or not np.issubdtype(n.dtype, np.number):
            raise TypeError(f"n_relevant must be an int or a per-query array of counts, got dtype {n.dtype}")
        if n.shape != (nq,):
            raise ValueError(f"n_relevant must be an int or have one count per query ({nq}), got shape {n.shape}")
        n = n.astype(np.float64)
    if (n < 0).any() or not np.isfinite(n).all():
        raise ValueError("n_relevant must be finite and >= 0")
    return np.ascontiguousarray(n)


def _run_metrics(ranks: np.ndarray, names: Sequence[str], gains=None, n_relevant=None) -> Dict[str, np.ndarray]:
    if isinstance(names, str):
        names = [names]
    specs = [parse_metric(n) for n in names]
    kinds = np.array([s[0] for s in specs], dtype=np.int32)
    cutoffs = np.array([s[1] for s in specs], dtype=np.int64)
    values = kernels.ranked_metrics(ranks, gains, n_relevant, kinds, cutoffs)  # [m, nq]
    return {name: values[i] for i, name in enumerate(names)}


def _single(ranks, name: str, n_relevant=None) -> np.ndarray:
    r = _check_ranks(ranks)
    return _run_metrics(r, [name], None, _check_n_relevant(n_relevant, r.shape[0]))[name]


# ---- from ranks ----------------------------------------------------------------------------------
def average_precision(ranks, n_relevant=None) -> np.ndarray:
    """trec_eval's AP per query: float64 [nq].

    ranks: [nq, r] 1-based ranks of the relevant items (-1: padding or not retrieved);
    n_relevant: int or [nq] counts of relevant items (default: the non -1 entries of each row).
    """
    return _single(ranks, "map", n_relevant)


def reciprocal_rank(ranks, k: Optional[int] = None) -> np.ndarray:
    """1 / rank of the first relevant item (0 when none, or none within the top k): float64 [nq]."""
    return _single(ranks, f"mrr@{k}" if k else "mrr")


def ndcg(ranks, k: Optional[int] = None) -> np.ndarray:
    """nDCG (binary gains) per query, over the top k when given: float64 [nq]."""
    return _single(ranks, f"ndcg@{k}" if k else "ndcg")


def recall(ranks, k: int, n_relevant=None) -> np.ndarray:
    """Relevant items within the top k / relevant items: float64 [nq]."""
    return _single(ranks, f"recall@{k}", n_relevant)


def precision(ranks, k: int) -> np.ndarray:
    """Relevant items within the top k / k: float64 [nq]."""
    return _single(ranks, f"precision@{k}")


def rank_distance(ranks) -> np.ndarray:
    """Per query, max - min rank among its relevant (non -1) items; 0 with fewer than 2: float64 [nq]."""
    r = _check_ranks(ranks)
    valid = r > 0
    hi = np.where(valid, r, np.iinfo(np.int64).min).max(axis=1, initial=np.iinfo(np.int64).min)
    lo = np.where(valid, r, np.iinfo(np.int64).max).min(axis=1, initial=np.iinfo(np.int64).max)
    return np.where(valid.sum(axis=1) >= 2, hi - lo, 0).astype(np.float64)


def max_rank_distance(ranks) -> float:
    """Language bias (LAReQA / arXiv 2408.10536): the mean over queries of the maximum rank distance
    (highest minus lowest rank) among each query's relevant items. Queries with fewer than 2
    relevant (non -1) items count as 0."""
    d = rank_distance(ranks)
    return float(d.mean()) if d.size else 0.0


def evaluate_ranks(ranks, metrics: Sequence[str], *, gains=None, n_relevant=None, per_query: bool = False):
    """Several metrics from ranks at once: {name: mean} (or {name: float64 [nq]} with per_query)."""
    r = _check_ranks(ranks)
    g = None
    if gains is not None:
        g = np.ascontiguousarray(_to_numpy("gains", gains), dtype=np.float64)
        if g.ndim == 1:
            g = g[:, None]
        if g.shape != r.shape:
            raise ValueError(f"gains must match ranks {r.shape}, got shape {g.shape}")
    out = _run_metrics(r, metrics, g, _check_n_relevant(n_relevant, r.shape[0]))
    return out if per_query else {k: float(v.mean()) if v.size else 0.0 for k, v in out.items()}


# ---- from runs --------------------------------------------------------------------------------------
def _run_arrays(run) -> Tuple[np.ndarray, np.ndarray]:
    if not (isinstance(run, (tuple, list)) and len(run) == 2):
        raise TypeError("run must be (scores [nq, depth], ids [nq, depth]) arrays or a {qid: {docid: score}} dict")
    scores, ids = _to_numpy("run scores", run[0]), _to_numpy("run ids", run[1])
    if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"run ids must be integers, got dtype {ids.dtype}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise TypeError(f"run scores must be floats, got dtype {scores.dtype}")
    if scores.ndim != 2 or scores.shape != ids.shape:
        raise ValueError(f"run scores and ids must both be [nq, depth], got {scores.shape} and {ids.shape}")
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    if not np.isfinite(scores).all() and not np.isfinite(scores[ids >= 0]).all():
        raise ValueError("run scores contain NaN or infinite values")
    return scores, np.ascontiguousarray(ids, dtype=np.int64)


def _qrels_arrays(qrels, nq: int) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(qrels, Mapping):
        rows: List[List[Tuple[int, float]]] = [[] for _ in range(nq)]
        for q, docs in qrels.items():
            try:
                qi = int(q)
            except (TypeError, ValueError):
                raise ValueError(f"with array runs, qrels keys must be query row numbers, got {q!r}") from None
            if not 0 <= qi < nq:
                raise ValueError(f"qrels query {q!r} is outside the run's {nq} rows")
            rows[qi] = [(int(d), float(g)) for d, g in docs.items()]
        width = max((len(r) for r in rows), default=0)
        ids = np.full((nq, width), -1, dtype=np.int64)
        gains = np.zeros((nq, width), dtype=np.float64)
        for qi, r in enumerate(rows):
            for j, (d, g) in enumerate(r):
                ids[qi, j], gains[qi, j] = d, g
        return ids, gains
    if isinstance(qrels, (tuple, list)) and len(qrels) == 2:
        ids, gains = _to_numpy("qrels ids", qrels[0]), _to_numpy("qrels gains", qrels[1])
    else:
        ids, gains = _to_numpy("qrels ids", qrels), None
    if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"qrels ids must be integers, got dtype {ids.dtype}")
    if ids.ndim == 1:
        ids = ids[:, None]
    if ids.ndim != 2 or ids.shape[0] != nq:
        raise ValueError(f"qrels ids must be [nq, r] with nq = {nq} (the run's rows), got shape {ids.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape[1] > 1:
        ordered = np.sort(ids, axis=1)
        repeats = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if repeats.any():
            row = int(repeats.any(axis=1).argmax())
            raise ValueError(f"qrels row {row} repeats a judged id; each row must list distinct ids (pad with -1)")
    if gains is None:
        gains = (ids >= 0).astype(np.float64)
    else:
        gains = np.asarray(gains, dtype=np.float64).reshape(ids.shape) if np.size(gains) == ids.size else None
        if gains is None:
            raise ValueError(f"qrels gains must match qrels ids {ids.shape}")
        if not np.isfinite(gains).all():
            raise ValueError("qrels gains contain NaN or infinite values")
        gains = np.where(ids >= 0, gains, 0.0)
    return ids, np.ascontiguousarray(gains)


def _dicts_to_arrays(run: Mapping, qrels: Mapping):
    """pytrec_eval dicts -> (scores, ids, qrel ids, gains, query ids) over the queries in both."""
    if not isinstance(qrels, Mapping):
        raise TypeError("a dict run needs dict qrels {qid: {docid: gain}}")
    qids = [q for q in run if q in qrels]
    docs = set()
    for q in qids:
        docs.update(run[q])
        docs.update(qrels[q])
    # Descending docno order -> ascending ints: ties fall as in trec_eval (higher docno first).
    doc_index = {d: i for i, d in enumerate(sorted(docs, reverse=True))}
    depth = max((len(run[q]) for q in qids), default=0)
    width = max((len(qrels[q]) for q in qids), default=0)
    scores = np.zeros((len(qids), depth), dtype=np.float32)
    ids = np.full((len(qids), depth), -1, dtype=np.int64)
    rel_ids = np.full((len(qids), width), -1, dtype=np.int64)
    gains = np.zeros((len(qids), width), dtype=np.float64)
    for i, q in enumerate(qids):
        row = run[q]
        n = len(row)
        ids[i, :n] = [doc_index[d] for d in row]
        scores[i, :n] = list(row.values())
        judged = qrels[q]
        rel_ids[i, : len(judged)] = [doc_index[d] for d in judged]
        gains[i, : len(judged)] = list(judged.values())
    return scores, ids, rel_ids, gains, qids


def evaluate(run, qrels, metrics: Union[str, Sequence[str]] = ("map", "mrr", "ndcg@10", "recall@10", "precision@10"), *,
             per_query: bool = False):
    """Evaluate a run against relevance judgements; returns {metric: mean over queries}.

    run: (scores [nq, depth], ids [nq, depth]) arrays or tensors (ids -1: empty slots), or a
    pytrec_eval run dict. qrels: (ids [nq, r], gains [nq, r]) arrays padded with -1, ids alone
    (gain 1), a dict {row: {id: gain}} for an array run, or a pytrec_eval qrels dict for a dict run
    (then the queries present in both are evaluated, as pytrec_eval does).
    metrics: names such as "map", "mrr", "ndcg@10", "recall@100", "precision@10" (or pytrec_eval's
    "ndcg_cut_10", "recip_rank", "P_10", "recall_10"). per_query: return float64 [nq] per metric
    (for dict runs, with the query ids under the key "query_ids").
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    for n in names:
        parse_metric(n)
    qids = None
    if isinstance(run, Mapping):
        scores, ids, rel_ids, gains, qids = _dicts_to_arrays(run, qrels)
        if not np.isfinite(scores[ids >= 0]).all():  # the same checks as for arrays
            raise ValueError("run scores contain NaN or infinite values")
        if not np.isfinite(gains[rel_ids >= 0]).all():
            raise ValueError("qrels gains contain NaN or infinite values")
    else:
        scores, ids = _run_arrays(run)
        rel_ids, gains = _qrels_arrays(qrels, ids.shape[0])
    ranks = kernels.run_ranks(ids, scores, rel_ids)  # [nq, r] rank of each judged item in the run, -1 if absent
    out = _run_metrics(ranks, names, gains, None)
    if per_query:
        if qids is not None:
            out["query_ids"] = qids
        return out
    return {k: float(v.mean()) if v.size else 0.0 for k, v in out.items()}
