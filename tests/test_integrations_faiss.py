"""hbfast.integrations.faiss (faiss's classes searched by hbfast) and hbfast.integrations.faiss_standalone
(no faiss needed) against faiss-cpu: same D and I on random data and on data with ties, every k, after
remove_ids, reconstruct and reset; bad input raises clearly. (faiss's other behaviours on the drop-in:
test_integrations_faiss_behaviours.py.)"""
import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
import hbfast.integrations.faiss as hfaiss  # noqa: E402
import hbfast.integrations.faiss_standalone as standalone  # noqa: E402

KINDS = ["IndexFlatIP", "IndexFlatL2"]


@pytest.fixture(params=["faiss_subclass", "standalone"])
def module(request):
    return hfaiss if request.param == "faiss_subclass" else standalone


def pair(kind, d, xb, module=hfaiss):
    ours, theirs = getattr(module, kind)(d), getattr(faiss, kind)(d)
    ours.add(xb)
    theirs.add(xb)
    return ours, theirs


def exact_scores(index, xq, ids):
    """float64 score (IP) or squared distance (L2) of each query against the given ids (nan at -1)."""
    xb = index.reconstruct_n(0, index.ntotal).astype(np.float64) if index.ntotal else np.zeros((1, xq.shape[1]))
    rows = xb[np.maximum(ids, 0)]  # [nq, k, d]
    q = xq.astype(np.float64)[:, None, :]
    s = (rows * q).sum(-1) if index.metric_type == hfaiss.METRIC_INNER_PRODUCT else ((rows - q) ** 2).sum(-1)
    return np.where(ids >= 0, s, np.nan)


def assert_same_search(ours, theirs, xq, k, exact_ids=True):
    D, I = ours.search(xq, k)
    Df, If = theirs.search(xq, k)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == Df.shape and I.shape == If.shape
    np.testing.assert_allclose(D, Df, rtol=1e-5, atol=1e-4)
    assert all(len(set(row[row >= 0])) == (row >= 0).sum() for row in I)  # no id twice
    if exact_ids:
        # ids may differ only where float32 round-off reorders near-equal scores (faiss's own rule for its GPU index)
        differ = I != If
        near = np.abs(exact_scores(ours, xq, I) - exact_scores(ours, xq, If)) <= 1e-5 * np.abs(Df).max()
        assert (near | ~differ).all(), f"ids differ beyond round-off at {np.argwhere(differ & ~near)[:5].tolist()}"
        assert differ.mean() < 0.01
    return D, I, Df, If


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nq", [1, 7, 40])  # faiss switches from pairwise loops to BLAS at 20 queries
def test_random_data_every_k(kind, nq, module):
    rng = np.random.default_rng(nq)
    xb = rng.standard_normal((503, 37)).astype(np.float32)
    xq = rng.standard_normal((nq, 37)).astype(np.float32)
    ours, theirs = pair(kind, 37, xb, module)
    for k in (1, 10, 503, 600):  # k > ntotal pads with -1 and -/+FLT_MAX
        D, I, Df, If = assert_same_search(ours, theirs, xq, k)
    assert (I[:, 503:] == -1).all() and np.isin(D[:, 503:], [np.float32(3.4028235e38), np.float32(-3.4028235e38)]).all()
    assert ours.ntotal == theirs.ntotal == 503 and ours.d == theirs.d and ours.is_trained
    assert ours.metric_type == theirs.metric_type


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nq", [1, 30])
def test_ties(kind, nq, module):
    # small integers: exact products, many equal scores; plus duplicated rows
    rng = np.random.default_rng(5)
    xb = rng.integers(-2, 3, (300, 3)).astype(np.float32)
    xb[100:110] = xb[0]
    xq = rng.integers(-2, 3, (nq, 3)).astype(np.float32)
    ours, theirs = pair(kind, 3, xb, module)
    for k in (1, 40, 300, 301):
        D, I, Df, If = assert_same_search(ours, theirs, xq, k, exact_ids=False)
        np.testing.assert_array_equal(D, Df)
        for d, i, i_f in zip(D, I, If):
            boundary = d == d[-1]  # equal scores at the k-th place: which members are kept is faiss's heap order
            np.testing.assert_array_equal(i[~boundary], i_f[~boundary])  # all other ties listed like faiss
            if kind == "IndexFlatL2":
                np.testing.assert_array_equal(i, i_f)  # faiss L2 keeps the lowest ids, as hbfast
            else:  # the kept boundary members are the lowest ids of that score (hbfast's rule)
                tied = np.flatnonzero(xb @ xq[0] == d[-1]) if nq == 1 else None
                if tied is not None and d[-1] > -3e38:
                    assert sorted(i[boundary]) == sorted(tied[: boundary.sum()])


