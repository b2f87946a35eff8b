"""Hybrid batch training: a task-generic loop (``Trainer``) and the text dual encoder task.

``train(TrainConfig(...), model=..., data=...)`` is what ``hbfast train`` runs: load the parallel
pairs, hold out a split by item, build the :class:`TextPairTask` and run the :class:`Trainer`.
Other tasks (image-text) implement the :class:`TrainTask` protocol and reuse the loop.
"""
from __future__ import annotations

from .checkpoint import CheckpointError
from .config import TrainConfig
from .loop import Trainer
from .task import Batch, TextPairTask, TrainTask


def text_tasks(config: TrainConfig, *, model=None, data="mlqa-r", languages=None, max_length: int = 128,
               pooling: str | None = None, prefixes: bool = False, dropout: float | None = None,
               freeze_embeddings: bool = False):
    """(training task, held-out task or None) for ``data`` (see :func:`hbfast.data.pairs.load_pairs`)."""
    from ..data.pairs import load_pairs, split_heldout

    pairs = load_pairs(data, languages)
    train_pairs, heldout_pairs = split_heldout(pairs, config.heldout, seed=config.seed)
    task = TextPairTask(train_pairs, model, max_length=max_length, pooling=pooling, prefixes=prefixes,
                        dropout=dropout, freeze_embeddings=freeze_embeddings)
    heldout = None
    if heldout_pairs is not None:
        heldout = TextPairTask(heldout_pairs, model, max_length=max_length, prefixes=prefixes, tokens_from=task)
    return task, heldout


def train(config: TrainConfig, **text_options) -> dict:
    """Train a text dual encoder; ``text_options`` as :func:`text_tasks`. Returns the run's summary."""
    task, heldout = text_tasks(config, **text_options)
    return Trainer(task, config, heldout).run()


__all__ = ["Batch", "CheckpointError", "TextPairTask", "TrainConfig", "TrainTask", "Trainer", "text_tasks", "train"]
