"""The paths only the GPU takes, reached with small inputs by shrinking hbfast's tile and block sizes:
top-k over several corpus tiles (the key double-buffering) and query blocks, the loss over several
row blocks (column log-sum-exp merge across blocks and row chunks), the recompute path (G written
over the scores it reads), the learnable-scale gradient (float64 atomics), the non-finite flags,
non-default streams, a second GPU, TF32 left on by the user, no device-to-host waits in the loss,
and the device math (exp, log, selection keys) as the GPU computes it. Each compares with the CPU
kernels or hbfast.reference. Only the PTX check and the error-path tests run without a GPU.
"""
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hbfast
from hbfast.ops import _C
from hbfast.ops import ext
from hbfast.ops.loss import DEFAULT_MEMORY_BUDGET
from hbfast.ops.loss import contrastive
from hbfast.ops.search import flat
from testing import (assert_close_to_reference, assert_fails_on_the_device, integer_data, loss_and_grads,
                     relative_errors, requires_cuda, siglip_and_grads, sign_data, unit_data)

REPO = Path(__file__).resolve().parents[1]
requires_two_gpus = pytest.mark.skipif(not (hbfast.build_info()["cuda"] and torch.cuda.device_count() >= 2),
                                       reason="needs two CUDA GPUs")


# ---- runs everywhere: the compiled device code and the error paths ------------------------------

def _cuda_flags_of_the_build():
    """The CUDA compile options CMakeLists.txt gives the kernels."""
    text = (REPO / "CMakeLists.txt").read_text()
    found = re.search(r"\$<\$<COMPILE_LANGUAGE:CUDA>:([^>]*)>", text)
    assert found, "CMakeLists.txt no longer sets CUDA compile options where this test looks"
    return found.group(1).split()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("source", sorted(p.name for p in (REPO / "csrc" / "cuda").glob("*.cu")
                                           if "__global__" in p.read_text()))
def test_device_code_keeps_exact_float_semantics(source, tmp_path):
    """Compiled with the build's flags, no kernel may flush subnormals (.ftz: tiny scores would tie
    on the GPU and order by value on the CPU) or use approximate math (.approx: lg2.approx in the
    row log-sum-exp where the column term uses an exact log): what --use_fast_math would bring."""
    ptx = tmp_path / "kernels.ptx"
    subprocess.run(["nvcc", "-ptx", "-arch=compute_80", "-std=c++17", *_cuda_flags_of_the_build(),
                    f"-I{REPO / 'csrc'}", str(REPO / "csrc" / "cuda" / source), "-o", str(ptx)],
                   check=True, capture_output=True)
    text = ptx.read_text()
    assert ".entry" in text, "no kernel found in the PTX"
    bad = sorted(set(re.findall(r"[a-z0-9.]*\.(?:ftz|approx)[a-z0-9.]*", text)))
    assert not bad, f"{source}: {bad}"


def test_exact_fp32_matmul_restores_the_users_tf32_setting():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        for legacy in (True, False):
            matmul.allow_tf32 = legacy  # the legacy API, as most users write it
            with ext.exact_fp32_matmul():  # (torch forbids reading the legacy flag in here)
                assert matmul.fp32_precision == "ieee"
            assert matmul.allow_tf32 is legacy
        torch.set_float32_matmul_precision("high")
        with ext.exact_fp32_matmul():
            assert matmul.fp32_precision == "ieee"
        assert matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
        matmul.fp32_precision = "tf32"  # the new API
        with pytest.raises(KeyError), ext.exact_fp32_matmul():
            raise KeyError("restored on errors too")
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before
        torch.set_float32_matmul_precision("highest")


