"""The shared test matrix: devices (CUDA only when usable) and float dtypes, plus small helpers."""
import pytest
import torch

import hbfast

DEVICES = ["cpu"] + (["cuda"] if hbfast.build_info()["cuda_available"] else [])
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

requires_cuda = pytest.mark.skipif(not hbfast.build_info()["cuda_available"], reason="needs a CUDA GPU")
