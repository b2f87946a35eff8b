"""Which matrix product the CPU kernels use: torch's (MKL) or hbfast's own (OpenBLAS fused with the epilogue).

Neither is faster everywhere: MKL wins on Intel CPUs at some shapes, OpenBLAS on AMD ones and at others,
and the fused path saves the round trip of each score tile through memory. So the choice is measured,
per process and per shape class, on the real work: the first tiles (topk, relevant_ranks) or calls (the
loss) of a shape class alternate between the two products, each timed per score; the first
``WARMUP`` timings of each are dropped (first-touch pages, library buffers), and after ``SAMPLES``
more of each, the one with the lower minimum is kept for that class for the rest of the process
(the minimum: on a loaded machine, the least disturbed timing is the one that shows the speed).
Both give exact results (the same arithmetic up to the rounding order of each dot product).

``HBFAST_GEMM=mkl`` or ``HBFAST_GEMM=openblas`` skips the measurement and forces one product (read at
every call, so a test or a benchmark can switch it). ``hbfast.build_info()["gemm"]`` reports the
override and every choice made so far.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Dict, Hashable, List, Optional

BACKENDS = ("mkl", "openblas")
WARMUP = 1  # first timings of each product per class that are dropped (buffers and pages set up)
SAMPLES = 3  # timings of each product kept before a shape class is decided (the minimum counts)
_ENV = "HBFAST_GEMM"


def override() -> Optional[str]:
    """The product forced by HBFAST_GEMM, or None (measure)."""
    value = os.environ.get(_ENV, "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise ValueError(f"{_ENV} must be one of {BACKENDS} (or unset / 'auto'), got {value!r}")
    return value


def shape_class(op: str, rows: int, cols: int, dim: int, *extra: Hashable) -> tuple:
    """A key under which timings are pooled: sizes rounded up to powers of two."""
    def bucket(n: int) -> int:
        return 1 << max(0, int(n) - 1).bit_length()

    return (op, bucket(rows), bucket(cols), int(dim)) + tuple(extra)


class _Chooser:
    def __init__(self):
        self._lock = threading.Lock()
        self._times: Dict[tuple, Dict[str, List[float]]] = {}
        self._chosen: Dict[tuple, str] = {}

    def next(self, key: tuple) -> str:
        """The product to use for the next piece of work of this class."""
        forced = override()
        if forced is not None:
            return forced
        with self._lock:
            if key in self._chosen:
                return self._chosen[key]
            times = self._times.setdefault(key, {b: [] for b in BACKENDS})
            return min(BACKENDS, key=lambda b: len(times[b]))  # alternate: the one with fewer timings

    def record(self, key: tuple, backend: str, seconds: float, units: float) -> None:
        """Time of one piece of work (`units`: its size, e.g. scores computed) under `backend`."""
        if override() is not None or units <= 0:
            return
        with self._lock:
            if key in self._chosen:
                return
            times = self._times.setdefault(key, {b: [] for b in BACKENDS})
            times[backend].append(seconds / units)
            if all(len(times[b]) >= WARMUP + SAMPLES for b in BACKENDS):
                self._chosen[key] = min(BACKENDS, key=lambda b: min(times[b][WARMUP:]))

    def timed(self, key: tuple):
        """Context for one piece of work: ``with chooser.timed(key) as run: ... run.backend ... run.units = n``."""
        return _Timed(self, key)

    def describe(self) -> dict:
        with self._lock:
            chosen = {"/".join(str(p) for p in k): v for k, v in self._chosen.items()}
            pending = ["/".join(str(p) for p in k) for k in self._times if k not in self._chosen]
        return {"override": override(), "chosen": chosen, "measuring": pending}

    def reset(self) -> None:
        """Forget every measurement (the next work of each class measures again)."""
        with self._lock:
            self._times.clear()
            self._chosen.clear()


class _Timed:
    def __init__(self, chooser: _Chooser, key: Optional[tuple]):
        self.chooser, self.key = chooser, key  # key None: torch's product, not timed (e.g. on a GPU)
        self.backend = "mkl" if key is None else chooser.next(key)
        self.units = 0.0

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None and self.key is not None:
            self.chooser.record(self.key, self.backend, time.perf_counter() - self._start, self.units)
        return False


chooser = _Chooser()


def describe() -> dict:
    """For build_info: the libraries, the override and the choices made so far."""
    import torch

    from . import _C

    info = chooser.describe()
    info["openblas"] = _C.build_info()["openblas"]
    info["mkl"] = "torch " + ("MKL" if torch.backends.mkl.is_available() else "BLAS") + f" ({torch.__version__})"
    return info
