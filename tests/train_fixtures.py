"""Tiny training fixtures: a randomly initialised 2-layer BERT with a word vocabulary, and parallel
query/passage pairs in three languages written as a long-format table."""
import json
from pathlib import Path

import torch

LANGS = ("en", "de", "fr")
N_ITEMS = 36
WORDS = [f"w{i}" for i in range(40)]


def pair_rows(n_items: int = N_ITEMS, langs=LANGS, missing=((1, "fr"), (5, "de"))):
    """Long-format rows; item i's texts share words across languages (a learnable signal),
    items 2 and 3 share their passages (so they form one group), some (item, language) are absent."""
    rows = []
    for i in range(n_items):
        for lang in langs:
            if (i, lang) in missing:
                continue
            a, b, c = WORDS[i % 40], WORDS[(3 * i + 1) % 40], WORDS[(7 * i + 2) % 40]
            passage_item = 2 if i == 3 else i
            pa, pb = WORDS[passage_item % 40], WORDS[(5 * passage_item + 3) % 40]
            rows.append({"id": f"item{i}", "language": lang, "query": f"{lang} {a} {b} {c}",
                         "passage": f"{lang} {pa} {pb} {pa} {lang} {pb} " + " ".join(WORDS[:passage_item % 9])})
    return rows


def write_pairs_jsonl(path: Path, rows=None) -> Path:
    rows = pair_rows() if rows is None else rows
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_bert(root: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A random BERT (dropout kept at its default) with a word-level tokenizer, saved like any HF model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LANGS, *WORDS]) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(LANGS) + len(WORDS), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(root)
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root)
    return root


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if atol == 0:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)
