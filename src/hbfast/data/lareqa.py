"""LAReQA-format retrieval data (XQuAD-R, MLQA-R): questions, sentence candidates and parallel relevance.

A LAReQA file is SQuAD JSON whose paragraphs also carry ``sentences`` and ``sentence_breaks``
([start, end) character spans of each sentence in ``context``). The candidates of a language are
the sentences of all its paragraphs; a question's relevant candidate is the sentence holding its
answer start. Question ids are shared across languages, which gives the parallel relevance of the
multilingual setting.

Sources, in this order: an explicit ``data_dir``; the compact copy bundled with the package;
the public LAReQA files (pinned GitHub commits, sha256-checked, cached) when the bundle is absent.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Sequence

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"

LANGUAGES = {
    "xquad-r": ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"),
    "mlqa-r": ("ar", "de", "en", "es", "hi", "vi", "zh"),
}

# Public files, pinned to the commits that hold them (mlqa-r/ was later removed from the repository).
_RAW = "https://raw.githubusercontent.com/google-research-datasets/lareqa"
URLS = {
    "xquad-r": f"{_RAW}/5405d2a77e83d5ccb47623a3f9e5604c3f103193/xquad-r",
    "mlqa-r": f"{_RAW}/354d67d1cd066854cdfbf5ad0e6105528976141d/mlqa-r",
}
SHA256 = {
    "xquad-r": {
        "ar": "c52922d3b8ac1ae03ed5ac38647ad59870dca3dda2beefe18ecdc30729acb69d",
        "de": "16fb0f4bf4916154b585a20c24c66074591c9718a1affe764ff4697572328949",
        "el": "163fd43ee785a30eb534ae2061e9eaa766a7ee4e8ffce5e4b422480c150f64b6",
        "en": "7b0954f39297c27a31fef610f0883337dd2907fa8699151dc922afdd0fa12ffe",
        "es": "f8e836b2d91009c4363e04315f7ede363eedbbb49c67dda60de6c4aa782f58de",
        "hi": "ea45ba8ae4513d1533b222bebdc02a90bc319c055d3aeea68584a053d2e92872",
        "ru": "7f4dff853538b9a5fcc28c070b8bb983a5c5d190ac747b8e005a1ada9cab18f1",
        "th": "c3a041864c3a9fb0b4dd91cfdf99cf36b411b3e704c58a303c97bc6dc786cfe4",
        "tr": "f3e8c13002bbce154a4578f535f7533cb70f3da08840e6b62735935baec7bd94",
        "vi": "e35926bf5cc6fc6ecbdfca49467aabeb454f08d152d7818143a906bd31dde995",
        "zh": "80c2cde7b9c2fb134c303cbb52f2ba396ead9eb0014aec43993543d2ba9e93ed",
    },
    "mlqa-r": {
        "ar": "2132fbc03208535c0fe01f2e2c5121d06f9c2aa799af93b0a719dbc105bdf137",
        "de": "ce9454dc5aa6f2d85c23cd6e49cb367fbb7c4c6e62d7f71e355c6b5dae4d0886",
        "en": "fedd9a5cc0848dda80caf84aa36f482adaae230526a3f6e9e86926a93ef3b1e4",
        "es": "70ecba276b8c96a692b120693a595d076ce94ad21d4b28311538a9fcbfe0f9d7",
        "hi": "4dd0fb3c06f737a5481d705bc1dcac7876712a5815c9265908fbb3a0696cb654",
        "vi": "9d3baff6ba03e6793b25594217265ea59a136b9733833dca8a9582a84a78ff85",
        "zh": "57f01d2fff50cf3392805635b01445339f225ad5bf28ba8443b12f8dbd1e69dc",
    },
}


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """One paragraph as the protocol needs it: its sentences and the questions answered in it."""

    sentences: list[str]
    question_ids: list[str]
    questions: list[str]
    answer_sentences: list[int]  # index into ``sentences`` of each question's answer


@dataclasses.dataclass(frozen=True)
class LAReQADataset:
    """Per language, a ``questions`` table (id, question, relevant) and a ``candidates`` table (text, paragraph).

    ``relevant`` is the row of the question's answer sentence in that language's candidates.
    Both are Hugging Face ``datasets.Dataset`` (Arrow) tables.
    """

    name: str
    languages: tuple[str, ...]
    questions: dict
    candidates: dict
    source: str

    def subset(self, languages: Sequence[str]) -> "LAReQADataset":
        languages = check_languages(self.name, tuple(languages), self.languages)
        return dataclasses.replace(
            self,
            languages=languages,
            questions={lang: self.questions[lang] for lang in languages},
            candidates={lang: self.candidates[lang] for lang in languages},
        )

    def head(self, paragraphs: int) -> "LAReQADataset":
        """The first ``paragraphs`` paragraphs of each language: their sentences as candidates and
        the questions answered in them (a faster, smaller benchmark with the same protocol)."""
        if isinstance(paragraphs, bool) or not isinstance(paragraphs, int) or paragraphs < 1:
            raise ValueError(f"paragraphs must be a positive int, got {paragraphs!r}")
        questions, candidates = {}, {}
        for lang in self.languages:
            paragraph_of = self.candidates[lang].data.column("paragraph").to_numpy()
            cut = int((paragraph_of < paragraphs).sum())  # candidates are stored paragraph by paragraph
            candidates[lang] = self.candidates[lang].select(range(cut))
            relevant = self.questions[lang].data.column("relevant").to_numpy()
            questions[lang] = self.questions[lang].select([i for i, r in enumerate(relevant) if r < cut])
        return dataclasses.replace(self, questions=questions, candidates=candidates,
                                   source=f"{self.source}, first {paragraphs} paragraphs")

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{lang}: {len(self.questions[lang])}q/{len(self.candidates[lang])}c" for lang in self.languages
        )
        return f"LAReQADataset({self.name!r}, {sizes}; from {self.source})"


def check_languages(name: str, wanted: tuple[str, ...] | None, available: Sequence[str]) -> tuple[str, ...]:
    """The languages of data set ``name`` to load (all ``available`` for None), or an error naming the
    unknown ones or an empty list (LAReQA and XTD alike)."""
    if wanted is None:
        return tuple(available)
    if isinstance(wanted, str):
        wanted = tuple(w for w in wanted.split(",") if w)
    if not wanted:
        raise ValueError(f"{name}: the list of languages is empty")
    unknown = [lang for lang in wanted if lang not in available]
    if unknown:
        raise ValueError(f"{name}: unknown language(s) {unknown}; available: {list(available)}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"{name}: duplicate languages in {list(wanted)}")
    return tuple(wanted)


def read_lareqa_json(path: str | os.PathLike) -> list[Paragraph]:
    """Parse and check one LAReQA JSON file; errors name the file and the question id."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError(f"{path}: not a SQuAD/LAReQA file (expected an object with a 'data' list)")
    paragraphs, seen_ids = [], set()
    for a, article in enumerate(doc["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"{path}: data[{a}] has no 'paragraphs' list")
        for p, par in enumerate(article["paragraphs"]):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            for key in ("sentences", "sentence_breaks", "qas"):
                if not isinstance(par.get(key), list):
                    raise ValueError(f"{where} has no '{key}' list (is this a LAReQA file?)")
            sentences, breaks = par["sentences"], par["sentence_breaks"]
            if len(sentences) != len(breaks):
                raise ValueError(f"{where}: {len(sentences)} sentences but {len(breaks)} sentence_breaks")
            if not all(isinstance(s, str) for s in sentences):
                raise ValueError(f"{where}: sentences must be strings")
            if not all(isinstance(b, list) and len(b) == 2 for b in breaks):
                raise ValueError(f"{where}: sentence_breaks must be [start, end] pairs")
            ids, questions, answer_sentences = [], [], []
            for qa in par["qas"]:
                qid = qa.get("id")
                if not isinstance(qid, str) or not isinstance(qa.get("question"), str):
                    raise ValueError(f"{where}: a question without a string 'id' or 'question' ({str(qa)[:80]})")
                if qid in seen_ids:
                    raise ValueError(f"{path}: duplicate question id {qid!r}")
                seen_ids.add(qid)
                answers = qa.get("answers")
                if not answers or not isinstance(answers[0].get("answer_start"), int):
                    raise ValueError(f"{path}: question {qid!r} has no answer with an integer answer_start")
                start = answers[0]["answer_start"]
                hits = [i for i, (b, e) in enumerate(breaks) if b <= start < e]
                if not hits:
                    raise ValueError(
                        f"{path}: question {qid!r}: answer start {start} lies in no sentence of its paragraph"
                    )
                ids.append(qid)
                questions.append(qa["question"])
                answer_sentences.append(hits[0])
            paragraphs.append(Paragraph(list(sentences), ids, questions, answer_sentences))
    if not seen_ids:
        raise ValueError(f"{path}: no questions")
    return paragraphs


def _tables(paragraphs: list[Paragraph]):
    """Arrow tables of one language: questions (id, question, relevant) and candidates (text, paragraph)."""
    import datasets

    texts, paragraph_of, ids, questions, relevant = [], [], [], [], []
    for p, par in enumerate(paragraphs):
        offset = len(texts)
        texts.extend(par.sentences)
        paragraph_of.extend([p] * len(par.sentences))
        ids.extend(par.question_ids)
        questions.extend(par.questions)
        relevant.extend(offset + s for s in par.answer_sentences)
    features_q = datasets.Features(
        {"id": datasets.Value("string"), "question": datasets.Value("string"), "relevant": datasets.Value("int64")}
    )
    features_c = datasets.Features({"text": datasets.Value("string"), "paragraph": datasets.Value("int64")})
    q = datasets.Dataset.from_dict({"id": ids, "question": questions, "relevant": relevant}, features=features_q)
    c = datasets.Dataset.from_dict({"text": texts, "paragraph": paragraph_of}, features=features_c)
    return q, c


def _from_paragraphs(name: str, by_language: dict[str, list[Paragraph]], source: str) -> LAReQADataset:
    questions, candidates = {}, {}
    for lang, paragraphs in by_language.items():
        questions[lang], candidates[lang] = _tables(paragraphs)
    return LAReQADataset(name, tuple(by_language), questions, candidates, source)


def _load_dir(name: str, directory: Path, languages: tuple[str, ...] | None) -> LAReQADataset:
    if not directory.is_dir():
        raise ValueError(f"{name}: data directory {directory} does not exist")
    available = sorted(p.stem for p in directory.glob("*.json"))
    if name in LANGUAGES:
        expected = languages or LANGUAGES[name]
        missing = [lang for lang in expected if not (directory / f"{lang}.json").is_file()]
        if missing:
            raise ValueError(
                f"{name}: {directory} lacks {', '.join(f'{m}.json' for m in missing)} (found: {available})"
            )
        languages = check_languages(name, languages, LANGUAGES[name])
    else:
        if not available:
            raise ValueError(f"{directory}: no <language>.json files")
        languages = check_languages(name, languages, available)
    return _from_paragraphs(
        name, {lang: read_lareqa_json(directory / f"{lang}.json") for lang in languages}, str(directory)
    )


def bundled_path(name: str) -> Path:
    return BUNDLED_DIR / f"{name}.parquet"


def write_bundle(by_language: dict[str, list[Paragraph]], path: str | os.PathLike) -> None:
    """The compact bundled form: one zstd parquet, a row per paragraph with only what the protocol needs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"lang": [], "sentences": [], "question_ids": [], "questions": [], "answer_sentences": []}
    for lang, paragraphs in by_language.items():
        for par in paragraphs:
            rows["lang"].append(lang)
            rows["sentences"].append(par.sentences)
            rows["question_ids"].append(par.question_ids)
            rows["questions"].append(par.questions)
            rows["answer_sentences"].append(par.answer_sentences)
    table = pa.table(rows)
    pq.write_table(table, str(path), compression="zstd", compression_level=19)


def _load_bundle(name: str, path: Path, languages: tuple[str, ...] | None) -> LAReQADataset:
    import pyarrow.parquet as pq

    table = pq.read_table(str(path)).to_pydict()
    by_language: dict[str, list[Paragraph]] = {}
    for i, lang in enumerate(table["lang"]):
        by_language.setdefault(lang, []).append(
            Paragraph(table["sentences"][i], table["question_ids"][i], table["questions"][i], table["answer_sentences"][i])
        )
    languages = check_languages(name, languages, tuple(by_language))
    return _from_paragraphs(name, {lang: by_language[lang] for lang in languages}, f"bundled {path.name}")


def default_cache_dir() -> Path:
    return Path(os.environ.get("HBFAST_CACHE", Path.home() / ".cache" / "hbfast"))


def _fetch(url: str, destination: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as f:
        shutil.copyfileobj(response, f)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_files(name: str, files: dict[str, str], base_url: str, directory: Path,
                   fetch: Callable[[str, Path], None] | None = None) -> Path:
    """Fetch ``base_url/<relpath>`` into ``directory/<relpath>`` for each ``{relpath: sha256}``.

    Files already there with the right checksum are reused; a new file is checked before it is
    moved into place (atomically), so a partial or altered download never reaches the cache.
    """
    fetch = fetch or _fetch
    base_url = base_url.rstrip("/")
    for relpath, expected in files.items():
        target = directory / relpath
        if target.is_file() and _sha256(target) == expected:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"{base_url}/{relpath}"
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            partial = Path(tmp) / target.name
            try:
                fetch(url, partial)
            except OSError as e:
                raise OSError(f"{name}: could not download {url} ({e}); pass data_dir= to use local files") from e
            got = _sha256(partial)
            if got != expected:
                raise ValueError(f"{name}: checksum mismatch for {url}: sha256 {got}, expected {expected}")
            os.replace(partial, target)
    return directory


def download_lareqa(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    languages: Iterable[str] | None = None,
    *,
    base_url: str | None = None,
    fetch: Callable[[str, Path], None] | None = None,
) -> Path:
    """Download the public ``<lang>.json`` files into ``cache_dir/<name>/``, each checked by sha256.

    Files already cached with the right checksum are reused. ``base_url`` (e.g. a ``file://`` URL)
    and ``fetch(url, destination)`` replace the public location and the HTTP client (for tests and
    mirrors); the checksums are always enforced. Returns the directory.
    """
    if name not in URLS:
        raise ValueError(f"unknown LAReQA dataset {name!r}; known: {sorted(URLS)}")
    languages = check_languages(name, tuple(languages) if languages is not None else None, LANGUAGES[name])
    files = {f"{lang}.json": SHA256[name][lang] for lang in languages}
    return download_files(name, files, base_url or URLS[name], Path(cache_dir or default_cache_dir()) / name, fetch)


def load_lareqa(
    name: str = "xquad-r",
    *,
    data_dir: str | os.PathLike | None = None,
    languages: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LAReQADataset:
    """Load XQuAD-R or MLQA-R (``name``), or a directory of ``<lang>.json`` LAReQA files.

    Sources, in order: ``data_dir`` (``<lang>.json`` files, directly or under ``data_dir/<name>/``);
    the compact copy bundled with hbfast; the public files (downloaded once into ``cache_dir``,
    sha256-checked). Never falls back to a different dataset: an unusable source is an error.
    """
    languages = tuple(w for w in languages.split(",") if w) if isinstance(languages, str) else languages
    languages = tuple(languages) if languages is not None else None  # () is an error, not "every language"
    if name not in LANGUAGES:
        if Path(name).is_dir():
            return _load_dir(Path(name).name, Path(name), languages)
        raise ValueError(f"unknown dataset {name!r}: use one of {sorted(LANGUAGES)} or a directory of <lang>.json files")
    if data_dir is not None:
        directory = Path(data_dir)
        if (directory / name).is_dir():
            directory = directory / name
        return _load_dir(name, directory, languages)
    if bundled_path(name).is_file():
        return _load_bundle(name, bundled_path(name), languages)
    directory = download_lareqa(name, cache_dir, languages)
    return _load_dir(name, directory, languages)
