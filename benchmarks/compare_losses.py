"""hbfast.contrastive_loss against the losses people use today, measured in one run.

Checks correctness first (every baseline against the float64 reference on small inputs), then
times forward + backward of the symmetric loss (wall clock, and the process's CPU time, which
is steadier on a shared machine; speedups are naive / impl) and measures peak extra memory for each
configuration in a fresh subprocess (peak RSS from resource.getrusage minus the RSS once the
inputs exist), and prints ratios against the naive PyTorch loss.

Rows: the floor (the three bare B x B x D products, no loss: what an exact loss cannot go
below), naive (full logits, F.cross_entropy both ways), a plain-PyTorch tiled loss (row
blocks, online log-sum-exp, recomputed in backward: 4 block products), sentence-transformers'
MultipleNegativesRankingLoss math (both directions) and open_clip's ClipLoss (skipped when
open_clip is not installed; it is not a dependency: `pip install --no-deps open_clip_torch`).

    python benchmarks/compare_losses.py                      # B=4096 D=768 and B=16384 D=512
    python benchmarks/compare_losses.py --sizes 65536x256 --impls hbfast --repeats 1
    python benchmarks/compare_losses.py --device cuda         # on a GPU (benchmarks/compare_gpu.py)
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from baselines import open_clip_loss_module

TEMPERATURE = 0.05
IMPLS = ("floor", "naive", "tiled", "st_mnrl", "open_clip", "hbfast")


# ---- baselines ------------------------------------------------------------------------------------

def naive_loss(q, p, scale):
    logits = scale * q @ p.t()  # [B, B]
    labels = torch.arange(q.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


class _TiledLoss(torch.autograd.Function):
    """Symmetric loss in plain PyTorch over row blocks; backward recomputes the blocks."""

    @staticmethod
    def forward(ctx, q, p, scale, rows):
        B = q.shape[0]
        row_lse = torch.empty(B)
        col_lse = torch.full((B,), -float("inf"))
        for lo in range(0, B, rows):
            s = scale * (q[lo : lo + rows] @ p.t())  # [rows, B]
            row_lse[lo : lo + rows] = torch.logsumexp(s, 1)
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(s, 0))
        pos = scale * (q * p).sum(1)
        ctx.save_for_backward(q, p, row_lse, col_lse)
        ctx.scale, ctx.rows = scale, rows
        return 0.5 * ((row_lse - pos).mean() + (col_lse - pos).mean())

    @staticmethod
    def backward(ctx, grad):
        q, p, row_lse, col_lse = ctx.saved_tensors
        B, scale, rows = q.shape[0], ctx.scale, ctx.rows
        gq, gp = torch.zeros_like(q), torch.zeros_like(p)
        w = grad / (2 * B)
        for lo in range(0, B, rows):
            hi = min(lo + rows, B)
            s = scale * (q[lo:hi] @ p.t())
            g = (torch.exp(s - row_lse[lo:hi, None]) + torch.exp(s - col_lse[None, :])) * w
            g[torch.arange(hi - lo), torch.arange(lo, hi)] -= 2 * w
            gq[lo:hi] = scale * (g @ p)
            gp += scale * (g.t() @ q[lo:hi])
        return gq, gp, None, None


class _ThreeProducts(torch.autograd.Function):
    """No loss at all: the three B x B x D products any exact loss needs (S = q @ p.T forward,
    S @ p and S.T @ q backward), the floor the fused loss is measured against."""

    @staticmethod
    def forward(ctx, q, p):
        s = q @ p.t()
        ctx.save_for_backward(q, p, s)
        return s[0, 0]

    @staticmethod
    def backward(ctx, grad):
        q, p, s = ctx.saved_tensors
        return s @ p, s.t() @ q


def floor_products(q, p, scale):
    return _ThreeProducts.apply(q, p)


def tiled_loss(q, p, scale):
    return _TiledLoss.apply(q, p, scale, max(64, (64 << 20) // (4 * q.shape[0])))


def st_mnrl_loss(q, p, scale):
    """sentence-transformers' MultipleNegativesRankingLoss math, both directions (its cos_sim
    normalises, so it is compared on unit-norm inputs)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(None, scale=scale, directions=("query_to_doc", "doc_to_query"),
                                        partition_mode="per_direction")
    return loss.compute_loss_from_embeddings([q, p], None)


@functools.cache  # loaded once, not on every timed call
def open_clip_loss(q, p, scale):
    return open_clip_loss_module().ClipLoss()(q, p, torch.tensor(scale))


def hbfast_loss(q, p, scale):
    import hbfast

    return hbfast.contrastive_loss(q, p, temperature=1.0 / scale)


LOSSES = {"floor": floor_products, "naive": naive_loss, "tiled": tiled_loss, "st_mnrl": st_mnrl_loss,
          "open_clip": open_clip_loss,
          "hbfast": hbfast_loss}


def available(impl: str) -> bool:
    if impl == "open_clip":
        return open_clip_loss_module() is not None
    if impl == "st_mnrl":
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            return False
    return True


# ---- correctness ----------------------------------------------------------------------------------

