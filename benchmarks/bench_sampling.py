"""pytest-benchmark suite for hybrid batch plans: the kernel, its floor (a permutation), its twin.

    pytest benchmarks/bench_sampling.py --benchmark-only
"""
import numpy as np
import pytest

import hbfast

N, L, BATCH = 10_000_000, 11, 100
N_REFERENCE = 200_000  # the pure-Python twin is slow: timed on a smaller epoch


@pytest.fixture(scope="module")
def availability():
    return np.random.default_rng(0).random((N, L)) < 0.7


def test_permutation_floor(benchmark):
    benchmark(np.random.permutation, N)


def test_kernel(benchmark, availability):
    plan = benchmark(hbfast.hybrid_batches, availability, BATCH, impl="kernel")
    assert len(plan) > 0.99 * N // BATCH


def test_kernel_small(benchmark, availability):
    benchmark(hbfast.hybrid_batches, availability[:N_REFERENCE], BATCH, impl="kernel")


def test_reference_small(benchmark, availability):
    benchmark.pedantic(hbfast.hybrid_batches, (availability[:N_REFERENCE], BATCH), {"impl": "reference"}, rounds=1)
