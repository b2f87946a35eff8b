"""The inputs of hbfast.search, checked and cut into tiles: every problem with queries, corpus, k or
metric is reported here, before any pointer reaches _C; and the corpus (a tensor, an array or chunks of
either) is walked as fp32 tiles on the queries' device, normalised for cosine.
"""
from __future__ import annotations

import contextlib
import math
from numbers import Integral
from typing import Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from . import cuda as search_cuda
from .cuda import zero_norm_error

Matrix = Union[torch.Tensor, np.ndarray]
Corpus = Union[Matrix, Iterable[Matrix]]

METRICS = ("ip", "cosine", "l2")  # l2: squared Euclidean distance, smallest first (faiss's IndexFlatL2)
RANK_METRICS = ("ip", "cosine")  # relevant_ranks's
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------------------------
# Input checks: every problem is reported here, before any pointer reaches _C.
def check_metric(metric: str, allowed: Tuple[str, ...] = METRICS) -> str:
    """The metric's name ("cos" is an alias of "cosine", as in ``hbfast eval --metric``) if it is one of
    ``allowed``, else a ValueError naming them: the one metric check of every search op."""
    metric = "cosine" if metric == "cos" else metric
    if metric not in allowed:
        raise ValueError(f"metric must be one of {allowed} (or 'cos'), got {metric!r}")
    return metric


def check_matrix(name: str, x) -> None:
    """A 2-D float tensor or numpy array, else a clear error (nothing is read or copied)."""
    if isinstance(x, torch.Tensor):
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must hold floats (float32, float16, bfloat16), got {x.dtype}")
    elif isinstance(x, np.ndarray):
        if x.dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(f"{name} must hold floats (float32, float16, bfloat16), got numpy dtype {x.dtype}")
    else:
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {tuple(x.shape)}")


def as_tensor(name: str, x) -> torch.Tensor:
    """A torch view of a checked tensor or numpy array (numpy is copied only when read-only)."""
    check_matrix(name, x)
    if isinstance(x, torch.Tensor):
        return x.detach()
    if not x.flags.writeable:  # torch cannot view read-only memory (e.g. a memmap opened "r")
        x = np.array(x)
    return torch.from_numpy(x)


def check_finite(name: str, t: torch.Tensor) -> None:
    if t.numel() == 0 or not t.dtype.is_floating_point:
        return
    # min and max carry any NaN and the infinities: one pass and no [n, D] mask (20x faster than isfinite().all())
    if not all(math.isfinite(v) for v in torch.stack(torch.aminmax(t.detach())).tolist()):  # one device wait
        raise ValueError(f"{name} contains NaN or infinite values")


