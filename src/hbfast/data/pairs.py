"""Training pairs for hybrid batches: item i has, per language it exists in, a query and a passage.

Sources: LAReQA-format data (the bundled MLQA-R / XQuAD-R, or a directory of ``<lang>.json``:
question -> the sentence holding its answer, question ids are the items) and long-format tables
(``id, language, query, passage`` in JSONL / CSV / Parquet, or any ``datasets.Dataset``).
The ``availability`` matrix is what ``hbfast.hybrid_batches`` takes. Items whose passages are the
same text in some language share a group id, so the loss never uses one as the other's negative;
the held-out split is by group (so by item, never by row). Tokens are computed once per
language and side through the ``datasets`` cache (``tokenize_pairs``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

LONG_COLUMNS = ("id", "language", "query", "passage")
TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class ParallelPairs:
    """``queries[lang][i]`` / ``passages[lang][i]``: item i's texts in ``lang`` (None where absent)."""

    ids: tuple[str, ...]
    languages: tuple[str, ...]
    queries: dict
    passages: dict
    groups: np.ndarray  # int64 [items]; equal ids are never each other's negatives
    source: str = ""

    @property
    def availability(self) -> np.ndarray:
        """bool [items, languages]."""
        out = np.zeros((len(self.ids), len(self.languages)), dtype=bool)
        for j, lang in enumerate(self.languages):
            out[:, j] = [q is not None for q in self.queries[lang]]
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def select_items(self, rows: Sequence[int]) -> "ParallelPairs":
        rows = list(rows)
        pick = lambda column: [column[r] for r in rows]  # noqa: E731
        return dataclasses.replace(
            self, ids=tuple(pick(self.ids)), groups=self.groups[rows],
            queries={lang: pick(v) for lang, v in self.queries.items()},
            passages={lang: pick(v) for lang, v in self.passages.items()})

    def select_languages(self, languages: Sequence[str] | str | None) -> "ParallelPairs":
        """Keep ``languages`` (in that order); items left with no language are dropped."""
        if languages is None:
            return self
        if isinstance(languages, str):
            languages = [x for x in languages.split(",") if x]
        missing = [lang for lang in languages if lang not in self.languages]
        if missing:
            raise ValueError(f"training data {self.source or ''} has no language(s) {missing}; "
                             f"it has {list(self.languages)}")
        if len(set(languages)) != len(languages) or not languages:
            raise ValueError(f"languages must be distinct and non-empty, got {list(languages)}")
        out = dataclasses.replace(self, languages=tuple(languages),
                                  queries={k: self.queries[k] for k in languages},
                                  passages={k: self.passages[k] for k in languages})
        return out.select_items(np.flatnonzero(out.availability.any(1)))

    def __repr__(self) -> str:
        counts = self.availability.sum(0)
        per = ", ".join(f"{lang}: {int(c)}" for lang, c in zip(self.languages, counts))
        return f"ParallelPairs({len(self)} items; {per}; from {self.source})"


def _group_ids(passages: dict, n: int) -> np.ndarray:
    """Union of items that share a passage text in some language; ids are each group's first item."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for texts in passages.values():
        first = {}
        for i, text in enumerate(texts):
            if text is None:
                continue
            j = first.setdefault(text, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def pairs_from_long(columns: dict, source: str = "") -> ParallelPairs:
    """Long format: equal-length lists ``id, language, query, passage``; one row per (item, language)."""
    missing = [c for c in LONG_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{source or 'training table'}: missing column(s) {missing}; "
                         f"expected {list(LONG_COLUMNS)}, got {list(columns)}")
    ids, langs, qs, ps = (columns[c] for c in LONG_COLUMNS)
    if len(ids) == 0:
        raise ValueError(f"{source or 'training table'}: no rows")
    item_of: dict[str, int] = {}
    for x in ids:
        item_of.setdefault(str(x), len(item_of))
    languages = tuple(dict.fromkeys(str(x) for x in langs))
    queries = {lang: [None] * len(item_of) for lang in languages}
    passages = {lang: [None] * len(item_of) for lang in languages}
    for r, (x, lang, q, p) in enumerate(zip(ids, langs, qs, ps)):
        if not isinstance(q, str) or not isinstance(p, str) or not q or not p:
            raise ValueError(f"{source}: row {r} (id {x!r}, language {lang!r}) needs non-empty query and passage strings")
        i = item_of[str(x)]
        if queries[str(lang)][i] is not None:
            raise ValueError(f"{source}: item {x!r} appears twice in language {lang!r}")
        queries[str(lang)][i], passages[str(lang)][i] = q, p
    return ParallelPairs(tuple(item_of), languages, queries, passages, _group_ids(passages, len(item_of)), source)


def pairs_from_lareqa(ds) -> ParallelPairs:
    """A ``LAReQADataset``'s questions as items: query = question, passage = its answer sentence."""
    rows = {c: [] for c in LONG_COLUMNS}
    for lang in ds.languages:
        q = ds.questions[lang]
        texts = ds.candidates[lang]["text"]
        for qid, question, relevant in zip(q["id"], q["question"], q["relevant"]):
            rows["id"].append(qid)
            rows["language"].append(lang)
            rows["query"].append(question)
            rows["passage"].append(texts[relevant])
    return pairs_from_long(rows, source=f"{ds.name} ({ds.source})")


