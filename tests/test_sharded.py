"""hbfast.ShardedIndex: the answers of hbfast.topk / hbfast.relevant_ranks on the concatenated corpus
(ties included), in one process with a small memory budget, on 2 and 3 gloo processes (the API, and
`hbfast search` / `hbfast eval --index` writing the same run and metrics as one process), and a corpus
several times the budget searched with the peak memory of the process under the budget."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hbfast
from hbfast.sharded import merge_candidates, parse_bytes

from testing import requires_cuda, subprocess_env

N, DIM, NQ, K = 700, 12, 40, 25


def _tied_corpus(seed=0):
    """Small integers: every product is exact in float32, so equal scores are truly equal; rows are
    repeated across shard boundaries (rows_per_shard 64) so ties straddle shards."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(N, DIM)).astype(np.float16)
    for src, dst in [(5, 63), (5, 64), (5, 65), (5, 300), (200, 127), (200, 128), (200, 699)]:
        x[dst] = x[src]
    q = rng.integers(-2, 3, size=(NQ, DIM)).astype(np.float32)
    q[0], q[1] = x[5], x[200]
    q[np.abs(q).sum(1) == 0, 0] = 1  # no zero query (cosine)
    x[np.abs(x.astype(np.float32)).sum(1) == 0, 1] = 1
    rel = rng.integers(0, N, size=(NQ, 4))
    rel[0], rel[1] = [5, 63, 300, -1], [128, 127, 699, 200]
    rel[2:, 3] = -1
    return x, q, rel


def _write(tmp_path, x):
    d = tmp_path / "shards"
    hbfast.write_shards(x, d, rows_per_shard=64, ids=[f"d{i:04d}" for i in range(len(x))])
    return d


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_equals_topk_and_relevant_ranks(tmp_path, metric):
    x, q, rel = _tied_corpus()
    # Budgets that leave room for about 10 queries' state beside the tiles (ShardedIndex._query_block):
    # the queries go in several walks over the shards.
    index = hbfast.ShardedIndex(_write(tmp_path, x), metric=metric, memory_budget=9251360)
    assert index.query_block is None
    scores, ids = index.search(q, K)
    want_scores, want_ids = hbfast.topk(q, x, K, metric=metric)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    assert 1 < index.query_block < NQ // 2
    index = hbfast.ShardedIndex(tmp_path / "shards", metric=metric, memory_budget=9185760)
    ranks = index.relevant_ranks(torch.from_numpy(q), torch.from_numpy(rel))
    assert 1 < index.query_block < NQ // 2
    assert isinstance(ranks, torch.Tensor)
    torch.testing.assert_close(ranks, hbfast.relevant_ranks(torch.from_numpy(q), torch.from_numpy(x), torch.from_numpy(rel),
                                                            metric=metric), rtol=0, atol=0)
    first = int(ranks[0, 0])  # rows 5, 63, 64, 65 and 300 are equal: lower id first, across shard boundaries
    assert ranks[0, :3].tolist() == [first, first + 1, first + 4]
    full = hbfast.ShardedIndex(tmp_path / "shards", metric=metric).search(q, N)[1]  # every row, one walk
    np.testing.assert_array_equal(full, hbfast.topk(q, x, N, metric=metric)[1])


