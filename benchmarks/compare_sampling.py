"""Hybrid batch plans against their floor (numpy.random.permutation) and the numpy twin, in one run.

    python benchmarks/compare_sampling.py [--n 10000000] [--langs 11] [--batch 100]
"""
import argparse
import time

import numpy as np

import hbfast


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--langs", type=int, default=11)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--n-reference", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    avail = np.random.default_rng(0).random((args.n, args.langs)) < 0.7
    small = avail[: args.n_reference]
    kernel = hbfast.hybrid_batches(small, args.batch, impl="kernel", drop_last=False)
    reference_start = time.perf_counter()
    reference = hbfast.hybrid_batches(small, args.batch, impl="reference", drop_last=False)
    t_reference = time.perf_counter() - reference_start
    for field in ("items", "query_lang", "passage_lang", "mono"):
        assert np.array_equal(getattr(kernel, field), getattr(reference, field)), field
    t_kernel_small = best_of(lambda: hbfast.hybrid_batches(small, args.batch, impl="kernel", drop_last=False), args.repeats)

    t_perm = best_of(lambda: np.random.permutation(args.n), args.repeats)
    t_kernel = best_of(lambda: hbfast.hybrid_batches(avail, args.batch), args.repeats)
    print(f"hybrid_batches N={args.n:,} L={args.langs} batch={args.batch} (threads={hbfast.get_num_threads()})")
    print(f"  numpy.random.permutation(N): {t_perm:.3f} s")
    print(f"  hbfast kernel:               {t_kernel:.3f} s  = {t_kernel / t_perm:.2f}x the permutation (target <= 5x)")
    print(f"hybrid_batches N={args.n_reference:,} (kernel == reference checked)")
    print(f"  reference twin:              {t_reference:.3f} s")
    print(f"  hbfast kernel:               {t_kernel_small:.4f} s  = {t_reference / t_kernel_small:.0f}x faster (target >= 20x)")


if __name__ == "__main__":
    main()
