"""Hybrid image-text batches streamed from tar shards (``train-clip --stream``): no rank holds more
than a bounded buffer of samples, yet every global step is one batch kind on all ranks.

Exists because LAION-scale data does not fit in memory. Each rank reads its own shards
(:class:`~hbfast.clip.shards.TarShardStream`, dealt round-robin by rank) into a buffer of about
``buffer_size`` samples, cycling over them pass after pass. The KIND of global step ``s`` (X-X with
probability alpha, and its language) comes from an RNG seeded by ``(seed, s)`` that every rank
draws alike; each rank then fills its local batch from its buffer with samples that fit the kind
(X-X: a caption in that language; X-Y: each row's caption language drawn among the languages of
its sample, so languages mix across the batch), reading more when the buffer lacks them. If some
rank still cannot fill an X-X batch, all ranks agree (one all-reduce) to make the step X-Y, and
the plan log says so.

Resume is at shard granularity: the state (per rank) is the pass number and the shards of that
pass whose samples were all consumed. A resumed run skips those and reads the others again from
their start, so samples of a shard in progress can be seen twice, and samples of an earlier pass
still buffered at the checkpoint are dropped. Weights, optimizer, scale and RNG states resume
exactly; the batches after the resume are not those of an uninterrupted run.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .task import ClipTask
from .shards import IMAGE_EXTENSIONS, TarShardStream, captions_of, list_shards

log = logging.getLogger("hbfast.clip.stream")
SAMPLES_PER_SHARD_ID = 10_000_000  # group id of a sample: shard index x this + position in the shard


def expand_shards(spec: str | Path) -> list:
    """Shard paths from ``dir/{000..099}.tar`` (brace ranges, zero padding kept, as webdataset), a
    directory of ``.tar`` shards or one file; every expanded path must exist."""
    spec = str(spec)
    match = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if match is None:
        return list_shards(spec)
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise ValueError(f"{spec}: the range {{{first}..{last}}} is empty")
    width = len(first) if first.startswith("0") else 0
    paths = []
    for n in range(int(first), int(last) + 1):
        paths.extend(expand_shards(spec[:match.start()] + str(n).zfill(width) + spec[match.end():]))
    return paths


class StreamingHybridBatches:
    """``next_batch(step) -> (samples, kind)`` for one rank. ``samples``: dicts with ``key``,
    ``uid`` (unique over the data), ``captions`` ({language: text}), ``query_lang`` / ``passage_lang``
    (indices into ``languages``) and ``image`` (bytes) or ``npy`` (a precomputed embedding)."""

    def __init__(self, shards, languages: Sequence[str], local_batch: int, *, alpha: float, seed: int, rank: int,
                 world_size: int, buffer_size: int = 4096, on_corrupt: str = "skip", embeddings: bool = False,
                 agree=None):
        self.shards = expand_shards(shards) if isinstance(shards, (str, Path)) else list(shards)
        if len(self.shards) < world_size:
            raise ValueError(f"{len(self.shards)} shard(s) for {world_size} processes: every process needs a shard")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if buffer_size < local_batch:
            raise ValueError(f"the stream buffer ({buffer_size}) must hold at least one local batch ({local_batch})")
        self.languages, self.local_batch, self.alpha, self.seed = tuple(languages), int(local_batch), alpha, seed
        self.rank, self.world_size, self.buffer_size = rank, world_size, int(buffer_size)
        self.on_corrupt, self.embeddings = on_corrupt, embeddings
        self.agree = agree or (lambda ok: ok)  # all ranks' AND of a flag (an all-reduce under DDP)
        self.epoch, self.done, self.buffer, self.corrupt = 0, set(), [], 0
        self._left = {}  # shard -> samples read but not consumed (absent until its last sample is read)
        self._reader, self._read_any = None, False

    # ---- reading -----------------------------------------------------------------------------------
    def _open(self) -> None:
        stream = TarShardStream(self.shards, rank=self.rank, world_size=self.world_size, skip=self.done,
                                on_corrupt=self.on_corrupt)
        self._stream, self._reader, self._read_any = stream, iter(stream), False

    def _read_one(self) -> bool:
        """Append one usable sample to the buffer; False when this pass of the shards is over."""
        if self._reader is None:
            self._open()
        for raw in self._reader:
            shard = int(raw["__shard__"])
            self._left.setdefault(shard, [0, 0, False])  # [read, consumed, last sample read]
            entry = self._left[shard]
            position, entry[0] = entry[0], entry[0] + 1
            entry[2] = bool(raw["__shard_end__"])
            sample = self._sample(raw, shard, position)
            if sample is None:
                entry[1] += 1  # nothing to train on: consumed at once
                self._finish(shard)
                continue
            self.buffer.append(sample)
            self._read_any = True
            return True
        self.corrupt += len(self._stream.corrupt)
        if not self._read_any and not self.buffer:
            raise ValueError(f"rank {self.rank}: its shards {self._stream.my_shards()} hold no sample with an "
                             f"{'npy embedding' if self.embeddings else 'image'} and a caption in {list(self.languages)}")
        # samples of the pass just over that are still buffered are consumed untracked
        self.epoch, self.done, self._left, self._reader = self.epoch + 1, set(), {}, None
        log.info("rank %d: pass %d over its shards begins", self.rank, self.epoch)
        return False

    def _sample(self, raw: dict, shard: int, position: int) -> Optional[dict]:
        captions = {k: v for k, v in captions_of(raw).items() if k in self.languages}
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
        if not captions or (self.embeddings and "npy" not in raw) or (not self.embeddings and image_ext is None):
            return None
        sample = {"key": raw["__key__"], "shard": shard, "epoch": self.epoch, "captions": captions,
                  "uid": shard * SAMPLES_PER_SHARD_ID + position}
        if self.embeddings:
            sample["npy"] = np.asarray(raw["npy"], dtype=np.float32).reshape(-1)
        else:
            sample["image"] = raw[image_ext]
        return sample

    def _finish(self, shard: int) -> None:
        read, consumed, ended = self._left[shard]
        if ended and consumed == read:
            del self._left[shard]
            self.done.add(shard)

    def _top_up(self, need=None) -> None:
        """Read until the buffer holds ``buffer_size`` samples (or ``need(buffer)`` holds), at most one pass."""
        while len(self.buffer) < self.buffer_size and (need is None or not need()):
            if not self._read_one():
                break

    # ---- batches -----------------------------------------------------------------------------------
    def kind(self, step: int) -> tuple:
        """("X-X", language index) or ("X-Y", None) of global ``step``: the same on every rank."""
        rng = np.random.default_rng([self.seed, step])
        mono, lang = bool(rng.random() < self.alpha), int(rng.integers(len(self.languages)))
        return ("X-X", lang) if mono else ("X-Y", None)

    def next_batch(self, step: int) -> tuple:
        kind, lang = self.kind(step)
        name = self.languages[lang] if lang is not None else None
        rng = np.random.default_rng([self.seed, step, self.rank, 1])
        self._top_up()
        while len(self.buffer) < self.local_batch:  # a pass ended with too few: read on into the next
            self._read_one()
        fallback = None
        if kind == "X-X":
            def fits():
                return sum(name in s["captions"] for s in self.buffer) >= self.local_batch
            if not fits():  # read past the buffer size for captions in this language, up to one pass
                while not fits() and len(self.buffer) < 4 * self.buffer_size and self._read_one():
                    pass
            if not self.agree(fits()):
                kind, fallback = "X-Y", f"X-X {name} could not be filled on every rank"
                log.warning("step %d: %s; the step is X-Y", step, fallback)
        if kind == "X-X":
            candidates = [i for i, s in enumerate(self.buffer) if name in s["captions"]]
        else:
            candidates = list(range(len(self.buffer)))
        chosen = sorted(rng.choice(candidates, size=self.local_batch, replace=False).tolist())
        samples = [self.buffer[i] for i in chosen]
        for i in reversed(chosen):
            del self.buffer[i]
        for s in samples:
            if kind == "X-X":
                s["query_lang"] = s["passage_lang"] = lang
            else:
                have = [self.languages.index(x) for x in s["captions"]]
                s["query_lang"], s["passage_lang"] = (int(x) for x in rng.choice(have, size=2))
            if s["epoch"] == self.epoch and s["shard"] in self._left:
                self._left[s["shard"]][1] += 1
                self._finish(s["shard"])
        label = f"X-X {name}" if kind == "X-X" else "X-Y"
        return samples, label, fallback

    # ---- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "done": sorted(self.done), "corrupt": self.corrupt}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.done, self.corrupt = int(state["epoch"]), set(state["done"]), int(state.get("corrupt", 0))
        self.buffer, self._left, self._reader = [], {}, None


def batch_as_data(samples: list, languages: Sequence[str]):
    """The batch's samples as an :class:`~hbfast.clip.data.ImageTextData` of ``len(samples)`` images."""
    from .data import ImageTextData

    captions = {lang: [s["captions"].get(lang) for s in samples] for lang in languages}
    if "npy" in samples[0]:
        return ImageTextData(tuple(languages), captions, None, np.stack([s["npy"] for s in samples]), "stream")
    return ImageTextData(tuple(languages), captions, [{"bytes": s["image"], "path": s["key"]} for s in samples],
                         None, "stream")


