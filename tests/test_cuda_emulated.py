"""The CUDA code paths without a GPU: hbfast's CUDA kernels compiled for the host (hbfast._C_emu, see
cuda_emulation.py and csrc/emulate/cuda_runtime.h) behind the real CUDA-side Python (hbfast.ops.loss.cuda,
hbfast.ops.search.cuda, the CUDA branches of search and the block walk), driven on CPU tensors
and checked against hbfast.reference (float64) and the CPU kernels, with tiles and blocks shrunk
(small_tiles) so that small inputs reach every path: several row blocks, column tiles and chunks,
partial tiles, the recompute path, groups, hard negatives, top-k ties and the ranks' recount pass.
Any breach of the CUDA model in a kernel (barrier divergence, a partial warp mask, an index out of
shared memory, a launch over the limits) fails the launch, so fails the test.
"""
import contextlib
import ctypes
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cuda_emulation
import hbfast
from hbfast.ops import _C
from hbfast.ops import ext, safety
from hbfast.ops.loss import DEFAULT_MEMORY_BUDGET, contrastive, cuda as loss_cuda, siglip
from hbfast.ops.search import cuda as search_cuda, flat
from testing import (assert_close_to_reference, integer_data, loss_and_grads, relative_errors, siglip_and_grads,
                     sign_data, unit_data)


@pytest.fixture(scope="session")
def emulated_module(tmp_path_factory):
    missing = cuda_emulation.missing_tools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the emulated CUDA tests: {missing}")
        pytest.skip(f"cannot build the CUDA emulation: {missing}")
    return cuda_emulation.load(tmp_path_factory.mktemp("cuda-emulation"))


class Emulation:
    """``with emulation.cuda():`` CPU tensors take hbfast's CUDA path, into hbfast._C_emu; ``calls``
    records each entry point's name and arguments."""

    def __init__(self, module):
        self.module = module
        self.entry_points = [n for n in dir(module) if n.endswith("_cuda") or n == "contrastive_column_chunks"]
        self.calls = []

    def _recorded(self, name):
        def call(*args):
            self.calls.append((name, args))
            return getattr(self.module, name)(*args)
        return call

    @contextlib.contextmanager
    def cuda(self):
        info = dict(_C.build_info(), cuda=True, cuda_device_count=1, cuda_device_error="")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ext, "runs_cuda_kernels", lambda device: device.type in ("cpu", "cuda"))
            patch.setattr(_C, "build_info", lambda: info)
            for name in self.entry_points:
                patch.setattr(_C, name, self._recorded(name), raising=False)
            yield

    def pass_first_use_checks(self):
        """ops.safety's first-use check of each emulated op family, which must pass (once per process);
        the tests then see only their own calls."""
        with self.cuda():
            for op, check in FIRST_USE_CHECKS:
                assert safety.trusted(op, torch.device("cpu"), check), safety.verdicts()
        self.calls.clear()


FIRST_USE_CHECKS = [("contrastive_loss", contrastive.check_cuda), ("siglip_loss", siglip.check_cuda),
                    ("topk", flat.check_topk_cuda), ("relevant_ranks", flat.check_relevant_ranks_cuda)]


@pytest.fixture
def emulation(emulated_module):
    emulation = Emulation(emulated_module)
    emulation.pass_first_use_checks()
    return emulation


def test_the_emulated_module_has_every_cuda_entry_point(emulation):
    assert emulation.module.block_threads == cuda_emulation.BLOCK_THREADS
    assert len(emulation.entry_points) == 10
    if hbfast.build_info()["cuda"]:  # the same set as the GPU build's, but range search's (not yet emulated:
        # its wrappers take a TileParams bound in bindings.cpp; its kernels compile for the host all the same)
        not_emulated = {"range_collect_cuda", "topk_tile_scores_cuda"}
        assert emulation.entry_points == sorted(n for n in dir(_C) if (n.endswith("_cuda") and n not in not_emulated)
                                                or n == "contrastive_column_chunks")


