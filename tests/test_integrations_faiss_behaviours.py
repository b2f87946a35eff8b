"""faiss's flat-index behaviours beyond add/search, on hbfast.integrations.faiss's drop-ins, each checked
against faiss-cpu itself (our own tests of what faiss's python tests of flat indexes exercise: range_search,
search parameters with id selectors, reconstruct_batch, search_and_reconstruct, remove_ids with selectors,
write / serialize / clone, IndexIDMap, Clustering, ProductQuantizer.assign_index, error types, L1 / Linf)."""
import subprocess
import sys

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
import hbfast.integrations.faiss as hfaiss  # noqa: E402
from hbfast.ops.search import flat as hb_search  # noqa: E402
from testing import subprocess_env  # noqa: E402

KINDS = ["IndexFlatIP", "IndexFlatL2"]


def data(n=600, nq=30, d=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((nq, d)).astype(np.float32)


def pair(kind, xb):
    ours, theirs = getattr(hfaiss, kind)(xb.shape[1]), getattr(faiss, kind)(xb.shape[1])
    ours.add(xb)
    theirs.add(xb)
    return ours, theirs


def assert_same_range(res, ref, threshold, tol=1e-4):
    """Same (query, id) pairs except items within tol of the threshold (float32 round-off decides them);
    same values on the common ones; each query's ids in increasing order."""
    (lims, D, I), (lims_f, D_f, I_f) = res, ref
    assert lims.dtype == lims_f.dtype == np.uint64 and D.dtype == np.float32 and I.dtype == np.int64
    assert len(lims) == len(lims_f)
    for q in range(len(lims) - 1):
        ids, vals = I[lims[q] : lims[q + 1]], D[lims[q] : lims[q + 1]]
        ids_f, vals_f = I_f[lims_f[q] : lims_f[q + 1]], D_f[lims_f[q] : lims_f[q + 1]]
        assert (np.diff(ids) > 0).all()
        ours, theirs = dict(zip(ids.tolist(), vals.tolist())), dict(zip(ids_f.tolist(), vals_f.tolist()))
        for i in set(ours) ^ set(theirs):
            assert abs(ours.get(i, theirs.get(i)) - threshold) <= tol, (q, i)
        common = sorted(set(ours) & set(theirs))
        np.testing.assert_allclose([ours[i] for i in common], [theirs[i] for i in common], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nq", [1, 7, 40])  # faiss switches from pairwise loops to BLAS at 20 queries
def test_range_search_matches_faiss(kind, nq):
    xb, xq = data(nq=nq, seed=nq)
    ours, theirs = pair(kind, xb)
    for threshold in ((2.0, 8.0, 30.0) if kind == "IndexFlatIP" else (20.0, 35.0, 0.0)):
        assert_same_range(ours.range_search(xq, threshold), theirs.range_search(xq, threshold), threshold)


@pytest.mark.parametrize("kind", KINDS)
def test_range_search_strict_threshold_on_exact_scores(kind):
    # small integers: exact products, many items exactly at the threshold (faiss drops them: strict)
    rng = np.random.default_rng(3)
    xb = rng.integers(-2, 3, (400, 4)).astype(np.float32)
    xq = rng.integers(-2, 3, (25, 4)).astype(np.float32)
    ours, theirs = pair(kind, xb)
    for threshold in (0, 2, 5):
        res, ref = ours.range_search(xq, threshold), theirs.range_search(xq, threshold)
        for a, b in zip(res, ref):
            np.testing.assert_array_equal(a, b)


def selectors(n):
    rng = np.random.default_rng(7)
    ids = rng.choice(n, 40, replace=False).astype(np.int64)
    bitmap = np.packbits(rng.random(n) < 0.3, bitorder="little")
    return {
        "range": faiss.IDSelectorRange(50, 250),
        "array": faiss.IDSelectorArray(ids),
        "batch": faiss.IDSelectorBatch(ids),
        "bitmap": faiss.IDSelectorBitmap(bitmap),
        "not": faiss.IDSelectorNot(faiss.IDSelectorRange(10, n - 10)),
        "and": faiss.IDSelectorAnd(faiss.IDSelectorRange(0, 300), faiss.IDSelectorBatch(ids)),
        "few": faiss.IDSelectorBatch(np.array([3, 17, 599], dtype=np.int64)),  # fewer than k: padding
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["range", "array", "batch", "bitmap", "not", "and", "few"])
def test_search_params_with_selectors(kind, name):
    xb, xq = data()
    ours, theirs = pair(kind, xb)
    params = faiss.SearchParameters(sel=selectors(len(xb))[name])
    D, I = ours.search(xq, 10, params=params)
    D_f, I_f = theirs.search(xq, 10, params=params)
    np.testing.assert_allclose(D, D_f, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(I, I_f)
    threshold = 3.0 if kind == "IndexFlatIP" else 40.0
    assert_same_range(ours.range_search(xq, threshold, params=params), theirs.range_search(xq, threshold, params=params),
                      threshold)


def test_selector_assigned_after_the_parameters_are_made():
    xb, xq = data()
    ours, theirs = pair("IndexFlatL2", xb)
    params = faiss.SearchParameters(sel=faiss.IDSelectorRange(0, 100))
    params.sel = faiss.IDSelectorNot(faiss.IDSelectorRange(0, 500))
    D, I = ours.search(xq, 5, params=params)
    np.testing.assert_array_equal(I, theirs.search(xq, 5, params=params)[1])
    assert (I >= 500).all()


def test_translated_selectors_select_what_faiss_does():
    n = 600
    for name, sel in selectors(n).items():
        mask = hfaiss.hbfast_selector(sel, n).mask(n)
        np.testing.assert_array_equal(mask, [sel.is_member(i) for i in range(n)], err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_reconstruct_batch_and_search_and_reconstruct(kind):
    xb, xq = data(n=200, nq=5)
    ours, theirs = pair(kind, xb)
    keys = np.array([0, 199, 17, 17], dtype=np.int64)
    np.testing.assert_array_equal(ours.reconstruct_batch(keys), theirs.reconstruct_batch(keys))
    np.testing.assert_array_equal(ours.reconstruct_batch(keys), xb[keys])
    D, I, R = ours.search_and_reconstruct(xq, 4)
    D_f, I_f, R_f = theirs.search_and_reconstruct(xq, 4)
    np.testing.assert_array_equal(I, I_f)
    np.testing.assert_array_equal(R, R_f)
    np.testing.assert_array_equal(I, ours.search(xq, 4)[1])


@pytest.mark.parametrize("kind", KINDS)
def test_remove_ids_with_selectors(kind):
    xb, xq = data(n=100, nq=6)
    ours, theirs = pair(kind, xb)
    assert ours.remove_ids(faiss.IDSelectorRange(0, 10)) == theirs.remove_ids(faiss.IDSelectorRange(0, 10)) == 10
    batch = np.array([3, 50, 50, 1000], dtype=np.int64)
    assert ours.remove_ids(faiss.IDSelectorBatch(batch)) == theirs.remove_ids(faiss.IDSelectorBatch(batch)) == 2
    assert ours.remove_ids(batch) == theirs.remove_ids(batch) == 2  # the ids shifted down: 3 and 50 again
    assert ours.ntotal == theirs.ntotal == 86
    D, I = ours.search(xq, 86)
    D_f, I_f = theirs.search(xq, 86)
    np.testing.assert_allclose(D, D_f, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(I, I_f)


@pytest.mark.parametrize("kind", KINDS)
def test_write_serialize_clone(kind, tmp_path):
    xb, xq = data(n=300, nq=8)
    ours, _ = pair(kind, xb)
    expected = ours.search(xq, 5)
    path = str(tmp_path / "index.faiss")
    faiss.write_index(ours, path)
    copies = [faiss.read_index(path), faiss.deserialize_index(faiss.serialize_index(ours)), faiss.clone_index(ours)]
    for copy in copies:  # faiss's own classes, the same vectors
        assert isinstance(copy, getattr(faiss, kind)) and copy.ntotal == 300 and copy.metric_type == ours.metric_type
        np.testing.assert_array_equal(copy.reconstruct_n(0, 300), xb)
        D, I = copy.search(xq, 5)
        np.testing.assert_allclose(D, expected[0], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(I, expected[1])


@pytest.mark.parametrize("kind", KINDS)
def test_index_id_map(kind):
    xb, xq = data(n=300, nq=8)
    maps = []
    for module in (hfaiss, faiss):
        inner = getattr(module, kind)(xb.shape[1])
        idmap = faiss.IndexIDMap(inner)
        idmap.add_with_ids(xb, np.arange(1000, 1300, dtype=np.int64))
        maps.append((idmap, inner))
    (ours, inner), (theirs, _) = maps
    assert inner.ntotal == 300
    D, I = ours.search(xq, 7)
    D_f, I_f = theirs.search(xq, 7)
    np.testing.assert_array_equal(I, I_f)
    np.testing.assert_allclose(D, D_f, rtol=1e-5, atol=1e-4)
    assert ours.remove_ids(faiss.IDSelectorRange(1000, 1100)) == 100 and inner.ntotal == 200


def test_clustering_and_product_quantizer_take_the_drop_in():
    xb, _ = data(n=2000, d=16)
    results = []
    for module in (hfaiss, faiss):
        clus = faiss.Clustering(16, 8)
        clus.niter, clus.seed = 4, 123
        index = module.IndexFlatL2(16)
        clus.train(xb, index)
        pq = faiss.ProductQuantizer(16, 4, 4)
        pq.assign_index = module.IndexFlatL2(4)
        pq.train(xb)
        results.append((faiss.vector_to_array(clus.centroids), index.ntotal, faiss.vector_to_array(pq.centroids),
                        pq.compute_codes(xb[:50])))
    for ours, theirs in zip(*results):
        np.testing.assert_array_equal(ours, theirs)


def test_python_search_runs_hbfast_and_cxx_callers_run_faiss(monkeypatch):
    """What dispatches where: the Python methods run hbfast's kernels; faiss's C++ (IndexIDMap here)
    calls faiss's own C++ search on the same storage. Both give faiss's results."""
    calls = []
    topk = hb_search.topk
    monkeypatch.setattr(hb_search, "topk", lambda *a, **kw: calls.append(1) or topk(*a, **kw))
    xb, xq = data(n=100, nq=3)
    index = hfaiss.IndexFlatIP(xb.shape[1])
    idmap = faiss.IndexIDMap(index)
    idmap.add_with_ids(xb, np.arange(100, dtype=np.int64))
    index.search(xq, 3)
    assert len(calls) == 1
    idmap.search(xq, 3)
    assert len(calls) == 1


def test_numeric_type():
    xb, xq = data(n=100, nq=4)
    ours, theirs = pair("IndexFlatL2", xb)
    D, I = ours.search(xq, 3, numeric_type=faiss.Float32)
    D_f, I_f = theirs.search(xq, 3, numeric_type=faiss.Float32)
    np.testing.assert_array_equal(I, I_f)
    np.testing.assert_allclose(D, D_f, rtol=1e-5, atol=1e-4)
    for index in (ours, theirs):  # float16 queries: faiss's own code, which refuses them on a flat index
        with pytest.raises(RuntimeError, match="unsupported numeric type"):
            index.search(xq, 3, numeric_type=faiss.Float16)


@pytest.mark.parametrize("metric", ["METRIC_L1", "METRIC_Linf"])
def test_other_metrics_run_faiss(metric):
    xb, xq = data(n=200, nq=5)
    ours, theirs = hfaiss.IndexFlat(xb.shape[1], getattr(faiss, metric)), faiss.IndexFlat(xb.shape[1], getattr(faiss, metric))
    ours.add(xb)
    theirs.add(xb)
    for a, b in zip(ours.search(xq, 5), theirs.search(xq, 5)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ours.range_search(xq, 10.0), theirs.range_search(xq, 10.0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_errors_are_faiss_errors(kind):
    xb, xq = data(n=50, nq=3)
    ours, theirs = pair(kind, xb)
    for index in (ours, theirs):
        with pytest.raises(AssertionError):
            index.search(xq, 0)
        with pytest.raises(AssertionError):
            index.search(xq[:, :5], 3)
        with pytest.raises(AssertionError):
            index.range_search(xq[:, :5], 1.0)
        with pytest.raises(AssertionError):
            index.search(xq, 3, D=np.empty((3, 4), np.float32))
        with pytest.raises(RuntimeError):
            index.add_with_ids(xb[:2], np.arange(2, dtype=np.int64))
        with pytest.raises(RuntimeError):
            index.reconstruct(50)
        with pytest.raises(AttributeError):
            index.search([[0.0] * xb.shape[1]], 1)  # a list has no .shape, as in faiss


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_and_empty_give_faiss_results(kind):
    xb, xq = data(n=50, nq=4)
    empty_ours, empty_theirs = getattr(hfaiss, kind)(xb.shape[1]), getattr(faiss, kind)(xb.shape[1])
    for a, b in zip(empty_ours.search(xq, 3), empty_theirs.search(xq, 3)):
        np.testing.assert_array_equal(a, b)
    xq[1, 2] = np.nan
    ours, theirs = pair(kind, xb)
    D, I = ours.search(xq, 3)
    D_f, I_f = theirs.search(xq, 3)
    np.testing.assert_array_equal(I, I_f)
    xb[7, 0] = np.inf
    ours, theirs = pair(kind, xb)
    D, I = ours.search(xq[[0]], 3)
    np.testing.assert_array_equal(I, theirs.search(xq[[0]], 3)[1])


def test_module_forwards_faiss_names_and_hbfast_does_not_import_faiss():
    assert hfaiss.write_index is faiss.write_index and hfaiss.METRIC_L1 == faiss.METRIC_L1
    assert hfaiss.normalize_L2 is faiss.normalize_L2
    script = ("import sys; import hbfast; assert 'faiss' not in sys.modules\n"
              "sys.modules['faiss'] = None  # faiss not installed\n"
              "import hbfast.integrations.faiss as f, hbfast.integrations.faiss_standalone as s\n"
              "assert f.IndexFlatIP is s.IndexFlatIP\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=subprocess_env(), timeout=120)
