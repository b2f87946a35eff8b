"""pytest-benchmark suite for the contrastive loss: forward + backward of the symmetric loss, hbfast
against the naive and the plain-PyTorch tiled baselines (defined in compare_losses.py).

    python -m pytest benchmarks/bench_losses.py --benchmark-only
    HBFAST_BENCH_SIZES=4096x768,16384x512 python -m pytest benchmarks/bench_losses.py --benchmark-only
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import compare_losses  # noqa: E402

SIZES = [tuple(map(int, s.split("x"))) for s in os.environ.get("HBFAST_BENCH_SIZES", "2048x256,4096x768").split(",")]


@pytest.mark.parametrize("impl", ["naive", "tiled", "hbfast"])
@pytest.mark.parametrize("B,D", SIZES)
def test_contrastive_forward_backward(benchmark, impl, B, D):
    torch.manual_seed(0)
    q = F.normalize(torch.randn(B, D), dim=1).requires_grad_()
    p = F.normalize(torch.randn(B, D), dim=1).requires_grad_()
    fn = compare_losses.LOSSES[impl]

    def step():
        q.grad = p.grad = None
        loss = fn(q, p, 1.0 / compare_losses.TEMPERATURE)
        loss.backward()
        return loss

    loss = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["loss"] = float(loss.detach())
    assert torch.isfinite(loss)