def test_exact_fp32_matmul_is_safe_across_threads():
    """Two threads (DataParallel replicas) whose exact regions interleave: the setting stays exact until
    the last one leaves, then the user's is back (a save/restore per thread would leave TF32 on)."""
    import threading

    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with ext.exact_fp32_matmul():
            a_inside.set()
            b_inside.wait(10)
        a_left.set()

    def b():
        a_inside.wait(10)
        with ext.exact_fp32_matmul():
            b_inside.set()
            a_left.wait(10)
            seen["after a left"] = matmul.fp32_precision

    try:
        matmul.fp32_precision = "tf32"
        threads = [threading.Thread(target=f) for f in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert seen == {"after a left": "ieee"} and matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


def test_a_gpu_hbfast_cannot_see_is_an_error_that_says_why(monkeypatch):
    """The static CUDA runtime with a driver older than the toolkit sees no device while torch does."""
    info = dict(_C.build_info(), cuda=True, cuda_device_count=0, cuda_runtime_version=13000,
                cuda_driver_version=12040,
                cuda_device_error="cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    monkeypatch.setattr(ext._C, "build_info", lambda: info)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    reason = ext.cuda_unusable_reason()
    assert "driver supports CUDA 12.4" in reason and "CUDA 13.0 runtime" in reason and "InsufficientDriver" in reason
    with pytest.raises(RuntimeError, match="older than the CUDA 13.0 runtime"):
        ext.require_cuda("hbfast.topk")
    assert hbfast.build_info()["cuda_unusable"] == reason


@pytest.mark.parametrize("capability, archs, runs", [
    ((7, 5), ["80", "90"], False),  # a T4 under the default build
    ((8, 6), ["80", "90"], True),   # sm_80 machine code runs on 8.x
    ((12, 0), ["80", "90"], True),  # compute_90 PTX, compiled by the driver
    ((12, 0), ["80-real", "90-real"], False),  # machine code only
    ((7, 5), ["75", "80", "90"], True),
])
def test_a_gpu_no_compiled_arch_runs_on_is_refused_by_name(monkeypatch, capability, archs, runs):
    info = dict(_C.build_info(), cuda=True, cuda_device_count=1, cuda_archs=archs)
    monkeypatch.setattr(ext._C, "build_info", lambda: info)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    if runs:
        ext.require_cuda("hbfast.topk", torch.device("cuda", 0))
        return
    with pytest.raises(hbfast.UnsupportedGPUError, match=rf"compute capability {capability[0]}\.{capability[1]}.*"
                                                         rf'HBFAST_CUDA_ARCHS="{capability[0]}{capability[1]};'):
        ext.require_cuda("hbfast.topk", torch.device("cuda", 0))


def test_hbfast_sees_the_gpus_torch_sees():
    """Fails (rather than letting every GPU test skip) where torch has a GPU that hbfast cannot use."""
    assert hbfast.build_info()["cuda_unusable"] == ""


# ---- top-k and ranks over several tiles -----------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("k", [1, 7, 64, 65, 300])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_topk_over_several_corpus_tiles(small_tiles, k, metric):
    # 3 query tiles x 16 corpus tiles: keys swap buffers 16 times. Exact products for both metrics (sign
    # data: cosine rows of +-0.25), so the same scores and the same ties broken by id, ids compared too.
    q, c = integer_data(40, 1000, 12, seed=k) if metric == "ip" else sign_data(40, 1000, seed=k)
    cpu = hbfast.topk(q, c, k, metric=metric)
    gpu = hbfast.topk(q.cuda(), c.cuda(), k, metric=metric)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])


@requires_cuda
def test_topk_streams_query_blocks_and_chunks(small_tiles, monkeypatch):
    q, c = integer_data(50, 700, 8, seed=3)
    expected = hbfast.topk(q, c, 20)
    monkeypatch.setattr(flat, "TOPK_STATE_BYTES", 20 * 48 * 7)  # 7 queries per block on the GPU
    chunks = [c[:150].cuda(), c[150:151].cuda(), c[151:].cuda()]
    gpu = hbfast.topk(q.cuda(), chunks, 20)
    assert torch.equal(gpu[1].cpu(), expected[1]) and torch.equal(gpu[0].cpu(), expected[0])


