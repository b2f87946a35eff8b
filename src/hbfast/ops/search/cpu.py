"""The CPU side of hbfast.search: the top-k walk over corpus tiles on the CPU, and the count of one
tile for relevant_ranks (the GPU twin is _search_cuda).

Each corpus tile goes through the product hbfast._gemm measured faster for its shape class, torch's MKL
or OpenBLAS, fused with the epilogue in hbfast's threads over small tiles (a torch built without MKL:
torch's product into one fp32 tile, then the C++ epilogue). A non-finite score is reported at the
tile that holds it.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ext import kernels
from .. import gemm


def non_finite(first_id: int, width: int) -> ValueError:
    return ValueError(
        f"non-finite scores against corpus ids [{first_id}, {first_id + width}): the corpus holds NaN or "
        "infinite values, or the products overflow float32"
    )


def product(buffer: list, size: int, qt: torch.Tensor, ct: torch.Tensor) -> torch.Tensor:
    """torch's product qt @ ct.T [tq, tc] into buffer[0] (``size`` floats on qt's device, made on first use;
    the GPU count of relevant_ranks uses it too)."""
    buffer[:] = buffer or [torch.empty(size, dtype=torch.float32, device=qt.device)]
    tile = buffer[0][: qt.shape[0] * ct.shape[0]].view(qt.shape[0], ct.shape[0])  # [tq, tc]
    torch.matmul(qt, ct.T, out=tile)
    return tile


def topk(q32: torch.Tensor, tiles, k: int, total: Optional[int], tile_q: int, corpus_tile: int, bar, params=None):
    """q32 [nq, D] on the CPU; tiles yields (first id, corpus tile [<= corpus_tile, D]).
    Returns (scores [nq, k], ids [nq, k]) best first. params: None, or params(first_id, tile, fused) -> the
    tile's kernels.TileParams (an id filter, L2 values: range_math.h), which must stay alive until the
    next call (fused: the product is fused, which computes L2's corpus norms itself)."""
    nq, dim = q32.shape
    # Buffer mode (k > TOPK_HEAP_MAX_K): room for k kept + 2k new candidates (8-byte keys) before a
    # partial selection: fewer selections than with k new ones, each on cheap integer keys; for huge k,
    # half of k more, to bound memory.
    capacity = 3 * k if k <= 1 << 16 else k + k // 2
    if total is not None:
        capacity = min(capacity, total + 1)
    state = kernels.TopkStateCpu(nq, k, max(capacity, k + 1))
    buffer = []  # torch's product tile, made on first use (hbfast's fused product keeps its own small tiles)

    def merge(state, backend, first_id, ct):  # one corpus tile [width, D] into state
        width = ct.shape[0]
        fused = gemm.fused_id(backend)
        p = None if params is None else params(first_id, ct, fused is not None)
        if fused is not None:  # product and selection in one pass over small tiles
            if p is None:
                ok = kernels.topk_search_cpu(state, fused, q32.data_ptr(), dim, ct.data_ptr(), width, first_id)
            else:
                ok = kernels.topk_search_params_cpu(state, fused, q32.data_ptr(), dim, ct.data_ptr(), width, first_id, p)
            if not ok:
                raise non_finite(first_id, width)
            return
        for i0 in range(0, nq, tile_q):
            qt = q32[i0 : i0 + tile_q]  # [tq, D]
            tile = product(buffer, tile_q * corpus_tile, qt, ct)  # [tq, tc]
            if p is not None:
                kernels.topk_tile_scores_cpu(tile.data_ptr(), i0, qt.shape[0], width, width, first_id, p)
            if not kernels.topk_merge_cpu(state, tile.data_ptr(), i0, qt.shape[0], width, width, first_id):
                raise non_finite(first_id, width)

    key, backend = gemm.shape_class("topk", nq, corpus_tile, dim, k <= kernels.TOPK_HEAP_MAX_K), None
    seen = 0
    for first_id, ct in tiles:
        if backend is None:  # measured on this tile into scratch states (once per process and class)
            scratch = lambda b: merge(kernels.TopkStateCpu(nq, k, max(capacity, k + 1)), b, first_id, ct)  # noqa: E731
            backend = gemm.chooser.decide(key, scratch)
        merge(state, backend, first_id, ct)
        seen += ct.shape[0]
        bar.update(ct.shape[0])
    if seen < k:
        raise ValueError(f"k = {k} is larger than the corpus ({seen} items)")
    scores = torch.empty(nq, k, dtype=torch.float32)
    ids = torch.empty(nq, k, dtype=torch.int64)
    kernels.topk_finish_cpu(state, scores.data_ptr(), ids.data_ptr())
    return scores, ids


def count_tile(backend: str, qt: torch.Tensor, first_id: int, ct: torch.Tensor, rel_args: tuple,
               buffer: list, size: int) -> None:
    """relevant_ranks on the CPU: adds to the counts in rel_args the candidates of corpus tile ct
    [tc, D] that beat each relevant item of the queries qt [tq, D] (see search._count_pass)."""
    width = ct.shape[0]
    fused = gemm.fused_id(backend)
    if fused is not None:  # product and counting in one pass over small tiles
        ok = kernels.count_beating_search_cpu(fused, qt.data_ptr(), qt.shape[0], qt.shape[1], ct.data_ptr(), width, first_id,
                                         *rel_args)
    else:
        tile = product(buffer, size, qt, ct)
        ok = kernels.count_beating_cpu(tile.data_ptr(), qt.shape[0], width, width, first_id, *rel_args)
    if not ok:
        raise non_finite(first_id, width)
