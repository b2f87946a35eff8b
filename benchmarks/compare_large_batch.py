"""Large effective batches, in one run: hbfast's cached sentence-transformers drop-ins against the
library's cached losses, and hbfast's SigLIP against open_clip's and a chunked SigLIP.

    python benchmarks/compare_large_batch.py                     # B = 4096 and 65536 (cached), 16384 and 65536 (SigLIP)
    python benchmarks/compare_large_batch.py --only cached --sizes 4096
    python benchmarks/compare_large_batch.py --quick             # small sizes, a smoke test

- cached: one training step (forward + backward through the encoder) of
  ``CachedMultipleNegativesRankingLoss`` (cos_sim, scale 20, (anchor, positive) columns,
  ``mini_batch_size`` 1024 for both) on a tiny randomly initialised BERT (1 layer, hidden 64, a
  word vocabulary, sequences of 4-9 words) built offline here: sentence-transformers 6.3's own class
  against hbfast's drop-in (default ``memory_budget``, and ``memory_budget=0``: nothing kept for the
  backward). The encoder's share is the same for both; the loss is the difference.
- siglip: forward + backward of the SigLIP loss on random unit features [B, D] (scale 10, bias
  -10): hbfast.integrations.open_clip.SigLipLoss against open_clip_torch 3.3.0's SigLipLoss (whole
  B x B logits) and against a chunked SigLIP, the loss over ``--chunk`` image rows at a time with
  plain autograd, as open_clip's ``SigLipLoss(chunk_size=...)`` (merged after 3.3.0, the newest
  release on PyPI, so written here) computes it. Baselines whose B x B activations cannot fit in
  half the memory free at the start are run forward-only under ``torch.no_grad()`` (said so), beside
  hbfast's forward-only figure.
Correctness first (the cached drop-in's value and gradients against the library's on a small batch,
SigLIP's value against open_clip's). Each configuration runs in a fresh subprocess, after a warm-up (and, for hbfast, a forward at the full
size, so that the once-per-machine choice of the kernel's matrix product for that shape is not in
the figures): time = best of --repeats steps (wall clock, CPU
time beside it), peak extra memory = peak RSS (VmHWM, reset just before) minus the RSS before the
steps (Linux). Ratios: baseline time / hbfast time, hbfast memory / baseline memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from baselines import time_and_peak
import torch.nn.functional as F

CACHED_SIZES, SIGLIP_SIZES = "4096,65536", "16384,65536"
MINI_BATCH, SIGLIP_DIM, SCALE, BIAS = 1024, 128, 10.0, -10.0
WORDS = [f"w{i}" for i in range(200)]


# ---- cached sentence-transformers losses ------------------------------------------------------------

def tiny_model(root: Path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    if not (root / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
        torch.manual_seed(0)
        config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=16)
        BertModel(config).save_pretrained(root)
        BertTokenizer(str(root / "vocab.txt")).save_pretrained(root)
    torch.manual_seed(0)
    model = SentenceTransformer(modules=[Transformer(str(root)), Pooling(64, "mean")], device="cpu")
    model.train()
    return model


def texts(B: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 10, (B,), generator=g).tolist()
    ids = torch.randint(0, len(WORDS), (B, 9), generator=g).tolist()
    return [" ".join(WORDS[w] for w in row[:n]) for row, n in zip(ids, lengths)]


def cached_step(impl: str, B: int, root: Path):
    from hbfast.integrations import sentence_transformers as hst

    model = tiny_model(root)
    if impl == "st":
        loss = hst.st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=MINI_BATCH)
    else:
        kw = {"memory_budget": 0} if impl == "hbfast_budget0" else {}
        loss = hst.CachedMultipleNegativesRankingLoss(model, mini_batch_size=MINI_BATCH, **kw)
    features = [model.preprocess(texts(B, seed)) for seed in (1, 2)]

    def step():
        model.zero_grad(set_to_none=True)
        loss(features, None).backward()

    return step


# ---- SigLIP ------------------------------------------------------------------------------------------

class ChunkedSigLip(torch.nn.Module):
    """The SigLIP loss of open_clip, image rows ``chunk`` at a time (one logits block alive in the
    forward; autograd keeps every block's activations for the backward)."""

    def __init__(self, chunk: int):
        super().__init__()
        self.chunk = chunk

    def forward(self, image, text, logit_scale, logit_bias):
        total = image.new_zeros(())
        for lo in range(0, image.shape[0], self.chunk):
            block = logit_scale * image[lo:lo + self.chunk] @ text.T + logit_bias  # [chunk, B]
            signs = -torch.ones_like(block)
            rows = torch.arange(block.shape[0])
            signs[rows, rows + lo] = 1.0  # this block's positives: pair (lo + r, lo + r)
            total = total - F.logsigmoid(signs * block).sum()
        return total / image.shape[0]


def siglip_step(impl: str, B: int, chunk: int, forward_only: bool):
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(B, SIGLIP_DIM, generator=g), dim=1)
    text = F.normalize(image + torch.randn(B, SIGLIP_DIM, generator=g), dim=1)
    leaves = [t.requires_grad_(not forward_only) for t in (image, text)]
    scale, bias = torch.tensor(SCALE, requires_grad=not forward_only), torch.tensor(BIAS, requires_grad=not forward_only)
    if impl == "hbfast":
        from hbfast.integrations.open_clip import SigLipLoss

        loss = SigLipLoss()
    elif impl == "open_clip":
        sys.path.insert(0, str(Path(__file__).parent))
        from baselines import open_clip_loss_module

        loss = open_clip_loss_module().SigLipLoss()
    else:
        loss = ChunkedSigLip(chunk)

    def step():
        if forward_only:
            with torch.no_grad():
                loss(*leaves, scale, bias)
            return
        for t in (*leaves, scale, bias):
            t.grad = None
        loss(*leaves, scale, bias).backward()

    return step


