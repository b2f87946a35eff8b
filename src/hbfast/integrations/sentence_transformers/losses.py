"""sentence-transformers' in-batch losses computed by hbfast's fused kernel.

The losses subclass sentence-transformers' own ``MultipleNegativesRankingLoss`` /
``CachedMultipleNegativesRankingLoss`` (same arguments, ``forward(sentence_features, labels)``,
``model``, ``get_config_dict()``, ``citation``) and replace only the score matrix: the value
comes from :func:`hbfast.contrastive_loss`, which never builds the B x B(1 + n) matrix. Settings
the kernel does not cover run sentence-transformers' own code (see :class:`FallbackWarning`).
Tested with sentence-transformers 6.3 (see docs/drop-ins.md).
"""
from __future__ import annotations

import warnings
from numbers import Real
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from sentence_transformers import util as _st_util

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer import losses as st_losses
except ImportError:  # pragma: no cover - sentence-transformers 5.x
    from sentence_transformers import losses as st_losses

from ...ops.loss import DEFAULT_MEMORY_BUDGET, contrastive_loss

__all__ = ["CachedMultipleNegativesRankingLoss", "CachedMultipleNegativesSymmetricRankingLoss", "FallbackWarning",
           "MultipleNegativesRankingLoss", "MultipleNegativesSymmetricRankingLoss", "group_size", "st_losses",
           "unfused_reason"]
_QUERY_TO_DOC = ("query_to_doc",)
_SYMMETRIC = {"query_to_doc", "doc_to_query"}


class FallbackWarning(UserWarning):
    """A drop-in loss was configured with an option hbfast's fused kernel does not compute; that
    loss instance runs sentence-transformers' own code (same values, with its B x B score matrix).

    Fused: ``similarity_fct`` = ``util.cos_sim`` / ``util.dot_score`` (or ``model.similarity`` of a
    cosine / dot model), ``directions=("query_to_doc",)`` (either ``partition_mode``) or
    ``("query_to_doc", "doc_to_query")`` (either ``partition_mode``; "joint" costs two kernel calls),
    ``hardness_mode`` None (or ``hardness_strength=0``), with or without ``gather_across_devices``.
    Anything else (other similarities, ``query_to_query`` / ``doc_to_doc``, hardness weighting)
    falls back, with this warning once per loss instance.
    """


def _normalizes(similarity_fct: Callable) -> Optional[bool]:
    """True for cosine, False for dot product, None for a similarity the kernel cannot compute."""
    if similarity_fct in (_st_util.cos_sim, _st_util.pytorch_cos_sim):
        return True
    if similarity_fct is _st_util.dot_score:
        return False
    owner = getattr(similarity_fct, "__self__", None)  # model.similarity, bound to the model's own function
    if getattr(similarity_fct, "__name__", None) == "similarity" and hasattr(owner, "similarity_fn_name"):
        if owner.similarity_fn_name in ("cosine", "dot"):
            return owner.similarity_fn_name == "cosine"
    return None


def unfused_reason(loss) -> Optional[str]:
    """Why ``loss`` (a MultipleNegativesRankingLoss's settings) cannot run on the fused kernel; None if it can."""
    scale = loss.scale
    if isinstance(scale, bool) or not isinstance(scale, Real) or not np.isfinite(scale):
        return f"scale={scale!r} (fused: a finite number)"
    if _normalizes(loss.similarity_fct) is None:
        name = getattr(loss.similarity_fct, "__name__", type(loss.similarity_fct).__name__)
        return f"similarity_fct={name} (fused: cos_sim, dot_score)"
    if getattr(loss, "hardness_mode", None) is not None and getattr(loss, "hardness_strength", 0.0) > 0:
        return f"hardness_mode={loss.hardness_mode!r} with hardness_strength={loss.hardness_strength}"
    directions = set(getattr(loss, "directions", _QUERY_TO_DOC))
    if directions in ({"query_to_doc"}, _SYMMETRIC):
        return None
    return (f"directions={tuple(loss.directions)} (fused: ('query_to_doc',) and ('query_to_doc', 'doc_to_query'), "
            "either partition_mode)")


def _check_memory_budget(memory_budget) -> None:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0:
        raise ValueError(f"memory_budget must be an int >= 0 (bytes), got {memory_budget!r}")


def _warn_fallback(what: str, reason: str, stacklevel: int) -> None:
    warnings.warn(FallbackWarning(
        f"hbfast {what}: {reason} is not fused; this loss runs sentence-transformers' own code "
        "(the full score matrix)"), stacklevel=stacklevel + 1)


