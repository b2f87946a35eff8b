"""The CPU matrix product under hbfast's kernels: each kernel with torch's MKL and with OpenBLAS (both fused
with the epilogue in hbfast's threads) and with the product chosen by measurement (the default), against
faiss and the bare products, in one run, calls interleaved, best of N. Prints the issue's target ratios.

    python benchmarks/compare_gemm.py                      # everything (about 10 minutes on 2 cores)
    python benchmarks/compare_gemm.py --only topk --repeats 5
    python benchmarks/compare_gemm.py --only loss --sizes 4096x768

- topk, 1000 queries x 100,000 x 768, k = 10 and 1000: hbfast / faiss.knn (target <= 1.0).
- loss (symmetric InfoNCE, fwd + bwd, fp32): main's path (HBFAST_GEMM=mkl) / the default (target >= 1.3).
- relevant_ranks, 13,090 x 13,014 x 384, 11 relevant: hbfast / the best bare product `q @ c.T` (torch's or
  numpy's, a new output array, as the search table measures it; target <= 1.2), and / the same products
  into a preallocated buffer (a stricter floor).
"auto" is the default (each process measures both products on its first tiles / calls per shape class,
see hbfast.ops.gemm); warm-up calls before the timed ones finish that measurement.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import hbfast
from hbfast.ops import _C


def interleaved(calls: dict, repeats: int) -> dict:
    """Best seconds of each call, the calls taking turns (a slow moment of a loaded box hits all)."""
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def with_gemm(backend, fn):
    """fn run with HBFAST_GEMM=backend (None: unset, the measured choice)."""
    def run():
        old = os.environ.pop("HBFAST_GEMM", None)
        if backend is not None:
            os.environ["HBFAST_GEMM"] = backend
        try:
            return fn()
        finally:
            os.environ.pop("HBFAST_GEMM", None)
            if old is not None:
                os.environ["HBFAST_GEMM"] = old
    return run


def settle(fn, max_calls=10):
    """Calls fn (the default, measured choice) until this process has chosen a product for every
    shape class it met, so that the timed calls show the steady state. Returns the calls made."""
    for calls in range(1, max_calls + 1):
        with_gemm(None, fn)()
        if not hbfast.build_info()["gemm"]["measuring"]:
            return calls
    return max_calls


def openblas_product(a, b, out):
    """out = a @ b.T with hbfast's OpenBLAS over its threads (a bare product, nothing else)."""
    _C.sgemm_cpu(0, False, True, a.shape[0], b.shape[0], a.shape[1], 1.0, a.data_ptr(), a.shape[1], b.data_ptr(),
                 b.shape[1], 0.0, out.data_ptr(), out.shape[1])


def report(title, times, base, target=None, better="lower"):
    print(title)
    for name, t in times.items():
        mark = ""
        if target is not None and name == target[0]:
            ratio = t / times[base] if better == "lower" else times[base] / t
            ok = ratio <= target[1] if better == "lower" else ratio >= target[1]
            how = f"{name} / {base}" if better == "lower" else f"{base} / {name}"
            mark = f"  <- {how} = {ratio:.2f} (target {'<=' if better == 'lower' else '>='} {target[1]}: {'MET' if ok else 'NOT MET'})"
        print(f"  {name:<34} {t:8.3f} s   x{t / times[base]:5.2f}{mark}", flush=True)


def bench_topk(args):
    import faiss

    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(1000, 768, generator=g), torch.randn(100000, 768, generator=g)
    qn, cn = q.numpy(), c.numpy()
    tile = torch.empty(1000, 100000)
    for k in (10, 1000):
        ref = faiss.knn(qn, cn, k, metric=faiss.METRIC_INNER_PRODUCT)
        for backend in (None, "mkl", "openblas"):  # correctness first
            scores, ids = with_gemm(backend, lambda: hbfast.topk(q, c, k))()
            assert torch.allclose(scores, torch.from_numpy(ref[0]), atol=1e-3, rtol=0), backend
        settle(lambda: hbfast.topk(q, c, k))
        calls = {
            "faiss.knn": lambda: faiss.knn(qn, cn, k, metric=faiss.METRIC_INNER_PRODUCT),
            "hbfast.topk (auto)": with_gemm(None, lambda: hbfast.topk(q, c, k)),
            "hbfast.topk HBFAST_GEMM=mkl": with_gemm("mkl", lambda: hbfast.topk(q, c, k)),
            "hbfast.topk HBFAST_GEMM=openblas": with_gemm("openblas", lambda: hbfast.topk(q, c, k)),
            "bare torch product q @ c.T": lambda: torch.mm(q, c.T, out=tile),
            "bare OpenBLAS product": lambda: openblas_product(q, c, tile),
            # cosine normalises every corpus tile between fused tiles (not a target: the cost of that)
            "hbfast.topk metric=cosine": with_gemm(None, lambda: hbfast.topk(q, c, k, metric="cosine")),
        }
        times = interleaved(calls, args.repeats)
        report(f"topk 1000 x 100000 x 768, k = {k} (best of {args.repeats}, interleaved)", times, "faiss.knn",
               target=("hbfast.topk (auto)", 1.0))
    print(f"  choices: {hbfast.build_info()['gemm']['chosen']}")