def check_correctness() -> None:
    import hbfast

    torch.manual_seed(0)
    B, D, scale = 300, 64, 1.0 / TEMPERATURE
    q64 = F.normalize(torch.randn(B, D, dtype=torch.float64), dim=1).requires_grad_()
    p64 = F.normalize(torch.randn(B, D, dtype=torch.float64), dim=1).requires_grad_()
    ref = hbfast.reference.contrastive_loss(q64, p64, temperature=TEMPERATURE)
    ref_g = torch.autograd.grad(ref, [q64, p64])
    # cos_sim-based losses differentiate through the normalisation too
    ref_g_normalized = torch.autograd.grad(
        hbfast.reference.contrastive_loss(q64, p64, temperature=TEMPERATURE, normalize=True), [q64, p64])
    for impl in IMPLS:
        if impl == "floor":
            continue
        if not available(impl):
            print(f"correctness: {impl:9s} skipped (not installed)")
            continue
        q, p = q64.detach().float().requires_grad_(), p64.detach().float().requires_grad_()
        loss = LOSSES[impl](q, p, scale)
        g = torch.autograd.grad(loss, [q, p])
        err = max(abs(loss.item() - ref.item()) / abs(ref.item()),
                  *[((a.double() - b).abs().max() / b.abs().max()).item()
                    for a, b in zip(g, ref_g_normalized if impl == "st_mnrl" else ref_g)])
        status = "ok" if err < 1e-4 else "MISMATCH"
        print(f"correctness: {impl:9s} max rel err vs float64 reference {err:.1e} {status}")
        if err >= 1e-4:
            raise SystemExit(f"{impl} disagrees with the reference")


# ---- one measured configuration (run in a fresh process) ------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(impl: str, B: int, D: int, repeats: int) -> dict:
    torch.manual_seed(0)
    q = F.normalize(torch.randn(B, D), dim=1).requires_grad_()
    p = F.normalize(torch.randn(B, D), dim=1).requires_grad_()
    fn = LOSSES[impl]
    warm = [torch.randn(8, D, requires_grad=True) for _ in range(2)]
    fn(*warm, 1.0 / TEMPERATURE).backward()  # imports and library start-up stay out of the figures
    base = _rss_mb()
    times, cpu_times = [], []
    for _ in range(repeats):
        q.grad = p.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        fn(q, p, 1.0 / TEMPERATURE).backward()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"impl": impl, "B": B, "D": D, "best_s": min(times), "times": times, "best_cpu_s": min(cpu_times),
            "peak_extra_mb": peak - base}


def run_child(impl: str, B: int, D: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, str(B), str(D), str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"impl": impl, "B": B, "D": D, "error": (out.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4096x768,16384x512", help="comma-separated BxD")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: naive, open_clip and hbfast on the GPU (benchmarks/compare_gpu.py; --sizes default "
                         "there: 16384x768,65536x256,131072x256)")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import compare_gpu

        sizes = [] if args.sizes == ap.get_default("sizes") else ["--sizes", args.sizes]
        return compare_gpu.main(["--only", "loss", "--repeats", str(args.repeats)] + sizes)
    if args.child:
        impl, B, D, repeats = args.child
        print(json.dumps(child(impl, int(B), int(D), int(repeats))))
        return
    if not args.skip_check:
        check_correctness()
    from tqdm import tqdm

    impls = [i for i in args.impls.split(",") if i]
    for size in args.sizes.split(","):
        B, D = map(int, size.lower().split("x"))
        results = {}
        for impl in tqdm(impls, desc=f"B={B} D={D}", leave=False):
            if not available(impl):
                results[impl] = {"error": "not installed (skipped)"}
                continue
            results[impl] = run_child(impl, B, D, args.repeats)
        base, floor = results.get("naive", {}), results.get("floor", {})
        print(f"\nB={B} D={D} (fp32, symmetric, forward+backward, best of {args.repeats}; "
              f"torch threads={torch.get_num_threads()})")
        print(f"{'impl':10s} {'time s':>8s} {'speedup':>8s} {'cpu s':>8s} {'cpu ratio':>9s} {'peak extra MiB':>15s} "
              f"{'mem ratio':>9s} {'x floor':>8s}")
        for impl, r in results.items():
            if "error" in r:
                print(f"{impl:10s} {r['error']}")
                continue
            speed = base["best_s"] / r["best_s"] if "best_s" in base else float("nan")
            mem = r["peak_extra_mb"] / base["peak_extra_mb"] if "peak_extra_mb" in base else float("nan")
            cpu = base["best_cpu_s"] / r["best_cpu_s"] if "best_cpu_s" in base else float("nan")
            over_floor = r["best_s"] / floor["best_s"] if "best_s" in floor else float("nan")
            print(f"{impl:10s} {r['best_s']:8.3f} {speed:7.2f}x {r['best_cpu_s']:8.3f} {cpu:8.2f}x "
                  f"{r['peak_extra_mb']:15.0f} {mem:9.3f} {over_floor:7.2f}x")


if __name__ == "__main__":
    main()
