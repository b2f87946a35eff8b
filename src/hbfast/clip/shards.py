"""Webdataset-style tar shards streamed without a full download: split by rank and by DataLoader
worker, resumable at shard granularity, corrupt shards skipped with a logged count (or fatal).

Exists for LAION-scale image-text data, which comes as many ``.tar`` shards whose members are
grouped into samples by key (``000123.jpg`` + ``000123.json`` [+ ``000123.npy``]): the image, its
captions per language (``{"captions": {"en": ..., "de": ...}}`` or ``{"en": ..., "de": ...}``) and
optionally a precomputed image embedding. Read with the standard ``tarfile`` module in streaming
mode (``r|*``), so a shard may be a local file or any readable stream (plain or gzip).
"""
from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

log = logging.getLogger("hbfast.clip.shards")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
ON_CORRUPT = ("skip", "fail")


class CorruptShardError(ValueError):
    """A shard could not be read to its end (``on_corrupt="fail"``)."""


def list_shards(source: str | os.PathLike | Sequence) -> list:
    """Shard paths from a directory (its ``*.tar`` / ``*.tar.gz``, sorted), a file, or a list."""
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    path = Path(source)
    if path.is_dir():
        shards = sorted(str(p) for p in path.iterdir() if p.name.endswith((".tar", ".tar.gz", ".tgz")))
        if not shards:
            raise ValueError(f"{path}: no .tar shards in this directory")
        return shards
    if not path.is_file():
        raise ValueError(f"shards {path} do not exist")
    return [str(path)]


def _split_key(name: str) -> tuple:
    directory, _, base = name.rpartition("/")
    key, dot, extension = base.partition(".")
    return (f"{directory}/{key}" if directory else key), extension.lower()


def captions_of(sample: dict) -> dict:
    """``{language: caption}`` from a sample's json (``{"captions": {...}}`` or a flat mapping of strings)."""
    meta = sample.get("json") or {}
    captions = meta.get("captions", meta) if isinstance(meta, dict) else {}
    return {str(k): str(v) for k, v in captions.items() if isinstance(v, str) and v.strip()}


def read_shard(path: str) -> Iterator[dict]:
    """Samples of one shard in member order: ``{"__key__", <extension>: bytes | parsed json | array}``."""
    with tarfile.open(path, mode="r|*") as tar:
        sample, key = {}, None
        for member in tar:
            if not member.isfile():
                continue
            member_key, extension = _split_key(member.name)
            data = tar.extractfile(member).read()
            if member_key != key:
                if sample:
                    yield sample
                sample, key = {"__key__": member_key}, member_key
            if extension == "json":
                sample["json"] = json.loads(data.decode("utf-8"))
            elif extension == "npy":
                sample["npy"] = np.load(io.BytesIO(data), allow_pickle=False)
            else:
                sample[extension] = data
        if sample:
            yield sample