def bench_loss(args):
    for size in args.sizes.split(","):
        B, D = (int(v) for v in size.split("x"))
        g = torch.Generator().manual_seed(0)
        q = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).requires_grad_()
        p = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).requires_grad_()
        S = torch.empty(B, B)
        gq, gk = torch.empty(B, D), torch.empty(B, D)

        def step():
            q.grad = p.grad = None
            hbfast.contrastive_loss(q, p).backward()
            return q.grad

        def floor():  # the three B x B x D products of any exact loss, into preallocated buffers
            qd, pd = q.detach(), p.detach()
            torch.mm(qd, pd.T, out=S)
            torch.mm(S, pd, out=gq)
            torch.mm(S.T, qd, out=gk)

        grads = {b: with_gemm(b, step)().clone() for b in (None, "mkl", "openblas")}
        for b, grad in grads.items():
            torch.testing.assert_close(grad, grads["mkl"], rtol=1e-4, atol=1e-7)
        print(f"  (the default measured both products over {settle(step)} more calls)")
        calls = {
            "main's path HBFAST_GEMM=mkl": with_gemm("mkl", step),
            "hbfast (auto)": with_gemm(None, step),
            "HBFAST_GEMM=openblas": with_gemm("openblas", step),
            "floor: 3 bare torch products": floor,
        }
        repeats = args.repeats if B <= 8192 else max(2, args.repeats // 2)
        times = interleaved(calls, repeats)
        report(f"loss fwd + bwd, B = {B}, D = {D} (best of {repeats}, interleaved)", times,
               "main's path HBFAST_GEMM=mkl", target=("hbfast (auto)", 1.3), better="higher")
    print(f"  choices: {hbfast.build_info()['gemm']['chosen']}")


def bench_ranks(args):
    g = torch.Generator().manual_seed(1)
    nq, n, d, r = 13090, 13014, 384, 11
    q = torch.nn.functional.normalize(torch.randn(nq, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    rel = torch.stack([torch.randperm(n, generator=g)[:r] for _ in range(nq)])
    ref = with_gemm("mkl", lambda: hbfast.relevant_ranks(q, c, rel))()
    for backend in (None, "openblas"):
        assert torch.equal(with_gemm(backend, lambda: hbfast.relevant_ranks(q, c, rel))(), ref), backend
    settle(lambda: hbfast.relevant_ranks(q, c, rel))
    out = torch.empty(nq, n)
    qn, cn = q.numpy(), c.numpy()
    calls = {
        "bare torch q @ c.T (new output)": lambda: q @ c.T,
        "bare numpy q @ c.T (new output)": lambda: qn @ cn.T,
        "bare torch product q @ c.T": lambda: torch.mm(q, c.T, out=out),
        "bare OpenBLAS product": lambda: openblas_product(q, c, out),
        "relevant_ranks (auto)": with_gemm(None, lambda: hbfast.relevant_ranks(q, c, rel)),
        "relevant_ranks HBFAST_GEMM=mkl": with_gemm("mkl", lambda: hbfast.relevant_ranks(q, c, rel)),
        "relevant_ranks HBFAST_GEMM=openblas": with_gemm("openblas", lambda: hbfast.relevant_ranks(q, c, rel)),
    }
    times = interleaved(calls, args.repeats)
    # The table's floor since the first kernel issue: the bare product as a user writes it (a new output
    # array), the faster of torch's and numpy's; and a stricter one, the product into a preallocated buffer.
    times["best bare product (new output)"] = min(times["bare torch q @ c.T (new output)"],
                                                  times["bare numpy q @ c.T (new output)"])
    times["best bare product (preallocated)"] = min(times["bare torch product q @ c.T"], times["bare OpenBLAS product"])
    title = f"relevant_ranks {nq} x {n} x {d}, {r} relevant (best of {args.repeats}, interleaved)"
    report(title, times, "best bare product (new output)", target=("relevant_ranks (auto)", 1.2))
    ratio = times["relevant_ranks (auto)"] / times["best bare product (preallocated)"]
    print(f"  relevant_ranks (auto) / best bare product (preallocated) = {ratio:.2f}")
    print(f"  choices: {hbfast.build_info()['gemm']['chosen']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["topk", "loss", "ranks"], action="append")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--sizes", default="4096x768,16384x512", help="loss sizes, comma-separated BxD")
    args = parser.parse_args(argv)
    info = hbfast.build_info()
    print(f"hbfast {info['version']}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"{info['threads']} hbfast threads, {info['gemm']['openblas']}, HBFAST_GEMM={info['gemm']['override']}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for name in args.only or ["topk", "ranks", "loss"]:
        {"topk": bench_topk, "loss": bench_loss, "ranks": bench_ranks}[name](args)


if __name__ == "__main__":
    main()
