"""Embedding shard directories: one corpus of embeddings split into ``.npy`` files with a manifest.

This module exists so that a corpus too large for one process's memory (or encoded by several
processes) has one on-disk form that ``hbfast.ShardedIndex``, ``hbfast encode`` and ``hbfast search``
share. A directory holds::

    manifest.json   {"dim", "dtype" (float32 | float16), "count", "metric" (a hint), "model",
                     "shards": [{"file", "rows", "first_id"}, ...], "ids": "ids.jsonl" | "ids.parquet" | null}
    shard-00000.npy one [rows, dim] array per shard, rows first_id .. first_id + rows - 1
    ids.jsonl       (or ids.parquet, column "id") row -> document id string; absent when ids are 0..count-1

``write_shards`` writes or appends (every file is written to a temporary name and renamed, the
manifest last, so a crash never leaves a manifest naming a half-written file); ``open_shards`` reads
and checks one: a missing, truncated, wrong-dtype or wrong-dim shard, or a manifest that disagrees
with its files, raises ``ShardError`` naming the shard before anything is searched.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

MANIFEST = "manifest.json"
IDS_JSONL = "ids.jsonl"
IDS_PARQUET = "ids.parquet"
DTYPES = ("float32", "float16")
DEFAULT_ROWS_PER_SHARD = 1 << 18


class ShardError(ValueError):
    """A shard directory that is malformed or disagrees with its manifest (the message names the file)."""


# ---- small helpers ---------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_resume_plan(plan_path: Path, plan: dict, what: str) -> bool:
    """Whether a resumable job's directory already holds its plan (``plan_path``, JSON); a plan made
    with other arguments is a ValueError naming them (``what``: "an encode", ...)."""
    if not plan_path.is_file():
        return False
    old = json.loads(plan_path.read_text(encoding="utf-8"))
    if old != plan:
        changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        raise ValueError(f"{plan_path.parent} holds {what} with other arguments ({', '.join(changed)} differ); "
                         "rerun with the same ones to resume, or use a new --out")
    return True


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_dtype(dtype) -> str:
    """ "float32" or "float16" from a name, a numpy dtype or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise TypeError(f"dtype must be one of {DTYPES}, got {dtype!r}") from None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name}")
    return name


def _as_numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype == torch.bfloat16 else x
        x = x.numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array or torch tensor [n, dim], got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D [n, dim], got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{what} must hold floats, got dtype {x.dtype}")
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return x


# ---- reading ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard file: ``rows`` rows with global ids ``first_id`` .. ``first_id + rows - 1``;
    its data start ``offset`` bytes into ``path``."""

    file: str
    rows: int
    first_id: int
    path: Path
    offset: int


def read_npy_header(path: Path):
    """(shape, dtype, data offset) of a .npy file, or ShardError naming it."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except FileNotFoundError:
        raise ShardError(f"shard {path.name}: file missing ({path})") from None
    except (ValueError, OSError, EOFError) as e:
        raise ShardError(f"shard {path.name}: not a readable .npy file ({e})") from None
    if fortran:
        raise ShardError(f"shard {path.name}: stored in Fortran order; expected C order")
    return shape, dtype, offset


