"""The fused pairwise sigmoid loss of SigLIP, without a B x B logits matrix.

Every image-text pair is an independent binary decision: with logits
``Z = logit_scale * image @ text.T + logit_bias`` and labels +1 on the diagonal, -1 elsewhere,
``L = -sum(log sigmoid(labels * Z)) / B`` (open_clip's ``SigLipLoss``). As in
:mod:`hbfast.losses`, Z is visited one row block at a time: torch computes the block's dot products
into a preallocated buffer and hbfast's C++/CUDA epilogue (``_C.siglip_forward_block``; CUDA:
``_siglip_cuda``, which never reads the scale or bias on the host) reduces it
to one loss per row; the backward turns each block into ``logit_scale * dL/dZ``
(``_C.siglip_backward_block``, which also sums dL/dlogit_scale and dL/dlogit_bias) and torch
multiplies it out: ``grad_image = that @ text``, ``grad_text = that.T @ image``. Blocks are kept
from the forward for the backward while they fit in ``memory_budget`` bytes, else recomputed.

Both kernel steps are ``torch.library.custom_op``s with fake implementations and autograd
registrations, so ``torch.compile(fullgraph=True)`` can trace a model that uses the loss.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Tuple, Union

import torch
from torch import Tensor

from . import _C, _block_walk, _ext, _siglip_cuda
from ._ext import check_impl, require_cuda
from ._gemm import _torch_mm
from .gather import GatherWithGrad, gather_info
from .losses import (DEFAULT_MEMORY_BUDGET, _REDUCTIONS, _blocks, _check_float_matrices, _check_same_kind, _reduce,
                     cached_rows)


# ---- the custom ops -------------------------------------------------------------------------------

@torch.library.custom_op("hbfast::siglip_forward", mutates_args=())
def _forward_op(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, row_offset: int,
                n_cached: int) -> Tuple[Tensor, Tensor]:
    """image [R, D]: rows row_offset.. of the batch; text [N, D] (row i's positive: column
    row_offset + i); float32, or float64 on the CPU. Returns, in that dtype, the per-row losses [R]
    and the kept blocks of raw dot products [n_cached, N]."""
    if _ext.runs_cuda_kernels(image.device):
        require_cuda("hbfast.siglip_loss", image.device)
        blocks = _blocks(image.shape[0], text.shape[0], n_cached, image.element_size())
        return _siglip_cuda.forward(image, text, scale, bias, row_offset, n_cached, blocks)
    for name, t in (("image_features", image), ("text_features", text)):
        # A sum is finite only when every element is (one cheap pass); if it is not, look closer.
        if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"siglip_loss: {name} contains NaN or Inf")
    s, b = float(scale), float(bias)
    if not (math.isfinite(s) and math.isfinite(b)):
        raise ValueError(f"siglip_loss: logit_scale and logit_bias must be finite, got {s} and {b}")
    R, N = image.shape[0], text.shape[0]
    row_loss = torch.empty(R, dtype=image.dtype, device=image.device)
    blocks = _blocks(R, N, n_cached, image.element_size())
    f64 = image.dtype == torch.float64

    def epilogue(x, lo, hi):
        _C.siglip_forward_block(x.data_ptr(), N, hi - lo, row_offset + lo, N, s, b, row_loss[lo:].data_ptr(), f64)

    cache = _block_walk.forward(image, text, n_cached, blocks, _torch_mm, epilogue)
    if not math.isfinite(float(row_loss.sum())):
        raise ValueError(f"siglip_loss: logits overflow {image.dtype}; scale down the inputs or the logit scale")
    return row_loss, cache


@_forward_op.register_fake
def _(image, text, scale, bias, row_offset, n_cached):
    return image.new_empty(image.shape[0]), image.new_empty(n_cached, text.shape[0])


@torch.library.custom_op("hbfast::siglip_backward", mutates_args=())
def _backward_op(grad_row_loss: Tensor, image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, cache: Tensor,
                 row_offset: int, need_image: bool, need_text: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradient of the per-row losses -> (grad_image, grad_text, dL/dscale, dL/dbias)."""
    n_cached = cache.shape[0]
    blocks = _blocks(image.shape[0], text.shape[0], n_cached, image.element_size())
    if _ext.runs_cuda_kernels(image.device):
        return _siglip_cuda.backward(grad_row_loss, image, text, scale, bias, cache, row_offset, need_image, need_text,
                                     blocks)
    s, b = float(scale), float(bias)
    N = text.shape[0]
    row_coef = grad_row_loss.to(image.dtype).contiguous()
    f64 = image.dtype == torch.float64
    sum_gx = sum_g = 0.0

    def epilogue(x, g, lo, hi):
        nonlocal sum_gx, sum_g
        gx, g1 = _C.siglip_backward_block(x.data_ptr(), N, hi - lo, row_offset + lo, N, s, b,
                                          row_coef[lo:].data_ptr(), g.data_ptr(), N, f64)
        sum_gx, sum_g = sum_gx + gx, sum_g + g1

    grad_image, grad_text = _block_walk.backward(image, text, cache, blocks, _torch_mm, need_image, need_text,
                                                 epilogue)
    return (grad_image, grad_text, torch.tensor(sum_gx, dtype=scale.dtype, device=scale.device),
            torch.tensor(sum_g, dtype=bias.dtype, device=bias.device))


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


# ---- validation -----------------------------------------------------------------------------------

def check_features(image_features, text_features) -> None:
    _check_float_matrices(image_features=image_features, text_features=text_features)
    i, t = image_features, text_features
    if i.shape[0] != t.shape[0]:
        raise ValueError(f"image_features and text_features must hold the same number of rows (one text per "
                         f"image), got {i.shape[0]} and {t.shape[0]}")
    if i.shape[1] != t.shape[1]:
        raise ValueError(f"image_features and text_features must have the same dimension, got {i.shape[1]} and "
                         f"{t.shape[1]}")
    _check_same_kind("image_features", i, "text_features", t)
    if i.device.type == "cuda":
        require_cuda("hbfast.siglip_loss", i.device)
    elif i.device.type != "cpu":
        raise ValueError(f"image_features and text_features must be cpu or cuda tensors, got device {i.device}")


def check_scalar(name: str, value, device: torch.device) -> None:
    """A number, or a one-element floating tensor on `device` (open_clip's logit_scale / logit_bias)."""
    if value is None:
        raise ValueError(f"{name} is required (got None)")
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one value, got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{name} must be on the features' device {device}, got {value.device}")
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")


def as_scalar(value, dtype, device) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(dtype).reshape(())
    # torch.full passes the number to a fill kernel: no host-to-device copy, so no wait on a GPU
    return torch.full((), float(value), dtype=dtype, device=device)


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
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0:
        raise ValueError(f"memory_budget must be an int >= 0 (bytes), got {memory_budget!r}")
    if not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool, got {type(gather).__name__}")
    if impl == "reference":
        from . import reference

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
    return _reduce(per_row, reduction).to(out_dtype)
