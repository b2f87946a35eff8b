"""The task protocol: everything the training loop must not know about (texts, images, tokenisers).

The loop (``hbfast.train.loop``) plans hybrid batches over ``task.availability``, asks the task
to ``collate`` each batch's ``(item, query_lang, passage_lang)`` rows into inputs, to ``encode``
each side, and to save / load its model. ``TextPairTask`` is the text implementation (shared-weight
dual encoder over ``ParallelPairs``); an image-text task implements the same few members.

Protocol (stable; members may be added, never changed):

- ``languages: tuple[str, ...]`` and ``availability: np.ndarray`` bool [items, languages];
- ``build_model() -> torch.nn.Module`` (called once; the loop moves it to the device and optimises
  all its parameters that require grad);
- ``collate(rows) -> Batch`` for rows ``[(item, query_lang, passage_lang), ...]``;
- ``to_device(inputs, device) -> inputs`` for ``Batch.query`` / ``Batch.passage``;
- ``encode(model, side, inputs) -> Tensor [b, d]`` with ``side`` in ``("query", "passage")``;
- ``split(inputs, size) -> list`` of consecutive mini-batches of at most ``size`` rows, in row
  order (the cached-embedding mode embeds them one at a time);
- ``save_model(model, directory)`` and ``load_model(model, directory)`` (weights only, strict);
- ``describe() -> dict`` of JSON values that fix the task (a checkpoint whose description
  differs is refused on resume).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..encoders import PASSAGE_PREFIX, QUERY_PREFIX

SIDES = ("query", "passage")


@dataclasses.dataclass
class Batch:
    """One local batch: the task's inputs for each side and the group ids of its rows."""

    query: Any
    passage: Any
    group_ids: torch.Tensor  # int64 [b]; rows with equal ids are not each other's negatives
    rows: list  # the [(item, query_lang, passage_lang)] it was made from

    def __len__(self) -> int:
        return len(self.rows)


@runtime_checkable
class TrainTask(Protocol):
    languages: tuple
    availability: np.ndarray

    def build_model(self) -> torch.nn.Module: ...
    def collate(self, rows: Sequence[tuple]) -> Batch: ...
    def to_device(self, inputs: Any, device: torch.device) -> Any: ...
    def encode(self, model: torch.nn.Module, side: str, inputs: Any) -> torch.Tensor: ...
    def split(self, inputs: Any, size: int) -> list: ...
    def save_model(self, model: torch.nn.Module, directory) -> None: ...
    def load_model(self, model: torch.nn.Module, directory) -> None: ...
    def describe(self) -> dict: ...


def pad_token_ids(rows: Sequence[Sequence[int]], pad_id: int) -> dict:
    """``input_ids`` / ``attention_mask`` [b, longest row of this batch]."""
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        attention_mask[i, :len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class TextPairTask:
    """Parallel query/passage texts with one shared :class:`~hbfast.train.model.TextEncoder`.

    ``model``: a sentence-transformers or transformers directory or hub id (default: packaged
    all-MiniLM-L6-v2). Tokens are computed once per language and side (``datasets`` cache);
    ``prefixes`` adds "Query: " / "Passage: ". ``tokens_from`` reuses another task's model
    (the held-out task shares the training task's tokenizer).
    """

    def __init__(self, pairs, model=None, *, max_length: int = 128, pooling: str | None = None,
                 prefixes: bool = False, dropout: float | None = None, freeze_embeddings: bool = False,
                 tokens_from: "TextPairTask | None" = None):
        from ..data.pairs import tokenize_pairs
        from .model import TextEncoder

        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.pairs, self.languages, self.availability = pairs, pairs.languages, pairs.availability
        self.model_name = str(model) if model is not None else "all-MiniLM-L6-v2 (packaged)"
        self.max_length, self.prefixes, self.freeze_embeddings = max_length, prefixes, freeze_embeddings
        if tokens_from is not None:
            self._model = tokens_from._model
        else:
            self._model = TextEncoder.load(model, pooling=pooling, dropout=dropout, max_length=max_length)
        self.pooling = self._model.pooling
        tokenizer = self._model.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        q_prefix, p_prefix = (QUERY_PREFIX, PASSAGE_PREFIX) if prefixes else ("", "")
        self.tokens = tokenize_pairs(pairs, tokenizer, max_length, query_prefix=q_prefix, passage_prefix=p_prefix)
        self.groups = torch.as_tensor(pairs.groups, dtype=torch.long)

    def build_model(self) -> torch.nn.Module:
        if self.freeze_embeddings:
            self._model.encoder.get_input_embeddings().requires_grad_(False)
        return self._model

    def collate(self, rows: Sequence[tuple]) -> Batch:
        sides = []
        for side, column in (("query", 1), ("passage", 2)):
            ids = [self.tokens[side][self.languages[r[column]]][r[0]] for r in rows]
            if any(x is None for x in ids):
                raise ValueError(f"a batch asks for a {side} in a language its item lacks: {list(rows)[:4]}")
            sides.append(pad_token_ids(ids, self.pad_id))
        items = torch.as_tensor([r[0] for r in rows], dtype=torch.long)
        return Batch(sides[0], sides[1], self.groups[items], list(rows))

    def to_device(self, inputs: dict, device) -> dict:
        return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}

    def encode(self, model, side: str, inputs: dict) -> torch.Tensor:
        return model(inputs["input_ids"], inputs["attention_mask"])  # [b, d]

    def split(self, inputs: dict, size: int) -> list:
        """Mini-batches of ``size`` rows, each trimmed to its own longest sequence."""
        out = []
        for start in range(0, inputs["input_ids"].shape[0], size):
            mask = inputs["attention_mask"][start:start + size]
            longest = int(mask.sum(1).max())
            out.append({k: v[start:start + size, :longest] for k, v in inputs.items()})
        return out

    def save_model(self, model, directory) -> None:
        model.save(directory)

    def load_model(self, model, directory) -> None:
        model.load_weights(directory)

    def describe(self) -> dict:
        return {"task": "text-pairs", "model": self.model_name, "languages": list(self.languages),
                "items": len(self.pairs), "max_length": self.max_length, "pooling": self.pooling,
                "prefixes": self.prefixes, "freeze_embeddings": self.freeze_embeddings}
