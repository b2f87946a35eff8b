"""The walk over the score matrix that both fused losses (contrastive, SigLIP) make on both devices,
one row block at a time, so that each keeps only its per-element epilogue:
- the plan: which row blocks, and how many leading rows are kept from the forward for the backward
  (``memory_budget``);
- forward: each block's raw dot products [rows, N] (kept for the backward while they fit the memory
  budget, else in one reused work block) are handed to the epilogue;
- backward: each block's dot products (kept, or recomputed into the gradient buffer), turned by the
  epilogue into scale * dL/dS in place, then multiplied out: grad_q rows = G @ keys, grad_keys += G.T @ q.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from torch import Tensor

from ..ext import kernels

DEFAULT_MEMORY_BUDGET = 768 << 20  # bytes of score blocks kept from forward to backward
BLOCK_ROWS = 1024  # rows per block of the score matrix (each block's grad_keys update reads and
BLOCK_BYTES = 64 << 20  # writes all of grad_keys, so not fewer), unless a block exceeds this
MAX_BLOCK_ROWS = 65535  # CUDA grid limit on the gradient kernel's rows


def block_rows(n_rows: int, n_cols: int, item_size: int = 4) -> int:
    """Rows per block: BLOCK_ROWS, fewer (at least 16) when a block [rows, n_cols] of item_size-byte
    scores would take more than BLOCK_BYTES."""
    rows = max(16, min(BLOCK_ROWS, BLOCK_BYTES // (item_size * max(n_cols, 1))))
    return int(min(n_rows, rows, MAX_BLOCK_ROWS))


def cached_rows(n_rows: int, n_cols: int, memory_budget: int, item_size: int = 4) -> int:
    """How many leading rows of the score matrix the forward keeps for the backward."""
    return int(min(n_rows, max(0, memory_budget) // (item_size * max(n_cols, 1))))


def plan(n_rows: int, n_cols: int, n_cached: int, item_size: int) -> List[Tuple[int, int]]:
    """The row blocks (lo, hi) of an [n_rows, n_cols] score matrix whose first n_cached rows are kept."""
    step = block_rows(n_rows, n_cols, item_size)
    out = []
    for lo, hi in ((0, n_cached), (n_cached, n_rows)):  # a block never straddles the cache boundary
        out += [(r, min(r + step, hi)) for r in range(lo, hi, step)]
    return out


Mm = Callable[..., None]  # mm(a, b, out, accumulate=False): out = a @ b (or += it); see ops.gemm


def empty_block(rows: int, cols: int, like: Tensor) -> Tensor:
    """A [rows, cols] buffer of like's dtype and device; large CPU ones get huge pages before their
    first write."""
    t = torch.empty(rows, cols, dtype=like.dtype, device=like.device)
    if t.device.type == "cpu" and t.numel() >= (1 << 20):
        kernels.contrastive_advise_huge_pages(t.data_ptr(), t.numel() * t.element_size())
    return t


def forward(q: Tensor, keys: Tensor, n_cached: int, blocks: List[Tuple[int, int]], mm: Mm,
            epilogue: Callable[[Tensor, int, int], None]) -> Tensor:
    """Calls epilogue(x, lo, hi) with the dot products x [hi - lo, N] of rows lo:hi of q against keys;
    returns the kept blocks [n_cached, N]."""
    N = keys.shape[0]
    cache = empty_block(n_cached, N, q)
    work = empty_block(max((hi - lo for lo, hi in blocks if lo >= n_cached), default=0), N, q)
    keys_t = keys.t()
    for lo, hi in blocks:
        x = cache[lo:hi] if hi <= n_cached else work[: hi - lo]
        mm(q[lo:hi], keys_t, x)  # [rows, N] raw dot products
        epilogue(x, lo, hi)
    return cache


def backward(q: Tensor, keys: Tensor, cache: Tensor, blocks: List[Tuple[int, int]], mm: Mm, need_q: bool,
             need_keys: bool, epilogue: Callable[[Tensor, Tensor, int, int], None]) -> Tuple[Tensor, Tensor]:
    """Calls epilogue(x, g, lo, hi), which writes scale * dL/dS of rows lo:hi into g [hi - lo, N] from
    their dot products x (g itself when they were recomputed); returns (grad_q, grad_keys)."""
    N, n_cached = keys.shape[0], cache.shape[0]
    grad_q = torch.empty_like(q) if need_q else torch.zeros_like(q)
    grad_keys = torch.empty_like(keys) if need_keys else torch.zeros_like(keys)
    work = empty_block(max(hi - lo for lo, hi in blocks), N, q)
    keys_t = keys.t()
    for lo, hi in blocks:
        g = work[: hi - lo]
        if hi <= n_cached:
            x = cache[lo:hi]
        else:
            x = g
            mm(q[lo:hi], keys_t, x)  # recompute [rows, N]; the epilogue overwrites it in place
        epilogue(x, g, lo, hi)
        if need_q:
            mm(g, keys, grad_q[lo:hi])  # [rows, D]
        if need_keys:
            mm(g.t(), q[lo:hi], grad_keys, accumulate=lo > 0)  # [N, D]
    return grad_q, grad_keys
