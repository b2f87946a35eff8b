"""The fused in-batch contrastive (InfoNCE / CLIP) loss, without a B x B logits matrix.

The score matrix S = scale * q @ keys.T (keys = [p; hard negatives]) is visited one row block at a
time: a matrix product (cuBLAS on the GPU; on the CPU torch's MKL or hbfast's OpenBLAS, whichever
``hbfast._gemm`` measured faster for the shape) writes the block's dot products into a preallocated float32 buffer
(float64 for float64 inputs on the CPU) and hbfast's C++/CUDA epilogue
(``_C.contrastive_forward_block``) merges it into online per-row and per-column log-sum-exps over
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

import contextlib
import math
from numbers import Real
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _C, _block_walk, _ext, _gemm, _losses_cuda
from ._ext import check_impl, require_cuda
from .gather import GatherWithGrad, gather_info, gather_plain

DEFAULT_MEMORY_BUDGET = 768 << 20  # bytes of score blocks kept from forward to backward
BLOCK_ROWS = 1024  # rows per block of the score matrix (each block's grad_keys update reads and
BLOCK_BYTES = 64 << 20  # writes all of grad_keys, so not fewer), unless a block exceeds this
_MAX_BLOCK_ROWS = 65535  # CUDA grid limit on the gradient kernel's rows
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_REDUCTIONS = ("mean", "sum", "none")
_SOFTPLUS_LINEAR = 40.0  # softplus(x) = x above this in float64 too (the default 20 would cut 2e-9 off)


# ---- block planning -------------------------------------------------------------------------------

def block_rows(n_rows: int, n_cols: int, item_size: int = 4) -> int:
    """Rows per block: BLOCK_ROWS, fewer (at least 16) when a block [rows, n_cols] of item_size-byte
    scores would take more than BLOCK_BYTES."""
    rows = max(16, min(BLOCK_ROWS, BLOCK_BYTES // (item_size * max(n_cols, 1))))
    return int(min(n_rows, rows, _MAX_BLOCK_ROWS))


def cached_rows(n_rows: int, n_cols: int, memory_budget: int, item_size: int = 4) -> int:
    """How many leading rows of the score matrix the forward keeps for the backward."""
    return int(min(n_rows, max(0, memory_budget) // (item_size * max(n_cols, 1))))


def _blocks(n_rows: int, n_cols: int, n_cached: int, item_size: int) -> List[Tuple[int, int]]:
    step = block_rows(n_rows, n_cols, item_size)
    out = []
    for lo, hi in ((0, n_cached), (n_cached, n_rows)):  # a block never straddles the cache boundary
        out += [(r, min(r + step, hi)) for r in range(lo, hi, step)]
    return out


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _on_device(device: torch.device):
    """Launch on the inputs' GPU (the kernels use the current device and stream)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


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
    if _ext.runs_cuda_kernels(q.device):
        require_cuda("hbfast.contrastive_loss", q.device)
        blocks = _blocks(q.shape[0], keys.shape[0], n_cached, q.element_size())
        row_stats, col_stats, positive, cache = _losses_cuda.forward(
            q, keys, scale, _group_codes(groups), n_batch, row_offset, with_columns, n_cached, blocks)
        return _margin(row_stats, positive), _margin(col_stats, positive), row_stats, col_stats, cache
    for name, t in (("q", q), ("p", keys)):
        # A sum is finite only when every element is (one cheap pass); if it is not, look closer.
        if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"contrastive_loss: {name} (or hard_negatives) contains NaN or Inf")
    s = float(scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"contrastive_loss: the scale must be finite and > 0, got {s}")
    R, N = q.shape[0], keys.shape[0]
    codes = _group_codes(groups)
    like = dict(dtype=q.dtype, device=q.device)
    row_stats = torch.empty(R, 2, **like)
    positive = torch.empty(R, **like)
    col_max = torch.full((n_batch if with_columns else 0,), -math.inf, **like)
    col_sum = torch.zeros(n_batch if with_columns else 0, **like)
    blocks = _blocks(R, N, n_cached, q.element_size())
    f64 = q.dtype == torch.float64

    def epilogue(x, lo, hi):
        _C.contrastive_forward_block(
            x.data_ptr(), N, hi - lo, row_offset + lo, N, n_batch, s, _ptr(codes), row_stats[lo:].data_ptr(),
            positive[lo:].data_ptr(), _ptr(col_max) if with_columns else 0, _ptr(col_sum) if with_columns else 0, f64,
        )

    with _gemm.products(q, "loss_forward", R, N) as mm:
        cache = _block_walk.forward(q, keys, n_cached, blocks, mm, epilogue)
    col_stats = torch.stack([col_max, col_sum.log()], 1)
    total = float(row_stats.sum() + col_stats.sum() + positive.sum())  # -inf: a row or column without negatives
    if not (math.isfinite(total) or total == -math.inf):
        raise ValueError(f"contrastive_loss: scores overflow {q.dtype}; scale down the inputs or the logit scale")
    positive = positive * s  # S_ii, rounded as the kernels round every score
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
    if _ext.runs_cuda_kernels(q.device):
        blocks = _blocks(q.shape[0], keys.shape[0], cache.shape[0], q.element_size())
        coefficients = _margin_coefficients(grad_row_margin, grad_col_margin, scale.to(torch.float32))
        return _losses_cuda.backward(coefficients, q, keys, scale, _group_codes(groups),
                                     row_stats, col_stats, cache, n_batch, row_offset, need_q, need_keys, blocks)
    s = float(scale)
    R, N = q.shape[0], keys.shape[0]
    n_cached = cache.shape[0]
    codes = _group_codes(groups)
    # The kernels write scale * G (G = dL/dS is linear in the upstream gradients), so the block
    # products give grad_q = scale * G @ keys and grad_keys = scale * G.T @ q directly.
    row_coef, col_coef, diag_coef = _margin_coefficients(grad_row_margin, grad_col_margin, s)
    blocks = _blocks(R, N, n_cached, q.element_size())
    f64 = q.dtype == torch.float64
    dscale = 0.0  # sum(scale * G * X) over the blocks

    def epilogue(x, g, lo, hi):
        nonlocal dscale
        dscale += _C.contrastive_backward_block(
            x.data_ptr(), N, hi - lo, row_offset + lo, N, n_batch, s, _ptr(codes), row_stats[lo:].data_ptr(),
            _ptr(col_stats) if col_coef is not None else 0, row_coef[lo:].data_ptr(), _ptr(col_coef),
            diag_coef[lo:].data_ptr(), g.data_ptr(), N, f64,
        )

    with _gemm.products(q, "loss_backward", R, N) as mm:
        grad_q, grad_keys = _block_walk.backward(q, keys, cache, blocks, mm, need_q, need_keys, epilogue)
    return grad_q, grad_keys, torch.tensor(dscale / s, dtype=scale.dtype)  # sum(scale * G * X) / scale


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


