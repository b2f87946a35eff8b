"""The CPU matrix products (torch's MKL and OpenBLAS, both fused with the epilogues, and torch's own
product where torch has no MKL): exact results under each, the measured choice between them, the
HBFAST_GEMM override, and OpenBLAS living beside torch and numpy."""
import json

import numpy as np
import pytest
import torch

import hbfast
from hbfast import reference
from hbfast.ops import _C
from hbfast.ops import gemm

BACKENDS = list(gemm.BACKENDS)


# Fused products _C can run here (0: OpenBLAS, 1: torch's MKL where this torch has it).
FUSED_IDS = [0] + ([1] if gemm.TORCH_MKL else [])


@pytest.fixture(params=BACKENDS + ["mkl-unfused"])
def backend(request, monkeypatch):
    """Forces one product ("mkl-unfused": torch's product, then the epilogue, as with a torch built
    without MKL); fused blocks shrunk so that small inputs span several of them."""
    monkeypatch.setenv("HBFAST_GEMM", request.param.split("-")[0])
    if request.param == "mkl-unfused":
        monkeypatch.setattr(gemm, "TORCH_MKL", False)
    _C.set_fused_blocks(5, 7)
    yield request.param
    _C.set_fused_blocks(0, 0)


@pytest.fixture(params=["simd", "portable"])
def simd(request):
    """The search epilogues' AVX-512 twins (where the CPU has them) or their portable code."""
    _C.set_cpu_simd(request.param == "simd")
    yield request.param
    _C.set_cpu_simd(True)


