"""Loading of the compiled extension ``hbfast._C``, what it was built with, and device dispatch."""
from __future__ import annotations

import contextlib
import functools

from . import _C

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
    """
    info = dict(_C.build_info())
    info["cuda_available"] = _cuda_available()
    info["cuda_unusable"] = cuda_unusable_reason()
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
    ``torch.set_float32_matmul_precision``. (torch's per-backend ``fp32_precision`` is saved and
    restored as it was, so neither the legacy nor the new TF32 API of the user is disturbed.)"""
    import torch

    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = previous


def set_num_threads(n: int) -> None:
    """Set the number of CPU threads hbfast's kernels use (``n <= 0`` restores the default)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.get_num_threads()
