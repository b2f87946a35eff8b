"""``hbfast eval``: a tiny local transformers model on tiny data, output files, and clear errors."""
import json
import subprocess
import sys

import pytest
import torch

import hbfast
from hbfast.cli import main, output_stem
from lareqa_fixtures import TINY, tiny_lareqa_dir, write_xtd


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A randomly initialised 1-layer BERT with a word-level vocabulary of the tiny data (saved like any HF model)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for paragraphs in TINY.values() for sentences, qas in paragraphs
                    for text in sentences + [q for _, q, _ in qas] for w in text.split()})
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(root)
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root)
    return root


def test_eval_tiny_model_writes_results(tiny_model, tmp_path, capsys):
    data = tiny_lareqa_dir(tmp_path / "data")
    out = tmp_path / "out"
    rc = main(["eval", "--model", str(tiny_model), "--dataset", "xquad-r", "--data-dir", str(data),
               "--languages", "en,de", "--out", str(out), "--no-progress", "--pooling", "cls", "--prefixes"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mono / cross / multi" in printed and "mean max rank distance" in printed
    stem = output_stem("xquad-r", str(tiny_model))
    assert stem.startswith(f"xquad-r_{tiny_model.name}-")
    assert {p.name for p in out.iterdir()} == {f"{stem}.json", f"{stem}.csv", f"{stem}.png"}
    written = hbfast.eval.LAReQAResult.from_json(out / f"{stem}.json")
    # the same numbers as the Python API with the same encoders
    ds = hbfast.data.load_lareqa("xquad-r", data_dir=data, languages=["en", "de"])
    query, passage = hbfast.encoders.load_text_encoders(tiny_model, pooling="cls", prefixes=True, progress=False)
    assert isinstance(query, hbfast.encoders.TransformersEncoder) and query.prefix == "Query: "
    direct = hbfast.eval.evaluate_lareqa(ds, query, passage, progress=False)
    assert written.mono == pytest.approx(direct.mono) and written.cross == pytest.approx(direct.cross)
    assert written.multi == pytest.approx(direct.multi) and written.rank_distance == direct.rank_distance
    assert json.loads((out / f"{stem}.json").read_text())["languages"] == ["en", "de"]


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "xquad-r", "--languages", "en,xx"], "unknown language(s) ['xx']"),
    (["--dataset", "beir"], "needs --data-dir"),
    (["--dataset", "xtd"], "needs an image-text --model"),
    (["--dataset", "mlqa-r", "--data-dir", "/nonexistent/dir"], "does not exist"),
])
def test_eval_errors_are_clear(argv, message, capsys):
    assert main(["eval", *argv]) == 2
    assert message in capsys.readouterr().err


def test_failed_download_is_a_message_not_a_traceback(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv("HBFAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hbfast.data.xtd, "URL", (tmp_path / "no-such-mirror").as_uri())  # fails like a dead network
    assert main(["eval", "--dataset", "xtd", "--model", str(tiny_model), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "hbfast eval: error: XTD: could not download" in err and "Traceback" not in err


def test_empty_language_list_is_an_error(capsys):
    assert main(["eval", "--dataset", "xquad-r", "--languages", ","]) == 2
    assert "the list of languages is empty" in capsys.readouterr().err
    for load in (lambda: hbfast.data.load_lareqa("xquad-r", languages=[]),
                 lambda: hbfast.data.download_lareqa("xquad-r", languages=[]),
                 lambda: hbfast.data.download_xtd(languages=[])):
        with pytest.raises(ValueError, match="the list of languages is empty"):
            load()


def test_xtd_errors(tmp_path, tiny_model, capsys):
    root = write_xtd(tmp_path, ["a.png", "b.png"], {"en": ["red", "blue"]}, ["red", "blue"])
    (root / "images" / "b.png").unlink()
    assert main(["eval", "--dataset", "xtd", "--model", str(tiny_model), "--data-dir", str(root)]) == 2
    assert "needs --images" in capsys.readouterr().err
    assert main(["eval", "--dataset", "xtd", "--model", str(tiny_model), "--data-dir", str(root),
                 "--images", str(root / "images")]) == 2
    assert "1 of 2 images missing" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised tiny CLIP (character-level BPE vocabulary, 8x8 images) with its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=8, patch_size=4),
        projection_dim=8)
    CLIPModel(config).save_pretrained(root)
    processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(root)
    return root


def test_xtd_with_tiny_clip(tmp_path, tiny_clip, capsys):
    names = [f"COCO_{i}.png" for i in range(4)]
    root = write_xtd(tmp_path, names, {"en": ["red car", "blue sky", "green tree", "white snow"],
                                       "de": ["rotes auto", "blauer himmel", "gruener baum", "weisser schnee"]},
                     ["red", "blue", "green", "white"])
    out = tmp_path / "out"
    rc = main(["eval", "--dataset", "xtd", "--model", str(tiny_clip), "--backend", "transformers", "--data-dir",
               str(root), "--images", str(root / "images"), "--out", str(out), "--no-progress", "--batch-size", "3"])
    assert rc == 0 and "t2i R@1" in capsys.readouterr().out
    stem = output_stem("xtd", str(tiny_clip))
    assert {p.name for p in out.iterdir()} == {f"{stem}.json", f"{stem}.csv", f"{stem}.png"}
    written = json.loads((out / f"{stem}.json").read_text())
    both = hbfast.encoders.TransformersCLIPEncoder(tiny_clip, progress=False)
    ds = hbfast.data.load_xtd(root, images=root / "images")
    direct = hbfast.eval.evaluate_xtd(ds, both.text, both.image, progress=False)
    assert written["n_images"] == 4 and written["languages"] == ["en", "de"]
    for lang in ("en", "de"):
        assert written["text_to_image"][lang] == pytest.approx(direct.text_to_image[lang])
        assert written["image_to_text"][lang] == pytest.approx(direct.image_to_text[lang])


def test_unknown_dataset_is_rejected():
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--dataset", "squad"])
    assert exit_info.value.code == 2


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "hbfast", "eval", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--data-dir" in out.stdout and "xquad-r" in out.stdout