@requires_cuda
def test_relevant_ranks_over_several_tiles(small_tiles):
    q, c = integer_data(40, 600, 8, seed=5)
    rel = torch.randint(-1, 600, (40, 4), generator=torch.Generator().manual_seed(1))
    chunks = [c[:250], c[250:]]
    cpu = hbfast.relevant_ranks(q, chunks, rel, per_chunk=True)
    gpu = hbfast.relevant_ranks(q.cuda(), [x.cuda() for x in chunks], rel.cuda(), per_chunk=True)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])


@requires_cuda
def test_non_finite_and_zero_norm_rows_are_reported_after_the_walk(small_tiles):
    q, c = integer_data(20, 500, 8, seed=6)
    q[:, 0] += 3
    c[:, 0] += 3
    nan_c = c.clone()
    nan_c[333, 2] = float("nan")  # in the 6th corpus tile
    with pytest.raises(ValueError, match="non-finite scores"):
        hbfast.topk(q.cuda(), nan_c.cuda(), 5)
    with pytest.raises(ValueError, match="non-finite scores"):
        hbfast.relevant_ranks(q.cuda(), nan_c.cuda(), torch.zeros(20, 1, dtype=torch.int64).cuda())
    zero_c = c.clone()
    zero_c[[410, 222]] = 0  # the lowest zero row is named, whichever tile comes first
    for call in (lambda: hbfast.topk(q.cuda(), zero_c.cuda(), 5, metric="cosine"),
                 lambda: hbfast.relevant_ranks(q.cuda(), zero_c.cuda(), torch.full((20, 1), 222).cuda(),
                                               metric="cosine")):
        with pytest.raises(ValueError, match="corpus row 222 has zero norm"):
            call()


@requires_cuda
def test_tiny_scores_order_by_value_as_on_the_cpu():
    """Subnormal scores must not be flushed to zero in the GPU's compares and keys (the score tile
    is given to the kernels directly, whatever cuBLAS would do with such products)."""
    tile = torch.tensor([[3e-39, 1e-39, 2e-39, 0.0, -1e-39, 1e-45, -0.0]], device="cuda")  # subnormal scores
    n = tile.shape[1]
    stream = torch.cuda.current_stream().cuda_stream
    bad = torch.zeros(1, dtype=torch.int32, device="cuda")
    keys_in = torch.zeros(1, n, dtype=torch.int64, device="cuda")
    keys_out = torch.empty_like(keys_in)
    _C.topk_merge_cuda(tile.data_ptr(), 1, n, n, 0, keys_in.data_ptr(), keys_out.data_ptr(), n, bad.data_ptr(), stream)
    scores, ids = _C.decode_keys(np.sort(keys_out.cpu().numpy().view(np.uint64)[0])[::-1].copy())
    assert ids.tolist() == [0, 2, 1, 5, 3, 6, 4]  # by value; 0 and -0 tie (lower id first)
    assert np.array_equal(scores, tile.cpu().numpy()[0][ids])  # (-0 decodes as +0, equal to it)
    rel_ids = torch.tensor([[1, 3, 6]], device="cuda")
    rel_scores = tile[:, [1, 3, 6]].contiguous()
    counts = torch.zeros(1, 3, dtype=torch.int64, device="cuda")
    own = rel_scores.clone()
    _C.count_beating_cuda(tile.data_ptr(), 1, n, n, 0, rel_scores.data_ptr(), rel_ids.data_ptr(), 3,
                          counts.data_ptr(), own.data_ptr(), bad.data_ptr(), stream)
    assert counts.tolist() == [[2, 4, 5]] and bad.item() == 0


@requires_cuda
def test_device_selection_keys_equal_the_hosts():
    scores = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1.5, 1.5, -3e38, 3e38, 1.17e-38], dtype=np.float32)
    ids = np.arange(len(scores), dtype=np.int64)[::-1].copy()
    host = _C.selection_keys(scores, ids).view(np.int64)
    s, i = torch.from_numpy(scores).cuda(), torch.from_numpy(ids).cuda()
    device = torch.empty(len(scores), dtype=torch.int64, device="cuda")
    _C.topk_keys_cuda(s.data_ptr(), i.data_ptr(), len(scores), device.data_ptr(),
                      torch.cuda.current_stream().cuda_stream)
    assert np.array_equal(device.cpu().numpy(), host)


