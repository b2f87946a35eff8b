"""Which matrix product the CPU kernels use: torch's MKL or the OpenBLAS linked into _C.

Neither is faster everywhere: MKL wins on Intel CPUs at some shapes, OpenBLAS on AMD ones and at others.
Both run fused with the epilogue: hbfast's threads each multiply a small tile (single-threaded
library call) and select / count on it while it is still in cache, instead of writing the whole score
tile to memory and reading it back. MKL is the one inside torch: libtorch_cpu exports MKL's ``sgemm_``,
which ``_C`` looks up in the already loaded library (``TORCH_MKL``); with a torch built without MKL,
"mkl" falls back to torch's own product into one tile, then the C++ epilogue.

The choice is measured once per machine and shape class (:func:`machine_choice`), on the real
shapes: topk and relevant_ranks time both products on their first tile into scratch state before the
call's real work (so one call never mixes products), in ``ROUNDS`` interleaved rounds (one product's
timings, then the other's, then again), each round's first ``WARMUP`` timing of a product dropped
(first-touch pages, library buffers, the other library's spinning threads); after ``SAMPLES`` kept
timings of each per round, the one with the lower minimum is kept for that class (the minimum: on a
loaded machine, the least disturbed timing is the one that shows the speed; the rounds: a burst of load
during one product's turn no longer decides for the other, as it could when each was timed once),
torch's unless OpenBLAS is faster by more than ``MARGIN`` (5%: closer timings are noise, and a choice
that flips with noise is worse than either product). Both give exact
results (the same arithmetic up to the rounding order of each dot product).

The loss's block products go through :func:`products` (measured on scratch blocks; see
:func:`loss_backend`).

``HBFAST_GEMM=mkl`` or ``HBFAST_GEMM=openblas`` skips the measurement and forces one product (read at
every call, so a test or a benchmark can switch it). ``hbfast.build_info()["gemm"]`` reports the
override and every choice made so far.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from typing import Callable, Dict, Hashable, List, Optional, Tuple

import torch
from torch import Tensor

from . import _C

try:
    import fcntl
except ImportError:  # not on Windows: the measurement then takes no lock
    fcntl = None

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
WARMUP = 1  # first timings of each product per round that are dropped (buffers, pages, the switch)
SAMPLES = 2  # timings of each product kept per round (the minimum over all rounds counts)
ROUNDS = 2  # interleaved rounds of both products
MEASURE_ORDER = ("openblas", "mkl")
PREFERRED = "mkl"  # torch's product, unless the other one is faster by more than MARGIN
MARGIN = 0.05  # within 5% the timings are noise on a busy machine (a choice that flips is worse than none)


def pick(best_seconds: Dict[str, float]) -> str:
    """The product to keep from each one's best time: PREFERRED unless another beats it by MARGIN."""
    fastest = min(best_seconds, key=best_seconds.get)
    if best_seconds[fastest] < (1.0 - MARGIN) * best_seconds[PREFERRED]:
        return fastest
    return PREFERRED
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
    """Timings and choices per shape class. ``persist``: a choice is first looked up in, and once
    measured written to, this machine's file (see :func:`machine_choice`)."""

    def __init__(self, persist: bool = False):
        self.persist = persist
        self._lock = threading.Lock()
        self._times: Dict[tuple, Dict[str, List[float]]] = {}
        self._chosen: Dict[tuple, str] = {}

    def record(self, key: tuple, backend: str, seconds: float) -> None:
        """Time of one trial under `backend`; the class is decided once both products have enough."""
        with self._lock:
            if key in self._chosen:
                return
            times = self._times.setdefault(key, {b: [] for b in BACKENDS})
            times[backend].append(seconds)
            if all(len(times[b]) >= ROUNDS * SAMPLES for b in BACKENDS):
                self._chosen[key] = pick({b: min(times[b]) for b in BACKENDS})

    def decide(self, key: tuple, trial: Callable[[str], None]) -> str:
        """The product for this class. Until one is chosen, first times ``trial(backend)`` (a piece of
        throwaway work of the real shape, e.g. the first tile into a scratch state) ROUNDS times
        WARMUP + SAMPLES times with each product, so that every result of a call comes from one product."""
        forced = override()
        if forced is not None:
            return forced
        with self._lock:
            if key in self._chosen:
                return self._chosen[key]
        name = "/".join(str(p) for p in key)
        choice = machine_choice(name, lambda: self.measure(key, trial)) if self.persist else None
        if choice is None:  # not kept on this machine (or nowhere to keep it): measured for this process
            choice = self.measure(key, trial)
        with self._lock:
            self._chosen[key] = choice
            return choice

    def measure(self, key: tuple, trial: Callable[[str], None]) -> str:
        """Times ``trial`` with each product (see decide) and returns the one kept. Within a round one
        product's timings follow the other's, not alternating one by one: torch's OpenMP threads spin
        for a while after each MKL call and would slow an OpenBLAS tile that follows at once (the first,
        dropped timing of each absorbs the switch)."""
        for _ in range(ROUNDS):
            for backend in MEASURE_ORDER:
                for i in range(WARMUP + SAMPLES):
                    if key in self._chosen:
                        break
                    start = time.perf_counter()
                    trial(backend)
                    if i >= WARMUP:
                        self.record(key, backend, time.perf_counter() - start)
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


chooser = _Chooser(persist=True)


