"""The CPU bodies of the fused losses' custom ops (contrastive and SigLIP; the algorithm is in
contrastive.py / siglip.py, the CUDA twins in cuda.py).

On the CPU the checks read the data on the host (a cheap sum first, a closer look only when it is not
finite), float64 inputs stay float64, and each block's product is the one ``ops.gemm`` measured faster
for the shape (torch's MKL or hbfast's OpenBLAS).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ext import kernels
from .. import gemm
from . import blocks as walk


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _check_finite(what: str, named) -> None:
    for name, t in named:
        # A sum is finite only when every element is (one cheap pass); if it is not, look closer.
        if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what}: {name} contains NaN or Inf")


def contrastive_forward(q: Tensor, keys: Tensor, scale: Tensor, codes: Optional[Tensor], n_batch: int,
                        row_offset: int, with_columns: bool, n_cached: int, blocks):
    """(row_stats [R, 2], col_stats [n_batch or 0, 2], positive scores S_ii [R], kept blocks): the
    log-sum-exps over each row's / column's negatives as (max, log_sum) pairs (see contrastive.py)."""
    _check_finite("contrastive_loss", (("q (or hard_negatives)", q), ("p (or hard_negatives)", keys)))
    s = float(scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"contrastive_loss: the scale must be finite and > 0, got {s}")
    R, N = q.shape[0], keys.shape[0]
    like = dict(dtype=q.dtype, device=q.device)
    row_stats = torch.empty(R, 2, **like)
    positive = torch.empty(R, **like)
    col_max = torch.full((n_batch if with_columns else 0,), -math.inf, **like)
    col_sum = torch.zeros(n_batch if with_columns else 0, **like)
    f64 = q.dtype == torch.float64

    def epilogue(x, lo, hi):
        kernels.contrastive_forward_block(
            x.data_ptr(), N, hi - lo, row_offset + lo, N, n_batch, s, _ptr(codes), row_stats[lo:].data_ptr(),
            positive[lo:].data_ptr(), _ptr(col_max) if with_columns else 0, _ptr(col_sum) if with_columns else 0, f64,
        )

    with gemm.products(q, R, N) as mm:
        cache = walk.forward(q, keys, n_cached, blocks, mm, epilogue)
    col_stats = torch.stack([col_max, col_sum.log()], 1)
    total = float(row_stats.sum() + col_stats.sum() + positive.sum())  # -inf: a row or column without negatives
    if not (math.isfinite(total) or total == -math.inf):
        raise ValueError(f"contrastive_loss: scores overflow {q.dtype}; scale down the inputs or the logit scale")
    return row_stats, col_stats, positive * s, cache  # S_ii rounded as the kernels round every score


def contrastive_backward(coefficients: Tuple[Tensor, Optional[Tensor], Tensor], q: Tensor, keys: Tensor,
                         scale: Tensor, codes: Optional[Tensor], row_stats: Tensor, col_stats: Tensor, cache: Tensor,
                         n_batch: int, row_offset: int, need_q: bool, need_keys: bool, blocks):
    """(grad_q, grad_keys, dL/dscale). coefficients: scale * (a_i, b_j, c_i) of common/contrastive_math.h."""
    s = float(scale)
    R, N = q.shape[0], keys.shape[0]
    row_coef, col_coef, diag_coef = coefficients
    f64 = q.dtype == torch.float64
    dscale = 0.0  # sum(scale * G * X) over the blocks

    def epilogue(x, g, lo, hi):
        nonlocal dscale
        dscale += kernels.contrastive_backward_block(
            x.data_ptr(), N, hi - lo, row_offset + lo, N, n_batch, s, _ptr(codes), row_stats[lo:].data_ptr(),
            _ptr(col_stats) if col_coef is not None else 0, row_coef[lo:].data_ptr(), _ptr(col_coef),
            diag_coef[lo:].data_ptr(), g.data_ptr(), N, f64,
        )

    # The kernels write scale * G (G = dL/dS), so the block products give grad_q and grad_keys directly.
    with gemm.products(q, R, N) as mm:
        grad_q, grad_keys = walk.backward(q, keys, cache, blocks, mm, need_q, need_keys, epilogue)
    return grad_q, grad_keys, torch.tensor(dscale / s, dtype=scale.dtype)  # sum(scale * G * X) / scale


def siglip_forward(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, row_offset: int, n_cached: int,
                   blocks):
    """(per-row losses [R], kept blocks of raw dot products [n_cached, N])."""
    _check_finite("siglip_loss", (("image_features", image), ("text_features", text)))
    s, b = float(scale), float(bias)
    if not (math.isfinite(s) and math.isfinite(b)):
        raise ValueError(f"siglip_loss: logit_scale and logit_bias must be finite, got {s} and {b}")
    R, N = image.shape[0], text.shape[0]
    row_loss = torch.empty(R, dtype=image.dtype, device=image.device)
    f64 = image.dtype == torch.float64

    def epilogue(x, lo, hi):
        kernels.siglip_forward_block(x.data_ptr(), N, hi - lo, row_offset + lo, N, s, b, row_loss[lo:].data_ptr(), f64)

    cache = walk.forward(image, text, n_cached, blocks, gemm.torch_mm, epilogue)
    if not math.isfinite(float(row_loss.sum())):
        raise ValueError(f"siglip_loss: logits overflow {image.dtype}; scale down the inputs or the logit scale")
    return row_loss, cache


def siglip_backward(grad_row_loss: Tensor, image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, cache: Tensor,
                    row_offset: int, need_image: bool, need_text: bool, blocks):
    """(grad_image, grad_text, dL/dscale, dL/dbias)."""
    s, b = float(scale), float(bias)
    N = text.shape[0]
    row_coef = grad_row_loss.to(image.dtype).contiguous()
    f64 = image.dtype == torch.float64
    sum_gx = sum_g = 0.0

    def epilogue(x, g, lo, hi):
        nonlocal sum_gx, sum_g
        gx, g1 = kernels.siglip_backward_block(x.data_ptr(), N, hi - lo, row_offset + lo, N, s, b,
                                          row_coef[lo:].data_ptr(), g.data_ptr(), N, f64)
        sum_gx, sum_g = sum_gx + gx, sum_g + g1

    grad_image, grad_text = walk.backward(image, text, cache, blocks, gemm.torch_mm, need_image, need_text, epilogue)
    return (grad_image, grad_text, torch.tensor(sum_gx, dtype=scale.dtype, device=scale.device),
            torch.tensor(sum_g, dtype=bias.dtype, device=bias.device))
