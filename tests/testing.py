"""The shared test matrix: devices and float dtypes, plus small helpers.

CUDA joins the matrix wherever torch sees a GPU and hbfast has CUDA kernels, not only where hbfast
can use it: a GPU that hbfast's CUDA runtime cannot see (a driver older than the toolkit hbfast
was built with) then fails every GPU test with the reason, instead of skipping them silently.
"""
import pytest
import torch

import hbfast

_GPU_EXPECTED = hbfast.build_info()["cuda"] and torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if _GPU_EXPECTED else [])
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

requires_cuda = pytest.mark.skipif(not _GPU_EXPECTED, reason="needs a CUDA GPU (and hbfast built with CUDA)")
