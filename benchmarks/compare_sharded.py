"""hbfast.ShardedIndex out of core against faiss in memory, 2 processes against 1, and time against
corpus size, in one run (issue 19). Prints the ratios; deletes the generated data at the end.

    python benchmarks/compare_sharded.py                          # 1M, 2M, 5M x 384 float16, 1000 queries
    python benchmarks/compare_sharded.py --sizes 100000,200000 --queries 20   # a smoke test

- out of core: ``ShardedIndex(dir, memory_budget=1GiB).search`` over the largest corpus, read from its
  float16 shards tile by tile, against faiss ``IndexFlatIP`` holding the same vectors (float32) in RAM;
  search time (faiss's load from the shards reported apart) and peak memory of each, in a fresh process:
  the peak RSS (VmHWM, reset before the work) minus the RSS before it; and hbfast.topk over the same
  float16 vectors held in RAM (what reading from disk tile by tile costs).
- processes: the same search on 2 gloo processes (torch.distributed.run, 1 thread each) against 1
  process with 2 threads, on the middle size.
- growth: hbfast's time at every size, and its ratio to the smallest size's time per row.
The shards are written once (the largest size); smaller sizes are manifests over its first shards
(hard links). The page cache may hold part of the shards (nothing is evicted here): "from disk" means
read with file reads, never held by the process.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROWS_PER_SHARD = 250_000


def _status(field: str) -> int:
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) << 10


def _reset_peak() -> int:
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def generate(root: Path, sizes, dim: int) -> dict:
    """The largest corpus as float16 shards in root/all; root/n<size>: manifests over its first shards."""
    import hbfast

    largest = max(sizes)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    step = ROWS_PER_SHARD
    base = rng.standard_normal((step, dim), dtype=np.float32).astype(np.float16)
    for i0 in range(0, largest, step):  # one random block, its columns permuted anew for every shard (cheap)
        block = base[: min(step, largest - i0)][:, rng.permutation(dim)]
        hbfast.write_shards(block, root / "all", rows_per_shard=ROWS_PER_SHARD, dtype="float16", metric="ip")
        print(f"\r  generated {i0 + len(block):,} / {largest:,} rows", end="", file=sys.stderr, flush=True)
    print(f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    manifest = json.loads((root / "all" / "manifest.json").read_text())
    dirs = {}
    for n in sizes:
        if n % ROWS_PER_SHARD and n != largest:
            raise SystemExit(f"--sizes must be multiples of {ROWS_PER_SHARD} (or the largest size), got {n}")
        d = root / f"n{n}"
        d.mkdir(exist_ok=True)
        shards = [s for s in manifest["shards"] if s["first_id"] < n]
        for s in shards:
            if not (d / s["file"]).exists():
                os.link(root / "all" / s["file"], d / s["file"])
        (d / "manifest.json").write_text(json.dumps(dict(manifest, count=n, shards=shards)))
        dirs[n] = d
    return dirs


def _queries(nq: int, dim: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((nq, dim)).astype(np.float32)


# ---- probes: each in a fresh process ---------------------------------------------------------------
def probe_hbfast(index_dir: str, nq: int, k: int, budget: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    import hbfast

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    q = _queries(nq, hbfast.open_shards(index_dir).dim)
    warm = Path(out).with_suffix(".warm")  # libraries, threads and the product choice, on a tiny index
    hbfast.write_shards(q[:8].copy(), warm / str(os.environ.get("RANK", "0")))
    hbfast.ShardedIndex(warm / str(os.environ.get("RANK", "0")), memory_budget=budget).search(q, 4)
    index = hbfast.ShardedIndex(index_dir, memory_budget=budget)
    if dist.is_initialized():
        dist.barrier()
    base = _reset_peak()
    t0 = time.perf_counter()
    scores, ids = index.search(q, k)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") - base
    if index.rank == 0:
        np.save(out + ".ids.npy", ids)
    peaks = [peak] if not dist.is_initialized() else [None] * index.world
    if dist.is_initialized():
        dist.all_gather_object(peaks, peak)
        dist.destroy_process_group()
    if index.rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "peak": max(peaks), "threads": torch.get_num_threads(),
                                         "world": index.world, "query_block": index.query_block}))


def probe_faiss(index_dir: str, nq: int, k: int, out: str) -> None:
    import faiss

    import hbfast

    shards = hbfast.open_shards(index_dir)
    q = _queries(nq, shards.dim)
    warm = faiss.IndexFlatIP(shards.dim)
    warm.add(q)
    warm.search(q, 4)
    base = _reset_peak()
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(shards.dim)
    for i in range(len(shards.shards)):  # shard by shard: faiss's copy is the only whole corpus in memory
        index.add(np.ascontiguousarray(shards.array(i), dtype=np.float32))
    load = time.perf_counter() - t0
    resident = _status("VmRSS") - base
    t0 = time.perf_counter()
    _, ids = index.search(q, k)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") - base
    np.save(out + ".ids.npy", ids)
    Path(out).write_text(json.dumps({"seconds": seconds, "load": load, "peak": peak, "resident": resident,
                                     "threads": faiss.omp_get_max_threads()}))


def probe_topk(index_dir: str, nq: int, k: int, out: str) -> None:
    """hbfast.topk over the same float16 vectors held in RAM (one array): the in-memory cost of the search."""
    import hbfast

    shards = hbfast.open_shards(index_dir)
    q = _queries(nq, shards.dim)
    hbfast.topk(q, q[:8].copy(), 4)
    base = _reset_peak()
    t0 = time.perf_counter()
    corpus = np.concatenate([np.asarray(a) for a in shards.arrays()])
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, ids = hbfast.topk(q, corpus, k)
    seconds = time.perf_counter() - t0
    np.save(out + ".ids.npy", ids)
    Path(out).write_text(json.dumps({"seconds": seconds, "load": load, "peak": _status("VmHWM") - base}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_probe(kind: str, index_dir: Path, args, root: Path, world: int = 1, threads: int = None) -> dict:
    out = str(root / f"probe-{kind}-{index_dir.name}-w{world}.json")
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), HBFAST_NUM_THREADS=str(threads))
    probe = [__file__, "--probe", kind, "--index", str(index_dir), "--queries", str(args.queries), "--k", str(args.k),
             "--budget", args.budget, "--out", out]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
               str(_free_port()), *probe]
    else:
        cmd = [sys.executable, *probe]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    result = json.loads(Path(out).read_text())
    result["ids"] = np.load(out + ".ids.npy")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000000,2000000,5000000")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--budget", default="1GiB")
    p.add_argument("--dir", default="/tmp/hbfast-compare-sharded")
    p.add_argument("--keep", action="store_true", help="keep the generated shards")
    p.add_argument("--probe", choices=("hbfast", "faiss", "topk"), help=argparse.SUPPRESS)
    p.add_argument("--index", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe == "hbfast":
        return probe_hbfast(args.index, args.queries, args.k, args.budget, args.out)
    if args.probe == "faiss":
        return probe_faiss(args.index, args.queries, args.k, args.out)
    if args.probe == "topk":
        return probe_topk(args.index, args.queries, args.k, args.out)

    import hbfast

    sizes = sorted(int(s) for s in args.sizes.split(","))
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        dirs = generate(root, sizes, args.dim)
        largest, middle = sizes[-1], sizes[len(sizes) // 2]
        gib = lambda b: b / 2**30  # noqa: E731
        print(f"corpus {largest:,} x {args.dim} float16 ({gib(largest * args.dim * 2):.2f} GiB on disk), "
              f"{args.queries} queries, k {args.k}, hbfast memory_budget {args.budget}; "
              f"{os.cpu_count()} CPUs; hbfast {hbfast.__version__}; load average {os.getloadavg()[0]:.1f}")
        print("\n1. out of core (hbfast, shards on disk) vs faiss IndexFlatIP (float32 in RAM), largest size")
        ours = run_probe("hbfast", dirs[largest], args, root)
        theirs = run_probe("faiss", dirs[largest], args, root)
        agree = float((np.sort(ours["ids"], 1) == np.sort(theirs["ids"], 1)).all(1).mean())
        print(f"   hbfast: search {ours['seconds']:.2f} s, peak +{gib(ours['peak']):.3f} GiB "
              f"(queries per walk {ours['query_block']})")
        print(f"   faiss:  search {theirs['seconds']:.2f} s (+ {theirs['load']:.1f} s to load the shards), "
              f"peak +{gib(theirs['peak']):.3f} GiB (while adding shard by shard: faiss grows its array), "
              f"+{gib(theirs['resident']):.3f} GiB resident once loaded")
        print(f"   ratio hbfast / faiss: time {ours['seconds'] / theirs['seconds']:.2f}x; "
              f"with faiss's load {ours['seconds'] / (theirs['seconds'] + theirs['load']):.2f}x; "
              f"peak memory {ours['peak'] / theirs['peak']:.4f}x (vs its resident corpus "
              f"{ours['peak'] / theirs['resident']:.4f}x); same top-{args.k} sets for {agree:.1%} of queries")

        in_ram = run_probe("topk", dirs[largest], args, root)
        print(f"   hbfast.topk on the same float16 array in RAM: search {in_ram['seconds']:.2f} s (+ {in_ram['load']:.1f} s "
              f"to read it), peak +{gib(in_ram['peak']):.3f} GiB; out of core / in RAM: time "
              f"{ours['seconds'] / in_ram['seconds']:.2f}x, peak memory {ours['peak'] / in_ram['peak']:.4f}x; "
              f"identical ids: {bool((in_ram['ids'] == ours['ids']).all())}")

        print(f"\n2. processes, {middle:,} rows: 2 gloo processes x 1 thread vs 1 process x 2 threads")
        one = run_probe("hbfast", dirs[middle], args, root, world=1, threads=2)
        two = run_probe("hbfast", dirs[middle], args, root, world=2, threads=1)
        same = bool((one["ids"] == two["ids"]).all())
        print(f"   1 process {one['seconds']:.2f} s, 2 processes {two['seconds']:.2f} s: ratio 2 / 1 = "
              f"{two['seconds'] / one['seconds']:.2f}x; peak per process {gib(one['peak']):.3f} / "
              f"{gib(two['peak']):.3f} GiB; identical ids: {same}")

        print("\n3. growth with corpus size (hbfast, 1 process)")
        base = None
        for n in sizes:
            r = ours if n == largest else one if n == middle else run_probe("hbfast", dirs[n], args, root)
            per_row = r["seconds"] / n
            base = base or per_row
            print(f"   {n:>10,} rows: {r['seconds']:7.2f} s, {n / r['seconds'] / 1e6:6.2f} M rows/s, "
                  f"time per row vs {sizes[0]:,}: {per_row / base:.2f}x, peak +{gib(r['peak']):.3f} GiB")
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
