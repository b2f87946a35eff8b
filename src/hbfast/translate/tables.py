"""Translations added to a table: the long text pairs ``hbfast train`` reads (``id, language, query,
passage``), and the caption tables ``hbfast train-clip`` reads (long: ``image, language, caption``;
wide: ``image`` and one caption column per language).

Exists to make parallel training data out of one-language data, resumably and across ranks. The
work is planned up front from the table: for each target language (in ``to`` order) and each item
without it, a source (the first of ``sources`` the item has, else its first language), and the
distinct source texts of each (source, target) pair cut into chunks. A chunk's file, in the work
directory ``OUT.parts/``, is named by a digest of its texts, its languages and the translator's
settings, written atomically when the chunk is done, and kept: a rerun translates only the chunks
whose file is missing, and the same chunks give the same output file. Under torchrun rank r
translates chunks r, r + world, ...; rank 0 writes the output once every chunk is there.
Long tables get one new row per (item, target) with a ``translated_from`` column; wide tables get
their missing cells filled (new columns for new languages). A translation that comes out empty
drops its row (counted): the readers reject empty texts.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from ..data.pairs import LONG_COLUMNS
from ..shards import atomic_write_bytes
from .codes import parse_languages

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
CAPTION_COLUMNS = ("image", "language", "caption")
PROVENANCE = "translated_from"  # long tables: the language a row was translated from (None: an original row)
DEFAULT_CHUNK_SIZE = 1000  # distinct texts per chunk (the unit of resume and of the ranks' shares)


@dataclasses.dataclass
class Table:
    """Rows of a table as dicts (every row has every column); ``kind``: pairs, captions-long or captions-wide."""

    path: Path
    kind: str
    columns: list
    rows: list

    def fields(self, source: str) -> tuple:
        """The columns translated for a row whose text is in ``source``."""
        return {"pairs": ("query", "passage"), "captions-long": ("caption",)}.get(self.kind, (source,))


@dataclasses.dataclass(frozen=True)
class Job:
    """Row ``row`` (in ``source``) gives the item's texts in ``target``."""

    row: int
    source: str
    target: str


@dataclasses.dataclass(frozen=True)
class Chunk:
    source: str
    target: str
    texts: tuple
    key: str

    @property
    def file_name(self) -> str:
        source, target = (re.sub(r"[^A-Za-z0-9_]+", "_", x) for x in (self.source, self.target))
        return f"{source}-{target}-{self.key[:24]}.json"


