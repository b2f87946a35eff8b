"""faiss's flat indexes without faiss: ``IndexFlatIP`` and ``IndexFlatL2`` with faiss's interface, searched by
:func:`hbfast.topk`. ``hbfast.integrations.faiss`` serves these where faiss is not installed (where it
is, it serves subclasses of faiss's own classes instead: see that module).

    import hbfast.integrations.faiss_standalone as faiss
    index = faiss.IndexFlatIP(384)
    index.add(xb)                    # float32 [n, d]
    D, I = index.search(xq, 10)      # float32 [nq, k], int64 [nq, k]

Results are faiss's: ``IndexFlatL2`` returns squared distances, nearest
first; ``k > ntotal`` pads ``I`` with -1 and ``D`` with -FLT_MAX (IP) / +FLT_MAX (L2);
``remove_ids`` shifts the later ids down like faiss's flat index.

Ties (equal scores), as faiss-cpu 1.x behaves: L2 lists equal distances lower id first; IP lists
equal scores higher id first. Where a group of equal scores straddles the k-th place, the kept
members are the lowest ids (hbfast's rule; faiss's L2 keeps the same ones, faiss's IP keeps the
ones its heap happens to hold).

L2 search runs on the inner-product kernel: the index stores rows [y, -|y|^2 / 2], queries become
[x, 1], so the best inner product is the nearest row, and D = |x|^2 - 2 * score (clamped at 0, as
faiss clamps its BLAS path's round-off). Distances agree with faiss to float32 round-off.
"""
from __future__ import annotations

from numbers import Integral

import numpy as np
import torch

from ..ops.search import topk

__all__ = ["IndexFlat", "IndexFlatIP", "IndexFlatL2", "METRIC_INNER_PRODUCT", "METRIC_L2", "normalize_L2"]

METRIC_INNER_PRODUCT = 0
METRIC_L2 = 1
_FLT_MAX = float(np.finfo(np.float32).max)


