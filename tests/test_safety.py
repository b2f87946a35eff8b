"""The CUDA safety net's parts that run on the CPU: the plain PyTorch op bodies it falls back to
(hbfast.ops.loss.generic, hbfast.ops.search.generic) against the CPU kernels' bodies, and its comparison
and verdict bookkeeping. (The net catching a wrong kernel: tests/test_cuda_emulated.py.)"""
import warnings

import pytest
import torch
import torch.nn.functional as F

import hbfast
from hbfast.ops import safety
from hbfast.ops.loss import contrastive, cpu, generic
from hbfast.ops.loss.blocks import plan
from hbfast.ops.search import generic as search_generic
from testing import integer_data


@pytest.mark.parametrize("rows, n_keys, row_offset, columns, grouped, cached",
                         [(40, 47, 0, True, True, 40), (40, 47, 0, True, False, 0), (9, 60, 11, False, True, 3)])
def test_generic_contrastive_bodies_equal_the_cpu_kernels(rows, n_keys, row_offset, columns, grouped, cached,
                                                          monkeypatch):
    monkeypatch.setattr(hbfast.ops.loss.blocks, "BLOCK_ROWS", 16)
    g = torch.Generator().manual_seed(rows)
    q = F.normalize(torch.randn(rows, 12, generator=g, dtype=torch.float64), dim=1)
    keys = F.normalize(torch.randn(n_keys, 12, generator=g, dtype=torch.float64), dim=1)
    n_batch = rows + row_offset
    scale = torch.tensor(17.0, dtype=torch.float64)
    codes = contrastive._group_codes(torch.randint(0, 9, (n_batch,), generator=g)) if grouped else None
    blocks = plan(rows, n_keys, cached, 8)
    got = generic.contrastive_forward(q, keys, scale, codes, n_batch, row_offset, columns, cached, blocks)
    want = cpu.contrastive_forward(q, keys, scale, codes, n_batch, row_offset, columns, cached, blocks)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    coefficients = contrastive._margin_coefficients(torch.rand(rows, generator=g, dtype=torch.float64),
                                                    torch.rand(n_batch, generator=g, dtype=torch.float64)
                                                    if columns else None, scale)
    args = (q, keys, scale, codes, want[0], want[1], want[3], n_batch, row_offset, True, True, blocks)
    for a, b in zip(generic.contrastive_backward(coefficients, *args), cpu.contrastive_backward(coefficients, *args)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("row_offset", [0, 5])
def test_generic_siglip_bodies_equal_the_cpu_kernels(row_offset, monkeypatch):
    monkeypatch.setattr(hbfast.ops.loss.blocks, "BLOCK_ROWS", 16)
    g = torch.Generator().manual_seed(row_offset)
    image = F.normalize(torch.randn(30, 8, generator=g, dtype=torch.float64), dim=1)
    text = F.normalize(torch.randn(30 + row_offset, 8, generator=g, dtype=torch.float64), dim=1)
    scale, bias = torch.tensor(12.0, dtype=torch.float64), torch.tensor(-4.0, dtype=torch.float64)
    blocks = plan(30, text.shape[0], 20, 8)
    got = generic.siglip_forward(image, text, scale, bias, row_offset, 20, blocks)
    want = cpu.siglip_forward(image, text, scale, bias, row_offset, 20, blocks)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    args = (torch.rand(30, generator=g, dtype=torch.float64), image, text, scale, bias, want[1], row_offset, True, True,
            blocks)
    for a, b in zip(generic.siglip_backward(*args), cpu.siglip_backward(*args)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_generic_rank_count_equals_relevant_ranks():
    q, c = integer_data(30, 200, 6, seed=3)  # many ties: the tie rule decides
    rel = torch.randint(-1, 200, (30, 4), generator=torch.Generator().manual_seed(4))
    scores = q @ c.T
    counts, own = torch.zeros_like(rel), torch.zeros(rel.shape)
    for j in range(0, 200, 64):  # tile by tile, as the walk
        search_generic.count_tile(scores[:, j : j + 64], j, scores.gather(1, rel.clamp(min=0)), rel, counts, own)
    ranks = torch.where(rel >= 0, counts + 1, -1)
    assert torch.equal(ranks, hbfast.relevant_ranks(q, c, rel))
    assert torch.equal(own[rel >= 0], scores.gather(1, rel.clamp(min=0))[rel >= 0])


def test_compare_reports_the_worst_value():
    want = torch.tensor([1.0, 2.0, float("-inf"), 4.0])
    assert safety.compare("x", want.clone(), want, 0, 0) == ""
    off = torch.tensor([1.0, 2.5, float("-inf"), float("nan")])
    assert safety.compare("x", off, want, 1e-3, 0) == "x: 2 of 4 values off, worst at index 3: nan instead of 4"
    assert "shape" in safety.compare("x", want[:2], want, 0, 0)


def test_a_verdict_is_reached_once_and_a_failing_check_warns_once(monkeypatch):
    monkeypatch.setattr(safety, "_verdicts", {})
    calls = []

    def failing(device):
        calls.append(device)
        assert safety.trusted("op", device, failing)  # the check's own calls run the kernels
        return "op grad: 1 of 4 values off"

    device = torch.device("cpu")
    with pytest.warns(hbfast.CUDAKernelMismatchWarning, match="op on cpu disagree .*1 of 4 values off"):
        assert not safety.trusted("op", device, failing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not safety.trusted("op", device, failing)
    assert len(calls) == 1 and safety.verdicts() == {"op on cpu": False}
    with pytest.warns(hbfast.CUDAKernelMismatchWarning, match="RuntimeError: launch failed"):
        assert not safety.trusted("other", device, lambda d: (_ for _ in ()).throw(RuntimeError("launch failed")))
    monkeypatch.setenv("HBFAST_CUDA_CHECK", "0")
    assert safety.trusted("third", device, failing) and len(calls) == 1
