"""pytest-benchmark suite for topk and relevant_ranks (small sizes; compare_search.py has the peers).

    python -m pytest benchmarks/bench_search.py --benchmark-only
"""
import pytest
import torch

import hbfast

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(500, 384, generator=g), torch.randn(30000, 384, generator=g)


@pytest.mark.parametrize("k", [10, 1000])
def test_topk(benchmark, data, k):
    q, c = data
    scores, ids = benchmark(hbfast.topk, q, c, k)
    assert ids.shape == (500, k)


@pytest.mark.parametrize("k", [10, 1000])
def test_faiss_knn(benchmark, data, k):
    q, c = data
    qn, cn = q.numpy(), c.numpy()
    benchmark(faiss.knn, qn, cn, k, metric=faiss.METRIC_INNER_PRODUCT)


def test_relevant_ranks(benchmark, data):
    q, c = data
    relevant = torch.randint(0, len(c), (len(q), 11), generator=torch.Generator().manual_seed(1))
    ranks = benchmark(hbfast.relevant_ranks, q, c, relevant)
    assert (ranks >= 1).all()


def test_bare_matmul(benchmark, data):
    q, c = data
    benchmark(torch.matmul, q, c.T)
