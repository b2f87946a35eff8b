"""hbfast's open_clip drop-ins (hbfast.integrations.open_clip) against open_clip's own losses, in one run.

Checks correctness first (value and every gradient against open_clip on small inputs), then times
forward + backward of ClipLoss and SigLipLoss, hbfast's and open_clip's, at the batch sizes and
widths CLIP models train with, and measures peak extra memory, each configuration in a fresh
subprocess (peak RSS from resource.getrusage minus the RSS once the inputs exist). open_clip's
loss.py is loaded on its own (`pip install --no-deps open_clip_torch`; no torchvision needed).
open_clip's losses hold several B x B float32 matrices; they are skipped (and said so) at sizes
whose estimated need exceeds half the memory available when the run starts.

    python benchmarks/compare_open_clip.py                        # B = 1024, 4096, 16384 x D = 384, 768
    python benchmarks/compare_open_clip.py --sizes 4096x768 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from baselines import open_clip_loss_module

IMPLS = ("open_clip_clip", "hbfast_clip", "open_clip_siglip", "hbfast_siglip")
SIZES = "1024x384,1024x768,4096x384,4096x768,16384x384,16384x768"
SCALE, BIAS = 10.0, -10.0  # SigLIP's initial logit scale and bias
BASELINE_MATRICES = 8  # B x B float32 matrices open_clip's losses hold at their peak (estimate, for skipping)


def make_loss(impl: str):
    if impl.startswith("open_clip"):
        module = open_clip_loss_module()
    else:
        from hbfast.integrations import open_clip as module
    return module.SigLipLoss() if impl.endswith("siglip") else module.ClipLoss()


def inputs(B: int, D: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(B, D, generator=g, dtype=dtype), dim=1)
    text = F.normalize(torch.randn(B, D, generator=g, dtype=dtype) + image, dim=1)
    leaves = [image, text, torch.tensor(SCALE, dtype=dtype), torch.tensor(BIAS, dtype=dtype)]
    return [t.requires_grad_() for t in leaves]


def check_correctness() -> None:
    if open_clip_loss_module() is None:
        print("correctness: open_clip not installed, skipped")
        return
    for kind in ("clip", "siglip"):
        results = []
        for impl in (f"open_clip_{kind}", f"hbfast_{kind}"):
            leaves = inputs(300, 64, seed=1)
            loss = make_loss(impl)(*leaves)
            results.append([loss.detach()] + list(torch.autograd.grad(loss, leaves[:3])))
        err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*results))
        status = "ok" if err < 1e-5 else "MISMATCH"
        print(f"correctness: hbfast {kind:6s} vs open_clip, max rel err (loss, grads) {err:.1e} {status}")
        if err >= 1e-5:
            raise SystemExit(f"hbfast's {kind} loss disagrees with open_clip's")


# ---- one measured configuration (run in a fresh process) ------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(impl: str, B: int, D: int, repeats: int) -> dict:
    loss_fn = make_loss(impl)
    loss_fn(*inputs(16, D)).backward()  # imports and library start-up stay out of the figures
    leaves = inputs(B, D)
    base = _rss_mb()
    times = []
    for _ in range(repeats):
        for t in leaves:
            t.grad = None
        t0 = time.perf_counter()
        loss_fn(*leaves).backward()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"impl": impl, "B": B, "D": D, "best_s": min(times), "peak_extra_mb": peak - base}


def run_child(impl: str, B: int, D: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, str(B), str(D), str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 1024


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=SIZES, help="comma-separated BxD")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        impl, B, D, repeats = args.child
        print(json.dumps(child(impl, int(B), int(D), int(repeats))))
        return
    check_correctness()
    from tqdm import tqdm

    have_open_clip = open_clip_loss_module() is not None
    budget_mb = _available_mb() / 2
    print(f"\nforward + backward, fp32, best of {args.repeats}; torch threads={torch.get_num_threads()}; "
          f"open_clip skipped above an estimated {budget_mb / 1024:.1f} GiB")
    print(f"{'B':>6s} {'D':>4s} {'loss':7s} {'open_clip s':>11s} {'hbfast s':>9s} {'speedup':>8s} "
          f"{'open_clip MiB':>13s} {'hbfast MiB':>10s} {'mem ratio':>9s}")
    for size in tqdm(args.sizes.split(","), desc="sizes"):
        B, D = map(int, size.lower().split("x"))
        baseline_mb = BASELINE_MATRICES * B * B * 4 / 2**20
        for kind in ("clip", "siglip"):
            ours = run_child(f"hbfast_{kind}", B, D, args.repeats)
            if not have_open_clip:
                base = {"error": "open_clip not installed (skipped)"}
            elif baseline_mb > budget_mb:
                base = {"error": f"skipped: needs ~{baseline_mb / 1024:.1f} GiB"}
            else:
                base = run_child(f"open_clip_{kind}", B, D, args.repeats)
            fmt_s = lambda r: f"{r['best_s']:.3f}" if "best_s" in r else "-"
            fmt_mb = lambda r: f"{r['peak_extra_mb']:.0f}" if "peak_extra_mb" in r else "-"
            speed = base["best_s"] / ours["best_s"] if "best_s" in base and "best_s" in ours else None
            mem = (ours["peak_extra_mb"] / max(base["peak_extra_mb"], 1)
                   if "peak_extra_mb" in base and "peak_extra_mb" in ours else None)
            line = (f"{B:6d} {D:4d} {kind:7s} {fmt_s(base):>11s} {fmt_s(ours):>9s} "
                    f"{(f'{speed:.2f}x' if speed else '-'):>8s} {fmt_mb(base):>13s} {fmt_mb(ours):>10s} "
                    f"{(f'{mem:.3f}' if mem else '-'):>9s}")
            notes = [r["error"] for r in (base, ours) if "error" in r]
            tqdm.write(line + ("  " + "; ".join(notes) if notes else ""))


if __name__ == "__main__":
    main()
