"""Float32 accuracy of the fused losses against float64, judged against PyTorch's own float32.

The standard (flash-attention's): in every regime the fused loss and each of its gradients must be
within 2x the error of plain PyTorch in float32 (cross_entropy / logsigmoid with autograd), both
measured against float64, relative, judged absolutely below a loss of 1e-4 or a gradient norm of
1e-6. The regimes are drawn (hypothesis, derandomised) over random inputs and the trained regime:
unit rows whose positives sit at cosine 0.9-0.999, temperatures 0.01-0.1, SigLIP scale 10-100 and
bias -20..0, with hard negatives, group masks, a learnable scale, B from 1 to 65536. Large B is
computed in row chunks, each with PyTorch's own autograd (both losses are sums of per-row terms of
one row of the score matrix, or of its transpose for the column direction).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hbfast

LOSS_FLOOR, GRAD_FLOOR = 1e-4, 1e-6
# Beside 2x PyTorch's error, one rounding of the largest score (relative): every float32 method
# rounds S = scale * q.p to float32 first, an error of |S| * 2^-24 in every exponent that no method
# can avoid, and on a single row PyTorch's own error is one draw of it (sometimes a lucky 0).
EPS32 = 2.0**-24
SETTINGS = dict(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _error(value: torch.Tensor, exact: torch.Tensor, floor: float) -> float:
    diff = torch.linalg.vector_norm((value.double() - exact).flatten())
    return float(diff / max(float(torch.linalg.vector_norm(exact.flatten())), floor))


def _pairs(B: int, D: int, cosine, seed: int, hard: int = 0):
    """q, p [B, D] (and hard negatives [hard, D]) in float64: random rows (cosine None), or unit rows
    whose positive sits at the given cosine to its query (the trained regime)."""
    g = torch.Generator().manual_seed(seed)
    if cosine is not None:
        D = max(D, 2)  # a positive at cosine c < 1 needs a direction orthogonal to its query
    q = torch.randn(B, D, generator=g, dtype=torch.float64)
    noise = torch.randn(B, D, generator=g, dtype=torch.float64)
    h = torch.randn(hard, D, generator=g, dtype=torch.float64)
    if cosine is None:
        return q, noise, h
    q = F.normalize(q, dim=1)
    noise = noise - (noise * q).sum(1, keepdim=True) * q  # orthogonal to q (D = 1: none)
    noise = torch.where(noise.norm(dim=1, keepdim=True) > 1e-12, F.normalize(noise, dim=1), torch.zeros_like(noise))
    p = cosine * q + math.sqrt(1 - cosine**2) * noise
    return q, F.normalize(p, dim=1), F.normalize(h, dim=1) if hard else h


# ---- PyTorch in a given dtype, in row chunks (the oracle in float64, the baseline in float32) ------

def _torch_contrastive(q, p, h, log_scale, groups, symmetric, dtype, weights=None, chunk=1024):
    """(sum_i w_i l_i, grad q, grad p, grad h, grad log_scale) of the loss of score row i (of score
    column i for the symmetric half), w = 1/B (the mean) by default, with PyTorch's autograd: in float32
    reference.contrastive_loss's arithmetic (cross_entropy), in float64 the oracle
    softplus(lse_negatives - positive), whose gradient has no 1 - softmax on the diagonal (which float64
    too rounds away once the positive dominates by 37 nats). Only rows with w_i != 0 are computed:
    each costs one row (and one column)."""
    q, p, h = (t.to(dtype).detach() for t in (q, p, h))
    log_scale = torch.tensor(log_scale, dtype=dtype)
    B = q.shape[0]
    weights = torch.full((B,), 1.0 / B, dtype=dtype) if weights is None else weights.to(dtype)
    rows_used = weights.nonzero().flatten()
    grads = [torch.zeros_like(t) for t in (q, p, h)] + [torch.zeros((), dtype=dtype)]
    total = torch.zeros((), dtype=dtype)
    half = 0.5 if symmetric else 1.0
    directions = [(q, p, True)] + ([(p, q, False)] if symmetric else [])
    for rows_all, cols_all, with_hard in directions:
        for lo in range(0, rows_used.numel(), chunk):
            idx = rows_used[lo:lo + chunk]
            rows = rows_all[idx].clone().requires_grad_()
            cols = cols_all.clone().requires_grad_()
            hard = h.clone().requires_grad_()
            ls = log_scale.clone().requires_grad_()
            scale = ls.exp()
            s = scale * (rows @ cols.T)  # [rows, B]
            if groups is not None:
                same = groups[idx, None] == groups[None, :]
                same[torch.arange(idx.numel()), idx] = False
                s = s.masked_fill(same, float("-inf"))
            if with_hard and h.shape[0]:
                s = torch.cat([s, scale * (rows @ hard.T)], 1)
            if dtype == torch.float64:  # the oracle: softplus(lse_negatives - positive), exact in float64
                diagonal = s[torch.arange(idx.numel()), idx]
                negatives = s.clone()
                negatives[torch.arange(idx.numel()), idx] = float("-inf")
                per_row = F.softplus(torch.logsumexp(negatives, 1) - diagonal, threshold=50.0)
            else:  # PyTorch's own float32 arithmetic
                per_row = F.cross_entropy(s, idx, reduction="none")
            loss = (per_row * weights[idx]).sum() * half
            loss.backward()
            total += loss.detach()
            r_idx, c_idx = (0, 1) if with_hard else (1, 0)
            grads[r_idx].index_add_(0, idx, rows.grad)
            grads[c_idx] += cols.grad
            if hard.grad is not None:
                grads[2] += hard.grad
            grads[3] += ls.grad
    return total, *grads


def _torch_siglip(x, y, scale, bias, dtype, weights=None, chunk=1024):
    """(sum_i w_i l_i, grad image, grad text, grad scale, grad bias) of reference.siglip_loss's arithmetic
    (logsigmoid of each score row) in `dtype`; w = 1/B (the mean) by default, rows with w_i = 0 skipped."""
    x, y = x.to(dtype), y.to(dtype)
    B = x.shape[0]
    weights = torch.full((B,), 1.0 / B, dtype=dtype) if weights is None else weights.to(dtype)
    rows_used = weights.nonzero().flatten()
    gx, gy = torch.zeros_like(x), torch.zeros_like(y)
    gs, gb, total = (torch.zeros((), dtype=dtype) for _ in range(3))
    for lo in range(0, rows_used.numel(), chunk):
        idx = rows_used[lo:lo + chunk]
        rows, cols = x[idx].clone().requires_grad_(), y.clone().requires_grad_()
        sc, bi = torch.tensor(scale, dtype=dtype, requires_grad=True), torch.tensor(bias, dtype=dtype, requires_grad=True)
        z = sc * (rows @ cols.T) + bi
        labels = -torch.ones_like(z)
        labels[torch.arange(idx.numel()), idx] = 1
        loss = (-F.logsigmoid(labels * z).sum(1) * weights[idx]).sum()
        loss.backward()
        total += loss.detach()
        gx.index_add_(0, idx, rows.grad)
        gy += cols.grad
        gs += sc.grad
        gb += bi.grad
    return total, gx, gy, gs, gb


def _hbfast_contrastive(q, p, h, log_scale, groups, symmetric, weights=None):
    q32, p32, h32 = (t.float().requires_grad_() for t in (q, p, h))
    ls = torch.tensor(log_scale, dtype=torch.float32, requires_grad=True)
    kwargs = dict(logit_scale=ls, symmetric=symmetric, group_ids=groups, hard_negatives=h32 if h.shape[0] else None)
    if weights is None:
        loss = hbfast.contrastive_loss(q32, p32, **kwargs)
    else:
        loss = (hbfast.contrastive_loss(q32, p32, reduction="none", **kwargs) * weights.float()).sum()
    loss.backward()
    grad_h = h32.grad if h32.grad is not None else torch.zeros_like(h32)
    return loss.detach(), q32.grad, p32.grad, grad_h, ls.grad


def _hbfast_siglip(x, y, scale, bias, weights=None):
    x32, y32 = x.float().requires_grad_(), y.float().requires_grad_()
    sc = torch.tensor(scale, dtype=torch.float32, requires_grad=True)
    bi = torch.tensor(bias, dtype=torch.float32, requires_grad=True)
    if weights is None:
        loss = hbfast.siglip_loss(x32, y32, sc, bi)
    else:
        loss = (hbfast.siglip_loss(x32, y32, sc, bi, reduction="none") * weights.float()).sum()
    loss.backward()
    return loss.detach(), x32.grad, y32.grad, sc.grad, bi.grad


def _assert_within_twice_torch(names, fused, torch32, exact, max_score):
    slack = 2 * EPS32 * max(1.0, max_score)
    report = []
    for name, f, t, e in zip(names, fused, torch32, exact):
        floor = LOSS_FLOOR if name == "loss" else GRAD_FLOOR
        err_f, err_t = _error(f, e, floor), _error(t, e, floor)
        report.append(f"{name}: hbfast {err_f:.2e}, torch float32 {err_t:.2e}")
        assert err_f <= 2 * err_t + slack, "; ".join(report) + f" (largest |score| {max_score:.1f})"


def _max_score(a, b, scale, bias=0.0):
    """A bound on |scale * a.b + bias| over all pairs (Cauchy-Schwarz), cheap at any B."""
    return scale * float(a.norm(dim=1).max()) * float(b.norm(dim=1).max()) + abs(bias)


# ---- the contrastive loss ---------------------------------------------------------------------------

def _check_contrastive(B, D, cosine, temperature, symmetric, hard, n_groups, seed, sampled_rows=None):
    """sampled_rows: weigh the per-row losses of that many random rows by random weights (the rest
    0), so that a large B costs the references only those rows and columns."""
    q, p, h = _pairs(B, D, cosine, seed, hard)
    groups = None
    if n_groups:
        groups = torch.randint(0, n_groups, (B,), generator=torch.Generator().manual_seed(seed + 1))
    weights = _sampled_weights(B, sampled_rows, seed + 2)
    log_scale = math.log(1.0 / temperature)
    exact = _torch_contrastive(q, p, h, log_scale, groups, symmetric, torch.float64, weights)
    torch32 = _torch_contrastive(q, p, h, log_scale, groups, symmetric, torch.float32, weights)
    fused = _hbfast_contrastive(q, p, h, log_scale, groups, symmetric, weights)
    keys = torch.cat([p, h]) if hard else p
    _assert_within_twice_torch(("loss", "grad q", "grad p", "grad hard negatives", "grad logit_scale"),
                               fused, torch32, exact, _max_score(q, keys, 1.0 / temperature))


@settings(**SETTINGS)
@given(
    B=st.sampled_from([1, 2, 3, 17, 64, 300, 1100]),
    D=st.sampled_from([1, 8, 64, 200]),
    cosine=st.one_of(st.none(), st.floats(0.9, 0.999)),
    temperature=st.floats(0.01, 0.1),
    symmetric=st.booleans(),
    hard=st.sampled_from([0, 0, 5, 64]),
    n_groups=st.sampled_from([0, 0, 2, 40]),
    seed=st.integers(0, 2**16),
)
def test_contrastive_float32_error_within_twice_torch(B, D, cosine, temperature, symmetric, hard, n_groups, seed):
    _check_contrastive(B, D, cosine, temperature, symmetric, hard, n_groups, seed)


@pytest.mark.parametrize("cosine,temperature", [(0.99, 0.05), (0.99, 0.02), (0.95, 0.02)])
def test_contrastive_trained_regime_of_the_issue(cosine, temperature):
    """The issue's cases: B = 512, D = 768, unit rows at cosine 0.99 (0.95), temperature 0.05 / 0.02."""
    _check_contrastive(512, 768, cosine, temperature, False, 0, 0, 7)
    _check_contrastive(512, 768, cosine, temperature, True, 0, 0, 8)


