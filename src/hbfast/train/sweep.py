"""``hbfast sweep``: one hybrid run per alpha (same seed and budget), each evaluated; ``OUT/sweep.json``
and ``OUT/sweep.png`` (every metric against alpha)."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

from ..options import from_args, option
from .config import TextOptions, TrainConfig
from .demo import METRICS, evaluate_model


@dataclasses.dataclass
class SweepOptions:
    """What every sweep (text and image-text) adds to its task's training options."""

    alpha: str = option("0,0.25,0.5,0.75,1", "comma-separated alphas (distinct, in [0, 1]), one run each")


@dataclasses.dataclass
class TextSweepOptions:
    eval_data: str = option("xquad-r", "LAReQA dataset to evaluate each run on")
    paragraphs: int | None = option(None, "evaluate on the first N paragraphs per language (default: all)")


def parse_alphas(text: str) -> list[float]:
    """The alphas of ``--alpha "0,0.5,1"`` (text and image-text sweeps): numbers in [0, 1], each once
    (a repeated value would train the same run twice and overwrite its directory)."""
    try:
        alphas = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--alpha must be comma-separated numbers, got {text!r}") from None
    if not alphas:
        raise ValueError(f"--alpha needs distinct values in [0, 1], got {text!r}")
    outside = [a for a in alphas if not (math.isfinite(a) and 0.0 <= a <= 1.0)]
    repeated = sorted({a for a in alphas if alphas.count(a) > 1})
    if outside or repeated:
        what = f"outside [0, 1]: {outside}" if outside else f"repeated: {repeated}"
        raise ValueError(f"--alpha needs distinct values in [0, 1], got {text!r} ({what})")
    return alphas


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [r["alpha"] for r in runs]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.2))
    for ax, metric in zip(axes, METRICS):
        ax.plot(alphas, [r[metric] for r in runs], marker="o")
        ax.set_xlabel("alpha (share of X-X batches)")
        ax.set_title(metric if metric != "rank_distance" else "rank distance (lower: less bias)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mAP")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_sweep(args) -> dict:
    from ..data import load_lareqa
    from . import train

    alphas = parse_alphas(args.alpha)
    if args.batch_type != "hybrid":
        raise ValueError("hbfast sweep varies alpha of hybrid batches; leave --batch-type at hybrid")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_lareqa(args.eval_data)
    if args.paragraphs is not None:
        ds = ds.head(args.paragraphs)
    runs = []
    started = time.perf_counter()
    for k, alpha in enumerate(alphas):
        print(f"[{k + 1}/{len(alphas)}] alpha {alpha}", file=sys.stderr, flush=True)
        run_dir = out / f"alpha-{alpha:g}"
        shutil.rmtree(run_dir, ignore_errors=True)
        config = from_args(TrainConfig, args, alpha=alpha, out=str(run_dir), resume=False)
        summary = train(config, **dataclasses.asdict(from_args(TextOptions, args)))
        scores = evaluate_model(summary["final"], ds, progress=not args.no_progress, device=args.device)
        runs.append({"alpha": alpha, **{m: scores[m] for m in METRICS}, "train_seconds": summary["seconds"],
                     "eval_seconds": scores["eval_seconds"], "last_loss": summary["last_loss"],
                     "model": str(summary["final"])})
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "alpha")}
    result = {"runs": runs, "settings": settings, "eval": repr(ds), "seconds": time.perf_counter() - started}
    (out / "sweep.json").write_text(json.dumps(result, indent=2, default=str))
    plot(runs, out / "sweep.png", f"{args.steps} steps of {args.batch_size} pairs on {args.data}; {ds.name}")
    print(f"{'alpha':>6} " + " ".join(f"{m:>13}" for m in METRICS))
    for r in runs:
        print(f"{r['alpha']:6.2f} " + " ".join(f"{r[m]:13.3f}" for m in METRICS))
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
    return result
