"""Id selectors: which corpus ids ``hbfast.topk(..., selector=)`` and ``hbfast.range_search(..., selector=)``
may return. The kernels test them inside the product tiles (csrc/common/range_math.h: IdFilter), so a
filtered search costs what an unfiltered one does and never builds a score matrix.

faiss's names and meanings:

- ``IDSelectorRange(imin, imax)``: ids in [imin, imax);
- ``IDSelectorArray(ids)`` / ``IDSelectorBatch(ids)``: the listed ids (duplicates and ids outside the corpus
  are ignored);
- ``IDSelectorBitmap(bitmap)``: a uint8 bitmap, bit ``i & 7`` of byte ``i >> 3`` for id ``i`` (faiss's
  layout; ids past its end are not selected), or a boolean mask with one entry per id;
- ``IDSelectorNot(selector)``: every id the other one does not select.

A range costs nothing; the others become one bitmap of the corpus (N / 8 bytes) per search.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Optional

import numpy as np
import torch

from ..ext import kernels

__all__ = ["IDSelector", "IDSelectorArray", "IDSelectorBatch", "IDSelectorBitmap", "IDSelectorNot", "IDSelectorRange",
           "TileFilter", "check_selector"]

_INT64_MAX = 2**63 - 1


@dataclass
class TileFilter:
    """A selector resolved for a corpus of ``total`` ids, in the kernels' form (IdFilter): ids in
    [lo, hi) and set in ``bits`` (when given), or the complement of that when ``invert``."""

    lo: int = 0
    hi: int = _INT64_MAX
    bits: Optional[torch.Tensor] = None  # uint8, on the search's device
    n_bits: int = 0
    invert: bool = False

    def params(self, l2: bool = False, q_norms: Optional[torch.Tensor] = None,
               c_norms: Optional[torch.Tensor] = None) -> "kernels.TileParams":
        """The kernels' TileParams (the tensors must outlive the call that uses them)."""
        def address(t):
            return 0 if t is None else t.data_ptr()

        return kernels.TileParams(int(l2), address(q_norms), address(c_norms), self.lo, self.hi, address(self.bits),
                             self.n_bits, self.invert)

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        """Which of ``ids`` (int64, any shape) are selected: the kernels' rule in torch (the reference)."""
        inside = (ids >= self.lo) & (ids < self.hi)
        if self.bits is not None:
            safe = ids.clamp(0, max(self.n_bits - 1, 0))
            bit = (self.bits.to(ids.device)[safe >> 3].to(torch.int64) >> (safe & 7)) & 1
            inside &= (ids >= 0) & (ids < self.n_bits) & (bit == 1)
        return inside ^ self.invert


class IDSelector:
    """Base class: ``resolve(total, device)`` gives the kernels' :class:`TileFilter`."""

    def resolve(self, total: int, device) -> TileFilter:
        raise NotImplementedError

    def mask(self, total: int) -> np.ndarray:
        """bool [total]: whether each id 0..total-1 is selected."""
        f = self.resolve(total, "cpu")
        return f.contains(torch.arange(total)).numpy()


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


class IDSelectorRange(IDSelector):
    """Ids in [imin, imax)."""

    def __init__(self, imin: int, imax: int):
        self.imin, self.imax = _check_int("imin", imin), _check_int("imax", imax)

    def resolve(self, total: int, device) -> TileFilter:
        return TileFilter(lo=self.imin, hi=self.imax)

    def __repr__(self) -> str:
        return f"IDSelectorRange({self.imin}, {self.imax})"


def _bitmap_of(ids: np.ndarray, total: int, device) -> torch.Tensor:
    mask = np.zeros(max(total, 1), dtype=bool)
    mask[ids[(ids >= 0) & (ids < total)]] = True
    return torch.from_numpy(np.packbits(mask, bitorder="little")).to(device)


class IDSelectorArray(IDSelector):
    """The listed ids (a 1-D integer array)."""

    def __init__(self, ids):
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise TypeError(f"{type(self).__name__} takes a 1-D integer array of ids, got dtype {ids.dtype} and shape {ids.shape}")
        self.ids = ids.astype(np.int64)

    def resolve(self, total: Optional[int], device) -> TileFilter:
        if total is None:  # a corpus of unknown size (an iterator of chunks): up to the largest id
            total = int(self.ids.max()) + 1 if len(self.ids) else 0
        return TileFilter(bits=_bitmap_of(self.ids, total, device), n_bits=total)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.ids)} ids)"


class IDSelectorBatch(IDSelectorArray):
    """The listed ids (faiss's name for a selector built from a set of ids)."""


class IDSelectorBitmap(IDSelector):
    """A uint8 bitmap in faiss's layout (bit ``i & 7`` of byte ``i >> 3``), or a boolean mask [n]."""

    def __init__(self, bitmap):
        b = np.asarray(bitmap)
        if b.ndim != 1:
            raise ValueError(f"IDSelectorBitmap takes a 1-D uint8 bitmap or bool mask, got shape {b.shape}")
        if b.dtype == np.bool_:
            self.n_bits = len(b)
            self.bits = np.packbits(b, bitorder="little")
        elif b.dtype == np.uint8:
            self.n_bits = 8 * len(b)
            self.bits = np.ascontiguousarray(b)
        else:
            raise TypeError(f"IDSelectorBitmap takes a uint8 bitmap or a bool mask, got dtype {b.dtype}")

    def resolve(self, total: int, device) -> TileFilter:
        bits = torch.from_numpy(self.bits if len(self.bits) else np.zeros(1, np.uint8)).to(device)
        return TileFilter(bits=bits, n_bits=self.n_bits)

    def __repr__(self) -> str:
        return f"IDSelectorBitmap({self.n_bits} bits)"


class IDSelectorNot(IDSelector):
    """Every id ``selector`` does not select."""

    def __init__(self, selector: IDSelector):
        self.selector = check_selector(selector)

    def resolve(self, total: int, device) -> TileFilter:
        f = self.selector.resolve(total, device)
        return TileFilter(f.lo, f.hi, f.bits, f.n_bits, not f.invert)

    def __repr__(self) -> str:
        return f"IDSelectorNot({self.selector!r})"


def check_selector(selector) -> Optional[IDSelector]:
    """None or an hbfast selector, else a clear TypeError (faiss's own selectors go through
    hbfast.integrations.faiss)."""
    if selector is None or isinstance(selector, IDSelector):
        return selector
    raise TypeError(f"selector must be an hbfast IDSelector (IDSelectorRange, IDSelectorArray, IDSelectorBitmap, "
                    f"IDSelectorNot) or None, got {type(selector).__name__}")
