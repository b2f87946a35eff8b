"""Which matrix product the CPU kernels use: torch's MKL or the OpenBLAS linked into _C.

Neither is faster everywhere: MKL wins on Intel CPUs at some shapes, OpenBLAS on AMD ones and at others.
Both run fused with the epilogue: hbfast's threads each multiply a small tile (single-threaded
library call) and select / count on it while it is still in cache, instead of writing the whole score
tile to memory and reading it back. MKL is the one inside torch: libtorch_cpu exports MKL's ``sgemm_``,
which ``_C`` looks up in the already loaded library (``TORCH_MKL``); with a torch built without MKL,
"mkl" falls back to torch's own product into one tile, then the C++ epilogue.

The choice is measured, per process and per shape class, on the real shapes: topk and relevant_ranks
time both products on their first tile into scratch state before the call's real work (so one call
never mixes products); the first ``WARMUP`` timings of each are dropped (first-touch pages, library
buffers), and after ``SAMPLES`` more of each, the one with the lower minimum is kept for that class
for the rest of the process (the minimum: on a loaded machine, the least disturbed timing is the one
that shows the speed). Both give exact results (the same arithmetic up to the rounding order of each
dot product).

The loss's block products go through :func:`products`, which is not measured: it is torch's product
unless ``HBFAST_GEMM=openblas``. A measured choice would make the loss's last-bit rounding depend
on timing noise in each process, so a training run resumed in a new process would no longer end
with the weights of an uninterrupted one; and the gain measured for the loss was 1.00-1.05x.

``HBFAST_GEMM=mkl`` or ``HBFAST_GEMM=openblas`` skips the measurement and forces one product (read at
every call, so a test or a benchmark can switch it). ``hbfast.build_info()["gemm"]`` reports the
override and every choice made so far.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Callable, Dict, Hashable, List, Optional, Tuple

import torch
from torch import Tensor

from . import _C

BACKENDS = ("mkl", "openblas")
_FUSED_IDS = {"openblas": 0, "mkl": 1}  # _C's GemmBackend numbers


def _load_torch_mkl() -> bool:
    """Finds MKL's sgemm in the libtorch_cpu this process loaded (False: torch has no MKL)."""
    if not torch.backends.mkl.is_available():
        return False
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        if os.path.exists(os.path.join(lib_dir, name)) and _C.load_torch_mkl(os.path.join(lib_dir, name)):
            return True
    return False


TORCH_MKL = _load_torch_mkl()


def fused_id(backend: str) -> Optional[int]:
    """_C's number for a fused product by `backend`, or None where there is none (mkl without TORCH_MKL:
    torch's product into a tile, then the epilogue)."""
    if backend == "mkl" and not TORCH_MKL:
        return None
    return _FUSED_IDS[backend]
WARMUP = 1  # first timings of each product per class that are dropped (buffers and pages set up)
SAMPLES = 3  # timings of each product kept before a shape class is decided (the minimum counts)
MEASURE_ORDER = ("openblas", "mkl")
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
            # One product's timings after the other's, not alternating: torch's OpenMP threads spin
            # for a while after each MKL call and would slow an OpenBLAS tile that follows at once
            # (the first, dropped timing of each absorbs the switch).
            return next(b for b in MEASURE_ORDER if len(times[b]) < WARMUP + SAMPLES)

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

    def decide(self, key: tuple, trial: Callable[[str], None]) -> str:
        """The product for this class. Until one is chosen, first times ``trial(backend)`` (a piece of
        throwaway work of the real shape, e.g. the first tile into a scratch state) WARMUP + SAMPLES
        times with each product, so that every result of a call comes from one product."""
        forced = override()
        if forced is not None:
            return forced
        for backend in MEASURE_ORDER:
            while key not in self._chosen and len(self._times.get(key, {}).get(backend, ())) < WARMUP + SAMPLES:
                start = time.perf_counter()
                trial(backend)
                self.record(key, backend, time.perf_counter() - start, 1.0)
        with self._lock:
            return self._chosen[key]

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


chooser = _Chooser()


@contextlib.contextmanager
def products(q: Tensor, op: str, n_rows: int, n_cols: int):
    """The block product of one step of the loss (op: its name, kept for callers): ``mm(a, b, out,
    accumulate=False)`` writes a @ b into out (or adds it). torch's (MKL on the CPU, cuBLAS on a GPU),
    or OpenBLAS over hbfast's threads for float32 CPU blocks when ``HBFAST_GEMM=openblas``; never
    chosen by timing, so the loss's rounding is the same in every process (exact resume)."""
    if q.device.type == "cpu" and q.dtype == torch.float32 and override() == "openblas":
        yield _openblas_mm
    else:
        yield _torch_mm


def _torch_mm(a: Tensor, b: Tensor, out: Tensor, accumulate: bool = False) -> None:
    if accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


def _layout(t: Tensor) -> Tuple[bool, int]:
    """(transposed, leading dimension) of a 2-D float32 CPU matrix with unit stride on one side."""
    if t.stride(1) == 1 and t.stride(0) >= max(1, t.shape[1]):
        return False, t.stride(0)
    if t.stride(0) == 1 and t.stride(1) >= max(1, t.shape[0]):
        return True, t.stride(1)
    raise ValueError(f"internal: a product operand with strides {t.stride()} (hbfast passes contiguous blocks)")


def _openblas_mm(a: Tensor, b: Tensor, out: Tensor, accumulate: bool = False) -> None:
    (ta, lda), (tb, ldb), (tc, ldc) = _layout(a), _layout(b), _layout(out)
    if tc:
        raise ValueError("internal: the product's output must be row-major")
    m, k = a.shape
    _C.sgemm_cpu(_FUSED_IDS["openblas"], ta, tb, m, b.shape[1], k, 1.0, a.data_ptr(), lda, b.data_ptr(), ldb, 1.0 if accumulate else 0.0,
                 out.data_ptr(), ldc)


def describe() -> dict:
    """For build_info: the libraries, the override and the choices made so far."""
    info = chooser.describe()
    info["openblas"] = _C.build_info()["openblas"]
    info["mkl"] = "torch " + ("MKL" if torch.backends.mkl.is_available() else "BLAS") + f" ({torch.__version__})"
    info["mkl_fused"] = TORCH_MKL
    return info
