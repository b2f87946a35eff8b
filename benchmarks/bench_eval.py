"""pytest-benchmark suite of the LAReQA protocol on precomputed embeddings vs the bare products it needs.

    python -m pytest benchmarks/bench_eval.py --benchmark-only --benchmark-columns=min,median,rounds

Default sizes: XQuAD-R shapes restricted to 4 languages (4760 queries, 4 x ~1200 candidates), d=384,
so that the suite runs in about a minute on a 2-core box; benchmarks/compare_eval.py times the full table.
"""
import pytest
import torch

import hbfast
from compare_eval import bare_products, random_embeddings, union_product

LANGUAGES = ["ar", "de", "en", "zh"]


@pytest.fixture(scope="module")
def setup():
    ds = hbfast.data.load_lareqa("xquad-r", languages=LANGUAGES)
    queries, candidates = random_embeddings(ds, 384)
    return ds, queries, candidates


def test_protocol(benchmark, setup):
    ds, queries, candidates = setup
    res = benchmark.pedantic(hbfast.eval.lareqa_from_embeddings, args=(ds, queries, candidates),
                             kwargs={"metric": "ip"}, rounds=3, warmup_rounds=0)
    assert len(res.cross) == len(LANGUAGES) * (len(LANGUAGES) - 1)


def test_bare_products(benchmark, setup):
    benchmark.pedantic(bare_products, args=setup, rounds=3, warmup_rounds=0)


def test_union_product(benchmark, setup):
    benchmark.pedantic(union_product, args=setup, rounds=3, warmup_rounds=0)


def test_union_relevant_ranks(benchmark, setup):
    """The multilingual step alone: every query against the union pool, one relevant item per language."""
    ds, queries, candidates = setup
    union = torch.cat([candidates[y] for y in ds.languages])
    everything = torch.cat([queries[x] for x in ds.languages])
    relevant = torch.randint(0, len(union), (len(everything), len(LANGUAGES)), generator=torch.Generator().manual_seed(0))
    benchmark.pedantic(hbfast.relevant_ranks, args=(everything, union, relevant), rounds=3, warmup_rounds=0)
