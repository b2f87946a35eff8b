"""The trainer on a tiny BERT: output directories load in sentence-transformers, the cached-embedding
mode equals the plain one, checkpoints are atomic and checked, and bad input gets a clear error."""
import errno
import json

import pytest
import torch

import hbfast.train.checkpoint as checkpoint
from hbfast.cli import main
from hbfast.train import TrainConfig, Trainer, text_tasks
from train_fixtures import LANGS, assert_same_weights, tiny_bert, weights, write_pairs_jsonl


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HBFAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return tiny_bert(root / "bert"), write_pairs_jsonl(root / "pairs.jsonl")


def _args(setup, out, *extra):
    model, data = setup
    return ["train", "--model", str(model), "--data", str(data), "--batch-size", "8", "--max-length", "16",
            "--lr", "1e-3", "--out", str(out), "--no-progress", *extra]


def test_train_writes_checkpoints_log_and_a_sentence_transformers_model(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(setup, out, "--steps", "4", "--save-every", "2", "--heldout", "0.2", "--eval-every", "2")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4", "final", "log.jsonl"]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all("heldout_loss" in r for r in log[1::2])
    assert all(r["batch"] == "X-Y" or r["batch"][4:] in LANGS for r in log)
    assert not torch.equal(weights(out / "final")["embeddings.word_embeddings.weight"],
                           weights(setup[0])["embeddings.word_embeddings.weight"])
    assert_same_weights(out / "checkpoint-4", out / "final")
    from sentence_transformers import SentenceTransformer

    from hbfast.train.model import TextEncoder

    st = SentenceTransformer(str(out / "final"), device="cpu")
    ours = TextEncoder.load(out / "final")
    texts = ["en w1 w2", "de w3 w4 w5 w6"]
    batch = ours.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ours.eval()(batch["input_ids"], batch["attention_mask"]), dim=-1)
    torch.testing.assert_close(st.encode(texts, convert_to_tensor=True), expected, atol=1e-5, rtol=0)
    assert "model: " in capsys.readouterr().out


def _final(setup, tmp_path, name, **overrides):
    model, data = setup
    # float32: the equalities below are float32 ones (bf16 autocast rounds each mini-batch's products its own way)
    cfg = TrainConfig(out=str(tmp_path / name), steps=3, batch_size=8, lr=1e-3, progress=False, bf16=False,
                      **overrides)
    task, heldout = text_tasks(cfg, model=model, data=str(data), max_length=16, dropout=0.0)
    Trainer(task, cfg, heldout).run()
    return tmp_path / name / "final"


def test_cached_embedding_mode_equals_plain_mode(setup, tmp_path):
    plain = _final(setup, tmp_path, "plain", learnable_scale=True)
    cached = _final(setup, tmp_path, "cached", learnable_scale=True, mini_batch=3)
    assert_same_weights(plain, cached, atol=2e-6)


def test_naive_loss_trains_the_same_model(setup, tmp_path):
    assert_same_weights(_final(setup, tmp_path, "fused"), _final(setup, tmp_path, "naive", loss="naive"), atol=2e-6)


def test_bad_input_is_named(setup, tmp_path, capsys):
    def error(*argv):
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    assert "no/such/model" in error(*_args(setup, tmp_path / "a", "--steps", "1"),
                                    "--model", str(tmp_path / "no/such/model"))
    assert "no language(s) ['xx']" in error(*_args(setup, tmp_path / "a", "--steps", "1", "--languages", "en,xx"))
    assert "larger than any batch kind" in error(*_args(setup, tmp_path / "a", "--steps", "1", "--batch-type", "X-X",
                                                        "--batch-size", "64"))
    assert "holds no checkpoint" in error(*_args(setup, tmp_path / "a", "--steps", "1", "--resume"))

    out = tmp_path / "b"
    assert main(_args(setup, out, "--steps", "2", "--save-every", "1")) == 0
    assert "already holds checkpoints" in error(*_args(setup, out, "--steps", "2"))
    assert "different run (alpha: checkpoint 0.5, now 0.25" in error(
        *_args(setup, out, "--steps", "2", "--resume", "--alpha", "0.25"))
    state = out / "checkpoint-2" / checkpoint.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    assert "checkpoint-2 is corrupt: trainer_state.pt cannot be read" in error(*_args(setup, out, "--steps", "2",
                                                                                      "--resume"))
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"\0" * 64)
    (out / "checkpoint-2" / checkpoint.STATE_FILE).write_bytes((out / "checkpoint-1" / checkpoint.STATE_FILE).read_bytes())
    assert "model.safetensors: unreadable" in error(*_args(setup, out, "--steps", "2", "--resume"))


def test_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "full"
    real_save, calls = torch.save, []

    def save(obj, path, *a, **k):
        calls.append(str(path))
        if "checkpoint-2" in str(path) and str(path).endswith(checkpoint.STATE_FILE):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert main(_args(setup, out, "--steps", "3", "--save-every", "1")) == 2
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "No space left on device" in err
    assert str(out / "checkpoint-1") in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "log.jsonl"]  # no partial directory
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert main(_args(setup, out, "--steps", "3", "--save-every", "1", "--resume")) == 0
    uninterrupted = tmp_path / "whole"
    assert main(_args(setup, uninterrupted, "--steps", "3", "--save-every", "1")) == 0
    assert_same_weights(out / "final", uninterrupted / "final")


@pytest.mark.parametrize("cpu_has_bf16", [True, False])
def test_bf16_autocast_on_cpu_only_where_supported(setup, tmp_path, monkeypatch, cpu_has_bf16):
    from hbfast.train import loop

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_has_bf16)
    assert loop.bf16_autocast_supported(torch.device("cpu")) is cpu_has_bf16
    model, data = setup
    seen = []
    for bf16 in (True, False):
        cfg = TrainConfig(out=str(tmp_path / f"bf16-{bf16}"), steps=2, batch_size=8, lr=1e-3, progress=False,
                          device="cpu", bf16=bf16)
        task, _ = text_tasks(cfg, model=model, data=str(data), max_length=16)
        trainer = Trainer(task, cfg)
        assert trainer.bf16 is (bf16 and cpu_has_bf16)
        batch = task.collate([(0, 0, 1), (1, 0, 0)])
        with trainer._autocast():  # what the encoder's linear layers compute in
            hidden = trainer.model.encoder.get_input_embeddings()(batch.query["input_ids"])
            seen.append((hidden @ torch.ones(hidden.shape[-1], 1)).dtype)
        assert trainer._embed(batch, "query", batch.query).dtype == torch.float32  # what the loss gets
        summary = trainer.run()
        assert summary["steps"] == 2 and summary["last_loss"] > 0
    assert seen == [torch.bfloat16 if cpu_has_bf16 else torch.float32, torch.float32]
