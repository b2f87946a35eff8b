"""Exact similarity search: ``topk`` and ``relevant_ranks`` (and ``FlatIndex``, a corpus kept for reuse).
Their input checks and the corpus tiling are in _search_inputs; the per-device tile loops in
_search_cpu / search_cuda.

Both walk the score matrix in tiles: a matrix product writes one fp32 tile (cuBLAS on GPU; on CPU
torch's MKL or OpenBLAS, as ``hbfast._gemm`` measured faster, fused with the epilogue in hbfast's
threads), then a C++/CUDA epilogue merges it into the per-query running top-k or counts, for each
relevant item, the candidates that beat it. Memory is O(nq * k + tile); the full score matrix never
exists, and the corpus may arrive as chunks (a memmap split in pieces).

Tie rule (everywhere in hbfast): higher score first; equal scores rank the lower corpus id first.

Inputs: ``queries`` and ``corpus`` are torch tensors or numpy arrays, fp32 / fp16 / bf16 (fp64 is
accepted and computed in fp32); every score is computed and returned in fp32. Outputs follow
``queries``: torch tensors (on its device) for a tensor, numpy arrays for a numpy array.
"""
from __future__ import annotations

import bisect
from typing import List, Optional

import numpy as np
import torch

from ... import reference
from ..ext import kernels
from .. import ext, gemm, safety
from ..ext import check_impl, on_gpu, require_cuda
from . import cpu as search_cpu, cuda as search_cuda, generic, radius
from .cuda import device_checks, zero_norm_error
from .inputs import (RANK_METRICS, Corpus, Matrix, as_tensor, between_fused_tiles, check_chunk, check_finite, check_k,
                     check_metric, check_relevant, check_queries, corpus_chunks, output, prepare, tiles)
from .selectors import check_selector

# Tile shapes: large tiles keep MKL efficient (few calls, each a large product);
# one fp32 product tile (64 MiB on CPU) is the only buffer that grows with the problem besides O(nq * k).
CPU_QUERY_TILE = 4096
CPU_CORPUS_TILE = 4096
CUDA_QUERY_TILE = 16384
CUDA_CORPUS_TILE = 8192
# Working memory of the running top-k state (beyond the [nq, k] result): queries go in blocks that
# each walk the whole corpus when nq * k would need more (re-iterable corpora only: tensors, arrays,
# lists and tuples of chunks; a one-shot iterator is walked once with every query).
TOPK_STATE_BYTES = 1 << 30
_STATE_BYTES_PER_KEPT = {"cpu": 24, "cuda": 48}  # CPU: 3k 8-byte keys; CUDA: 2 key buffers + final sort


