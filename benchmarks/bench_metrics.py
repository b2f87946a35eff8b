"""pytest-benchmark suite for hbfast.metrics (compare_search.py --only metrics has pytrec_eval and ranx).

    python -m pytest benchmarks/bench_metrics.py --benchmark-only
"""
import numpy as np
import pytest

import hbfast

NAMES = ["map", "mrr", "ndcg@10", "recall@10", "precision@10"]


@pytest.fixture(scope="module")
def run():
    rng = np.random.default_rng(0)
    nq, depth, n_docs, r = 4000, 1000, 13014, 11
    ids = np.argsort(rng.random((nq, n_docs)), axis=1)[:, :depth].astype(np.int64)
    scores = np.sort(rng.random((nq, depth)).astype(np.float32), axis=1)[:, ::-1].copy()
    rel = np.stack([rng.choice(n_docs, r, replace=False) for _ in range(nq)])
    return scores, ids, rel


def test_evaluate_arrays(benchmark, run):
    scores, ids, rel = run
    out = benchmark(hbfast.metrics.evaluate, (scores, ids), rel, NAMES)
    assert set(out) == set(NAMES)


def test_average_precision_from_ranks(benchmark, run):
    rng = np.random.default_rng(1)
    ranks = np.stack([rng.choice(np.arange(1, 13015), 11, replace=False) for _ in range(13090)])
    ap = benchmark(hbfast.metrics.average_precision, ranks)
    assert ap.shape == (13090,)


def test_max_rank_distance(benchmark):
    ranks = np.random.default_rng(2).integers(1, 13015, (13090, 11))
    benchmark(hbfast.metrics.max_rank_distance, ranks)
