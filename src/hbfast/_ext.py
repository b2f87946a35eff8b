"""Loading of the compiled extension ``hbfast._C``, what it was built with, and device dispatch."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading

import scipy_openblas32 as _openblas

# _C links the scipy-openblas32 wheel's OpenBLAS: load it from the installed wheel first, so _C finds it
# wherever both are installed (its soname is then already loaded).
_OPENBLAS_LIB = sorted(f for f in os.listdir(_openblas.get_lib_dir()) if f.startswith("libscipy_openblas") and ".so" in f)
ctypes.CDLL(os.path.join(_openblas.get_lib_dir(), _OPENBLAS_LIB[0]), mode=ctypes.RTLD_GLOBAL)

from . import _C  # noqa: E402

IMPLS = ("auto", "kernel", "reference")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


@functools.lru_cache(maxsize=None)
def _cuda_available() -> bool:
    info = _C.build_info()
    if not info["cuda"] or info["cuda_device_count"] == 0:
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def build_info() -> dict:
    """What this build of hbfast contains and what it can use now.

    Keys: ``version``, ``cuda`` (CUDA kernels compiled in), ``cuda_archs`` (their targets),
    ``cuda_available`` (a GPU usable now), ``threads`` (CPU threads the kernels use),
    ``cuda_device_count``, ``cuda_device_error`` (why hbfast's CUDA runtime sees no GPU, "" if it
    does), ``cuda_runtime_version`` / ``cuda_driver_version`` (e.g. 13000 = 13.0; driver 0: none)
    and ``cuda_unusable`` (why CUDA tensors would fail although torch sees a GPU, "" if they work).
    ``openblas`` (the OpenBLAS linked in), ``gemm``: the CPU matrix products (``openblas``, ``mkl``: the libraries;
    ``override``: HBFAST_GEMM; ``chosen``: the product measured faster per shape class so far;
    ``measuring``: classes still being measured; see ``hbfast._gemm``).
    """
    from . import _gemm

    info = dict(_C.build_info())
    info["cuda_available"] = _cuda_available()
    info["cuda_unusable"] = cuda_unusable_reason()
    info["gemm"] = _gemm.describe()
    return info


def cuda_unusable_reason() -> str:
    """Why hbfast's CUDA kernels cannot run although CUDA kernels are compiled in ("" when they can or
    when torch sees no GPU either): hbfast links the CUDA runtime statically, so a driver older
    than that runtime shows it no device even where torch (with its own runtime) sees one."""
    info = _C.build_info()
    if not info["cuda"] or info["cuda_device_count"] > 0:
        return ""
    import torch

    if not torch.cuda.is_available():
        return ""
    runtime, driver = info["cuda_runtime_version"], info["cuda_driver_version"]
    why = info["cuda_device_error"] or "no device found"
    version = lambda v: f"{v // 1000}.{v % 1000 // 10}"
    older = (f"; the NVIDIA driver supports CUDA {version(driver)}, older than the CUDA {version(runtime)} runtime "
             "hbfast was built with: update the driver or rebuild hbfast with a CUDA toolkit the driver supports"
             if 0 < driver < runtime else "")
    return (f"torch sees {torch.cuda.device_count()} GPU(s) but hbfast's CUDA runtime sees none "
            f"(cudaGetDeviceCount: {why}){older}")


def require_cuda(what: str) -> None:
    """Raise a clear error when a CUDA tensor reaches a kernel this build cannot run on a GPU."""
    if not _C.build_info()["cuda"]:
        raise RuntimeError(
            f"{what}: got CUDA tensors but hbfast was built without CUDA kernels; "
            "reinstall with HBFAST_CUDA=ON (needs nvcc) or move the inputs to the CPU"
        )
    reason = cuda_unusable_reason()
    if reason:
        raise RuntimeError(f"{what}: got CUDA tensors but {reason}")


@contextlib.contextmanager
def exact_fp32_matmul():
    """cuBLAS float32 products in full float32 (no TF32) inside, the user's setting restored after:
    hbfast's results must not depend on ``torch.backends.cuda.matmul.allow_tf32`` or
    ``torch.set_float32_matmul_precision``. The setting is process-wide, so threads (DataParallel
    replicas) share one save and restore: the first to enter saves and sets it, the last to leave
    restores it. torch >= 2.9's ``fp32_precision`` is used where it exists (saved and restored as
    it was, so neither the legacy nor the new TF32 API of the user is disturbed), else
    ``allow_tf32``."""
    global _exact_users, _exact_saved
    import torch

    matmul = torch.backends.cuda.matmul
    new_api = hasattr(matmul, "fp32_precision")
    with _EXACT_LOCK:
        if _exact_users == 0:
            _exact_saved = matmul.fp32_precision if new_api else matmul.allow_tf32
            if new_api:
                matmul.fp32_precision = "ieee"
            else:
                matmul.allow_tf32 = False
        _exact_users += 1
    try:
        yield
    finally:
        with _EXACT_LOCK:
            _exact_users -= 1
            if _exact_users == 0:
                if new_api:
                    matmul.fp32_precision = _exact_saved
                else:
                    matmul.allow_tf32 = _exact_saved


_EXACT_LOCK = threading.Lock()
_exact_users = 0  # threads inside exact_fp32_matmul
_exact_saved = None  # the user's setting while any is


def set_num_threads(n: int) -> None:
    """Set the number of CPU threads hbfast's kernels use (``n <= 0`` restores the default)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.get_num_threads()