# ---- the emulation itself ---------------------------------------------------------------------------

def test_emulated_warp_and_block_operations(emulation):
    """Shuffles (xor, up, indexed), votes, atomics and dynamic shared memory over 3 blocks of 96 threads."""
    blocks, threads = 3, 96
    values = np.random.default_rng(0).integers(-3, 100, blocks * threads)
    out = emulation.module.emulation_features(values.tolist(), blocks, threads)
    sums, odd, votes = out[:blocks], out[blocks:2 * blocks], out[2 * blocks:]
    per_block = values.reshape(blocks, threads)
    assert sums == per_block.sum(axis=1).tolist()
    assert odd == (per_block % 2).sum(axis=1).tolist()
    # any(< 0) * 2 + all(>= 0) of the last warp of each block (thread 0 writes its own warp's votes)
    first_warp = per_block[:, :32]
    assert votes[:blocks] == ((first_warp < 0).any(axis=1) * 2 + (first_warp >= 0).all(axis=1)).tolist()
    assert votes[blocks] == 0  # every shuffle delivered the right lane


@pytest.mark.parametrize("case, message", [
    ("static_shared_out_of_bounds", "index out of an array's bounds at .*selftest.cu"),
    ("dynamic_shared_out_of_bounds", "dynamic shared memory index 63 out of bounds"),
    ("early_exit_before_barrier", "barrier divergence"),
    ("two_barriers", "barrier divergence"),
    ("partial_mask", "partial mask"),
    ("shuffle_after_lanes_left", "barrier divergence \\(deadlock\\)"),
    ("partial_warp_shuffle", "full mask in a warp of 16 threads"),
    ("too_many_threads", "more than 1024 threads per block"),
    ("too_large_grid_y", "grid dimensions"),
    ("too_much_dynamic_shared", "bytes of dynamic shared memory"),
])
def test_every_breach_of_the_cuda_model_fails_the_launch(emulation, case, message):
    with pytest.raises(RuntimeError, match=message):
        emulation.module.emulation_violation(case)


# ---- top-k and ranks --------------------------------------------------------------------------------

@pytest.mark.parametrize("metric, k", [("ip", 1), ("ip", 65), ("ip", 300), ("cosine", 7), ("cosine", 64)])
def test_topk_over_several_corpus_tiles(emulation, small_tiles, k, metric):
    """3 query tiles x 16 corpus tiles (keys swap buffers 16 times), many ties: scores and ids equal
    the CPU kernels' bit for bit."""
    q, c = integer_data(40, 1000, 12, seed=k) if metric == "ip" else sign_data(40, 1000, seed=k)
    cpu = hbfast.topk(q, c, k, metric=metric)
    with emulation.cuda():
        got = hbfast.topk(q, c, k, metric=metric)
    assert torch.equal(got[0], cpu[0]) and torch.equal(got[1], cpu[1])


def test_topk_streams_query_blocks_and_chunks(emulation, small_tiles, monkeypatch):
    q, c = integer_data(50, 700, 8, seed=3)
    expected = hbfast.topk(q, c, 20)
    monkeypatch.setattr(flat, "TOPK_STATE_BYTES", 20 * 48 * 7)  # 7 queries per block on the GPU
    with emulation.cuda():
        got = hbfast.topk(q, [c[:150], c[150:151], c[151:]], 20)
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


def test_relevant_ranks_over_several_tiles(emulation, small_tiles):
    q, c = integer_data(40, 600, 8, seed=5)
    rel = torch.randint(-1, 600, (40, 4), generator=torch.Generator().manual_seed(1))
    chunks = [c[:250], c[250:]]
    cpu = hbfast.relevant_ranks(q, chunks, rel, per_chunk=True)
    with emulation.cuda():
        got = hbfast.relevant_ranks(q, chunks, rel, per_chunk=True)
    assert torch.equal(got[0], cpu[0]) and torch.equal(got[1], cpu[1])


