"""faiss code on hbfast's exact search: only the import changes.

    python examples/faiss_drop_in.py                 # 100,000 x 384 corpus, 1,000 queries
    python examples/faiss_drop_in.py --n 1000 --nq 10
"""
import argparse
import time

import numpy as np

import hbfast.integrations.faiss as faiss  # was: import faiss


def search(xb, xq, k):
    """The faiss way: normalise, index, search by inner product (= cosine)."""
    xb, xq = xb.copy(), xq.copy()
    faiss.normalize_L2(xb)
    faiss.normalize_L2(xq)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return index.search(xq, k)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--nq", type=int, default=1_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    a = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((a.n, a.d)).astype(np.float32)
    xq = xb[rng.choice(a.n, a.nq, replace=False)] + 0.1 * rng.standard_normal((a.nq, a.d)).astype(np.float32)
    start = time.perf_counter()
    D, I = search(xb, xq, a.k)
    print(f"searched {a.nq} queries in {a.n} x {a.d} vectors in {time.perf_counter() - start:.2f} s")
    print("first query: ids", I[0][:5].tolist(), "scores", np.round(D[0][:5], 3).tolist())
    return D, I


if __name__ == "__main__":
    main()