# ---- the loss over several blocks ----------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("memory_budget", [DEFAULT_MEMORY_BUDGET, 0, 30 * 107 * 4],
                         ids=["cached", "recompute", "half-cached"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_loss_over_several_row_blocks(small_tiles, memory_budget, symmetric):
    """100 rows in 16-row blocks (column lse merged over blocks and 5-row chunks), 7 hard negatives,
    groups; recompute (memory_budget=0) writes G over the scores it reads."""
    q, p, h = unit_data(100, 24, M=7, seed=1)
    groups = torch.arange(100) % 30
    kw = dict(group_ids=groups, symmetric=symmetric, memory_budget=memory_budget)
    ref = loss_and_grads("reference", q, p, h, **kw)
    kw["group_ids"] = groups.cuda()
    got = loss_and_grads("kernel", *(t.float().cuda() for t in (q, p, h)), **kw)
    assert_close_to_reference(got, ref, rtol=1e-5)


@requires_cuda
@pytest.mark.parametrize("memory_budget", [DEFAULT_MEMORY_BUDGET, 0], ids=["cached", "recompute"])
def test_learnable_scale_gradient(small_tiles, memory_budget):
    """dL/dscale sums G * X over every block and 256-column tile of the gradient kernel (float64 atomics)."""
    q, p, _ = unit_data(700, 16, seed=2)
    logit_scale = torch.tensor(2.9, dtype=torch.float64)
    ref = loss_and_grads("reference", q, p, logit_scale=logit_scale, memory_budget=memory_budget)
    got = loss_and_grads("kernel", q.float().cuda(), p.float().cuda(), logit_scale=logit_scale.float().cuda(),
                         memory_budget=memory_budget)
    assert_close_to_reference(got, ref, rtol=1e-5)


@requires_cuda
def test_the_loss_step_never_waits_for_the_device(small_tiles):
    """Forward and backward (groups, learnable scale, normalize, both cache paths) under torch's
    sync debug mode "error": a float(scale), a flag read or torch.unique would raise."""
    q, p, h = (t.float().cuda() for t in unit_data(64, 16, M=3, seed=3))
    groups = (torch.arange(64) % 9).cuda()
    module = hbfast.ContrastiveLoss(learnable_scale=True, normalize=True).cuda()
    leaves = [q.requires_grad_(), p.requires_grad_()]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for budget in (DEFAULT_MEMORY_BUDGET, 0):
            module.memory_budget = budget
            loss = module(*leaves, hard_negatives=h, group_ids=groups)
            loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = loss_and_grads("reference", *(t.detach().double().cpu() for t in (q, p, h)),
                         logit_scale=module.logit_scale.detach().double().cpu(), normalize=True,
                         group_ids=groups.cpu())
    got = loss_and_grads("kernel", q.detach(), p.detach(), h, logit_scale=module.logit_scale.detach(),
                         normalize=True, group_ids=groups)
    assert_close_to_reference(got, ref, rtol=1e-5)


@requires_cuda
@pytest.mark.parametrize("bad", ["nan_input", "bad_scale", "overflow"])
def test_loss_checks_fail_on_the_device_with_their_message(bad):
    """The CUDA checks are device-side assertions (they end the CUDA context, so each runs in its
    own process); the message names the problem."""
    setup = {"nan_input": "q[1, 1] = float('nan')", "bad_scale": "kw['logit_scale'] = torch.tensor(float('nan')).cuda()",
             "overflow": "q *= 1e19; p *= 1e19"}[bad]
    message = {"nan_input": "contains NaN or Inf", "bad_scale": "scale must be finite",
               "overflow": "scores overflow"}[bad]
    assert_fails_on_the_device("import torch, hbfast\n"
                               "q = torch.nn.functional.normalize(torch.randn(32, 8), dim=1).cuda()\n"
                               f"p = q.flip(0).clone(); kw = {{}}\n{setup}\n"
                               "loss = hbfast.contrastive_loss(q, p, **kw)", message)


# ---- streams, devices, TF32 ----------------------------------------------------------------------

@requires_cuda
def test_non_default_stream_gives_the_same_results(small_tiles):
    q, c = integer_data(40, 900, 8, seed=7)
    lq, lp, lh = (t.float().cuda() for t in unit_data(80, 16, M=5, seed=4))
    expected_topk = hbfast.topk(q.cuda(), c.cuda(), 9)
    expected_loss = loss_and_grads("kernel", lq, lp, lh, memory_budget=0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keeps the side stream busy: work queued elsewhere would run early
        got_topk = hbfast.topk(q.cuda(), c.cuda(), 9)
        got_loss = loss_and_grads("kernel", lq, lp, lh, memory_budget=0)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(got_topk[1], expected_topk[1]) and torch.equal(got_topk[0], expected_topk[0])
    for a, b in zip(got_loss, expected_loss):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@requires_two_gpus
def test_second_gpu_while_the_first_is_current(small_tiles):
    q, c = integer_data(30, 500, 8, seed=8)
    lq, lp, _ = (t.float() for t in unit_data(60, 16, seed=5))
    rel = torch.randint(0, 500, (30, 2), generator=torch.Generator().manual_seed(2))
    with torch.cuda.device(0):
        got_topk = hbfast.topk(q.to("cuda:1"), c.to("cuda:1"), 11)
        got_ranks = hbfast.relevant_ranks(q.to("cuda:1"), c.to("cuda:1"), rel.to("cuda:1"))
        got_loss = loss_and_grads("kernel", lq.to("cuda:1"), lp.to("cuda:1"), memory_budget=0)
    assert got_topk[1].device == torch.device("cuda:1")
    cpu = hbfast.topk(q, c, 11)
    assert torch.equal(got_topk[1].cpu(), cpu[1]) and torch.equal(got_topk[0].cpu(), cpu[0])
    assert torch.equal(got_ranks.cpu(), hbfast.relevant_ranks(q, c, rel))
    assert_close_to_reference(got_loss, loss_and_grads("reference", lq.double(), lp.double(), memory_budget=0), 1e-5)


@requires_cuda
def test_tf32_enabled_by_the_user_changes_nothing(small_tiles):
    """Integers above 2^11 lose bits in TF32 (10-bit mantissa) but are exact in float32 products."""
    q, c = integer_data(24, 400, 2, seed=9, low=2049, high=2100)  # 12 significant bits: TF32 keeps 11
    q[::2] *= -1
    c[1::3] *= -1  # |score| < 2 * 2100^2 < 2^24: exact in float32
    lq, lp, _ = unit_data(50, 16, seed=6)
    ref_loss = loss_and_grads("reference", lq, lp, memory_budget=0)
    cpu = hbfast.topk(q, c, 10)
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.allow_tf32 = True
    try:
        gpu = hbfast.topk(q.cuda(), c.cuda(), 10)
        rel = cpu[1][:, [0, 9]]
        ranks = hbfast.relevant_ranks(q.cuda(), c.cuda(), rel.cuda())
        got_loss = loss_and_grads("kernel", lq.float().cuda(), lp.float().cuda(), memory_budget=0)
        assert matmul.allow_tf32  # the user's setting is back
    finally:
        matmul.fp32_precision = before
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
    assert torch.equal(ranks.cpu(), hbfast.relevant_ranks(q, c, rel))
    assert_close_to_reference(got_loss, ref_loss, rtol=1e-5)  # TF32 would be ~1e-3 off


# ---- the device math ------------------------------------------------------------------------------

@requires_cuda
def test_device_math_accuracy():
    """exp, log and the log-sum-exp as the GPU computes them, against float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-87, 88, 20001), (torch.randn(20000, generator=g) * 30).clamp(-87, 88)]).float()
    y = (torch.randn(len(x), generator=g) * 20).float()
    positive = x.abs() + 1e-30
    out = torch.empty(4, len(x), device="cuda")
    xs, ys = x.cuda(), y.cuda()
    _C.contrastive_device_math_cuda(xs.data_ptr(), ys.data_ptr(), len(x), out.data_ptr(),
                                    torch.cuda.current_stream().cuda_stream)
    exp_dev, _, _, lse_pair = out.double().cpu()
    xd, yd = x.double(), y.double()
    assert ((exp_dev - xd.exp()).abs() / xd.exp()).max() < 4e-7  # ~2 ulp, as on the CPU
    out_log = torch.empty(4, len(x), device="cuda")
    ps = positive.cuda()
    _C.contrastive_device_math_cuda(ps.data_ptr(), ys.data_ptr(), len(x), out_log.data_ptr(),
                                    torch.cuda.current_stream().cuda_stream)
    log_dev = out_log[1].double().cpu()
    log_true = positive.double().log()
    assert ((log_dev - log_true).abs() / log_true.abs().clamp_min(1e-30)).max() < 2.4e-7  # 2 ulp: no approx log
    lse_true = torch.logaddexp(xd, yd)
    assert ((lse_pair - lse_true).abs() / lse_true.abs().clamp_min(1.0)).max() < 5e-7


def test_group_codes_from_a_sort_equal_uniques_inverse():
    """The sync-free group codes (a sort, no data-dependent sizes) are torch.unique's inverse."""
    g = torch.Generator().manual_seed(3)
    for ids in (torch.randint(-5, 5, (200,), generator=g), torch.tensor([2**40, -(2**40), 7, 7, 2**40]),
                torch.tensor([3])):
        codes = contrastive._group_codes(ids)
        assert codes.dtype == torch.int32 and torch.equal(codes.long(), torch.unique(ids, return_inverse=True)[1])


# ---- the paths the first GPU run must see (issue 22) --------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("memory_budget", [DEFAULT_MEMORY_BUDGET, 0, 30 * 300 * 4],
                         ids=["cached", "recompute", "half-cached"])
def test_siglip_over_several_row_blocks(small_tiles, memory_budget):
    """300 rows in 16-row blocks, 300 columns: two 256-thread tiles of the gradient kernel, the second
    partial; scale and bias gradients summed over every block (float64 atomics)."""
    image, text, _ = unit_data(300, 24, seed=3)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)
    ref = siglip_and_grads("reference", image, text, scale, bias)
    got = siglip_and_grads("kernel", *(t.float().cuda() for t in (image, text, scale, bias)),
                           memory_budget=memory_budget)
    assert max(relative_errors(got, ref)) < 1e-5