def group_size() -> int:
    """The torch.distributed world size, 1 outside an initialised process group."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gathers(gather_across_devices: bool) -> bool:
    """Like sentence-transformers: no gathering outside an initialised torch.distributed group."""
    return bool(gather_across_devices) and group_size() > 1


class MultipleNegativesRankingLoss(st_losses.MultipleNegativesRankingLoss):
    """sentence-transformers' ``MultipleNegativesRankingLoss`` (InfoNCE with in-batch negatives) on
    hbfast's fused kernel: same arguments, value and gradients, without the score matrix.

    Columns: (anchor, positive) pairs or (anchor, positive, negative_1, ..., negative_n) tuples; the
    negatives join every anchor's candidates. Every argument of sentence-transformers' class is
    accepted and checked by it (same errors). Fused: see :class:`FallbackWarning`; other settings
    compute sentence-transformers' own loss (``fused`` is then False and a FallbackWarning is
    issued when the loss is built). ``gather_across_devices=True`` under torch.distributed scores
    each rank's anchors against every rank's candidates (``contrastive_loss(gather=True)``).
    ``memory_budget`` (bytes, keyword only) bounds the score blocks kept for the backward.
    """

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable[[Tensor, Tensor], Tensor] = _st_util.cos_sim,
                 gather_across_devices: bool = False, directions: Tuple[str, ...] = _QUERY_TO_DOC,
                 partition_mode: str = "joint", hardness_mode: Optional[str] = None, hardness_strength: float = 0.0,
                 *, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__(model, scale=scale, similarity_fct=similarity_fct, gather_across_devices=gather_across_devices,
                         directions=directions, partition_mode=partition_mode, hardness_mode=hardness_mode,
                         hardness_strength=hardness_strength)
        _check_memory_budget(memory_budget)
        self.memory_budget = memory_budget
        reason = unfused_reason(self)
        if reason is not None:
            _warn_fallback(type(self).__name__, reason, stacklevel=2)

    @property
    def fused(self) -> bool:
        """Whether the current settings run on hbfast's kernel (else on sentence-transformers' code)."""
        return unfused_reason(self) is None

    def compute_loss_from_embeddings(self, embeddings: List[Tensor], labels: Optional[Tensor] = None) -> Tensor:
        """The loss from one embedding tensor per column: anchors [B, D], positives [P, D] (P >= B: rows
        past B are more candidates, as in sentence-transformers), negatives [*, D]. Columns that do not
        fit that layout (or, under torch.distributed, columns of different sizes) go to
        sentence-transformers' own code, so they raise its errors or get its values."""
        if len(embeddings) < 2:
            raise ValueError(f"Expected at least 2 embeddings, got {len(embeddings)}")
        gather = _gathers(self.gather_across_devices)
        if not self.fused or not _fusable_columns(embeddings, gather):
            return super().compute_loss_from_embeddings(embeddings, labels)
        anchors, positives = embeddings[0], embeddings[1]
        b = anchors.shape[0]
        candidates = [positives[b:]] + list(embeddings[2:])  # every column's rows past the pairs
        candidates = [c for c in candidates if c.shape[0] > 0]
        hard_negatives = torch.cat(candidates, 0) if candidates else None
        symmetric = set(self.directions) == _SYMMETRIC
        kw = dict(temperature=1.0 / self.scale, hard_negatives=hard_negatives, normalize=_normalizes(self.similarity_fct),
                  gather=gather, memory_budget=self.memory_budget)
        if not symmetric or self.partition_mode == "per_direction":
            return contrastive_loss(anchors, positives[:b], symmetric=symmetric, **kw)
        # one softmax over anchor i's candidates and positive i's anchors: logaddexp of the two directions'
        # per-row losses (both are logsumexp - positive score); the symmetric loss is their mean
        rows = contrastive_loss(anchors, positives[:b], symmetric=False, reduction="none", **kw)
        both = contrastive_loss(anchors, positives[:b], symmetric=True, reduction="none", **kw)
        return torch.logaddexp(rows, 2 * both - rows).mean()


def _fusable_columns(embeddings: List[Tensor], gather: bool) -> bool:
    """Floating matrices of one width, dtype and device, at least as many positives as anchors (the
    same number of rows in every column when gathered across ranks)."""
    anchors = embeddings[0]
    if not all(isinstance(t, Tensor) and t.dim() == 2 and t.is_floating_point() for t in embeddings):
        return False
    if anchors.shape[0] == 0 or embeddings[1].shape[0] < anchors.shape[0]:
        return False
    if any(t.shape[1] != anchors.shape[1] or t.dtype != anchors.dtype or t.device != anchors.device
           for t in embeddings):
        return False
    return not gather or all(t.shape[0] == anchors.shape[0] for t in embeddings)


