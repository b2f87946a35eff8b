"""The CUDA bodies of the fused SigLIP loss's two custom ops (see siglip.py for the algorithm).

Apart from the CPU bodies for the same reason as _losses_cuda: a GPU step must never wait for the
device. The logit scale and bias stay on the device (the kernels read them through a pointer), the
input, scalar and overflow checks are ``torch._assert_async`` (raised at the next synchronisation),
dL/dscale and dL/dbias are summed on the device, and the products run in full float32 whatever the
user's TF32 setting.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _C, _block_walk
from ._ext import current_stream, on_gpu
from ._gemm import _torch_mm
from ._losses_cuda import assert_on_device, row_scratch, row_spans


def _scale_bias(scale: Tensor, bias: Tensor) -> Tensor:
    """[scale, bias] as float32 on the device, read by the kernels through its pointer."""
    return torch.stack((scale.reshape(()), bias.reshape(()))).to(torch.float32).contiguous()


def forward(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, row_offset: int, n_cached: int, blocks):
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
        _C.siglip_forward_block_cuda(x.data_ptr(), N, hi - lo, row_offset + lo, N, scale_bias.data_ptr(),
                                     row_spans(hi - lo, N), 0 if row_partial is None else row_partial.data_ptr(),
                                     row_loss[lo:].data_ptr(), stream)

    with on_gpu(image.device):
        cache = _block_walk.forward(image, text, n_cached, blocks, _torch_mm, epilogue)
    assert_on_device(torch.isfinite(row_loss.sum()),
                     f"siglip_loss: logits overflow {image.dtype}; scale down the inputs or the logit scale")
    return row_loss, cache


def backward(grad_row_loss: Tensor, image: Tensor, text: Tensor, scale: Tensor, bias: Tensor, cache: Tensor,
             row_offset: int, need_image: bool, need_text: bool, blocks):
    """The backward op on CUDA: (grad_image, grad_text, dL/dscale, dL/dbias), nothing read on the host."""
    scale_bias = _scale_bias(scale, bias)
    N = text.shape[0]
    sums = torch.zeros(2, dtype=torch.float64, device=image.device)  # sum(G * X), sum(G)
    row_coef = grad_row_loss.to(image.dtype).contiguous()
    stream = current_stream(image.device)

    def epilogue(x, g, lo, hi):
        _C.siglip_backward_block_cuda(x.data_ptr(), N, hi - lo, row_offset + lo, N, scale_bias.data_ptr(),
                                      row_coef[lo:].data_ptr(), g.data_ptr(), N, sums.data_ptr(), stream)

    with on_gpu(image.device):
        grad_image, grad_text = _block_walk.backward(image, text, cache, blocks, _torch_mm, need_image, need_text,
                                                     epilogue)
    return grad_image, grad_text, sums[0].to(scale.dtype, copy=True), sums[1].to(bias.dtype, copy=True)
