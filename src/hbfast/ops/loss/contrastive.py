"""The fused in-batch contrastive (InfoNCE / CLIP) loss, without a B x B logits matrix.

The score matrix S = scale * q @ keys.T (keys = [p; hard negatives]) is visited one row block at a
time: a matrix product (cuBLAS on the GPU; on the CPU torch's MKL or hbfast's OpenBLAS, whichever
``hbfast.ops.gemm`` measured faster for the shape) writes the block's dot products into a preallocated float32 buffer
(float64 for float64 inputs on the CPU) and hbfast's C++/CUDA epilogue
(``_C.contrastive_forward_block``; the device bodies are cpu.py and cuda.py, and
``generic.py`` the plain PyTorch twin that ``ops.safety`` falls back to) merges it into online per-row and per-column log-sum-exps over
the negatives (every unmasked pair off the diagonal) in one vectorised pass. The positive stays apart:
a row's loss is ``softplus(lse_negatives - positive)``, exact where training converges (the positive
far above every negative), where ``logsumexp(row) - positive`` would cancel to rounding noise; the
gradient has the same form, with no ``softmax - 1`` on the diagonal. The backward turns each block into the gradient
block G = dL/dS (``_C.contrastive_backward_block``) and the same product multiplies it out:
``grad_q = scale * G @ keys``, ``grad_keys = scale * G.T @ q``. Blocks are kept from the forward
for the backward while they fit in ``memory_budget`` bytes, else recomputed.

Both kernel steps are ``torch.library.custom_op``s with fake implementations and autograd
registrations, so ``torch.compile(fullgraph=True)`` can trace a model that uses the loss.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import reference
from .. import ext, safety
from ..ext import check_impl, require_cuda
from ..gather import GatherWithGrad, gather_info, gather_plain
from . import cpu, cuda, generic
from .blocks import DEFAULT_MEMORY_BUDGET, cached_rows, plan
from .checks import (check_device, check_embeddings, check_flags, check_groups, check_memory_budget, check_reduction,
                     check_scale, reduce)

SOFTPLUS_LINEAR = 40.0  # softplus(x) = x above this in float64 too (the default 20 would cut 2e-9 off)


def _backend(device: torch.device):
    """The one dispatch point of both ops: cpu.py's bodies, cuda.py's, or (when the CUDA kernels failed
    their first-use check on this device) generic.py's."""
    if not ext.runs_cuda_kernels(device):
        return cpu
    require_cuda("hbfast.contrastive_loss", device)
    return cuda if safety.trusted("contrastive_loss", device, check_cuda) else generic


def _group_codes(groups: Optional[Tensor]) -> Optional[Tensor]:
    """int64 group ids [B] -> int32 codes [B], equal exactly where the ids are equal (the dense rank
    of each id, as torch.unique's inverse), from a sort: no output of data-dependent size, so no
    wait for the device."""
    if groups is None:
        return None
    ordered, order = torch.sort(groups)
    starts = torch.ones_like(ordered, dtype=torch.int32)
    starts[0] = 0
    starts[1:] = ordered[1:] != ordered[:-1]  # 1 where a new id begins
    return torch.empty_like(starts).scatter_(0, order, torch.cumsum(starts, 0, dtype=torch.int32))


# ---- the custom ops -------------------------------------------------------------------------------

