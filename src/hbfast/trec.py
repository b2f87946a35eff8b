"""TREC run and qrels files, read and written: what ``hbfast search`` / ``hbfast eval --index`` hand to
trec_eval, pytrec_eval or ranx (this module exists so that both commands share one exact format).

run:   ``qid Q0 docid rank score tag``, one line per retrieved document, best first (rank 1-based;
       scores written with 9 significant digits, so float32 scores read back exactly).
qrels: ``qid iteration docid relevance`` (TREC), or BEIR's ``query-id corpus-id score`` TSV with a header.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_token(kind: str, value: str) -> str:
    value = str(value)
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{kind} {value!r} cannot be written to a TREC file (empty, or holds whitespace)")
    return value


def write_run(path, query_ids: Sequence[str], doc_ids: Sequence[Sequence[str]], scores, tag: str = "hbfast") -> None:
    """Writes a TREC run (atomically): ``doc_ids[i]`` / ``scores[i]`` are query i's documents, best
    first ("" entries are skipped)."""
    scores = np.asarray(scores, dtype=np.float32)
    if len(query_ids) != len(doc_ids) or scores.shape[0] != len(query_ids):
        raise ValueError(f"write_run: {len(query_ids)} query ids, {len(doc_ids)} rows of doc ids, {scores.shape[0]} of scores")
    tag = _check_token("run tag", tag)
    lines = []
    for qid, docs, row in zip(query_ids, doc_ids, scores):
        qid = _check_token("query id", qid)
        rank = 0
        for doc, score in zip(docs, row):
            if doc == "":
                continue
            rank += 1
            lines.append(f"{qid} Q0 {_check_token('document id', doc)} {rank} {float(score):.9g} {tag}\n")
    _atomic_write_text(Path(path), "".join(lines))


def read_run(path) -> Dict[str, Dict[str, float]]:
    """A TREC run as pytrec_eval's dict ``{qid: {docid: score}}``."""
    run: Dict[str, Dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise ValueError(f"{path}:{number}: expected 'qid Q0 docid rank score tag', got {line.strip()!r}")
            try:
                run.setdefault(fields[0], {})[fields[2]] = float(fields[4])
            except ValueError:
                raise ValueError(f"{path}:{number}: score {fields[4]!r} is not a number") from None
    return run


def read_qrels(path) -> Dict[str, Dict[str, int]]:
    """TREC qrels (``qid iter docid rel``) or a BEIR qrels TSV (``query-id corpus-id score``, header
    line) as ``{qid: {docid: relevance}}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"qrels file {path} not found")
    qrels: Dict[str, Dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) == 3 and number == 1 and not _is_int(fields[2]):
                continue  # BEIR's header
            if len(fields) not in (3, 4) or not _is_int(fields[-1]):
                raise ValueError(f"{path}:{number}: expected 'qid iter docid relevance' (TREC) or "
                                 f"'query-id corpus-id score' (BEIR), got {line.strip()!r}")
            qid, doc = fields[0], fields[-2]
            qrels.setdefault(qid, {})[doc] = int(fields[-1])
    if not qrels:
        raise ValueError(f"{path}: no judgements")
    return qrels


def write_qrels(path, qrels: Dict[str, Dict[str, int]]) -> None:
    """Writes TREC qrels (``qid 0 docid relevance``), atomically."""
    lines: List[str] = []
    for qid, docs in qrels.items():
        for doc, rel in docs.items():
            lines.append(f"{_check_token('query id', qid)} 0 {_check_token('document id', doc)} {int(rel)}\n")
    _atomic_write_text(Path(path), "".join(lines))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