# ---- measurement --------------------------------------------------------------------------------------

def child(spec: dict) -> dict:
    if spec["kind"] == "cached":
        root = Path(spec["root"])
        cached_step(spec["impl"], 64, root)()  # imports, thread pools
        if spec["impl"] != "st":  # the kernel's product choice for this shape (once per machine) stays out
            from hbfast.integrations.sentence_transformers import MultipleNegativesRankingLoss

            with torch.no_grad():
                MultipleNegativesRankingLoss(None).compute_loss_from_embeddings([torch.randn(spec["B"], 64)] * 2)
        step = cached_step(spec["impl"], spec["B"], root)
    else:
        siglip_step(spec["impl"], 256, spec["chunk"], spec["forward_only"])()
        if spec["impl"] == "hbfast":  # as above
            siglip_step("hbfast", spec["B"], spec["chunk"], True)()
        step = siglip_step(spec["impl"], spec["B"], spec["chunk"], spec["forward_only"])
    return time_and_peak(step, spec["repeats"])


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"killed (exit {out.returncode})"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def available_mb() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return info["MemAvailable"] / 1024


def row(label: str, base: dict, ours: dict) -> None:
    for name, r in (("baseline", base), ("hbfast", ours)):
        if "error" in r:
            print(f"{label:>34} {name}: {r['error']}", flush=True)
            return
    print(f"{label:>34} {base['best_s']:8.2f} {ours['best_s']:8.2f} {base['best_s'] / ours['best_s']:7.2f}x "
          f"{base['cpu_s']:8.2f} {ours['cpu_s']:8.2f} {base['peak_mb']:8.0f} {ours['peak_mb']:8.0f} "
          f"{ours['peak_mb'] / max(base['peak_mb'], 1.0):8.3f}", flush=True)


HEADER = f"{'':>34} {'base s':>8} {'hbfast s':>8} {'speedup':>8} {'base cpu':>8} {'hb cpu':>8} " \
         f"{'base MiB':>8} {'hb MiB':>8} {'mem ratio':>8}"