def integer_data(nq, n, dim, seed):
    """Small integers: every product is exact in fp32 whatever the summation order, and scores tie often."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-2, 3, (nq, dim), generator=g).float(), torch.randint(-2, 3, (n, dim), generator=g).float())


@pytest.mark.parametrize("k", [1, 4, _C.TOPK_HEAP_MAX_K + 1, 150])
def test_topk_is_exact_under_both_products(backend, simd, k, monkeypatch):
    from hbfast.ops.search import flat as search

    monkeypatch.setattr(search, "CPU_CORPUS_TILE", 64)
    q, c = integer_data(23, 300, 9, seed=k)
    scores, ids = hbfast.topk(q, c, k)
    ref_scores, ref_ids = reference.topk(q, c, k)
    assert torch.equal(ids, ref_ids) and torch.equal(scores, ref_scores)
    # float data: scores as the float64 product, to fp32 rounding
    g = torch.Generator().manual_seed(k)
    qf, cf = torch.randn(17, 40, generator=g), torch.randn(250, 40, generator=g)
    scores, ids = hbfast.topk(qf, cf, k, metric="cosine")
    exact = torch.nn.functional.normalize(qf.double(), dim=1) @ torch.nn.functional.normalize(cf.double(), dim=1).T
    torch.testing.assert_close(scores.double(), exact.gather(1, ids), atol=1e-6, rtol=0)  # each id's own score
    torch.testing.assert_close(scores.double(), exact.topk(k, dim=1).values, atol=1e-6, rtol=0)  # the k best


@pytest.mark.parametrize("k", [3, _C.TOPK_HEAP_MAX_K + 1])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_topk_rejects_non_finite_scores_under_both_products(backend, simd, k, sign):
    q, c = integer_data(4, 90, 3, seed=0)
    c[31, 0] = sign * 3e38  # finite inputs, an overflowing product (+inf or -inf)
    q[:, 0] = 10.0
    with pytest.raises(ValueError, match="non-finite scores"):
        hbfast.topk(q, c, k)


@pytest.mark.parametrize("k", [2, _C.TOPK_HEAP_MAX_K + 1])
def test_topk_row_merges_agree_on_ties_signed_zeros_and_row_tails(k):
    """Rows of every length around the 16-score blocks, with ties, -0 / +0 and equal scores across
    tiles: the AVX-512 twins and the portable merges keep the same k (score, id) pairs."""
    results = {}
    for mode in (True, False):
        _C.set_cpu_simd(mode)
        try:
            for cols in (1, 15, 16, 17, 33, 200):
                tile = torch.randint(-3, 4, (5, cols), generator=torch.Generator().manual_seed(cols)).float() * 0.5
                tile[:, ::3] = -0.0
                state = _C.TopkStateCpu(5, k, 3 * k)
                for id0 in (0, cols, 2 * cols):  # the same scores again at higher ids: ties go to the lower id
                    assert _C.topk_merge_cpu(state, tile.data_ptr(), 0, 5, cols, cols, id0)
                n = min(k, 3 * cols)
                scores, ids = torch.empty(5, k), torch.empty(5, k, dtype=torch.int64)
                _C.topk_finish_cpu(state, scores.data_ptr(), ids.data_ptr())
                full = torch.cat([tile] * 3, dim=1)
                ref_scores, ref_ids = reference.topk(full, torch.eye(3 * cols), n)  # scores = the rows themselves
                assert torch.equal(ids[:, :n], ref_ids) and torch.equal(scores[:, :n], ref_scores), (mode, cols)
                results[(mode, cols)] = (scores, ids)
        finally:
            _C.set_cpu_simd(True)
    for cols in (1, 15, 16, 17, 33, 200):
        assert all(torch.equal(a, b) for a, b in zip(results[(True, cols)], results[(False, cols)]))


def test_topk_buffer_mode_needs_ids_below_2_32():
    state = _C.TopkStateCpu(1, _C.TOPK_HEAP_MAX_K + 1, 3 * (_C.TOPK_HEAP_MAX_K + 1))
    tile = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="below 2\\^32"):
        _C.topk_merge_cpu(state, tile.data_ptr(), 0, 1, 4, 4, 2**32 - 3)


def test_unknown_or_missing_fused_product_is_an_error(monkeypatch):
    a = torch.ones(4, 4)
    with pytest.raises(ValueError, match="backend must be"):
        _C.sgemm_cpu(7, False, False, 4, 4, 4, 1.0, a.data_ptr(), 4, a.data_ptr(), 4, 0.0, a.data_ptr(), 4)


def test_relevant_ranks_are_exact_under_both_products(backend, simd, monkeypatch):
    from hbfast.ops.search import flat as search

    monkeypatch.setattr(search, "CPU_CORPUS_TILE", 40)
    monkeypatch.setattr(search, "CPU_QUERY_TILE", 11)
    q, c = integer_data(30, 170, 5, seed=3)
    g = torch.Generator().manual_seed(3)
    rel = torch.randint(0, 170, (30, 4), generator=g)
    rel[0, 1] = -1
    chunks = [c[:60], c[60:61], c[61:]]
    ranks, chunk_ranks = hbfast.relevant_ranks(q, chunks, rel, per_chunk=True)
    assert torch.equal(ranks, reference.relevant_ranks(q, c, rel))
    ref_ranks, ref_chunk_ranks = hbfast.relevant_ranks(q, chunks, rel, per_chunk=True, impl="reference")
    assert torch.equal(chunk_ranks, ref_chunk_ranks)


@pytest.mark.parametrize("r", [0, 1, 3, 8, 11, 19])
def test_rank_counting_twins_agree_on_ties_and_splits(r):
    """count_beating_cpu on integer tiles (many ties): each relevant item before, inside (at every lane of
    a 16-score block) or after the tile, and padding; the AVX-512 twin, the portable code and the
    definition (a candidate beats the item: higher score, or equal score and lower id) agree."""
    g = torch.Generator().manual_seed(r)
    for cols in (1, 15, 16, 17, 40, 100):
        rows, id0 = 6, 50
        tile = torch.randint(-2, 3, (rows, cols), generator=g).float()
        rel = torch.randint(id0 - 5, id0 + cols + 5, (rows, r), generator=g)
        if r:
            rel[0, 0] = -1
        inside = (rel >= id0) & (rel < id0 + cols)
        own_tile = tile.gather(1, (rel - id0).clamp(0, cols - 1))
        rel_scores = torch.where(inside, own_tile, torch.randint(-2, 3, (rows, r), generator=g).float())
        ids = torch.arange(id0, id0 + cols)
        s, rs = tile[:, None, :], rel_scores[:, :, None]  # [rows, 1, cols], [rows, r, 1]
        beats = (s > rs) | ((s == rs) & (ids < rel[:, :, None]))
        expected = torch.where(rel >= 0, (beats & (ids != rel[:, :, None])).sum(-1), 0)
        results = []
        for mode in (True, False):
            _C.set_cpu_simd(mode)
            try:
                counts = torch.zeros(rows, r, dtype=torch.int64)
                own = torch.full((rows, r), 99.0)
                assert _C.count_beating_cpu(tile.data_ptr(), rows, cols, cols, id0, rel_scores.data_ptr(), rel.data_ptr(),
                                            r, counts.data_ptr(), own.data_ptr())
            finally:
                _C.set_cpu_simd(True)
            assert torch.equal(counts, expected), (mode, cols)
            assert torch.equal(torch.where(inside & (rel >= 0), own, 99.0), torch.where(inside & (rel >= 0), own_tile, 99.0))
            results.append((counts, own))
        assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("budget", [1 << 30, 0, 3000])  # blocks kept, recomputed, partly kept
def test_loss_matches_reference_under_both_products(backend, budget, monkeypatch):
    from hbfast.ops.loss import blocks as losses

    monkeypatch.setattr(losses, "BLOCK_ROWS", 16)
    g = torch.Generator().manual_seed(0)
    B, D, M = 50, 24, 7
    q = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).requires_grad_()
    p = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).requires_grad_()
    h = torch.nn.functional.normalize(torch.randn(M, D, generator=g), dim=1).requires_grad_()
    groups = torch.randint(0, 30, (B,), generator=g)
    kwargs = dict(hard_negatives=h, group_ids=groups, temperature=0.05)
    loss = hbfast.contrastive_loss(q, p, memory_budget=budget, **kwargs)
    grads = torch.autograd.grad(loss, (q, p, h))
    q64, p64, h64 = (t.detach().double().requires_grad_() for t in (q, p, h))
    ref = reference.contrastive_loss(q64, p64, hard_negatives=h64, group_ids=groups, temperature=0.05)
    ref_grads = torch.autograd.grad(ref, (q64, p64, h64))
    torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", FUSED_IDS)
@pytest.mark.parametrize("ta,tb,beta", [(False, False, 0.0), (False, True, 0.0), (True, False, 1.0), (True, True, 0.5)])
def test_fused_products_match_torch(fused, ta, tb, beta):
    g = torch.Generator().manual_seed(1)
    m, n, k = 97, 33, 70
    a = torch.randn(k, m, generator=g) if ta else torch.randn(m, k, generator=g)
    b = torch.randn(n, k, generator=g) if tb else torch.randn(k, n, generator=g)
    c = torch.randn(m, n, generator=g)
    expected = (a.double().T if ta else a.double()) @ (b.double().T if tb else b.double()) + beta * c.double()
    _C.sgemm_cpu(fused, ta, tb, m, n, k, 1.0, a.data_ptr(), m if ta else k, b.data_ptr(), k if tb else n, beta,
                 c.data_ptr(), n)
    torch.testing.assert_close(c.double(), expected, atol=1e-4, rtol=1e-5)


def test_the_choice_is_measured_then_kept(monkeypatch):
    monkeypatch.delenv("HBFAST_GEMM", raising=False)
    key = gemm.shape_class("test", 1000, 4096, 768)
    assert key == gemm.shape_class("test", 1024, 3000, 768)  # pooled by powers of two
    n = gemm.SAMPLES  # kept timings of each product per round: one product's, then the other's
    for slow in BACKENDS:
        chooser = gemm._Chooser()
        order = [b for _ in range(gemm.ROUNDS) for b in gemm.MEASURE_ORDER for _ in range(n)]
        for i, backend in enumerate(order):
            # a burst of load during the faster product's first round must not decide for the other
            first_round = i < 2 * n
            seconds = 9.0 if first_round and backend != slow else 2.0 if backend == slow else 1.0
            chooser.record(key, backend, seconds)
            assert (chooser.describe()["chosen"] == {}) == (i < len(order) - 1)
        faster = next(b for b in BACKENDS if b != slow)
        assert chooser.decide(key, lambda b: pytest.fail("decided already")) == faster
        assert chooser.describe()["chosen"] == {"test/1024/4096/768": faster}
        chooser.reset()
        assert chooser.describe() == {"override": None, "chosen": {}, "measuring": []}


def test_a_product_within_the_margin_does_not_displace_torchs():
    assert gemm.pick({"mkl": 1.0, "openblas": 0.97}) == "mkl"  # 3% faster: noise
    assert gemm.pick({"mkl": 1.0, "openblas": 0.90}) == "openblas"
    assert gemm.pick({"mkl": 0.97, "openblas": 1.0}) == "mkl"


def test_override_and_build_info(monkeypatch):
    monkeypatch.setenv("HBFAST_GEMM", "openblas")
    assert gemm.chooser.decide(("anything",), lambda b: pytest.fail("measured under an override")) == "openblas"
    info = hbfast.build_info()["gemm"]
    assert info["override"] == "openblas" and info["openblas"].startswith("OpenBLAS ")
    monkeypatch.setenv("HBFAST_GEMM", "cublas")
    with pytest.raises(ValueError, match="HBFAST_GEMM must be one of"):
        hbfast.topk(torch.ones(2, 3), torch.ones(4, 3), 1)


def test_openblas_lives_beside_torch_and_numpy():
    """hbfast's OpenBLAS (scipy_ prefixed symbols), torch's MKL and numpy's own BLAS in one process."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(64, 48, generator=g), torch.randn(48, 80, generator=g)
    c = torch.empty(64, 80)
    _C.sgemm_cpu(0, False, False, 64, 80, 48, 1.0, a.data_ptr(), 48, b.data_ptr(), 80, 0.0, c.data_ptr(), 80)
    torch.testing.assert_close(c, a @ b, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(a.numpy() @ b.numpy()), c, atol=1e-4, rtol=1e-5)
    assert torch.get_num_threads() >= 1 and np.isfinite(np.linalg.norm(a.numpy()))


