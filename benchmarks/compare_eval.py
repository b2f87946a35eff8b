"""What the whole LAReQA table costs once embeddings exist, against the bare matrix products it needs.

    python benchmarks/compare_eval.py [--dataset xquad-r] [--dim 384] [--repeats 3] [--languages en,de,...]

Correctness first: the protocol's mono / cross / multi mAP and rank distance are checked against
an independent full-sort implementation on a 3-language subset. Then, on the full dataset shapes
with random unit embeddings (timing depends on shapes only), it times:
  protocol   hbfast.eval.lareqa_from_embeddings (L + L(L-1) pair settings, the union setting, AP, bias)
  bare       the products of a per-setting evaluation: q_x @ c_y.T for every pair, q_x @ union.T per x
  union      the one product that holds every score: all queries @ union.T, the products the protocol
             needs (it ranks every question once against the union pool, chunked by language, which
             gives the pair settings from the same scores)
and prints time and peak-memory ratios (best of --repeats; peak = RSS high-water mark above the start).
"""
from __future__ import annotations

import argparse
import threading
import time

import torch

import hbfast
from hbfast import eval as protocols

_CHUNK_ROWS = 2048


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples the resident set size in a thread; ``peak`` is the high-water mark above the start."""

    def __enter__(self):
        self.start = self.peak_abs = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak_abs = max(self.peak_abs, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak_abs, _rss_bytes()) - self.start


def bare_products(ds, queries, candidates):
    """The products the protocol computes, chunked like a kernel would be, results discarded."""
    union = torch.cat([candidates[y] for y in ds.languages])
    for x in ds.languages:
        for y in ds.languages:
            _ = queries[x] @ candidates[y].T  # [nq, nc_y]
        for start in range(0, len(queries[x]), _CHUNK_ROWS):
            _ = queries[x][start:start + _CHUNK_ROWS] @ union.T  # [chunk, N]


def union_product(ds, queries, candidates):
    union = torch.cat([candidates[y] for y in ds.languages])
    everything = torch.cat([queries[x] for x in ds.languages])
    for start in range(0, len(everything), _CHUNK_ROWS):
        _ = everything[start:start + _CHUNK_ROWS] @ union.T  # [chunk, N]


def full_sort_reference(ds, queries, candidates):
    """mono, cross, multi, rank distance from stable full sorts of the union score rows (no hbfast ranking code)."""
    langs = list(ds.languages)
    sizes = torch.tensor([len(candidates[y]) for y in langs])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
    block = torch.repeat_interleave(torch.arange(len(langs)), sizes)  # [N] language of each union row
    union = torch.cat([candidates[y] for y in langs])
    rows = {y: dict(zip(ds.questions[y]["id"], ds.questions[y]["relevant"])) for y in langs}
    pair_ap = {(x, y): [] for x in langs for y in langs}
    multi_ap, distance = [], []
    for x in langs:
        scores = queries[x].double() @ union.double().T  # [nq, N]
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # ties: lower id first
        for i, qid in enumerate(ds.questions[x]["id"]):
            position = torch.empty_like(order[i])
            position[order[i]] = torch.arange(len(order[i]))
            in_block_rank = torch.zeros(len(union), dtype=torch.int64)
            for j in range(len(langs)):  # rank inside language j = 1 + block items placed before it
                mask = block[order[i]] == j
                in_block_rank[order[i][mask]] = torch.arange(1, int(mask.sum()) + 1)
            union_ranks = []
            for j, y in enumerate(langs):
                if qid in rows[y]:
                    item = int(offsets[j]) + rows[y][qid]
                    pair_ap[(x, y)].append(1.0 / float(in_block_rank[item]))
                    union_ranks.append(int(position[item]) + 1)
            union_ranks.sort()
            multi_ap.append(sum((k + 1) / r for k, r in enumerate(union_ranks)) / len(union_ranks))
            distance.append(union_ranks[-1] - union_ranks[0])
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    mono = {x: mean(pair_ap[(x, x)]) for x in langs}
    cross = {(x, y): mean(v) for (x, y), v in pair_ap.items() if x != y and v}
    return mono, cross, mean(multi_ap), mean(distance)


def random_embeddings(ds, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)  # noqa: E731
    return ({y: unit(len(ds.questions[y])) for y in ds.languages},
            {y: unit(len(ds.candidates[y])) for y in ds.languages})


def check_correctness(name: str) -> None:
    ds = hbfast.data.load_lareqa(name).subset(["en", "de", "zh"])
    queries, candidates = random_embeddings(ds, 16, seed=1)
    res = protocols.lareqa_from_embeddings(ds, queries, candidates, metric="ip")
    mono, cross, multi, distance = full_sort_reference(ds, queries, candidates)
    for key in mono:
        assert abs(res.mono[key] - mono[key]) < 1e-9, (key, res.mono[key], mono[key])
    for key in cross:
        assert abs(res.cross[key] - cross[key]) < 1e-9, (key, res.cross[key], cross[key])
    assert abs(res.multi - multi) < 1e-9 and abs(res.rank_distance - distance) < 1e-9
    print(f"correctness: {name} en/de/zh protocol == full-sort reference "
          f"(multi mAP {multi:.4f}, rank distance {distance:.1f})")


def best_of(fn, repeats: int, ranking_seconds: list | None = None):
    """Best time of ``repeats`` runs, the largest peak, the output, and the ranking seconds of the best run."""
    seconds, peak, ranking = [], [], []
    for _ in range(repeats):
        if ranking_seconds is not None:
            ranking_seconds[0] = 0.0
        with PeakRSS() as memory:
            start = time.perf_counter()
            out = fn()
            seconds.append(time.perf_counter() - start)
        peak.append(memory.peak)
        ranking.append(ranking_seconds[0] if ranking_seconds is not None else 0.0)
    best = min(range(repeats), key=seconds.__getitem__)
    return seconds[best], max(peak), out, ranking[best]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="xquad-r", choices=("xquad-r", "mlqa-r"))
    parser.add_argument("--languages", default=None)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    check_correctness(args.dataset)
    ds = hbfast.data.load_lareqa(args.dataset, languages=args.languages)
    queries, candidates = random_embeddings(ds, args.dim)
    nq = sum(len(v) for v in queries.values())
    n = sum(len(v) for v in candidates.values())
    print(f"{ds.name}: {len(ds.languages)} languages, {nq} queries, {n} candidates, d={args.dim}, "
          f"torch threads {torch.get_num_threads()}")

    ranking_seconds = [0.0]
    original = protocols.relevant_ranks

    def timed_ranks(*a, **k):
        start = time.perf_counter()
        out = original(*a, **k)
        ranking_seconds[0] += time.perf_counter() - start
        return out

    t_union, m_union, _, _ = best_of(lambda: union_product(ds, queries, candidates), args.repeats)
    t_bare, m_bare, _, _ = best_of(lambda: bare_products(ds, queries, candidates), args.repeats)
    protocols.relevant_ranks = timed_ranks
    try:
        t_protocol, m_protocol, res, in_ranks = best_of(
            lambda: protocols.lareqa_from_embeddings(ds, queries, candidates, metric="ip"), args.repeats,
            ranking_seconds)
    finally:
        protocols.relevant_ranks = original
    print(f"{'':<10}{'seconds':>9}{'peak MiB':>10}")
    for label, t, m in (("union", t_union, m_union), ("bare", t_bare, m_bare), ("protocol", t_protocol, m_protocol)):
        print(f"{label:<10}{t:>9.2f}{m / 2**20:>10.0f}")
    print(f"protocol / the products it needs (union): time {t_protocol / t_union:.2f}x, peak memory "
          f"{m_protocol / max(m_union, 1):.2f}x  (target: time <= ~2x)")
    print(f"protocol / per-setting bare products: time {t_protocol / t_bare:.2f}x, peak memory "
          f"{m_protocol / max(m_bare, 1):.2f}x")
    rest = t_protocol - in_ranks
    print(f"inside hbfast.relevant_ranks (its products included): {in_ranks:.2f} s of {t_protocol:.2f} s; the rest "
          f"(relevance tables, normalisation, AP, rank distance) {rest:.2f} s = {rest / t_union:.2f}x the union product")
    print(f"(random embeddings: mono {res.mono_mean:.4f}, cross {res.cross_mean:.4f}, multi {res.multi:.4f})")


if __name__ == "__main__":
    main()
