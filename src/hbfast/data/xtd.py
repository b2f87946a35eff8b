"""XTD10/XTD11 image-text retrieval data: 1000 COCO images, one caption per image in each language.

Captions come from ``data_dir`` (the XTD10 repository layout: ``XTD10/test_1kcaptions_<lang>.txt``,
``MIC/`` for de and fr, ``STAIR/`` for jp, ``XTD10/test_image_names.txt``) or from the compact copy
bundled with hbfast; the images are never shipped and are read from a user-given directory.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from .lareqa import BUNDLED_DIR, _check_languages

LANGUAGES = ("en", "es", "it", "ko", "pl", "ru", "tr", "zh", "de", "fr", "jp")
_SUBDIRS = ("XTD10", "MIC", "STAIR", ".")


@dataclasses.dataclass(frozen=True)
class XTDDataset:
    """``captions`` is an Arrow table with an ``image`` column (COCO file name) and one column per language."""

    languages: tuple[str, ...]
    captions: object
    image_dir: Path | None
    source: str

    @property
    def image_names(self) -> list[str]:
        return list(self.captions["image"])

    def image_paths(self) -> list[Path]:
        if self.image_dir is None:
            raise ValueError("XTD: no image directory given (pass images=DIR / --images DIR with the COCO images)")
        return [self.image_dir / name for name in self.image_names]

    def __repr__(self) -> str:
        return f"XTDDataset({len(self.captions)} images, languages {list(self.languages)}; from {self.source})"


def _find(directory: Path, filename: str) -> Path | None:
    for sub in _SUBDIRS:
        if (directory / sub / filename).is_file():
            return directory / sub / filename
    return None


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def read_xtd_dir(directory: str | os.PathLike, languages: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Columns ``image`` and ``<lang>`` read from an XTD10-layout directory; checks every count."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"XTD: data directory {directory} does not exist")
    if (directory / "xtd10").is_dir():  # a parent holding xtd10/, like the LAReQA data dirs
        directory = directory / "xtd10"
    names_path = _find(directory, "test_image_names.txt")
    if names_path is None:
        raise ValueError(f"XTD: {directory} has no test_image_names.txt (in {', '.join(_SUBDIRS)})")
    found = [lang for lang in LANGUAGES if _find(directory, f"test_1kcaptions_{lang}.txt")]
    wanted = languages or found
    missing = [lang for lang in wanted if lang not in found]
    if missing:
        raise ValueError(
            f"XTD: {directory} lacks captions for {missing} (test_1kcaptions_<lang>.txt); found: {found}"
        )
    languages = _check_languages("XTD", tuple(wanted), LANGUAGES)
    columns = {"image": _read_lines(names_path)}
    if len(set(columns["image"])) != len(columns["image"]):
        raise ValueError(f"{names_path}: duplicate image names")
    for lang in languages:
        path = _find(directory, f"test_1kcaptions_{lang}.txt")
        captions = _read_lines(path)
        if len(captions) != len(columns["image"]):
            raise ValueError(f"{path}: {len(captions)} captions for {len(columns['image'])} images in {names_path}")
        empty = [i for i, c in enumerate(captions) if not c.strip()]
        if empty:
            raise ValueError(f"{path}: empty caption on line(s) {[i + 1 for i in empty[:10]]}")
        columns[lang] = captions
    return columns


def load_xtd(
    data_dir: str | os.PathLike | None = None,
    *,
    images: str | os.PathLike | None = None,
    languages: Sequence[str] | None = None,
) -> XTDDataset:
    """XTD captions (from ``data_dir`` or the bundled copy) with the images in ``images``.

    Every listed image must be present in ``images`` (or its ``train2014/`` folder); otherwise the
    error lists the missing files.
    """
    import datasets

    if isinstance(languages, str):
        languages = tuple(lang for lang in languages.split(",") if lang)
    if data_dir is not None:
        columns, source = read_xtd_dir(data_dir, languages), str(data_dir)
    else:
        path = BUNDLED_DIR / "xtd10.parquet"
        if not path.is_file():
            raise ValueError("XTD: no bundled captions in this install; pass data_dir= (the XTD10 repository)")
        import pyarrow.parquet as pq

        table = pq.read_table(str(path)).to_pydict()
        available = [lang for lang in LANGUAGES if lang in table]
        chosen = _check_languages("XTD", tuple(languages) if languages else None, available)
        columns, source = {"image": table["image"], **{lang: table[lang] for lang in chosen}}, f"bundled {path.name}"
    chosen = tuple(lang for lang in columns if lang != "image")
    image_dir = None
    if images is not None:
        image_dir = Path(images)
        if not image_dir.is_dir():
            raise ValueError(f"XTD: image directory {image_dir} does not exist")
        if not (image_dir / columns["image"][0]).is_file() and (image_dir / "train2014").is_dir():
            image_dir = image_dir / "train2014"
        missing = [name for name in columns["image"] if not (image_dir / name).is_file()]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(f"XTD: {len(missing)} of {len(columns['image'])} images missing in {image_dir}: {shown}")
    return XTDDataset(chosen, datasets.Dataset.from_dict(columns), image_dir, source)
