"""Training pairs: the loaders agree, availability and groups, the held-out split keeps items whole,
tokens are cached, and batches are padded to their own longest sequence."""
import datasets
import numpy as np
import pytest
import torch

from hbfast.data.pairs import load_pairs, pairs_from_long, split_heldout, tokenize_pairs
from hbfast.train.task import TextPairTask
from train_fixtures import LANGS, N_ITEMS, pair_rows, tiny_bert, write_pairs_jsonl


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HBFAST_CACHE", str(tmp_path / "cache"))


def test_long_format_files_and_tables_agree(tmp_path):
    rows = pair_rows()
    table = datasets.Dataset.from_list(rows)
    table.to_csv(str(tmp_path / "p.csv"))
    table.to_parquet(str(tmp_path / "p.parquet"))
    loaded = [load_pairs(write_pairs_jsonl(tmp_path / "p.jsonl")), load_pairs(str(tmp_path / "p.csv")),
              load_pairs(str(tmp_path / "p.parquet")), load_pairs(table)]
    for pairs in loaded:
        assert pairs.languages == LANGS and len(pairs) == N_ITEMS
        assert pairs.queries == loaded[0].queries and pairs.passages == loaded[0].passages
    avail = loaded[0].availability
    assert avail.shape == (N_ITEMS, 3) and avail.sum() == 3 * N_ITEMS - 2
    assert not avail[1, LANGS.index("fr")] and not avail[5, LANGS.index("de")]
    groups = loaded[0].groups
    assert groups[3] == groups[2] and len(np.unique(groups)) == N_ITEMS - 1  # items 2 and 3 share passages


def test_bundled_mlqa_r_as_pairs():
    pairs = load_pairs("mlqa-r", languages="en,de")
    assert pairs.languages == ("en", "de")
    avail = pairs.availability
    assert avail.all(1).sum() > 500 and avail.any(1).all()
    i = int(np.flatnonzero(avail.all(1))[0])
    assert pairs.queries["en"][i].endswith("?") or len(pairs.queries["en"][i]) > 5
    assert pairs.passages["de"][i] and pairs.passages["de"][i] != pairs.passages["en"][i]


def test_bad_tables(tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        pairs_from_long({"id": ["a"], "language": ["en"], "query": ["q"]})
    with pytest.raises(ValueError, match="twice in language"):
        pairs_from_long({"id": ["a", "a"], "language": ["en", "en"], "query": ["q", "q"], "passage": ["p", "p"]})
    with pytest.raises(ValueError, match=r"no language\(s\) \['xx'\]"):
        load_pairs(write_pairs_jsonl(tmp_path / "p.jsonl"), languages="en,xx")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_pairs(str(tmp_path / "nope.jsonl"))


def test_heldout_split_is_by_item_and_group(tmp_path):
    pairs = load_pairs(write_pairs_jsonl(tmp_path / "p.jsonl"))
    train, heldout = split_heldout(pairs, 0.25, seed=3)
    assert len(train) + len(heldout) == len(pairs)
    assert not set(train.ids) & set(heldout.ids)
    assert 7 <= len(heldout) <= 11
    for part in (train, heldout):  # every item keeps all its translations
        for i, item in enumerate(part.ids):
            j = pairs.ids.index(item)
            assert (part.availability[i] == pairs.availability[j]).all()
    assert ("item2" in train.ids) == ("item3" in train.ids)  # one group stays on one side
    again = split_heldout(pairs, 0.25, seed=3)[1]
    assert again.ids == heldout.ids
    assert split_heldout(pairs, 0.0) == (pairs, None)


def test_tokens_cached_and_batches_padded_to_their_longest(tmp_path):
    model = tiny_bert(tmp_path / "bert")
    pairs = load_pairs(write_pairs_jsonl(tmp_path / "p.jsonl"))
    task = TextPairTask(pairs, model, max_length=12)
    cache_files = sorted((tmp_path / "cache" / "tokens").glob("*.arrow"))
    assert len(cache_files) == 2 * len(LANGS)
    from transformers import AutoTokenizer

    again = tokenize_pairs(pairs, AutoTokenizer.from_pretrained(str(model)), 12)
    assert again == task.tokens and sorted((tmp_path / "cache" / "tokens").glob("*.arrow")) == cache_files
    en, de = LANGS.index("en"), LANGS.index("de")
    rows = [(0, en, de), (8, en, en), (4, de, en)]  # passages of 0 / 8 / 4 have 0 / 8 / 4 extra words
    batch = task.collate(rows)
    lengths = [len(task.tokens["passage"][LANGS[r[2]]][r[0]]) for r in rows]
    assert batch.passage["input_ids"].shape == (3, max(lengths)) and max(lengths) == 12  # truncated at 12
    assert batch.passage["attention_mask"].sum(1).tolist() == lengths
    q_lengths = [len(task.tokens["query"][LANGS[r[1]]][r[0]]) for r in rows]
    assert batch.query["input_ids"].shape[1] == max(q_lengths) < 12
    chunks = task.split(task.collate([(0, en, en), (1, en, en), (8, en, en)]).passage, 2)
    assert [c["input_ids"].shape for c in chunks] == [torch.Size([2, 9]), torch.Size([1, 12])]
    grouped = task.collate([(2, en, en), (3, de, de), (4, en, en)])
    assert grouped.group_ids[0] == grouped.group_ids[1] != grouped.group_ids[2]
