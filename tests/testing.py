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


def subprocess_env(**extra) -> dict:
    """The environment for a child Python that must import the hbfast under test: the directory this
    process imported it from goes first on PYTHONPATH (the source tree in a dev build, site-packages
    when installed; a checkout's src/ without the built _C would shadow an installed hbfast)."""
    import os
    from pathlib import Path

    home = str(Path(hbfast.__file__).resolve().parents[1])
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH", "")) if p)
    return env


def assert_fails_on_the_device(script: str, message: str) -> None:
    """Runs `script` in a child Python (a device-side assertion ends the CUDA context, so each check
    needs its own process) and asserts that it failed with `message` before printing 'no error'."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", script + "\ntorch.cuda.synchronize()\nprint('no error')\n"],
                         capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert run.returncode != 0 and "no error" not in run.stdout
    assert message in run.stdout + run.stderr
