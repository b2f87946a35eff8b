"""Hybrid image-text batches: sampler rows (image, caption language, second language) -> tensors.

Exists because image-text training reuses the text trainer's hybrid batch sampler unchanged: an
item is an image, its availability row says which languages caption it, and each sampled row's
query language picks the caption. X-X batches therefore hold captions of one language, X-Y
batches mixed languages; in X-Y rows the second language gives an optional text-text translation
pair (the image's captions in two languages) for an extra cross-lingual loss term.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

BATCH_TYPES = {"X-X": 1.0, "X-Y": 0.0}


def batch_alpha(batch_type: str, alpha: float) -> float:
    """The sampler's alpha for ``--batch-type``: X-X = 1, X-Y = 0, hybrid = ``alpha``."""
    if batch_type == "hybrid":
        return float(alpha)
    if batch_type not in BATCH_TYPES:
        raise ValueError(f"batch type must be hybrid, X-X or X-Y, got {batch_type!r}")
    return BATCH_TYPES[batch_type]


class ClipCollate:
    """Builds a training batch from sampler rows ``[(item, query_lang, passage_lang), ...]``.

    ``features`` (an [N, W] array or :class:`~hbfast.clip.cache.ShardedArray`) replaces image
    decoding when the image tower is frozen and cached. ``translation_pairs`` adds the tokens of
    the X-Y rows' second-language captions.
    """

    def __init__(self, data, model, *, features=None, translation_pairs: bool = False):
        self.data, self.model, self.features, self.translation_pairs = data, model, features, translation_pairs

    def __call__(self, rows: Sequence) -> dict:
        items = [int(r[0]) for r in rows]
        query_lang = [int(r[1]) for r in rows]
        texts = [self.data.caption(i, q) for i, q in zip(items, query_lang)]
        batch = {"items": torch.tensor(items), "caption_lang": torch.tensor(query_lang),
                 "tokens": self.model.tokenize(texts)}
        if self.features is not None:
            batch["features"] = torch.from_numpy(np.asarray(self.features[items], dtype=np.float32))
        else:
            batch["pixels"] = self.model.preprocess([self.data.load_image(i) for i in items])
        if self.translation_pairs:
            cross = [(i, q, p) for i, q, p in ((int(a), int(b), int(c)) for a, b, c in rows) if q != p]
            if cross:
                batch["pair_query_tokens"] = self.model.tokenize([self.data.caption(i, q) for i, q, _ in cross])
                batch["pair_passage_tokens"] = self.model.tokenize([self.data.caption(i, p) for i, _, p in cross])
        return batch


def clip_batch_loss(model, batch: dict, *, loss: str = "contrastive", translation_weight: float = 0.0,
                    gather: bool = False) -> tuple:
    """(total loss, parts) of one batch: image-text loss plus ``translation_weight`` x text-text loss."""
    from .model import clip_loss

    text = model.encode_text(batch["tokens"])
    if "features" in batch:
        image = model.encode_image(features=batch["features"])
    else:
        image = model.encode_image(pixels=batch["pixels"])
    image_text = clip_loss(text, image, model.logit_scale, loss=loss, gather=gather)
    parts = {"image_text": float(image_text.detach())}
    total = image_text
    if translation_weight > 0:
        translation = _translation_loss(model, batch, loss, gather)
        if translation is not None:
            total = total + translation_weight * translation
            parts["translation"] = float(translation.detach())
    return total, parts


def _translation_loss(model, batch: dict, loss: str, gather: bool) -> Optional[torch.Tensor]:
    # Under DDP every rank's batch is the same kind (the sampler's coherence), so either all ranks
    # have X-Y pairs or none; the gathered loss then sees the same number of rows per rank only if
    # each rank's batch has equal size, which the sampler guarantees for full batches.
    if "pair_query_tokens" not in batch:
        return None
    from .model import clip_loss

    q = model.encode_text(batch["pair_query_tokens"])
    p = model.encode_text(batch["pair_passage_tokens"])
    return clip_loss(q, p, model.logit_scale, loss=loss, gather=gather)
