"""`hbfast translate`: the language codes of each model family (pure functions), the plumbing of every
data kind with a stand-in translator (exact texts, ids, languages, provenance) and with a tiny random
Marian model built offline (gibberish translations, real generation): the output read back by the
real readers (pairs loader, caption tables, shard stream), a stopped run resumed to the same bytes,
2 gloo ranks writing the files of 1 process, and bad input named."""
import json
import re
import tarfile
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from hbfast import translate as tr
from hbfast.cli import main
from hbfast.translate import codes

from clip_fixtures import colour_image, ddp_worker, free_port, png_bytes, write_shard
from train_fixtures import pair_rows, write_pairs_jsonl

DOCS = Path(__file__).resolve().parents[1] / "docs" / "translate.md"


def tiny_marian(root: Path, lang_tokens=(">>deu<<", ">>fra<<", ">>jpn<<"), eos_first: bool = False) -> Path:
    """A random 1-layer Marian model with a word-level tokenizer, saved like a hub model. Its output
    never holds a special or language token (so never comes out empty), or, with ``eos_first``,
    always ends at once (every translation empty)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    words = ["</s>", "<unk>", *lang_tokens, *[f"w{i}" for i in range(40)], "<pad>"]
    vocab = {w: i for i, w in enumerate(words)}
    pad = vocab["<pad>"]
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    tokenizer.decoder = decoders.WordPiece()
    config = MarianConfig(vocab_size=len(words), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=64, pad_token_id=pad, eos_token_id=0, decoder_start_token_id=pad,
                          forced_eos_token_id=0, init_std=1.0)
    torch.manual_seed(0)
    model = MarianMTModel(config)
    model.final_logits_bias[0, [vocab[w] for w in words if not w.startswith("w")]] = -1e4
    if eos_first:
        model.final_logits_bias[0, 0] = 1e4
    # as the opus-mt models' generation configs: beams, a max_length, the pad token banned
    model.generation_config = GenerationConfig(decoder_start_token_id=pad, eos_token_id=0, pad_token_id=pad,
                                               forced_eos_token_id=0, max_length=512, num_beams=2, bad_words_ids=[[pad]])
    model.save_pretrained(root)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=512).save_pretrained(root)
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Generation of a tiny model is all overhead: one thread is many times faster on a busy machine,
    and is what each rank of the 2-process test uses (same arithmetic, same bytes)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    return tiny_marian(tmp_path_factory.mktemp("translate") / "tiny-marian")


def _words(i: int) -> str:
    return " ".join(f"w{(i * 7 + j * 3) % 40}" for j in range(1 + i % 6))


class Reverser:
    """Stands in for a Translator: "<target><<source>:<text reversed>", every call recorded."""

    default_sources = None
    truncated = 0

    def __init__(self):
        self.fingerprint, self.calls = {"model": "reverser"}, []

    def check(self, pairs):
        for source, target in pairs:
            if target == "xx":
                raise ValueError(f"no code for language {target!r}")

    def translate(self, texts, source, target, progress=None):
        self.calls.append((source, target, list(texts)))
        if progress is not None:
            progress(len(texts))
        return [f"{target}<{source}:{t[::-1]}" for t in texts]


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---- language codes ---------------------------------------------------------------------------------
def test_language_codes_of_each_family():
    assert [codes.language_code("nllb", x) for x in ("de", "fr", "ja", "jp", "zh", "en")] == \
        ["deu_Latn", "fra_Latn", "jpn_Jpan", "jpn_Jpan", "zho_Hans", "eng_Latn"]
    assert codes.language_code("nllb", "ast_Latn") == "ast_Latn"  # a FLORES-200 code passes through
    assert [codes.language_token(f, "de") for f in ("nllb", "m2m100", "mbart50", "madlad")] == \
        ["deu_Latn", "__de__", "de_DE", "<2de>"]
    assert codes.language_token("m2m100", "jp") == "__ja__" and codes.language_token("mbart50", "zh") == "zh_CN"
    assert codes.language_token("madlad", "zh") == "<2zh>"
    with pytest.raises(ValueError, match="mbart50 has no code for language 'el'"):
        codes.language_code("mbart50", "el")
    with pytest.raises(ValueError, match="nllb has no code for language 'german'"):
        codes.language_code("nllb", "german")
    with pytest.raises(ValueError, match="unknown translation model family 'opus'"):
        codes.language_code("opus", "de")
    assert codes.needs_source_language("nllb") and not codes.needs_source_language("madlad")


def test_marian_tokens_names_and_families():
    mul = {">>deu<<", ">>fra<<", ">>jpn<<", ">>cmn_Hans<<", "▁the"}
    assert [codes.marian_target_token(x, mul) for x in ("de", "fr", "jp", "zh")] == \
        [">>deu<<", ">>fra<<", ">>jpn<<", ">>cmn_Hans<<"]
    assert codes.marian_target_token("es", {">>fr<<", ">>es<<", ">>it<<"}) == ">>es<<"  # opus-mt-en-ROMANCE
    assert codes.marian_target_token("de", {"▁the", "▁a"}) is None  # a single-target model
    with pytest.raises(ValueError, match=r"no target token for language 'ko' \(looked for >>kor<<, >>ko<<"):
        codes.marian_target_token("ko", mul)
    assert codes.marian_pair("Helsinki-NLP/opus-mt-en-de") == ("en", "de")
    assert codes.marian_pair("/models/opus-mt-tc-big-en-fr/") == ("en", "fr")
    assert codes.marian_pair("Helsinki-NLP/opus-mt-en-mul") == ("en", None)
    assert codes.marian_pair("Helsinki-NLP/opus-mt-en-ROMANCE") == ("en", None)
    assert codes.marian_pair("my-model") == (None, None)
    assert codes.model_family("marian", "MarianTokenizer", mul) == "marian"
    assert codes.model_family("m2m_100", "NllbTokenizer", set()) == "nllb"
    assert codes.model_family("m2m_100", "M2M100Tokenizer", {"__en__"}) == "m2m100"
    assert codes.model_family("mbart", "MBart50Tokenizer", set()) == "mbart50"
    assert codes.model_family("t5", "T5Tokenizer", {"<2en>", "<2de>"}) == "madlad"
    with pytest.raises(ValueError, match="not a supported translation model"):
        codes.model_family("t5", "T5Tokenizer", {"▁the"})
    with pytest.raises(ValueError, match="model_type 'bert'"):
        codes.model_family("bert", "BertTokenizer", set())


def test_docs_table_is_the_code_table():
    def cells(*values):
        return "| " + " | ".join(values) + " |"
    want = [cells(f"`{code}`", ", ".join(f"`>>{m}<<`" for m in row["marian"]), f"`{row['nllb']}`", f"`__{code}__`",
                  f"`{row['mbart50']}`" if row["mbart50"] else "-", f"`<2{code}>`")
            for code, row in codes.LANGUAGES.items()]
    assert [line for line in DOCS.read_text().splitlines() if re.match(r"\| `[a-z]{2}` \|", line)] == want


def test_length_batches():
    lengths = [3, 9, 1, 9, 4, 4, 2]
    batches = tr.length_batches(lengths, 3)
    assert batches == [[1, 3, 4], [5, 0, 6], [2]]
    assert tr.length_batches([], 4) == []


# ---- tables, with the stand-in -----------------------------------------------------------------------
def test_pairs_table_gets_a_row_per_item_and_language(tmp_path):
    from hbfast.data.pairs import load_pairs

    rows = pair_rows()  # 36 items in en, de, fr; item1 has no fr, item5 no de
    data = write_pairs_jsonl(tmp_path / "pairs.jsonl", rows)
    fake = Reverser()
    summary = tr.translate(data, tmp_path / "out.jsonl", model=fake, to="fr,ja", progress=False)
    out = _jsonl(tmp_path / "out.jsonl")
    assert out[: len(rows)] == [{**r, "translated_from": None} for r in rows]  # the input first, unchanged
    new = out[len(rows):]
    assert [(r["id"], r["language"], r["translated_from"]) for r in new] == \
        [("item1", "fr", "en")] + [(f"item{i}", "ja", "en") for i in range(36)]
    source = {(r["id"], r["language"]): r for r in rows}
    for r in new:
        assert r["query"] == f"{r['language']}<en:{source[(r['id'], 'en')]['query'][::-1]}"
        assert r["passage"] == f"{r['language']}<en:{source[(r['id'], 'en')]['passage'][::-1]}"
    # every distinct text once per (source, target): items 2 and 3 share their passage
    ja_texts = [x for s, t, texts in fake.calls if (s, t) == ("en", "ja") for x in texts]
    assert len(ja_texts) == len(set(ja_texts)) == 36 + 35
    assert summary["added"] == 37 and summary["no_source"] == 0 and summary["dropped_empty"] == 0
    pairs = load_pairs(str(tmp_path / "out.jsonl"))
    assert pairs.languages == ("en", "de", "fr", "ja") and len(pairs) == 36
    assert pairs.availability[:, 2:].all() and pairs.availability.sum() == 36 * 4 - 1
    # --from de: item5 has no de, so it gets no ja; the others are translated from de
    summary = tr.translate(data, tmp_path / "from-de.csv", model=Reverser(), to="ja", sources="de", progress=False)
    assert summary["added"] == 35 and summary["no_source"] == 1
    back = load_pairs(str(tmp_path / "from-de.csv"))
    assert back.languages[-1] == "ja" and back.queries["ja"][0] == "ja<de:" + source[("item0", "de")]["query"][::-1]


def test_caption_tables_wide_and_long(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hbfast.clip.data import load_image_text_table

    for i in range(4):
        colour_image(i).save(tmp_path / f"{i}.png")
    wide = tmp_path / "wide.csv"
    wide.write_text("image,en,de\n0.png,a red cat,\n1.png,a dog,ein Hund\n2.png,,ein Baum\n3.png,the sea,\n")
    summary = tr.translate(wide, tmp_path / "wide-out.csv", model=Reverser(), to="de,fr", sources="en", progress=False)
    data = load_image_text_table(tmp_path / "wide-out.csv")
    assert data.languages == ("en", "de", "fr")
    assert data.captions["de"] == ["de<en:tac der a", "ein Hund", "ein Baum", "de<en:aes eht"]
    assert data.captions["fr"] == ["fr<en:tac der a", "fr<en:god a", None, "fr<en:aes eht"]
    assert summary["added"] == 5 and summary["no_source"] == 1  # image 2 has no en caption
    with pytest.raises(ValueError, match="wide caption table: give --from"):
        tr.translate(wide, tmp_path / "x.csv", model=Reverser(), to="fr", progress=False)

    long = tmp_path / "long.parquet"
    pq.write_table(pa.Table.from_pylist([{"image": "0.png", "language": "de", "caption": "eine Katze"},
                                         {"image": "1.png", "language": "en", "caption": "a dog"},
                                         {"image": "1.png", "language": "fr", "caption": "un chien"},
                                         {"image": "1.png", "language": "de", "caption": ""}]), long)
    # 1.png's empty de caption is no source, and is not given a second de row
    tr.translate(long, tmp_path / "long-out.parquet", model=Reverser(), to="en,ja,de", progress=False)
    rows = pq.read_table(tmp_path / "long-out.parquet").to_pylist()
    assert [(r["image"], r["language"], r["translated_from"]) for r in rows[4:]] == \
        [("0.png", "en", "de"), ("0.png", "ja", "de"), ("1.png", "ja", "en")]
    data = load_image_text_table(tmp_path / "long-out.parquet")
    assert data.languages == ("de", "en", "fr", "ja") and data.captions["ja"] == ["ja<de:eztaK enie", "ja<en:god a"]


# ---- the tiny Marian model ---------------------------------------------------------------------------
def _cli(marian, data, out, *extra):
    return ["translate", "--model", str(marian), "--data", str(data), "--out", str(out), "--max-length", "8",
            "--batch-size", "4", "--no-progress", *extra]


def test_translator_on_a_tiny_marian(marian):
    t = tr.Translator(str(marian), max_length=8, batch_size=3)
    assert (t.family, t.multi_target, t.default_sources) == ("marian", True, None)
    texts = [_words(i) for i in range(11)]
    out = t.translate(texts, "en", "de")
    assert len(out) == 11 and all(re.fullmatch(r"(w\d+ )*w\d+", x) for x in out)
    assert out == [t.translate([x], "en", "de")[0] for x in texts]  # batching by length keeps the order
    assert len(set(out)) > 1 and t.translate(texts, "en", "fr") != out  # the target token matters
    t.check([("en", "de"), ("de", "jp")])
    with pytest.raises(ValueError, match="no target token for language 'ko'"):
        t.check([("en", "ko")])


def test_single_pair_marian_checks_its_languages(tmp_path):
    model = tiny_marian(tmp_path / "opus-mt-en-de", lang_tokens=())
    t = tr.Translator(str(model), max_length=8)
    assert (t.multi_target, t.default_sources) == (False, ["en"])
    t.check([("en", "de")])
    with pytest.raises(ValueError, match=r"translates into 'de' only, not \['fr'\]"):
        t.check([("en", "de"), ("en", "fr")])
    with pytest.raises(ValueError, match="translates from 'en' only, not from 'fr'"):
        t.check([("fr", "de")])
    data = write_pairs_jsonl(tmp_path / "pairs.jsonl", pair_rows(6, langs=("fr", "en"), missing=()))
    summary = tr.translate(data, tmp_path / "out.jsonl", model=t, to="de", progress=False)
    assert summary["added"] == 6  # from en, the model's source, not fr, each item's first language
    assert {r["translated_from"] for r in _jsonl(tmp_path / "out.jsonl")[12:]} == {"en"}


def test_cli_table_resumes_to_the_same_bytes(marian, tmp_path, monkeypatch, capsys):
    from hbfast.data.pairs import load_pairs

    data = write_pairs_jsonl(tmp_path / "pairs.jsonl")
    args = ["--to", "fr,ja", "--chunk-size", "10"]
    assert main(_cli(marian, data, tmp_path / "whole.jsonl", *args)) == 0
    whole = (tmp_path / "whole.jsonl").read_bytes()
    pairs = load_pairs(str(tmp_path / "whole.jsonl"))
    assert pairs.languages == ("en", "de", "fr", "ja") and pairs.availability[:, 2:].all()

    calls = []
    real = tr.Translator.translate

    def stops_after_two(self, *a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a stopped run
        calls.append(a)
        return real(self, *a, **k)
    monkeypatch.setattr(tr.Translator, "translate", stops_after_two)
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        main(_cli(marian, data, out, *args))
    assert not out.exists() and len(list((tmp_path / "resumed.jsonl.parts").glob("*.json"))) == 2
    (tmp_path / "resumed.jsonl.parts" / f".en-ja-{'0' * 24}.json.tmp99").write_text("half a chunk")
    monkeypatch.setattr(tr.Translator, "translate", real)
    translated = []
    monkeypatch.setattr(tr.Translator, "translate", lambda self, texts, *a, **k: translated.append(len(texts)) or
                        real(self, texts, *a, **k))
    assert main(_cli(marian, data, out, *args)) == 0
    assert out.read_bytes() == whole
    assert sorted(p.name for p in (tmp_path / "resumed.jsonl.parts").iterdir()) == \
        sorted(p.name for p in (tmp_path / "whole.jsonl.parts").iterdir())  # the stray file is gone
    n_chunks = len(list((tmp_path / "whole.jsonl.parts").iterdir()))
    assert len(translated) == n_chunks - 2
    translated.clear()
    assert main(_cli(marian, data, out, *args)) == 0 and translated == []  # all done: nothing translated
    assert out.read_bytes() == whole
    idle = tr.Translator(str(marian), max_length=8, batch_size=4)
    tr.translate(data, out, model=idle, to="fr,ja", chunk_size=10, progress=False)
    assert idle.model is None and out.read_bytes() == whole  # the weights were not even loaded
    assert "added 37" in capsys.readouterr().err


def _shards(root: Path) -> Path:
    """Two shards: captions inside {"captions": ...} in one, flat in the other; a sample without
    captions, a sample already in French, a .npy member."""
    import numpy as np

    root.mkdir()
    write_shard(root / "000.tar", [{"key": f"s{i}", "png": png_bytes(colour_image(i)),
                                    "json": {"captions": {"en": _words(i)}, "url": f"http://x/{i}"}} for i in range(5)]
                + [{"key": "bare", "png": png_bytes(colour_image(9)), "json": {"captions": {}}}])
    write_shard(root / "001.tar", [{"key": f"t{i}", "png": png_bytes(colour_image(10 + i)), "json": {"en": _words(10 + i)},
                                    "npy": np.full(4, i, dtype=np.float32)} for i in range(4)]
                + [{"key": "fr-only", "png": png_bytes(colour_image(20)), "json": {"en": _words(3), "fr": "w1 w2"}}])
    return root


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_cli_shards_read_back_resume_and_refuse_other_arguments(marian, tmp_path, capsys):
    from hbfast.clip.shards import shards_to_table
    from hbfast.clip.stream import StreamingHybridBatches

    src = _shards(tmp_path / "in")
    out = tmp_path / "out"
    assert main(_cli(marian, src, out, "--to", "de,fr", "--from", "en")) == 0
    assert "added 19" in capsys.readouterr().err  # 10 samples with en: de each, fr for all but fr-only
    assert sorted(p.name for p in out.iterdir()) == ["000.tar", "001.tar", "translate.json"]
    for name in ("000.tar", "001.tar"):
        before, after = _members(src / name), _members(out / name)
        assert list(before) == list(after)  # same members, same order
        for member in before:
            if not member.endswith(".json"):
                assert after[member] == before[member]
    first = json.loads(_members(out / "000.tar")["s1.json"])
    assert set(first["captions"]) == {"en", "de", "fr"} and first["url"] == "http://x/1"
    assert first["translated_from"] == {"de": "en", "fr": "en"}
    flat = json.loads(_members(out / "001.tar")["fr-only.json"])
    assert flat["fr"] == "w1 w2" and set(flat) == {"en", "fr", "de", "translated_from"}
    assert json.loads(_members(out / "000.tar")["bare.json"]) == {"captions": {}}
    table = shards_to_table(str(out), ["en", "de", "fr"])
    assert len(table) == 11 and table.availability.sum(0).tolist() == [10, 10, 10]  # "bare" has no caption
    stream = StreamingHybridBatches(str(out), ["en", "de", "fr"], 4, alpha=0.5, seed=0, rank=0, world_size=1,
                                    buffer_size=8)
    samples, _kind, _ = stream.next_batch(1)
    assert len(samples) == 4 and all(set(s["captions"]) == {"en", "de", "fr"} for s in samples)
    # resume: a shard missing from OUT is translated again, to the same bytes; the other is kept
    whole = {name: (out / name).read_bytes() for name in ("000.tar", "001.tar")}
    (out / "001.tar").unlink()
    (out / ".001.tar.tmp99").write_bytes(b"half a shard")
    assert main(_cli(marian, src, out, "--to", "de,fr", "--from", "en")) == 0
    assert {name: (out / name).read_bytes() for name in ("000.tar", "001.tar")} == whole
    assert "translated_shards 1" in capsys.readouterr().err and not (out / ".001.tar.tmp99").exists()
    assert main(_cli(marian, src, out, "--to", "de", "--from", "en")) == 2
    assert "translated with other arguments (to differ)" in capsys.readouterr().err


def _rank_worker(rank, ports, marian, tmp):
    ddp_worker(rank, ports[0], _cli(marian, tmp / "pairs.jsonl", tmp / "two.jsonl", "--to", "fr,ja", "--chunk-size", "7"))
    ddp_worker(rank, ports[1], _cli(marian, tmp / "in", tmp / "two", "--to", "de", "--from", "en"))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_ranks_write_the_files_of_one(marian, tmp_path):
    import torch

    write_pairs_jsonl(tmp_path / "pairs.jsonl")
    _shards(tmp_path / "in")
    assert torch.get_num_threads() == 1  # as each rank (one_thread): the same arithmetic
    assert main(_cli(marian, tmp_path / "pairs.jsonl", tmp_path / "one.jsonl", "--to", "fr,ja", "--chunk-size", "7")) == 0
    assert main(_cli(marian, tmp_path / "in", tmp_path / "one", "--to", "de", "--from", "en")) == 0
    mp.start_processes(_rank_worker, args=((free_port(), free_port()), marian, tmp_path), nprocs=2, join=True, start_method="spawn")
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    for name in ("000.tar", "001.tar", "translate.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_empty_translations_drop_their_rows(tmp_path):
    model = tiny_marian(tmp_path / "mute", eos_first=True)
    data = write_pairs_jsonl(tmp_path / "pairs.jsonl", pair_rows(4, missing=()))
    summary = tr.translate(data, tmp_path / "out.jsonl", model=str(model), to="ja", max_length=8, progress=False)
    assert summary["added"] == 0 and summary["dropped_empty"] == 4
    assert [r["language"] for r in _jsonl(tmp_path / "out.jsonl")] == ["en", "de", "fr"] * 4


def test_bad_input_is_named(marian, tmp_path, capsys):
    data = write_pairs_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    fake = Reverser()
    with pytest.raises(ValueError, match="--to needs at least one language"):
        tr.translate(data, tmp_path / "o.jsonl", model=fake, to=" , ")
    with pytest.raises(ValueError, match="names a language twice"):
        tr.translate(data, tmp_path / "o.jsonl", model=fake, to="de,fr,de")
    with pytest.raises(ValueError, match="no code for language 'xx'"):
        tr.translate(data, tmp_path / "o.jsonl", model=fake, to="xx")
    with pytest.raises(ValueError, match="unknown table type"):
        tr.translate(data, tmp_path / "o.txt", model=fake, to="ja")
    with pytest.raises(ValueError, match="is the input table"):
        tr.translate(data, data, model=fake, to="ja")
    with pytest.raises(ValueError, match=r"no row in the --from language\(s\) \['ko'\]"):
        tr.translate(data, tmp_path / "o.jsonl", model=fake, to="ja", sources="ko")
    (tmp_path / "other.jsonl").write_text('{"id": "a", "text": "x"}\n')
    with pytest.raises(ValueError, match="not a table to translate; expected columns"):
        tr.translate(tmp_path / "other.jsonl", tmp_path / "o.jsonl", model=fake, to="ja")
    with pytest.raises(ValueError, match="needs --from"):
        tr.translate(_shards(tmp_path / "in"), tmp_path / "o", model=fake, to="ja")
    assert main(_cli(marian, tmp_path / "missing.jsonl", tmp_path / "o.jsonl", "--to", "fr")) == 2
    assert "--data" in capsys.readouterr().err
    assert main(_cli(marian, data, tmp_path / "o.jsonl", "--to", "ko")) == 2
    assert "no target token for language 'ko'" in capsys.readouterr().err
    assert main(_cli(marian, data, tmp_path / "o.jsonl", "--to", "fr", "--num-beams", "0")) == 2
    assert "num_beams must be a positive int, got 0" in capsys.readouterr().err
    assert main(_cli(marian, data, tmp_path / "o.jsonl", "--to", "")) == 2
    assert "--to needs at least one language" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_gzipped_shards_come_out_gzipped_and_the_same_each_time(tmp_path):
    from hbfast.clip.shards import shards_to_table

    (tmp_path / "in").mkdir()
    write_shard(tmp_path / "in" / "a.tar.gz", [{"key": f"k{i}", "png": png_bytes(colour_image(i)),
                                                "json": {"captions": {"en": f"caption {i}"}}} for i in range(3)], gzip=True)
    for out in ("one", "two"):
        tr.translate(tmp_path / "in", tmp_path / out, model=Reverser(), to="de", sources="en", progress=False)
    assert (tmp_path / "one" / "a.tar.gz").read_bytes() == (tmp_path / "two" / "a.tar.gz").read_bytes()
    assert (tmp_path / "one" / "a.tar.gz").read_bytes()[:2] == b"\x1f\x8b"
    table = shards_to_table(str(tmp_path / "one"), ["en", "de"])
    assert table.captions["de"] == [f"de<en:{i} noitpac" for i in range(3)]
