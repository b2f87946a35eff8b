"""The GPU side of hbfast.search: the top-k walk over corpus tiles on CUDA, and the context and
deferred checks every GPU walk shares.

A GPU walk never waits for the device tile by tile: non-finite scores set a device flag in the
kernels, zero-norm cosine rows are tracked on the device (search._prepare), and both are read
once at the end (device_checks). Products run on the inputs' device in full float32 (_ext.on_gpu).
"""
from __future__ import annotations

import torch

from ..ext import kernels
from ..ext import current_stream

MAX_IDS = 2**32 - 1  # the keys hold the id in 32 bits (select.h)
NO_ROW = 2**62  # "no zero-norm row seen" in the zero-norm tracker


def zero_norm_error(name: str, row: int) -> str:
    return f"{name} row {row} has zero norm: its cosine similarity is undefined"


def device_checks(bad: torch.Tensor, zero_row: torch.Tensor) -> None:
    """The deferred checks of a walk, read once at its end (its only wait for the device)."""
    bad_value, zero = torch.cat([bad.to(torch.int64), zero_row.reshape(1)]).tolist()
    if zero != NO_ROW:
        raise ValueError(zero_norm_error("corpus", zero))
    if bad_value:
        raise ValueError("non-finite scores: the corpus holds NaN or infinite values, or the products overflow float32")


def topk(q32: torch.Tensor, tiles, k: int, tile_q: int, corpus_tile: int, zero_row: torch.Tensor, bar, params=None):
    """q32 [nq, D] on the current GPU; tiles yields (first id, corpus tile [<= corpus_tile, D]).
    Returns (scores [nq, k], ids [nq, k]) best first. params: as _search_cpu.topk's (device pointers)."""
    nq = q32.shape[0]
    device = q32.device
    # Per query tile, two key buffers: the merge reads one and writes the other.
    keys = [torch.zeros(nq, k, dtype=torch.int64, device=device) for _ in range(2)]  # [nq, k] each
    current = [0] * ((nq + tile_q - 1) // tile_q)
    bad = torch.zeros(1, dtype=torch.int32, device=device)
    buffer = torch.empty(tile_q * corpus_tile, dtype=torch.float32, device=device)
    stream = current_stream(device)
    seen = 0
    for first_id, ct in tiles:
        width = ct.shape[0]
        if first_id + width > MAX_IDS:
            raise ValueError(f"the CUDA topk supports corpora below {MAX_IDS} items")
        p = None if params is None else params(first_id, ct)
        for t, i0 in enumerate(range(0, nq, tile_q)):
            qt = q32[i0 : i0 + tile_q]  # [tq, D]
            tile = buffer[: qt.shape[0] * width].view(qt.shape[0], width)  # [tq, tc]
            torch.matmul(qt, ct.T, out=tile)
            if p is not None:  # id filter / L2 values, in place (range_math.h)
                kernels.topk_tile_scores_cuda(tile.data_ptr(), i0, qt.shape[0], width, width, first_id, p, stream)
            src, dst = keys[current[t]], keys[1 - current[t]]
            kernels.topk_merge_cuda(tile.data_ptr(), qt.shape[0], width, width, first_id,
                               src[i0].data_ptr(), dst[i0].data_ptr(), k, bad.data_ptr(), stream)
            current[t] = 1 - current[t]
        seen += width
        bar.update(width)
    if seen < k:
        raise ValueError(f"k = {k} is larger than the corpus ({seen} items)")
    device_checks(bad, zero_row)
    final = torch.cat([keys[current[t]][i0 : i0 + tile_q] for t, i0 in enumerate(range(0, nq, tile_q))])
    # Keys are unsigned; flipping the sign bit makes signed int64 order match. Sort best first.
    order = (final ^ torch.iinfo(torch.int64).min).argsort(dim=1, descending=True)
    final = final.gather(1, order).contiguous()
    scores = torch.empty(nq, k, dtype=torch.float32, device=device)
    ids = torch.empty(nq, k, dtype=torch.int64, device=device)
    kernels.topk_decode_cuda(final.data_ptr(), nq * k, scores.data_ptr(), ids.data_ptr(), stream)
    return scores, ids