def trained_pairs(B, D, cosine, seed=0):
    """Unit rows [B, D] (float64), each text at exactly `cosine` to its image: where training ends up."""
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    noise = torch.randn(B, D, generator=g, dtype=torch.float64)
    noise = F.normalize(noise - (noise * image).sum(1, keepdim=True) * image, dim=1)  # orthogonal to image
    return image, cosine * image + (1 - cosine**2) ** 0.5 * noise


@requires_cuda
def test_siglip_in_the_trained_regime():
    """Positives at cosine 0.99, scale 100, bias -20 (positive logits ~79, negatives ~-20): the loss
    and every gradient within 2x PyTorch's own float32 error against float64 (issue 22's bar:
    relative, judged absolutely below a loss of 1e-4 and a gradient norm of 1e-6)."""
    image, text = trained_pairs(512, 2048, 0.99)
    scale, bias = torch.tensor(100.0, dtype=torch.float64), torch.tensor(-20.0, dtype=torch.float64)
    ref = siglip_and_grads("reference", image, text, scale, bias)
    inputs = [t.float() for t in (image, text, scale, bias)]
    torch32 = siglip_and_grads("reference", *inputs)
    got = siglip_and_grads("kernel", *(t.cuda() for t in inputs))
    for name, a, t, r, floor in zip(["loss", "image", "text", "scale", "bias"], got, torch32, ref,
                                    [1e-4, 1e-6, 1e-6, 1e-6, 1e-6]):
        r = r.detach().double()
        error = lambda x: ((x.detach().double().cpu() - r).norm() / max(r.norm().item(), floor)).item()  # noqa: E731
        assert error(a) <= 2 * error(t) + 1e-6, (name, error(a), error(t))


