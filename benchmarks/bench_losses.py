"""pytest-benchmark suite for the contrastive loss: forward + backward of the symmetric loss, hbfast
against the naive and the plain-PyTorch tiled baselines (defined in compare_losses.py), and the two
parts of hbfast's time: the floor it cannot go below (the three B x B x D products written into
preallocated buffers, no autograd) and its forward epilogue alone (the C++ pass over the whole score
matrix, products excluded).

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
from hbfast.ops import _C  # noqa: E402
from hbfast.losses import BLOCK_ROWS  # noqa: E402

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


def _unit_inputs(B, D):
    torch.manual_seed(0)
    return F.normalize(torch.randn(B, D), dim=1), F.normalize(torch.randn(B, D), dim=1)


@pytest.mark.parametrize("B,D", SIZES)
def test_floor_three_products_preallocated(benchmark, B, D):
    q, p = _unit_inputs(B, D)
    s, grad_q, grad_p = torch.empty(B, B), torch.empty(B, D), torch.empty(B, D)

    def step():
        torch.mm(q, p.t(), out=s)
        torch.mm(s, p, out=grad_q)
        torch.mm(s.t(), q, out=grad_p)

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("B,D", SIZES)
def test_forward_epilogue_alone(benchmark, B, D):
    q, p = _unit_inputs(B, D)
    s = q @ p.t()  # raw dot products, computed once: only the epilogue is timed
    row_lse, positive = torch.empty(B, 2), torch.empty(B)  # (max, log_sum) over each row's negatives
    col_max, col_sum = torch.empty(B), torch.empty(B)
    scale = 1.0 / compare_losses.TEMPERATURE

    def step():
        col_max.fill_(-float("inf"))
        col_sum.zero_()
        for lo in range(0, B, BLOCK_ROWS):
            rows = min(BLOCK_ROWS, B - lo)
            _C.contrastive_forward_block(s[lo].data_ptr(), B, rows, lo, B, B, scale, 0, row_lse[lo:].data_ptr(),
                                         positive[lo:].data_ptr(), col_max.data_ptr(), col_sum.data_ptr(), False)

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    negatives = (scale * s).fill_diagonal_(-float("inf"))
    lse = torch.logsumexp(negatives, dim=1)
    assert torch.allclose(row_lse.sum(1), lse, rtol=1e-5), "the epilogue's row log-sum-exps are wrong"
