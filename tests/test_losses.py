"""hbfast.contrastive_loss against its float64 plain-PyTorch twin (hbfast.reference) and autograd."""
import math

import pytest
import torch
import torch.nn.functional as F

import hbfast
from hbfast.ops import _C
from hbfast.ops.loss import blocks
from testing import DEVICES, requires_cuda


def make_inputs(B, D, M=0, dtype=torch.float64, device="cpu", seed=0, norm=True):
    g = torch.Generator().manual_seed(seed)
    q, p, h = (torch.randn(n, D, generator=g, dtype=torch.float64) for n in (B, B, M))
    if norm:  # unit vectors keep the scores in the range a temperature is chosen for
        q, p, h = (F.normalize(t, dim=1) if t.numel() else t for t in (q, p, h))
    return [t.to(device=device, dtype=dtype) for t in (q, p, h)]


def loss_and_grads(impl, q, p, h=None, logit_scale=None, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (q, p)]
    if h is not None:
        leaves.append(h.detach().clone().requires_grad_())
    if logit_scale is not None:
        leaves.append(logit_scale.detach().clone().requires_grad_())
    hn = leaves[2] if h is not None else None
    ls = leaves[-1] if logit_scale is not None else None
    loss = hbfast.contrastive_loss(leaves[0], leaves[1], hard_negatives=hn, logit_scale=ls, impl=impl, **kw)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)  # any weights
    grads = torch.autograd.grad(loss, leaves, upstream)
    return [loss.detach()] + [g for g in grads]


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def assert_matches_reference(q, p, h=None, logit_scale=None, rtol=1e-5, dtype=torch.float32, **kw):
    """The kernel on dtype inputs against the float64 reference (float64 inputs: the kernel's
    float64 path, which must agree to rounding)."""
    ref = loss_and_grads("reference", q, p, h, logit_scale, **kw)  # float64
    got = loss_and_grads("kernel", q.to(dtype), p.to(dtype), None if h is None else h.to(dtype), logit_scale, **kw)
    for name, a, b in zip(["loss", "grad_q", "grad_p", "grad_3", "grad_4"], got, ref):
        assert a.shape == b.shape, name
        assert rel_err(a, b) < rtol, (name, rel_err(a, b))


# ---- the shared per-element math ------------------------------------------------------------------

def test_fast_exp_is_accurate_over_the_range_the_loss_needs():
    x = torch.cat([torch.linspace(-87.0, 88.0, 2_000_001), torch.tensor([0.0, -1e-8, 1e-8])])
    y = torch.empty_like(x)
    _C.contrastive_fast_exp(x.data_ptr(), y.data_ptr(), x.numel())
    exact = torch.exp(x.double())
    assert ((y.double() - exact).abs() / exact).max().item() < 2.5e-7


def test_fast_exp_flushes_to_zero_below_the_float_range():
    x = torch.tensor([-88.0, -100.0, -1e30, -math.inf])
    y = torch.full_like(x, 7.0)
    _C.contrastive_fast_exp(x.data_ptr(), y.data_ptr(), x.numel())
    assert torch.equal(y, torch.zeros(4))


# ---- loss and gradients against the float64 reference ---------------------------------------------

COMPUTE = [(torch.float32, 1e-5), (torch.float64, 1e-12)]  # kernel dtype, relative tolerance