def test_contrastive_converged_rows_have_no_noise_floor():
    """At temperature 0.02 and cosine 0.99 the true gradient is ~1e-18: the fused one is as small."""
    q, p, _ = _pairs(512, 768, 0.99, 3)
    q32, p32 = q.float().requires_grad_(), p.float().requires_grad_()
    hbfast.contrastive_loss(q32, p32, temperature=0.02, symmetric=False).backward()
    assert float(q32.grad.norm()) < 1e-12 and float(p32.grad.norm()) < 1e-12


@pytest.mark.parametrize("symmetric,n_groups", [(True, 0), (False, 1000)])
def test_contrastive_large_batch(symmetric, n_groups):
    """B = 65536 (past 46341, where B * B overflows int32; 64 row blocks), the trained regime; the
    losses of 64 rows weighed, so the references stay cheap while the fused loss runs whole."""
    _check_contrastive(65536, 16, 0.99, 0.05, symmetric, 0, n_groups, 11, sampled_rows=64)


# ---- SigLIP ---------------------------------------------------------------------------------------

def _sampled_weights(B, sampled_rows, seed):
    """Random weights on `sampled_rows` random rows, 0 elsewhere (float32 values, held in float64)."""
    if not sampled_rows:
        return None
    g = torch.Generator().manual_seed(seed)
    weights = torch.zeros(B, dtype=torch.float64)
    weights[torch.randperm(B, generator=g)[:sampled_rows]] = torch.rand(sampled_rows, generator=g, dtype=torch.float64)
    return weights.float().double()


