"""The CUDA bodies of the fused losses' custom ops (contrastive and SigLIP; the algorithm is in
contrastive.py / siglip.py, the CPU twins in cpu.py).

Apart from the CPU bodies because a GPU step must never wait for the device: the scale (and SigLIP's
bias) stay device scalars (the kernels read them through a pointer), the input, scale and overflow
checks are ``torch._assert_async`` (queued, raised at the next synchronisation: a failed one ends the
CUDA context, as any device-side assertion does), group codes come from a sort (``torch.unique`` waits
for its output size), dL/dscale and dL/dbias are summed on the device, and the products run in full
float32 whatever the user's TF32 setting.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ext import kernels
from ..ext import current_stream, on_gpu
from ..gemm import torch_mm
from . import blocks as walk

# Rows per chunk of the column log-sum-exp: a row block of R rows runs ceil(R / this) chunks per
# column in parallel (more blocks for the GPU's SMs), merged in order afterwards. Tests shrink it.
COLUMN_CHUNK_ROWS = 32
# The row kernels split each row of a block into spans of at least ROW_SPAN_COLUMNS columns, one CTA
# each, up to ROW_CTAS CTAs per launch: a block of few long rows (16 rows at N = 1M) still fills the
# GPU's SMs, a block of many rows keeps one CTA per row. Tests shrink ROW_SPAN_COLUMNS.
ROW_SPAN_COLUMNS = 8192
ROW_CTAS = 1024


def row_spans(rows: int, n_cols: int) -> int:
    """CTAs per row of a [rows, n_cols] block in the row kernels."""
    return max(1, min(-(-n_cols // max(1, int(ROW_SPAN_COLUMNS))), -(-ROW_CTAS // rows)))


def row_scratch(blocks, n_cols: int, per_span: int, like: Tensor) -> Optional[Tensor]:
    """Scratch for the row kernels' span partials (per_span floats each) of the largest need among the
    blocks, or None when every row is one span."""
    spans = [(hi - lo, row_spans(hi - lo, n_cols)) for lo, hi in blocks]
    size = max(per_span * rows * n for rows, n in spans if n > 1) if any(n > 1 for _, n in spans) else 0
    return torch.empty(size, dtype=torch.float32, device=like.device) if size else None


def assert_on_device(ok: Tensor, message: str) -> None:
    """A check of a device boolean that does not stall the stream (raised at the next sync)."""
    torch._assert_async(ok, message)


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _column_scratch(blocks, n_batch: int, like: Tensor) -> Tuple[Tensor, Tensor, int]:
    """Partial (max, sum) buffers [chunks, n_batch] for the largest block, and COLUMN_CHUNK_ROWS."""
    chunk_rows = max(1, int(COLUMN_CHUNK_ROWS))
    chunks = kernels.contrastive_column_chunks(max(hi - lo for lo, hi in blocks), chunk_rows)
    scratch = torch.empty(2, chunks, n_batch, dtype=torch.float32, device=like.device)
    return scratch[0], scratch[1], chunk_rows


def contrastive_forward(q: Tensor, keys: Tensor, scale: Tensor, codes: Optional[Tensor], n_batch: int, row_offset: int,
            with_columns: bool, n_cached: int, blocks):
    """The forward op on CUDA (float32): returns (row_lse, col_lse, positive scores, kept blocks), the
    log-sum-exps over each row's / column's negatives (see contrastive.py)."""
    for name, t in (("q", q), ("p", keys)):
        assert_on_device(torch.isfinite(t).all(), f"contrastive_loss: {name} (or hard_negatives) contains NaN or Inf")
    assert_on_device(torch.isfinite(scale) & (scale > 0), "contrastive_loss: the scale must be finite and > 0")
    scale = scale.to(torch.float32).contiguous()  # read by the kernels through its pointer
    R, N = q.shape[0], keys.shape[0]
    like = dict(dtype=q.dtype, device=q.device)
    row_lse = torch.empty(R, 2, **like)  # (max, log_sum) pairs: see contrastive.py
    positive = torch.empty(R, **like)
    col_max = torch.full((n_batch if with_columns else 0,), -math.inf, **like)
    col_sum = torch.zeros(n_batch if with_columns else 0, **like)
    partial_max, partial_sum, chunk_rows = _column_scratch(blocks, n_batch if with_columns else 0, q)
    row_partial = row_scratch(blocks, N, 2, q)
    stream = current_stream(q.device)

    def epilogue(x, lo, hi):
        kernels.contrastive_forward_block_cuda(
            x.data_ptr(), N, hi - lo, row_offset + lo, N, n_batch, scale.data_ptr(), _ptr(codes), chunk_rows,
            _ptr(partial_max) if with_columns else 0, _ptr(partial_sum) if with_columns else 0,
            row_spans(hi - lo, N), _ptr(row_partial), row_lse[lo:].data_ptr(), positive[lo:].data_ptr(),
            _ptr(col_max) if with_columns else 0, _ptr(col_sum) if with_columns else 0, stream,
        )

    with on_gpu(q.device):
        cache = walk.forward(q, keys, n_cached, blocks, torch_mm, epilogue)
    col_lse = torch.stack([col_max, col_sum.log()], 1)
    total = row_lse.sum() + col_lse.sum() + positive.sum()  # -inf: a row or column without negatives
    assert_on_device(~torch.isnan(total) & (total != math.inf),
                     f"contrastive_loss: scores overflow {q.dtype}; scale down the inputs or the logit scale")
    return row_lse, col_lse, positive * scale, cache  # row / column (max, log_sum) pairs, S_ii


def contrastive_backward(coefficients: Tuple[Tensor, Optional[Tensor], Tensor], q: Tensor, keys: Tensor, scale: Tensor,
             codes: Optional[Tensor], row_lse: Tensor, col_lse: Tensor, cache: Tensor, n_batch: int, row_offset: int,
             need_q: bool, need_keys: bool, blocks):
    """The backward op on CUDA: (grad_q, grad_keys, dL/dscale), the scale never read on the host.
    coefficients: scale * (a_i, b_j, c_i) of common/contrastive_math.h, on the device."""
    scale32 = scale.to(torch.float32).contiguous()
    N = keys.shape[0]
    dscale = torch.zeros((), dtype=torch.float64, device=q.device)
    # The kernels write scale * G, so the block products give grad_q and grad_keys directly.
    row_coef, col_coef, diag_coef = coefficients
    stream = current_stream(q.device)

    def epilogue(x, g, lo, hi):
        kernels.contrastive_backward_block_cuda(
            x.data_ptr(), N, hi - lo, row_offset + lo, N, n_batch, scale32.data_ptr(), _ptr(codes),
            row_lse[lo:].data_ptr(), _ptr(col_lse) if col_coef is not None else 0, row_coef[lo:].data_ptr(),
            _ptr(col_coef), diag_coef[lo:].data_ptr(), g.data_ptr(), N, dscale.data_ptr(), stream,
        )

    with on_gpu(q.device):
        grad_q, grad_keys = walk.backward(q, keys, cache, blocks, torch_mm, need_q, need_keys, epilogue)
    return grad_q, grad_keys, (dscale / scale).to(scale.dtype)  # sum(scale * G * X) / scale


# ---- SigLIP -----------------------------------------------------------------------------------------

def _scale_bias(scale: Tensor, bias: Tensor) -> Tensor:
    """[scale, bias] as float32 on the device, read by the kernels through its pointer."""
    return torch.stack((scale.reshape(()), bias.reshape(()))).to(torch.float32).contiguous()


def siglip_forward(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, row_offset: int, n_cached: int, blocks):
    """The forward op on CUDA (float32): (per-row losses [R], kept blocks [n_cached, N])."""
    for name, t in (("image_features", image), ("text_features", text)):
        assert_on_device(torch.isfinite(t).all(), f"siglip_loss: {name} contains NaN or Inf")
    assert_on_device(torch.isfinite(scale) & torch.isfinite(bias),
                     "siglip_loss: logit_scale and logit_bias must be finite")
    scale_bias = _scale_bias(scale, bias)
    R, N = image.shape[0], text.shape[0]
    row_loss = torch.empty(R, dtype=image.dtype, device=image.device)
    row_partial = row_scratch(blocks, N, 1, image)
    stream = current_stream(image.device)

    def epilogue(x, lo, hi):
        kernels.siglip_forward_block_cuda(x.data_ptr(), N, hi - lo, row_offset + lo, N, scale_bias.data_ptr(),
                                     row_spans(hi - lo, N), 0 if row_partial is None else row_partial.data_ptr(),
                                     row_loss[lo:].data_ptr(), stream)

    with on_gpu(image.device):
        cache = walk.forward(image, text, n_cached, blocks, torch_mm, epilogue)
    assert_on_device(torch.isfinite(row_loss.sum()),
                     f"siglip_loss: logits overflow {image.dtype}; scale down the inputs or the logit scale")
    return row_loss, cache


def siglip_backward(grad_row_loss: Tensor, image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, cache: Tensor,
             row_offset: int, need_image: bool, need_text: bool, blocks):
    """The backward op on CUDA: (grad_image, grad_text, dL/dscale, dL/dbias), nothing read on the host."""
    scale_bias = _scale_bias(scale, bias)
    N = text.shape[0]
    sums = torch.zeros(2, dtype=torch.float64, device=image.device)  # sum(G * X), sum(G)
    row_coef = grad_row_loss.to(image.dtype).contiguous()
    stream = current_stream(image.device)

    def epilogue(x, g, lo, hi):
        kernels.siglip_backward_block_cuda(x.data_ptr(), N, hi - lo, row_offset + lo, N, scale_bias.data_ptr(),
                                      row_coef[lo:].data_ptr(), g.data_ptr(), N, sums.data_ptr(), stream)

    with on_gpu(image.device):
        grad_image, grad_text = walk.backward(image, text, cache, blocks, torch_mm, need_image, need_text,
                                                     epilogue)
    return grad_image, grad_text, sums[0].to(scale.dtype, copy=True), sums[1].to(bias.dtype, copy=True)