@pytest.mark.parametrize("kind", KINDS)
def test_remove_ids_reconstruct_reset(kind, module):
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((50, 8)).astype(np.float32)
    xq = rng.standard_normal((5, 8)).astype(np.float32)
    ours, theirs = pair(kind, 8, xb, module)
    gone = np.array([0, 7, 7, 49, 1000], dtype=np.int64)
    assert ours.remove_ids(gone) == theirs.remove_ids(gone) == 3
    assert ours.ntotal == theirs.ntotal == 47
    assert_same_search(ours, theirs, xq, 47)
    for i in (0, 6, 46):
        np.testing.assert_array_equal(ours.reconstruct(i), theirs.reconstruct(i))
    np.testing.assert_array_equal(ours.reconstruct_n(3, 10), theirs.reconstruct_n(3, 10))
    with pytest.raises(RuntimeError, match="out of range|key < ntotal"):
        ours.reconstruct(47)
    ours.add(xq)
    theirs.add(xq)
    assert_same_search(ours, theirs, xq, 3)
    ours.reset()
    theirs.reset()
    assert ours.ntotal == theirs.ntotal == 0
    assert_same_search(ours, theirs, xq, 2)  # an empty index: all padding


def test_module_is_a_drop_in_for_faiss_code(module):
    def faiss_code(faiss, xb, xq):  # written for faiss
        xb, xq = xb.copy(), xq.copy()
        faiss.normalize_L2(xb)
        faiss.normalize_L2(xq)
        index = faiss.IndexFlat(xb.shape[1], faiss.METRIC_INNER_PRODUCT)
        index.add(xb)
        D, I = np.empty((len(xq), 4), np.float32), np.empty((len(xq), 4), np.int64)
        index.search(xq, 4, D=D, I=I)
        return D, I, faiss.IndexFlat(3).metric_type

    rng = np.random.default_rng(2)
    xb, xq = rng.standard_normal((64, 16)).astype(np.float32), rng.standard_normal((9, 16)).astype(np.float32)
    xb[3] = 0  # a zero row stays zero
    D, I, metric = faiss_code(module, xb, xq)
    Df, If, metric_f = faiss_code(faiss, xb, xq)
    np.testing.assert_allclose(D, Df, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(I, If)
    assert metric == metric_f == hfaiss.METRIC_L2


def test_bad_input_standalone():
    hfaiss = standalone
    index = hfaiss.IndexFlatL2(4)
    with pytest.raises(ValueError, match="d=4"):
        index.add(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="d=4"):
        index.search(np.zeros(4, np.float32), 1)
    with pytest.raises(TypeError, match="numpy array"):
        index.add([[0.0] * 4])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(TypeError, match="integer array"):
        index.remove_ids(np.array([0.5]))
    with pytest.raises(ValueError, match="d must be >= 1"):
        hfaiss.IndexFlatIP(0)
    with pytest.raises(TypeError, match="float32"):
        hfaiss.normalize_L2(np.zeros((2, 2)))


def test_example_runs_and_matches_faiss():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "faiss_drop_in.py"
    spec = importlib.util.spec_from_file_location("faiss_drop_in", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    D, I = example.main(["--n", "300", "--nq", "12", "--d", "24", "--k", "5"])
    rng = np.random.default_rng(0)  # the example's data, searched by faiss itself
    xb = rng.standard_normal((300, 24)).astype(np.float32)
    xq = xb[rng.choice(300, 12, replace=False)] + 0.1 * rng.standard_normal((12, 24)).astype(np.float32)
    example.faiss = faiss
    Df, If = example.search(xb, xq, 5)
    np.testing.assert_allclose(D, Df, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(I, If)