@pytest.mark.parametrize("data", ["integer", "random"])
def test_relevant_ranks_recount_follows_the_tile_scores(emulation, small_tiles, monkeypatch, data):
    """The ranks follow the scores of the tiles, not those of the batched products that the first pass
    counts against: with random data the two round differently (the recount fires by itself); in
    both cases the batched scores of query tile 1 are also moved by an ulp (with exact integer data
    only that tile is recounted). Duplicates of an item and ties are ranked by id."""
    g = torch.Generator().manual_seed(4)
    q, c = integer_data(40, 500, 24, seed=4) if data == "integer" else (torch.randn(40, 24, generator=g),
                                                                         torch.randn(500, 24, generator=g))
    c[7] = c[300]  # an item and its duplicate: the tie goes to the lower id
    rel = torch.randint(0, 500, (40, 3), generator=g)
    rel[:, 0] = 300
    real_scores, real_pass, passes = flat._relevant_scores, flat._count_pass, []

    def moved_scores(*args):
        scores = real_scores(*args)
        scores[16:32] = torch.nextafter(scores[16:32], torch.tensor(math.inf))
        return scores

    monkeypatch.setattr(flat, "_relevant_scores", moved_scores)
    monkeypatch.setattr(flat, "_count_pass", lambda *a, **kw: passes.append(a[6]) or real_pass(*a, **kw))
    with emulation.cuda():
        ranks = hbfast.relevant_ranks(q, c, rel)
    assert passes[0] == [0, 16, 32] and len(passes) == 2
    assert passes[1] == [16] if data == "integer" else 16 in passes[1]  # (random: others may round differently too)
    # the ranks of the tile products: the same [16, 64] tiles of torch's product the CUDA walk makes
    scores = torch.cat([torch.cat([q[i:i + 16] @ c[j:j + 64].T for j in range(0, 500, 64)], dim=1)
                        for i in range(0, 40, 16)])
    own = scores.gather(1, rel)
    ids = torch.arange(500)
    beats = (scores[:, None, :] > own[:, :, None]) | ((scores[:, None, :] == own[:, :, None]) &
                                                      (ids[None, None, :] < rel[:, :, None]))
    assert torch.equal(ranks, beats.sum(dim=2) + 1)
    assert (ranks[:, 0] > 1).all()  # item 300 ranks below its duplicate 7


def test_non_finite_and_zero_norm_rows_are_reported_after_the_walk(emulation, small_tiles):
    q, c = integer_data(20, 500, 8, seed=6)
    q[:, 0] += 3
    c[:, 0] += 3
    nan_c = c.clone()
    nan_c[333, 2] = float("nan")  # in the 6th corpus tile
    zero_c = c.clone()
    zero_c[[410, 222]] = 0  # the lowest zero row is named, whichever tile comes first
    with emulation.cuda():
        with pytest.raises(ValueError, match="non-finite scores"):
            hbfast.topk(q, nan_c, 5)
        with pytest.raises(ValueError, match="non-finite scores"):
            hbfast.relevant_ranks(q, nan_c, torch.zeros(20, 1, dtype=torch.int64))
        with pytest.raises(ValueError, match="corpus row 222 has zero norm"):
            hbfast.topk(q, zero_c, 5, metric="cosine")
        with pytest.raises(ValueError, match="corpus row 222 has zero norm"):
            hbfast.relevant_ranks(q, zero_c, torch.full((20, 1), 222), metric="cosine")


def test_device_selection_keys_and_decoding(emulation):
    scores = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1.5, 1.5, -3e38, 3e38, 1.17e-38], dtype=np.float32)
    ids = np.arange(len(scores), dtype=np.int64)[::-1].copy()
    s, i = torch.from_numpy(scores), torch.from_numpy(ids)
    keys = torch.empty(len(scores), dtype=torch.int64)
    emulation.module.topk_keys_cuda(s.data_ptr(), i.data_ptr(), len(scores), keys.data_ptr(), 0)
    assert np.array_equal(keys.numpy(), _C.selection_keys(scores, ids).view(np.int64))
    back_scores, back_ids = torch.empty(len(scores)), torch.empty(len(scores), dtype=torch.int64)
    emulation.module.topk_decode_cuda(keys.data_ptr(), len(scores), back_scores.data_ptr(), back_ids.data_ptr(), 0)
    assert torch.equal(back_ids, i) and torch.equal(back_scores, s.abs() * torch.where(s == 0, 1, s.sign()))


