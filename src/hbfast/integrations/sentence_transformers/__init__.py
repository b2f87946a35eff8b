"""sentence-transformers drop-ins: its in-batch losses computed by hbfast's fused kernel, and a
batch sampler that gives ``SentenceTransformerTrainer`` hbfast's hybrid batches.

    from hbfast.integrations.sentence_transformers import MultipleNegativesRankingLoss, hybrid_batch_sampler

The losses subclass sentence-transformers' own ``MultipleNegativesRankingLoss`` /
``CachedMultipleNegativesRankingLoss`` (same arguments, ``forward(sentence_features, labels)``,
``model``, ``get_config_dict()``, ``citation``) and replace only the score matrix: the value
comes from :func:`hbfast.contrastive_loss`, which never builds the B x B(1 + n) matrix. Settings
the kernel does not cover run sentence-transformers' own code (see :class:`FallbackWarning`).
Tested with sentence-transformers 6.3 (see docs/drop-ins.md). The losses are in ``losses.py``, the
hybrid batches for ``SentenceTransformerTrainer`` in ``batches.py``.
"""
from .batches import DefaultBatchSampler, HybridDefaultBatchSampler, hybrid_batch_sampler, hybrid_pairs_dataset
from .losses import (CachedMultipleNegativesRankingLoss, CachedMultipleNegativesSymmetricRankingLoss, FallbackWarning,
                     MultipleNegativesRankingLoss, MultipleNegativesSymmetricRankingLoss, st_losses, unfused_reason)

__all__ = [
    "CachedMultipleNegativesRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "FallbackWarning",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "HybridDefaultBatchSampler",
    "hybrid_batch_sampler",
    "hybrid_pairs_dataset",
    "st_losses",
    "DefaultBatchSampler",
    "unfused_reason",
]
