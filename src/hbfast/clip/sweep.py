"""``hbfast sweep --task clip``: one image-text run per alpha (same seed and budget), each evaluated
by the XTD protocol, written to ``OUT/sweep.json`` with a plot of R@1 and mAP against alpha.

Exists for the paper's second question (how alpha moves image-text R@1 and mAP); with
``--data synthetic`` it runs on the demo's synthetic task, otherwise on a real caption table with
``--xtd-images`` for the evaluation.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from ..train.sweep import parse_alphas

METRICS = ("t2i_r1", "i2t_r1", "t2i_r10", "map")


def run_clip_sweep(args) -> dict:
    alphas = parse_alphas(args.alpha)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    if args.data == "synthetic":
        from . import synthetic
        from .demo import train_synthetic
        from .run import xtd_evaluator

        data = synthetic.make_training_data(out / "synthetic", 2000, seed=args.seed)
        evaluate = xtd_evaluator(synthetic.SyntheticXTD(out / "synthetic"))
        for a in alphas:
            runs[str(a)] = train_synthetic(data, evaluate, out / f"alpha-{a}", "hybrid", alpha=a, steps=args.steps,
                                           batch_size=args.batch_size, seed=args.seed,
                                           translation_weight=args.translation_weight, progress=not args.no_progress)
    else:
        from .run import train_clip

        if args.xtd_images is None:
            raise ValueError("sweep --task clip needs --xtd-images (the COCO images of XTD) to evaluate each run, "
                             "or --data synthetic")
        if args.text_model is None:
            raise ValueError("sweep --task clip needs --text-model")
        for a in alphas:
            run_args = copy.copy(args)
            run_args.batch_type, run_args.alpha, run_args.out, run_args.resume = "hybrid", a, str(out / f"alpha-{a}"), False
            summary = train_clip(run_args)
            runs[str(a)] = {**summary["evaluations"][-1], "seconds": summary["seconds"]}
    result = {"task": "clip", "alphas": alphas, "data": args.data, "runs": runs}
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    plot_sweep(result, out / "sweep.png")
    print(f"{'alpha':>6}" + "".join(f"{m:>9}" for m in METRICS))
    for a in alphas:
        print(f"{a:>6.2f}" + "".join(f"{runs[str(a)][m]:>9.3f}" for m in METRICS))
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
    return result


def plot_sweep(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = result["alphas"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in METRICS:
        ax.plot(alphas, [result["runs"][str(a)][m] for a in alphas], marker="o", label=m)
    ax.set_xlabel("alpha (probability of an X-X batch)")
    ax.set_ylabel("mean over languages")
    ax.set_title("hbfast sweep --task clip")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
