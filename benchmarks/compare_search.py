"""hbfast's search and metrics against their peers, in one run: correctness first, then time ratios.

    python benchmarks/compare_search.py                 # the issue's sizes (a few minutes on 2 cores)
    python benchmarks/compare_search.py --quick         # smaller, for a smoke test
    python benchmarks/compare_search.py --only topk     # or ranks, metrics
    python benchmarks/compare_search.py --device cuda   # topk on a GPU (benchmarks/compare_gpu.py)

- topk (nq 1000, corpus 100,000 x 768, k 10 and 1000) vs faiss.knn (faiss-cpu) and torch
  (matmul over corpus chunks + torch.topk merge); time ratio hbfast / faiss (target <= 1.25).
- relevant_ranks (XQuAD-R multilingual: 13,090 x 13,014, D 384, 11 relevant) vs the bare matrix
  product q @ c.T; ratio target <= 1.2.
- metrics on 13,090 queries x 1000-deep runs vs pytrec_eval's evaluate() (>= 50x) and ranx's
  evaluate() after its JIT warm-up (>= 5x); the dict / Run building costs are reported apart.
Peak memory: each call runs once more in a fresh subprocess that first builds the same inputs;
the figure is its peak RSS during the call (VmHWM, reset just before) minus its RSS before the
call, and the ratio is against the baseline's figure (Linux only).
"""
from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time

import numpy as np
import torch

import hbfast
from baselines import reset_peak, status_kib, torch_topk


