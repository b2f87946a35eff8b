"""hbfast.range_search and the id-filtered / L2 topk (hbfast.ops.search.radius, csrc/cpu/range_cpu.cpp) against
hbfast.reference and faiss: exact on integer data under every CPU product (fused blocks shrunk so small
inputs span several), with every selector; bad input raises clearly."""
import numpy as np
import pytest
import torch

import hbfast
from hbfast import reference
from hbfast.ops import _C
from hbfast.ops import gemm
from hbfast.ops.search import radius
from hbfast.ops.search.selectors import TileFilter

faiss = pytest.importorskip("faiss")

HEAP_MAX_K = _C.TOPK_HEAP_MAX_K


@pytest.fixture(params=list(gemm.BACKENDS) + ["mkl-unfused"])
def backend(request, monkeypatch):
    """One product forced ("mkl-unfused": torch's product, then the C++ epilogue), small tiles and blocks."""
    monkeypatch.setenv("HBFAST_GEMM", request.param.split("-")[0])
    if request.param == "mkl-unfused":
        monkeypatch.setattr(gemm, "TORCH_MKL", False)
    monkeypatch.setattr(radius, "CPU_CORPUS_TILE", 64)
    monkeypatch.setattr(radius, "CPU_QUERY_TILE", 8)
    monkeypatch.setattr(radius, "CPU_FEW_QUERIES_TILE_FACTOR", 1)
    _C.set_fused_blocks(5, 7)
    yield request.param
    _C.set_fused_blocks(0, 0)


