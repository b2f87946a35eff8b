"""The input checks both fused losses share: every problem with the embeddings, the scale, the group
ids or an option is a clear Python exception here, before any pointer reaches _C.

Exists so that the contrastive loss, the SigLIP loss and the drop-ins built on them (open_clip's
ClipLoss / SigLipLoss) reject the same bad input with the same words.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from ..ext import require_cuda

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def check_float_matrices(**named) -> None:
    """Each named input a 2-D float tensor [B, D], else a clear error naming it."""
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D [B, D], got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def check_same_kind(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    """Two checked matrices of a loss: a non-empty, both of one dtype and on one device."""
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"empty input: {a_name} and {b_name} have shape {tuple(a.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"{a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{a_name} and {b_name} must be on the same device, got {a.device} and {b.device}")


def check_device(what: str, device: torch.device) -> None:
    """A CPU device, or a CUDA device this build can run on (else the reason)."""
    if device.type == "cuda":
        require_cuda(what, device)
    elif device.type != "cpu":
        raise ValueError(f"{what} runs on cpu or cuda tensors, got device {device}")


def check_embeddings(q, p, hard_negatives) -> None:
    """The contrastive loss's q [B, D], p [B, D] and optional hard negatives [M, D]."""
    check_float_matrices(q=q, p=p)
    if q.shape != p.shape:
        raise ValueError(f"q and p must have the same shape [B, D], got {tuple(q.shape)} and {tuple(p.shape)}")
    check_same_kind("q", q, "p", p)
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


def check_features(image_features, text_features) -> None:
    """SigLIP's (and open_clip's) image_features [B, D] and text_features [B, D]."""
    check_float_matrices(image_features=image_features, text_features=text_features)
    i, t = image_features, text_features
    if i.shape[0] != t.shape[0]:
        raise ValueError(f"image_features and text_features must hold the same number of rows (one text per "
                         f"image), got {i.shape[0]} and {t.shape[0]}")
    if i.shape[1] != t.shape[1]:
        raise ValueError(f"image_features and text_features must have the same dimension, got {i.shape[1]} and "
                         f"{t.shape[1]}")
    check_same_kind("image_features", i, "text_features", t)
    check_device("hbfast.siglip_loss", i.device)


def check_scale(q, temperature, logit_scale) -> None:
    """A temperature (a finite number > 0), or a one-element floating ``logit_scale`` tensor on q's device."""
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


def check_scalar(name: str, value, device: torch.device) -> None:
    """A number, or a one-element floating tensor on `device` (open_clip's logit_scale / logit_bias)."""
    if value is None:
        raise ValueError(f"{name} is required (got None)")
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one value, got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{name} must be on the features' device {device}, got {value.device}")
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")


def as_scalar(value, dtype, device) -> Tensor:
    """A checked scalar (number or one-element tensor) as a 0-d tensor of dtype on device."""
    if isinstance(value, Tensor):
        return value.to(dtype).reshape(())
    # torch.full passes the number to a fill kernel: no host-to-device copy, so no wait on a GPU
    return torch.full((), float(value), dtype=dtype, device=device)


def check_groups(q, group_ids) -> None:
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


def check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_memory_budget(memory_budget) -> None:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0:
        raise ValueError(f"memory_budget must be an int >= 0 (bytes), got {memory_budget!r}")


def check_flags(**named) -> None:
    """Each named option a bool (symmetric, gather, normalize)."""
    for name, value in named.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def reduce(per_row: Tensor, reduction: str) -> Tensor:
    """per-row losses [R] -> their mean, sum, or themselves ("none")."""
    return per_row.mean() if reduction == "mean" else per_row.sum() if reduction == "sum" else per_row