def load_pairs(source, languages: Sequence[str] | str | None = None) -> ParallelPairs:
    """Training pairs from ``mlqa-r`` / ``xquad-r`` (bundled), a LAReQA directory, a JSONL / CSV /
    Parquet file in long format, or a ``datasets.Dataset`` with columns ``id, language, query, passage``."""
    from .lareqa import LANGUAGES, load_lareqa

    if hasattr(source, "column_names") and hasattr(source, "to_dict"):  # a datasets table
        pairs = pairs_from_long(source.to_dict(), source="datasets table")
    elif isinstance(source, str) and source in LANGUAGES:
        pairs = pairs_from_lareqa(load_lareqa(source))
    else:
        path = Path(source)
        if path.is_dir():
            pairs = pairs_from_lareqa(load_lareqa(str(path)))
        elif path.is_file():
            kind = TABLE_SUFFIXES.get(path.suffix.lower())
            if kind is None:
                raise ValueError(f"{path}: unknown training file type; use .jsonl, .csv, .parquet or a LAReQA directory")
            import datasets

            reader = {"json": datasets.Dataset.from_json, "csv": datasets.Dataset.from_csv,
                      "parquet": datasets.Dataset.from_parquet}[kind]
            try:
                table = reader(str(path))
            except Exception as e:  # datasets wraps parse errors in many types
                raise ValueError(f"{path}: cannot read as {kind} ({type(e).__name__}: {e})") from None
            pairs = pairs_from_long(table.to_dict(), source=str(path))
        else:
            raise FileNotFoundError(f"training data {source!r}: not 'mlqa-r', 'xquad-r', a file or a directory")
    return pairs.select_languages(languages)


def split_heldout(pairs: ParallelPairs, fraction: float, seed: int = 0) -> tuple[ParallelPairs, ParallelPairs | None]:
    """(train, held-out): ``fraction`` of the groups (all translations of an item, and items sharing
    a passage, stay on one side), drawn with ``seed``. ``fraction == 0`` gives (pairs, None)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return pairs, None
    groups = np.unique(pairs.groups)
    n_heldout = max(1, int(round(fraction * len(groups))))
    if n_heldout >= len(groups):
        raise ValueError(f"held-out fraction {fraction} leaves no training item ({len(groups)} groups)")
    chosen = np.random.default_rng(seed).choice(groups, n_heldout, replace=False)
    is_heldout = np.isin(pairs.groups, chosen)
    return pairs.select_items(np.flatnonzero(~is_heldout)), pairs.select_items(np.flatnonzero(is_heldout))


def token_cache_dir() -> Path:
    from .lareqa import default_cache_dir

    return default_cache_dir() / "tokens"


def _tokenize_texts(texts: list[str], tokenizer, max_length: int, cache_dir: Path) -> list[list[int]]:
    """Token ids of ``texts`` (no padding), through a ``datasets`` cache file keyed by content and tokenizer."""
    import datasets

    key = hashlib.sha256()
    for part in (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), str(len(tokenizer)),
                 str(max_length), *texts):
        key.update(part.encode("utf-8", "surrogatepass") + b"\0")
    cache_dir.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict({"text": texts})
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        table = table.map(lambda b: {"input_ids": tokenizer(b["text"], truncation=True, max_length=max_length)["input_ids"]},
                          batched=True, remove_columns=["text"],
                          cache_file_name=str(cache_dir / f"{key.hexdigest()[:32]}.arrow"), load_from_cache_file=True)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    return table["input_ids"]


def tokenize_pairs(pairs: ParallelPairs, tokenizer, max_length: int, *, query_prefix: str = "",
                   passage_prefix: str = "", cache_dir: str | os.PathLike | None = None) -> dict:
    """``{"query": {lang: [ids or None per item]}, "passage": {...}}``; one cached pass per language and side."""
    cache = Path(cache_dir) if cache_dir is not None else token_cache_dir()
    out = {}
    for side, texts_by_lang, prefix in (("query", pairs.queries, query_prefix), ("passage", pairs.passages, passage_prefix)):
        out[side] = {}
        for lang in pairs.languages:
            texts = texts_by_lang[lang]
            present = [i for i, t in enumerate(texts) if t is not None]
            ids = _tokenize_texts([prefix + texts[i] for i in present], tokenizer, max_length, cache)
            column = [None] * len(texts)
            for i, row in zip(present, ids):
                column[i] = row
            out[side][lang] = column
    return out
