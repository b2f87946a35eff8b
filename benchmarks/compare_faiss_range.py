"""range_search and filtered search: hbfast.integrations.faiss's flat indexes against faiss-cpu's own, in one run.

    python benchmarks/compare_faiss_range.py            # 1000 queries x 100,000 x 128 (a few minutes on 2 cores)
    python benchmarks/compare_faiss_range.py --quick    # small sizes, a smoke test

Both indexes hold the same vectors (the drop-in in faiss's own storage: it subclasses faiss's class);
only the calls are timed, each the best of --repeats (faiss's and hbfast's alternating, so a burst of load
from other work hits both). Measured, for IndexFlatIP and IndexFlatL2:
- ``range_search(xq, threshold)``, threshold set so that a query finds about --per-query items;
- ``search(xq, k, params=SearchParameters(sel=...))`` with an IDSelectorRange over half the ids, an
  IDSelectorBatch of 10% of the ids, and an IDSelectorBitmap of 30%;
- ``range_search`` with the IDSelectorRange.
Each result is first checked against faiss's (same ids, up to float32 round-off at the threshold).
Printed: seconds of each and the ratio hbfast / faiss (the goal: at most 1.0x).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def best_of(calls, repeats):
    """Best wall time of each callable, over `repeats` alternating rounds."""
    best = [float("inf")] * len(calls)
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def same_range(a, b, threshold, tol):
    (la, da, ia), (lb, db, ib) = a, b
    assert len(la) == len(lb)
    for q in range(len(la) - 1):
        x = dict(zip(ia[la[q] : la[q + 1]].tolist(), da[la[q] : la[q + 1]].tolist()))
        y = dict(zip(ib[lb[q] : lb[q + 1]].tolist(), db[lb[q] : lb[q + 1]].tolist()))
        assert all(abs(x.get(i, y.get(i)) - threshold) <= tol for i in set(x) ^ set(y)), f"query {q} differs"


def same_search(a, b):
    (da, ia), (db, ib) = a, b
    np.testing.assert_allclose(da, db, rtol=1e-4, atol=1e-3)
    assert (ia == ib).mean() > 0.99


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nq", type=int, default=1000)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--per-query", type=int, default=50, help="items a range search finds per query (about)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--few", default="1,10", help="also time range_search and a filtered search with these few queries")
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args(argv)
    if a.quick:
        a.nq, a.n, a.d, a.repeats = 50, 5000, 32, 2

    import faiss
    import torch

    import hbfast
    import hbfast.integrations.faiss as hfaiss

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((a.n, a.d), dtype=np.float32)
    xq = rng.standard_normal((a.nq, a.d), dtype=np.float32)
    ids = rng.choice(a.n, a.n // 10, replace=False).astype(np.int64)
    bitmap = np.packbits(rng.random(a.n) < 0.3, bitorder="little")
    sels = {
        "IDSelectorRange (50%)": faiss.IDSelectorRange(a.n // 4, a.n // 4 + a.n // 2),
        "IDSelectorBatch (10%)": faiss.IDSelectorBatch(ids),
        "IDSelectorBitmap (30%)": faiss.IDSelectorBitmap(bitmap),
    }
    print(f"faiss {faiss.__version__}, hbfast {hbfast.__version__}, torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, faiss threads {faiss.omp_get_max_threads()}, "
          f"hbfast threads {hbfast.get_num_threads()}")
    print(f"{a.nq} queries x {a.n} x {a.d}, k = {a.k}, best of {a.repeats}\n")
    print("| index | call | faiss s | hbfast s | hbfast / faiss |")
    print("|---|---|---|---|---|")
    sample = xq[: min(50, a.nq)]
    for kind in ("IndexFlatIP", "IndexFlatL2"):
        theirs, ours = getattr(faiss, kind)(a.d), getattr(hfaiss, kind)(a.d)
        theirs.add(xb)
        ours.add(xb)
        # the threshold at which a query finds about --per-query items (from a sample of queries)
        D, _ = theirs.search(sample, a.per_query)
        threshold = float(np.median(D[:, -1]))
        tol = 1e-5 * float(np.abs(D).max()) + 1e-4
        rows = [("range_search", lambda idx: idx.range_search(xq, threshold), same_range)]
        for name, sel in sels.items():
            params = faiss.SearchParameters(sel=sel)
            rows.append((f"search, {name}", lambda idx, p=params: idx.search(xq, a.k, params=p), same_search))
        params = faiss.SearchParameters(sel=sels["IDSelectorRange (50%)"])
        rows.append(("range_search, IDSelectorRange (50%)", lambda idx, p=params: idx.range_search(xq, threshold, params=p),
                     same_range))
        for name, call, check in rows:
            got, want = call(ours), call(theirs)
            if check is same_range:
                check(got, want, threshold, tol)
            else:
                check(got, want)
            t_faiss, t_ours = best_of([lambda: call(theirs), lambda: call(ours)], a.repeats)
            print(f"| {kind} | {name} | {t_faiss:.3f} | {t_ours:.3f} | {t_ours / t_faiss:.2f}x |", flush=True)
        # Few queries: calls of a few ms, best of 10x more, and each side's calls in a row (not alternating:
        # faiss's OpenMP threads keep spinning for a while after each call, on the cores hbfast's next call needs)
        for nq in [int(v) for v in a.few.split(",") if v]:
            few = xq[:nq]
            params = faiss.SearchParameters(sel=sels["IDSelectorRange (50%)"])
            for name, call in ((f"range_search, {nq} queries", lambda idx: idx.range_search(few, threshold)),
                               (f"search, IDSelectorRange (50%), {nq} queries",
                                lambda idx: idx.search(few, a.k, params=params))):
                (t_faiss,), (t_ours,) = (best_of([lambda: call(idx)], 10 * a.repeats) for idx in (theirs, ours))
                print(f"| {kind} | {name} | {t_faiss:.4f} | {t_ours:.4f} | {t_ours / t_faiss:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