def test_float_corpus_gives_the_same_scores(tmp_path):
    """Real-valued data: shards of a multiple of the CPU tile (4096 rows) are cut into the tiles
    hbfast.topk cuts the whole corpus into, so every score, id and rank is the same."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3 * 4096 + 500, 32)).astype(np.float32)
    q = rng.standard_normal((30, 32)).astype(np.float32)
    rel = rng.integers(0, len(x), size=(30, 4))
    hbfast.write_shards(x, tmp_path / "s", rows_per_shard=4096)
    for metric in ("ip", "cosine"):
        index = hbfast.ShardedIndex(tmp_path / "s", metric=metric)
        got, want = index.search(q, 50), hbfast.topk(q, x, 50, metric=metric)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(index.relevant_ranks(q, rel), hbfast.relevant_ranks(q, x, rel, metric=metric))


def test_l2_matches_faiss(tmp_path):
    faiss = pytest.importorskip("faiss")
    x, q, _ = _tied_corpus(1)
    index = hbfast.ShardedIndex(_write(tmp_path, x), metric="l2")
    flat = faiss.IndexFlatL2(DIM)
    flat.add(x.astype(np.float32))
    want_d, want_i = flat.search(q, K)
    d, i = index.search(q, K)
    np.testing.assert_array_equal(d, want_d)  # integer data: exact distances
    order = np.lexsort((want_i, want_d), axis=1)  # faiss's L2 lists ties lower id first too
    np.testing.assert_array_equal(i, np.take_along_axis(want_i, order, 1))
    rel = np.array([[int(i[r, 3])] for r in range(NQ)])
    assert (index.relevant_ranks(q, rel)[:, 0] <= 4).all()


def test_bad_calls(tmp_path):
    x, q, rel = _tied_corpus()
    index = hbfast.ShardedIndex(_write(tmp_path, x))
    with pytest.raises(ValueError, match=r"queries must be \[nq >= 1, 12\]"):
        index.search(q[:, :5], 3)
    with pytest.raises(ValueError, match="k must be in"):
        index.search(q, N + 1)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((2, DIM), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="relevant_ids must be in"):
        index.relevant_ranks(q, np.full((NQ, 1), N))
    with pytest.raises(ValueError, match="too small"):
        hbfast.ShardedIndex(tmp_path / "shards", memory_budget="1MiB").search(q, 3)
    with pytest.raises(ValueError, match="metric"):
        hbfast.ShardedIndex(tmp_path / "shards", metric="dot")
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("1.5k") == 1500 and parse_bytes(7) == 7
    with pytest.raises(ValueError, match="cannot read"):
        parse_bytes("lots")


def test_merge_candidates_tie_rule():
    s = torch.tensor([[1.0, 3.0, 3.0, -float("inf"), 3.0, 2.0]])
    i = torch.tensor([[0, 9, 4, 2**63 - 1, 6, 1]])
    ms, mi = merge_candidates(s, i, 4)
    assert mi.tolist() == [[4, 6, 9, 1]] and ms.tolist() == [[3.0, 3.0, 3.0, 2.0]]


# ---- several processes -----------------------------------------------------------------------------
def _cli_args(d, tmp, tag):
    qrels = str(tmp / "qrels.trec")
    return (["search", "--index", str(d), "--queries", str(tmp / "q.npy"), "--k", str(K), "--out",
             str(tmp / f"run-{tag}.trec"), "--memory-budget", "9MiB", "--no-progress"],
            ["eval", "--index", str(d), "--queries", str(tmp / "q.npy"), "--qrels", qrels, "--k", str(K),
             "--out", str(tmp / f"eval-{tag}"), "--metric", "cosine", "--no-progress"])


def _worker(rank, world, tmp, d, ports):
    from hbfast.cli import main

    torch.set_num_threads(1)
    env = dict(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    search, evaluate = _cli_args(d, tmp, f"w{world}")
    for argv, port in ((search, ports[0]), (evaluate, ports[1])):
        os.environ.update(env, MASTER_PORT=str(port))
        assert main(argv) == 0
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store-{world}", rank=rank, world_size=world)
    try:
        x, q, rel = _tied_corpus()
        out = {}
        for metric in ("ip", "cosine", "l2"):
            index = hbfast.ShardedIndex(d, metric=metric, memory_budget="9MiB")
            assert index.world == world and (index.local_rows > 0) == (len(index.local) > 0)
            out[f"{metric}_scores"], out[f"{metric}_ids"] = index.search(q, K)
            out[f"{metric}_ranks"] = index.relevant_ranks(q, rel)
        np.savez(tmp / f"api-{world}-{rank}.npz", **out)
    finally:
        dist.destroy_process_group()


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_one_two_and_three_processes_agree(tmp_path):
    from hbfast.cli import main

    x, q, rel = _tied_corpus()
    d = _write(tmp_path, x)
    np.save(tmp_path / "q.npy", q)
    with open(tmp_path / "qrels.trec", "w") as f:
        for qi in range(NQ):
            for j, r in enumerate(rel[qi]):
                if r >= 0:
                    f.write(f"{qi} 0 d{r:04d} {1 + j % 2}\n")
    search, evaluate = _cli_args(d, tmp_path, "w1")
    assert main(search) == 0 and main(evaluate) == 0  # one process: the reference
    want = {}
    for metric in ("ip", "cosine", "l2"):
        index = hbfast.ShardedIndex(d, metric=metric, memory_budget="9MiB")
        want[f"{metric}_scores"], want[f"{metric}_ids"] = index.search(q, K)
        want[f"{metric}_ranks"] = index.relevant_ranks(q, rel)
    np.testing.assert_array_equal(want["cosine_ids"], hbfast.topk(q, x, K, metric="cosine")[1])
    for world in (2, 3):
        mp.start_processes(_worker, args=(world, tmp_path, d, _free_ports(2)), nprocs=world, join=True,
                           start_method="spawn")
        assert (tmp_path / f"run-w{world}.trec").read_bytes() == (tmp_path / "run-w1.trec").read_bytes()
        for name in ("run.trec", "qrels.trec"):
            assert (tmp_path / f"eval-w{world}" / name).read_bytes() == (tmp_path / "eval-w1" / name).read_bytes()
        got = json.loads((tmp_path / f"eval-w{world}" / "metrics.json").read_text())
        ref = json.loads((tmp_path / "eval-w1" / "metrics.json").read_text())
        assert got["metrics"] == ref["metrics"] and got["processes"] == world
        for rank in range(world):  # every rank returns the global answer
            api = np.load(tmp_path / f"api-{world}-{rank}.npz")
            for key, value in want.items():
                np.testing.assert_array_equal(api[key], value, err_msg=f"{world} processes, rank {rank}: {key}")
    # The written run and qrels evaluate the same in pytrec_eval.
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from hbfast.trec import read_qrels, read_run

    evaluator = pytrec_eval.RelevanceEvaluator(read_qrels(tmp_path / "eval-w1" / "qrels.trec"), {"map", "ndcg_cut_10"})
    per_query = evaluator.evaluate(read_run(tmp_path / "eval-w1" / "run.trec"))
    ref = json.loads((tmp_path / "eval-w1" / "metrics.json").read_text())["metrics"]
    assert ref["map"] == pytest.approx(np.mean([v["map"] for v in per_query.values()]), abs=1e-12)
    assert ref["ndcg@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in per_query.values()]), abs=1e-12)
    lines = (tmp_path / "run-w1.trec").read_text().splitlines()
    assert len(lines) == NQ * K and re.fullmatch(r"0 Q0 d\d{4} 1 \S+ hbfast", lines[0])


# ---- memory ----------------------------------------------------------------------------------------
_MEMORY_SCRIPT = r"""
import re, sys, numpy as np, hbfast
def rss(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) << 10
small, big, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = np.random.default_rng(1).standard_normal((64, 384)).astype(np.float32)
hbfast.ShardedIndex(small, memory_budget=budget).search(q, 10)  # libraries, threads, the product choice
hbfast.ShardedIndex(small, memory_budget=budget).relevant_ranks(q, np.zeros((64, 2), np.int64))
open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
base = rss("VmRSS")
index = hbfast.ShardedIndex(big, memory_budget=budget)
scores, ids = index.search(q, 10)
ranks = index.relevant_ranks(q, ids[:, [0, 9]])
assert (ranks[:, 0] == 1).all() and (ranks[:, 1] == 10).all()
print(rss("VmHWM") - base, index.query_block)
"""


def test_corpus_larger_than_the_budget_stays_under_it(tmp_path):
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("needs /proc/self/clear_refs (Linux) to reset the peak RSS")
    budget = 40 << 20
    rng = np.random.default_rng(0)
    big = tmp_path / "big"
    for _ in range(5):  # 5 x 32768 x 384 float32 = 240 MiB, 6x the budget, written as it arrives
        hbfast.write_shards(rng.standard_normal((32768, 384), dtype=np.float32), big, rows_per_shard=50000)
    hbfast.write_shards(rng.standard_normal((100, 384), dtype=np.float32), tmp_path / "small")
    size = sum(p.stat().st_size for p in big.glob("*.npy"))
    assert size > 5 * budget
    run = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path / "small"), str(big), str(budget)],
                         capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    peak, block = map(int, run.stdout.split())
    assert 0 < peak < budget, f"peak {peak / 2**20:.1f} MiB over the {budget >> 20} MiB budget (corpus {size >> 20} MiB)"


# ---- GPU -------------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_cuda_queries_give_the_cpu_answer(tmp_path, metric):
    x, q, rel = _tied_corpus()
    index = hbfast.ShardedIndex(_write(tmp_path, x), metric=metric)
    qc = torch.from_numpy(q).cuda()
    scores, ids = index.search(qc, K)
    assert ids.device.type == "cuda"
    want_scores, want_ids = index.search(q, K)
    np.testing.assert_array_equal(ids.cpu().numpy(), want_ids)
    np.testing.assert_array_equal(scores.cpu().numpy(), want_scores)
    ranks = index.relevant_ranks(qc, torch.from_numpy(rel).cuda())
    np.testing.assert_array_equal(ranks.cpu().numpy(), index.relevant_ranks(q, rel))
