"""Shard directories (hbfast.write_shards / open_shards): what is written reads back, appends refill the
last shard, and every malformed directory (missing, truncated, wrong-dtype or wrong-dim shard; a
manifest that disagrees with its files) is an error naming the shard before any search starts."""
import json

import numpy as np
import pytest
import torch

import hbfast
from hbfast.shards import ShardError


def _corpus(n=300, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_write_open_round_trip_and_ids(tmp_path):
    x = _corpus()
    ids = [f"doc-{i}" for i in range(len(x))]
    shards = hbfast.write_shards(x, tmp_path / "s", rows_per_shard=128, ids=ids, dtype="float16", metric="cosine",
                                 model="m")
    assert [(s.rows, s.first_id) for s in shards.shards] == [(128, 0), (128, 128), (44, 256)]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["dim"] == 8 and manifest["dtype"] == "float16" and manifest["count"] == 300
    assert manifest["metric"] == "cosine" and manifest["model"] == "m"
    assert [set(e) >= {"file", "rows", "first_id"} for e in manifest["shards"]] == [True] * 3
    opened = hbfast.open_shards(tmp_path / "s" / "manifest.json")
    np.testing.assert_array_equal(np.concatenate(opened.arrays()), x.astype(np.float16))
    assert opened.doc_ids == ids and opened.row_of("doc-7") == 7 and opened.row_of("nope") is None
    np.testing.assert_array_equal(opened.rows([299, 0, 130]), x[[299, 0, 130]].astype(np.float16))
    np.testing.assert_array_equal(opened.read(1, 5, 9), x[133:137].astype(np.float16))
    assert isinstance(opened.array(0), np.memmap)


def test_append_refills_the_last_shard(tmp_path):
    x = _corpus(500)
    d = tmp_path / "s"
    for i0 in range(0, 500, 70):  # calls as batches arrive, and an iterable in one call
        hbfast.write_shards(iter([torch.from_numpy(x[i0 : i0 + 30]), x[i0 + 30 : i0 + 70]]), d, rows_per_shard=128,
                            ids=[str(10 * i) for i in range(i0, min(500, i0 + 70))])
    shards = hbfast.open_shards(d)
    assert [s.rows for s in shards.shards] == [128, 128, 128, 116]
    assert sorted(p.name for p in d.glob("*.npy")) == sorted(s.file for s in shards.shards)  # replaced files gone
    np.testing.assert_array_equal(np.concatenate(shards.arrays()), x)
    assert shards.doc_ids == [str(10 * i) for i in range(500)]
    with pytest.raises(ValueError, match="dim 9"):
        hbfast.write_shards(np.zeros((3, 9), np.float32), d, ids=["a", "b", "c"])
    with pytest.raises(ValueError, match="ids"):
        hbfast.write_shards(np.zeros((3, 8), np.float32), d)
    with pytest.raises(ValueError, match="float16"):
        hbfast.write_shards(np.zeros((3, 8), np.float32), d, ids=["a", "b", "c"], dtype="float16")
    with pytest.raises(ValueError, match="NaN"):
        hbfast.write_shards(np.full((3, 8), np.nan, np.float32), tmp_path / "t")


def test_ids_left_by_a_crashed_append_are_cut_off(tmp_path):
    d = tmp_path / "s"
    hbfast.write_shards(_corpus(10), d, rows_per_shard=4, ids=[f"a{i}" for i in range(10)])
    with open(d / "ids.jsonl", "a") as f:  # an append whose manifest was never written
        f.write('{"id": "ghost"}\n')
    assert hbfast.open_shards(d).doc_ids == [f"a{i}" for i in range(10)]
    hbfast.write_shards(_corpus(3, seed=1), d, rows_per_shard=4, ids=["b0", "b1", "b2"])
    assert hbfast.open_shards(d).doc_ids == [f"a{i}" for i in range(10)] + ["b0", "b1", "b2"]


@pytest.fixture
def shard_dir(tmp_path):
    d = tmp_path / "s"
    hbfast.write_shards(_corpus(300), d, rows_per_shard=128, dtype="float32")
    return d


def _manifest(d, edit):
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _truncate(d):
    path = d / "shard-00001.npy"
    path.write_bytes(path.read_bytes()[:-40])


def _bad_dtype(d):
    np.save(d / "shard-00001.npy", _corpus(128).astype(np.float16))


def _bad_dim(d):
    np.save(d / "shard-00001.npy", _corpus(128, dim=9))


def _bad_rows(d):
    np.save(d / "shard-00001.npy", _corpus(127))


def _extra_bytes(d):
    with open(d / "shard-00001.npy", "ab") as f:
        f.write(b"\0" * 32)


def _not_npy(d):
    (d / "shard-00001.npy").write_bytes(b"garbage")


BAD = {
    "missing": (lambda d: (d / "shard-00001.npy").unlink(), "shard shard-00001.npy: file missing"),
    "truncated": (_truncate, "shard shard-00001.npy: truncated"),
    "trailing bytes": (_extra_bytes, "shard shard-00001.npy: 32 bytes beyond"),
    "not npy": (_not_npy, "shard shard-00001.npy: not a readable .npy"),
    "wrong dtype": (_bad_dtype, "shard shard-00001.npy: dtype float16, the manifest says float32"),
    "wrong dim": (_bad_dim, r"shard shard-00001.npy: shape \(128, 9\)"),
    "rows differ": (_bad_rows, "shard shard-00001.npy: holds 127 rows, the manifest says 128"),
    "count": (lambda d: _manifest(d, lambda m: m.update(count=301)), "count is 301, its shards hold 300"),
    "first_id": (lambda d: _manifest(d, lambda m: m["shards"][2].update(first_id=250)),
                 "shard shard-00002-part44.npy: manifest first_id is 250, expected 256"),
    "manifest dim": (lambda d: _manifest(d, lambda m: m.update(dim=9)), r"shard shard-00000.npy: shape \(128, 8\)"),
    "manifest dtype": (lambda d: _manifest(d, lambda m: m.update(dtype="int8")), "dtype must be one of"),
    "manifest missing": (lambda d: (d / "manifest.json").unlink(), "manifest.json: missing"),
    "manifest malformed": (lambda d: (d / "manifest.json").write_text("{"), "manifest.json: malformed JSON"),
    "listed twice": (lambda d: _manifest(d, lambda m: m["shards"].__setitem__(1, dict(m["shards"][0], first_id=128))),
                     "shard shard-00000.npy is listed twice"),
    "path escape": (lambda d: _manifest(d, lambda m: m["shards"][0].update(file="../x.npy")), "bad file name"),
    "ids missing": (lambda d: _manifest(d, lambda m: m.update(ids="ids.jsonl", ids_bytes=10)), "ids file ids.jsonl: missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_directory_is_an_error_naming_the_shard(shard_dir, case):
    damage, message = BAD[case]
    damage(shard_dir)
    with pytest.raises(ShardError, match=message):
        hbfast.open_shards(shard_dir)
    with pytest.raises(ShardError, match=message):  # before any search: the index is never built
        hbfast.ShardedIndex(shard_dir)


def test_bad_ids_files(tmp_path):
    d = tmp_path / "s"
    hbfast.write_shards(_corpus(10), d, rows_per_shard=4, ids=[f"a{i}" for i in range(10)])
    (d / "ids.jsonl").write_text('{"id": "a0"}\n')  # shorter than the manifest vouches for
    with pytest.raises(ShardError, match="ids file ids.jsonl: truncated"):
        hbfast.open_shards(d)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"p{i}" for i in range(9)]}), d / "ids.parquet")
    _manifest(d, lambda m: m.update(ids="ids.parquet"))
    with pytest.raises(ShardError, match="ids file ids.parquet: holds 9 ids, the manifest counts 10"):
        hbfast.open_shards(d)
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(10)]}), d / "ids.parquet")
    assert hbfast.open_shards(d).doc_ids[3] == "p3"


