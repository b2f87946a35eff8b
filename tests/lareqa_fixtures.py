"""Builders of small LAReQA / BEIR / XTD datasets on disk for the data, eval and CLI tests."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch


def _shared_data() -> Path:
    """The original data files: $HBFAST_SHARED_DATA, else shared/data beside the checkout."""
    env = os.environ.get("HBFAST_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED_DATA = _shared_data()


def require_shared_data() -> Path:
    """SHARED_DATA, or a skip naming where it was looked for; a failure instead under CI (CI=true)
    or when HBFAST_SHARED_DATA names it, where a silent skip would hide that the tests never ran."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    why = (f"needs the original data at {SHARED_DATA} (shared/data beside the checkout, or set "
           "HBFAST_SHARED_DATA)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("HBFAST_SHARED_DATA"):
        pytest.fail(why)
    pytest.skip(why)


def write_lareqa(path: Path, paragraphs) -> Path:
    """paragraphs: [(sentences, [(qid, question, answer_sentence_index), ...]), ...] -> a LAReQA JSON file."""
    out = []
    for sentences, qas in paragraphs:
        context, breaks = "", []
        for s in sentences:
            start = len(context) + (1 if context else 0)
            context = f"{context} {s}" if context else s
            breaks.append([start, start + len(s)])
        out.append({
            "context": context, "sentences": sentences, "sentence_breaks": breaks,
            "qas": [{"id": qid, "question": q, "answers": [{"answer_start": breaks[i][0] + 1, "text": "x"}]}
                    for qid, q, i in qas],
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": out}]}), encoding="utf-8")
    return path


# Two parallel languages; q3 exists only in "en" (MLQA-R style partial parallelism).
TINY = {
    "en": [(["the cat sleeps", "dogs bark loudly"], [("q1", "what sleeps", 0), ("q2", "who barks", 1)]),
           (["rain falls down", "the sun shines", "snow is cold"], [("q3", "what is cold", 2)])],
    "de": [(["die katze schlaeft", "hunde bellen laut"], [("q1", "was schlaeft", 0), ("q2", "wer bellen", 1)]),
           (["regen faellt"], [])],
}


def tiny_lareqa_dir(root: Path) -> Path:
    for lang, paragraphs in TINY.items():
        write_lareqa(root / f"{lang}.json", paragraphs)
    return root


class HashingEncoder:
    """A deterministic bag-of-words encoder: each token hashed into one of ``dim`` signed buckets."""

    def __init__(self, dim: int = 64):
        self.dim = dim

    def __call__(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for token in str(text).lower().split():
                h = int.from_bytes(hashlib.md5(token.encode()).digest()[:4], "little")
                out[i, h % self.dim] += 1.0 if (h >> 20) & 1 else -1.0
            out[i, 0] += 1e-3 * (i % 7 + 1)  # no all-zero rows
        return out


def write_beir(root: Path, corpus, queries, qrels) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for doc_id, title, text in corpus:
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for qid, text in queries:
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(root / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, doc_id, grade in qrels:
            f.write(f"{qid}\t{doc_id}\t{grade}\n")
    return root


COLORS = {"red": (255, 30, 0), "green": (20, 255, 60), "blue": (0, 40, 255), "white": (250, 240, 255)}  # no symmetric ties


def write_xtd(root: Path, names, captions_by_language, image_colors=None) -> Path:
    """An XTD10-layout directory; with ``image_colors`` also solid-colour PNGs under root/images."""
    (root / "XTD10").mkdir(parents=True, exist_ok=True)
    (root / "XTD10" / "test_image_names.txt").write_text("\n".join(names) + "\n")
    for lang, captions in captions_by_language.items():
        sub = {"de": "MIC", "fr": "MIC", "jp": "STAIR"}.get(lang, "XTD10")
        (root / sub).mkdir(exist_ok=True)
        (root / sub / f"test_1kcaptions_{lang}.txt").write_text("\n".join(captions), encoding="utf-8")
    if image_colors is not None:
        from PIL import Image

        (root / "images").mkdir(exist_ok=True)
        for name, color in zip(names, image_colors):
            Image.new("RGB", (4, 3), COLORS[color]).save(root / "images" / name)
    return root


def color_text_encoder(texts):
    """Caption -> the RGB of the first colour word it contains (both tiny XTD languages use the English words)."""
    out = []
    for text in texts:
        word = next(w for w in str(text).split() if w in COLORS)
        out.append([c / 255.0 + 0.01 for c in COLORS[word]])
    return torch.tensor(out)


def color_image_encoder(images):
    """PIL image -> its mean RGB."""
    return torch.tensor([[c / 255.0 + 0.01 for c in np.asarray(im).reshape(-1, 3).mean(0)] for im in images],
                        dtype=torch.float32)
