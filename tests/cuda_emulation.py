"""hbfast._C_emu for tests/test_cuda_emulated.py: hbfast's CUDA kernels (csrc/cuda/*.cu) compiled by g++
for the host against the stand-in csrc/emulate/cuda_runtime.h, behind _C's own CUDA entry points
(csrc/bindings_cuda.cpp). Needs g++, Python's headers and pybind11's; no nvcc, no GPU.

An installed ``hbfast._C_emu`` (built by ``HBFAST_CUDA_EMULATE=ON pip install .``, CMake's twin of
``build`` below) is used as it is; otherwise ``build`` compiles one into a directory (a per-session
temporary one in the tests), in about 10-20 s on 2 cores.
"""
import concurrent.futures
import importlib
import importlib.util
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
# Threads per block of the emulated kernels (HBFAST_BLOCK_THREADS; the GPU build has 256): one host
# thread each, so fewer run faster, and small inputs cross the kernels' strided loops more often.
# Keep in step with CMakeLists.txt's HBFAST_CUDA_EMULATE target. HBFAST_EMULATED_BLOCK_THREADS=256
# runs the tests with the GPU's block size (about 3x slower; an installed hbfast._C_emu is then ignored).
BLOCK_THREADS = int(os.environ.get("HBFAST_EMULATED_BLOCK_THREADS", "64"))
FLAGS = ["-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", "-pthread", f"-DHBFAST_BLOCK_THREADS={BLOCK_THREADS}",
         f"-I{CSRC / 'emulate'}", f"-I{CSRC}"]  # csrc/emulate first: its cuda_runtime.h stands in for CUDA's
# The kernels only: an index out of a __shared__ array fails the launch (module.cpp has the handlers).
KERNEL_FLAGS = ["-fsanitize=bounds,object-size", "-x", "c++"]


def kernel_sources():
    return sorted((CSRC / "cuda").glob("*.cu")) + [CSRC / "emulate" / "selftest.cu"]


def missing_tools() -> str:
    """Why the module cannot be built here ("" when it can)."""
    if not shutil.which("g++"):
        return "g++ not found"
    if importlib.util.find_spec("pybind11") is None:
        return "pybind11 is not installed (pip install pybind11)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "Python's headers (Python.h) are not installed"
    return ""


def build(out_dir: Path) -> Path:
    """Compiles hbfast._C_emu into out_dir (objects in parallel, then the link); returns its path."""
    import pybind11

    out_dir.mkdir(parents=True, exist_ok=True)
    python_includes = [f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
    jobs = [(src, FLAGS + KERNEL_FLAGS) for src in kernel_sources()]
    jobs += [(src, FLAGS + python_includes) for src in (CSRC / "bindings_cuda.cpp", CSRC / "emulate" / "module.cpp")]

    def compile_one(job):
        src, flags = job
        obj = out_dir / (src.name + ".o")
        run = subprocess.run(["g++", *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"compiling {src.relative_to(REPO)} for the CUDA emulation failed:\n{run.stderr}")
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_one, jobs))
    target = out_dir / ("_C_emu" + sysconfig.get_config_var("EXT_SUFFIX"))
    run = subprocess.run(["g++", "-shared", "-pthread", *map(str, objects), "-o", str(target)], capture_output=True,
                         text=True)
    if run.returncode:
        raise RuntimeError(f"linking hbfast._C_emu failed:\n{run.stderr}")
    return target


def load(out_dir: Path):
    """The installed hbfast._C_emu, else one built into out_dir."""
    if "HBFAST_EMULATED_BLOCK_THREADS" not in os.environ and importlib.util.find_spec("hbfast._C_emu") is not None:
        return importlib.import_module("hbfast._C_emu")
    spec = importlib.util.spec_from_file_location("_C_emu", build(out_dir))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