def test_search_measures_on_scratch_work_then_keeps_one_product(monkeypatch):
    monkeypatch.delenv("HBFAST_GEMM", raising=False)
    chooser = gemm._Chooser()
    calls = []
    chosen = chooser.decide(("test",), lambda b: calls.append(b))
    n = gemm.WARMUP + gemm.SAMPLES
    one_round = [gemm.MEASURE_ORDER[0]] * n + [gemm.MEASURE_ORDER[1]] * n
    assert calls == one_round * gemm.ROUNDS and chosen in BACKENDS  # interleaved rounds
    assert chooser.decide(("test",), lambda b: calls.append(b)) == chosen and len(calls) == len(one_round) * gemm.ROUNDS
    # a call never mixes products: two identical calls in a fresh process state give identical results
    monkeypatch.setattr(gemm, "chooser", gemm._Chooser())
    g = torch.Generator().manual_seed(5)
    q, c = torch.randn(40, 33, generator=g), torch.randn(500, 33, generator=g)
    rel = torch.randint(0, 500, (40, 3), generator=g)
    first = hbfast.topk(q, c, 7), hbfast.relevant_ranks(q, c, rel)
    second = hbfast.topk(q, c, 7), hbfast.relevant_ranks(q, c, rel)
    assert torch.equal(first[0][0], second[0][0]) and torch.equal(first[0][1], second[0][1])
    assert torch.equal(first[1], second[1])