# ---- the contrastive loss ---------------------------------------------------------------------------

@pytest.mark.parametrize("memory_budget", [DEFAULT_MEMORY_BUDGET, 0, 30 * 107 * 4],
                         ids=["cached", "recompute", "half-cached"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_loss_over_several_row_blocks(emulation, small_tiles, memory_budget, symmetric):
    """100 rows in 16-row blocks (column lse merged over blocks and 5-row chunks; 107 columns: two
    64-column tiles of the gradient kernel, the second partial), 7 hard negatives, groups, a
    learnable scale; recompute (memory_budget=0) writes G over the scores it reads."""
    q, p, h = unit_data(100, 24, M=7, seed=1)
    groups = torch.arange(100) % 30
    scale = torch.tensor(2.9, dtype=torch.float64)
    kw = dict(group_ids=groups, symmetric=symmetric, memory_budget=memory_budget)
    ref = loss_and_grads("reference", q, p, h, logit_scale=scale, **kw)
    cpu = loss_and_grads("kernel", q.float(), p.float(), h.float(), logit_scale=scale.float(), **kw)
    with emulation.cuda():
        got = loss_and_grads("kernel", q.float(), p.float(), h.float(), logit_scale=scale.float(), **kw)
    assert_close_to_reference(got, ref, rtol=1e-5)
    assert_close_to_reference(got, cpu, rtol=1e-5)
    spans = {args[11] for name, args in emulation.calls if name == "contrastive_forward_block_cuda"}
    assert spans == {4}  # each row of 107 columns in 4 CTAs (ROW_SPAN_COLUMNS = 32), merged after


def test_loss_with_one_row_and_with_all_pairs_in_one_group(emulation, small_tiles):
    q, p, _ = unit_data(70, 8, seed=2)
    for kw in (dict(), dict(group_ids=torch.zeros(70, dtype=torch.int64))):  # every off-diagonal pair masked
        ref = loss_and_grads("reference", q, p, temperature=0.1, **kw)
        with emulation.cuda():
            got = loss_and_grads("kernel", q.float(), p.float(), temperature=0.1, **kw)
        assert_close_to_reference(got, ref, rtol=1e-5)
    ref = loss_and_grads("reference", q[:1], p[:1])
    with emulation.cuda():
        got = loss_and_grads("kernel", q[:1].float(), p[:1].float())
    assert_close_to_reference(got, ref, rtol=1e-5)
    spans = [args[11] for name, args in emulation.calls if name == "contrastive_forward_block_cuda"]
    assert 3 in spans and spans[-1] == 1  # 70 columns: 3 CTAs a row; 1 column: one


def test_loss_checks_fail_with_their_message(emulation):
    q = F.normalize(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    with emulation.cuda():
        bad = q.clone()
        bad[1, 1] = float("nan")
        with pytest.raises(RuntimeError, match="contains NaN or Inf"):
            hbfast.contrastive_loss(bad, q.flip(0))
        with pytest.raises(RuntimeError, match="scores overflow"):
            hbfast.contrastive_loss(q * 1e19, q.flip(0) * 1e19)


def test_device_math(emulation):
    """exp, log and the log-sum-exp as the device code computes them, against float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-87, 88, 2001), (torch.randn(2000, generator=g) * 30).clamp(-87, 88)]).float()
    y = (torch.randn(len(x), generator=g) * 20).float()
    out = torch.empty(4, len(x))
    positive = x.abs() + 1e-30
    out_log = torch.empty(4, len(x))
    emulation.module.contrastive_device_math_cuda(x.data_ptr(), y.data_ptr(), len(x), out.data_ptr(), 0)
    emulation.module.contrastive_device_math_cuda(positive.data_ptr(), y.data_ptr(), len(x), out_log.data_ptr(), 0)
    xd, yd = x.double(), y.double()
    assert ((out[0].double() - xd.exp()).abs() / xd.exp()).max() < 4e-7
    log_true = positive.double().log()
    assert ((out_log[1].double() - log_true).abs() / log_true.abs().clamp_min(1e-30)).max() < 2.4e-7
    lse_true = torch.logaddexp(xd, yd)
    assert ((out[3].double() - lse_true).abs() / lse_true.abs().clamp_min(1.0)).max() < 5e-7  # x, y pushed in turn


# ---- SigLIP -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("memory_budget", [DEFAULT_MEMORY_BUDGET, 0, 30 * 100 * 4],
                         ids=["cached", "recompute", "half-cached"])
def test_siglip_over_several_row_blocks(emulation, small_tiles, memory_budget):
    """100 rows in 16-row blocks, 100 columns (two gradient-kernel tiles, the second partial); random
    inputs (the trained regime's accuracy is the CPU tests' concern: one formula serves both)."""
    image, text, _ = unit_data(100, 24, seed=3)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)
    ref = siglip_and_grads("reference", image, text, scale, bias)
    cpu = siglip_and_grads("kernel", image.float(), text.float(), scale.float(), bias.float(),
                           memory_budget=memory_budget)
    with emulation.cuda():
        got = siglip_and_grads("kernel", image.float(), text.float(), scale.float(), bias.float(),
                               memory_budget=memory_budget)
    assert max(relative_errors(got, ref)) < 1e-5 and max(relative_errors(got, cpu)) < 1e-5
    assert {args[6] for name, args in emulation.calls if name == "siglip_forward_block_cuda"} == {4}  # 4 CTAs a row


# ---- float32 accuracy of the CUDA losses (test_loss_accuracy's standard, on the emulated kernels) --------

@pytest.mark.parametrize("B,D,cosine,temperature,symmetric,hard,n_groups", [
    (37, 64, 0.99, 0.05, True, 0, 0),    # the trained regime, several row blocks and column chunks
    (37, 64, 0.99, 0.02, False, 5, 0),   # converged rows (true gradient ~1e-18), hard negatives
    (50, 16, 0.95, 0.01, True, 9, 3),    # groups and hard negatives at the lowest temperature
    (50, 32, None, 0.05, True, 0, 7),    # random inputs
    (1, 8, 0.99, 0.1, False, 3, 0),      # one row
])
def test_contrastive_float32_accuracy_on_the_cuda_path(emulation, small_tiles, B, D, cosine, temperature, symmetric,
                                                       hard, n_groups):
    import test_loss_accuracy

    with emulation.cuda():
        test_loss_accuracy._check_contrastive(B, D, cosine, temperature, symmetric, hard, n_groups, seed=B + D)
    assert any(name == "contrastive_backward_block_cuda" for name, _ in emulation.calls)


@pytest.mark.parametrize("B,D,cosine,scale,bias", [
    (37, 64, 0.99, 100.0, -20.0), (37, 64, 0.9, 10.0, 0.0), (50, 32, None, 10.0, -10.0), (1, 64, 0.99, 30.0, -5.0)])
def test_siglip_float32_accuracy_on_the_cuda_path(emulation, small_tiles, B, D, cosine, scale, bias):
    import test_loss_accuracy

    with emulation.cuda():
        test_loss_accuracy._check_siglip(B, D, cosine, scale, bias, seed=B + D)
    assert any(name == "siglip_backward_block_cuda" for name, _ in emulation.calls)


# ---- the first-use safety net (ops.safety): a wrong kernel is caught, warned about once and replaced ----

@pytest.fixture
def fresh_process(monkeypatch):
    """No first-use verdicts yet (as in a new process); the session's are restored after the test."""
    monkeypatch.setattr(safety, "_verdicts", {})


def test_a_wrong_contrastive_kernel_is_replaced_after_one_warning(emulation, fresh_process, monkeypatch):
    real = loss_cuda.contrastive_forward

    def wrong(*args):  # every row's log-sum-exp off by 1%
        row_stats, col_stats, positive, cache = real(*args)
        return row_stats + torch.tensor([0.0, 1e-2]), col_stats, positive, cache

    monkeypatch.setattr(loss_cuda, "contrastive_forward", wrong)
    q, p, h = unit_data(40, 16, M=3, seed=3)
    groups = torch.arange(40) % 13
    ref = loss_and_grads("reference", q, p, h, temperature=0.05, group_ids=groups)
    with emulation.cuda():
        with pytest.warns(hbfast.CUDAKernelMismatchWarning, match=r"contrastive_loss on cpu .*row margins"):
            got = loss_and_grads("kernel", q.float(), p.float(), h.float(), temperature=0.05, group_ids=groups)
        calls = len(emulation.calls)
        again = loss_and_grads("kernel", q.float(), p.float(), h.float(), temperature=0.05, group_ids=groups)
    assert_close_to_reference(got, ref, rtol=1e-5)
    assert_close_to_reference(again, ref, rtol=1e-5)
    assert len(emulation.calls) == calls  # the PyTorch path: no kernel launched after the verdict
    assert safety.verdicts() == {"contrastive_loss on cpu": False}


def test_a_wrong_siglip_gradient_kernel_is_replaced(emulation, fresh_process, monkeypatch):
    real = loss_cuda.siglip_backward
    monkeypatch.setattr(loss_cuda, "siglip_backward",
                        lambda *args: tuple(t * 1.01 for t in real(*args)))  # every gradient 1% too large
    image, text, _ = unit_data(30, 8, seed=4)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)
    ref = siglip_and_grads("reference", image, text, scale, bias)
    with emulation.cuda():
        with pytest.warns(hbfast.CUDAKernelMismatchWarning, match="siglip_loss on cpu .*grad image"):
            got = siglip_and_grads("kernel", image.float(), text.float(), scale.float(), bias.float())
    assert_close_to_reference(got, ref, rtol=1e-5)


def test_a_wrong_topk_kernel_is_replaced(emulation, fresh_process, monkeypatch):
    real = search_cuda.topk

    def wrong(*args, **kw):  # the second best id reported as the best
        scores, ids = real(*args, **kw)
        return scores, (ids[:, [1, 0] + list(range(2, ids.shape[1]))] if ids.shape[1] > 1 else ids + 1)

    monkeypatch.setattr(search_cuda, "topk", wrong)
    q, c = integer_data(20, 300, 8, seed=5)
    expected = hbfast.topk(q, c, 10)
    with emulation.cuda():
        with pytest.warns(hbfast.CUDAKernelMismatchWarning, match="topk on cpu .*topk ids"):
            got = hbfast.topk(q, c, 10)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_a_wrong_rank_count_kernel_is_replaced(emulation, fresh_process, monkeypatch):
    real = emulation.module.count_beating_cuda

    def wrong(tile, rows, cols, ld, first_id, rel_scores, rel_ids, r, counts, own, bad, stream):
        real(tile, rows, cols, ld, first_id, rel_scores, rel_ids, r, counts, own, bad, stream)
        c = torch.from_numpy(np.ctypeslib.as_array((ctypes.c_int64 * (rows * r)).from_address(counts)))
        c += 1  # one candidate too many per tile

    monkeypatch.setattr(emulation.module, "count_beating_cuda", wrong)
    q, c = integer_data(20, 300, 8, seed=6)
    rel = torch.randint(-1, 300, (20, 4), generator=torch.Generator().manual_seed(2))
    expected = hbfast.relevant_ranks(q, c, rel)
    with emulation.cuda():
        with pytest.warns(hbfast.CUDAKernelMismatchWarning, match="relevant_ranks on cpu"):
            got = hbfast.relevant_ranks(q, c, rel)
    assert torch.equal(got, expected)
