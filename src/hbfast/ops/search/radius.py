"""Range search (``hbfast.range_search``), and the top-k walks whose tiles need parameters: an id
selector (hbfast.selectors) or the L2 metric (``hbfast.topk(..., selector=, metric="l2")``).

Both run the usual tile walk (a matrix product per tile, fused with the epilogue on the CPU) and apply
the threshold / the filter / the distance inside the tile (csrc/common/range_math.h), so no score
matrix is ever kept: range search keeps only the items it finds. faiss's rules: inner product (and
cosine) keeps score > threshold, L2 keeps squared distance < radius, computed as faiss's BLAS path
does: max(0, (|x|^2 + |y|^2) - 2 x.y) in float32.

Output of range_search, faiss's RangeSearchResult layout: ``lims`` int64 [nq + 1], ``values`` float32
and ``ids`` int64 [lims[-1]]; query i's items are ``values[lims[i]:lims[i+1]]``, in increasing id
order (faiss's flat index lists them in id order too, though it does not promise it).
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import numpy as np
import torch

from ... import reference
from ..ext import kernels
from .. import gemm, safety
from ..ext import check_impl, current_stream, on_gpu, require_cuda
from . import cpu as search_cpu, cuda as search_cuda
from .inputs import (as_tensor, check_metric, check_chunk, check_queries, corpus_chunks,
                             output, prepare, tiles)
from .selectors import TileFilter, check_selector

__all__ = ["range_search", "topk_with_params"]

CPU_QUERY_TILE = CPU_CORPUS_TILE = 4096  # as hbfast.search's tiles
# Few queries: corpus tiles up to this many times longer (each tile is one call into _C, and with one
# query a 4096-row tile is a few microseconds of work: the calls' own cost showed in the time).
CPU_FEW_QUERIES_TILE_FACTOR = 16
CUDA_QUERY_TILE, CUDA_CORPUS_TILE = 16384, 8192
CUDA_FIRST_CAPACITY = 1 << 20  # items the GPU walk has room for before it grows its buffers


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (Real, np.floating, np.integer)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if math.isnan(float(threshold)):
        raise ValueError("threshold is NaN")
    return float(np.float32(threshold))  # compared in float32, as faiss


def _whole_corpus(chunks, q: torch.Tensor) -> torch.Tensor:
    cs = [as_tensor("corpus", check_chunk("corpus", ch, q.shape[1], q.device)).to(q.device) for ch in chunks]
    if not cs or sum(len(c) for c in cs) == 0:
        raise ValueError("corpus is empty")
    return torch.cat(cs)


def _sq_norms(t: torch.Tensor) -> torch.Tensor:
    """|row|^2 in float32 [n] (faiss's fvec_norms_L2sqr) of a contiguous float32 [n, D]; on the CPU by _C
    (one pass, no temporary: torch's (t * t).sum(1) took 5x longer per tile)."""
    if t.device.type != "cpu":
        return (t * t).sum(1)
    out = torch.empty(t.shape[0], dtype=torch.float32)
    kernels.sq_norms_cpu(t.data_ptr(), t.shape[0], t.shape[1], out.data_ptr())
    return out


def cpu_corpus_tile(nq: int) -> int:
    """Corpus rows per CPU tile: CPU_CORPUS_TILE, up to CPU_FEW_QUERIES_TILE_FACTOR times more for few queries
    (the unfused product's buffer, min(nq, CPU_QUERY_TILE) x tile floats, stays within 4096 x CPU_CORPUS_TILE)."""
    return CPU_CORPUS_TILE * max(1, min(CPU_FEW_QUERIES_TILE_FACTOR, 256 // max(nq, 1)))


def _narrowed(walk, f: TileFilter, min_width: Optional[int] = None):
    """The tiles of `walk` cut to a range selector's [lo, hi) (tiles outside it are skipped); unchanged
    for other selectors, or when a top-k needs at least min_width rows and the range holds fewer."""
    plain_range = f.bits is None and not f.invert
    for first_id, ct in walk:
        if plain_range:
            a, b = max(f.lo - first_id, 0), min(f.hi - first_id, ct.shape[0])
            if b <= a:
                continue
            first_id, ct = first_id + a, ct[a:b]
        yield first_id, ct


def _with_progress(walk, total: Optional[int], enabled: bool, what: str):
    """The tiles of `walk`, counted on a tqdm bar (shown only when enabled)."""
    if not enabled:
        yield from walk
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="item", desc=what) as bar:
        for first_id, ct in walk:
            yield first_id, ct
            bar.update(ct.shape[0])


class _TileParams:
    """params(first_id, tile, fused) for the walks: the filter and, for L2, the norms of the tile's rows
    (kept alive until the next tile, as the kernels read them); a fused CPU product computes them itself
    from each block it reads (fused=True: none passed)."""

    def __init__(self, f: TileFilter, l2: bool, q_norms: Optional[torch.Tensor]):
        self.f, self.l2, self.q_norms, self.alive = f, l2, q_norms, None

    def __call__(self, first_id: int, ct: torch.Tensor, fused: bool = False):
        self.alive = _sq_norms(ct) if self.l2 and not fused else None
        return self.f.params(self.l2, self.q_norms, self.alive)


# ----------------------------------------------------------------------------------------------
def range_search(queries, corpus, threshold, *, metric: str = "ip", selector=None, impl: str = "auto",
                 progress: bool = False):
    """Every corpus item with a score above ``threshold`` (metric "ip" or "cosine": score > threshold)
    or a squared L2 distance below it (metric "l2": distance < threshold), as faiss's range_search.

    queries: [nq, D]; corpus: [N, D], or an iterable of [n_i, D] chunks (global ids in order).
    selector: an hbfast IDSelector; only the ids it selects are returned.
    Returns (lims int64 [nq + 1], values float32 [lims[-1]], ids int64 [lims[-1]]): query i's items
    are values[lims[i]:lims[i+1]] (scores, or squared distances), in increasing id order. Outputs follow
    ``queries``: numpy for numpy, torch tensors on its device otherwise. Memory: the items found (there
    is no bound on them: a loose threshold returns nq x N items).
    """
    impl = check_impl(impl)
    metric = check_metric(metric)
    selector = check_selector(selector)
    threshold = _check_threshold(threshold)
    q, as_numpy = check_queries(queries, metric)
    chunks, total = corpus_chunks(corpus)
    l2 = metric == "l2"
    if impl != "reference" and q.device.type == "cuda":
        require_cuda("range_search", q.device)
        if not safety.trusted("range_search", q.device, check_range_search_cuda):
            impl = "reference"  # the CUDA kernels failed their first-use check on this device
    if impl == "reference":
        c = _whole_corpus(chunks, q)
        selected = None if selector is None else selector.resolve(len(c), q.device).contains(
            torch.arange(len(c), device=q.device))
        out = reference.range_search(q, c, threshold, metric=metric, selected=selected)
        return tuple(output(x, as_numpy) for x in out)
    q32 = prepare(q, metric, "queries")
    f = selector.resolve(total, q.device) if selector is not None else TileFilter()
    params = _TileParams(f, l2, _sq_norms(q32) if l2 else None)
    if q.device.type == "cuda":
        require_cuda("range_search")
        with on_gpu(q.device):
            zero_row = torch.full((), search_cuda.NO_ROW, dtype=torch.int64, device=q.device)
            walk = _narrowed(tiles(chunks, q32.shape[1], q.device, metric, CUDA_CORPUS_TILE, zero_row), f)
            walk = _with_progress(walk, total, progress, "range_search")
            out = _range_cuda(q32, walk, threshold, params, zero_row)
    else:
        walk = _narrowed(tiles(chunks, q32.shape[1], q.device, metric, cpu_corpus_tile(q32.shape[0])), f)
        out = _range_cpu(q32, _with_progress(walk, total, progress, "range_search"), threshold, params)
    return tuple(output(x, as_numpy) for x in out)


def _range_cpu(q32: torch.Tensor, walk, threshold: float, params: _TileParams):
    nq, dim = q32.shape
    state = kernels.RangeStateCpu(nq, threshold, params.l2)
    buffer, backend = [], None  # torch's product tile (made on first use); the product chosen

    def merge(state, backend, first_id, ct):
        width = ct.shape[0]
        fused = gemm.fused_id(backend)
        p = params(first_id, ct, fused is not None)
        if fused is not None:  # product and selection in one pass over small tiles
            ok = kernels.range_search_cpu(state, fused, q32.data_ptr(), dim, ct.data_ptr(), width, first_id, p)
        else:
            ok = True
            for i0 in range(0, nq, CPU_QUERY_TILE):
                qt = q32[i0 : i0 + CPU_QUERY_TILE]
                tile = search_cpu.product(buffer, min(nq, CPU_QUERY_TILE) * cpu_corpus_tile(nq), qt, ct)
                ok &= kernels.range_merge_cpu(state, tile.data_ptr(), i0, qt.shape[0], width, width, first_id, p)
        if not ok:
            raise search_cpu.non_finite(first_id, width)

    key = gemm.shape_class("range_search", nq, CPU_CORPUS_TILE, dim)
    for first_id, ct in walk:
        if backend is None:  # measured on this tile into scratch states (once per machine and class)
            scratch = lambda b: merge(kernels.RangeStateCpu(nq, threshold, params.l2), b, first_id, ct)  # noqa: E731
            backend = gemm.chooser.decide(key, scratch)
        merge(state, backend, first_id, ct)
    n = state.total()
    lims = torch.empty(nq + 1, dtype=torch.int64)
    values = torch.empty(n, dtype=torch.float32)
    ids = torch.empty(n, dtype=torch.int64)
    kernels.range_finish_cpu(state, lims.data_ptr(), values.data_ptr(), ids.data_ptr())
    return lims, values, ids


def _range_cuda(q32: torch.Tensor, walk, threshold: float, params: _TileParams, zero_row: torch.Tensor):
    nq, device = q32.shape[0], q32.device
    stream = current_stream(device)
    capacity = CUDA_FIRST_CAPACITY
    found_q, found_ids = (torch.empty(capacity, dtype=torch.int64, device=device) for _ in range(2))
    found_values = torch.empty(capacity, dtype=torch.float32, device=device)
    counter = torch.zeros(1, dtype=torch.int64, device=device)  # read as unsigned long long by the kernel
    bad = torch.zeros(1, dtype=torch.int32, device=device)
    tile_q = min(nq, CUDA_QUERY_TILE)
    buffer = torch.empty(tile_q * CUDA_CORPUS_TILE, dtype=torch.float32, device=device)
    done, max_id = 0, 0  # items found before this corpus tile (read once per tile); ids seen + 1
    for first_id, ct in walk:
        width = ct.shape[0]
        p = params(first_id, ct)
        while True:
            for i0 in range(0, nq, tile_q):
                qt = q32[i0 : i0 + tile_q]
                tile = buffer[: qt.shape[0] * width].view(qt.shape[0], width)
                torch.matmul(qt, ct.T, out=tile)
                kernels.range_collect_cuda(tile.data_ptr(), qt.shape[0], width, width, i0, first_id, threshold, p,
                                      found_q.data_ptr(), found_ids.data_ptr(), found_values.data_ptr(), capacity,
                                      counter.data_ptr(), bad.data_ptr(), stream)
            n = int(counter.item())
            if n <= capacity:
                break
            # out of room: grow (keeping the items of earlier tiles) and search this tile again
            capacity = max(2 * capacity, n)
            found_q, found_ids, found_values = (torch.cat([t[:done], t.new_empty(capacity - done)])
                                                for t in (found_q, found_ids, found_values))
            counter.fill_(done)
        done = n
        max_id = first_id + width
    search_cuda.device_checks(bad, zero_row)
    order = torch.argsort(found_q[:done] * max(max_id, 1) + found_ids[:done])  # by query, then id
    lims = torch.zeros(nq + 1, dtype=torch.int64, device=device)
    lims[1:] = torch.cumsum(torch.bincount(found_q[:done], minlength=nq), 0)
    return lims, found_values[:done][order].contiguous(), found_ids[:done][order].contiguous()


# ----------------------------------------------------------------------------------------------
def topk_with_params(q: torch.Tensor, corpus, k: int, metric: str, selector, impl: str, progress: bool,
                     query_block: Optional[int] = None):
    """hbfast.topk's walk for a selector or the L2 metric, and its reference (q and k checked by topk).
    Returns (scores [nq, k], ids [nq, k]) as tensors on q's device. query_block: queries per walk over
    a re-iterable corpus (hbfast.topk's bound on the top-k state's memory), None: all at once."""
    if impl != "reference" and query_block is not None and query_block < q.shape[0]:
        parts = [topk_with_params(q[i0 : i0 + query_block], corpus, k, metric, selector, impl, progress)
                 for i0 in range(0, q.shape[0], query_block)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    chunks, total = corpus_chunks(corpus)
    l2 = metric == "l2"
    if impl == "reference":
        c = _whole_corpus(chunks, q)
        if len(c) < k:
            raise ValueError(f"k = {k} is larger than the corpus ({len(c)} items)")
        selected = None if selector is None else selector.resolve(len(c), q.device).contains(
            torch.arange(len(c), device=q.device))
        return reference.topk(q, c, k, metric=metric, selected=selected)
    q32 = prepare(q, metric, "queries")
    f = selector.resolve(total, q.device) if selector is not None else TileFilter()
    params = _TileParams(f, l2, _sq_norms(q32) if l2 else None)
    nq = q32.shape[0]
    if q.device.type == "cuda":
        require_cuda("topk")
        if k + CUDA_CORPUS_TILE >= 2**31:
            raise ValueError(f"the CUDA topk supports k below {2**31 - CUDA_CORPUS_TILE}, got {k}")
        with on_gpu(q.device):
            zero_row = torch.full((), search_cuda.NO_ROW, dtype=torch.int64, device=q.device)
            walk = _with_progress(tiles(chunks, q32.shape[1], q.device, metric, CUDA_CORPUS_TILE, zero_row), total,
                                  progress, "topk")
            scores, ids = search_cuda.topk(q32, walk, k, min(nq, CUDA_QUERY_TILE), CUDA_CORPUS_TILE, zero_row,
                                            _NoBar(), params)
    else:
        walk = tiles(chunks, q32.shape[1], q.device, metric, cpu_corpus_tile(nq))
        if selector is not None and f.bits is None and not f.invert and total is not None:
            inside = max(0, min(f.hi, total) - max(f.lo, 0))
            if inside >= k:  # a range holding k ids or more: only its tiles are multiplied
                walk = _narrowed(walk, f)
        walk = _with_progress(walk, total, progress, "topk")
        scores, ids = search_cpu.topk(q32, walk, k, total, min(nq, CPU_QUERY_TILE), cpu_corpus_tile(nq), _NoBar(),
                                       params)
    valid = (ids >= 0) & f.contains(ids)  # excluded ids ranked last with kExcludedScore: padding
    if l2:
        scores = scores.neg()
    pad = float("inf") if l2 else float("-inf")
    return torch.where(valid, scores, pad), torch.where(valid, ids, -1)


class _NoBar:
    def update(self, n: int) -> None:
        pass


def check_range_search_cuda(device: torch.device) -> str:
    """range_search's CUDA walk (inner product, id-filtered, L2) against hbfast.reference on ``device``,
    on small integers (every score exact in float32)."""
    from .selectors import IDSelectorRange

    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-3, 4, (37, 12), generator=gen).float().to(device)
    c = torch.randint(-3, 4, (700, 12), generator=gen).float().to(device)
    for threshold, metric, selector in ((6.0, "ip", None), (6.0, "ip", IDSelectorRange(100, 400)), (30.0, "l2", None)):
        got = range_search(q, [c[:300], c[300:]], threshold, metric=metric, selector=selector, impl="kernel")
        want = range_search(q, c, threshold, metric=metric, selector=selector, impl="reference")
        for name, g, w in zip(("lims", "values", "ids"), got, want):
            problem = safety.compare(f"range_search {name} ({metric}{', filtered' if selector else ''})", g, w, 0, 0)
            if problem:
                return problem
    return ""