# ----------------------------------------------------------------------------------------------
def topk(queries, corpus: Corpus, k: int, *, metric: str = "ip", impl: str = "auto", progress: bool = False,
         selector=None):
    """The exact k best corpus items of every query.

    queries: [nq, D]; corpus: [N, D], or an iterable of [n_i, D] chunks whose rows get the global
    ids 0..N-1 in order (so a corpus larger than memory can be streamed, e.g. memmap slices).
    metric: "ip" (inner product), "cosine", or "l2" (squared Euclidean distance: the k nearest, smallest
    distance first, as faiss's IndexFlatL2). k: 1..N (any size).
    selector: an ``hbfast.selectors`` IDSelector (range, array, bitmap, not); only the ids it selects
    are ranked (tested inside the product tiles); where it selects fewer than k, the rest of each row
    is padding: id -1, score -inf (+inf for "l2").
    Returns (scores float32 [nq, k] best first, ids int64 [nq, k]); ties rank the lower id first.
    """
    impl = check_impl(impl)
    metric = check_metric(metric)  # "ip", "cosine" or "l2"
    selector = check_selector(selector)
    q, as_numpy = check_queries(queries, metric)
    chunks, total = corpus_chunks(corpus)
    k = check_k(k, total)
    if impl != "reference" and ext.runs_cuda_kernels(q.device):
        require_cuda("topk", q.device)
        if not safety.trusted("topk", q.device, check_topk_cuda):
            impl = "reference"  # the CUDA kernels failed their first-use check on this device
    if impl == "reference" or metric == "l2" or selector is not None:  # (the tile-parameter walk: radius.py)
        step = max(1, TOPK_STATE_BYTES // (k * _STATE_BYTES_PER_KEPT[q.device.type]))
        reiterable = isinstance(corpus, (torch.Tensor, np.ndarray, list, tuple))
        scores, ids = radius.topk_with_params(q, corpus, k, metric, selector, impl, progress,
                                              step if reiterable else None)
        return output(scores, as_numpy), output(ids, as_numpy)
    cuda = ext.runs_cuda_kernels(q.device)
    if cuda:
        require_cuda("topk", q.device)
        if k + CUDA_CORPUS_TILE >= 2**31:
            raise ValueError(f"the CUDA topk supports k below {2**31 - CUDA_CORPUS_TILE}, got {k}")
    q32 = prepare(q, metric, "queries")
    nq = q32.shape[0]
    step = max(1, TOPK_STATE_BYTES // (k * _STATE_BYTES_PER_KEPT["cuda" if cuda else "cpu"]))
    reiterable = isinstance(corpus, (torch.Tensor, np.ndarray, list, tuple))
    if step >= nq or not reiterable:
        scores, ids = _topk_block(q32, chunks, k, metric, total, progress)
    else:  # queries in blocks, each a walk over the corpus: the state stays within TOPK_STATE_BYTES
        scores = torch.empty(nq, k, dtype=torch.float32, device=q.device)
        ids = torch.empty(nq, k, dtype=torch.int64, device=q.device)
        for i0 in range(0, nq, step):
            block = _topk_block(q32[i0 : i0 + step], corpus_chunks(corpus)[0], k, metric, total, progress)
            scores[i0 : i0 + step], ids[i0 : i0 + step] = block
    return output(scores, as_numpy), output(ids, as_numpy)


def _topk_block(q32: torch.Tensor, chunks, k: int, metric: str, total: Optional[int], progress: bool):
    if not ext.runs_cuda_kernels(q32.device):
        return _topk_cpu(q32, chunks, k, metric, total, progress)
    with on_gpu(q32.device):
        return _topk_cuda(q32, chunks, k, metric, progress)


def _progress(total: Optional[int], enabled: bool, what: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", desc=what, disable=not enabled)


def _topk_cpu(q32: torch.Tensor, chunks, k: int, metric: str, total: Optional[int], progress: bool):
    walk = tiles(chunks, q32.shape[1], q32.device, metric, CPU_CORPUS_TILE)
    with _progress(total, progress, "topk") as bar:
        return search_cpu.topk(q32, walk, k, total, min(q32.shape[0], CPU_QUERY_TILE), CPU_CORPUS_TILE, bar)


def _topk_cuda(q32: torch.Tensor, chunks, k: int, metric: str, progress: bool):
    zero_row = torch.full((), search_cuda.NO_ROW, dtype=torch.int64, device=q32.device)
    walk = tiles(chunks, q32.shape[1], q32.device, metric, CUDA_CORPUS_TILE, zero_row)
    with _progress(None, progress, "topk") as bar:
        return search_cuda.topk(q32, walk, k, min(q32.shape[0], CUDA_QUERY_TILE), CUDA_CORPUS_TILE, zero_row, bar)


# ----------------------------------------------------------------------------------------------
def _gather_rows(corpus, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` (global, >= 0) of a tensor/array or of a sequence of chunks, as float32. [n] -> [n, D]"""
    chunks = [corpus] if isinstance(corpus, (torch.Tensor, np.ndarray)) else list(corpus)
    starts = torch.tensor(np.cumsum([0] + [int(c.shape[0]) for c in chunks]), device=ids.device)
    where = torch.searchsorted(starts, ids, right=True) - 1  # [n] chunk of each id
    out = None
    for ci, c in enumerate(chunks):
        sel = (where == ci).nonzero()[:, 0]
        if not len(sel):
            continue
        local = ids[sel] - starts[ci]
        if isinstance(c, torch.Tensor):
            rows = c.index_select(0, local.to(c.device))
        else:  # numpy (e.g. a memmap): read only these rows
            rows = np.asarray(c[local.cpu().numpy()])
        rows = as_tensor("corpus", rows).to(ids.device)
        if out is None:
            out = torch.empty(len(ids), rows.shape[1], dtype=torch.float32, device=ids.device)
        out[sel] = rows.float()
    return out


_JOIN_BYTES = 256 << 20  # chunked corpora up to this size are joined for _relevant_scores's gathers


def _joinable(chunks: List) -> bool:
    """Tensors of one device and dtype, small enough to copy into one."""
    if not chunks or not all(isinstance(c, torch.Tensor) for c in chunks):
        return False
    first = chunks[0]
    same = all(c.device == first.device and c.dtype == first.dtype and c.dim() == 2 for c in chunks)
    return same and sum(c.numel() for c in chunks) * first.element_size() <= _JOIN_BYTES


def _relevant_scores(q32: torch.Tensor, chunks: List, rel: torch.Tensor, metric: str) -> torch.Tensor:
    """Scores of each query's relevant items [nq, r] (0 at padding), from batched products that
    round like the tile products (MKL accumulates each dot product in the same order in both)."""
    nq, r = rel.shape
    out = torch.zeros(nq, r, dtype=torch.float32, device=q32.device)
    if r == 0:
        return out
    cuda = ext.runs_cuda_kernels(q32.device)
    zero_rows = torch.zeros(nq, r, dtype=torch.bool, device=q32.device) if cuda and metric == "cosine" else None
    single = chunks[0] if len(chunks) == 1 and isinstance(chunks[0], torch.Tensor) else None
    if single is None and _joinable(chunks):  # one copy of a small corpus beats a gather per chunk (4x here)
        single = torch.cat(chunks)
    block = max(1, 16384 // max(r, 1))  # [block * r, D] gathered rows at a time (smaller blocks were slower)
    if single is not None:  # one reused buffer: fresh pages for every block cost more than the copy
        gathered = torch.empty(min(nq, block) * r, single.shape[1], dtype=single.dtype, device=single.device)
    for i0 in range(0, nq, block):
        ids = rel[i0 : i0 + block].clamp(min=0).flatten()  # [b * r], padding reads row 0
        if single is not None:
            rows = torch.index_select(single, 0, ids.to(single.device), out=gathered[: len(ids)])
        else:
            rows = _gather_rows(chunks, ids)
        rows = rows.to(device=q32.device, dtype=torch.float32)  # [b * r, D]
        if metric == "cosine":
            norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)  # [b * r, 1], as in prepare
            zero = (norms[:, 0] == 0) & (rel[i0 : i0 + block].flatten() >= 0)  # [b * r]
            if zero_rows is not None:  # on the GPU: checked once after the loop, not per block
                zero_rows[i0 : i0 + block] = zero.view(-1, r)
            elif zero.any():
                raise ValueError(zero_norm_error("corpus", int(ids[zero.nonzero()[0]])))
            rows = rows / norms.clamp_min(torch.finfo(torch.float32).tiny)
        qb = q32[i0 : i0 + block]  # [b, D]
        out[i0 : i0 + block] = torch.bmm(rows.view(qb.shape[0], r, -1), qb[:, :, None])[..., 0]
    if zero_rows is not None and zero_rows.any():
        raise ValueError(zero_norm_error("corpus", int(rel[zero_rows].min())))
    return out.masked_fill_(rel < 0, 0.0)


def relevant_ranks(queries, corpus, relevant, *, metric: str = "ip", per_chunk: bool = False, impl: str = "auto",
                   progress: bool = False):
    """1-based rank of each relevant item in the FULL ranking of the corpus, without sorting.

    queries: [nq, D]; corpus: [N, D] tensor/array, or a list/tuple of chunks (global ids in order);
    relevant: int64 [nq, r] corpus ids, padded with -1. Returns int64 [nq, r] (-1 at padding):
    1 + the number of corpus items that beat the item (higher score, or equal score and lower id),
    the same order as ``topk``.

    per_chunk=True returns ``(ranks, chunk_ranks)``: ``chunk_ranks`` [nq, r] is each item's rank among
    the rows of its own chunk only, from the same products (one pass gives, e.g., the rank of a
    question's answer in the union of all languages' pools and in its own language's pool).
    """
    impl = check_impl(impl)
    metric = check_metric(metric, RANK_METRICS)
    q, as_numpy = check_queries(queries, metric)
    if not isinstance(corpus, (torch.Tensor, np.ndarray, list, tuple)):
        raise TypeError(
            "relevant_ranks needs a corpus it can index: a tensor, an array or a list/tuple of chunks, "
            f"got {type(corpus).__name__}"
        )
    chunks, total = corpus_chunks(corpus)
    chunks = list(chunks)
    for i, ch in enumerate(chunks):
        check_chunk(f"corpus chunk {i}" if i else "corpus", ch, q.shape[1], q.device)
    if not total:
        raise ValueError("corpus is empty")
    rel = check_relevant(relevant, q.shape[0], total, q.device)
    chunk_starts = torch.tensor(np.cumsum([0] + [int(ch.shape[0]) for ch in chunks]), device=q.device)  # [chunks + 1]
    if impl == "reference":
        cs = [as_tensor("corpus", ch).to(q.device) for ch in chunks]
        ranks = reference.relevant_ranks(q, torch.cat(cs), rel, metric=metric)
        if not per_chunk:
            return output(ranks, as_numpy)
        chunk_ranks = torch.full_like(rel, -1)
        for i, c in enumerate(cs):  # each chunk ranked on its own
            inside = (rel >= chunk_starts[i]) & (rel < chunk_starts[i + 1])
            if not inside.any():
                continue  # (an empty chunk holds no item)
            local = reference.relevant_ranks(q, c, torch.where(inside, rel - chunk_starts[i], -1), metric=metric)
            chunk_ranks = torch.where(inside, local, chunk_ranks)
        return output(ranks, as_numpy), output(chunk_ranks, as_numpy)
    q32 = prepare(q, metric, "queries")
    with on_gpu(q32.device):
        rel_scores = _relevant_scores(q32, chunks, rel, metric)  # [nq, r]
    counts = torch.zeros_like(rel)  # [nq, r] candidates that beat each item
    # [nq, r] the same, counted within the item's own chunk; and the chunk of each item (-1: padding)
    chunk_counts = torch.zeros_like(rel) if per_chunk else None
    rel_chunk = torch.searchsorted(chunk_starts, rel, right=True) - 1 if per_chunk else None
    own_scores = rel_scores.clone()  # [nq, r] each item's score as its own tile computed it
    cuda = ext.runs_cuda_kernels(q.device)
    if cuda:
        require_cuda("relevant_ranks", q.device)
    tile_q = min(q32.shape[0], CUDA_QUERY_TILE if cuda else CPU_QUERY_TILE)
    starts = list(range(0, q32.shape[0], tile_q))
    per_chunk_counts = (chunk_counts, rel_chunk, chunk_starts) if per_chunk else None
    products = {}  # the product the first pass used, so that a redo pass computes the same scores
    with on_gpu(q32.device):
        _count_pass(q32, chunks, rel, rel_scores, counts, own_scores, starts, tile_q, metric, total, progress, products,
                    per_chunk_counts)
    # The batched products above may round an item's score differently from its tile (by an ulp).
    # Where they did, count again with the tile's own score: the same tile shapes give the same
    # products, so the ranks follow the tile scores exactly, duplicates of an item included.
    differs = ((own_scores != rel_scores) & (rel >= 0)).any(dim=1)  # [nq]
    tile_differs = torch.stack([differs[i0 : i0 + tile_q].any() for i0 in starts]).tolist()  # one device wait
    redo = [i0 for i0, d in zip(starts, tile_differs) if d]
    if redo:
        rel_scores = own_scores.clone()
        for i0 in redo:
            counts[i0 : i0 + tile_q] = 0
            if per_chunk:
                chunk_counts[i0 : i0 + tile_q] = 0
        with on_gpu(q32.device):
            _count_pass(q32, chunks, rel, rel_scores, counts, own_scores, redo, tile_q, metric, total, progress,
                        products, per_chunk_counts)
    ranks = torch.where(rel >= 0, counts + 1, torch.full_like(counts, -1))
    if not per_chunk:
        return output(ranks, as_numpy)
    chunk_ranks = torch.where(rel >= 0, chunk_counts + 1, torch.full_like(counts, -1))
    return output(ranks, as_numpy), output(chunk_ranks, as_numpy)


def _count_pass(q32, chunks, rel, rel_scores, counts, own_scores, starts, tile_q, metric, total, progress, products,
                per_chunk_counts=None):
    """One walk over the corpus tiles for the query tiles starting at `starts`: adds to counts
    [nq, r] the candidates that beat each relevant item, and records each item's own tile score.
    products: {"backend": the product}, chosen by the first pass and kept by a redo pass (same scores).
    With per_chunk_counts = (chunk_counts, rel_chunk, chunk_starts), also adds to chunk_counts the
    candidates of each item's own chunk that beat it (a tile never spans two chunks)."""
    cuda = ext.runs_cuda_kernels(q32.device)
    counts_on_cuda = cuda and safety.trusted("relevant_ranks", q32.device, check_relevant_ranks_cuda)
    zero_row = None
    if cuda:
        bad = torch.zeros(1, dtype=torch.int32, device=q32.device)
        zero_row = torch.full((), search_cuda.NO_ROW, dtype=torch.int64, device=q32.device)
        stream = ext.current_stream(q32.device)
    nq, dim = q32.shape
    r = rel.shape[1]
    tile_c = CUDA_CORPUS_TILE if cuda else CPU_CORPUS_TILE
    key = gemm.shape_class("relevant_ranks", tile_q, tile_c, dim)
    if per_chunk_counts is not None:
        chunk_counts, rel_chunk, chunk_starts = per_chunk_counts
        chunk_starts = chunk_starts.tolist()
        piece = torch.empty(tile_q, r, dtype=torch.int64, device=q32.device)  # one tile's counts
    buffer = []  # torch's product tile, made on first use (hbfast's fused product keeps its own small tiles)

    def count(backend, qt, i0, first_id, ct, target, own):  # counts of one [tq, tc] tile into target [tq, r]
        rel_args = (rel_scores[i0].data_ptr(), rel[i0].data_ptr(), r, target.data_ptr(), own.data_ptr())
        if not cuda:
            return search_cpu.count_tile(backend, qt, first_id, ct, rel_args, buffer, tile_q * tile_c)
        tile = search_cpu.product(buffer, tile_q * tile_c, qt, ct)  # [tq, tc]
        if not counts_on_cuda:  # the kernel failed its first-use check on this device
            rows = slice(i0, i0 + qt.shape[0])
            return generic.count_tile(tile, first_id, rel_scores[rows], rel[rows], target, own)
        kernels.count_beating_cuda(tile.data_ptr(), qt.shape[0], ct.shape[0], ct.shape[0], first_id, *rel_args,
                              bad.data_ptr(), stream)

    with _progress(total, progress, "relevant_ranks") as bar:
        for first_id, ct in tiles(iter(chunks), dim, q32.device, metric, tile_c, zero_row):
            width = ct.shape[0]
            for i0 in starts:
                qt = q32[i0 : i0 + tile_q]  # [tq, D]
                target = counts[i0 : i0 + qt.shape[0]]
                if per_chunk_counts is not None:
                    with between_fused_tiles(q32.device):
                        target = piece[: qt.shape[0]].zero_()
                if "backend" not in products:  # measured on this tile into scratch counts (once per class)
                    scratch = lambda b: count(b, qt, i0, first_id, ct, torch.zeros_like(target),  # noqa: E731
                                              own_scores[i0 : i0 + qt.shape[0]].clone())
                    products["backend"] = "mkl" if cuda else gemm.chooser.decide(key, scratch)
                count(products["backend"], qt, i0, first_id, ct, target, own_scores[i0 : i0 + qt.shape[0]])
                if per_chunk_counts is not None:  # (torch in one thread: see between_fused_tiles)
                    rows = slice(i0, i0 + qt.shape[0])
                    chunk = bisect.bisect_right(chunk_starts, first_id) - 1
                    with between_fused_tiles(q32.device):
                        counts[rows] += target
                        chunk_counts[rows] += target * (rel_chunk[rows] == chunk)
            bar.update(width)
    if cuda:
        device_checks(bad, zero_row)


class FlatIndex:
    """A corpus kept (fp32, normalised for cosine) for repeated exact searches.

    >>> index = FlatIndex(corpus, metric="cosine")
    >>> scores, ids = index.search(queries, k=10)
    >>> ranks = index.ranks(queries, relevant)
    """

    def __init__(self, corpus: Matrix, *, metric: str = "ip"):
        self.metric = check_metric(metric, RANK_METRICS)
        c = as_tensor("corpus", corpus)
        if c.shape[0] == 0 or c.shape[1] == 0:
            raise ValueError(f"corpus is empty: shape {tuple(c.shape)}")
        check_finite("corpus", c)
        self.corpus = prepare(c, metric, "corpus")  # [N, D]
        # Rows are already normalised, so "ip" on them is the cosine.
        self._search_metric = "ip"

    def __len__(self) -> int:
        return self.corpus.shape[0]

    def _queries(self, queries):
        q, as_numpy = check_queries(queries, self.metric)
        q = prepare(q, self.metric, "queries")
        return (q.numpy() if as_numpy else q), as_numpy

    def search(self, queries, k: int, *, impl: str = "auto", selector=None):
        """(scores [nq, k], ids [nq, k]) as ``topk`` (selector: an hbfast IDSelector, as ``topk``'s)."""
        q, _ = self._queries(queries)
        return topk(q, self.corpus, k, metric=self._search_metric, impl=impl, selector=selector)

    def range_search(self, queries, threshold: float, *, impl: str = "auto", selector=None):
        """(lims, values, ids) of every item scoring above ``threshold``, as ``hbfast.range_search``."""
        q, _ = self._queries(queries)
        return radius.range_search(q, self.corpus, threshold, metric=self._search_metric, impl=impl, selector=selector)

    def ranks(self, queries, relevant, *, impl: str = "auto"):
        """int64 [nq, r] as ``relevant_ranks``."""
        q, _ = self._queries(queries)
        return relevant_ranks(q, self.corpus, relevant, metric=self._search_metric, impl=impl)


# ---- the CUDA kernels' first-use checks (ops.safety) -------------------------------------------------

def _integer_case(device: torch.device, nq: int = 37, n: int = 700, dim: int = 12):
    """Queries and a corpus of small integers: every score exact in float32 on every device, many ties."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-3, 4, (nq, dim), generator=gen).float().to(device)
    c = torch.randint(-3, 4, (n, dim), generator=gen).float().to(device)
    return q, c


def check_topk_cuda(device: torch.device) -> str:
    """topk's CUDA walks (plain, id-filtered, L2) against hbfast.reference on ``device``."""
    from .selectors import IDSelectorRange

    q, c = _integer_case(device)
    for k, metric, selector in ((1, "ip", None), (50, "ip", None), (20, "l2", None), (20, "ip", IDSelectorRange(100, 400))):
        got = topk(q, [c[:300], c[300:]], k, metric=metric, selector=selector, impl="kernel")
        want = topk(q, c, k, metric=metric, selector=selector, impl="reference")
        for name, g, w in zip(("scores", "ids"), got, want):
            problem = safety.compare(f"topk {name} (k={k}, {metric}{', filtered' if selector else ''})", g, w, 0, 0)
            if problem:
                return problem
    return ""


def check_relevant_ranks_cuda(device: torch.device) -> str:
    """relevant_ranks' CUDA count against hbfast.reference on ``device``."""
    q, c = _integer_case(device)
    rel = torch.randint(-1, c.shape[0], (q.shape[0], 5), generator=torch.Generator().manual_seed(1)).to(device)
    got = relevant_ranks(q, [c[:300], c[300:]], rel, impl="kernel")
    return safety.compare("relevant_ranks", got, relevant_ranks(q, c, rel, impl="reference"), 0, 0)