def check_correctness(root: Path) -> None:
    """The drop-ins against the baselines on small inputs, before anything is timed."""
    from hbfast.integrations import sentence_transformers as hst

    feats = None
    results = []
    for cls in (hst.st_losses.CachedMultipleNegativesRankingLoss, hst.CachedMultipleNegativesRankingLoss):
        model = tiny_model(root)
        feats = feats or [model.preprocess(texts(96, seed)) for seed in (1, 2)]
        torch.manual_seed(3)
        value = cls(model, mini_batch_size=32)(feats, None)
        value.backward()
        results.append([value.detach()] + [p.grad for p in model.parameters() if p.grad is not None])
    value_err = float((results[0][0] - results[1][0]).abs() / results[0][0])
    grad_err = max(float((a - b).abs().max()) for a, b in zip(results[0][1:], results[1][1:])) / \
        max(float(b.abs().max()) for b in results[0][1:])  # relative to the largest gradient
    print(f"correctness: cached loss vs sentence-transformers': value {value_err:.1e}, gradients {grad_err:.1e} "
          "(relative)")
    if value_err > 1e-5 or grad_err > 1e-4:
        raise SystemExit("the cached drop-in disagrees with sentence-transformers'")
    sys.path.insert(0, str(Path(__file__).parent))
    from baselines import open_clip_loss_module

    from hbfast.integrations.open_clip import SigLipLoss

    image = F.normalize(torch.randn(300, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    text = F.normalize(image + torch.randn(300, 32, generator=torch.Generator().manual_seed(1)), dim=1)
    values = [loss(image, text, SCALE, BIAS) for loss in (open_clip_loss_module().SigLipLoss(), SigLipLoss(),
                                                          ChunkedSigLip(64))]
    errs = [abs(float(v - values[0])) / abs(float(values[0])) for v in values[1:]]
    print(f"correctness: SigLIP vs open_clip's: hbfast {errs[0]:.1e}, chunked {errs[1]:.1e} (relative)")
    if max(errs) > 1e-5:
        raise SystemExit("a SigLIP loss disagrees with open_clip's")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["cached", "siglip"])
    ap.add_argument("--sizes", help="comma-separated batch sizes (default: the issue's for each part)")
    ap.add_argument("--chunk", type=int, default=512, help="image rows per block of the chunked SigLIP")
    ap.add_argument("--repeats", type=int, default=2, help="steps per configuration below 65536 (65536: 1)")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, {available_mb():.0f} MiB available")
    with tempfile.TemporaryDirectory() as root:
        check_correctness(Path(root))

    def repeats(B):
        return 1 if B >= 65536 else args.repeats

    if args.only in (None, "cached"):
        sizes = args.sizes or ("512,2048" if args.quick else CACHED_SIZES)
        print(f"\nCachedMultipleNegativesRankingLoss, one training step, tiny BERT, mini_batch_size {MINI_BATCH} "
              "(base = sentence-transformers)")
        print(HEADER)
        with tempfile.TemporaryDirectory() as root:
            for B in map(int, sizes.split(",")):
                spec = {"kind": "cached", "B": B, "root": root, "repeats": repeats(B)}
                base = run_child({**spec, "impl": "st"})
                for impl, label in (("hbfast", "default memory_budget"), ("hbfast_budget0", "memory_budget=0")):
                    row(f"B={B}, {label}", base, run_child({**spec, "impl": impl}))
    if args.only in (None, "siglip"):
        sizes = args.sizes or ("2048,8192" if args.quick else SIGLIP_SIZES)
        print(f"\nSigLIP loss, forward + backward, D={SIGLIP_DIM} (base = open_clip 3.3.0 SigLipLoss, or the chunked "
              f"SigLIP with {args.chunk}-row blocks)")
        print(HEADER)
        for B in map(int, sizes.split(",")):
            spec = {"kind": "siglip", "B": B, "chunk": args.chunk, "repeats": repeats(B)}
            fits = 4.0 * B * B / 2**20 * 4 < available_mb() / 2  # about 4 B x B float32 activations
            if fits:
                ours = run_child({**spec, "impl": "hbfast", "forward_only": False})
                for impl in ("open_clip", "chunked"):
                    row(f"B={B}, vs {impl}", run_child({**spec, "impl": impl, "forward_only": False}), ours)
            else:
                print(f"{'B=' + str(B):>34} open_clip's and the chunked loss's B x B activations (~{16 * B * B / 2**30:.0f}"
                      " GiB) do not fit: forward only for the chunked loss; hbfast forward + backward below")
                ours = run_child({**spec, "impl": "hbfast", "forward_only": True})
                row(f"B={B}, forward only, vs chunked", run_child({**spec, "impl": "chunked", "forward_only": True}),
                    ours)
                r = run_child({**spec, "impl": "hbfast", "forward_only": False})
                print(f"{'B=' + str(B) + ', hbfast forward + backward':>34} {'':>8} "
                      + (r["error"] if "error" in r else f"{r['best_s']:8.2f} {'':>8} {'':>8} {r['cpu_s']:8.2f} "
                         f"{'':>8} {r['peak_mb']:8.0f}"), flush=True)


if __name__ == "__main__":
    main()
