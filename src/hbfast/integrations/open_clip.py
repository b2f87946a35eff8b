"""Drop-in replacements for open_clip's ``ClipLoss``, ``SigLipLoss``, ``CoCaLoss`` and ``DistillClipLoss``
backed by hbfast's fused losses.

Same constructor arguments (open_clip_torch 3.3, plus ``SigLipLoss(chunk_size=...)`` of later
versions), same ``forward`` signatures, return conventions and numbers (value and gradients, single
process and under torch.distributed) as ``open_clip.loss``, without the B x B logits matrix in the
contrastive part; ``get_logits`` / ``get_ground_truth`` return open_clip's matrices for code that
asks for them. open_clip itself is never imported here, so it stays an optional dependency. To use
them in open_clip's training script, which has no loss hook, replace ``open_clip_train.main.create_loss``
(see examples/open_clip_train.py).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..ops.gather import GatherWithGrad, gather_info, gather_plain
from ..ops.loss import DEFAULT_MEMORY_BUDGET, direction_losses, siglip_loss
from ..ops.loss.checks import as_scalar, check_features, check_scalar

__all__ = ["ClipLoss", "CoCaLoss", "DistillClipLoss", "FeatureShapeError", "SigLipLoss"]

_SIGLIP_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


class FeatureShapeError(ValueError, RuntimeError):
    """Features of mismatched shapes. open_clip fails there inside torch (a RuntimeError from the
    product or the labels); this says which shapes differ, and is both a ValueError and a RuntimeError."""


def _check_pair(image_features, text_features) -> None:
    for name, t in (("image_features", image_features), ("text_features", text_features)):
        if isinstance(t, Tensor) and t.dim() != 2:
            raise FeatureShapeError(f"{name} must be a matrix [B, D], got shape {tuple(t.shape)}")
    if isinstance(image_features, Tensor) and isinstance(text_features, Tensor):
        if image_features.shape[1] != text_features.shape[1]:
            raise FeatureShapeError(f"image_features and text_features must have the same dimension, got "
                                    f"{image_features.shape[1]} and {text_features.shape[1]}")
        if image_features.shape[0] != text_features.shape[0]:
            raise FeatureShapeError(f"image_features and text_features must hold the same number of rows (one "
                                    f"text per image), got {image_features.shape[0]} and {text_features.shape[0]}")


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


class _DistImplError(ValueError, AssertionError):
    """A dist_impl open_clip does not know (open_clip asserts; this is a ValueError too)."""


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
        self.use_horovod = False
        self.prev_num_logits, self.labels = 0, {}  # open_clip's label cache (get_ground_truth)

    def get_ground_truth(self, device, num_logits) -> Tensor:
        """open_clip's class labels of the logits rows: ``arange(num_logits)``, shifted by this rank's
        offset with ``local_loss`` under torch.distributed (cached per device with ``cache_labels``)."""
        if self.prev_num_logits == num_logits and device in self.labels:
            return self.labels[device]
        labels = torch.arange(num_logits, device=device, dtype=torch.long)
        if self.world_size > 1 and self.local_loss:
            labels = labels + num_logits * self.rank
        if self.cache_labels:
            self.labels[device], self.prev_num_logits = labels, num_logits
        return labels

    def get_logits(self, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias=None):
        """open_clip's ``(logits_per_image, logits_per_text)``: the B x B logits the fused loss never
        builds, gathered from all ranks as ``forward`` gathers them (with ``local_loss``, this rank's
        rows against every rank's columns). As in open_clip, ``logits_per_text`` is a view of
        ``logits_per_image`` in the global (not local) distributed case."""
        _check_pair(image_features, text_features)
        if self.world_size > 1:
            _check_process_group("ClipLoss", self.rank, self.world_size)
            all_image, all_text = self._gathered(image_features, text_features)
            if self.local_loss:
                per_image = logit_scale * image_features @ all_text.T
                per_text = logit_scale * text_features @ all_image.T
            else:
                per_image = logit_scale * all_image @ all_text.T
                per_text = per_image.T  # shares its storage: a bias below lands on both twice, as in open_clip
        else:
            per_image = logit_scale * image_features @ text_features.T
            per_text = logit_scale * text_features @ image_features.T
        if logit_bias is not None:
            per_image += logit_bias
            per_text += logit_bias
        return per_image, per_text

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
            return GatherWithGrad.apply(image), GatherWithGrad.apply(text)
        with torch.no_grad():
            all_image, all_text = gather_plain(image), gather_plain(text)
        if self.local_loss:
            return all_image, all_text
        # as open_clip: this rank's own slice keeps its gradient
        b, lo = image.shape[0], self.rank * image.shape[0]
        return (torch.cat([all_image[:lo], image, all_image[lo + b:]]),
                torch.cat([all_text[:lo], text, all_text[lo + b:]]))

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias=None,
                output_dict: bool = False):
        loss = self._contrastive(image_features, text_features, logit_scale, logit_bias)
        return {"contrastive_loss": loss} if output_dict else loss

    def _contrastive(self, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias=None) -> Tensor:
        """The CLIP loss itself (``forward`` without its output conventions), on the fused kernel."""
        _check_pair(image_features, text_features)
        check_features(image_features, text_features)
        device = image_features.device
        check_scalar("logit_scale", logit_scale, device)
        value = float(logit_scale.detach()) if isinstance(logit_scale, Tensor) else float(logit_scale)
        if not value > 0:
            raise ValueError(f"ClipLoss: logit_scale must be > 0 (the multiplier, not its log), got {value}")
        if logit_bias is not None:
            check_scalar("logit_bias", logit_bias, device)
        compute = _compute_dtype(image_features)
        image, text = image_features.to(compute), text_features.to(compute)
        scale = as_scalar(logit_scale, compute, device)
        if self.world_size == 1:
            loss = self._symmetric(image, text, scale)
        else:
            _check_process_group("ClipLoss", self.rank, self.world_size)
            gather_info(image)  # the same local batch size on every rank
            all_image, all_text = self._gathered(image, text)
            if self.local_loss:
                offset = self.rank * image.shape[0]
                loss = 0.5 * (self._rows(image, all_text, scale, offset).mean()
                              + self._rows(text, all_image, scale, offset).mean())
            else:
                loss = self._symmetric(all_image, all_text, scale)
        if isinstance(logit_bias, Tensor) and logit_bias.requires_grad:
            loss = loss + 0.0 * logit_bias.sum()  # its gradient is exactly 0; keep it in the graph
        return loss.to(image_features.dtype)


class CoCaLoss(ClipLoss):
    """open_clip's ``CoCaLoss``: its CLIP term on hbfast's fused kernel (:class:`ClipLoss`), plus the
    captioning cross-entropy (torch's ``CrossEntropyLoss(ignore_index=pad_id)`` over the decoder's
    token logits [B, T, V], as open_clip computes it).

    ``forward(image_features, text_features, logits, labels, logit_scale, output_dict=False)``
    returns ``(clip_loss, caption_loss)`` or ``{"contrastive_loss": ..., "caption_loss": ...}``,
    each already multiplied by its weight; with ``clip_loss_weight`` 0 (or None) the CLIP term is
    skipped and ``clip_loss`` is the integer tensor 0, as in open_clip.
    """

    def __init__(self, caption_loss_weight, clip_loss_weight, pad_id: int = 0, local_loss: bool = False,
                 gather_with_grad: bool = False, cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 use_horovod: bool = False, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=cache_labels,
                         rank=rank, world_size=world_size, use_horovod=use_horovod, memory_budget=memory_budget)
        self.clip_loss_weight, self.caption_loss_weight = clip_loss_weight, caption_loss_weight
        self.caption_loss = torch.nn.CrossEntropyLoss(ignore_index=pad_id)

    def forward(self, image_features: Tensor, text_features: Tensor, logits: Tensor, labels: Tensor, logit_scale,
                output_dict: bool = False):
        if self.clip_loss_weight:
            clip_loss = self.clip_loss_weight * self._contrastive(image_features, text_features, logit_scale)
        else:
            clip_loss = torch.tensor(0, device=logits.device)
        caption_loss = self.caption_loss(logits.permute(0, 2, 1), labels) * self.caption_loss_weight
        if output_dict:
            return {"contrastive_loss": clip_loss, "caption_loss": caption_loss}
        return clip_loss, caption_loss


DISTILL_BLOCK_ELEMENTS = 8 << 20  # logits per block of the distillation term (32 MiB in float32)


def _soft_cross_entropy_sum(student_rows, student_keys, student_scale, teacher_rows, teacher_keys, teacher_scale):
    """sum over rows of -sum_j softmax(teacher logits)_j * log_softmax(student logits)_j."""
    student = student_scale * student_rows @ student_keys.T
    teacher = teacher_scale * teacher_rows @ teacher_keys.T
    return -(teacher.softmax(dim=1) * student.log_softmax(dim=1)).sum()


def _distill_direction(rows, keys, scale, teacher_rows, teacher_keys, teacher_scale) -> Tensor:
    """open_clip's dist_loss of one logits direction (mean over rows), a block of rows at a time;
    each block's logits are recomputed in the backward instead of kept (activation checkpointing)."""
    n = rows.shape[0]
    step = max(1, min(n, DISTILL_BLOCK_ELEMENTS // max(1, keys.shape[0])))
    total = 0.0
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        total = total + checkpoint(_soft_cross_entropy_sum, rows[lo:hi], keys, scale, teacher_rows[lo:hi],
                                   teacher_keys, teacher_scale, use_reentrant=False)
    return total / n


class DistillClipLoss(ClipLoss):
    """open_clip's ``DistillClipLoss``: the CLIP loss of the student (hbfast's fused kernel) and the
    distillation term, the cross-entropy of the student's logits against the teacher's softmax in
    both directions, averaged.

    ``forward(image_features, text_features, logit_scale, dist_image_features, dist_text_features,
    dist_logit_scale, output_dict=False)`` returns ``(contrastive_loss, distill_loss)`` or
    ``{"contrastive_loss": ..., "distill_loss": ...}``. The distillation term needs every logit of
    both models; it is computed in row blocks of at most ``DISTILL_BLOCK_ELEMENTS`` logits,
    recomputed in the backward, so neither B x B matrix is ever held whole. Under torch.distributed
    both models' features are gathered as :class:`ClipLoss` gathers them.
    """

    def _directions(self, image: Tensor, text: Tensor):
        """(rows, keys) of logits_per_image and logits_per_text, as open_clip's get_logits forms them."""
        if self.world_size == 1:
            return (image, text), (text, image)
        _check_process_group("DistillClipLoss", self.rank, self.world_size)
        all_image, all_text = self._gathered(image, text)
        if self.local_loss:
            return (image, all_text), (text, all_image)
        return (all_image, all_text), (all_text, all_image)

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale, dist_image_features: Tensor,
                dist_text_features: Tensor, dist_logit_scale, output_dict: bool = False):
        contrastive = self._contrastive(image_features, text_features, logit_scale)
        _check_pair(dist_image_features, dist_text_features)
        if dist_image_features.shape[0] != image_features.shape[0]:
            raise FeatureShapeError(f"the teacher's features hold {dist_image_features.shape[0]} rows, the "
                                    f"student's {image_features.shape[0]}: distillation needs the same batch")
        student = self._directions(image_features, text_features)
        teacher = self._directions(dist_image_features, dist_text_features)
        distill = 0.5 * sum(_distill_direction(rows, keys, logit_scale, t_rows, t_keys, dist_logit_scale)
                            for (rows, keys), (t_rows, t_keys) in zip(student, teacher))
        if output_dict:
            return {"contrastive_loss": contrastive, "distill_loss": distill}
        return contrastive, distill


class SigLipLoss(torch.nn.Module):
    """open_clip's ``SigLipLoss``: the pairwise sigmoid loss, computed by :func:`hbfast.siglip_loss`.

    ``forward(image_features, text_features, logit_scale, logit_bias, output_dict=False)``; the
    logits are ``logit_scale * image @ text.T + logit_bias`` (``logit_scale`` the multiplier, as
    open_clip's models return it). With ``world_size > 1`` each rank's images are scored against
    the texts of every rank (gathered with gradients): the value open_clip's neighbour exchange
    gives on that rank, whichever ``dist_impl`` it uses (accepted for compatibility).
    ``cache_labels`` is accepted for compatibility (no labels are materialised). ``chunk_size``
    (open_clip after 3.3: compute the logits in blocks of that many image rows, 0 = all at once) is
    accepted and kept; the fused kernel always works in row blocks (bounded by ``memory_budget``)
    and never holds the B x B logits, whatever its value.
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 dist_impl: Optional[str] = None, chunk_size: int = 0, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__()
        _check_group(rank, world_size)
        if dist_impl is not None and dist_impl not in _SIGLIP_DIST_IMPLS:
            raise _DistImplError(f"dist_impl must be one of {_SIGLIP_DIST_IMPLS} or None, got {dist_impl!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ValueError(f"chunk_size must be an int >= 0 (0: no chunks), got {chunk_size!r}")
        self.cache_labels, self.rank, self.world_size = cache_labels, rank, world_size
        self.dist_impl, self.chunk_size, self.memory_budget = dist_impl or "bidir", chunk_size, memory_budget
        self.prev_num_logits, self.labels = 0, {}

    def get_ground_truth(self, device, dtype, num_logits, negative_only: bool = False) -> Tensor:
        """open_clip's label matrix: -1 everywhere, +1 on the diagonal unless ``negative_only``."""
        labels = torch.full((num_logits, num_logits), -1.0, device=device, dtype=dtype)
        if not negative_only:
            labels.diagonal().fill_(1.0)
        return labels

    def get_logits(self, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias=None) -> Tensor:
        """open_clip's logits ``logit_scale * image_features @ text_features.T (+ logit_bias)``, [B, B]."""
        _check_pair(image_features, text_features)
        logits = logit_scale * image_features @ text_features.T
        if logit_bias is not None:
            logits += logit_bias
        return logits

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias=None,
                output_dict: bool = False):
        if logit_bias is None:
            raise ValueError("SigLipLoss needs logit_bias (the model's learnable bias, e.g. -10 at init); got None")
        _check_pair(image_features, text_features)
        check_features(image_features, text_features)
        gather = self.world_size > 1
        if gather:
            _check_process_group("SigLipLoss", self.rank, self.world_size)  # siglip_loss checks the batch sizes
        loss = siglip_loss(image_features, text_features, logit_scale, logit_bias, gather=gather,
                           memory_budget=self.memory_budget)
        return {"contrastive_loss": loss} if output_dict else loss
