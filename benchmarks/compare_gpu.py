"""hbfast on a GPU against the GPU baselines, in one run: correctness first, then time and peak memory.

    python benchmarks/compare_gpu.py                                   # topk and loss, default sizes
    python benchmarks/compare_gpu.py --only loss --sizes 65536x256,131072x256,262144x128
    python benchmarks/compare_gpu.py --only topk --topk-size 10000x1000000x768
    python benchmarks/compare_search.py --device cuda                  # the topk section of this script
    python benchmarks/compare_losses.py --device cuda --sizes 65536x256   # its loss section

- topk (nq x N x D, k 10 and 1000) vs torch (matmul per corpus chunk + torch.topk merge) and
  faiss-gpu's exact brute force (faiss.knn_gpu on the same CUDA tensors; skipped unless faiss was
  built with GPU support, e.g. `pip install faiss-gpu-cu12`), and the bare product q @ c.T.
- the symmetric contrastive loss, forward + backward, vs the naive loss (full B x B logits and
  F.cross_entropy both ways) and open_clip's ClipLoss (its loss.py loaded alone, as in
  compare_losses.py; `pip install --no-deps open_clip_torch`), at B = 65536 and more by default.
Time: best of --repeats, wall clock between torch.cuda.synchronize() calls. Memory: peak of
torch.cuda.max_memory_allocated() during the call minus what was allocated before (faiss allocates
outside torch's allocator: its figure is not comparable and is printed as n/a). An out-of-memory
is reported as OOM. Needs a CUDA GPU; ratios are against the first baseline of each table.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import hbfast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import open_clip_loss_module, torch_topk  # noqa: E402

TEMPERATURE = 0.05


def measure(fn, repeats):
    """(best seconds, peak extra MiB, last result) or ("OOM", ...)."""
    best, peak, out = float("inf"), 0.0, None
    for _ in range(repeats):
        out = None
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            out = fn()
            torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            return "OOM", float("nan"), None
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, (torch.cuda.max_memory_allocated() - base) / 2**20)
    return best, peak, out


def print_table(title, results, memory_comparable=("faiss",)):
    print(f"\n{title}")
    print(f"{'impl':12s} {'time s':>9s} {'ratio':>7s} {'peak extra MiB':>15s} {'mem ratio':>9s}")
    base_t, base_m = next(((t, m) for t, m in results.values() if t != "OOM"), (float("nan"), float("nan")))
    for name, (t, m) in results.items():
        if t == "OOM":
            print(f"{name:12s} {'OOM':>9s}")
            continue
        mem = "n/a" if name in memory_comparable else f"{m:15.0f}"
        mem_ratio = "n/a" if name in memory_comparable else f"{m / base_m:9.3f}" if base_m else "-"
        print(f"{name:12s} {t:9.4f} {t / base_t:6.2f}x {mem:>15s} {mem_ratio:>9s}")


# ---- topk -----------------------------------------------------------------------------------------

def faiss_gpu_knn():
    """faiss.knn_gpu over torch CUDA tensors, or None when faiss has no GPU support."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (lets faiss take torch tensors)
    except ImportError:
        return None
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return None
    resources = faiss.StandardGpuResources()
    return lambda q, c, k: faiss.knn_gpu(resources, q, c, k, metric=faiss.METRIC_INNER_PRODUCT)


def bench_topk(args):
    nq, n, d = map(int, args.topk_size.lower().split("x"))
    g = torch.Generator().manual_seed(0)
    q = torch.randn(nq, d, generator=g).cuda()
    c = torch.randn(n, d, generator=g).cuda()
    knn = faiss_gpu_knn()
    for k in (10, 1000):
        calls = {"torch": lambda: torch_topk(q, c, k, chunk=65536), "hbfast": lambda: hbfast.topk(q, c, k)}
        if knn is not None:
            calls["faiss-gpu"] = lambda: knn(q, c, k)
        calls["matmul"] = lambda: q @ c.T
        results, outs = {}, {}
        for name, fn in calls.items():
            t, m, out = measure(fn, args.repeats)
            results[name], outs[name] = (t, m), out
        ours, theirs = outs.get("hbfast"), outs.get("torch")
        if ours is not None and theirs is not None:  # the same scores (ids may differ only at ties)
            torch.testing.assert_close(ours[0], theirs[0], atol=1e-3, rtol=1e-5)
        print_table(f"topk nq={nq} N={n} D={d} k={k} ({torch.cuda.get_device_name()}; best of {args.repeats})",
                    results, memory_comparable=("faiss-gpu",))


# ---- loss -----------------------------------------------------------------------------------------

def naive_loss(q, p, scale):
    logits = scale * q @ p.t()  # [B, B]
    labels = torch.arange(q.shape[0], device=q.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def open_clip_loss(q, p, scale):
    return open_clip_loss_module().ClipLoss()(q, p, torch.tensor(scale, device=q.device))


def hbfast_loss(q, p, scale):
    return hbfast.contrastive_loss(q, p, temperature=1.0 / scale)


def check_loss():
    """Every loss against the float64 reference, on the GPU, before anything is timed."""
    g = torch.Generator().manual_seed(0)
    q64, p64 = (F.normalize(torch.randn(300, 64, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    ref = hbfast.reference.contrastive_loss(q64, p64, temperature=TEMPERATURE)
    for name, fn in loss_impls().items():
        q, p = (t.float().cuda().requires_grad_() for t in (q64, p64))
        loss = fn(q, p, 1.0 / TEMPERATURE)
        err = abs(loss.item() - ref.item()) / abs(ref.item())
        print(f"correctness: {name:10s} loss rel err vs float64 reference {err:.1e}")
        if err > 1e-4:
            raise SystemExit(f"{name} disagrees with the reference")


def loss_impls():
    impls = {"naive": naive_loss, "hbfast": hbfast_loss}
    if open_clip_loss_module() is not None:
        impls["open_clip"] = open_clip_loss
    return impls


def bench_loss(args):
    check_loss()
    for size in args.sizes.split(","):
        B, D = map(int, size.lower().split("x"))
        g = torch.Generator().manual_seed(0)
        q = F.normalize(torch.randn(B, D, generator=g), dim=1).cuda().requires_grad_()
        p = F.normalize(torch.randn(B, D, generator=g), dim=1).cuda().requires_grad_()
        results = {}
        for name, fn in loss_impls().items():
            def step():
                q.grad = p.grad = None
                fn(q, p, 1.0 / TEMPERATURE).backward()
            t, m, _ = measure(step, args.repeats)
            results[name] = (t, m)
        print_table(f"loss B={B} D={D} fp32 symmetric forward+backward ({torch.cuda.get_device_name()}; "
                    f"best of {args.repeats})", results, memory_comparable=())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["topk", "loss"], action="append", help="sections to run")
    parser.add_argument("--topk-size", default="1000x1000000x768", help="nq x N x D")
    parser.add_argument("--sizes", default="16384x768,65536x256,131072x256", help="loss sizes, comma-separated BxD")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("compare_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    info = hbfast.build_info()
    if not info["cuda_available"]:
        raise SystemExit(f"hbfast cannot use the GPU: {info['cuda_unusable'] or 'built without CUDA kernels'}")
    print(f"hbfast {hbfast.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    for name in args.only or ["topk", "loss"]:
        {"topk": bench_topk, "loss": bench_loss}[name](args)


if __name__ == "__main__":
    main()