class StreamClipTask(ClipTask):
    """:class:`~hbfast.clip.task.ClipTask` for streamed batches: no availability table (the trainer
    asks the stream for each step's samples, ``collate`` gets them); a batch's group ids are its
    samples' ``uid``."""

    def __init__(self, model, languages: Sequence[str], *, translation_pairs: bool = False, name: str = "",
                 embeddings: bool = False, shards: int = 0):
        if not embeddings and model.image_tower is None:
            raise ValueError("the model has no image tower: stream shards with npy embeddings, or give --image-model")
        self.model, self.languages, self.availability = model, tuple(languages), None
        self.data = self.features = self.criterion = None
        self.translation_pairs, self.name, self.embeddings, self.shards = translation_pairs, name, embeddings, shards

    def collate(self, samples: list):
        self.data = batch_as_data(samples, self.languages)
        self.features = self.data.features
        if self.features is not None and self.features.shape[1] != self.model.image_width:
            raise ValueError(f"shard embeddings have dimension {self.features.shape[1]}, the model's image side "
                             f"expects {self.model.image_width}")
        batch = super().collate([(i, s["query_lang"], s["passage_lang"]) for i, s in enumerate(samples)])
        uids = torch.as_tensor([s["uid"] for s in samples], dtype=torch.long)
        batch.group_ids = uids
        if getattr(batch, "translation", None) is not None:
            batch.translation = (*batch.translation[:2], uids[batch.translation[2]])
        return batch

    def describe(self) -> dict:
        return {"task": "image-text stream", "model": self.name, "languages": list(self.languages),
                "shards": self.shards, "dim": self.model.dim, "image_width": self.model.image_width,
                "shard_embeddings": self.embeddings, "freeze_image": self.model.freeze_image,
                "translation_pairs": self.translation_pairs, "image_text_loss": self.model.image_text_loss}
