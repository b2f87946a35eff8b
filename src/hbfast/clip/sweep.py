"""``hbfast sweep --task clip``: one image-text run per alpha (same seed and budget), each evaluated
by the XTD protocol, written to ``OUT/sweep.json`` with a plot of R@1 and mAP against alpha.

Exists for the paper's second question (how alpha moves image-text R@1 and mAP); with
``--data synthetic`` it runs on the demo's synthetic task, otherwise on a real caption table with
``--xtd-images`` for the evaluation.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

from ..options import option
from ..train.sweep import parse_alphas

METRICS = ("t2i_r1", "i2t_r1", "map", "i2t_map")


@dataclasses.dataclass
class ClipSweepOptions:
    """What ``hbfast sweep --task clip`` adds to train-clip's options."""

    seeds: int = option(3, "offline study (no --data, or --data synthetic): seeds per alpha")


def study_budget(args) -> dict:
    """The offline study's budget (:data:`hbfast.clip.study.DEFAULT`, the demo's), with ``--steps`` /
    ``--batch-size`` when they differ from the trainer's defaults, and ``--seeds``."""
    from ..train.config import TrainConfig
    from .study import DEFAULT

    budget = dict(DEFAULT, seeds=int(args.seeds))
    if args.steps != TrainConfig.steps:
        budget["steps"] = int(args.steps)
    if args.batch_size != TrainConfig.batch_size:
        budget["batch_size"] = int(args.batch_size)
    if budget["seeds"] < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    return budget


def run_clip_sweep(args) -> dict:
    alphas = parse_alphas(args.alpha)
    out = Path(args.out)
    runs = {}
    # Without --data (or with --data synthetic) the sweep runs the offline study of demo --clip.
    if args.data in (None, "synthetic"):
        from . import study, synthetic

        budget = study_budget(args)
        setup = study.Study(out, budget, progress=not args.no_progress)
        seeds = [args.seed + k for k in range(budget["seeds"])]
        start = study.timing()
        for a in alphas:
            evaluations = [setup.train(out / f"alpha-{a}-seed{s}", "hybrid", alpha=a, seed=s) for s in seeds]
            runs[str(a)] = study.aggregate(evaluations, synthetic.HELD_OUT,
                                           {"seeds": seeds, "seconds": [e["seconds"] for e in evaluations],
                                            "settings": {k: v for k, v in evaluations[0]["settings"].items()
                                                         if k != "seed"}})
            partial = {"task": "clip", "alphas": [float(x) for x in runs], "runs": runs, "partial": True}
            (out / "sweep.json").write_text(json.dumps(partial, indent=1))  # kept if the sweep is stopped
        end = study.timing()
        extra = {"data": setup.describe(), "chance": setup.chance,
                 "seconds": end["wall_s"] - start["wall_s"], "cpu_seconds": end["cpu_s"] - start["cpu_s"],
                 "load_avg": {"start": start["load_avg"], "end": end["load_avg"]}, "cpus": end["cpus"]}
    else:
        from .run import train_clip

        if args.xtd_images is None:
            raise ValueError("sweep --task clip needs --xtd-images (the COCO images of XTD) to evaluate each run, "
                             "or --data synthetic")
        if args.text_model is None:
            raise ValueError("sweep --task clip needs --text-model")
        out.mkdir(parents=True, exist_ok=True)
        for a in alphas:
            run_args = copy.copy(args)
            run_args.batch_type, run_args.alpha, run_args.out, run_args.resume = "hybrid", a, str(out / f"alpha-{a}"), False
            summary = train_clip(run_args)
            runs[str(a)] = {**summary["evaluations"][-1], "seconds": summary["seconds"]}
        extra = {"data": args.data}
    result = {"task": "clip", "alphas": alphas, "runs": runs, **extra}
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    plot_sweep(result, out / "sweep.png")
    print(f"{'alpha':>6}" + "".join(f"{m:>16}" for m in METRICS))
    for a in alphas:
        run = runs[str(a)]
        cells = [f"{run[m]:.3f}" + (f"±{run['std'][m]:.3f}" if "std" in run else "") for m in METRICS]
        print(f"{a:>6.2f}" + "".join(f"{c:>16}" for c in cells))
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
    return result


def plot_sweep(result: dict, path) -> None:
    """Each metric against alpha: one panel per language group of the offline study (mean ± std over
    seeds), or the mean over languages of a real run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = result["alphas"]
    runs = [result["runs"][str(a)] for a in alphas]
    groups = [g for g in ("train_languages", "held_out") if g in runs[0]] or [None]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for m in METRICS:
            if group is None:
                ax.plot(alphas, [r[m] for r in runs], marker="o", label=m)
            else:
                ax.errorbar(alphas, [r[group][m]["mean"] for r in runs], yerr=[r[group][m]["std"] for r in runs],
                            marker="o", capsize=3, label=m)
        ax.set_xlabel("alpha (probability of an X-X batch)")
        ax.set_title({None: "mean over languages", "train_languages": "training languages",
                      "held_out": "held-out languages"}[group])
    seeds = len(runs[0].get("seeds", [0]))
    axes[0][0].set_ylabel("mean over languages" + (f" (± std, {seeds} seeds)" if seeds > 1 else ""))
    axes[0][0].legend(fontsize=8)
    fig.suptitle("hbfast sweep --task clip")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
