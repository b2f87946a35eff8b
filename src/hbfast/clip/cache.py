"""Frozen image tower (LiT): image features computed once, stored as float16 shards, memory-mapped.

Exists because with a frozen image tower every epoch and every run would recompute the same image
features, which costs far more than the text side. The cache is keyed by the tower, its
preprocessing and the exact image list, so a changed model or data set never reuses stale rows.
Precomputed embeddings (LAION-style ``img_emb_*.npy`` shards, or parquet with an embedding column)
are read the same way and checked against the captions' count and the model's width.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

INDEX_NAME = "index.json"
SHARD_ROWS = 65536


class ShardedArray:
    """Row-indexable view over [n_i, D] shards (memory-mapped .npy), as one [sum n_i, D] array."""

    def __init__(self, shards: Sequence[np.ndarray]):
        if not shards:
            raise ValueError("no embedding shards")
        dims = {s.shape[1] if s.ndim == 2 else None for s in shards}
        if len(dims) != 1 or None in dims:
            raise ValueError(f"embedding shards must all be [n, D] with one D, got shapes {[s.shape for s in shards]}")
        self.shards = list(shards)
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.shape = (int(self.offsets[-1]), dims.pop())
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.atleast_1d(np.arange(self.shape[0])[rows] if isinstance(rows, slice) else np.asarray(rows))
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows out of range for {self.shape[0]} embeddings")
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        for s in np.unique(which):
            sel = which == s
            out[sel] = self.shards[s][rows[sel] - self.offsets[s]]
        return out


def cache_key(model_name: str, preprocess_fingerprint: str, image_names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{model_name}\n{preprocess_fingerprint}\n{len(image_names)}\n".encode())
    for name in image_names:
        digest.update(str(name).encode() + b"\n")
    return digest.hexdigest()[:24]


def open_cache(directory: str | os.PathLike, key: Optional[str] = None) -> Optional[ShardedArray]:
    """The cached features in ``directory`` if complete (and built for ``key``), else None."""
    directory = Path(directory)
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        return None
    index = json.loads(index_path.read_text())
    if key is not None and index.get("key") != key:
        return None
    shards = [np.load(directory / name, mmap_mode="r") for name in index["shards"]]
    array = ShardedArray(shards)
    if array.shape != (index["rows"], index["dim"]):
        raise ValueError(f"embedding cache {directory}: shards hold {array.shape}, index says "
                         f"({index['rows']}, {index['dim']}); delete the directory to rebuild it")
    return array


def build_cache(directory: str | os.PathLike, key: str, n_items: int, features_of: Callable[[Sequence[int]], torch.Tensor],
                *, batch_size: int = 64, shard_rows: int = SHARD_ROWS, progress: bool = True) -> ShardedArray:
    """Compute features of items 0..n-1 in batches (``features_of(rows) -> [b, D]``), write float16
    shards and, last, the index (so an interrupted build is never mistaken for a complete one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / INDEX_NAME).unlink(missing_ok=True)
    names, buffer, buffered, dim = [], [], 0, None

    def flush():
        nonlocal buffer, buffered
        if buffer:
            name = f"features-{len(names):05d}.npy"
            tmp = directory / (name + ".tmp.npy")
            np.save(tmp, np.concatenate(buffer).astype(np.float16))
            os.replace(tmp, directory / name)
            names.append(name)
            buffer, buffered = [], 0

    for start in tqdm(range(0, n_items, batch_size), desc="caching image features", unit="batch", disable=not progress):
        rows = list(range(start, min(start + batch_size, n_items)))
        feats = features_of(rows).detach().float().cpu().numpy()
        if feats.ndim != 2 or feats.shape[0] != len(rows) or not np.isfinite(feats).all():
            raise ValueError(f"image features of rows {rows[0]}..{rows[-1]}: expected finite [{len(rows)}, D], got {feats.shape}")
        if np.abs(feats).max(initial=0.0) > 65504:
            raise ValueError("image features overflow float16 (|x| > 65504); cannot cache them")
        dim = feats.shape[1] if dim is None else dim
        buffer.append(feats)
        buffered += len(rows)
        if buffered >= shard_rows:
            flush()
    flush()
    index = {"key": key, "rows": n_items, "dim": dim, "dtype": "float16", "shards": names}
    tmp = directory / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, directory / INDEX_NAME)
    return open_cache(directory, key)


def cached_image_features(model, data, directory: str | os.PathLike, *, model_name: str, batch_size: int = 64,
                          progress: bool = True) -> ShardedArray:
    """Features of every image of ``data`` under ``model``'s frozen tower, from the cache or computed once."""
    names = [data.image_id(i) for i in range(len(data))]
    key = cache_key(model_name, model.preprocess.fingerprint(), names)
    found = open_cache(directory, key)
    if found is not None:
        return found

    def features_of(rows):
        with torch.no_grad():
            return model.image_features(model.preprocess([data.load_image(i) for i in rows]))

    return build_cache(directory, key, len(data), features_of, batch_size=batch_size, progress=progress)


def load_precomputed_embeddings(path: str | os.PathLike, *, n_expected: Optional[int] = None,
                                dim: Optional[int] = None, column: str = "embedding") -> ShardedArray:
    """Embedding shards from a ``.npy`` file, a ``.parquet`` file (``column``: a list per row), or a
    directory of either (sorted by name, concatenated in order). Checks count and width."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"image embeddings {path} do not exist")
    files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".parquet")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no .npy or .parquet embedding shards")
    shards = []
    for f in files:
        if f.suffix == ".npy":
            try:
                array = np.load(f, mmap_mode="r")
            except ValueError as e:
                raise ValueError(f"{f}: not a readable .npy array ({e})") from None
        elif f.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(f)
            if column not in table.column_names:
                raise ValueError(f"{f}: no {column!r} column (columns: {table.column_names})")
            array = np.asarray(table[column].to_pylist(), dtype=np.float32)
        else:
            raise ValueError(f"{f}: embedding shards must be .npy or .parquet")
        if array.ndim != 2:
            raise ValueError(f"{f}: embeddings must be [n, D], got shape {list(array.shape)}")
        shards.append(array)
    widths = sorted({s.shape[1] for s in shards})
    if len(widths) != 1:
        raise ValueError(f"{path}: embedding shards of different widths {widths}")
    array = ShardedArray(shards)
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{path}: embeddings have dimension {array.shape[1]}, the model's image side expects {dim}")
    if n_expected is not None and len(array) != n_expected:
        raise ValueError(f"{path}: {len(array)} embeddings for {n_expected} captioned images (they must match row for row)")
    return array
