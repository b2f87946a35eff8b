"""Loading of the compiled extension ``hbfast._C``, what it was built with, and device dispatch."""
from __future__ import annotations

import ctypes
import functools
import os

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
    ``cuda_available`` (a GPU usable now), ``threads`` (CPU threads the kernels use), ``openblas``
    (the OpenBLAS linked in), ``gemm``: the CPU matrix products (``openblas``, ``mkl``: the libraries;
    ``override``: HBFAST_GEMM; ``chosen``: the product measured faster per shape class so far;
    ``measuring``: classes still being measured; see ``hbfast._gemm``).
    """
    from . import _gemm

    info = dict(_C.build_info())
    info["cuda_available"] = _cuda_available()
    info["gemm"] = _gemm.describe()
    return info


def require_cuda(what: str) -> None:
    """Raise a clear error when a CUDA tensor reaches a kernel this build cannot run on a GPU."""
    if not _C.build_info()["cuda"]:
        raise RuntimeError(
            f"{what}: got CUDA tensors but hbfast was built without CUDA kernels; "
            "reinstall with HBFAST_CUDA=ON (needs nvcc) or move the inputs to the CPU"
        )


def set_num_threads(n: int) -> None:
    """Set the number of CPU threads hbfast's kernels use (``n <= 0`` restores the default)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.get_num_threads()
