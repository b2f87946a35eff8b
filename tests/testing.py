"""The shared test matrix: devices and float dtypes, plus small helpers.

CUDA joins the matrix wherever torch sees a GPU and hbfast has CUDA kernels, not only where hbfast
can use it: a GPU that hbfast's CUDA runtime cannot see (a driver older than the toolkit hbfast
was built with) then fails every GPU test with the reason, instead of skipping them silently.
"""
import pytest
import torch
import torch.nn.functional as F

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


# ---- data and comparisons of the CUDA tests (test_cuda.py, and test_cuda_emulated.py on the host) ----

def integer_data(nq, n, dim, seed, low=-2, high=3):
    """Small integers: every product is exact in float32 (on any BLAS), and scores tie often."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(low, high, (nq, dim), generator=g).float(),
            torch.randint(low, high, (n, dim), generator=g).float())


def sign_data(nq, n, dim=16, seed=0):
    """Entries +-1 with dim 16: norm 4, so cosine rows are exact (+-0.25) and so are their products:
    cosine scores (and their many ties) equal on every device and BLAS."""
    q, c = integer_data(nq, n, dim, seed, low=0, high=2)
    return q * 2 - 1, c * 2 - 1


def unit_data(B, D, M=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, D, generator=g, dtype=torch.float64), dim=1) for n in (B, B, M)]


def loss_and_grads(impl, q, p, h=None, logit_scale=None, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (q, p) + ((h,) if h is not None else ())]
    if logit_scale is not None:
        leaves.append(logit_scale.detach().clone().requires_grad_())
    loss = hbfast.contrastive_loss(leaves[0], leaves[1], hard_negatives=leaves[2] if h is not None else None,
                                   logit_scale=leaves[-1] if logit_scale is not None else None, impl=impl, **kw)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    return [loss.detach()] + list(torch.autograd.grad(loss, leaves, upstream))


def assert_close_to_reference(got, ref, rtol):
    for name, a, b in zip(["loss", "grad_q", "grad_p", "grad_3", "grad_4"], got, ref):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        assert err < rtol, (name, err)


def siglip_and_grads(impl, image, text, scale, bias, **kw):
    """Per-row SigLIP losses and the gradients of all four inputs (scale and bias as tensors)."""
    leaves = [t.detach().clone().requires_grad_() for t in (image, text, scale, bias)]
    loss = hbfast.siglip_loss(*leaves, impl=impl, reduction="none", **kw)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device)
    return [loss.detach()] + list(torch.autograd.grad(loss, leaves, upstream))


def relative_errors(got, expected):
    """max |got - expected| / max |expected| of each pair, in float64 on the CPU."""
    out = []
    for a, b in zip(got, expected):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        out.append(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
    return out