@torch.library.custom_op("hbfast::contrastive_forward", mutates_args=())
def _forward_op(
    q: Tensor, keys: Tensor, scale: Tensor, groups: Optional[Tensor], n_batch: int, row_offset: int,
    with_columns: bool, n_cached: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """q [R, D] rows row_offset.. of the batch; keys [N, D] (first n_batch: the batch's positives),
    both float32, or both float64 on the CPU. Returns, in that dtype:
    - row_margin [R]: lse_i - S_ii, lse_i the log-sum-exp of row i's negatives (its unmasked scores
      off the diagonal; -inf without any), so the row's loss is softplus(row_margin);
    - col_margin [n_batch] (empty without columns): the same per column (the p -> q direction);
    - row_stats [R, 2] and col_stats [n_batch, 2]: each log-sum-exp as the unevaluated sum
      (max, log_sum), which keeps the low bits that the backward's exp(S - lse) needs;
    - the kept blocks [n_cached, N].
    Only the margins are differentiable."""
    backend = _backend(q.device)
    blocks = plan(q.shape[0], keys.shape[0], n_cached, q.element_size())
    row_stats, col_stats, positive, cache = backend.contrastive_forward(
        q, keys, scale, _group_codes(groups), n_batch, row_offset, with_columns, n_cached, blocks)
    return _margin(row_stats, positive), _margin(col_stats, positive), row_stats, col_stats, cache


def _margin(stats: Tensor, positive: Tensor) -> Tensor:
    """lse - positive for lse = max + log_sum ([R, 2]): (max - positive) + log_sum keeps the low bits
    that the rounded max + log_sum would drop (the trained regime's whole loss lives there)."""
    return (stats[:, 0] - positive[: stats.shape[0]]) + stats[:, 1]


@_forward_op.register_fake
def _(q, keys, scale, groups, n_batch, row_offset, with_columns, n_cached):
    R, N, C = q.shape[0], keys.shape[0], n_batch if with_columns else 0
    return q.new_empty(R), q.new_empty(C), q.new_empty(R, 2), q.new_empty(C, 2), q.new_empty(n_cached, N)


@torch.library.custom_op("hbfast::contrastive_backward", mutates_args=())
def _backward_op(
    grad_row_margin: Tensor, grad_col_margin: Optional[Tensor], q: Tensor, keys: Tensor, scale: Tensor,
    groups: Optional[Tensor], row_stats: Tensor, col_stats: Tensor, cache: Tensor, n_batch: int, row_offset: int,
    need_q: bool, need_keys: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (row_margin, col_margin) -> (grad_q, grad_keys, dL/dscale)."""
    backend = _backend(q.device)
    blocks = plan(q.shape[0], keys.shape[0], cache.shape[0], q.element_size())
    coefficients = _margin_coefficients(grad_row_margin, grad_col_margin,
                                        scale.to(torch.float32) if backend is cuda else scale)
    return backend.contrastive_backward(coefficients, q, keys, scale, _group_codes(groups), row_stats, col_stats,
                                        cache, n_batch, row_offset, need_q, need_keys, blocks)


def _margin_coefficients(grad_row_margin: Tensor, grad_col_margin: Optional[Tensor], scale):
    """(row_coef, col_coef, diag_coef), the kernels' scale * (a_i, b_j, c_i) of common/contrastive_math.h,
    from the margins' gradients: a margin is lse - S_ii, so the diagonal takes minus both directions'."""
    row_coef = (grad_row_margin * scale).contiguous()
    col_coef = None if grad_col_margin is None else (grad_col_margin * scale).contiguous()
    diag = grad_row_margin if grad_col_margin is None else grad_row_margin + grad_col_margin
    return row_coef, col_coef, (-diag * scale).contiguous()


@_backward_op.register_fake
def _(grad_row_margin, grad_col_margin, q, keys, scale, groups, row_stats, col_stats, cache, n_batch, row_offset,
      need_q, need_keys):
    return torch.empty_like(q), torch.empty_like(keys), scale.new_empty(())


def _setup_context(ctx, inputs, output):
    q, keys, scale, groups, n_batch, row_offset, with_columns, n_cached = inputs
    _, _, row_stats, col_stats, cache = output
    ctx.save_for_backward(q, keys, scale, groups, row_stats, col_stats, cache)
    # No zero-filled gradients for outputs nobody used (the kept blocks are as large as the cache).
    ctx.mark_non_differentiable(row_stats, col_stats, cache)
    ctx.set_materialize_grads(False)
    ctx.n_batch, ctx.row_offset, ctx.with_columns = n_batch, row_offset, with_columns


def _backward(ctx, grad_row_margin, grad_col_margin, grad_row_stats, grad_col_stats, grad_cache):
    q, keys, scale, groups, row_stats, col_stats, cache = ctx.saved_tensors
    need_q, need_keys, need_scale = ctx.needs_input_grad[:3]
    if not (need_q or need_keys or need_scale):
        return None, None, None, None, None, None, None, None
    if grad_row_margin is None:
        grad_row_margin = q.new_zeros(q.shape[0])
    if not ctx.with_columns:
        grad_col_margin = None
    elif grad_col_margin is None:
        grad_col_margin = q.new_zeros(ctx.n_batch)
    grad_q, grad_keys, dscale = _backward_op(
        grad_row_margin, grad_col_margin, q, keys, scale, groups, row_stats, col_stats, cache, ctx.n_batch,
        ctx.row_offset, need_q, need_keys,
    )
    return (grad_q if need_q else None, grad_keys if need_keys else None, dscale if need_scale else None,
            None, None, None, None, None)


torch.library.register_autograd("hbfast::contrastive_forward", _backward, setup_context=_setup_context)


# ---- the public API -------------------------------------------------------------------------------

def direction_losses(rows: Tensor, keys: Tensor, scale: Tensor, groups: Optional[Tensor], n_batch: int,
                     row_offset: int, with_columns: bool, memory_budget: int) -> Tuple[Tensor, Optional[Tensor]]:
    """The fused loss's per-row losses of ``rows`` [R, D] (rows row_offset.. of the batch) against
    ``keys`` [N, D] (the first n_batch are the batch's positives, in order): ``softplus(lse of the
    row's negatives - positive)`` = ``logsumexp(S[i]) - S[i, i]`` without its cancellation, and
    with ``with_columns`` (R = n_batch, row_offset 0) the same per column (the p -> q direction),
    else None. Inputs are checked by the callers (contrastive_loss, the open_clip drop-in)."""
    n_cached = cached_rows(rows.shape[0], keys.shape[0], memory_budget, rows.element_size())
    row_margin, col_margin, _, _, _ = _forward_op(rows, keys, scale, groups, n_batch, row_offset, with_columns,
                                                  n_cached)
    row_loss = F.softplus(row_margin, threshold=SOFTPLUS_LINEAR)
    col_loss = F.softplus(col_margin, threshold=SOFTPLUS_LINEAR) if with_columns else None
    return row_loss, col_loss


def contrastive_loss(
    q: Tensor,
    p: Tensor,
    *,
    temperature: float = 0.05,
    logit_scale: Optional[Tensor] = None,
    symmetric: bool = True,
    group_ids: Optional[Tensor] = None,
    hard_negatives: Optional[Tensor] = None,
    reduction: str = "mean",
    gather: bool = False,
    normalize: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    impl: str = "auto",
) -> Tensor:
    """In-batch contrastive loss of queries ``q`` [B, D] against their positives ``p`` [B, D].

    Scores are ``S = scale * q @ p.T`` with ``scale = 1 / temperature``, or ``logit_scale.exp()``
    when ``logit_scale`` is given (it then receives a gradient). Per row
    ``l_i = logsumexp_j S[i, :] - S[i, i]`` (q -> p, with ``hard_negatives`` [M, D] appended as
    extra columns); ``symmetric=True`` averages it with the p -> q (column) loss of row i. Pairs
    i != j with equal ``group_ids`` are left out of both softmax denominators. ``reduction``:
    "mean", "sum" or "none" (per-row losses [B]). Float32/16/bf16 inputs are computed in float32
    (float64 inputs in float64 on the CPU, in float32 on CUDA); gradients come back in the input
    dtype. ``gather=True`` (under torch.distributed) scores each rank's rows against the batch
    gathered from all ranks, with gradients, like open_clip's ``local_loss`` + ``gather_with_grad``:
    averaging the ranks' "mean" losses gives the loss of the global batch. ``memory_budget``
    (bytes) bounds the score blocks kept from forward to backward (the rest is recomputed). ``impl``: "auto"/"kernel" (fused) or
    "reference" (plain PyTorch, :func:`hbfast.reference.contrastive_loss`).
    """
    check_impl(impl)
    check_embeddings(q, p, hard_negatives)
    check_scale(q, temperature, logit_scale)
    check_groups(q, group_ids)
    check_flags(symmetric=symmetric, gather=gather, normalize=normalize)
    check_reduction(reduction)
    check_memory_budget(memory_budget)
    if impl == "reference":
        if gather:
            raise ValueError("impl='reference' does not support gather=True")
        return reference.contrastive_loss(q, p, temperature=temperature, logit_scale=logit_scale,
                                          symmetric=symmetric, group_ids=group_ids, hard_negatives=hard_negatives,
                                          reduction=reduction, normalize=normalize)
    check_device("contrastive_loss", q.device)

    out_dtype = q.dtype
    compute = torch.float64 if q.dtype == torch.float64 and q.device.type == "cpu" else torch.float32
    qf, pf = q.to(compute), p.to(compute)
    hf = None if hard_negatives is None or hard_negatives.shape[0] == 0 else hard_negatives.to(compute)
    if normalize:
        qf, pf = F.normalize(qf, dim=-1), F.normalize(pf, dim=-1)
        hf = None if hf is None else F.normalize(hf, dim=-1)
    if logit_scale is None:
        scale = torch.full((), 1.0 / float(temperature), dtype=compute, device=q.device)
    else:
        scale = logit_scale.to(compute).reshape(()).exp()
    groups = None if group_ids is None else group_ids.to(torch.int64).contiguous()

    if not gather:
        keys = pf if hf is None else torch.cat([pf, hf], 0)  # [B + M, D]
        per_row, per_col = direction_losses(qf.contiguous(), keys.contiguous(), scale, groups, q.shape[0], 0,
                                            symmetric, memory_budget)
        if symmetric:
            per_row = 0.5 * (per_row + per_col)
    else:
        rank, world = gather_info(q)
        b = q.shape[0]
        p_all = GatherWithGrad.apply(pf)  # [world * b, D]
        groups_all = None if groups is None else gather_plain(groups)
        # every rank's hard negatives join the global batch's negatives (same M on every rank)
        keys = p_all if hf is None else torch.cat([p_all, GatherWithGrad.apply(hf)], 0)
        per_row, _ = direction_losses(qf.contiguous(), keys.contiguous(), scale, groups_all, world * b, rank * b,
                                      False, memory_budget)
        if symmetric:
            q_all = GatherWithGrad.apply(qf)
            per_col, _ = direction_losses(pf.contiguous(), q_all.contiguous(), scale, groups_all, world * b, rank * b,
                                          False, memory_budget)
            per_row = 0.5 * (per_row + per_col)

    return reduce(per_row, reduction).to(out_dtype)


class ContrastiveLoss(torch.nn.Module):
    """Module form of :func:`contrastive_loss`. With ``learnable_scale=True`` it owns CLIP's
    learnable ``logit_scale`` (initialised to log(1 / temperature), clamped to ``max_scale``)."""

    def __init__(self, temperature: float = 0.05, learnable_scale: bool = False, symmetric: bool = True,
                 reduction: str = "mean", gather: bool = False, normalize: bool = False,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, max_scale: float = 100.0, impl: str = "auto"):
        super().__init__()
        check_scale(torch.empty(0), temperature, None)
        check_flags(symmetric=symmetric, gather=gather, normalize=normalize)
        check_reduction(reduction)
        check_memory_budget(memory_budget)
        check_impl(impl)
        self.temperature = float(temperature)
        self.symmetric, self.reduction, self.gather, self.normalize = symmetric, reduction, gather, normalize
        self.memory_budget, self.max_scale, self.impl = memory_budget, float(max_scale), impl
        if learnable_scale:
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / self.temperature)))
        else:
            self.register_parameter("logit_scale", None)

    def forward(self, q: Tensor, p: Tensor, hard_negatives: Optional[Tensor] = None,
                group_ids: Optional[Tensor] = None) -> Tensor:
        logit_scale = None
        if self.logit_scale is not None:
            logit_scale = self.logit_scale.clamp(max=math.log(self.max_scale)).to(q.device)
        return contrastive_loss(q, p, temperature=self.temperature, logit_scale=logit_scale,
                                symmetric=self.symmetric, group_ids=group_ids, hard_negatives=hard_negatives,
                                reduction=self.reduction, gather=self.gather, normalize=self.normalize,
                                memory_budget=self.memory_budget, impl=self.impl)

    def extra_repr(self) -> str:
        scale = "learnable" if self.logit_scale is not None else f"temperature={self.temperature}"
        return f"{scale}, symmetric={self.symmetric}, reduction={self.reduction!r}, gather={self.gather}"


# ---- the CUDA kernels' first-use check (ops.safety) ---------------------------------------------------

def check_cuda(device: torch.device) -> str:
    """cuda.py's bodies against generic.py's on ``device``, on two small cases that cross the kernels'
    paths (column chunks, groups, hard negatives, both directions; a few rows split over several CTAs,
    a row offset): "" when they agree, else the figures."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    spans = 2 * max(1, int(cuda.ROW_SPAN_COLUMNS)) + 17
    cases = [(96, 96 + 9, 0, True, True), (5, spans, 7, False, False)]  # rows, keys, row_offset, columns, groups
    for rows, n_keys, row_offset, with_columns, grouped in cases:
        n_batch = rows + row_offset if not with_columns else rows
        q = F.normalize(torch.randn(rows, 24, generator=gen), dim=1).to(device)
        keys = F.normalize(torch.randn(n_keys, 24, generator=gen), dim=1).to(device)
        scale = torch.full((), 20.0, device=device)
        codes = _group_codes(torch.randint(0, 40, (n_batch,), generator=gen).to(device)) if grouped else None
        blocks = plan(rows, n_keys, rows, 4)
        got = cuda.contrastive_forward(q, keys, scale, codes, n_batch, row_offset, with_columns, rows, blocks)
        want = generic.contrastive_forward(q, keys, scale, codes, n_batch, row_offset, with_columns, rows, blocks)
        upstream = torch.rand(rows, generator=gen).to(device)
        col_grad = torch.rand(n_batch, generator=gen).to(device) if with_columns else None
        coefficients = _margin_coefficients(upstream, col_grad, scale)
        args = (q, keys, scale, codes, want[0], want[1], want[3], n_batch, row_offset, True, True, blocks)
        got_grads = cuda.contrastive_backward(coefficients, *args)
        want_grads = generic.contrastive_backward(coefficients, *args)
        pairs = [("row margins", _margin(got[0], got[2]), _margin(want[0], want[2])),
                 ("column margins", _margin(got[1], got[2]), _margin(want[1], want[2])),
                 ("kept blocks", got[3], want[3])]
        pairs += list(zip(("grad q", "grad keys", "d scale"), got_grads, want_grads))
        for name, g, w in pairs:
            problem = safety.compare(f"contrastive_loss {name} ({rows} x {n_keys})", g, w, rtol=1e-3, atol=1e-4)
            if problem:
                return problem
    return ""