def test_search_command_reports_a_bad_shard(shard_dir, tmp_path, capsys):
    from hbfast.cli import main

    np.save(tmp_path / "q.npy", _corpus(4))
    _truncate(shard_dir)
    assert main(["search", "--index", str(shard_dir), "--queries", str(tmp_path / "q.npy"), "--k", "5",
                 "--out", str(tmp_path / "run.trec"), "--no-progress"]) == 2
    assert "shard shard-00001.npy: truncated" in capsys.readouterr().err
    assert not (tmp_path / "run.trec").exists()


@pytest.mark.parametrize("argv, message", [
    (["eval", "--index", "IDX", "--queries", "Q"], "needs --qrels FILE"),
    (["eval", "--index", "IDX", "--qrels", "Q"], "needs --queries"),
    (["eval", "--dataset", "xquad-r", "--metric", "l2"], "--metric l2 is for --index"),
    (["search", "--index", "IDX", "--queries", "Q.npy", "--out", "R", "--memory-budget", "lots"], "memory_budget: cannot read"),
    (["search", "--index", "IDX", "--queries", "Q.npy", "--out", "R", "--k", "301"], "k must be in [1, 300]"),
])
def test_command_errors_are_clear(shard_dir, tmp_path, argv, message, capsys):
    from hbfast.cli import main

    np.save(tmp_path / "q.npy", _corpus(4))
    argv = [str(shard_dir) if a == "IDX" else str(tmp_path / "q.npy") if a in ("Q", "Q.npy") else
            str(tmp_path / "run") if a == "R" else a for a in argv]
    assert main([*argv, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_trec_files_round_trip(tmp_path):
    from hbfast.trec import read_qrels, read_run, write_qrels, write_run

    write_run(tmp_path / "run", ["q1", "q2"], [["d1", "d2"], ["d3", ""]], np.array([[1.5, 0.1], [np.float32(1 / 3), 0]]), "t")
    assert (tmp_path / "run").read_text().splitlines()[2] == "q2 Q0 d3 1 0.333333343 t"
    run = read_run(tmp_path / "run")  # 9 significant digits: the float32 scores come back exactly
    assert {q: {d: np.float32(v) for d, v in docs.items()} for q, docs in run.items()} == \
        {"q1": {"d1": np.float32(1.5), "d2": np.float32(0.1)}, "q2": {"d3": np.float32(1 / 3)}}
    (tmp_path / "beir.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td9\t0\n")
    assert read_qrels(tmp_path / "beir.tsv") == {"q1": {"d1": 2, "d9": 0}}
    write_qrels(tmp_path / "qrels", {"q1": {"d1": 2}})
    assert (tmp_path / "qrels").read_text() == "q1 0 d1 2\n" and read_qrels(tmp_path / "qrels") == {"q1": {"d1": 2}}
    with pytest.raises(ValueError, match="holds whitespace"):
        write_run(tmp_path / "bad", ["q 1"], [["d"]], np.zeros((1, 1)))
    (tmp_path / "broken").write_text("q1 0 d1 1\nq2 0 d2\n")
    with pytest.raises(ValueError, match="broken:2"):
        read_qrels(tmp_path / "broken")