def _reduce(per_row: Tensor, reduction: str) -> Tensor:  # reduction: "mean", "sum" or "none"
    return per_row.mean() if reduction == "mean" else per_row.sum() if reduction == "sum" else per_row


# ---- validation -----------------------------------------------------------------------------------

def _check_float_matrices(**named) -> None:
    """Each named input a 2-D float tensor [B, D], else a clear error naming it (the losses' shared check)."""
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D [B, D], got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def _check_same_kind(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    """Two checked matrices of a loss: a non-empty, both of one dtype and on one device."""
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"empty input: {a_name} and {b_name} have shape {tuple(a.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"{a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{a_name} and {b_name} must be on the same device, got {a.device} and {b.device}")


def _check_embeddings(q, p, hard_negatives) -> None:
    _check_float_matrices(q=q, p=p)
    if q.shape != p.shape:
        raise ValueError(f"q and p must have the same shape [B, D], got {tuple(q.shape)} and {tuple(p.shape)}")
    _check_same_kind("q", q, "p", p)
    if hard_negatives is not None:
        h = hard_negatives
        if not isinstance(h, Tensor):
            raise TypeError(f"hard_negatives must be a torch.Tensor, got {type(h).__name__}")
        if h.dim() != 2 or h.shape[1] != q.shape[1]:
            raise ValueError(f"hard_negatives must be [M, D] with D = {q.shape[1]}, got shape {tuple(h.shape)}")
        if h.dtype != q.dtype:
            raise TypeError(f"hard_negatives must have q's dtype {q.dtype}, got {h.dtype}")
        if h.device != q.device:
            raise ValueError(f"hard_negatives must be on q's device {q.device}, got {h.device}")


def _check_scale(q, temperature, logit_scale) -> None:
    if logit_scale is None:
        if isinstance(temperature, bool) or not isinstance(temperature, Real):
            raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
        if not math.isfinite(float(temperature)) or float(temperature) <= 0:
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        return
    if not isinstance(logit_scale, Tensor):
        raise TypeError(f"logit_scale must be a torch.Tensor (log of the scale), got {type(logit_scale).__name__}")
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must hold one value, got shape {tuple(logit_scale.shape)}")
    if not logit_scale.is_floating_point():
        raise TypeError(f"logit_scale must be a floating tensor, got {logit_scale.dtype}")
    if logit_scale.device != q.device:
        raise ValueError(f"logit_scale must be on q's device {q.device}, got {logit_scale.device}")


def _check_groups(q, group_ids) -> None:
    if group_ids is None:
        return
    if not isinstance(group_ids, Tensor):
        raise TypeError(f"group_ids must be a torch.Tensor, got {type(group_ids).__name__}")
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if group_ids.shape != (q.shape[0],):
        raise ValueError(f"group_ids must have shape [B] = [{q.shape[0]}], got {tuple(group_ids.shape)}")
    if group_ids.device != q.device:
        raise ValueError(f"group_ids must be on q's device {q.device}, got {group_ids.device}")


def _check_options(symmetric, reduction, memory_budget) -> None:
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0:
        raise ValueError(f"memory_budget must be an int >= 0 (bytes), got {memory_budget!r}")


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
    row_loss = F.softplus(row_margin, threshold=_SOFTPLUS_LINEAR)
    col_loss = F.softplus(col_margin, threshold=_SOFTPLUS_LINEAR) if with_columns else None
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
    _check_embeddings(q, p, hard_negatives)
    _check_scale(q, temperature, logit_scale)
    _check_groups(q, group_ids)
    _check_options(symmetric, reduction, memory_budget)
    if not isinstance(gather, bool) or not isinstance(normalize, bool):
        raise TypeError("gather and normalize must be bools")
    if impl == "reference":
        from . import reference

        if gather:
            raise ValueError("impl='reference' does not support gather=True")
        return reference.contrastive_loss(q, p, temperature=temperature, logit_scale=logit_scale,
                                          symmetric=symmetric, group_ids=group_ids, hard_negatives=hard_negatives,
                                          reduction=reduction, normalize=normalize)
    if q.device.type == "cuda":
        require_cuda("hbfast.contrastive_loss", q.device)
    elif q.device.type != "cpu":
        raise ValueError(f"contrastive_loss runs on cpu or cuda tensors, got device {q.device}")

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

    return _reduce(per_row, reduction).to(out_dtype)


class ContrastiveLoss(torch.nn.Module):
    """Module form of :func:`contrastive_loss`. With ``learnable_scale=True`` it owns CLIP's
    learnable ``logit_scale`` (initialised to log(1 / temperature), clamped to ``max_scale``)."""

    def __init__(self, temperature: float = 0.05, learnable_scale: bool = False, symmetric: bool = True,
                 reduction: str = "mean", gather: bool = False, normalize: bool = False,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, max_scale: float = 100.0, impl: str = "auto"):
        super().__init__()
        _check_scale(torch.empty(0), temperature, None)
        _check_options(symmetric, reduction, memory_budget)
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
