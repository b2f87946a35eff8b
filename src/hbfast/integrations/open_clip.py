"""Drop-in replacements for open_clip's ``ClipLoss`` and ``SigLipLoss`` backed by hbfast's fused losses.

Same constructor arguments, same ``forward`` signature and the same numbers (value and gradients,
single process and under torch.distributed) as ``open_clip.loss``, without the B x B logits
matrix. open_clip itself is never imported here, so it stays an optional dependency. To use them
in open_clip's training script, which has no loss hook, replace ``open_clip_train.main.create_loss``
(see examples/open_clip_train.py).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..losses import DEFAULT_MEMORY_BUDGET, _GatherWithGrad, _gather_info, _gather_plain, direction_losses
from ..siglip import _check_features, _as_scalar, check_scalar, siglip_loss

__all__ = ["ClipLoss", "SigLipLoss"]

_SIGLIP_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


def _check_group(rank, world_size) -> None:
    for name, v in (("rank", rank), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _check_process_group(what: str, rank: int, world_size: int) -> None:
    """world_size > 1 must describe the initialised default process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"{what}: world_size={world_size} needs an initialised torch.distributed process group")
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise ValueError(f"{what}: rank={rank}, world_size={world_size} do not match the process group "
                         f"(rank {dist.get_rank()} of {dist.get_world_size()})")


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 and t.device.type == "cpu" else torch.float32


class ClipLoss(torch.nn.Module):
    """open_clip's ``ClipLoss``: the symmetric InfoNCE loss of matching image and text features,
    computed by :func:`hbfast.contrastive_loss`'s fused kernels.

    ``forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False)`` with
    ``logit_scale`` the multiplier (open_clip's models return ``logit_scale.exp()``). A bias shifts
    every logit of a row alike, so it changes neither the loss nor the other gradients (its own is 0).
    With ``world_size > 1`` (torch.distributed initialised with that many ranks) the features are
    gathered from all ranks as open_clip does: ``local_loss=False`` computes the global batch's
    loss on every rank, ``local_loss=True`` each rank's rows against the gathered batch;
    ``gather_with_grad`` sends gradients back through the gather. ``cache_labels`` is accepted for
    compatibility (no labels are materialised). ``memory_budget``: see :func:`hbfast.contrastive_loss`.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__()
        _check_group(rank, world_size)
        if use_horovod:
            raise ValueError("hbfast's ClipLoss supports torch.distributed only, not horovod (use_horovod=True)")
        self.local_loss, self.gather_with_grad, self.cache_labels = bool(local_loss), bool(gather_with_grad), cache_labels
        self.rank, self.world_size, self.memory_budget = rank, world_size, memory_budget

    def _rows(self, rows: Tensor, keys: Tensor, scale: Tensor, row_offset: int) -> Tensor:
        """Per-row loss of rows (batch rows row_offset..) against keys: logsumexp - positive."""
        per_row, _ = direction_losses(rows.contiguous(), keys.contiguous(), scale, None, keys.shape[0], row_offset,
                                      False, self.memory_budget)
        return per_row

    def _symmetric(self, image: Tensor, text: Tensor, scale: Tensor) -> Tensor:
        per_row, per_col = direction_losses(image.contiguous(), text.contiguous(), scale, None, image.shape[0], 0,
                                            True, self.memory_budget)
        return 0.5 * (per_row.mean() + per_col.mean())

    def _gathered(self, image: Tensor, text: Tensor) -> Tuple[Tensor, Tensor]:
        if self.gather_with_grad:
            return _GatherWithGrad.apply(image), _GatherWithGrad.apply(text)
        with torch.no_grad():
            all_image, all_text = _gather_plain(image), _gather_plain(text)
        if self.local_loss:
            return all_image, all_text
        # as open_clip: this rank's own slice keeps its gradient
        b, lo = image.shape[0], self.rank * image.shape[0]
        return (torch.cat([all_image[:lo], image, all_image[lo + b:]]),
                torch.cat([all_text[:lo], text, all_text[lo + b:]]))

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias=None,
                output_dict: bool = False):
        _check_features(image_features, text_features)
        device = image_features.device
        check_scalar("logit_scale", logit_scale, device)
        value = float(logit_scale.detach()) if isinstance(logit_scale, Tensor) else float(logit_scale)
        if not value > 0:
            raise ValueError(f"ClipLoss: logit_scale must be > 0 (the multiplier, not its log), got {value}")
        if logit_bias is not None:
            check_scalar("logit_bias", logit_bias, device)
        compute = _compute_dtype(image_features)
        image, text = image_features.to(compute), text_features.to(compute)
        scale = _as_scalar(logit_scale, compute, device)
        if self.world_size == 1:
            loss = self._symmetric(image, text, scale)
        else:
            _check_process_group("ClipLoss", self.rank, self.world_size)
            _gather_info(image)  # the same local batch size on every rank
            all_image, all_text = self._gathered(image, text)
            if self.local_loss:
                offset = self.rank * image.shape[0]
                loss = 0.5 * (self._rows(image, all_text, scale, offset).mean()
                              + self._rows(text, all_image, scale, offset).mean())
            else:
                loss = self._symmetric(all_image, all_text, scale)
        if isinstance(logit_bias, Tensor) and logit_bias.requires_grad:
            loss = loss + 0.0 * logit_bias.sum()  # its gradient is exactly 0; keep it in the graph
        loss = loss.to(image_features.dtype)
        return {"contrastive_loss": loss} if output_dict else loss


class SigLipLoss(torch.nn.Module):
    """open_clip's ``SigLipLoss``: the pairwise sigmoid loss, computed by :func:`hbfast.siglip_loss`.

    ``forward(image_features, text_features, logit_scale, logit_bias, output_dict=False)``; the
    logits are ``logit_scale * image @ text.T + logit_bias`` (``logit_scale`` the multiplier, as
    open_clip's models return it). With ``world_size > 1`` each rank's images are scored against
    the texts of every rank (gathered with gradients): the value open_clip's neighbour exchange
    gives on that rank, whichever ``dist_impl`` it uses (accepted for compatibility).
    ``cache_labels`` is accepted for compatibility (no labels are materialised).
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 dist_impl: Optional[str] = None, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__()
        _check_group(rank, world_size)
        if dist_impl is not None and dist_impl not in _SIGLIP_DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {_SIGLIP_DIST_IMPLS} or None, got {dist_impl!r}")
        self.cache_labels, self.rank, self.world_size = cache_labels, rank, world_size
        self.dist_impl, self.memory_budget = dist_impl or "bidir", memory_budget

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias=None,
                output_dict: bool = False):
        if logit_bias is None:
            raise ValueError("SigLipLoss needs logit_bias (the model's learnable bias, e.g. -10 at init); got None")
        _check_features(image_features, text_features)
        gather = self.world_size > 1
        if gather:
            _check_process_group("SigLipLoss", self.rank, self.world_size)  # siglip_loss checks the batch sizes
        loss = siglip_loss(image_features, text_features, logit_scale, logit_bias, gather=gather,
                           memory_budget=self.memory_budget)
        return {"contrastive_loss": loss} if output_dict else loss
