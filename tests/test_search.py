"""topk and relevant_ranks against faiss' exact search, the full-sort reference, and each other."""
import numpy as np
import pytest
import torch

import hbfast
from hbfast import reference
from testing import DEVICES, FLOAT_DTYPES, requires_cuda

faiss = pytest.importorskip("faiss")

HEAP_MAX_K = hbfast.ops._C.TOPK_HEAP_MAX_K


def integer_data(nq, n, dim, seed, device="cpu"):
    """Small integers: every product and sum is exact in fp32, and scores tie often."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (nq, dim), generator=g).float()
    c = torch.randint(-2, 3, (n, dim), generator=g).float()
    return q.to(device), c.to(device)


def float_data(nq, n, dim, seed, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(nq, dim, generator=g).to(device, dtype), torch.randn(n, dim, generator=g).to(device, dtype)


def assert_same_topk(scores, ids, ref_scores, ref_ids, q, c, atol=1e-5):
    """Scores within atol; ids equal except where the exact scores of the two ids (near-)tie; no duplicates."""
    scores, ids = torch.as_tensor(scores).cpu(), torch.as_tensor(ids).cpu()
    ref_scores, ref_ids = torch.as_tensor(ref_scores).cpu(), torch.as_tensor(ref_ids).cpu()
    assert scores.shape == ref_scores.shape and ids.dtype == torch.int64 and scores.dtype == torch.float32
    torch.testing.assert_close(scores, ref_scores, atol=atol, rtol=0)
    k = ids.shape[1]
    assert (torch.sort(ids, dim=1).values.diff(dim=1) > 0).all() if k > 1 else True, "duplicate ids"
    diff = ids != ref_ids
    if diff.any():
        exact = q.double().cpu() @ c.double().cpu().T  # [nq, N]
        rows = diff.nonzero()[:, 0]
        ours = exact[rows, ids[diff]]
        theirs = exact[rows, ref_ids[diff]]
        assert torch.allclose(ours, theirs, atol=atol, rtol=0), "ids differ beyond ties"


@pytest.mark.parametrize("k", [1, 5, HEAP_MAX_K, HEAP_MAX_K + 1, 300, 1000])
def test_topk_matches_faiss(k):
    q, c = float_data(37, 1000, 24, seed=k)
    scores, ids = hbfast.topk(q, c, k)
    index = faiss.IndexFlatIP(24)
    index.add(c.numpy())
    f_scores, f_ids = index.search(q.numpy(), k)
    assert_same_topk(scores, ids, torch.from_numpy(f_scores), torch.from_numpy(f_ids), q, c)
    # faiss.knn is the same search through the other entry point
    k_scores, k_ids = faiss.knn(q.numpy(), c.numpy(), k, metric=faiss.METRIC_INNER_PRODUCT)
    assert_same_topk(scores, ids, torch.from_numpy(k_scores), torch.from_numpy(k_ids), q, c)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 3, HEAP_MAX_K, HEAP_MAX_K + 1, 777, 2500])
def test_topk_ties_follow_lower_id_rule(device, k):
    q, c = integer_data(29, 2500, 6, seed=k, device=device)  # exact scores, many ties
    scores, ids = hbfast.topk(q, c, k)
    ref_scores, ref_ids = reference.topk(q, c, k)
    assert torch.equal(ids.cpu(), ref_ids.cpu())
    assert torch.equal(scores.cpu(), ref_scores.cpu())


def test_topk_tile_edges_and_many_query_tiles(monkeypatch):
    from hbfast.ops.search import flat as search

    monkeypatch.setattr(search, "CPU_QUERY_TILE", 7)
    monkeypatch.setattr(search, "CPU_CORPUS_TILE", 33)
    q, c = integer_data(50, 301, 5, seed=1)
    for k in (1, 40, 100, 301):
        scores, ids = hbfast.topk(q, c, k)
        ref_scores, ref_ids = reference.topk(q, c, k)
        assert torch.equal(ids, ref_ids) and torch.equal(scores, ref_scores)


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_topk_chunked_corpus_numpy_and_memmap(tmp_path, metric):
    q, c = float_data(20, 3000, 16, seed=3)
    ref_scores, ref_ids = reference.topk(q, c, 50, metric=metric)
    path = tmp_path / "corpus.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=tuple(c.shape))
    mm[:] = c.numpy()
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=tuple(c.shape))
    generator = (ro[i : i + 700] for i in range(0, len(ro), 700))  # a stream, never all in memory
    for corpus in (c, c.numpy(), list(torch.split(c, 999)), generator):
        scores, ids = hbfast.topk(q, corpus, 50, metric=metric)
        assert_same_topk(scores, ids, ref_scores, ref_ids, q, c)
    scores, ids = hbfast.topk(q.numpy(), ro, 50, metric=metric)  # numpy in -> numpy out
    assert isinstance(scores, np.ndarray) and isinstance(ids, np.ndarray)
    assert_same_topk(scores, ids, ref_scores, ref_ids, q, c)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_topk_low_precision_inputs_give_fp32_scores(dtype, device):
    q, c = float_data(16, 1500, 40, seed=5, device=device, dtype=dtype)
    scores, ids = hbfast.topk(q, c, 20, metric="cosine")
    assert scores.dtype == torch.float32 and scores.device.type == device
    ref_scores, ref_ids = reference.topk(q, c, 20, metric="cosine")
    qn = torch.nn.functional.normalize(q.float(), dim=1)
    cn = torch.nn.functional.normalize(c.float(), dim=1)
    assert_same_topk(scores, ids, ref_scores, ref_ids, qn, cn)


def test_topk_non_contiguous_inputs_and_k_equals_n():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(64, 40, generator=g).T  # [40, 64], a strided view
    c = torch.randn(64, 600, generator=g).T[::2]  # [300, 64], strided both ways
    scores, ids = hbfast.topk(q, c, 300)
    assert torch.equal(torch.sort(ids, dim=1).values, torch.arange(300).expand(40, 300))
    ref_scores, ref_ids = reference.topk(q, c, 300)
    assert_same_topk(scores, ids, ref_scores, ref_ids, q, c)


def test_topk_reference_impl_and_flat_index():
    q, c = integer_data(10, 500, 4, seed=8)
    a = hbfast.topk(q, c, 17, impl="reference")
    b = hbfast.topk(q, c, 17, impl="kernel")
    assert torch.equal(a[1], b[1])
    index = hbfast.FlatIndex(c)
    assert len(index) == 500
    s, i = index.search(q, 17)
    assert torch.equal(i, b[1])
    rel = b[1][:, [0, 5, 16]]
    assert torch.equal(index.ranks(q, rel), torch.tensor([1, 6, 17]).expand(10, 3))


# ---- relevant_ranks -----------------------------------------------------------------------------
def random_relevant(nq, n, r, seed):
    g = torch.Generator().manual_seed(seed)
    rel = torch.randint(0, n, (nq, r), generator=g)
    rel[::3, r // 2 :] = -1  # padding on some rows
    return rel


@pytest.mark.parametrize("device", DEVICES)
def test_relevant_ranks_exact_with_ties(device, monkeypatch):
    from hbfast.ops.search import flat as search

    monkeypatch.setattr(search, "CPU_CORPUS_TILE", 97)
    q, c = integer_data(61, 1000, 5, seed=11, device=device)
    rel = random_relevant(61, 1000, 7, seed=12).to(device)
    ranks = hbfast.relevant_ranks(q, c, rel)
    assert torch.equal(ranks.cpu(), reference.relevant_ranks(q, c, rel).cpu())
    assert (ranks[::3, 3:] == -1).all()


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_relevant_ranks_match_full_sort_and_topk(metric):
    q, c = float_data(40, 2300, 32, seed=13)
    c[7] = c[1900]  # an exact duplicate: the tie rule must put id 7 first
    rel = random_relevant(40, 2300, 5, seed=14)
    rel[:, 0] = 1900
    rel[:, 1] = 7
    ranks = hbfast.relevant_ranks(q, c, rel, metric=metric)
    assert torch.equal(ranks, reference.relevant_ranks(q, c, rel, metric=metric))
    assert torch.equal(ranks[:, 0], ranks[:, 1] + 1)
    _, ids = hbfast.topk(q, c, 2300, metric=metric)
    position = torch.empty_like(ids)
    position.scatter_(1, ids, torch.arange(1, 2301).expand(40, 2300))
    assert torch.equal(torch.where(rel >= 0, position.gather(1, rel.clamp(min=0)), -1), ranks)
    # chunks and numpy give the same answer
    assert torch.equal(hbfast.relevant_ranks(q, list(torch.split(c, 1000)), rel, metric=metric), ranks)
    assert np.array_equal(hbfast.relevant_ranks(q.numpy(), c.numpy(), rel.numpy(), metric=metric), ranks.numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_relevant_ranks_per_chunk(device, monkeypatch):
    from hbfast.ops.search import flat as search

    monkeypatch.setattr(search, "CPU_CORPUS_TILE", 50)  # chunks span several tiles
    q, c = integer_data(45, 400, 4, seed=21, device=device)  # small integers: many exact ties
    sizes = [130, 1, 0, 269]  # uneven, a one-row chunk and an empty one
    chunks = list(torch.split(c, sizes))
    rel = random_relevant(45, 400, 6, seed=22).to(device)
    rel[:, 0] = 130  # the one-row chunk: rank 1 there
    ranks, chunk_ranks = hbfast.relevant_ranks(q, chunks, rel, per_chunk=True)
    assert torch.equal(ranks, hbfast.relevant_ranks(q, c, rel))
    assert (chunk_ranks[:, 0] == 1).all()
    starts = [0, 130, 131, 131, 400]
    for i, chunk in enumerate(chunks):  # each chunk on its own, by a full sort
        inside = (rel >= starts[i]) & (rel < starts[i + 1])
        if chunk.shape[0]:
            alone = reference.relevant_ranks(q, chunk, torch.where(inside, rel - starts[i], -1))
            assert torch.equal(chunk_ranks[inside], alone[inside])
    assert torch.equal(chunk_ranks == -1, rel == -1)
    ref_ranks, ref_chunk_ranks = hbfast.relevant_ranks(q, chunks, rel, per_chunk=True, impl="reference")
    assert torch.equal(ref_ranks, ranks) and torch.equal(ref_chunk_ranks, chunk_ranks)


def test_relevant_ranks_fp16_and_reference_impl():
    q, c = float_data(20, 800, 24, seed=15, dtype=torch.float16)
    rel = random_relevant(20, 800, 3, seed=16)
    got = hbfast.relevant_ranks(q, c, rel)
    ref = hbfast.relevant_ranks(q, c, rel, impl="reference")
    assert torch.equal(got, ref)


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_input_is_rejected_clearly():
    q, c = float_data(4, 50, 8, seed=0)
    rel = torch.zeros(4, 2, dtype=torch.int64)
    cases = [
        (lambda: hbfast.topk(q, c, 0), ValueError, "k must be >= 1"),
        (lambda: hbfast.topk(q, c, 51), ValueError, "larger than the corpus"),
        (lambda: hbfast.topk(q, iter([c[:20]]), 21), ValueError, "larger than the corpus"),
        (lambda: hbfast.topk(q, c, 2.0), TypeError, "k must be an int"),
        (lambda: hbfast.topk(q, c[:, :7], 3), ValueError, "dimension mismatch"),
        (lambda: hbfast.topk(q[:0], c, 3), ValueError, "queries is empty"),
        (lambda: hbfast.topk(q, c[:0], 1), ValueError, "larger than the corpus"),
        (lambda: hbfast.topk(q, iter([]), 1), ValueError, "corpus is empty"),
        (lambda: hbfast.topk(q[0], c, 3), ValueError, "must be 2-D"),
        (lambda: hbfast.topk(q.int(), c, 3), TypeError, "must hold floats"),
        (lambda: hbfast.topk(q, "corpus", 3), TypeError, "corpus must be"),
        (lambda: hbfast.topk(q, c, 3, metric="dot"), ValueError, "metric must be"),  # ("l2": test_range_search)
        (lambda: hbfast.topk(q, c, 3, impl="fast"), ValueError, "impl must be"),
        (lambda: hbfast.topk(torch.zeros(2, 8), c, 3, metric="cosine"), ValueError, "zero norm"),
        (lambda: hbfast.relevant_ranks(q, c, rel + 50), ValueError, "relevant ids must be in"),
        (lambda: hbfast.relevant_ranks(q, c, rel - 2), ValueError, "relevant ids must be in"),
        (lambda: hbfast.relevant_ranks(q, c, rel[:3]), ValueError, "relevant must be"),
        (lambda: hbfast.relevant_ranks(q, c, rel.float()), TypeError, "integer corpus ids"),
        (lambda: hbfast.relevant_ranks(q, iter([c]), rel), TypeError, "can index"),
    ]
    bad_q = q.clone()
    bad_q[1, 2] = float("nan")
    cases.append((lambda: hbfast.topk(bad_q, c, 3), ValueError, "NaN or infinite"))
    for value in (float("nan"), float("inf")):
        bad_c = c.clone()
        bad_c[33, 1] = value
        cases.append((lambda bc=bad_c: hbfast.topk(q, bc, 3), ValueError, r"non-finite scores against corpus ids \[0, 50\)"))
        cases.append((lambda bc=bad_c: hbfast.relevant_ranks(q, bc, rel), ValueError, "non-finite scores"))
    huge = torch.full((3, 8), 3e38)
    cases.append((lambda: hbfast.topk(huge, huge, 2), ValueError, "overflow float32"))
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


@requires_cuda
def test_mixed_devices_are_rejected():
    q, c = float_data(4, 50, 8, seed=0)
    with pytest.raises(ValueError, match="mixed devices"):
        hbfast.topk(q.cuda(), c, 3)
    with pytest.raises(ValueError, match="mixed devices"):
        hbfast.relevant_ranks(q, c, torch.zeros(4, 1, dtype=torch.int64).cuda())


@requires_cuda
@pytest.mark.parametrize("k", [1, 10, 1000, 3000])
def test_cuda_matches_cpu(k):
    q, c = integer_data(300, 3000, 8, seed=k)
    cpu = hbfast.topk(q, c, k)
    gpu = hbfast.topk(q.cuda(), c.cuda(), k)
    assert torch.equal(gpu[1].cpu(), cpu[1]) and torch.equal(gpu[0].cpu(), cpu[0])


def test_cuda_selection_keys_order_by_the_tie_rule():
    """The CUDA top-k keeps (score, id) as one 64-bit key: its order and round trip as the host
    compiles select.h (test_cuda.py checks that the device computes the same keys)."""
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.standard_normal(500), [0.0, -0.0, 1.5, 1.5, -3e38, 3e38, 1e-45, -1e-45]]).astype(np.float32)
    ids = rng.permutation(len(scores)).astype(np.int64)
    ids[-6:-4] = [7, 3]  # a tie: id 3 must come first
    keys = hbfast.ops._C.selection_keys(scores, ids)
    by_key = np.argsort(keys)[::-1]
    by_rule = np.lexsort((ids, -scores.astype(np.float64)))
    assert np.array_equal(by_key, by_rule)
    back_scores, back_ids = hbfast.ops._C.decode_keys(keys)
    assert np.array_equal(back_ids, ids) and np.array_equal(back_scores, scores)  # -0.0 comes back as +0.0
    assert (keys > 0).all()  # the empty key (0) is below every real candidate


def test_progress_bars_do_not_change_results(capsys):
    q, c = integer_data(6, 300, 4, seed=9)
    plain = hbfast.topk(q, c, 7)
    shown = hbfast.topk(q, iter(torch.split(c, 100)), 7, progress=True)
    assert torch.equal(plain[1], shown[1])
    ranks = hbfast.relevant_ranks(q, c, plain[1][:, :3], progress=True)
    assert torch.equal(ranks, torch.tensor([1, 2, 3]).expand(6, 3))
    assert "topk" in capsys.readouterr().err


@pytest.mark.parametrize("device", DEVICES)
def test_topk_streams_queries_in_blocks_for_large_k(device, monkeypatch):
    """With nq * k over TOPK_STATE_BYTES, query blocks each walk the corpus: the same result; a
    one-shot iterator (which cannot be walked twice) still gets every query in one walk."""
    from hbfast.ops.search import flat as search

    q, c = integer_data(45, 400, 5, seed=21, device=device)
    expected = reference.topk(q, c, 150)
    monkeypatch.setattr(search, "TOPK_STATE_BYTES", 150 * 48 * 4)  # 4 to 8 queries per block
    for corpus in (c, [c[:123], c[123:]], iter([c[:200], c[200:]])):
        scores, ids = hbfast.topk(q, corpus, 150)
        assert torch.equal(ids.cpu(), expected[1].cpu()) and torch.equal(scores.cpu(), expected[0].cpu())