@pytest.mark.parametrize("B,D", [(1, 1), (3, 7), (97, 384), (1000, 7), (64, 768)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_reference(B, D, symmetric):
    q, p, _ = make_inputs(B, D, seed=B + D)
    assert_matches_reference(q, p, symmetric=symmetric, temperature=0.05)


@pytest.mark.parametrize("dtype,rtol", COMPUTE)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_hard_negatives_groups_and_logit_scale(reduction, dtype, rtol):
    q, p, h = make_inputs(97, 33, M=11, seed=1)
    groups = torch.randint(0, 20, (97,), generator=torch.Generator().manual_seed(2))
    logit_scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    for symmetric in (True, False):
        assert_matches_reference(q, p, h, logit_scale, rtol, dtype, group_ids=groups, reduction=reduction,
                                 symmetric=symmetric)


@pytest.mark.parametrize("dtype,rtol", COMPUTE)
def test_wider_than_one_column_chunk_with_negatives_and_groups(dtype, rtol):
    q, p, h = make_inputs(2100, 8, M=40, seed=18)  # > 2 column chunks of the CPU epilogue
    groups = torch.randint(0, 300, (2100,), generator=torch.Generator().manual_seed(3))
    assert_matches_reference(q, p, h, rtol=rtol, dtype=dtype, group_ids=groups, reduction="none")


def test_unnormalised_inputs_and_normalize_option():
    q, p, h = make_inputs(50, 16, M=5, seed=3, norm=False)
    assert_matches_reference(q, p, h, temperature=2.0)
    assert_matches_reference(q * 3, p, h, normalize=True, temperature=0.1)


@pytest.mark.parametrize("dtype,rtol", COMPUTE)
def test_kept_partially_kept_and_recomputed_blocks_agree(monkeypatch, dtype, rtol):
    q, p, h = make_inputs(97, 24, M=9, seed=4)
    groups = torch.arange(97) % 13
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 16)  # 16-row blocks: 7 of them
    row_bytes = (97 + 9) * torch.empty(0, dtype=dtype).element_size()
    for budget in (0, row_bytes * 40, 1 << 30):  # none kept, 40 rows kept (blocks straddle), all kept
        assert_matches_reference(q, p, h, rtol=rtol, dtype=dtype, group_ids=groups, memory_budget=budget)


def test_one_thread_gives_the_same_result():
    q, p, _ = make_inputs(200, 32, seed=5, dtype=torch.float32)
    before = loss_and_grads("kernel", q, p)
    hbfast.set_num_threads(1)
    try:
        after = loss_and_grads("kernel", q, p)
    finally:
        hbfast.set_num_threads(0)
    for a, b in zip(before, after):
        assert rel_err(a, b) < 1e-6


def test_non_contiguous_inputs():
    q, p, h = make_inputs(40, 64, M=6, seed=6, dtype=torch.float32)
    wide = torch.zeros(40, 128)
    wide[:, ::2] = q
    q_strided = wide[:, ::2]
    p_transposed = p.t().contiguous().t()
    h_strided = torch.stack([h, h], 1)[:, 0]
    assert not q_strided.is_contiguous() and not p_transposed.is_contiguous() and not h_strided.is_contiguous()
    got = loss_and_grads("kernel", q_strided, p_transposed, h_strided)
    ref = loss_and_grads("kernel", q, p, h)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-6


def test_groups_masking_everything_but_the_positive():
    q, p, h = make_inputs(30, 8, M=4, seed=7, dtype=torch.float32)
    same = torch.zeros(30, dtype=torch.int64)
    loss, gq, gp = loss_and_grads("kernel", q, p, group_ids=same, reduction="none")
    # Only the positive is left in every denominator: 0 up to float32 rounding of scores ~ 20.
    assert torch.all(loss.abs() < 1e-5)
    assert gq.abs().max() < 5e-5 and gp.abs().max() < 5e-5
    with_negatives = hbfast.contrastive_loss(q, p, hard_negatives=h, group_ids=same, symmetric=False, reduction="none")
    expected = torch.logsumexp(torch.cat([(q * p).sum(1, keepdim=True), q @ h.t()], 1) / 0.05, 1) - (q * p).sum(1) / 0.05
    assert rel_err(with_negatives, expected) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_is_no_worse_than_plain_pytorch(dtype):
    q, p, h = make_inputs(256, 64, M=16, seed=8, dtype=dtype)
    exact = loss_and_grads("reference", q.double(), p.double(), h.double())
    plain = loss_and_grads("reference", q, p, h)
    fused = loss_and_grads("kernel", q, p, h)
    for name, f, t, e in zip(["loss", "grad_q", "grad_p", "grad_h"], fused, plain, exact):
        assert f.dtype == dtype, name
        assert rel_err(f, e) <= 2 * rel_err(t, e) + 1e-6, (name, rel_err(f, e), rel_err(t, e))


def test_gradcheck_float64():
    q, p, h = make_inputs(6, 5, M=3, seed=9)
    ls = torch.tensor(1.5, dtype=torch.float64)
    groups = torch.tensor([0, 1, 0, 2, 3, 1])
    leaves = [t.clone().requires_grad_() for t in (q, p, h, ls)]

    def fn(impl):
        return lambda a, b, c, s: hbfast.contrastive_loss(a, b, hard_negatives=c, logit_scale=s, group_ids=groups,
                                                          reduction="none", impl=impl)

    assert torch.autograd.gradcheck(fn("reference"), leaves)
    assert torch.autograd.gradcheck(fn("kernel"), leaves)  # the kernel's float64 path, default tolerances


def test_module_with_learnable_scale():
    q, p, _ = make_inputs(64, 32, seed=10, dtype=torch.float32)
    module = hbfast.ContrastiveLoss(temperature=0.07, learnable_scale=True)
    loss = module(q, p)
    loss.backward()
    ls = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    ref = hbfast.reference.contrastive_loss(q.double(), p.double(), logit_scale=ls.double())
    (ref_grad,) = torch.autograd.grad(ref, [ls])
    assert rel_err(loss.detach(), ref.detach()) < 1e-5
    assert rel_err(module.logit_scale.grad, ref_grad) < 1e-4
    assert "learnable" in repr(module)


def test_only_requested_gradients_are_computed():
    q, p, _ = make_inputs(32, 8, seed=11, dtype=torch.float32)
    qr = q.clone().requires_grad_()
    (gq,) = torch.autograd.grad(hbfast.contrastive_loss(qr, p), [qr])
    qd = q.double().requires_grad_()
    (ref,) = torch.autograd.grad(hbfast.reference.contrastive_loss(qd, p.double()), [qd])
    assert rel_err(gq, ref) < 1e-5
    assert p.grad is None


def test_torch_compile_fullgraph_on_cpu():
    torch._dynamo.reset()
    enc = torch.nn.Linear(16, 8).double()

    def step(x, y, groups):
        q, p = enc(x), enc(y)
        return hbfast.contrastive_loss(q, p, group_ids=groups, temperature=0.1)

    x, y, _ = make_inputs(24, 16, seed=12)
    groups = torch.arange(24) % 7
    eager = step(x, y, groups)
    eager_grads = torch.autograd.grad(eager, list(enc.parameters()))
    compiled = torch.compile(step, fullgraph=True)(x, y, groups)  # default backend: inductor
    compiled_grads = torch.autograd.grad(compiled, list(enc.parameters()))
    assert rel_err(compiled.detach(), eager.detach()) < 1e-6
    for a, b in zip(compiled_grads, eager_grads):
        assert rel_err(a, b) < 1e-6


def test_custom_op_fake_implementations():
    q, p, _ = make_inputs(10, 4, seed=13, dtype=torch.float32)
    torch.library.opcheck(torch.ops.hbfast.contrastive_forward.default,
                          (q, p, torch.tensor(20.0), None, 10, 0, True, 10),
                          test_utils=("test_schema", "test_faketensor"))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    q, p, h = make_inputs(300, 64, M=7, seed=14)
    groups = torch.arange(300) % 50
    ref = loss_and_grads("reference", q, p, h, group_ids=groups)
    got = loss_and_grads("kernel", *(t.to("cuda", dtype) for t in (q, p, h)), group_ids=groups.cuda())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(got, ref):
        assert rel_err(a.cpu(), b) < tol


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_is_rejected(device):
    q, p, h = make_inputs(8, 4, M=2, seed=15, dtype=torch.float32, device=device)
    cases = [
        (ValueError, "same shape", dict(q=q, p=p[:7])),
        (ValueError, "2-D", dict(q=q[0], p=p[0])),
        (ValueError, "empty", dict(q=q[:0], p=p[:0])),
        (TypeError, "same dtype", dict(q=q, p=p.double())),
        (TypeError, "float32", dict(q=q.long(), p=p.long())),
        (ValueError, "temperature", dict(q=q, p=p, temperature=0.0)),
        (ValueError, "temperature", dict(q=q, p=p, temperature=-1.0)),
        (ValueError, "temperature", dict(q=q, p=p, temperature=math.nan)),
        (ValueError, "group_ids", dict(q=q, p=p, group_ids=torch.zeros(7, dtype=torch.int64, device=device))),
        (TypeError, "integer", dict(q=q, p=p, group_ids=torch.zeros(8, device=device))),
        (ValueError, "hard_negatives", dict(q=q, p=p, hard_negatives=h[:, :3])),
        (TypeError, "hard_negatives", dict(q=q, p=p, hard_negatives=h.double())),
        (ValueError, "reduction", dict(q=q, p=p, reduction="max")),
        (ValueError, "impl", dict(q=q, p=p, impl="fast")),
        (ValueError, "memory_budget", dict(q=q, p=p, memory_budget=-1)),
        (ValueError, "logit_scale", dict(q=q, p=p, logit_scale=torch.zeros(2, device=device))),
        (ValueError, "device", dict(q=q, p=p.to("meta"))),
        (ValueError, "gather", dict(q=q, p=p, gather=True)),
    ]
    for error, words, kw in cases:
        with pytest.raises(error, match=words):
            hbfast.contrastive_loss(**kw)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_are_rejected(bad):
    q, p, h = make_inputs(8, 4, M=2, seed=16, dtype=torch.float32)
    for which in range(3):
        args = [q.clone(), p.clone(), h.clone()]
        args[which][1, 1] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            hbfast.contrastive_loss(args[0], args[1], hard_negatives=args[2])
    with pytest.raises(ValueError, match="scale"):
        hbfast.contrastive_loss(q, p, logit_scale=torch.tensor(math.nan))


def test_overflowing_scores_raise_instead_of_a_nan_loss():
    q, p, _ = make_inputs(8, 4, seed=17, dtype=torch.float32)
    with pytest.raises(ValueError, match="overflow"):
        hbfast.contrastive_loss(q * 1e19, p * 1e19)