def present(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def table_format(path: Path) -> str:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown table type; use {', '.join(FORMATS)}")
    return kind


def _read_rows(path: Path) -> tuple:
    kind = table_format(path)
    if kind == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    if kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return list(table.column_names), table.to_pylist()
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON lines ({e})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: every JSON line must be an object")
    return list(dict.fromkeys(k for r in rows for k in r)), rows


def read_table(path, sources: Sequence[str] | None = None) -> Table:
    """A table of one of the three kinds, told apart by its columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"translate: --data {path} is not a file (a table) nor a directory of .tar shards")
    columns, rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    if set(LONG_COLUMNS) <= set(columns):
        kind = "pairs"
    elif set(CAPTION_COLUMNS) <= set(columns):
        kind = "captions-long"
    elif "image" in columns:
        kind = "captions-wide"
        if not sources:
            raise ValueError(f"{path} is a wide caption table: give --from LANG (the caption column(s) to translate from)")
        absent = [s for s in sources if s not in columns]
        if absent:
            raise ValueError(f"{path}: no caption column {absent} (columns: {columns})")
    else:
        raise ValueError(f"{path}: not a table to translate; expected columns {list(LONG_COLUMNS)} (text pairs), "
                         f"{list(CAPTION_COLUMNS)} (long captions) or 'image' and one column per language "
                         f"(wide captions); got {columns}")
    rows = [{c: r.get(c) for c in columns} for r in rows]
    return Table(path, kind, columns, rows)


def plan_jobs(table: Table, targets: Sequence[str], sources: Sequence[str] | None) -> tuple:
    """(jobs, items without a source language): for each target, each item lacking it, in table order.
    An item's row with an empty text is no source, yet its language is not added again (long tables)."""
    if table.kind == "captions-wide":
        usable = [{lang: r for lang in table.columns if lang != "image" and present(table.rows[r][lang])}
                  for r in range(len(table.rows))]
        items = [(set(u), u) for u in usable]
    else:
        key_column = "id" if table.kind == "pairs" else "image"
        by_key = {}
        for r, row in enumerate(table.rows):
            key = row[key_column] if isinstance(row[key_column], str) else repr(row[key_column])
            have, usable = by_key.setdefault(key, (set(), {}))
            have.add(str(row["language"]))
            if all(present(row[f]) for f in table.fields("")):
                usable.setdefault(str(row["language"]), r)
        items = list(by_key.values())
        if sources and not any(s in usable for _, usable in items for s in sources):
            found = sorted({lang for have, _ in items for lang in have})
            raise ValueError(f"{table.path}: no row in the --from language(s) {list(sources)} (languages: {found})")
    jobs, no_source = [], 0
    for target in targets:
        for have, usable in items:
            if target in have:
                continue
            source = next((s for s in (sources or usable) if s in usable), None)
            if source is None:
                no_source += 1
            else:
                jobs.append(Job(usable[source], source, target))
    return jobs, no_source


def job_texts(table: Table, job: Job) -> list:
    return [table.rows[job.row][f] for f in table.fields(job.source)]


def plan_chunks(table: Table, jobs: Sequence[Job], chunk_size: int, fingerprint: dict) -> list:
    """The distinct texts of each (source, target) pair, in order of first need, cut into chunks."""
    groups = {}
    for job in jobs:
        texts = groups.setdefault((job.source, job.target), {})
        for text in job_texts(table, job):
            texts.setdefault(text, None)
    chunks = []
    for (source, target), texts in groups.items():
        texts = list(texts)
        for s in range(0, len(texts), chunk_size):
            part = tuple(texts[s : s + chunk_size])
            payload = json.dumps([fingerprint, source, target, part], ensure_ascii=False, sort_keys=True)
            chunks.append(Chunk(source, target, part, hashlib.sha256(payload.encode("utf-8")).hexdigest()))
    return chunks


def read_chunk(path: Path, chunk: Chunk) -> dict | None:
    """A finished chunk's record, or None when its file is missing or is not this chunk's."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != chunk.key:
        return None
    translations = record.get("translations")
    if not isinstance(translations, list) or len(translations) != len(chunk.texts):
        return None
    return record


def _table_bytes(columns: list, rows: list, kind: str) -> bytes:
    if kind == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    if kind == "csv":
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: ("" if r[c] is None else r[c]) for c in columns} for r in rows)
        return buffer.getvalue().encode("utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def assemble(table: Table, jobs: Sequence[Job], translations: dict, targets: Sequence[str]) -> tuple:
    """(columns, rows, added, dropped): the table with the translations added."""
    rows = [dict(r) for r in table.rows]
    columns = list(table.columns)
    added = dropped = 0
    if table.kind == "captions-wide":
        columns += [t for t in targets if t not in columns]
        rows = [{c: r.get(c) for c in columns} for r in rows]
    elif PROVENANCE not in columns:
        columns.append(PROVENANCE)
        rows = [{**r, PROVENANCE: None} for r in rows]
    for job in jobs:
        done = translations[(job.source, job.target)]
        texts = [done[x] for x in job_texts(table, job)]
        if not all(present(x) for x in texts):
            dropped += 1
            continue
        added += 1
        if table.kind == "captions-wide":
            rows[job.row][job.target] = texts[0]
            continue
        row = {**rows[job.row], "language": job.target, PROVENANCE: job.source}
        row.update(zip(table.fields(job.source), texts))
        rows.append(row)
    return columns, rows, added, dropped


def work_dir(out: Path) -> Path:
    """Where the chunks of ``out`` are kept: ``OUT.parts/`` beside it."""
    return out.with_name(out.name + ".parts")


def translate_table(data, out, translator, *, to, sources=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None,
                    progress: bool = True) -> dict:
    """Writes ``out`` (.jsonl / .csv / .parquet): the table ``data`` with translations into the
    languages ``to`` added; resumes from the chunks kept in ``OUT.parts/``. Every rank calls it with
    the same arguments. Returns counts (rows, added, dropped_empty, no_source, texts, chunks, ...)."""
    from tqdm.auto import tqdm

    targets = parse_languages(to, "--to")
    sources = parse_languages(sources, "--from") if sources is not None else translator.default_sources
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    out = Path(out)
    out_format = table_format(out)
    if Path(data).resolve() == out.resolve():
        raise ValueError(f"--out {out} is the input table; write the translations to another file")
    table = read_table(data, sources)
    jobs, no_source = plan_jobs(table, targets, sources)
    translator.check(dict.fromkeys((j.source, j.target) for j in jobs))
    chunks = plan_chunks(table, jobs, chunk_size, translator.fingerprint)
    work = work_dir(out)
    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
    barrier()
    mine = [c for i, c in enumerate(chunks) if i % world == rank and read_chunk(work / c.file_name, c) is None]
    if mine and hasattr(translator, "load"):
        translator.load()  # before the bar starts, so that its rate and ETA are the translation's
    with tqdm(total=sum(len(c.texts) for c in mine), unit="text", unit_scale=True, desc=f"translating {table.path.name}",
              disable=not progress or rank != 0) as bar:
        for chunk in mine:
            before = translator.truncated
            translated = translator.translate(chunk.texts, chunk.source, chunk.target, progress=bar.update)
            record = {"key": chunk.key, "source": chunk.source, "target": chunk.target,
                      "truncated": translator.truncated - before, "translations": translated}
            atomic_write_bytes(work / chunk.file_name, json.dumps(record, ensure_ascii=False).encode("utf-8"))
    barrier()
    summary = {"input": str(table.path), "output": str(out), "kind": table.kind, "rows": len(table.rows),
               "no_source": no_source, "texts": sum(len(c.texts) for c in chunks), "chunks": len(chunks),
               "translated_now": sum(len(c.texts) for c in mine)}
    if rank == 0:
        translations, truncated = {}, 0
        for chunk in chunks:
            record = read_chunk(work / chunk.file_name, chunk)
            if record is None:
                raise ValueError(f"chunk {work / chunk.file_name} is missing after translating (did a rank fail?)")
            translations.setdefault((chunk.source, chunk.target), {}).update(zip(chunk.texts, record["translations"]))
            truncated += int(record.get("truncated", 0))
        columns, rows, added, dropped = assemble(table, jobs, translations, targets)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, _table_bytes(columns, rows, out_format))
        keep = {c.file_name for c in chunks}
        for stale in work.iterdir():  # chunks of other settings, and half-written files of a stopped run
            ours = re.fullmatch(r"\.?[A-Za-z0-9_]+-[A-Za-z0-9_]+-[0-9a-f]{24}\.json(\.tmp\d+)?", stale.name)
            if ours and stale.name not in keep and stale.is_file():
                stale.unlink()
        summary.update(added=added, dropped_empty=dropped, truncated=truncated)
    barrier()
    return summary
