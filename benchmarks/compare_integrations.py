"""The drop-ins against the libraries they replace, in one run: correctness first, then time and memory.

    python benchmarks/compare_integrations.py                    # the issue's sizes (about 15 minutes on 2 cores)
    python benchmarks/compare_integrations.py --quick            # small sizes, a smoke test
    python benchmarks/compare_integrations.py --only loss --sizes 4096x768

- loss: forward + backward of hbfast.integrations.sentence_transformers.MultipleNegativesRankingLoss
  against sentence-transformers' own MultipleNegativesRankingLoss (defaults: cos_sim, scale 20,
  (anchor, positive) columns), both called on precomputed float32 embeddings [B, D]
  (``compute_loss_from_embeddings``, what ``forward`` calls after the model), so the loss itself is
  measured; B = 1024, 4096, 16384 and D = 384, 768.
- search: hbfast.integrations.faiss.IndexFlatIP / IndexFlatL2 against faiss-cpu's, 1000 queries x
  100,000 x 768, k = 10 and 1000 (``index.search`` only; building the index is not timed).
Each configuration runs in a fresh subprocess: time = best of --repeats calls (wall clock; CPU time
beside it), peak extra memory = the call's peak RSS (VmHWM, reset just before) minus the RSS before
it (Linux). Ratios are baseline / drop-in for time and drop-in / baseline for memory.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import torch
from baselines import time_and_peak

SIZES = "1024x384,1024x768,4096x384,4096x768,16384x384,16384x768"
SEARCH = (1000, 100_000, 768)  # queries, corpus, dim


# ---- what is measured -------------------------------------------------------------------------------

def loss_call(impl: str, B: int, D: int):
    """A no-argument callable doing forward + backward of the loss on fixed embeddings."""
    g = torch.Generator().manual_seed(0)
    cols = [torch.randn(B, D, generator=g).requires_grad_() for _ in range(2)]
    if impl == "hbfast":
        from hbfast.integrations.sentence_transformers import MultipleNegativesRankingLoss
    else:
        from hbfast.integrations.sentence_transformers import st_losses

        MultipleNegativesRankingLoss = st_losses.MultipleNegativesRankingLoss
    loss = MultipleNegativesRankingLoss(None)

    def call():
        for c in cols:
            c.grad = None
        loss.compute_loss_from_embeddings(cols, None).backward()

    return call


def search_call(impl: str, metric: str, k: int, quick: bool):
    nq, n, d = (50, 5000, 64) if quick else SEARCH
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xq = rng.standard_normal((nq, d), dtype=np.float32)
    if impl == "hbfast":
        import hbfast.integrations.faiss as faiss
    else:
        import faiss
    index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    index.add(xb)
    return lambda: index.search(xq, k)


def child(spec: dict) -> dict:
    """Times one configuration and measures its peak extra memory (run in a fresh process)."""
    if spec["kind"] == "loss":
        fn = loss_call(spec["impl"], spec["B"], spec["D"])
        loss_call(spec["impl"], 8, spec["D"])()  # imports and thread pools stay out of the figures
    else:
        fn = search_call(spec["impl"], spec["metric"], spec["k"], spec["quick"])
        fn()  # warm-up at full size (the search allocates nothing that outlives it)
    return time_and_peak(fn, spec["repeats"])  # the largest of the calls' peaks


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"killed (exit {out.returncode})"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- correctness --------------------------------------------------------------------------------------

def check_correctness() -> None:
    import faiss

    import hbfast.integrations.faiss as hfaiss
    from hbfast.integrations import sentence_transformers as hst

    g = torch.Generator().manual_seed(1)
    for negatives in (0, 2):
        cols = [torch.randn(300, 64, generator=g) for _ in range(2 + negatives)]
        grads = []
        for loss in (hst.MultipleNegativesRankingLoss(None), hst.st_losses.MultipleNegativesRankingLoss(None)):
            leaves = [c.clone().requires_grad_() for c in cols]
            value = loss.compute_loss_from_embeddings(leaves, None)
            grads.append([value.detach()] + list(torch.autograd.grad(value, leaves)))
        err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(*grads))
        print(f"correctness: loss, {negatives} negative columns: max rel err vs sentence-transformers {err:.1e}")
        if err > 1e-5:
            raise SystemExit("the loss drop-in disagrees with sentence-transformers")
    rng = np.random.default_rng(2)
    xb, xq = rng.standard_normal((3000, 48), dtype=np.float32), rng.standard_normal((40, 48), dtype=np.float32)
    for name in ("IndexFlatIP", "IndexFlatL2"):
        ours, theirs = getattr(hfaiss, name)(48), getattr(faiss, name)(48)
        ours.add(xb)
        theirs.add(xb)
        (D, I), (Df, If) = ours.search(xq, 100), theirs.search(xq, 100)
        same = float((I == If).mean())
        print(f"correctness: {name}: max |D - faiss D| {np.abs(D - Df).max():.1e}, ids equal {same:.2%}")
        if not np.allclose(D, Df, rtol=1e-5, atol=1e-4) or same < 0.99:
            raise SystemExit(f"{name} disagrees with faiss")


# ---- the run ------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=SIZES, help="comma-separated BxD for the loss")
    ap.add_argument("--only", choices=["loss", "search"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    check_correctness()
    from tqdm import tqdm

    sizes = "256x64,1024x128" if args.quick and args.sizes == SIZES else args.sizes
    print(f"torch threads {torch.get_num_threads()}; drop-in = hbfast, base = the library it replaces")
    if args.only in (None, "loss"):
        print("\nsentence-transformers MultipleNegativesRankingLoss, forward + backward on embeddings "
              f"(cos_sim, scale 20, fp32, best of {args.repeats})")
        print(f"{'B x D':>12} {'st s':>8} {'hbfast s':>9} {'speedup':>8} {'st cpu s':>9} {'hb cpu s':>9} "
              f"{'st MiB':>8} {'hb MiB':>8} {'mem ratio':>9}")
        for size in tqdm(sizes.split(","), desc="loss", leave=False):
            B, D = map(int, size.lower().split("x"))
            r = {impl: run_child({"kind": "loss", "impl": impl, "B": B, "D": D, "repeats": args.repeats})
                 for impl in ("st", "hbfast")}
            _print_pair(f"{B} x {D}", r["st"], r["hbfast"])
    if args.only in (None, "search"):
        nq, n, d = (50, 5000, 64) if args.quick else SEARCH
        print(f"\nfaiss IndexFlat search, {nq} queries x {n} x {d} (best of {args.repeats})")
        print(f"{'index, k':>12} {'faiss s':>8} {'hbfast s':>9} {'speedup':>8} {'fa cpu s':>9} {'hb cpu s':>9} "
              f"{'fa MiB':>8} {'hb MiB':>8} {'mem ratio':>9}")
        for metric in ("ip", "l2"):
            for k in (10, 1000):
                r = {impl: run_child({"kind": "search", "impl": impl, "metric": metric, "k": k, "quick": args.quick,
                                      "repeats": args.repeats}) for impl in ("faiss", "hbfast")}
                _print_pair(f"{metric.upper()}, {k}", r["faiss"], r["hbfast"])


def _print_pair(label: str, base: dict, ours: dict) -> None:
    for name, r in (("baseline", base), ("hbfast", ours)):
        if "error" in r:
            print(f"{label:>12} {name}: {r['error']}", flush=True)
            return
    print(f"{label:>12} {base['best_s']:8.3f} {ours['best_s']:9.3f} {base['best_s'] / ours['best_s']:7.2f}x "
          f"{base['cpu_s']:9.3f} {ours['cpu_s']:9.3f} {base['peak_mb']:8.0f} {ours['peak_mb']:8.0f} "
          f"{ours['peak_mb'] / max(base['peak_mb'], 1.0):9.3f}", flush=True)


if __name__ == "__main__":
    main()