def timed(fn, repeat):
    """(best seconds over `repeat` calls, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_rss_growth(section, name, quick):
    """MiB the call `name` of `section` adds to the peak RSS of a fresh process holding its inputs."""
    cmd = [sys.executable, __file__, "--memory-probe", f"{section}:{name}"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def memory_probe(spec, quick):
    section, name = spec.split(":")
    calls = {"topk": topk_calls, "ranks": ranks_calls}[section](quick)
    fn = calls[name]
    fn()  # one-time costs (imports, thread pools) are not the call's memory
    before = reset_peak()
    fn()
    print((status_kib("VmHWM") - before) / 1024)


def row(name, seconds, base, extra=""):
    print(f"  {name:<34} {seconds:8.3f} s   x{seconds / base:5.2f} {extra}", flush=True)


def check_topk(scores, ids, ref_scores, ref_ids, q, c, atol):
    """Scores within atol, ids equal except between (near-)tied scores, no duplicate ids."""
    scores, ids = torch.as_tensor(scores), torch.as_tensor(ids)
    ref_scores, ref_ids = torch.as_tensor(ref_scores), torch.as_tensor(ref_ids)
    assert torch.allclose(scores, ref_scores, atol=atol, rtol=0), "scores differ"
    assert (torch.sort(ids, dim=1).values.diff(dim=1) > 0).all(), "duplicate ids"
    diff = (ids != ref_ids).nonzero()
    for qi, j in diff.tolist()[:1000]:
        a = float(q[qi].double() @ c[ids[qi, j]].double())
        b = float(q[qi].double() @ c[ref_ids[qi, j]].double())
        assert abs(a - b) <= atol, f"query {qi}: ids {int(ids[qi, j])} and {int(ref_ids[qi, j])} are not tied"
    return len(diff)


def topk_data(quick):
    nq, n, d = (200, 20000, 768) if quick else (1000, 100000, 768)
    g = torch.Generator().manual_seed(0)
    return torch.randn(nq, d, generator=g), torch.randn(n, d, generator=g)


def topk_calls(quick, k=10):
    import faiss

    q, c = topk_data(quick)
    qn, cn = q.numpy(), c.numpy()
    return {
        "faiss": lambda: faiss.knn(qn, cn, k, metric=faiss.METRIC_INNER_PRODUCT),
        "hbfast": lambda: hbfast.topk(q, c, k),
        "torch": lambda: torch_topk(q, c, k),
        "matmul": lambda: q @ c.T,
    }


def bench_topk(args):
    import faiss

    q, c = topk_data(args.quick)
    nq, n, d = q.shape[0], c.shape[0], c.shape[1]
    qn, cn = q.numpy(), c.numpy()
    print(f"topk: {nq} queries x {n} corpus x {d}, inner product, {torch.get_num_threads()} threads")
    for k in (10, 1000):
        ours = hbfast.topk(q, c, k)
        f_scores, f_ids = faiss.knn(qn, cn, k, metric=faiss.METRIC_INNER_PRODUCT)
        tied = check_topk(*ours, f_scores, f_ids, q, c, atol=1e-3)
        print(f" k={k}: equal to faiss (scores within 1e-3 at |score| ~ 30; {tied} id swaps between tied scores)")
        t_faiss, _ = timed(lambda: faiss.knn(qn, cn, k, metric=faiss.METRIC_INNER_PRODUCT), args.repeat)
        t_ours, _ = timed(lambda: hbfast.topk(q, c, k), args.repeat)
        t_torch, _ = timed(lambda: torch_topk(q, c, k), args.repeat)
        t_mm, _ = timed(lambda: q @ c.T, args.repeat)
        row("faiss.knn", t_faiss, t_faiss, "(baseline)")
        row("hbfast.topk", t_ours, t_faiss, "<- target <= 1.25")
        row("torch chunked matmul + topk", t_torch, t_faiss)
        row("bare torch matmul (no selection)", t_mm, t_faiss)
    memory = {name: peak_rss_growth("topk", name, args.quick) for name in ("faiss", "hbfast", "torch", "matmul")}
    print("  peak RSS growth, k=10: " + ", ".join(f"{n} {m:.0f} MiB (x{m / max(memory['faiss'], 1e-9):.2f})" for n, m in memory.items()))


def ranks_data(quick):
    nq, n, d, r = (2000, 3000, 384, 11) if quick else (13090, 13014, 384, 11)
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(nq, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    relevant = torch.stack([torch.randperm(n, generator=g)[:r] for _ in range(nq)])
    return q, c, relevant


def ranks_calls(quick):
    q, c, relevant = ranks_data(quick)
    return {"matmul": lambda: q @ c.T, "hbfast": lambda: hbfast.relevant_ranks(q, c, relevant)}


def bench_ranks(args):
    q, c, relevant = ranks_data(args.quick)
    (nq, d), n, r = q.shape, c.shape[0], relevant.shape[1]
    print(f"relevant_ranks: {nq} queries x {n} candidates x {d}, {r} relevant each")
    ranks = hbfast.relevant_ranks(q, c, relevant)
    sub = slice(0, 500)
    assert torch.equal(ranks[sub], hbfast.reference.relevant_ranks(q[sub], c, relevant[sub])), "ranks differ from argsort"
    print("  equal to the full argsort (reference) on the first 500 queries")
    t_mm, _ = timed(lambda: q @ c.T, args.repeat)
    t_ours, _ = timed(lambda: hbfast.relevant_ranks(q, c, relevant), args.repeat)
    t_sort, _ = timed(lambda: hbfast.reference.relevant_ranks(q[:1000], c, relevant[:1000]), 1)
    row("bare matmul q @ c.T", t_mm, t_mm, "(baseline)")
    row("hbfast.relevant_ranks", t_ours, t_mm, "<- target <= 1.2")
    row("matmul + full argsort, 1000 queries", t_sort, t_mm, f"(~{t_sort * nq / 1000:.1f} s for all)")
    memory = {name: peak_rss_growth("ranks", name, args.quick) for name in ("matmul", "hbfast")}
    print(f"  peak RSS growth: matmul {memory['matmul']:.0f} MiB, hbfast {memory['hbfast']:.0f} MiB "
          f"(x{memory['hbfast'] / max(memory['matmul'], 1e-9):.2f})")


def bench_metrics(args):
    import pytrec_eval

    nq, depth, r, n_docs = (2000, 1000, 11, 13014) if args.quick else (13090, 1000, 11, 13014)
    rng = np.random.default_rng(2)
    ids = np.argsort(rng.random((nq, n_docs)), axis=1)[:, :depth].astype(np.int64)  # [nq, depth] distinct
    scores = -np.sort(rng.random((nq, depth)), axis=1).astype(np.float32)  # distinct-ish, descending
    scores = np.sort(scores, axis=1)[:, ::-1].copy()
    rel = np.stack([rng.choice(n_docs, r, replace=False) for _ in range(nq)])  # [nq, r]
    gains = np.ones((nq, r))
    names = ["map", "mrr", "ndcg@10", "recall@10", "precision@10"]
    trec_names = {"map": "map", "mrr": "recip_rank", "ndcg@10": "ndcg_cut_10", "recall@10": "recall_10", "precision@10": "P_10"}
    print(f"metrics: {nq} queries x {depth}-deep run, {r} relevant each: {', '.join(names)}")

    t_dicts, (run, qrels) = timed(lambda: (
        {f"q{i}": {f"d{d}": float(s) for d, s in zip(ids[i].tolist(), scores[i].tolist())} for i in range(nq)},
        {f"q{i}": {f"d{d}": 1 for d in rel[i].tolist()} for i in range(nq)}), 1)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"map", "recip_rank", "ndcg_cut", "recall", "P"})
    t_trec, trec = timed(lambda: evaluator.evaluate(run), 1)
    ours = hbfast.metrics.evaluate((scores, ids), (rel, gains), names, per_query=True)
    for n in names:
        expected = np.array([trec[f"q{i}"][trec_names[n]] for i in range(nq)])
        assert np.allclose(ours[n], expected, atol=1e-6, rtol=0), n
    print("  equal to pytrec_eval per query (1e-6) on every metric")
    t_ours, _ = timed(lambda: hbfast.metrics.evaluate((scores, ids), (rel, gains), names), args.repeat)
    ranks = hbfast.metrics._C.run_ranks(ids, scores, rel)
    t_ranks, _ = timed(lambda: hbfast.metrics.evaluate_ranks(ranks, names), args.repeat)
    row("pytrec_eval evaluate()", t_trec, t_trec, f"(baseline; building its dicts took {t_dicts:.1f} s)")
    row("hbfast.metrics.evaluate (arrays)", t_ours, t_trec, f"<- target <= 0.02 ({t_trec / t_ours:.0f}x faster)")
    row("hbfast.metrics.evaluate_ranks", t_ranks, t_trec)
    try:
        import ranx
    except ImportError:
        print("  ranx not installed: skipped")
        return
    import warnings

    import pandas as pd

    def ranx_inputs():  # ranx's fastest loader: DataFrames with string ids
        qid = np.array([f"q{i}" for i in range(nq)], dtype=object)
        run_df = pd.DataFrame({"q_id": pd.Series(np.repeat(qid, depth), dtype=object),
                               "doc_id": pd.Series([f"d{d}" for d in ids.ravel().tolist()], dtype=object),
                               "score": scores.ravel().astype(np.float64)})
        qrels_df = pd.DataFrame({"q_id": pd.Series(np.repeat(qid, r), dtype=object),
                                 "doc_id": pd.Series([f"d{d}" for d in rel.ravel().tolist()], dtype=object),
                                 "score": np.ones(nq * r, dtype=np.int64)})
        return (ranx.Qrels.from_df(qrels_df, q_id_col="q_id", doc_id_col="doc_id", score_col="score"),
                ranx.Run.from_df(run_df, q_id_col="q_id", doc_id_col="doc_id", score_col="score"))

    ranx_names = ["map", "mrr", "ndcg@10", "recall@10", "precision@10"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's type-safety chatter
        t_build, (r_qrels, r_run) = timed(ranx_inputs, 1)
        ranx.evaluate(r_qrels, r_run, ranx_names)  # JIT warm-up
        t_ranx, ranx_values = timed(lambda: ranx.evaluate(r_qrels, r_run, ranx_names), args.repeat)
    means = hbfast.metrics.evaluate((scores, ids), (rel, gains), names)
    for n in names:
        assert abs(means[n] - ranx_values[n]) < 1e-6, (n, means[n], ranx_values[n])
    print("  equal to ranx (means, 1e-6)")
    row("ranx evaluate() (warm)", t_ranx, t_ranx, f"(baseline; Qrels/Run build took {t_build:.1f} s)")
    row("hbfast.metrics.evaluate (arrays)", t_ours, t_ranx, f"<- target <= 0.2 ({t_ranx / t_ours:.0f}x faster)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timed calls")
    parser.add_argument("--only", choices=["topk", "ranks", "metrics"], action="append", help="sections to run")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: one call in a fresh process
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: topk on the GPU vs torch and faiss-gpu (benchmarks/compare_gpu.py)")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import compare_gpu

        return compare_gpu.main(["--only", "topk", "--repeats", str(args.repeat)]
                                + (["--topk-size", "200x100000x768"] if args.quick else []))
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.quick)
    sections = args.only or ["topk", "ranks", "metrics"]
    print(f"hbfast {hbfast.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in sections:
        {"topk": bench_topk, "ranks": bench_ranks, "metrics": bench_metrics}[name](args)


if __name__ == "__main__":
    main()
