"""The CUDA range search and filtered / L2 top-k (csrc/cuda/range_cuda.cu) against the CPU kernels, with
tiles and the first result buffer shrunk so that small inputs cross query and corpus tiles and make the
walk grow its buffers and search a tile again. Skipped without a GPU."""
import numpy as np
import pytest
import torch

import hbfast
from hbfast.ops.search import radius
from testing import requires_cuda

pytestmark = requires_cuda


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(radius, "CUDA_QUERY_TILE", 16)
    monkeypatch.setattr(radius, "CUDA_CORPUS_TILE", 64)
    monkeypatch.setattr(radius, "CUDA_FIRST_CAPACITY", 7)  # grown (and the tile searched again) at once


def integer_data(nq, n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (nq, dim), generator=g).float(), torch.randint(-2, 3, (n, dim), generator=g).float()


def selectors(n):
    rng = np.random.default_rng(1)
    return [None, hbfast.IDSelectorRange(37, 190), hbfast.IDSelectorArray(rng.choice(n, 30, replace=False)),
            hbfast.IDSelectorBitmap(rng.random(n) < 0.4), hbfast.IDSelectorNot(hbfast.IDSelectorRange(20, n - 20))]


@pytest.mark.parametrize("metric,threshold", [("ip", 0.0), ("ip", 3.0), ("l2", 9.0)])
def test_range_search_on_the_gpu_equals_the_cpu(small_tiles, metric, threshold):
    q, c = integer_data(37, 300, 6, seed=3)
    for selector in selectors(300):
        got = hbfast.range_search(q.cuda(), c.cuda(), threshold, metric=metric, selector=selector)
        assert all(t.device.type == "cuda" for t in got)
        want = hbfast.range_search(q, c, threshold, metric=metric, selector=selector)
        for a, b in zip(got, want):
            assert torch.equal(a.cpu(), b)


def test_range_search_cosine_on_the_gpu(small_tiles):
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(20, 16, generator=g), torch.randn(500, 16, generator=g)
    lims, values, ids = hbfast.range_search(q.cuda(), c.cuda(), 0.3, metric="cosine")
    ref = hbfast.range_search(q, c, 0.3, metric="cosine", impl="reference")
    assert torch.equal(lims.cpu(), ref[0]) and torch.equal(ids.cpu(), ref[2])
    torch.testing.assert_close(values.cpu(), ref[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, 5, 70])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_topk_with_selector_or_l2_on_the_gpu(monkeypatch, k, metric):
    monkeypatch.setattr(radius, "CUDA_QUERY_TILE", 16)
    monkeypatch.setattr(radius, "CUDA_CORPUS_TILE", 64)
    q, c = integer_data(29, 300, 5, seed=k)
    for selector in selectors(300) + [hbfast.IDSelectorBatch([3, 250])]:
        got = hbfast.topk(q.cuda(), c.cuda(), k, metric=metric, selector=selector)
        want = hbfast.topk(q, c, k, metric=metric, selector=selector, impl="reference")
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


def test_range_search_on_the_gpu_rejects_non_finite_scores():
    q, c = integer_data(3, 40, 3, seed=0)
    c[5, 0], q[:, 0] = 3e38, 10.0
    with pytest.raises(ValueError, match="non-finite scores"):
        hbfast.range_search(q.cuda(), c.cuda(), 0.0)
