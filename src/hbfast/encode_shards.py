"""Text tables in, shard directories out: what ``hbfast encode`` runs (and ``hbfast search`` /
``hbfast eval --index`` use to read query tables).

This module exists to keep corpus reading and resumable, multi-process encoding apart from the
shard format (hbfast.shards) and the command line (hbfast.shard_cli). Encoding plans the shards up
front (rows_per_shard rows each, in corpus order), writes each one atomically when it is complete, and
skips the complete ones when run again with the same arguments; under torchrun rank r encodes shards
r, r + world, ... and rank 0 writes ids.jsonl and manifest.json once every shard is there. A shard is
encoded in the same calls of the same texts every time, so a resumed run ends with the same files.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .shards import (IDS_JSONL, MANIFEST, ShardError, atomic_save_npy, atomic_write_bytes, check_dtype, check_resume_plan,
                     read_npy_header, shard_name)

PLAN = "encode.json"  # the arguments a shard directory is being encoded with (resume checks them)
ENCODE_STEP = 1024  # texts per encoder call (each call a step of the progress bar)
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def _lareqa_candidates(name: str) -> Tuple[List[str], List[str]]:
    from .data import load_lareqa

    ds = load_lareqa(name)
    ids, texts = [], []
    for lang in ds.languages:
        column = ds.candidates[lang].data.column("text").to_pylist()
        ids.extend(f"{lang}-{i}" for i in range(len(column)))
        texts.extend(column)
    return ids, texts


def _read_table(path: Path):
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            import pyarrow.json as pj

            return pj.read_json(path)
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pc

            options = pc.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            convert = pc.ConvertOptions(column_types={"id": pa.string(), "_id": pa.string()})
            return pc.read_csv(path, parse_options=options, convert_options=convert)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: cannot read as a {suffix[1:]} table ({e})") from None


def _id_text_columns(table, where: str) -> Tuple[List[str], List[str]]:
    names = table.column_names
    id_column = "id" if "id" in names else "_id" if "_id" in names else None
    if id_column is None or "text" not in names:
        raise ValueError(f"{where}: needs columns 'id' (or '_id') and 'text', has {names}")
    ids = [str(x) for x in table.column(id_column).to_pylist()]
    texts = table.column("text").to_pylist()
    if "title" in names:  # BEIR: "title text", as hbfast eval --dataset beir encodes documents
        titles = table.column("title").to_pylist()
        texts = [f"{t or ''} {x or ''}".strip() for t, x in zip(titles, texts)]
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"{where}: row {bad} (id {ids[bad]!r}) has no text")
    if len(set(ids)) != len(ids):
        seen = set()
        dup = next(d for d in ids if d in seen or seen.add(d))
        raise ValueError(f"{where}: id {dup!r} appears more than once")
    return ids, texts


def load_texts(source, *, what: str = "corpus") -> Tuple[List[str], List[str]]:
    """(ids, texts) of a bundled name ("xquad-r", "mlqa-r": every language's candidate sentences, ids
    "<lang>-<row>"), a BEIR directory (corpus.jsonl; with what="queries", queries.jsonl), a
    .jsonl / .csv / .tsv / .parquet file with columns id and text (BEIR's _id and title too), a
    ``datasets`` table, or a directory a ``datasets`` table was saved to."""
    from .data.lareqa import LANGUAGES

    if hasattr(source, "column_names") and hasattr(source, "data"):  # a datasets table
        return _id_text_columns(source.data.table if hasattr(source.data, "table") else source.data, "datasets table")
    if isinstance(source, str) and source in LANGUAGES:
        if what != "corpus":
            raise ValueError(f"{source}: a bundled name is a corpus; give the {what} as a file")
        return _lareqa_candidates(source)
    path = Path(source)
    if path.is_dir():
        beir = path / ("corpus.jsonl" if what == "corpus" else "queries.jsonl")
        if beir.is_file():
            return _id_text_columns(_read_table(beir), str(beir))
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            import datasets

            table = datasets.load_from_disk(str(path))
            return _id_text_columns(table.data.table, str(path))
        raise ValueError(f"{path}: not a BEIR directory (no {beir.name}) nor a saved datasets table")
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(f"{path}: unknown table type; use {', '.join(TABLE_SUFFIXES)}, a BEIR directory "
                             "or a bundled name (xquad-r, mlqa-r)")
        return _id_text_columns(_read_table(path), str(path))
    raise FileNotFoundError(f"{what} {source!r}: not a bundled name ({', '.join(LANGUAGES)}), a file or a directory")


def corpus_digest(ids: Sequence[str], texts: Sequence[str]) -> str:
    """sha256 over the ids and texts (a resumed encode checks that the corpus is the same)."""
    h = hashlib.sha256()
    for d, t in zip(ids, texts):
        h.update(d.encode("utf-8") + b"\0" + t.encode("utf-8") + b"\0")
    return h.hexdigest()


def _complete(path: Path, rows: int, dtype: str) -> Optional[int]:
    """The dim of a finished shard file (right rows, dtype and length), else None."""
    if not path.is_file():
        return None
    try:
        shape, file_dtype, offset = read_npy_header(path)
    except ShardError:
        return None
    if len(shape) != 2 or shape[0] != rows or file_dtype != np.dtype(dtype):
        return None
    if path.stat().st_size != offset + rows * shape[1] * file_dtype.itemsize:
        return None
    return int(shape[1])


def encode_to_shards(encoder: Callable, ids: Sequence[str], texts: Sequence[str], out, *, rows_per_shard: int,
                     dtype="float16", model: str = "", metric: str = "cosine", plan_extra: Optional[dict] = None,
                     rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None,
                     progress: bool = True) -> Path:
    """Encodes ``texts`` with ``encoder`` (texts -> [n, dim]) into the shard directory ``out``,
    resuming a run that stopped: shards already complete are kept. Every rank calls it with the same
    arguments; rank r encodes shards r, r + world, ...; ``barrier`` waits for every rank. Returns ``out``."""
    from tqdm.auto import tqdm

    from .eval import check_embeddings

    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be a positive int, got {rows_per_shard!r}")
    dtype = check_dtype(dtype)
    if len(ids) != len(texts) or not len(texts):
        raise ValueError(f"encode: {len(ids)} ids and {len(texts)} texts (need the same, at least one)")
    out = Path(out)
    plan = {"count": len(texts), "rows_per_shard": rows_per_shard, "dtype": dtype, "model": model,
            "corpus_sha256": corpus_digest(ids, texts), **(plan_extra or {})}
    plan_path = out / PLAN
    # Every rank checks (so that all raise together); rank 0 writes the plan of a new directory.
    resuming = check_resume_plan(plan_path, plan, "an encode")
    if not resuming and (out / MANIFEST).is_file():
        raise ValueError(f"{out} holds shards that hbfast encode did not plan; use a new --out")
    if not resuming and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(plan_path, (json.dumps(plan, indent=1) + "\n").encode("utf-8"))
    barrier()
    n_shards = math.ceil(len(texts) / rows_per_shard)
    spans = [(i * rows_per_shard, min(len(texts), (i + 1) * rows_per_shard)) for i in range(n_shards)]
    names = [shard_name(i, b - a, rows_per_shard) for i, (a, b) in enumerate(spans)]
    mine = [i for i in range(rank, n_shards, world) if _complete(out / names[i], spans[i][1] - spans[i][0], dtype) is None]
    total = sum(spans[i][1] - spans[i][0] for i in mine)
    dim = None
    with tqdm(total=total, unit="text", desc=f"encoding {out.name}", disable=not progress or rank != 0,
              unit_scale=True) as bar:
        for i in mine:
            a, b = spans[i]
            parts = []
            for s in range(a, b, ENCODE_STEP):  # the same calls for this shard on every run
                chunk = list(texts[s : min(b, s + ENCODE_STEP)])
                parts.append(check_embeddings(encoder(chunk), len(chunk), f"{out.name} rows {s}..{s + len(chunk) - 1}",
                                              dim).numpy())
                dim = parts[-1].shape[1]
                bar.update(len(chunk))
            atomic_save_npy(out / names[i], np.concatenate(parts).astype(dtype))
    barrier()
    if rank == 0:
        dims = {}
        for i, (a, b) in enumerate(spans):
            d = _complete(out / names[i], b - a, dtype)
            if d is None:
                raise ShardError(f"shard {names[i]}: missing or incomplete after encoding (did a rank fail?)")
            dims[d] = names[i]
        if len(dims) != 1:
            raise ShardError(f"shards of different dims: {dims}")
        ids_bytes = "".join(json.dumps({"id": str(d)}, ensure_ascii=False) + "\n" for d in ids).encode("utf-8")
        atomic_write_bytes(out / IDS_JSONL, ids_bytes)
        manifest = {"format": "hbfast-shards", "version": 1, "dim": next(iter(dims)), "dtype": dtype,
                    "count": len(texts), "metric": metric, "model": model, "rows_per_shard": rows_per_shard,
                    "shards": [{"file": names[i], "rows": b - a, "first_id": a} for i, (a, b) in enumerate(spans)],
                    "ids": IDS_JSONL, "ids_bytes": len(ids_bytes)}
        atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
        for leftover in out.glob(".shard-*.tmp*"):  # half-written shards of a run that was stopped
            leftover.unlink(missing_ok=True)
    barrier()
    return out
