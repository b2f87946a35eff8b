"""The fused pairwise sigmoid loss of SigLIP, without a B x B logits matrix.

Every image-text pair is an independent binary decision: with logits
``Z = logit_scale * image @ text.T + logit_bias`` and labels +1 on the diagonal, -1 elsewhere,
``L = -sum(log sigmoid(labels * Z)) / B`` (open_clip's ``SigLipLoss``). As in
the contrastive loss, Z is visited one row block at a time: torch computes the block's dot products
into a preallocated buffer and hbfast's C++/CUDA epilogue (``_C.siglip_forward_block``; CUDA:
``ops/loss/cuda.py``, which never reads the scale or bias on the host) reduces it
to one loss per row; the backward turns each block into ``logit_scale * dL/dZ``
(``_C.siglip_backward_block``, which also sums dL/dlogit_scale and dL/dlogit_bias) and torch
multiplies it out: ``grad_image = that @ text``, ``grad_text = that.T @ image``. Blocks are kept
from the forward for the backward while they fit in ``memory_budget`` bytes, else recomputed.

Both kernel steps are ``torch.library.custom_op``s with fake implementations and autograd
registrations, so ``torch.compile(fullgraph=True)`` can trace a model that uses the loss.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
from torch import Tensor, nn

from ... import reference
from .. import ext, safety
from ..ext import check_impl, require_cuda
from ..gather import GatherWithGrad, gather_info
from . import cpu, cuda, generic
from .blocks import DEFAULT_MEMORY_BUDGET, cached_rows, plan
from .checks import as_scalar, check_features, check_memory_budget, check_reduction, check_scalar, reduce

SIGLIP_INIT_SCALE, SIGLIP_INIT_BIAS = 10.0, -10.0  # SigLIP's initial logit multiplier and bias


def _backend(device: torch.device):
    """The one dispatch point of both ops (see contrastive.py's)."""
    if not ext.runs_cuda_kernels(device):
        return cpu
    require_cuda("hbfast.siglip_loss", device)
    return cuda if safety.trusted("siglip_loss", device, check_cuda) else generic


# ---- the custom ops -------------------------------------------------------------------------------

@torch.library.custom_op("hbfast::siglip_forward", mutates_args=())
def _forward_op(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, row_offset: int,
                n_cached: int) -> Tuple[Tensor, Tensor]:
    """image [R, D]: rows row_offset.. of the batch; text [N, D] (row i's positive: column
    row_offset + i); float32, or float64 on the CPU. Returns, in that dtype, the per-row losses [R]
    and the kept blocks of raw dot products [n_cached, N]."""
    blocks = plan(image.shape[0], text.shape[0], n_cached, image.element_size())
    return _backend(image.device).siglip_forward(image, text, scale, bias, row_offset, n_cached, blocks)


@_forward_op.register_fake
def _(image, text, scale, bias, row_offset, n_cached):
    return image.new_empty(image.shape[0]), image.new_empty(n_cached, text.shape[0])


@torch.library.custom_op("hbfast::siglip_backward", mutates_args=())
def _backward_op(grad_row_loss: Tensor, image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, cache: Tensor,
                 row_offset: int, need_image: bool, need_text: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradient of the per-row losses -> (grad_image, grad_text, dL/dscale, dL/dbias)."""
    blocks = plan(image.shape[0], text.shape[0], cache.shape[0], image.element_size())
    return _backend(image.device).siglip_backward(grad_row_loss, image, text, scale, bias, cache, row_offset,
                                                  need_image, need_text, blocks)


@_backward_op.register_fake
def _(grad_row_loss, image, text, scale, bias, cache, row_offset, need_image, need_text):
    return torch.empty_like(image), torch.empty_like(text), scale.new_empty(()), bias.new_empty(())


def _setup_context(ctx, inputs, output):
    image, text, scale, bias, row_offset, n_cached = inputs
    _, cache = output
    ctx.save_for_backward(image, text, scale, bias, cache)
    ctx.mark_non_differentiable(cache)
    ctx.set_materialize_grads(False)
    ctx.row_offset = row_offset


def _backward(ctx, grad_row_loss, grad_cache):
    image, text, scale, bias, cache = ctx.saved_tensors
    if grad_row_loss is None or not any(ctx.needs_input_grad[:4]):
        return None, None, None, None, None, None
    need_image, need_text, need_scale, need_bias = ctx.needs_input_grad[:4]
    grad_image, grad_text, dscale, dbias = _backward_op(grad_row_loss, image, text, scale, bias, cache,
                                                        ctx.row_offset, need_image, need_text)
    return (grad_image if need_image else None, grad_text if need_text else None, dscale if need_scale else None,
            dbias if need_bias else None, None, None)


torch.library.register_autograd("hbfast::siglip_forward", _backward, setup_context=_setup_context)


# ---- the public API -------------------------------------------------------------------------------

def siglip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Union[Tensor, float],
    logit_bias: Union[Tensor, float],
    *,
    reduction: str = "mean",
    gather: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    impl: str = "auto",
) -> Tensor:
    """Pairwise sigmoid loss of SigLIP for matching rows of ``image_features`` and ``text_features`` [B, D].

    Logits ``Z = logit_scale * image_features @ text_features.T + logit_bias``; pair (i, j) has
    label +1 when i == j and -1 otherwise and costs ``-log sigmoid(label * Z_ij)``. Per image row
    ``l_i = sum_j`` of its pairs' costs; ``reduction``: "mean" (``sum_i l_i / B``, open_clip's
    ``SigLipLoss``), "sum" or "none" ([B]). As in open_clip, ``logit_scale`` is the multiplier itself
    (open_clip's models return ``logit_scale.exp()``), not its log as in :func:`contrastive_loss`.
    ``logit_scale`` and ``logit_bias`` are numbers or one-element tensors (tensors receive
    gradients). Float32/16/bf16 inputs are computed in float32 (float64 in float64 on the CPU);
    gradients come back in the input dtype. ``gather=True`` (under torch.distributed) scores each
    rank's images against the texts gathered from all ranks, with gradients: each rank's "mean" loss
    is then open_clip's SigLipLoss on that rank, and their average is the loss of the global batch.
    ``memory_budget`` (bytes) bounds the logit blocks kept from forward to backward. ``impl``:
    "auto"/"kernel" (fused) or "reference" (plain PyTorch, :func:`hbfast.reference.siglip_loss`).
    """
    check_impl(impl)
    check_features(image_features, text_features)
    check_scalar("logit_scale", logit_scale, image_features.device)
    check_scalar("logit_bias", logit_bias, image_features.device)
    check_reduction(reduction)
    check_memory_budget(memory_budget)
    if not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool, got {type(gather).__name__}")
    if impl == "reference":
        if gather:
            raise ValueError("impl='reference' does not support gather=True")
        return reference.siglip_loss(image_features, text_features, logit_scale, logit_bias, reduction=reduction)

    device, out_dtype = image_features.device, image_features.dtype
    compute = torch.float64 if out_dtype == torch.float64 and device.type == "cpu" else torch.float32
    image = image_features.to(compute).contiguous()
    text = text_features.to(compute)
    scale, bias = as_scalar(logit_scale, compute, device), as_scalar(logit_bias, compute, device)
    row_offset = 0
    if gather:
        rank, world = gather_info(image)
        text, row_offset = GatherWithGrad.apply(text), rank * image.shape[0]  # [world * B, D]
    text = text.contiguous()
    n_cached = cached_rows(image.shape[0], text.shape[0], memory_budget, image.element_size())
    per_row, _ = _forward_op(image, text, scale, bias, row_offset, n_cached)
    return reduce(per_row, reduction).to(out_dtype)


class SigLIPLoss(nn.Module):
    """Module form of :func:`siglip_loss` as a training criterion: a learnable log-scale (initialised to
    log 10, the multiplier clamped to ``max_scale`` as open_clip does) and a learnable bias (initialised
    to -10). ``forward(image_features, text_features)``; ``gather``: under DDP, each rank's images
    against the texts of all ranks (the loss of the global batch)."""

    def __init__(self, init_scale: float = SIGLIP_INIT_SCALE, init_bias: float = SIGLIP_INIT_BIAS,
                 max_scale: float = 100.0, gather: bool = False, reduction: str = "mean",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__()
        check_reduction(reduction)
        check_memory_budget(memory_budget)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))
        self.max_scale, self.gather = float(max_scale), bool(gather)
        self.reduction, self.memory_budget = reduction, memory_budget

    def forward(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        scale = self.logit_scale.clamp(max=math.log(self.max_scale)).exp()
        return siglip_loss(image_features, text_features, scale, self.logit_bias, reduction=self.reduction,
                           gather=self.gather, memory_budget=self.memory_budget)

    def extra_repr(self) -> str:
        return f"max_scale={self.max_scale}, gather={self.gather}, reduction={self.reduction!r}"


# ---- the CUDA kernels' first-use check (ops.safety) ---------------------------------------------------

def check_cuda(device: torch.device) -> str:
    """cuda.py's bodies against generic.py's on ``device`` (several rows, a row split over several CTAs,
    a row offset): "" when they agree, else the figures."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    spans = 2 * max(1, int(cuda.ROW_SPAN_COLUMNS)) + 17
    for rows, n_text, row_offset in ((96, 96, 0), (5, spans, 7)):
        image = torch.nn.functional.normalize(torch.randn(rows, 24, generator=gen), dim=1).to(device)
        text = torch.nn.functional.normalize(torch.randn(n_text, 24, generator=gen), dim=1).to(device)
        scale, bias = torch.full((), 10.0, device=device), torch.full((), -5.0, device=device)
        blocks = plan(rows, n_text, rows, 4)
        got = cuda.siglip_forward(image, text, scale, bias, row_offset, rows, blocks)
        want = generic.siglip_forward(image, text, scale, bias, row_offset, rows, blocks)
        upstream = torch.rand(rows, generator=gen).to(device)
        args = (upstream, image, text, scale, bias, want[1], row_offset, True, True, blocks)
        pairs = [("row losses", got[0], want[0]), ("kept blocks", got[1], want[1])]
        pairs += list(zip(("grad image", "grad text", "d scale", "d bias"), cuda.siglip_backward(*args),
                          generic.siglip_backward(*args)))
        for name, g, w in pairs:
            problem = safety.compare(f"siglip_loss {name} ({rows} x {n_text})", g, w, rtol=1e-3, atol=1e-4)
            if problem:
                return problem
    return ""