class Shards:
    """A checked shard directory (``open_shards``): ``dim``, ``dtype``, ``count``, ``metric``, ``model``,
    ``shards`` (``Shard`` list), ``array(i)`` (shard i memory-mapped, read-only), ``read(i, start, stop)``
    (rows of shard i read into memory, no mapping), ``doc_ids`` (the id strings, or None for 0..count-1)."""

    def __init__(self, directory: Path, manifest: dict, shards: List[Shard]):
        self.directory = directory
        self.manifest = manifest
        self.shards = shards
        self.dim = int(manifest["dim"])
        self.dtype = str(manifest["dtype"])
        self.count = int(manifest["count"])
        self.metric = manifest.get("metric")
        self.model = manifest.get("model")
        self._doc_ids: Optional[List[str]] = None
        self._row_of: Optional[dict] = None

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"Shards({str(self.directory)!r}, {self.count} x {self.dim} {self.dtype}, {len(self.shards)} shards)"

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def array(self, i: int) -> np.ndarray:
        """Shard i memory-mapped read-only, [rows, dim]."""
        s = self.shards[i]
        return np.memmap(s.path, dtype=self.dtype, mode="r", offset=s.offset, shape=(s.rows, self.dim))

    def arrays(self) -> List[np.ndarray]:
        """Every shard memory-mapped, in id order (a chunk list for ``hbfast.topk`` / ``relevant_ranks``)."""
        return [self.array(i) for i in range(len(self.shards))]

    def read(self, i: int, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows [start, stop) of shard i, read with positioned reads into ``out`` (or a new array);
        nothing is mapped, so the process's memory stays at the size of ``out``."""
        s = self.shards[i]
        if not 0 <= start <= stop <= s.rows:
            raise ValueError(f"shard {s.file}: rows [{start}, {stop}) outside [0, {s.rows})")
        n = stop - start
        view = np.empty((n, self.dim), dtype=self.dtype) if out is None else out[:n]
        buf = memoryview(view.reshape(-1).view(np.uint8))
        nbytes, done = len(buf), 0
        fd = os.open(s.path, os.O_RDONLY)
        try:
            while done < nbytes:
                m = os.preadv(fd, [buf[done:]], s.offset + start * self.dim * self.itemsize + done)
                if m <= 0:
                    raise ShardError(f"shard {s.file}: file ended while reading rows [{start}, {stop})")
                done += m
        finally:
            os.close(fd)
        return view

    def rows(self, ids) -> np.ndarray:
        """Rows ``ids`` (global, int, any order) as a [len(ids), dim] array, read without mapping."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), self.dim), dtype=self.dtype)
        if not len(ids):
            return out
        if ids.min() < 0 or ids.max() >= self.count:
            raise ValueError(f"row ids must be in [0, {self.count}), found [{ids.min()}, {ids.max()}]")
        starts = np.array([s.first_id for s in self.shards], dtype=np.int64)
        which = np.searchsorted(starts, ids, side="right") - 1
        row_bytes = self.dim * self.itemsize
        for si in np.unique(which):
            s = self.shards[int(si)]
            fd = os.open(s.path, os.O_RDONLY)
            try:
                for j in np.nonzero(which == si)[0]:
                    data = os.pread(fd, row_bytes, s.offset + int(ids[j] - s.first_id) * row_bytes)
                    if len(data) != row_bytes:
                        raise ShardError(f"shard {s.file}: file ended while reading row {int(ids[j])}")
                    out[j] = np.frombuffer(data, dtype=self.dtype)
            finally:
                os.close(fd)
        return out

    # ids
    @property
    def doc_ids(self) -> Optional[List[str]]:
        """Row -> document id strings, or None when the ids are the row numbers."""
        if self._doc_ids is None and self.manifest.get("ids"):
            limit = self.manifest.get("ids_bytes") if self.manifest["ids"] == IDS_JSONL else None
            self._doc_ids = read_ids(self.directory / self.manifest["ids"], self.count, limit)
        return self._doc_ids

    def doc_id(self, row: int) -> str:
        ids = self.doc_ids
        return str(row) if ids is None else ids[row]

    def row_of(self, doc_id: str) -> Optional[int]:
        """The row of a document id string (None when the index has no such document)."""
        if self._row_of is None:
            ids = self.doc_ids
            self._row_of = {str(i): i for i in range(self.count)} if ids is None else {d: i for i, d in enumerate(ids)}
        return self._row_of.get(str(doc_id))


def read_ids(path: Path, count: Optional[int] = None, limit_bytes: Optional[int] = None) -> List[str]:
    """Document ids of an ids.jsonl (one ``{"id": ...}`` per line, or a bare JSON string) or ids.parquet
    (column ``id``); ShardError when the file is missing, malformed, or not ``count`` ids long."""
    if not path.is_file():
        raise ShardError(f"ids file {path.name}: missing ({path})")
    ids: List[str] = []
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises many types for a bad file
            raise ShardError(f"ids file {path.name}: cannot read ({type(e).__name__}: {e})") from None
        if "id" not in table.column_names:
            raise ShardError(f"ids file {path.name}: no 'id' column (columns: {table.column_names})")
        ids = [str(x) for x in table.column("id").to_pylist()]
    else:
        with open(path, "rb") as f:
            data = f.read() if limit_bytes is None else f.read(limit_bytes)
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ShardError(f"ids file {path.name}:{number}: malformed JSON ({e})") from None
            if isinstance(value, dict):
                value = value.get("id")
            if value is None:
                raise ShardError(f'ids file {path.name}:{number}: expected {{"id": ...}} or a string')
            ids.append(str(value))
    if count is not None and len(ids) != count:
        raise ShardError(f"ids file {path.name}: holds {len(ids)} ids, the manifest counts {count} rows")
    return ids


def _load_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        if not directory.exists():
            raise ShardError(f"shard directory {directory} does not exist")
        raise ShardError(f"{MANIFEST}: missing in {directory}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{MANIFEST}: malformed JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ShardError(f"{MANIFEST}: expected a JSON object")
    for key in ("dim", "dtype", "count", "shards"):
        if key not in manifest:
            raise ShardError(f"{MANIFEST}: no {key!r} field")
    for key in ("dim", "count"):
        if isinstance(manifest[key], bool) or not isinstance(manifest[key], int) or manifest[key] < (key == "dim"):
            raise ShardError(f"{MANIFEST}: {key!r} must be a {'positive' if key == 'dim' else 'non-negative'} int, "
                             f"got {manifest[key]!r}")
    if manifest["dtype"] not in DTYPES:
        raise ShardError(f"{MANIFEST}: dtype must be one of {DTYPES}, got {manifest['dtype']!r}")
    if not isinstance(manifest["shards"], list):
        raise ShardError(f"{MANIFEST}: 'shards' must be a list")
    return manifest


def open_shards(directory: Union[str, os.PathLike, "Shards"]) -> Shards:
    """Reads and checks a shard directory (or the path of its manifest.json): every shard's file
    exists, is a C-order .npy of the manifest's dtype and dim with the manifest's row count and its
    full length on disk, first ids follow each other from 0, the rows add up to ``count``, and the ids
    file (if any) names one document per row. Raises ``ShardError`` naming the first bad shard."""
    if isinstance(directory, Shards):
        return directory
    directory = Path(directory)
    if directory.name == MANIFEST and directory.is_file():
        directory = directory.parent
    manifest = _load_manifest(directory)
    dim, dtype = manifest["dim"], np.dtype(manifest["dtype"])
    shards, next_id, names = [], 0, set()
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or not {"file", "rows", "first_id"} <= set(entry):
            raise ShardError(f"{MANIFEST}: shard entry {i} must be an object with 'file', 'rows' and 'first_id'")
        name, rows, first = entry["file"], entry["rows"], entry["first_id"]
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ShardError(f"{MANIFEST}: shard entry {i} has a bad file name {name!r} (a plain name in the directory)")
        if name in names:
            raise ShardError(f"{MANIFEST}: shard {name} is listed twice")
        names.add(name)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ShardError(f"shard {name}: manifest rows must be a non-negative int, got {rows!r}")
        if first != next_id:
            raise ShardError(f"shard {name}: manifest first_id is {first!r}, expected {next_id} "
                             "(the rows of the shards before it)")
        path = directory / name
        shape, file_dtype, offset = read_npy_header(path)
        if file_dtype != dtype:
            raise ShardError(f"shard {name}: dtype {file_dtype}, the manifest says {dtype}")
        if len(shape) != 2 or shape[1] != dim:
            raise ShardError(f"shard {name}: shape {tuple(shape)}, expected [{rows}, {dim}] (dim {dim} in the manifest)")
        if shape[0] != rows:
            raise ShardError(f"shard {name}: holds {shape[0]} rows, the manifest says {rows}")
        expected = offset + rows * dim * dtype.itemsize
        size = path.stat().st_size
        if size < expected:
            raise ShardError(f"shard {name}: truncated ({size} bytes, {expected} expected for {rows} x {dim} {dtype})")
        if size > expected:
            raise ShardError(f"shard {name}: {size - expected} bytes beyond its {rows} x {dim} {dtype} rows")
        shards.append(Shard(name, rows, first, path, offset))
        next_id += rows
    if next_id != manifest["count"]:
        raise ShardError(f"{MANIFEST}: count is {manifest['count']}, its shards hold {next_id} rows")
    out = Shards(directory, manifest, shards)
    if manifest.get("ids"):
        ids_name = manifest["ids"]
        if ids_name not in (IDS_JSONL, IDS_PARQUET):
            raise ShardError(f"{MANIFEST}: 'ids' must be {IDS_JSONL!r}, {IDS_PARQUET!r} or null, got {ids_name!r}")
        ids_path = directory / ids_name
        if not ids_path.is_file():
            raise ShardError(f"ids file {ids_name}: missing ({ids_path})")
        if ids_name == IDS_JSONL:  # the bytes the manifest vouches for (parsed on first use of doc_ids)
            need = manifest.get("ids_bytes")
            if need is not None and ids_path.stat().st_size < need:
                raise ShardError(f"ids file {ids_name}: truncated ({ids_path.stat().st_size} bytes, "
                                 f"the manifest vouches for {need})")
        else:
            import pyarrow.parquet as pq

            try:
                n = pq.ParquetFile(ids_path).metadata.num_rows
            except Exception as e:  # pyarrow raises many types for a bad file
                raise ShardError(f"ids file {ids_name}: cannot read ({type(e).__name__}: {e})") from None
            if n != manifest["count"]:
                raise ShardError(f"ids file {ids_name}: holds {n} ids, the manifest counts {manifest['count']} rows")
    return out


# ---- writing ---------------------------------------------------------------------------------------
def shard_name(index: int, rows: int, rows_per_shard: int) -> str:
    """``shard-00003.npy`` for a full shard; a partial one (the last, still filling) carries its row
    count, so that refilling it never overwrites the file the manifest names."""
    return f"shard-{index:05d}.npy" if rows == rows_per_shard else f"shard-{index:05d}-part{rows}.npy"


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1) + "\n").encode("utf-8")


def _batches(embeddings) -> Iterable:
    if isinstance(embeddings, (np.ndarray, torch.Tensor)):
        return [embeddings]
    if isinstance(embeddings, (str, bytes)) or not hasattr(embeddings, "__iter__"):
        raise TypeError(f"embeddings must be an array, a tensor or an iterable of them, got {type(embeddings).__name__}")
    return embeddings


def write_shards(embeddings, directory: Union[str, os.PathLike], *, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                 ids: Optional[Sequence[str]] = None, dtype=None, metric: str = "ip", model: str = "") -> Shards:
    """Writes ``embeddings`` ([n, dim] array or tensor, or an iterable of them) as a shard directory,
    or appends them to the one already there (same dim and dtype; the last shard is filled up first).

    rows_per_shard: rows of each full shard. ids: one document id string per row (for every row, in
    every call, or in none: then ids are the row numbers). dtype: "float16" or "float32" (default: the
    directory's, else float16 for float16 input and float32 otherwise). metric, model: recorded in the
    manifest as hints for ``ShardedIndex`` / ``hbfast search``. Returns the directory, opened.
    """
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be a positive int, got {rows_per_shard!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / MANIFEST).is_file():
        existing = open_shards(directory)
        manifest = existing.manifest
        if dtype is not None and check_dtype(dtype) != manifest["dtype"]:
            raise ValueError(f"{directory}: holds {manifest['dtype']} shards; cannot append dtype {check_dtype(dtype)}")
        has_ids = bool(manifest.get("ids"))
        if manifest["count"] and has_ids != (ids is not None):
            raise ValueError(f"{directory}: its rows {'have' if has_ids else 'have no'} document ids; "
                             f"{'pass' if has_ids else 'do not pass'} ids= when appending")
        if has_ids and manifest["ids"] != IDS_JSONL:
            raise ValueError(f"{directory}: cannot append to {manifest['ids']}; only to {IDS_JSONL}")
    else:
        manifest = {"format": "hbfast-shards", "version": 1, "dim": None, "dtype": None if dtype is None else check_dtype(dtype),
                    "count": 0, "metric": metric, "model": model, "rows_per_shard": rows_per_shard, "shards": [],
                    "ids": None, "ids_bytes": 0}
    ids_list = None if ids is None else [str(x) for x in ids]
    consumed_ids = 0
    pending: List[np.ndarray] = []  # rows not yet in a file (those of the refilled last shard first)
    pending_ids: List[str] = []  # ids of the new pending rows (the refilled shard's are in the file already)
    state = {"rows": 0, "written_ids": 0, "old": None}  # pending rows; of them, rows whose ids are written
    shards = manifest["shards"]
    if shards and shards[-1]["rows"] < rows_per_shard:
        last = shards.pop()  # refilled: its rows go first; its file is replaced once the new one is named
        pending.append(np.array(np.load(directory / last["file"], mmap_mode="r")))
        state.update(rows=last["rows"], written_ids=last["rows"] if manifest.get("ids") else 0, old=last["file"])

    def flush(final: bool) -> None:
        nonlocal pending
        while state["rows"] >= rows_per_shard or (final and state["rows"] > 0):
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            rows = min(rows_per_shard, state["rows"])
            data, rest = block[:rows], block[rows:]
            if ids_list is not None:  # ids first: the manifest written last vouches for them
                fresh = rows - min(rows, state["written_ids"])
                _append_ids(directory, manifest, pending_ids[:fresh])
                del pending_ids[:fresh]
                state["written_ids"] = max(0, state["written_ids"] - rows)
            first = sum(s["rows"] for s in shards)
            name = shard_name(len(shards), rows, rows_per_shard)
            atomic_save_npy(directory / name, data)
            shards.append({"file": name, "rows": rows, "first_id": first})
            manifest["count"] = first + rows
            atomic_write_bytes(directory / MANIFEST, _manifest_bytes(manifest))
            if state["old"] is not None and state["old"] != name:
                (directory / state["old"]).unlink(missing_ok=True)
            state["old"] = None
            pending = [rest] if len(rest) else []
            state["rows"] = len(rest)

    for bi, batch in enumerate(_batches(embeddings)):
        x = _as_numpy(batch, f"embeddings batch {bi}" if bi else "embeddings")
        if manifest["dim"] is None:
            manifest["dim"] = int(x.shape[1])
        if x.shape[1] != manifest["dim"]:
            raise ValueError(f"embeddings have dim {x.shape[1]}; the shards in {directory} have dim {manifest['dim']}")
        if manifest["dtype"] is None:
            manifest["dtype"] = "float16" if x.dtype == np.float16 else "float32"
        if len(x) == 0:
            continue
        if ids_list is not None:
            if consumed_ids + len(x) > len(ids_list):
                raise ValueError(f"ids has {len(ids_list)} entries, fewer than the embeddings' rows")
            pending_ids.extend(ids_list[consumed_ids : consumed_ids + len(x)])
            consumed_ids += len(x)
        pending.append(x.astype(manifest["dtype"], copy=False))
        state["rows"] += len(x)
        flush(final=False)
    if ids_list is not None and consumed_ids != len(ids_list):
        raise ValueError(f"ids has {len(ids_list)} entries, the embeddings {consumed_ids} rows")
    if manifest["dim"] is None:
        raise ValueError("embeddings: nothing to write (no rows and no existing shards)")
    flush(final=True)
    if not shards:  # an empty first write still leaves a valid (empty) directory
        atomic_write_bytes(directory / MANIFEST, _manifest_bytes(manifest))
    return open_shards(directory)


def _append_ids(directory: Path, manifest: dict, new: List[str]) -> None:
    """Appends ids to ids.jsonl after the ``ids_bytes`` the manifest vouches for (lines from a run that
    crashed before rewriting the manifest are cut off first)."""
    path = directory / IDS_JSONL
    manifest["ids"] = IDS_JSONL
    keep = int(manifest.get("ids_bytes") or 0)
    data = "".join(json.dumps({"id": d}, ensure_ascii=False) + "\n" for d in new).encode("utf-8")
    with open(path, "ab") as f:
        f.truncate(keep)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    manifest["ids_bytes"] = keep + len(data)