def test_the_loss_product_is_measured_once_per_machine_and_kept(tmp_path, monkeypatch):
    # a choice timed in every process would make the loss's rounding differ between processes (no exact
    # resume): the first measurement on a machine is written to a file that every later process reads
    monkeypatch.delenv("HBFAST_GEMM", raising=False)
    monkeypatch.setenv("HBFAST_CACHE", str(tmp_path))
    monkeypatch.setattr(gemm, "_loss_choices", {})
    measured = []
    monkeypatch.setattr(gemm, "_measure_loss", lambda *shape: measured.append(shape) or "openblas")
    q = torch.randn(8, 4)
    for _ in range(3):
        with gemm.products(q, 1000, 1000) as mm:
            assert mm is gemm._openblas_mm
    assert measured == [(1000, 1000, 4)]
    stored = json.loads((tmp_path / "gemm-choices.json").read_text())
    assert stored == {gemm.machine(): {"loss/1024/1024/4": "openblas"}}
    monkeypatch.setattr(gemm, "_loss_choices", {})  # a new process: reads the file, measures nothing
    with gemm.products(q, 1024, 999) as mm:
        assert mm is gemm._openblas_mm and len(measured) == 1
    gemm.pin_loss_choices({"loss/1024/1024/4": "mkl"})  # a resumed run: the products of its checkpoint
    with gemm.products(q, 1000, 1000) as mm:
        assert mm is gemm.torch_mm
    assert hbfast.build_info()["gemm"]["loss"] == {"loss/1024/1024/4": "mkl"}
    monkeypatch.setenv("HBFAST_GEMM", "openblas")  # the override wins
    with gemm.products(q, 1000, 1000) as mm:
        assert mm is gemm._openblas_mm


