"""hbfast.siglip_loss against its float64 plain-PyTorch twin (hbfast.reference), an independent
formula (binary cross-entropy with logits), gradcheck, and its shared per-element math."""
import pytest
import torch
import torch.nn.functional as F

import hbfast
from hbfast.ops import _C
from hbfast.ops.loss import blocks
from testing import DEVICES, assert_fails_on_the_device, requires_cuda

SCALE, BIAS = 10.0, -10.0  # SigLIP's initial values


def make_inputs(B, D, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    image, text = (F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    text = F.normalize(text + 0.5 * image, dim=1)  # positives score higher, as after some training
    return image.to(device, dtype), text.to(device, dtype)


def loss_and_grads(impl, image, text, scale=SCALE, bias=BIAS, **kw):
    """Loss and gradients for image, text, scale and bias (as leaf tensors of the inputs' dtype)."""
    as_leaf = lambda v: torch.as_tensor(v, dtype=image.dtype, device=image.device).detach().clone().requires_grad_()
    leaves = [image.detach().clone().requires_grad_(), text.detach().clone().requires_grad_(),
              as_leaf(scale), as_leaf(bias)]
    loss = hbfast.siglip_loss(*leaves, impl=impl, **kw)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    if loss.dim() == 0:
        upstream = torch.ones_like(loss)
    return [loss.detach()] + list(torch.autograd.grad(loss, leaves, upstream))


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def assert_matches_reference(image, text, dtype=torch.float32, rtol=1e-5, **kw):
    ref = loss_and_grads("reference", image, text, **kw)  # float64
    got = loss_and_grads("kernel", image.to(dtype), text.to(dtype), **kw)
    for name, a, b in zip(["loss", "grad_image", "grad_text", "grad_scale", "grad_bias"], got, ref):
        assert a.shape == b.shape, name
        assert rel_err(a, b) < rtol, (name, rel_err(a, b))


COMPUTE = [(torch.float32, 1e-5), (torch.float64, 1e-12)]


# ---- the shared per-element math ------------------------------------------------------------------

@pytest.mark.parametrize("sigmoid", [False, True])
def test_softplus_and_sigmoid_are_accurate_and_never_overflow(sigmoid):
    z = torch.cat([torch.linspace(-120.0, 120.0, 1_000_001), torch.tensor([0.0, -1e-8, 1e-8, -1e30, 1e30])])
    y = torch.empty_like(z)
    _C.siglip_elementwise(z.data_ptr(), y.data_ptr(), z.numel(), sigmoid)
    exact = torch.sigmoid(z.double()) if sigmoid else F.softplus(z.double())
    assert torch.isfinite(y).all()
    tiny = exact < 1e-37  # below float's normal range the result may flush to zero
    assert (((y.double() - exact).abs() / exact)[~tiny]).max().item() < 5e-7
    assert (y.double()[tiny] - exact[tiny]).abs().max().item() < 1e-37


# ---- against the reference ------------------------------------------------------------------------

@pytest.mark.parametrize("B,D", [(1, 3), (2, 1), (97, 59), (300, 64)])
@pytest.mark.parametrize("dtype,rtol", COMPUTE)
def test_matches_reference(B, D, dtype, rtol):
    image, text = make_inputs(B, D, seed=B)
    assert_matches_reference(image, text, dtype=dtype, rtol=rtol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("scale,bias", [(1.0, 0.0), (10.0, -10.0), (100.0, 3.0), (-2.0, 0.5)])
def test_reductions_and_logit_ranges(reduction, scale, bias):
    image, text = make_inputs(70, 16, seed=1)
    assert_matches_reference(image * 3, text, scale=scale, bias=bias, reduction=reduction)


@pytest.mark.parametrize("dtype,rtol", COMPUTE)
def test_kept_partially_kept_and_recomputed_blocks_agree(monkeypatch, dtype, rtol):
    image, text = make_inputs(97, 24, seed=2)
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 16)  # 16-row blocks: 7 of them
    row_bytes = 97 * torch.empty(0, dtype=dtype).element_size()
    for budget in (0, row_bytes * 40, 1 << 30):  # none kept, 40 rows kept (blocks straddle), all kept
        assert_matches_reference(image, text, dtype=dtype, rtol=rtol, memory_budget=budget)


def test_wider_than_a_block_of_lanes_with_one_thread():
    image, text = make_inputs(150, 40, seed=3, dtype=torch.float32)
    before = loss_and_grads("kernel", image, text)
    hbfast.set_num_threads(1)
    try:
        after = loss_and_grads("kernel", image, text)
    finally:
        hbfast.set_num_threads(0)
    for a, b in zip(before, after):
        assert rel_err(a, b) < 1e-6


def test_matches_binary_cross_entropy_with_plain_autograd():
    """An independent formulation: BCE with logits against the identity, summed, divided by B."""
    image, text = make_inputs(130, 32, seed=4)
    leaves = [t.clone().requires_grad_() for t in (image, text, torch.tensor(SCALE, dtype=torch.float64),
                                                   torch.tensor(BIAS, dtype=torch.float64))]
    logits = leaves[2] * leaves[0] @ leaves[1].t() + leaves[3]
    bce = F.binary_cross_entropy_with_logits(logits, torch.eye(130, dtype=torch.float64), reduction="sum") / 130
    expected = [bce.detach()] + list(torch.autograd.grad(bce, leaves))
    got = loss_and_grads("kernel", image.float(), text.float())
    for a, b in zip(got, expected):
        assert rel_err(a, b) < 1e-5


def test_gradcheck_float64():
    image, text = make_inputs(6, 5, seed=5)
    leaves = [t.clone().requires_grad_() for t in (image, text, torch.tensor(2.5, dtype=torch.float64),
                                                   torch.tensor(-1.5, dtype=torch.float64))]
    for impl in ("reference", "kernel"):  # the kernel's float64 path, default tolerances
        assert torch.autograd.gradcheck(lambda *a: hbfast.siglip_loss(*a, reduction="none", impl=impl), leaves)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_is_no_worse_than_plain_pytorch(dtype):
    image, text = make_inputs(256, 64, seed=6)
    exact = loss_and_grads("reference", image, text)
    plain = loss_and_grads("reference", image.to(dtype), text.to(dtype))
    fused = loss_and_grads("kernel", image.to(dtype), text.to(dtype))
    for name, f, t, e in zip(["loss", "grad_image", "grad_text", "grad_scale", "grad_bias"], fused, plain, exact):
        assert f.dtype == dtype, name
        assert rel_err(f, e) <= 2 * rel_err(t, e) + 1e-6, (name, rel_err(f, e), rel_err(t, e))


def test_numbers_for_scale_and_bias_and_only_requested_gradients():
    image, text = make_inputs(40, 8, seed=7, dtype=torch.float32)
    ir = image.clone().requires_grad_()
    loss = hbfast.siglip_loss(ir, text, SCALE, BIAS)
    (gi,) = torch.autograd.grad(loss, [ir])
    ref = loss_and_grads("reference", image.double(), text.double())
    assert rel_err(loss.detach(), ref[0]) < 1e-5 and rel_err(gi, ref[1]) < 1e-5
    assert text.grad is None


def test_non_contiguous_inputs():
    image, text = make_inputs(40, 64, seed=8, dtype=torch.float32)
    wide = torch.zeros(40, 128)
    wide[:, ::2] = image
    got = loss_and_grads("kernel", wide[:, ::2], text.t().contiguous().t())
    ref = loss_and_grads("reference", image.double(), text.double())
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-5


def test_torch_compile_fullgraph_on_cpu():
    torch._dynamo.reset()
    enc = torch.nn.Linear(16, 8).double()
    scale, bias = torch.tensor(SCALE, dtype=torch.float64), torch.tensor(BIAS, dtype=torch.float64)

    def step(x, y):
        return hbfast.siglip_loss(enc(x), enc(y), scale, bias)

    x, y = make_inputs(24, 16, seed=11)
    eager = step(x, y)
    eager_grads = torch.autograd.grad(eager, list(enc.parameters()))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x, y)  # traced, no code generation
    compiled_grads = torch.autograd.grad(compiled, list(enc.parameters()))
    assert rel_err(compiled.detach(), eager.detach()) < 1e-6
    for a, b in zip(compiled_grads, eager_grads):
        assert rel_err(a, b) < 1e-6


def test_custom_op_fake_implementations():
    image, text = make_inputs(10, 4, seed=9, dtype=torch.float32)
    torch.library.opcheck(torch.ops.hbfast.siglip_forward.default,
                          (image, text, torch.tensor(SCALE), torch.tensor(BIAS), 0, 10),
                          test_utils=("test_schema", "test_faketensor"))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    image, text = make_inputs(300, 64, seed=10)
    ref = loss_and_grads("reference", image, text)
    got = loss_and_grads("kernel", image.to("cuda", dtype), text.to("cuda", dtype))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(got, ref):
        assert rel_err(a, b) < tol


@requires_cuda
def test_the_cuda_step_never_waits_for_the_device():
    """Forward and backward with learnable scale and bias, blocks kept and recomputed, under torch's
    sync debug mode "error": a float(scale), a host-side check or a host sum of dL/dscale would raise."""
    image, text = make_inputs(300, 64, seed=11, dtype=torch.float32, device="cuda")
    ref = loss_and_grads("reference", image.double().cpu(), text.double().cpu())
    for budget in (blocks.DEFAULT_MEMORY_BUDGET, 0):
        leaves = [image.clone().requires_grad_(), text.clone().requires_grad_(),
                  torch.tensor(SCALE, device="cuda", requires_grad=True),
                  torch.tensor(BIAS, device="cuda", requires_grad=True)]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = hbfast.siglip_loss(*leaves, memory_budget=budget)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for a, b in zip([loss.detach()] + [t.grad for t in leaves], ref):
            assert rel_err(a.double().cpu(), b) < 1e-5


@requires_cuda
@pytest.mark.parametrize("bad", ["nan_input", "bad_scale", "overflow"])
def test_cuda_checks_fail_on_the_device_with_their_message(bad):
    """On CUDA the checks are device-side assertions (they end the CUDA context, so each runs in its
    own process); the message names the problem."""
    setup = {"nan_input": "image[1, 1] = float('nan')", "bad_scale": "scale = torch.tensor(float('inf')).cuda()",
             "overflow": "image *= 1e19; text *= 1e19"}[bad]
    message = {"nan_input": "image_features contains NaN or Inf", "bad_scale": "must be finite",
               "overflow": "logits overflow"}[bad]
    assert_fails_on_the_device("import torch, hbfast\n"
                               "image = torch.nn.functional.normalize(torch.randn(32, 8), dim=1).cuda()\n"
                               "text = image.flip(0).clone(); scale = torch.tensor(10.0).cuda()\n"
                               f"{setup}\n"
                               "loss = hbfast.siglip_loss(image, text, scale, -10.0)", message)


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_is_rejected(device):
    image, text = make_inputs(8, 4, dtype=torch.float32, device=device)
    cases = [
        ((image, text[:7], SCALE, BIAS), ValueError, "same number of rows"),
        ((image, text[:, :3], SCALE, BIAS), ValueError, "same dimension"),
        ((image, text.double(), SCALE, BIAS), TypeError, "same dtype"),
        ((image[0], text, SCALE, BIAS), ValueError, "2-D"),
        ((image.int(), text.int(), SCALE, BIAS), TypeError, "float32"),
        ((image.tolist(), text, SCALE, BIAS), TypeError, "torch.Tensor"),
        ((image[:0], text[:0], SCALE, BIAS), ValueError, "empty"),
        ((image, text, SCALE, None), ValueError, "logit_bias is required"),
        ((image, text, torch.ones(2, device=device), BIAS), ValueError, "logit_scale must hold one value"),
        ((image, text, "10", BIAS), TypeError, "logit_scale must be a number"),
        ((image, text, SCALE, float("nan")), ValueError, "logit_bias must be finite"),
    ]
    if device == "cuda":
        cases.append(((image, text.cpu(), SCALE, BIAS), ValueError, "same device"))
    for args, exc, message in cases:
        with pytest.raises(exc, match=message):
            hbfast.siglip_loss(*args)
    with pytest.raises(ValueError, match="reduction"):
        hbfast.siglip_loss(image, text, SCALE, BIAS, reduction="max")
    with pytest.raises(ValueError, match="memory_budget"):
        hbfast.siglip_loss(image, text, SCALE, BIAS, memory_budget=-1)
    with pytest.raises(ValueError, match="impl"):
        hbfast.siglip_loss(image, text, SCALE, BIAS, impl="fast")
    with pytest.raises(ValueError, match="process group"):
        hbfast.siglip_loss(image, text, SCALE, BIAS, gather=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_and_overflow_raise(bad):
    image, text = make_inputs(8, 4, dtype=torch.float32)
    image[3, 1] = bad
    with pytest.raises(ValueError, match="image_features contains NaN or Inf"):
        hbfast.siglip_loss(image, text, SCALE, BIAS)
    with pytest.raises(ValueError, match="logit_scale and logit_bias must be finite"):
        hbfast.siglip_loss(text, text, torch.tensor(bad), BIAS)
    with pytest.raises(ValueError, match="overflow"):
        hbfast.siglip_loss(text * 1e20, text * 1e20, 1e10, BIAS)
