"""Hybrid batch plans: each batch is monolingual (X-X) with probability alpha, else cross-lingual (X-Y).

``hybrid_batches`` returns a whole epoch's plan as arrays; ``HybridBatchSampler`` wraps it as a
``torch.utils.data.Sampler`` of batches. The plan comes from the C++ kernel
(``hbfast._C.hybrid_batches``) or from its pure numpy twin ``hbfast.reference.hybrid_batch_plan``;
both give identical plans for identical arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Iterator, List, Sequence, Tuple, Union

import numpy as np

from .ops.ext import kernels
from .ops.ext import check_impl

Weights = Union[str, Sequence[float], np.ndarray]


@dataclass(frozen=True)
class BatchPlan:
    """One epoch of batches for one rank. Padding rows (``drop_last=False``) hold -1 everywhere.

    items:        int64 [num_batches, batch_size] item ids
    query_lang:   int32 [num_batches, batch_size] language index of the query side
    passage_lang: int32 [num_batches, batch_size] language index of the passage side
    mono:         bool  [num_batches] True for an X-X batch, False for an X-Y batch
    """

    items: np.ndarray
    query_lang: np.ndarray
    passage_lang: np.ndarray
    mono: np.ndarray

    def __len__(self) -> int:
        return len(self.mono)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _as_availability(availability) -> np.ndarray:
    if hasattr(availability, "detach") and hasattr(availability, "cpu"):  # torch tensor
        availability = availability.detach().cpu().numpy()
    a = np.asarray(availability)
    if a.ndim != 2:
        raise ValueError(f"availability must be 2-D [items, languages], got shape {a.shape}")
    if a.dtype != np.bool_:
        raise TypeError(f"availability must be boolean, got dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"availability is empty: shape {a.shape}")
    if a.shape[0] >= 2**32:
        raise ValueError(f"at most 2**32 - 1 items are supported, got {a.shape[0]}")
    return np.ascontiguousarray(a).view(np.uint8)


def _language_weights(lang_weights: Weights, counts: np.ndarray) -> np.ndarray:
    L = len(counts)
    if isinstance(lang_weights, str):
        if lang_weights == "uniform":
            empty = np.flatnonzero(counts == 0)
            if len(empty):
                raise ValueError(
                    f"languages {empty.tolist()} have no items, so uniform language weights cannot "
                    "use them; drop those columns or pass explicit weights"
                )
            return np.ones(L, dtype=np.float64)
        if lang_weights == "size":
            return counts.astype(np.float64)
        raise ValueError(f"lang_weights must be 'uniform', 'size' or a sequence of {L} weights, got {lang_weights!r}")
    w = np.asarray(lang_weights, dtype=np.float64)
    if w.shape != (L,):
        raise ValueError(f"lang_weights must have one weight per language ({L}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"lang_weights must be finite, non-negative and not all zero, got {w.tolist()}")
    empty = np.flatnonzero((w > 0) & (counts == 0))
    if len(empty):
        raise ValueError(f"languages {empty.tolist()} have positive weight but no items")
    return w


def _validate(availability, batch_size, alpha, seed, epoch, lang_weights, rank, world_size):
    avail = _as_availability(availability)
    batch_size = _check_int("batch_size", batch_size, 1)
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    seed = _check_int("seed", seed, 0)
    epoch = _check_int("epoch", epoch, 0)
    if seed >= 2**64 or epoch >= 2**64:
        raise ValueError("seed and epoch must be below 2**64")
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
    counts, n_multi = kernels.availability_counts(avail)  # [L] items per language, items with >= 2
    weights = _language_weights(lang_weights, counts)
    global_batch = batch_size * world_size
    capacity = []
    if alpha > 0:
        capacity.append(int(counts[weights > 0].max(initial=0)))
    if alpha < 1:
        capacity.append(int(n_multi))
    if global_batch > max(capacity):
        raise ValueError(
            f"batch_size * world_size = {global_batch} is larger than any batch kind allowed by "
            f"alpha={alpha} can fill (largest: {max(capacity)} items)"
        )
    return avail, weights, alpha, batch_size, seed, epoch, rank, world_size


def _plan_kernel(avail, weights, alpha, global_batch, seed, epoch, drop_last):
    N, L = avail.shape
    max_batches = N // global_batch + L + 2
    items = np.empty((max_batches, global_batch), dtype=np.int64)
    query_lang = np.empty((max_batches, global_batch), dtype=np.int32)
    passage_lang = np.empty((max_batches, global_batch), dtype=np.int32)
    mono = np.empty(max_batches, dtype=np.uint8)
    nb = kernels.hybrid_batches(avail, weights, alpha, global_batch, seed, epoch, drop_last, items, query_lang, passage_lang, mono)
    return items[:nb], query_lang[:nb], passage_lang[:nb], mono[:nb].view(np.bool_)


def _spread_padded_batches(items, ql, pl, world_size):
    """Deal the real rows of padded global batches round-robin over ranks, so that rank sizes in
    a step differ by at most one row (no rank gets an empty batch while another gets a full one)."""
    padded = np.flatnonzero(items[:, -1] < 0)  # padding always sits at the end of a global batch
    if len(padded) == 0:
        return items, ql, pl
    items, ql, pl = items.copy(), ql.copy(), pl.copy()
    batch_size = items.shape[1] // world_size
    j = np.arange(items.shape[1])
    dealt = (j % world_size) * batch_size + j // world_size  # column of the j-th real row
    for b in padded:
        n = int((items[b] >= 0).sum())
        for a in (items, ql, pl):
            row = np.full(a.shape[1], -1, dtype=a.dtype)
            row[dealt[:n]] = a[b, :n]
            a[b] = row
    return items, ql, pl


def hybrid_batches(
    availability,
    batch_size: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    epoch: int = 0,
    lang_weights: Weights = "uniform",
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    impl: str = "auto",
) -> BatchPlan:
    """Plan one epoch of hybrid batches.

    availability: bool [N, L], True where item i exists in language l.
    Each batch is X-X (every row: query and passage in one language, drawn by ``lang_weights``:
    "uniform", "size" = number of available items, or L explicit weights) with probability
    ``alpha``, else X-Y (every row: query language != passage language, both available, drawn
    uniformly per row). No item repeats within an epoch. When one kind can no longer fill a batch
    the other is used; when neither can, the epoch ends (``drop_last=True``) or the leftovers
    follow as padded batches (``drop_last=False``: every item with >= 2 languages is then used
    exactly once, single-language items only in X-X batches).

    Distributed: the plan is made for the global batch ``batch_size * world_size`` and rank r gets
    rows ``[r*batch_size, (r+1)*batch_size)`` of each (the rows of a padded last batch are dealt
    round-robin, so ranks differ by at most one row), so all ranks share kind and language at
    each step. Deterministic in (seed, epoch, world_size); rank only selects the slice.
    """
    check_impl(impl)
    avail, weights, alpha, batch_size, seed, epoch, rank, world_size = _validate(
        availability, batch_size, alpha, seed, epoch, lang_weights, rank, world_size
    )
    drop_last = bool(drop_last)
    global_batch = batch_size * world_size
    if impl == "reference":
        from .reference import hybrid_batch_plan

        items, ql, pl, mono = hybrid_batch_plan(avail.view(np.bool_), weights, alpha, global_batch, seed, epoch, drop_last)
    else:
        items, ql, pl, mono = _plan_kernel(avail, weights, alpha, global_batch, seed, epoch, drop_last)
    if world_size > 1:
        items, ql, pl = _spread_padded_batches(items, ql, pl, world_size)
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        items, ql, pl = (np.ascontiguousarray(a[:, rows]) for a in (items, ql, pl))
    return BatchPlan(items, ql, pl, mono)


def _default_distributed() -> Tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return 0, 1


try:
    from torch.utils.data import Sampler as _SamplerBase
except ImportError:  # pragma: no cover - torch is a dependency
    _SamplerBase = object


class HybridBatchSampler(_SamplerBase):
    """A batch sampler over hybrid batch plans, for ``DataLoader(dataset, batch_sampler=...)``.

    Each batch is a list of ``(item, query_lang, passage_lang)`` tuples (padding removed), so the
    dataset's ``__getitem__`` receives the item id and the two languages to fetch. Call
    ``set_epoch(e)`` before each epoch; ``len()`` is exact and equal on every rank. ``rank`` and
    ``world_size`` default to torch.distributed's when it is initialised.
    """

    def __init__(
        self,
        availability,
        batch_size: int,
        *,
        alpha: float = 0.5,
        seed: int = 0,
        lang_weights: Weights = "uniform",
        drop_last: bool = True,
        rank: int = None,
        world_size: int = None,
        impl: str = "auto",
    ):
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is None:
            rank, world_size = _default_distributed()
        check_impl(impl)
        self._args = dict(
            batch_size=batch_size, alpha=alpha, seed=seed, lang_weights=lang_weights,
            drop_last=drop_last, rank=rank, world_size=world_size, impl=impl,
        )
        self._availability = _as_availability(availability).view(np.bool_)
        _validate(self._availability, batch_size, alpha, seed, 0, lang_weights, rank, world_size)
        self.epoch = 0
        self._plan = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_int("epoch", epoch, 0)
        self._plan = None

    @property
    def plan(self) -> BatchPlan:
        if self._plan is None:
            self._plan = hybrid_batches(self._availability, epoch=self.epoch, **self._args)
        return self._plan

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[List[Tuple[int, int, int]]]:
        plan = self.plan
        for items, ql, pl in zip(plan.items, plan.query_lang, plan.passage_lang):
            keep = items >= 0
            yield list(zip(items[keep].tolist(), ql[keep].tolist(), pl[keep].tolist()))