def integer_data(nq, n, dim, seed):
    """Small integers: exact products and distances, many of them exactly at the threshold."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (nq, dim), generator=g).float(), torch.randint(-2, 3, (n, dim), generator=g).float()


def selectors(n):
    rng = np.random.default_rng(1)
    return {
        None: None,
        "range": hbfast.IDSelectorRange(37, 190),
        "array": hbfast.IDSelectorArray(rng.choice(n, 30, replace=False)),
        "bitmap": hbfast.IDSelectorBitmap(rng.random(n) < 0.4),
        "bytes": hbfast.IDSelectorBitmap(np.packbits(rng.random(n - 20) < 0.5, bitorder="little")),
        "not": hbfast.IDSelectorNot(hbfast.IDSelectorRange(20, n - 20)),
        "few": hbfast.IDSelectorBatch([3, 250]),
    }


def assert_same(got, want):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


@pytest.mark.parametrize("metric,thresholds", [("ip", [-1, 0, 3]), ("l2", [4, 9, 30])])
@pytest.mark.parametrize("sel", [None, "range", "array", "bitmap", "bytes", "not"])
def test_range_search_is_exact(backend, metric, thresholds, sel):
    q, c = integer_data(19, 260, 6, seed=len(str(sel)))
    selector = selectors(260)[sel]
    for threshold in thresholds:
        got = hbfast.range_search(q, c, threshold, metric=metric, selector=selector)
        want = hbfast.range_search(q, c, threshold, metric=metric, selector=selector, impl="reference")
        assert_same(got, want)
        lims, values, ids = got
        assert lims[0] == 0 and (lims.diff() >= 0).all() and len(values) == len(ids) == lims[-1]
        if selector is not None:
            assert selector.mask(260)[ids.numpy()].all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_range_search_fewer_queries_than_threads(backend, metric):
    """Fewer queries than threads: the fused kernel splits the columns between threads instead."""
    threads = hbfast.get_num_threads()
    hbfast.set_num_threads(4)
    try:
        for nq in (1, 2, 3, 5):
            q, c = integer_data(nq, 300, 6, seed=nq)
            for sel in (None, "range", "bitmap"):
                selector = selectors(300)[sel]
                got = hbfast.range_search(q, c, 3 if metric == "ip" else 9, metric=metric, selector=selector)
                assert_same(got, hbfast.range_search(q, c, 3 if metric == "ip" else 9, metric=metric, selector=selector,
                                                     impl="reference"))
    finally:
        hbfast.set_num_threads(threads)


@pytest.mark.parametrize("k", [1, 5, HEAP_MAX_K + 1, 150])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("sel", [None, "range", "array", "bitmap", "not", "few"])
def test_topk_with_selector_or_l2_is_exact(backend, k, metric, sel):
    q, c = integer_data(13, 260, 5, seed=k)
    selector = selectors(260)[sel]
    got = hbfast.topk(q, c, k, metric=metric, selector=selector)
    want = hbfast.topk(q, c, k, metric=metric, selector=selector, impl="reference")
    assert_same(got, want)
    if sel == "few":  # two ids selected: the rest is padding
        assert (got[1][:, 2:] == -1).all() and (got[0][:, 2:].abs() == float("inf")).all()


def test_topk_l2_and_selector_match_faiss():
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(25, 32, generator=g), torch.randn(700, 32, generator=g)
    D, I = hbfast.topk(q.numpy(), c.numpy(), 20, metric="l2")
    index = faiss.IndexFlatL2(32)
    index.add(c.numpy())
    D_f, I_f = index.search(q.numpy(), 20)
    np.testing.assert_allclose(D, D_f, rtol=1e-5, atol=1e-4)
    assert (I == I_f).mean() > 0.99
    params = faiss.SearchParameters(sel=faiss.IDSelectorRange(100, 400))
    D_f, I_f = index.search(q.numpy(), 20, params=params)
    D, I = hbfast.topk(q.numpy(), c.numpy(), 20, metric="l2", selector=hbfast.IDSelectorRange(100, 400))
    np.testing.assert_allclose(D, D_f, rtol=1e-5, atol=1e-4)
    assert ((I >= 100) & (I < 400)).all() and (I == I_f).mean() > 0.99


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_range_search_matches_faiss_and_takes_chunks(metric):
    g = torch.Generator().manual_seed(2)
    q, c = torch.randn(30, 16, generator=g), torch.randn(900, 16, generator=g)
    threshold = {"ip": 5.0, "cosine": 0.6, "l2": 18.0}[metric]
    lims, values, ids = hbfast.range_search(q.numpy(), c.numpy(), threshold, metric=metric)
    assert isinstance(lims, np.ndarray) and lims.dtype == np.int64 and values.dtype == np.float32
    xq, xb = q.numpy(), c.numpy()
    if metric == "cosine":
        xq, xb = xq / np.linalg.norm(xq, axis=1, keepdims=True), xb / np.linalg.norm(xb, axis=1, keepdims=True)
    index = faiss.IndexFlatL2(16) if metric == "l2" else faiss.IndexFlatIP(16)
    index.add(xb)
    lims_f, values_f, ids_f = index.range_search(xq, threshold)
    for i in range(len(q)):
        ours = dict(zip(ids[lims[i] : lims[i + 1]].tolist(), values[lims[i] : lims[i + 1]].tolist()))
        theirs = dict(zip(ids_f[lims_f[i] : lims_f[i + 1]].tolist(), values_f[lims_f[i] : lims_f[i + 1]].tolist()))
        assert all(abs(ours.get(j, theirs.get(j)) - threshold) < 1e-4 for j in set(ours) ^ set(theirs))
        assert all(abs(ours[j] - theirs[j]) < 1e-4 for j in set(ours) & set(theirs))
    chunks = [c[:100], c[100:101], c[101:]]  # a list of chunks, and a one-shot iterator of them
    for corpus in (chunks, iter(chunks)):
        got = hbfast.range_search(q, corpus, threshold, metric=metric)
        assert_same(got, hbfast.range_search(q, c, threshold, metric=metric))


def test_range_search_kernel_merge_matches_search():
    """The unfused epilogue (a tile from anywhere) and the fused one collect the same items."""
    q, c = integer_data(9, 70, 4, seed=5)
    for l2 in (False, True):
        qn, cn = (q * q).sum(1), (c * c).sum(1)
        f = TileFilter(lo=3, hi=60)
        p = f.params(l2, qn, cn)
        outs = []
        for fused in (True, False):
            state = _C.RangeStateCpu(9, 5.0, l2)
            if fused:  # (the fused product may compute L2's corpus norms itself)
                p_fused = f.params(l2, qn, None) if l2 else p
                assert _C.range_search_cpu(state, 0, q.data_ptr(), 4, c.data_ptr(), 70, 0, p_fused)
            else:
                tile = (q @ c.T).contiguous()
                assert _C.range_merge_cpu(state, tile.data_ptr(), 0, 9, 70, 70, 0, p)
            n = state.total()
            lims, values, ids = torch.empty(10, dtype=torch.int64), torch.empty(n), torch.empty(n, dtype=torch.int64)
            _C.range_finish_cpu(state, lims.data_ptr(), values.data_ptr(), ids.data_ptr())
            outs.append((lims, values, ids))
        assert_same(outs[0], outs[1])
        selected = f.contains(torch.arange(70))
        assert_same(outs[0], reference.range_search(q, c, 5.0, metric="l2" if l2 else "ip", selected=selected))


def test_range_search_outputs_and_empty_results():
    q, c = integer_data(4, 50, 3, seed=0)
    lims, values, ids = hbfast.range_search(q, c, 100.0)
    assert lims.tolist() == [0] * 5 and values.shape == ids.shape == (0,)
    assert isinstance(lims, torch.Tensor) and ids.dtype == torch.int64
    lims, values, ids = hbfast.range_search(q, c, float("-inf"))  # everything: nq x N items
    assert lims.tolist() == [0, 50, 100, 150, 200] and ids.tolist() == list(range(50)) * 4


def test_range_search_rejects_non_finite_scores():
    q, c = integer_data(3, 40, 3, seed=0)
    c[5, 0], q[:, 0] = 3e38, 10.0
    with pytest.raises(ValueError, match="non-finite scores"):
        hbfast.range_search(q, c, 0.0)


def test_bad_input():
    q, c = integer_data(3, 40, 3, seed=0)
    with pytest.raises(ValueError, match="metric"):
        hbfast.range_search(q, c, 1.0, metric="dot")
    with pytest.raises(ValueError, match="NaN"):
        hbfast.range_search(q, c, float("nan"))
    with pytest.raises(TypeError, match="threshold must be a number"):
        hbfast.range_search(q, c, "1")
    with pytest.raises(ValueError, match="dimension mismatch"):
        hbfast.range_search(q, c[:, :2], 1.0)
    with pytest.raises(ValueError, match="empty"):
        hbfast.range_search(q[:0], c, 1.0)
    with pytest.raises(ValueError, match="empty"):
        hbfast.range_search(q, c[:0], 1.0)
    bad = q.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        hbfast.range_search(bad, c, 1.0)
    with pytest.raises(TypeError, match="selector"):
        hbfast.range_search(q, c, 1.0, selector=faiss.IDSelectorRange(0, 3))  # faiss's: via the drop-in
    with pytest.raises(TypeError, match="selector"):
        hbfast.topk(q, c, 2, selector=[1, 2])
    with pytest.raises(TypeError, match="integer array"):
        hbfast.IDSelectorArray(np.array([0.5]))
    with pytest.raises(TypeError, match="uint8 bitmap or a bool mask"):
        hbfast.IDSelectorBitmap(np.array([1, 2], dtype=np.int32))
    with pytest.raises(TypeError, match="imin must be an int"):
        hbfast.IDSelectorRange(0.5, 3)
    with pytest.raises(ValueError, match="k = 41 is larger"):
        hbfast.topk(q, c, 41, selector=hbfast.IDSelectorRange(0, 3))
    with pytest.raises(ValueError, match="metric"):
        hbfast.relevant_ranks(q, c, torch.zeros(3, 1, dtype=torch.int64), metric="l2")  # l2: topk / range only


def test_flat_index_range_search_and_selector():
    g = torch.Generator().manual_seed(4)
    q, c = torch.randn(6, 8, generator=g), torch.randn(120, 8, generator=g)
    index = hbfast.FlatIndex(c, metric="cosine")
    for got, want in zip(index.range_search(q, 0.5), hbfast.range_search(q, c, 0.5, metric="cosine")):
        assert torch.equal(got, want)
    sel = hbfast.IDSelectorRange(10, 40)
    for got, want in zip(index.search(q, 5, selector=sel), hbfast.topk(q, c, 5, metric="cosine", selector=sel)):
        assert torch.equal(got, want)


def test_topk_with_selector_walks_queries_in_blocks_within_the_state_budget(monkeypatch):
    from hbfast.ops.search import flat as search

    q, c = integer_data(23, 300, 5, seed=9)
    sel = hbfast.IDSelectorNot(hbfast.IDSelectorRange(50, 100))
    want = hbfast.topk(q, c, 80, metric="l2", selector=sel, impl="reference")
    monkeypatch.setattr(search, "TOPK_STATE_BYTES", 80 * 24 * 5)  # 5 queries per walk
    assert_same(hbfast.topk(q, c, 80, metric="l2", selector=sel), want)


def test_progress_bars(capsys):
    q, c = integer_data(3, 50, 4, seed=1)
    assert_same(hbfast.range_search(q, c, 2.0, progress=True), hbfast.range_search(q, c, 2.0))
    assert_same(hbfast.topk(q, c, 4, metric="l2", progress=True), hbfast.topk(q, c, 4, metric="l2"))
    err = capsys.readouterr().err
    assert "range_search" in err and "topk" in err
