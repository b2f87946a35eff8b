"""BEIR-style retrieval data (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), as MIRACL and most IR sets ship."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class BEIRDataset:
    """``corpus`` (id, title, text) and ``queries`` (id, text) Arrow tables; ``qrels[qid][docid] = grade``."""

    name: str
    corpus: object
    queries: object
    qrels: dict
    source: str

    def __repr__(self) -> str:
        return f"BEIRDataset({self.name!r}, {len(self.corpus)} docs, {len(self.queries)} queries, {len(self.qrels)} judged; from {self.source})"


def _read_jsonl(path: Path, fields: tuple[str, ...]) -> dict[str, list]:
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    columns = {f: [] for f in fields}
    seen = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: malformed JSON ({e})") from None
            if not isinstance(row, dict) or "_id" not in row or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{number}: expected an object with '_id' and a string 'text'")
            row_id = str(row["_id"])
            if row_id in seen:
                raise ValueError(f"{path}:{number}: duplicate id {row_id!r}")
            seen.add(row_id)
            columns["_id"].append(row_id)
            for field in fields[1:]:
                columns[field].append(str(row.get(field) or ""))
    if not seen:
        raise ValueError(f"{path}: no rows")
    return columns


def _read_qrels(path: Path, query_ids: set, doc_ids: set) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if number == 1 and parts[:2] == ["query-id", "corpus-id"]:
                continue  # header
            if not line.strip():
                continue
            if len(parts) == 4:  # TREC style: qid 0 docid grade
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise ValueError(f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score', got {line.strip()!r}")
            qid, docid, grade = parts
            try:
                grade = int(grade)
            except ValueError:
                raise ValueError(f"{path}:{number}: score {grade!r} is not an integer") from None
            if qid not in query_ids:
                raise ValueError(f"{path}:{number}: query id {qid!r} is not in queries.jsonl")
            if docid not in doc_ids:
                raise ValueError(f"{path}:{number}: corpus id {docid!r} is not in corpus.jsonl")
            if docid in qrels.get(qid, {}):
                raise ValueError(f"{path}:{number}: duplicate judgement for query {qid!r}, document {docid!r}")
            qrels.setdefault(qid, {})[docid] = grade
    return qrels


def load_beir(data_dir: str | os.PathLike, split: str = "test") -> BEIRDataset:
    """Load ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from ``data_dir``."""
    import datasets

    directory = Path(data_dir)
    if not directory.is_dir():
        raise ValueError(f"BEIR data directory {directory} does not exist")
    corpus = _read_jsonl(directory / "corpus.jsonl", ("_id", "title", "text"))
    queries = _read_jsonl(directory / "queries.jsonl", ("_id", "text"))
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.name for p in (directory / "qrels").glob("*.tsv"))
        raise ValueError(f"{qrels_path}: file not found (qrels present: {found})")
    qrels = _read_qrels(qrels_path, set(queries["_id"]), set(corpus["_id"]))
    if not qrels:
        raise ValueError(f"{qrels_path}: no judgements")
    corpus_table = datasets.Dataset.from_dict({"id": corpus["_id"], "title": corpus["title"], "text": corpus["text"]})
    queries_table = datasets.Dataset.from_dict({"id": queries["_id"], "text": queries["text"]})
    return BEIRDataset(directory.name, corpus_table, queries_table, qrels, str(directory))