class TarShardStream(torch.utils.data.IterableDataset):
    """Samples of ``shards``, dealt round-robin to ``world_size`` ranks, then a rank's round-robin to its DataLoader workers.

    Every sample carries ``__shard__`` (the shard's global index) and ``__shard_end__`` (True on the
    shard's last sample), so a consumer can record the shards it has finished and resume with
    ``skip=those`` (:class:`ShardProgress`). A shard that cannot be read to its end is logged and
    skipped (its samples already yielded stay yielded), counted in ``corrupt`` and in the log line
    at the end of the iteration; ``on_corrupt="fail"`` raises :class:`CorruptShardError` instead.
    """

    def __init__(self, shards, *, rank: Optional[int] = None, world_size: Optional[int] = None,
                 skip: Iterable[int] = (), on_corrupt: str = "skip"):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is None:
            import torch.distributed as dist

            initialised = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if initialised else (0, 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.shards, self.rank, self.world_size = list_shards(shards), int(rank), int(world_size)
        self.skip, self.on_corrupt, self.corrupt = set(int(s) for s in skip), on_corrupt, []

    def my_shards(self, worker: int = 0, workers: int = 1) -> list:
        """Global indices of the shards this rank's ``worker`` reads."""
        mine = [i for i in range(len(self.shards)) if i % self.world_size == self.rank]  # independent of workers
        return [i for k, i in enumerate(mine) if k % workers == worker and i not in self.skip]

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.corrupt = []
        for index in self.my_shards(worker, workers):
            path, previous = self.shards[index], None
            try:
                for sample in read_shard(path):
                    if previous is not None:
                        yield previous
                    previous = {**sample, "__shard__": index, "__shard_end__": False}
            except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeDecodeError) as e:
                if self.on_corrupt == "fail":
                    raise CorruptShardError(f"corrupt shard {path}: {e}") from None
                log.warning("skipping corrupt shard %s (%s: %s)", path, type(e).__name__, e)
                self.corrupt.append(path)
                if previous is not None:  # the samples read before the damage are still good
                    yield previous
                continue
            if previous is not None:
                yield {**previous, "__shard_end__": True}
        if self.corrupt:
            log.warning("rank %d worker %d: skipped %d corrupt shard(s): %s", self.rank, worker, len(self.corrupt),
                        ", ".join(self.corrupt))


class ShardProgress:
    """The shards a consumer has finished (their last sample seen); ``state_dict`` for checkpoints."""

    def __init__(self, completed: Iterable[int] = ()):
        self.completed = set(int(i) for i in completed)

    def update(self, sample: dict) -> None:
        if sample.get("__shard_end__"):
            self.completed.add(int(sample["__shard__"]))

    def state_dict(self) -> dict:
        return {"completed": sorted(self.completed)}

    @classmethod
    def from_state(cls, state: dict) -> "ShardProgress":
        return cls(state.get("completed", ()))


def shards_to_table(shards, languages: Optional[Sequence[str]] = None, *, on_corrupt: str = "skip",
                    embeddings: bool = False):
    """Read every shard into :class:`~hbfast.clip.data.ImageTextData`: image bytes (or, with
    ``embeddings=True``, the samples' ``npy`` embeddings) and captions per language. Every rank reads
    all shards, so that all ranks plan the same hybrid batches (the sampler deals the rows)."""
    from .data import ImageTextData

    stream = TarShardStream(shards, rank=0, world_size=1, on_corrupt=on_corrupt)
    rows, missing_image = [], []
    for sample in stream:
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if embeddings and "npy" not in sample or not embeddings and image_ext is None:
            missing_image.append(sample["__key__"])
            continue
        rows.append((sample["__key__"], sample["npy"] if embeddings else sample[image_ext], captions_of(sample)))
    if missing_image:
        what = "an npy embedding" if embeddings else "an image (" + "/".join(IMAGE_EXTENSIONS) + ")"
        raise ValueError(f"{len(missing_image)} shard sample(s) without {what}: {missing_image[:5]}")
    if not rows:
        raise ValueError(f"no samples in the shards {stream.shards[:3]}{' ...' if len(stream.shards) > 3 else ''}")
    found = sorted({lang for _, _, c in rows for lang in c})
    wanted = list(languages) if languages else found
    absent = [x for x in wanted if x not in found]
    if absent:
        raise ValueError(f"shards have no captions in {absent} (found: {found})")
    captions = {lang: [c.get(lang) for _, _, c in rows] for lang in wanted}
    source = f"{len(stream.shards)} shard(s) from {Path(stream.shards[0]).parent}"
    if stream.corrupt:
        source += f", {len(stream.corrupt)} corrupt skipped"
    if embeddings:
        widths = sorted({int(np.asarray(r[1]).size) for r in rows})
        if len(widths) != 1:
            raise ValueError(f"shard embeddings of different dimensions {widths}")
        features = np.stack([np.asarray(r[1], dtype=np.float32).reshape(-1) for r in rows])
        return ImageTextData(tuple(wanted), captions, None, features, source)
    images = [{"bytes": r[1], "path": r[0]} for r in rows]
    return ImageTextData(tuple(wanted), captions, images, None, source)