class MultipleNegativesSymmetricRankingLoss(MultipleNegativesRankingLoss):
    """sentence-transformers' ``MultipleNegativesSymmetricRankingLoss`` on hbfast's kernel: the mean of
    the anchor -> candidates loss (negatives included) and the positive -> anchors loss."""

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable[[Tensor, Tensor], Tensor] = _st_util.cos_sim,
                 gather_across_devices: bool = False, *, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__(model, scale, similarity_fct, gather_across_devices, directions=("query_to_doc", "doc_to_query"),
                         partition_mode="per_direction", memory_budget=memory_budget)


class CachedMultipleNegativesRankingLoss(st_losses.CachedMultipleNegativesRankingLoss):
    """sentence-transformers' ``CachedMultipleNegativesRankingLoss`` (GradCache) with the fused loss.

    sentence-transformers' own GradCache steps are kept (embed the mini-batches without grad,
    replaying their random state when re-embedding them with grad; ``mini_batch_size``,
    ``mini_batch_num_tokens``, ``show_progress_bar``, DDP handling); only the loss over the whole
    batch and its gradient with respect to the embeddings (step 2) run on hbfast's kernel, in one
    call with no B x B matrix and no mini-batch loop over the loss. Same arguments (checked by
    sentence-transformers) and results; settings the kernel does not cover run the library's own
    chunked loss (:class:`FallbackWarning`). ``self.loss`` is hbfast's
    :class:`MultipleNegativesRankingLoss` with the same settings; ``memory_budget``: see it.
    """

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable[[Tensor, Tensor], Tensor] = _st_util.cos_sim,
                 mini_batch_size: int = 32, mini_batch_num_tokens: Optional[int] = None,
                 gather_across_devices: bool = False, directions: Tuple[str, ...] = _QUERY_TO_DOC,
                 partition_mode: str = "joint", show_progress_bar: bool = False, hardness_mode: Optional[str] = None,
                 hardness_strength: float = 0.0, *, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__(model, scale=scale, similarity_fct=similarity_fct, mini_batch_size=mini_batch_size,
                         mini_batch_num_tokens=mini_batch_num_tokens, gather_across_devices=gather_across_devices,
                         directions=directions, partition_mode=partition_mode, show_progress_bar=show_progress_bar,
                         hardness_mode=hardness_mode, hardness_strength=hardness_strength)
        _check_memory_budget(memory_budget)
        with warnings.catch_warnings():  # warned below, naming this class
            warnings.simplefilter("ignore", FallbackWarning)
            self.loss = MultipleNegativesRankingLoss(
                model, scale=scale, similarity_fct=similarity_fct, gather_across_devices=gather_across_devices,
                directions=directions, partition_mode=partition_mode, hardness_mode=hardness_mode,
                hardness_strength=hardness_strength, memory_budget=memory_budget)
        reason = unfused_reason(self.loss)
        if reason is not None:
            _warn_fallback(type(self).__name__, reason, stacklevel=2)

    @property
    def memory_budget(self) -> int:
        return self.loss.memory_budget

    @property
    def fused(self) -> bool:
        return self.loss.fused

    def calculate_loss(self, reps: List[List[Tensor]], labels: Optional[Tensor] = None, *,
                       with_backward: bool = False) -> Tensor:
        """The loss of the whole batch from the per-mini-batch embeddings; with ``with_backward`` its
        gradients reach the embeddings (``rep.grad``) and the detached value is returned."""
        if not self.fused:
            return super().calculate_loss(reps, labels, with_backward=with_backward)
        loss = self.loss.compute_loss_from_embeddings([torch.cat(column) for column in reps], labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss


class CachedMultipleNegativesSymmetricRankingLoss(CachedMultipleNegativesRankingLoss):
    """sentence-transformers' ``CachedMultipleNegativesSymmetricRankingLoss`` with the fused loss:
    :class:`CachedMultipleNegativesRankingLoss` with directions ("query_to_doc", "doc_to_query") and
    ``partition_mode="per_direction"``."""

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable[[Tensor, Tensor], Tensor] = _st_util.cos_sim,
                 mini_batch_size: int = 32, mini_batch_num_tokens: Optional[int] = None,
                 gather_across_devices: bool = False, show_progress_bar: bool = False, *,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__(model, scale, similarity_fct, mini_batch_size, mini_batch_num_tokens, gather_across_devices,
                         directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
                         show_progress_bar=show_progress_bar, memory_budget=memory_budget)