@requires_cuda
def test_gather_on_one_gpu(tmp_path, small_tiles):
    """gather=True in a one-process group (the distributed path on a single GPU: the size exchange,
    the gather with gradients, the row offset) gives the losses and gradients of gather=False."""
    import torch.distributed as dist

    backend = "nccl" if dist.is_nccl_available() else "gloo"
    torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        image, text, _ = (t.float().cuda() for t in unit_data(40, 16, seed=5))
        scale, bias = torch.tensor(10.0).cuda(), torch.tensor(-5.0).cuda()
        plain = siglip_and_grads("kernel", image, text, scale, bias)
        gathered = siglip_and_grads("kernel", image, text, scale, bias, gather=True)
        for a, b in zip(gathered, plain):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        groups = (torch.arange(40) % 7).cuda()
        plain = loss_and_grads("kernel", image, text, group_ids=groups)
        gathered = loss_and_grads("kernel", image, text, group_ids=groups, gather=True)
        for a, b in zip(gathered, plain):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    finally:
        dist.destroy_process_group()


@requires_cuda
@pytest.mark.parametrize("symmetric", [True, False])
def test_loss_with_groups_over_several_column_tiles(small_tiles, symmetric):
    """300 rows, 20 hard negatives: 320 columns, two 256-thread tiles of the gradient kernel (the
    second partial) and two column blocks of the column log-sum-exp; groups of 3 rows 100 apart, so
    masked pairs fall in every tile and every row block."""
    q, p, h = unit_data(300, 16, M=20, seed=7)
    groups = torch.arange(300) % 100
    for memory_budget in (DEFAULT_MEMORY_BUDGET, 0):
        kw = dict(group_ids=groups, symmetric=symmetric, memory_budget=memory_budget)
        ref = loss_and_grads("reference", q, p, h, **kw)
        kw["group_ids"] = groups.cuda()
        got = loss_and_grads("kernel", *(t.float().cuda() for t in (q, p, h)), **kw)
        assert_close_to_reference(got, ref, rtol=1e-5)


