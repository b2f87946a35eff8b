"""Loading of the compiled extension ``hbfast._C``, what it was built with, and device dispatch."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import threading
from typing import Tuple

import scipy_openblas32 as _openblas

# _C links the scipy-openblas32 wheel's OpenBLAS: load it from the installed wheel first, so _C finds it
# wherever both are installed (its soname is then already loaded).
_OPENBLAS_LIB = sorted(f for f in os.listdir(_openblas.get_lib_dir()) if f.startswith("libscipy_openblas") and ".so" in f)
ctypes.CDLL(os.path.join(_openblas.get_lib_dir(), _OPENBLAS_LIB[0]), mode=ctypes.RTLD_GLOBAL)

from . import _C  # noqa: E402

kernels = _C  # the extension, for the op modules of hbfast.ops.loss / hbfast.ops.search (and metrics, sampling)

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
    ``measuring``: classes still being measured; see ``hbfast.ops.gemm``).
    """
    from . import gemm

    info = dict(_C.build_info())
    info["cuda_available"] = _cuda_available()
    info["cuda_unusable"] = cuda_unusable_reason()
    info["gemm"] = gemm.describe()
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


class UnsupportedGPUError(RuntimeError):
    """A GPU that none of the CUDA architectures hbfast was compiled for can run on (e.g. a T4,
    compute capability 7.5, under a build for 8.0 and 9.0): raised before any launch, which would
    otherwise fail with "no kernel image is available"."""


def arch_runs_on(arch: str, capability: Tuple[int, int]) -> bool:
    """Whether code compiled for ``arch`` (a HBFAST_CUDA_ARCHS entry as CMake takes it: "80" = sm_80
    machine code and compute_80 PTX, "80-real" = machine code only, "80-virtual" = PTX only, "90a" =
    machine code for exactly 9.0) runs on a device of compute ``capability`` (major, minor): machine
    code runs on the same major version with an equal or higher minor one, PTX on any newer device."""
    found = re.fullmatch(r"(\d+)([af]?)(?:-(real|virtual))?", arch.strip())
    if not found:
        return False
    number, suffix, kind = int(found.group(1)), found.group(2), found.group(3)
    major, minor = divmod(number, 10)
    device = capability[0] * 10 + capability[1]
    if suffix == "a":
        return device == number
    machine_code = kind != "virtual" and capability[0] == major and capability[1] >= minor
    ptx = kind != "real" and suffix != "f" and device >= number
    return machine_code or ptx


def require_cuda(what: str, device=None) -> None:
    """Raise a clear error when a CUDA tensor (on ``device``, when given) reaches a kernel this build
    cannot run on that GPU: no CUDA kernels, a runtime that sees no GPU, or no compiled architecture
    for the device's compute capability (UnsupportedGPUError)."""
    info = _C.build_info()
    if not info["cuda"]:
        raise RuntimeError(
            f"{what}: got CUDA tensors but hbfast was built without CUDA kernels; "
            "reinstall with HBFAST_CUDA=ON (needs nvcc) or move the inputs to the CPU"
        )
    reason = cuda_unusable_reason()
    if reason:
        raise RuntimeError(f"{what}: got CUDA tensors but {reason}")
    if device is None or device.type != "cuda":
        return
    import torch

    capability = torch.cuda.get_device_capability(device)
    archs = list(info["cuda_archs"])
    if not any(arch_runs_on(a, capability) for a in archs):
        cc = f"{capability[0]}.{capability[1]}"
        raise UnsupportedGPUError(
            f"{what}: {torch.cuda.get_device_name(device)} (compute capability {cc}) cannot run hbfast's CUDA "
            f"kernels, compiled for the architectures {';'.join(archs)} only: reinstall hbfast with "
            f'HBFAST_CUDA_ARCHS="{capability[0]}{capability[1]};{";".join(archs)}" or move the inputs to the CPU'
        )


def runs_cuda_kernels(device) -> bool:
    """Whether tensors on ``device`` go through hbfast's CUDA kernels and their Python glue: CUDA
    tensors do. The one seam of tests/test_cuda_emulated.py, which makes it true for CPU tensors as
    well, so that the same glue drives the kernels compiled for the host (hbfast._C_emu)."""
    return device.type == "cuda"


def current_stream(device) -> int:
    """The CUDA stream the kernels are queued on for tensors on ``device`` (torch's current one; 0,
    the emulation's, for a CPU device)."""
    if device.type != "cuda":
        return 0
    import torch

    return torch.cuda.current_stream(device).cuda_stream


def on_gpu(device):
    """On a GPU: launch on the inputs' device (the kernels use the current one) and compute the
    products in full float32 whatever the user's TF32 setting. Nothing on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.cuda.device(device))
    stack.enter_context(exact_fp32_matmul())
    return stack


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
