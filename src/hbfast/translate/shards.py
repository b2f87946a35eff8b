"""Translations added to webdataset ``.tar`` shards: each ``KEY.json``'s captions get the target
languages, in the form :func:`hbfast.clip.shards.captions_of` reads (inside ``"captions"`` when the
json has that mapping, else as top-level keys), with ``"translated_from": {target: source}``.

Exists for LAION-style data (one caption language per image). Each input shard becomes a shard of
the same name in OUT, with every member copied and only the json members rewritten; a shard is
written atomically when complete, so a rerun translates only the shards OUT lacks. Under torchrun
rank r translates shards r, r + world, ... . ``OUT/translate.json`` records the arguments; a rerun
with other ones is refused (mixing two runs' shards in one directory would go unnoticed).
"""
from __future__ import annotations

import copy
import gzip
import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from ..clip.shards import captions_of, read_shard
from ..clip.stream import expand_shards
from ..shards import atomic_write_bytes, check_resume_plan
from .codes import parse_languages

PLAN = "translate.json"
PROVENANCE = "translated_from"


def is_shard_source(data) -> bool:
    """Whether ``data`` names tar shards: a .tar / .tar.gz / .tgz file, a ``{000..009}`` pattern, or a
    directory holding .tar shards."""
    text = str(data)
    if "{" in text or text.endswith((".tar", ".tar.gz", ".tgz")):
        return True
    path = Path(text)
    return path.is_dir() and any(p.name.endswith((".tar", ".tar.gz", ".tgz")) for p in path.iterdir())


def member_key(name: str) -> tuple:
    """(sample key, extension) of a member name: webdataset's convention (the key is the path up to the
    first dot of the file name), which :func:`hbfast.clip.shards.read_shard` follows too."""
    directory, _, base = name.rpartition("/")
    key, _, extension = base.partition(".")
    return (f"{directory}/{key}" if directory else key), extension.lower()


def _caption_map(meta) -> dict | None:
    """The mapping in a sample's json that holds its captions (None when there is none)."""
    if not isinstance(meta, dict):
        return None
    inner = meta.get("captions", meta)
    return inner if isinstance(inner, dict) else None


def write_shard(path: str, updates: dict, dest: Path) -> None:
    """Shard ``path`` copied to ``dest`` (atomically) with the json of each key in ``updates`` replaced."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as raw:
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.endswith((".gz", ".tgz")) else None
        with tarfile.open(path, mode="r|*") as source, tarfile.open(fileobj=gz or raw, mode="w") as target:
            for member in source:
                info = copy.copy(member)
                info.pax_headers = {k: v for k, v in member.pax_headers.items() if k != "size"}
                if not member.isfile():
                    target.addfile(info)
                    continue
                data = source.extractfile(member).read()
                key, extension = member_key(member.name)
                if extension == "json" and key in updates:
                    data = json.dumps(updates[key], ensure_ascii=False).encode("utf-8")
                info.size = len(data)
                target.addfile(info, io.BytesIO(data))
        if gz is not None:
            gz.close()
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, dest)


def _translate_shard(path: str, translator, targets: Sequence[str], sources: Sequence[str], bar) -> tuple:
    """(updates, counts) of one shard: each key's new json."""
    metas, jobs, no_source = {}, [], 0
    for sample in read_shard(path):
        meta = sample.get("json")
        captions = captions_of(sample) if _caption_map(meta) is not None else {}
        metas[sample["__key__"]] = meta
        for target in targets:
            if target in captions:
                continue
            source = next((s for s in sources if s in captions), None)
            if source is None:
                no_source += 1
            else:
                jobs.append((sample["__key__"], source, target, captions[source]))
    groups = {}
    for _, source, target, text in jobs:
        groups.setdefault((source, target), {}).setdefault(text, None)
    if bar is not None:
        bar.shard_texts(sum(len(t) for t in groups.values()))
    done = {}
    for (source, target), texts in groups.items():
        texts = list(texts)
        update = bar.update if bar is not None else None
        done[(source, target)] = dict(zip(texts, translator.translate(texts, source, target, progress=update)))
    updates, added, dropped = {}, 0, 0
    for key, source, target, text in jobs:
        translation = done[(source, target)][text]
        if not translation.strip():
            dropped += 1
            continue
        meta = updates.setdefault(key, copy.deepcopy(metas[key]))
        _caption_map(meta)[target] = translation
        provenance = meta.get(PROVENANCE)
        meta[PROVENANCE] = {**(provenance if isinstance(provenance, dict) else {}), target: source}
        added += 1
    return updates, {"samples": len(metas), "added": added, "dropped_empty": dropped, "no_source": no_source,
                     "texts": sum(len(t) for t in groups.values())}


class _ShardBar:
    """One tqdm bar over texts whose total is estimated from the shards read so far (ETA included)."""

    def __init__(self, shards: int, enabled: bool, desc: str):
        from tqdm.auto import tqdm

        self.bar, self.shards, self.seen_shards, self.seen_texts = tqdm(
            total=None, unit="text", unit_scale=True, desc=desc, disable=not enabled), shards, 0, 0

    def shard_texts(self, n: int) -> None:
        self.seen_shards, self.seen_texts = self.seen_shards + 1, self.seen_texts + n
        self.bar.total = round(self.seen_texts / self.seen_shards * self.shards)
        self.bar.refresh()

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def translate_shards(data, out, translator, *, to, sources=None, rank: int = 0, world: int = 1,
                     barrier: Callable[[], None] = lambda: None, progress: bool = True) -> dict:
    """Writes one shard in the directory ``out`` per input shard of ``data`` (a directory, a file or
    ``dir/{000..099}.tar``), with captions in the languages ``to`` added, translated from the first
    of ``sources`` a sample has. Every rank calls it with the same arguments; returns this rank's counts."""
    targets = parse_languages(to, "--to")
    sources = parse_languages(sources, "--from") if sources is not None else translator.default_sources
    if not sources:
        raise ValueError("translating shards needs --from LANG (the caption language(s) to translate from)")
    translator.check([(s, t) for t in targets for s in sources if s != t])
    paths = expand_shards(data)
    names = [Path(p).name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"{data}: shards of the same file name in different directories: {sorted(names)[:5]}")
    out = Path(out)
    if any(Path(p).resolve().parent == out.resolve() for p in paths):
        raise ValueError(f"--out {out} holds the input shards; write the translations to another directory")
    plan = {"shards": names, "to": targets, "from": list(sources), **translator.fingerprint}
    plan_path = out / PLAN
    if not check_resume_plan(plan_path, plan, "shards translated") and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(plan_path, (json.dumps(plan, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    barrier()
    mine = [i for i in range(rank, len(paths), world) if not (out / names[i]).is_file()]
    if mine and hasattr(translator, "load"):
        translator.load()
    counts = {"shards": len(paths), "translated_shards": len(mine), "samples": 0, "added": 0, "dropped_empty": 0,
              "no_source": 0, "texts": 0}
    bar = _ShardBar(len(mine), progress and rank == 0, f"translating {len(mine)} shard(s)")
    try:
        for i in mine:
            updates, shard_counts = _translate_shard(paths[i], translator, targets, sources, bar)
            write_shard(paths[i], updates, out / names[i])
            for k, v in shard_counts.items():
                counts[k] += v
    finally:
        bar.close()
    barrier()
    if rank == 0:
        for leftover in out.glob(".*.tmp*"):  # half-written shards of a run that was stopped
            leftover.unlink(missing_ok=True)
    barrier()
    return counts