def prepare(t: torch.Tensor, metric: str, name: str, first_id: int = 0,
             zero_row: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fp32, contiguous, rows normalised for cosine. [n, D] -> [n, D]

    With ``zero_row`` (an int64 device scalar, on the GPU) a zero-norm row is not reported here,
    which would wait for the device: the lowest such id is kept in ``zero_row`` for the caller to
    report once at the end (zero_norm_error)."""
    t = t.to(torch.float32).contiguous()
    if metric == "cosine":
        norms = torch.linalg.vector_norm(t, dim=1, keepdim=True)  # [n, 1]
        if zero_row is not None:
            ids = torch.arange(first_id, first_id + t.shape[0], device=t.device)
            torch.minimum(zero_row, torch.where(norms[:, 0] == 0, ids, search_cuda.NO_ROW).min(), out=zero_row)
            return t / norms
        zero = (norms == 0).flatten().nonzero()
        if len(zero):
            raise ValueError(zero_norm_error(name, first_id + int(zero[0])))
        t = t / norms
    return t


def check_queries(queries, metric: str) -> Tuple[torch.Tensor, bool]:
    q = as_tensor("queries", queries)
    if q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"queries is empty: shape {tuple(q.shape)}")
    check_finite("queries", q)
    return q, isinstance(queries, np.ndarray)


def check_chunk(name: str, chunk, dim: int, device: torch.device):
    """Checks a corpus chunk without reading it (a memmap stays on disk); returns it unchanged."""
    check_matrix(name, chunk)
    if chunk.shape[1] != dim:
        raise ValueError(f"dimension mismatch: queries have dim {dim}, {name} has shape {tuple(chunk.shape)}")
    if isinstance(chunk, torch.Tensor) and chunk.device != device:
        raise ValueError(f"mixed devices: queries are on {device}, {name} is on {chunk.device}")
    return chunk


def corpus_chunks(corpus: Corpus) -> Tuple[Iterator, Optional[int]]:
    """(iterator over chunks, total rows when known up front)."""
    if isinstance(corpus, (torch.Tensor, np.ndarray)):
        if corpus.ndim != 2:
            raise ValueError(f"corpus must be 2-D [n, dim], got shape {tuple(corpus.shape)}")
        return iter([corpus]), int(corpus.shape[0])
    if isinstance(corpus, (str, bytes)) or not hasattr(corpus, "__iter__"):
        raise TypeError(f"corpus must be a tensor, an array or an iterable of them, got {type(corpus).__name__}")
    if isinstance(corpus, (list, tuple)):
        total = 0
        for i, c in enumerate(corpus):
            if not isinstance(c, (torch.Tensor, np.ndarray)) or c.ndim != 2:
                raise TypeError(f"corpus chunk {i} must be a 2-D tensor or array, got {type(c).__name__}")
            total += int(c.shape[0])
        return iter(corpus), total
    return iter(corpus), None


def check_k(k, total: Optional[int]) -> int:
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if total is not None and k > total:
        raise ValueError(f"k = {k} is larger than the corpus ({total} items)")
    return int(k)


def output(x: torch.Tensor, as_numpy: bool):
    return x.cpu().numpy() if as_numpy else x


def check_relevant(relevant, nq: int, total: int, device: torch.device, *, name: str = "relevant",
                   ids_name: str = "relevant ids", to_device: bool = False) -> torch.Tensor:
    """Relevant ids [nq, r] (an integer tensor or array; -1 pads) as int64 on ``device``, each in
    [0, total) or -1, else a clear error naming ``name`` (``ids_name`` for an id out of range). ``to_device``: move them there (else a tensor
    on another device is an error)."""
    if isinstance(relevant, np.ndarray):
        relevant = torch.from_numpy(np.array(relevant))
    if not isinstance(relevant, torch.Tensor):
        raise TypeError(f"{name} must be an int64 tensor or array [nq, r], got {type(relevant).__name__}")
    if relevant.dtype.is_floating_point or relevant.dtype == torch.bool or relevant.dtype.is_complex:
        raise TypeError(f"{name} must hold integer corpus ids, got {relevant.dtype}")
    if relevant.ndim != 2 or relevant.shape[0] != nq:
        raise ValueError(f"{name} must be [nq, r] = [{nq}, r] corpus ids (pad with -1), got shape {tuple(relevant.shape)}")
    if relevant.device != device and not to_device:
        raise ValueError(f"mixed devices: queries are on {device}, {name} is on {relevant.device}")
    rel = relevant.to(device=device, dtype=torch.int64).contiguous()
    if rel.numel():
        lo, hi = torch.stack([rel.min(), rel.max()]).tolist()  # one device wait
        if lo < -1 or hi >= total:
            raise ValueError(f"{ids_name} must be in [0, {total}) or -1 for padding, found values in [{lo}, {hi}]")
    return rel


@contextlib.contextmanager
def between_fused_tiles(device: torch.device):
    """torch ops between two fused CPU tiles (checks, normalisation, relevant_ranks' per-chunk counts)
    run in one thread: a parallel torch op leaves torch's OpenMP threads spinning on the cores that
    hbfast's threads need for the next tile (topk with metric="cosine" took 0.82 s instead of 0.66 s;
    relevant_ranks(per_chunk=True) 1.4x the time of the same call without per-chunk counts)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiles(chunks: Iterator, dim: int, device: torch.device, metric: str, tile: int,
           zero_row: Optional[torch.Tensor] = None):
    """Yields (first global id, fp32 corpus tile [<= tile, D] on device), validating each chunk
    (a zero-norm row goes to ``zero_row`` when given, see prepare)."""
    base = 0
    for i, chunk in enumerate(chunks):
        with between_fused_tiles(device):
            c = check_chunk(f"corpus chunk {i}" if i else "corpus", chunk, dim, device)
        for j0 in range(0, c.shape[0], tile):
            with between_fused_tiles(device):
                part = as_tensor("corpus", c[j0 : j0 + tile]).to(device)  # only this tile is read
                prepared = prepare(part, metric, "corpus", base + j0, zero_row)
            yield base + j0, prepared
        base += c.shape[0]
    if base == 0:
        raise ValueError("corpus is empty")