@requires_cuda
def test_relevant_ranks_recount_with_non_integer_data(small_tiles, monkeypatch):
    """Random data: cuBLAS's tiles and the batched products of the relevant scores round differently,
    so the recount pass fires (here also forced on query tile 1 by an ulp); the ranks must be those
    of the tile products, an item's duplicate (lower id) ranked above it."""
    g = torch.Generator().manual_seed(4)
    q, c = torch.randn(40, 24, generator=g).cuda(), torch.randn(500, 24, generator=g).cuda()
    c[7] = c[300]
    rel = torch.randint(0, 500, (40, 3), generator=g).cuda()
    rel[:, 0] = 300
    real_scores, real_pass, passes = flat._relevant_scores, flat._count_pass, []

    def moved_scores(*args):
        scores = real_scores(*args)
        scores[16:32] = torch.nextafter(scores[16:32], torch.tensor(math.inf, device=scores.device))
        return scores

    monkeypatch.setattr(flat, "_relevant_scores", moved_scores)
    monkeypatch.setattr(flat, "_count_pass", lambda *a, **kw: passes.append(a[6]) or real_pass(*a, **kw))
    ranks = hbfast.relevant_ranks(q, c, rel)
    assert passes[0] == [0, 16, 32] and 16 in passes[1]
    with ext.exact_fp32_matmul():  # the walk's [16, 64] tiles, as it computes them
        scores = torch.cat([torch.cat([torch.matmul(q[i:i + 16], c[j:j + 64].T) for j in range(0, 500, 64)], dim=1)
                            for i in range(0, 40, 16)])
    own = scores.gather(1, rel)
    ids = torch.arange(500, device=q.device)
    beats = (scores[:, None, :] > own[:, :, None]) | ((scores[:, None, :] == own[:, :, None]) &
                                                      (ids[None, None, :] < rel[:, :, None]))
    assert torch.equal(ranks, beats.sum(dim=2) + 1)
    assert (ranks[:, 0] > 1).all()


