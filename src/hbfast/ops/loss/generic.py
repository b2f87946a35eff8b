"""The fused losses' op bodies in plain PyTorch, on any device: the same inputs, outputs and block plan
as cpu.py and cuda.py, each block's epilogue written with torch operations instead of a kernel.

Exists for the CUDA safety net (``ops.safety``): the first CUDA use of a loss in a process checks the
CUDA bodies against these on small cases, and if they disagree, these run instead. They keep the
kernels' memory bound (one [rows, N] block at a time) but not their speed, nor the float32 positive-apart
accuracy of the kernels' exp (torch's exp is used).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor
import torch.nn.functional as F


def _negatives(lo: int, hi: int, n_cols: int, row_offset: int, n_batch: int, codes: Optional[Tensor],
               device) -> Tensor:
    """[hi - lo, n_cols] bool: the pairs that count as negatives of rows lo:hi (not the positive, not a
    pair of one group among the batch's columns)."""
    rows = torch.arange(lo, hi, device=device) + row_offset
    keep = torch.ones(hi - lo, n_cols, dtype=torch.bool, device=device)
    keep[torch.arange(hi - lo, device=device), rows] = False
    if codes is not None:
        keep[:, :n_batch] &= codes[rows][:, None] != codes[None, :n_batch]
    return keep


def _merge(m: Tensor, s: Tensor, bm: Tensor, bs: Tensor) -> Tuple[Tensor, Tensor]:
    """Two (max, sum of exp(x - max)) pairs merged into one."""
    new = torch.maximum(m, bm)
    safe = torch.where(torch.isinf(new), torch.zeros_like(new), new)
    return new, s * torch.exp(m - safe) + bs * torch.exp(bm - safe)


def _max_sum(x: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    m = x.amax(dim)
    safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    return m, torch.exp(x - safe.unsqueeze(dim)).sum(dim)


def contrastive_forward(q: Tensor, keys: Tensor, scale: Tensor, codes: Optional[Tensor], n_batch: int,
                        row_offset: int, with_columns: bool, n_cached: int, blocks):
    """As cpu.contrastive_forward: (row_stats, col_stats, positive scores, kept blocks)."""
    R, N = q.shape[0], keys.shape[0]
    like = dict(dtype=q.dtype, device=q.device)
    row_stats = torch.empty(R, 2, **like)
    positive = torch.empty(R, **like)
    cache = torch.empty(n_cached, N, **like)
    col_max = torch.full((n_batch if with_columns else 0,), -math.inf, **like)
    col_sum = torch.zeros(n_batch if with_columns else 0, **like)
    for lo, hi in blocks:
        x = q[lo:hi] @ keys.T  # [rows, N] raw dot products
        if hi <= n_cached:
            cache[lo:hi] = x
        s = scale * x
        positive[lo:hi] = s[torch.arange(hi - lo, device=q.device), torch.arange(lo, hi, device=q.device) + row_offset]
        masked = s.masked_fill(~_negatives(lo, hi, N, row_offset, n_batch, codes, q.device), -math.inf)
        m, total = _max_sum(masked, 1)
        row_stats[lo:hi, 0], row_stats[lo:hi, 1] = m, total.log()
        if with_columns:
            col_max, col_sum = _merge(col_max, col_sum, *_max_sum(masked[:, :n_batch], 0))
    return row_stats, torch.stack([col_max, col_sum.log()], 1), positive, cache


def contrastive_backward(coefficients: Tuple[Tensor, Optional[Tensor], Tensor], q: Tensor, keys: Tensor,
                         scale: Tensor, codes: Optional[Tensor], row_stats: Tensor, col_stats: Tensor, cache: Tensor,
                         n_batch: int, row_offset: int, need_q: bool, need_keys: bool, blocks):
    """As cpu.contrastive_backward: (grad_q, grad_keys, dL/dscale)."""
    row_coef, col_coef, diag_coef = coefficients
    N = keys.shape[0]
    grad_q, grad_keys = torch.zeros_like(q), torch.zeros_like(keys)
    dscale = torch.zeros((), dtype=q.dtype, device=q.device)
    for lo, hi in blocks:
        x = q[lo:hi] @ keys.T
        s = scale * x
        keep = _negatives(lo, hi, N, row_offset, n_batch, codes, q.device)
        stats = row_stats[lo:hi]
        g = row_coef[lo:hi, None] * torch.exp((s - stats[:, :1]) - stats[:, 1:]) * keep  # scale * dL/dS
        if col_coef is not None:
            p_col = torch.exp((s[:, :n_batch] - col_stats[:, 0]) - col_stats[:, 1]) * keep[:, :n_batch]
            g[:, :n_batch] += col_coef[None, :] * p_col
        g[torch.arange(hi - lo, device=q.device), torch.arange(lo, hi, device=q.device) + row_offset] += diag_coef[lo:hi]
        grad_q[lo:hi] = g @ keys
        grad_keys += g.T @ q[lo:hi]
        dscale += (g * x).sum()
    return grad_q, grad_keys, (dscale / scale).to(scale.dtype)


def siglip_forward(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, row_offset: int, n_cached: int, blocks):
    """As cpu.siglip_forward: (per-row losses, kept blocks)."""
    R, N = image.shape[0], text.shape[0]
    row_loss = torch.empty(R, dtype=image.dtype, device=image.device)
    cache = torch.empty(n_cached, N, dtype=image.dtype, device=image.device)
    for lo, hi in blocks:
        x = image[lo:hi] @ text.T
        if hi <= n_cached:
            cache[lo:hi] = x
        row_loss[lo:hi] = F.softplus(-_labels(lo, hi, N, row_offset, x) * (scale * x + bias)).sum(1)
    return row_loss, cache


def _labels(lo: int, hi: int, n_cols: int, row_offset: int, like: Tensor) -> Tensor:
    labels = torch.full((hi - lo, n_cols), -1.0, dtype=like.dtype, device=like.device)
    labels[torch.arange(hi - lo, device=like.device), torch.arange(lo, hi, device=like.device) + row_offset] = 1.0
    return labels


def siglip_backward(grad_row_loss: Tensor, image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, cache: Tensor,
                    row_offset: int, need_image: bool, need_text: bool, blocks):
    """As cpu.siglip_backward: (grad_image, grad_text, dL/dscale, dL/dbias)."""
    N = text.shape[0]
    grad_image, grad_text = torch.zeros_like(image), torch.zeros_like(text)
    sums = torch.zeros(2, dtype=image.dtype, device=image.device)
    for lo, hi in blocks:
        x = image[lo:hi] @ text.T
        labels = _labels(lo, hi, N, row_offset, x)
        dz = -labels * torch.sigmoid(-labels * (scale * x + bias)) * grad_row_loss[lo:hi, None].to(x.dtype)
        g = scale * dz
        grad_image[lo:hi] = g @ text
        grad_text += g.T @ image[lo:hi]
        sums += torch.stack([(dz * x).sum(), dz.sum()])
    return grad_image, grad_text, sums[0].to(scale.dtype, copy=True), sums[1].to(bias.dtype, copy=True)
