"""The CUDA safety net: the first use of each CUDA op family in a process checks hbfast's kernels on
small cases against the device-generic PyTorch path on the same device; on a mismatch it warns once,
with the figures, and that op family runs the PyTorch path from then on.

Exists because hbfast's CUDA kernels are tested on the CPU through an emulation of the CUDA model
(tests/test_cuda_emulated.py), not on every GPU, compiler and driver that will run them: a kernel
that computes wrong numbers on some card must cost speed, never a model trained on wrong gradients.
Each check takes a few milliseconds on a GPU, once per op family, device and process.
``HBFAST_CUDA_CHECK=0`` skips the checks (the kernels are then trusted as they are).
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Callable, Dict, Set, Tuple

import torch


class CUDAKernelMismatchWarning(RuntimeWarning):
    """A CUDA kernel of hbfast disagreed with PyTorch on its first-use check; PyTorch runs instead."""


Check = Callable[[torch.device], str]  # check(device) -> "" when the kernels agree, else the figures

_verdicts: Dict[Tuple[str, str], bool] = {}
_checking: Set[Tuple[str, str]] = set()
_lock = threading.RLock()


def trusted(op: str, device: torch.device, check: Check) -> bool:
    """Whether op's CUDA kernels may run on ``device``: ``check`` runs on the first call for that
    (op, device) in this process; other threads wait for its verdict, and calls made by the check
    itself run the kernels."""
    key = (op, str(device))
    verdict = _verdicts.get(key)
    if verdict is not None:
        return verdict
    if os.environ.get("HBFAST_CUDA_CHECK", "1") == "0":
        return True
    with _lock:
        if key in _verdicts:
            return _verdicts[key]
        if key in _checking:  # the check's own calls
            return True
        _checking.add(key)
        try:
            with torch.no_grad():
                problem = check(device)
        except Exception as e:  # a launch that fails is a mismatch too
            problem = f"{type(e).__name__}: {e}"
        finally:
            _checking.discard(key)
        _verdicts[key] = not problem
    if problem:
        warnings.warn(f"hbfast: the CUDA kernels of {op} on {device} disagree with PyTorch on a small check "
                      f"({problem}); {op} runs hbfast's plain PyTorch path on this device from now on (slower, "
                      f"correct). Please report this with hbfast.build_info() and your GPU.",
                      CUDAKernelMismatchWarning, stacklevel=3)
    return not problem


def verdicts() -> Dict[str, bool]:
    """The checks made so far in this process: "op on device" -> whether the kernels passed."""
    return {f"{op} on {device}": ok for (op, device), ok in _verdicts.items()}


def forget() -> None:
    """Drops every verdict (tests; a process that changed its kernels)."""
    with _lock:
        _verdicts.clear()


def compare(name: str, got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str:
    """"" when got matches expected within the tolerances, else the figures of the worst element."""
    if got.shape != expected.shape:
        return f"{name}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    got, expected = got.double(), expected.double()
    both_inf = torch.isinf(got) & (got == expected)
    error = torch.where(both_inf, torch.zeros_like(got), (got - expected).abs())
    bound = atol + rtol * expected.abs().nan_to_num(posinf=0.0, neginf=0.0)
    bad = ~(error <= bound)  # NaN counts as bad
    if not bool(bad.any()):
        return ""
    worst = int(torch.argmax(torch.where(bad, error.nan_to_num(nan=float("inf")), torch.zeros_like(error))))
    flat_got, flat_expected = got.flatten(), expected.flatten()
    return (f"{name}: {int(bad.sum())} of {got.numel()} values off, worst at index {worst}: "
            f"{float(flat_got[worst]):.6g} instead of {float(flat_expected[worst]):.6g}")
