"""Image-caption tables for CLIP training: items are images, one caption per available language.

Exists so that a local JSONL / CSV / Parquet table (wide: an image column and one caption column per
language; or long: ``image, language, caption`` rows) becomes the ``[images, languages]``
availability matrix the hybrid batch sampler takes, with images read through the ``datasets``
``Image`` feature (paths relative to the table, or bytes) and every unreadable image named.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_NOT_LANGUAGES = {"image", "id", "key", "url", "image_path", "path", "width", "height", "__key__"}


@dataclasses.dataclass
class ImageTextData:
    """``captions[lang][i]`` is image i's caption in ``lang`` or None; ``availability`` bool [N, L].

    The image side is ``images`` (``datasets`` Image column entries: ``{"path", "bytes"}``) or
    ``features`` (precomputed image-tower features [N, W], e.g. a memory-mapped embedding cache).
    """

    languages: tuple
    captions: dict
    images: Optional[list] = None
    features: Optional[np.ndarray] = None
    source: str = ""

    def __post_init__(self):
        n = len(self)
        for lang, column in self.captions.items():
            if len(column) != n:
                raise ValueError(f"{self.source}: {len(column)} captions in {lang} for {n} images")
        if self.features is not None and len(self.features) != n:
            raise ValueError(f"{self.source}: {len(self.features)} image embeddings for {n} captioned images")
        self.availability = np.array([[c is not None and str(c).strip() != "" for c in self.captions[lang]]
                                      for lang in self.languages], dtype=bool).T.reshape(n, len(self.languages))
        if n and not self.availability.any():
            raise ValueError(f"{self.source}: no image has a caption in any of {list(self.languages)}")

    def __len__(self) -> int:
        first = next(iter(self.captions.values()))
        return len(first)

    def __repr__(self) -> str:
        per_lang = ", ".join(f"{lang} {int(c)}" for lang, c in zip(self.languages, self.availability.sum(0)))
        return f"ImageTextData({len(self)} images; captions: {per_lang}; from {self.source})"

    def caption(self, item: int, lang: int) -> str:
        text = self.captions[self.languages[lang]][item]
        if text is None:
            raise ValueError(f"{self.source}: image {item} has no {self.languages[lang]} caption")
        return str(text)

    def image_name(self, item: int) -> str:
        entry = self.images[item]
        return str(entry.get("path") or f"<bytes of row {item}>")

    def image_id(self, item: int) -> str:
        """What identifies image ``item``'s content for the feature cache: path, size and mtime of a
        file, or the sha1 of its bytes."""
        entry = self.images[item]
        if entry.get("bytes") is not None:
            return "sha1:" + hashlib.sha1(entry["bytes"]).hexdigest()
        try:
            stat = os.stat(entry["path"])
        except OSError:
            return str(entry["path"])
        return f"{entry['path']}:{stat.st_size}:{stat.st_mtime_ns}"

    def load_image(self, item: int):
        """Image ``item`` as RGB PIL; a missing or unreadable image is a ValueError naming it."""
        from PIL import Image

        if self.images is None:
            raise ValueError(f"{self.source}: this data has precomputed image features, not images")
        entry = self.images[item]
        try:
            if entry.get("bytes") is not None:
                image = Image.open(io.BytesIO(entry["bytes"]))
            else:
                image = Image.open(entry["path"])
            image.load()
            return image.convert("RGB")
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{self.source}: cannot read image {self.image_name(item)} (row {item}): {e}") from None

    def select(self, rows: Sequence[int]) -> "ImageTextData":
        rows = list(rows)
        return ImageTextData(self.languages, {k: [v[i] for i in rows] for k, v in self.captions.items()},
                             None if self.images is None else [self.images[i] for i in rows],
                             None if self.features is None else np.asarray(self.features[rows]), self.source)


def _read_table(path: Path):
    import datasets

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _FORMATS)
        if not files:
            raise ValueError(f"{path}: no .jsonl / .csv / .parquet table in this directory")
    else:
        files = [path]
    kinds = {_FORMATS.get(p.suffix) for p in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(f"{path}: expected .jsonl, .json, .csv or .parquet files of one kind, got {[p.name for p in files]}")
    return datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train")


def _to_wide(table, image_column: str, source: str):
    """Long rows (image, language, caption) -> {image: ..., <lang>: [...]} (first caption per image and language)."""
    order, rows = [], {}
    for image, lang, caption in zip(table[image_column], table["language"], table["caption"]):
        key = image if isinstance(image, str) else repr(image)
        if key not in rows:
            rows[key] = {"image": image}
            order.append(key)
        rows[key].setdefault(str(lang), caption)
    languages = sorted({lang for row in rows.values() for lang in row if lang != "image"})
    return {"image": [rows[k]["image"] for k in order], **{lang: [rows[k].get(lang) for k in order] for lang in languages}}


def load_image_text_table(path: str | os.PathLike, languages: Optional[Sequence[str]] = None, *,
                          image_column: str = "image", features: Optional[np.ndarray] = None,
                          check_images: bool = True) -> ImageTextData:
    """Read a wide or long image-caption table; keep ``languages`` (default: every caption column).

    Image entries are paths (relative to the table's directory), ``{"bytes", "path"}`` dicts (parquet
    written by ``datasets``) or raw bytes. ``features`` [N, W] replaces the images (precomputed
    embeddings, one row per table row in order). ``check_images`` verifies that every path exists.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise ValueError(f"image-text data {path} does not exist")
    source = str(path)
    table = _read_table(path)
    base = path if path.is_dir() else path.parent
    if {"language", "caption"} <= set(table.column_names):
        columns = _to_wide(table, image_column, source) if image_column in table.column_names else None
    else:
        columns = {name: table[name] for name in table.column_names} if image_column in table.column_names else None
    if columns is None and features is None:
        raise ValueError(f"{source}: no {image_column!r} column (columns: {table.column_names})")
    if columns is None:
        columns = {name: table[name] for name in table.column_names}
    found = [c for c in columns if c not in _NOT_LANGUAGES and c != image_column]
    if isinstance(languages, str):
        languages = [x for x in languages.split(",") if x]
    wanted = list(languages) if languages else found
    present = [lang for lang in wanted if lang in found]
    if not present:
        raise ValueError(f"{source}: none of the requested languages {wanted} is a caption column (found: {found})")
    missing = [lang for lang in wanted if lang not in found]
    if missing:
        raise ValueError(f"{source}: no captions in {missing} (caption columns found: {found})")
    captions = {lang: list(columns[lang]) for lang in present}
    images = None
    if features is None:
        cast = datasets.Dataset.from_dict({"image": [_image_entry(x, base) for x in columns["image"]]})
        cast = cast.cast_column("image", datasets.Image(decode=False))
        images = list(cast["image"])
        if check_images:
            absent = [e["path"] for e in images if e.get("bytes") is None and not Path(e["path"]).is_file()]
            if absent:
                shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
                raise ValueError(f"{source}: {len(absent)} image file(s) missing: {shown}")
    return ImageTextData(tuple(present), captions, images, features, source)


def _image_entry(value, base: Path) -> dict:
    if isinstance(value, dict):
        path = value.get("path")
        if value.get("bytes") is None and path is not None and not Path(path).is_absolute():
            path = str(base / path)
        return {"bytes": value.get("bytes"), "path": path}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str):
        return {"bytes": None, "path": value if Path(value).is_absolute() else str(base / value)}
    raise ValueError(f"image entry must be a path, bytes or a {{bytes, path}} dict, got {type(value).__name__}")


def xtd_training_data(data_dir: str | os.PathLike, image_dir: str | os.PathLike,
                      languages: Optional[Sequence[str]] = None) -> ImageTextData:
    """The XTD captions (one per image and language) with their images, as training data (tests, smoke runs)."""
    from ..data.xtd import read_xtd_dir

    columns = read_xtd_dir(data_dir, languages)
    langs = tuple(k for k in columns if k != "image")
    images = [{"bytes": None, "path": str(Path(image_dir) / name)} for name in columns["image"]]
    return ImageTextData(langs, {lang: columns[lang] for lang in langs}, images, None, f"XTD {data_dir}")
