"""XTD10/XTD11 image-text retrieval data: 1000 COCO images, one caption per image in each language.

Captions come from ``data_dir`` (the XTD10 repository layout: ``XTD10/test_1kcaptions_<lang>.txt``,
``MIC/`` for de and fr, ``STAIR/`` for jp, ``XTD10/test_image_names.txt``) or are downloaded once from
the public repository (sha256-checked, cached). They are not bundled: their Adobe Research License
allows noncommercial research use only, unlike hbfast's Apache-2.0. The images are never shipped and
are read from a user-given directory.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Sequence

from .lareqa import check_languages, default_cache_dir, download_files

LANGUAGES = ("en", "es", "it", "ko", "pl", "ru", "tr", "zh", "de", "fr", "jp")
_SUBDIRS = ("XTD10", "MIC", "STAIR", ".")

# The public files (branch main of the authors' repository; the checksums pin their content).
URL = "https://raw.githubusercontent.com/adobe-research/Cross-lingual-Test-Dataset-XTD10/main"
SHA256 = {
    "XTD10/test_image_names.txt": "504a472dfd40e44f2d0facd6320b9dc1c7d64c58aac9840f0b1da4807cb3a30a",
    "XTD10/test_1kcaptions_en.txt": "ac5531b6842c1d469fba80aa6f44e2af054e84a41da8f9eaf01d831e943039b9",
    "XTD10/test_1kcaptions_es.txt": "cacc43d4e7af56b02033865531ea70494049f1d0dd3ea89ff2a217e7e190c4f2",
    "XTD10/test_1kcaptions_it.txt": "b4095d3550eb1accf8c9c78314b4bef45847a3929b5c5fe15a1264ea31dec7cc",
    "XTD10/test_1kcaptions_ko.txt": "92d35e082cd081724560c9abdb2b45753ceb52aaabddb9a0f79dc04967a36800",
    "XTD10/test_1kcaptions_pl.txt": "b6af6b7941f44e902b50736dcf9a7221af28e755a259511652c599cf6ae89c78",
    "XTD10/test_1kcaptions_ru.txt": "7d93631ff85b53592091b3cbfd9ca963397e77038fb3d0fdd9374b1b02ae98a3",
    "XTD10/test_1kcaptions_tr.txt": "147e9763dcb6e6ebba0b98fc799f0145c7d90005fa03ca8ec5a7cf29a04dd136",
    "XTD10/test_1kcaptions_zh.txt": "17229ff02ac85dd2d165f8316515a24fbe5100dbf486c22aaa12105dfb3353bf",
    "MIC/test_1kcaptions_de.txt": "51f1e9fe05d85b7cd33543676ed2fea51b05399cc403a5fca557ca7ecdb9a207",
    "MIC/test_1kcaptions_fr.txt": "84aa16954706a0f654b59788ffb6a3bcb1b1d9d12dc9d7a3de26730bc04664b5",
    "STAIR/test_1kcaptions_jp.txt": "20908aa5763ee7b1bacc1f29aa507532d3dc6a7e6a8c43e6acd2ec72d1e80c10",
}


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
    wanted = found if languages is None else languages  # [] is an error, not "every language"
    missing = [lang for lang in wanted if lang not in found]
    if missing:
        raise ValueError(
            f"XTD: {directory} lacks captions for {missing} (test_1kcaptions_<lang>.txt); found: {found}"
        )
    languages = check_languages("XTD", tuple(wanted), LANGUAGES)
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


def download_xtd(
    cache_dir: str | os.PathLike | None = None,
    languages: Sequence[str] | None = None,
    *,
    base_url: str | None = None,
    fetch: Callable[[str, Path], None] | None = None,
) -> Path:
    """Download the image names and the captions of ``languages`` (default: all 11) into
    ``cache_dir/xtd10/``, each checked by sha256; returns that directory (usable as ``data_dir``)."""
    languages = check_languages("XTD", tuple(languages) if languages is not None else None, LANGUAGES)
    wanted = {"XTD10/test_image_names.txt"} | {path for path in SHA256 if path.endswith(
        tuple(f"_{lang}.txt" for lang in languages))}
    files = {path: sha for path, sha in SHA256.items() if path in wanted}
    return download_files("XTD", files, base_url or URL, Path(cache_dir or default_cache_dir()) / "xtd10", fetch)


def load_xtd(
    data_dir: str | os.PathLike | None = None,
    *,
    images: str | os.PathLike | None = None,
    languages: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> XTDDataset:
    """XTD captions (from ``data_dir``, else downloaded once into ``cache_dir``) with the images in ``images``.

    Every listed image must be present in ``images`` (or its ``train2014/`` folder); otherwise the
    error lists the missing files.
    """
    import datasets

    if isinstance(languages, str):
        languages = tuple(lang for lang in languages.split(",") if lang)
    if data_dir is None:
        data_dir = download_xtd(cache_dir, languages)
    columns, source = read_xtd_dir(data_dir, languages), str(data_dir)
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