def chunked_contrastive_reference(q, p, scale, chunk=2048):
    """The one-sided and symmetric mean losses and the one-sided loss's gradients, in float64 on q's
    device, one chunk of rows at a time (no B x B matrix)."""
    B = q.shape[0]
    row_lse = torch.empty(B, dtype=q.dtype, device=q.device)
    col_parts, grad_q, grad_p = [], torch.empty_like(q), torch.zeros_like(p)
    for i0 in range(0, B, chunk):
        s = scale * (q[i0:i0 + chunk] @ p.T)  # [chunk, B]
        row_lse[i0:i0 + chunk] = s.logsumexp(1)
        col_parts.append(s.logsumexp(0))
        soft = torch.softmax(s, dim=1)
        grad_q[i0:i0 + chunk] = scale / B * (soft @ p - p[i0:i0 + chunk])
        grad_p += scale / B * (soft.T @ q[i0:i0 + chunk])
    grad_p -= scale / B * q
    col_lse = torch.stack(col_parts).logsumexp(0)
    diag = scale * (q * p).sum(1)
    one_sided = (row_lse - diag).mean()
    return one_sided, 0.5 * (one_sided + (col_lse - diag).mean()), grad_q, grad_p


@requires_cuda
def test_loss_at_a_batch_whose_square_overflows_int32():
    """B = 46341: B * B > 2^31 - 1, so every index into the score matrix and its blocks needs 64 bits.
    Against a float64 reference computed in row chunks on the GPU (a B x B matrix would take 17 GB)."""
    B = 46341
    q, p, _ = (t.cuda() for t in unit_data(B, 8, seed=11))
    one_sided, symmetric, grad_q, grad_p = chunked_contrastive_reference(q, p, scale=10.0)
    leaves = [t.float().requires_grad_() for t in (q, p)]
    loss = hbfast.contrastive_loss(*leaves, temperature=0.1, symmetric=False)
    loss.backward()
    assert max(relative_errors([loss, leaves[0].grad, leaves[1].grad], [one_sided, grad_q, grad_p])) < 1e-5
    with torch.no_grad():
        both = hbfast.contrastive_loss(q.float(), p.float(), temperature=0.1)
    assert relative_errors([both], [symmetric])[0] < 1e-5


@requires_cuda
def test_every_cuda_op_family_passes_its_first_use_check(monkeypatch):
    """ops.safety's checks on this GPU: each op family's kernels agree with the PyTorch path (a
    mismatch would warn, and the warning is an error here), so nothing falls back."""
    from hbfast.ops import safety
    from hbfast.ops.loss import siglip
    from hbfast.ops.search import radius

    monkeypatch.setattr(safety, "_verdicts", {})
    device = torch.device("cuda", 0)
    checks = [("contrastive_loss", contrastive.check_cuda), ("siglip_loss", siglip.check_cuda),
              ("topk", flat.check_topk_cuda), ("relevant_ranks", flat.check_relevant_ranks_cuda),
              ("range_search", radius.check_range_search_cuda)]
    for op, check in checks:
        assert check(device) == "", op  # the figures of a mismatch, if any
        assert safety.trusted(op, device, check)
    assert all(safety.verdicts().values()) and len(safety.verdicts()) == len(checks)