class IndexOutOfRange(IndexError, RuntimeError):
    """An id outside [0, ntotal) (a RuntimeError too, as faiss raises one)."""


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _as_rows(name: str, x, d: int) -> torch.Tensor:
    """A float32 [n, d] CPU tensor from a numpy array (or tensor), with a clear error otherwise."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array [n, {d}], got {type(x).__name__}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{name} must have shape [n, {d}] (the index has d={d}), got {x.shape}")
    t = torch.from_numpy(np.array(x, dtype=np.float32, order="C"))  # a copy: the index never aliases the caller's array
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


class IndexFlat:
    """faiss.IndexFlat: exact search, ``metric`` METRIC_L2 (default, as faiss) or METRIC_INNER_PRODUCT."""

    def __init__(self, d: int, metric: int = METRIC_L2):
        self.d = _check_int("d", d, 1)
        if metric not in (METRIC_INNER_PRODUCT, METRIC_L2):
            raise ValueError(f"metric must be METRIC_INNER_PRODUCT (0) or METRIC_L2 (1), got {metric!r}")
        self.metric_type = metric
        self.reset()

    # [ntotal, d] for IP; [ntotal, d + 1] = [y, -|y|^2 / 2] for L2
    def reset(self) -> None:
        """Removes every vector."""
        self._rows = torch.empty(0, self.d + (self.metric_type == METRIC_L2), dtype=torch.float32)

    @property
    def ntotal(self) -> int:
        return int(self._rows.shape[0])

    @property
    def is_trained(self) -> bool:
        return True

    def train(self, x) -> None:
        """Nothing to train (faiss's flat indexes ignore it too); checks x's shape."""
        _as_rows("x", x, self.d)

    def add(self, x) -> None:
        """Appends the rows of x [n, d]; they get ids ntotal, ..., ntotal + n - 1."""
        x = _as_rows("x", x, self.d)
        if self.metric_type == METRIC_L2:
            x = torch.cat([x, -0.5 * (x.double() ** 2).sum(1, keepdim=True).float()], 1)  # [n, d + 1]
        self._rows = torch.cat([self._rows, x])

    def search(self, x, k: int, *, params=None, D=None, I=None):  # noqa: E741 - faiss's names
        """(D float32 [nq, k], I int64 [nq, k]) of the k best rows per query row of x [nq, d]."""
        if params is not None:
            raise ValueError("search params are not supported by hbfast's flat index")
        k = _check_int("k", k, 1)
        queries = _as_rows("x", x, self.d)
        nq = queries.shape[0]
        out_d = np.full((nq, k), -_FLT_MAX if self.metric_type == METRIC_INNER_PRODUCT else _FLT_MAX, dtype=np.float32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        found = min(k, self.ntotal)
        if nq and found:
            if self.metric_type == METRIC_INNER_PRODUCT:
                scores, ids = topk(queries, self._rows, found, metric="ip")  # best first, ties lower id first
                scores, ids = scores.numpy(), ids.numpy()
                order = np.lexsort((-ids, -scores), axis=1)  # faiss lists equal scores higher id first
                out_d[:, :found] = np.take_along_axis(scores, order, 1)
                out_i[:, :found] = np.take_along_axis(ids, order, 1)
            else:
                q1 = torch.cat([queries, torch.ones(nq, 1)], 1)  # [nq, d + 1]
                scores, ids = topk(q1, self._rows, found, metric="ip")  # x.y - |y|^2 / 2, nearest first
                sq_norms = (queries.double() ** 2).sum(1, keepdim=True)  # [nq, 1]
                out_d[:, :found] = (sq_norms - 2.0 * scores.double()).clamp_(min=0).float().numpy()
                out_i[:, :found] = ids.numpy()
        if D is not None or I is not None:
            for name, given, got in (("D", D, out_d), ("I", I, out_i)):
                if given is None or not isinstance(given, np.ndarray) or given.shape != got.shape or given.dtype != got.dtype:
                    raise ValueError(f"{name} must be a numpy {got.dtype} array of shape {got.shape} (give D and I together)")
                given[...] = got
            return D, I
        return out_d, out_i

    def reconstruct(self, key: int, x=None) -> np.ndarray:
        """The stored vector of id ``key`` (float32 [d])."""
        key = _check_int("key", key, 0) if not isinstance(key, np.integer) else int(key)
        if not 0 <= key < self.ntotal:
            raise IndexOutOfRange(f"id {key} is out of range: the index holds ids 0..{self.ntotal - 1}")
        row = self._rows[key, : self.d].numpy().copy()
        if x is not None:
            x[...] = row
            return x
        return row

    def reconstruct_n(self, n0: int = 0, ni: int = -1, x=None) -> np.ndarray:
        """The stored vectors of ids n0 .. n0 + ni - 1 (float32 [ni, d]); ni = -1: up to ntotal."""
        n0 = int(n0)
        ni = self.ntotal - n0 if ni == -1 else int(ni)
        if n0 < 0 or ni < 0 or n0 + ni > self.ntotal:
            raise IndexOutOfRange(f"ids {n0}..{n0 + ni - 1} are out of range: the index holds ids 0..{self.ntotal - 1}")
        rows = self._rows[n0 : n0 + ni, : self.d].numpy().copy()
        if x is not None:
            x[...] = rows
            return x
        return rows

    def remove_ids(self, ids) -> int:
        """Removes the given ids (a 1-D integer array; ids not present are ignored) and returns how many
        were removed; the remaining vectors keep their order and get ids 0..ntotal-1 again."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise TypeError(f"remove_ids takes a 1-D integer array of ids, got dtype {ids.dtype} and shape {ids.shape}")
        keep = ~np.isin(np.arange(self.ntotal), ids)
        removed = int(self.ntotal - keep.sum())
        if removed:
            self._rows = self._rows[torch.from_numpy(keep)].contiguous()
        return removed

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        kind = "IP" if self.metric_type == METRIC_INNER_PRODUCT else "L2"
        return f"hbfast.integrations.faiss_standalone.IndexFlat{kind}(d={self.d}, ntotal={self.ntotal})"


class IndexFlatIP(IndexFlat):
    """faiss.IndexFlatIP: exact maximum inner product search."""

    def __init__(self, d: int):
        super().__init__(d, METRIC_INNER_PRODUCT)


class IndexFlatL2(IndexFlat):
    """faiss.IndexFlatL2: exact nearest neighbours by squared Euclidean distance."""

    def __init__(self, d: int):
        super().__init__(d, METRIC_L2)


def normalize_L2(x: np.ndarray) -> None:
    """Scales every row of the float32 array x to unit L2 norm, in place (zero rows stay zero), as faiss."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise TypeError("normalize_L2 takes a C-contiguous float32 numpy array [n, d] (it works in place)")
    norms = np.sqrt((x.astype(np.float64) ** 2).sum(1, keepdims=True))
    np.divide(x, norms, out=x, where=norms > 0)