@contextlib.contextmanager
def products(q: Tensor, n_rows: int, n_cols: int):
    """The block product of one step of the loss: ``mm(a, b, out, accumulate=False)`` writes a @ b into out (or adds it). For float32 CPU blocks, torch's (MKL) or
    OpenBLAS over hbfast's threads, as :func:`loss_backend` chose for this machine and shape; torch's
    elsewhere (cuBLAS on a GPU, float64)."""
    if q.device.type == "cpu" and q.dtype == torch.float32 and loss_backend(n_rows, n_cols, q.shape[1]) == "openblas":
        yield _openblas_mm
    else:
        yield torch_mm


# ---- measured once per machine and shape class, kept in a file ------------------------------------
# A choice timed anew in every process would let each process's timing noise pick its product: a
# first call would pay for the measurement every time, results would round differently from one
# process to the next, and for the loss a training run resumed in a new process would no longer end
# with the weights of an uninterrupted one. So the first process on a machine to meet a shape class
# measures it (under a file lock; topk / relevant_ranks on their first tile into scratch state, the
# loss on scratch blocks of its shape) and writes the choice to ``$HBFAST_CACHE/gemm-choices.json``
# (default ``~/.cache/hbfast``), under a key naming the machine (CPU, cores, threads, hbfast, torch
# and OpenBLAS versions); every later process reads it. The trainer also stores the loss's choices in
# its checkpoints and pins them on resume (:func:`pin_loss_choices`). Where the file cannot be
# written, topk / relevant_ranks measure in each process and the loss uses torch's product.
LOSS_TRIAL_COLS = 8192  # columns of the scratch blocks a loss measurement times (at most)
_loss_lock = threading.Lock()
_loss_choices: Dict[str, str] = {}  # shape class -> product, for this process


def cache_file() -> str:
    """Where this machine's choices are kept: in hbfast's cache (``$HBFAST_CACHE``, else ~/.cache/hbfast)."""
    root = os.environ.get("HBFAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hbfast")
    return os.path.join(root, "gemm-choices.json")


def machine() -> str:
    """What the measured speeds depend on, as one string (the key of this machine's choices)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = _C.build_info()
    return (f"{cpu} | {os.cpu_count()} cpus | hbfast {info['version']} {_C.get_num_threads()} threads | "
            f"torch {torch.__version__} {torch.get_num_threads()} threads | {info['openblas']}")


def _read_choices() -> dict:
    try:
        with open(cache_file(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def machine_choice(name: str, measure: Callable[[], str]) -> Optional[str]:
    """This machine's product for shape class `name`: the stored one, else ``measure()`` stored for
    every later process. None when the file cannot be written (nothing measured then)."""
    path, here = cache_file(), machine()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "a", encoding="utf-8") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one process measures; the others wait, then read
            data = _read_choices()
            mine = data.get(here) if isinstance(data.get(here), dict) else {}
            if mine.get(name) in BACKENDS:
                return mine[name]
            choice = measure()
            data[here] = {**mine, name: choice}
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
            return choice
    except OSError:
        return None


def _measure_loss(rows: int, cols: int, dim: int) -> str:
    """The faster product on scratch blocks of the loss's shape: its three block products, each way."""
    g = torch.Generator().manual_seed(0)
    rows, cols = max(1, min(rows, 1024)), max(1, min(cols, LOSS_TRIAL_COLS))
    a, b = torch.randn(rows, dim, generator=g), torch.randn(cols, dim, generator=g)
    x, ga, gb = torch.empty(rows, cols), torch.empty(rows, dim), torch.empty(cols, dim)

    def trial(backend: str) -> None:
        mm = _openblas_mm if backend == "openblas" else torch_mm
        mm(a, b.t(), x)
        mm(x, b, ga)
        mm(x.t(), a, gb)

    return _Chooser().measure(("loss",), trial)


def loss_backend(rows: int, cols: int, dim: int) -> str:
    """The product of the loss's float32 CPU blocks for this shape class: HBFAST_GEMM, else this
    process's pinned or earlier choice, else this machine's (measured once, see machine_choice), else
    torch's (nowhere to keep a measurement, so the same in every process)."""
    forced = override()
    if forced is not None:
        return forced
    key = "/".join(str(p) for p in shape_class("loss", rows, cols, dim))
    with _loss_lock:
        if key not in _loss_choices:
            _loss_choices[key] = machine_choice(key, lambda: _measure_loss(rows, cols, dim)) or "mkl"
        return _loss_choices[key]


def loss_choices() -> Dict[str, str]:
    """The loss products this process used, by shape class (the trainer stores them in checkpoints)."""
    with _loss_lock:
        return dict(_loss_choices)


def pin_loss_choices(choices: Dict[str, str]) -> None:
    """Use these loss products from now on (a resumed run: those of the run it continues)."""
    with _loss_lock:
        _loss_choices.update({k: v for k, v in (choices or {}).items() if v in BACKENDS})


def torch_mm(a: Tensor, b: Tensor, out: Tensor, accumulate: bool = False) -> None:
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
    _C.sgemm_cpu(_FUSED_IDS["openblas"], ta, tb, m, b.shape[1], k, 1.0, a.data_ptr(), lda, b.data_ptr(), ldb,
                 1.0 if accumulate else 0.0, out.data_ptr(), ldc)


def describe() -> dict:
    """For build_info: the libraries, the override and the choices made so far."""
    info = chooser.describe()
    info["openblas"] = _C.build_info()["openblas"]
    info["mkl"] = "torch " + ("MKL" if torch.backends.mkl.is_available() else "BLAS") + f" ({torch.__version__})"
    info["mkl_fused"] = TORCH_MKL
    info["loss"] = loss_choices()
    info["cache_file"] = cache_file()
    return info
