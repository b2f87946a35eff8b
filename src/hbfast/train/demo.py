"""``hbfast demo``: the paper's question answered on this machine, with no arguments and no network.

The packaged all-MiniLM-L6-v2 is trained on the bundled MLQA-R with X-X, X-Y and hybrid (alpha 0.5)
batches (same seed, same step budget), and each model, beside the untrained one, is evaluated on
the bundled XQuAD-R (another dataset; el, ru, th, tr are not in MLQA-R). Writes
``OUT/results.json``, ``OUT/results.png`` and each run's model and training log.

Budget (docs/demo.md, benchmarks/RESULTS.md "First run"): the training is ~80% of the time, so the
demo trains 80 steps of 32 pairs at max length 64 per model (bf16 autocast where the CPU has
AVX512-BF16 / AMX) and evaluates on the first 48 paragraphs per XQuAD-R language: 5 min 39 s
measured on the project's quiet 2-core Intel (AMX), about 10-12 min estimated on a 2-core AMD EPYC.
``--quick`` (24 steps, 12 paragraphs: 2 minutes there) already lifts cross and multi above the
untrained model.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .config import TrainConfig

# Chosen by measurement (docs/demo.md): about 10 minutes, and 2-3 minutes for --quick, on 2 CPU cores.
DEMO = {"steps": 80, "batch_size": 32, "max_length": 64, "lr": 1e-4, "paragraphs": 48}
QUICK = {"steps": 24, "batch_size": 32, "max_length": 64, "lr": 1e-4, "paragraphs": 12}
RUNS = (("X-X", "X-X", 1.0), ("X-Y", "X-Y", 0.0), ("hybrid", "hybrid", 0.5))
METRICS = ("mono", "cross", "multi", "rank_distance")


def evaluate_model(model, ds, *, progress: bool, device=None) -> dict:
    from .. import encoders
    from ..eval import evaluate_lareqa

    query, passage = encoders.load_text_encoders(model, backend="sentence-transformers", batch_size=64,
                                                 device=device, progress=False)
    start = time.perf_counter()
    result = evaluate_lareqa(ds, query, passage, model=str(model), progress=progress)
    return {"mono": result.mono_mean, "cross": result.cross_mean, "multi": result.multi,
            "rank_distance": result.rank_distance, "eval_seconds": time.perf_counter() - start,
            "mono_by_language": result.mono, "multi_by_language": result.multi_by_language}


def table(runs: dict) -> str:
    lines = [f"{'run':<10} {'mono':>7} {'cross':>7} {'multi':>7} {'rank dist':>10} {'train s':>8} {'eval s':>7}"]
    for name, r in runs.items():
        lines.append(f"{name:<10} {r['mono']:7.3f} {r['cross']:7.3f} {r['multi']:7.3f} {r['rank_distance']:10.1f} "
                     f"{r.get('train_seconds', 0.0):8.0f} {r['eval_seconds']:7.0f}")
    return "\n".join(lines)


def plot(runs: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1.3]})
    x = np.arange(3)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [runs[name][m] for m in ("mono", "cross", "multi")]
        bars = left.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=name)
        left.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    left.set_xticks(x, ["mono", "cross", "multi"])
    left.set_ylabel("mAP")
    left.set_ylim(0, min(1.0, 1.2 * max(runs[n][m] for n in names for m in ("mono", "cross", "multi"))))
    left.legend(fontsize=8, ncol=len(names))
    right.bar(names, [runs[n]["rank_distance"] for n in names], color=[f"C{k}" for k in range(len(names))])
    right.set_title("mean max rank distance (lower: less bias)", fontsize=9)
    right.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(args) -> dict:
    from ..data import load_lareqa
    from . import train

    settings = dict(QUICK if args.quick else DEMO)
    if args.steps is not None:
        settings["steps"] = args.steps
    if args.paragraphs is not None:
        settings["paragraphs"] = args.paragraphs
    if args.full:
        settings["paragraphs"] = None
    progress = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_lareqa("xquad-r")
    if settings["paragraphs"] is not None:
        ds = ds.head(settings["paragraphs"])
    common = {"data": "mlqa-r", "seed": 0, **settings, "eval": f"{ds!r}"}
    print(f"hbfast demo: all-MiniLM-L6-v2 trained on MLQA-R ({settings['steps']} steps of {settings['batch_size']} "
          f"pairs, max length {settings['max_length']}) with X-X, X-Y and hybrid batches; evaluated on XQuAD-R "
          f"({'all' if settings['paragraphs'] is None else 'first %d' % settings['paragraphs']} paragraphs per language)",
          file=sys.stderr)
    stages = 1 + 2 * len(RUNS)
    started = time.perf_counter()

    def stage(k: int, what: str) -> None:
        done = time.perf_counter() - started
        eta = "" if k <= 2 else f", about {done / (k - 1) * (stages - k + 1) / 60:.1f} min left"
        print(f"[{k}/{stages}] {what} ({done / 60:.1f} min so far{eta})", file=sys.stderr, flush=True)

    runs = {}
    stage(1, "evaluating the untrained model")
    runs["zero-shot"] = {**evaluate_model(None, ds, progress=progress, device=args.device), "settings": {"trained": False}}
    for k, (name, batch_type, alpha) in enumerate(RUNS):
        stage(2 + 2 * k, f"training {name}")
        config = TrainConfig(out=str(out / name), batch_type=batch_type, alpha=alpha, batch_size=settings["batch_size"],
                             steps=settings["steps"], lr=settings["lr"], seed=0, progress=progress, device=args.device)
        if (out / name).exists():
            import shutil

            shutil.rmtree(out / name)  # a demo always starts afresh
        summary = train(config, data="mlqa-r", max_length=settings["max_length"])
        stage(3 + 2 * k, f"evaluating {name}")
        runs[name] = {**evaluate_model(summary["final"], ds, progress=progress, device=args.device),
                      "train_seconds": summary["seconds"], "last_loss": summary["last_loss"],
                      "settings": {"batch_type": batch_type, "alpha": alpha, **settings, "model": str(summary["final"])}}
    results = {"runs": runs, "settings": common, "seconds": time.perf_counter() - started}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plot(runs, out / "results.png", f"all-MiniLM-L6-v2 on XQuAD-R after {settings['steps']} steps on MLQA-R")
    print(table(runs))
    print(f"{time.perf_counter() - started:.0f} s in all; wrote {out / 'results.json'} and {out / 'results.png'}")
    return results