def _check_siglip(B, D, cosine, scale, bias, seed, sampled_rows=None):
    x, y, _ = _pairs(B, D, cosine, seed)
    weights = _sampled_weights(B, sampled_rows, seed + 2)
    exact = _torch_siglip(x, y, scale, bias, torch.float64, weights)
    torch32 = _torch_siglip(x, y, scale, bias, torch.float32, weights)
    fused = _hbfast_siglip(x, y, scale, bias, weights)
    _assert_within_twice_torch(("loss", "grad image", "grad text", "grad scale", "grad bias"), fused, torch32, exact,
                               _max_score(x, y, scale, bias))


@settings(**SETTINGS)
@given(
    B=st.sampled_from([1, 2, 3, 17, 64, 300, 1100]),
    D=st.sampled_from([1, 8, 64, 200]),
    cosine=st.one_of(st.none(), st.floats(0.9, 0.999)),
    scale=st.floats(10.0, 100.0),
    bias=st.floats(-20.0, 0.0),
    seed=st.integers(0, 2**16),
)
def test_siglip_float32_error_within_twice_torch(B, D, cosine, scale, bias, seed):
    _check_siglip(B, D, cosine, scale, bias, seed)


def test_siglip_cases_of_the_issue():
    """One pair at logit 13.4 (D = 64, scale 10, bias 3), and B = 512, D = 2048 at cosine 0.99 with
    scale 100, bias -20."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(1, 64, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(x + 0.35 * F.normalize(torch.randn(1, 64, generator=g, dtype=torch.float64), dim=1), dim=1)
    assert 12 < float(10 * (x @ y.T) + 3) < 14
    exact, torch32, fused = (_torch_siglip(x, y, 10.0, 3.0, torch.float64), _torch_siglip(x, y, 10.0, 3.0, torch.float32),
                             _hbfast_siglip(x, y, 10.0, 3.0))
    _assert_within_twice_torch(("loss", "grad image", "grad text", "grad scale", "grad bias"), fused, torch32, exact,
                               _max_score(x, y, 10.0, 3.0))
    _check_siglip(512, 2048, 0.99, 100.0, -20.0, 5)


def test_siglip_large_batch():
    """B = 65536, the trained regime, the losses of 64 rows weighed (see test_contrastive_large_batch)."""
    _check_siglip(65536, 16, 0.99, 30.0, -10.0, 13, sampled_rows=64)
