"""The build itself: what build_info reports, thread control, and the CUDA-less error path."""
import shutil

import pytest

import hbfast
from hbfast.ops import ext


def test_build_info_keys():
    info = hbfast.build_info()
    assert {"version", "cuda", "cuda_archs", "cuda_available", "threads"} <= set(info)
    assert info["version"] == hbfast.__version__
    assert info["threads"] >= 1
    if info["cuda"]:
        assert {"80", "90"} <= set(info["cuda_archs"])
    else:
        assert info["cuda_archs"] == [] and not info["cuda_available"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
def test_cuda_kernels_are_compiled_where_nvcc_exists():
    # The default build (HBFAST_CUDA=AUTO) compiles the CUDA kernels whenever nvcc is found.
    assert hbfast.build_info()["cuda"]


def test_set_num_threads_round_trip():
    before = hbfast.get_num_threads()
    try:
        hbfast.set_num_threads(1)
        assert hbfast.build_info()["threads"] == 1
    finally:
        hbfast.set_num_threads(0)
    assert hbfast.get_num_threads() == before
    with pytest.raises(TypeError):
        hbfast.set_num_threads(1.5)


def test_require_cuda_names_the_problem(monkeypatch):
    monkeypatch.setattr(ext._C, "build_info", lambda: {"cuda": False})
    with pytest.raises(RuntimeError, match="built without CUDA"):
        ext.require_cuda("hbfast.topk")