def test_search_choices_are_kept_per_machine(tmp_path, monkeypatch):
    """topk's product is measured by the first process on a machine and read by the later ones."""
    monkeypatch.delenv("HBFAST_GEMM", raising=False)
    monkeypatch.setenv("HBFAST_CACHE", str(tmp_path))
    monkeypatch.setattr(gemm, "chooser", gemm._Chooser(persist=True))
    q, c = integer_data(30, 500, 8, seed=1)
    first = hbfast.topk(q, c, 5)
    (name, chosen), = hbfast.build_info()["gemm"]["chosen"].items()
    assert name.startswith("topk/") and json.loads((tmp_path / "gemm-choices.json").read_text()) == {
        gemm.machine(): {name: chosen}}
    other = next(b for b in BACKENDS if b != chosen)  # a later process finds the file, measures nothing
    (tmp_path / "gemm-choices.json").write_text(json.dumps({gemm.machine(): {name: other}}))
    monkeypatch.setattr(gemm, "chooser", gemm._Chooser(persist=True))
    second = hbfast.topk(q, c, 5)
    assert hbfast.build_info()["gemm"]["chosen"] == {name: other} and not gemm.chooser._times
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # integer data: exact either way


def test_the_loss_uses_torch_where_no_measurement_can_be_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("HBFAST_GEMM", raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HBFAST_CACHE", str(blocker / "cache"))  # cannot be created
    monkeypatch.setattr(gemm, "_loss_choices", {})
    monkeypatch.setattr(gemm, "_measure_loss", lambda *shape: pytest.fail("measured without a place to keep it"))
    with gemm.products(torch.randn(8, 4), 64, 64) as mm:
        assert mm is gemm.torch_mm


def test_processes_on_one_machine_share_the_loss_product(tmp_path):
    import subprocess
    import sys

    from testing import subprocess_env

    code = ("import torch, hbfast; q = torch.randn(300, 16, requires_grad=True); "
            "hbfast.contrastive_loss(q, torch.randn(300, 16)).backward(); print(hbfast.build_info()['gemm']['loss'])")
    env = {**subprocess_env(), "HBFAST_CACHE": str(tmp_path)}
    env.pop("HBFAST_GEMM", None)
    outputs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
               for _ in range(2)]
    assert outputs[0] == outputs[1] and "loss/512/512/16" in outputs[0]
    assert len(json.loads((tmp_path / "gemm-choices.json").read_text())) == 1