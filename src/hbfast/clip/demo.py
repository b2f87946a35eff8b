"""``hbfast demo --clip``: X-X, X-Y and hybrid image-text training compared on the offline study.

Exists to answer, offline in about ten minutes on a CPU, whether the batch types differ for
image-text retrieval on the pattern of real multilingual CLIP (:mod:`hbfast.clip.study`: a frozen
image tower that carries the scene, the English-pretrained all-MiniLM-L6-v2 text tower fine-tuned on
captions in 6 languages, 2 more held out), each batch type from the same start over several seeds,
scored by the XTD protocol (:func:`hbfast.eval.evaluate_xtd`). Synthetic, not a real result.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import study, synthetic

RUNS = ("X-X", "X-Y", "hybrid")
SHOWN = ("t2i_r1", "i2t_r1", "t2i_r10", "map", "i2t_map")


def run_clip_demo(out="hbfast-demo-clip", *, quick: bool = False, steps: int | None = None, seed: int = 0,
                  settings: dict | None = None, progress: bool = True) -> dict:
    """Train and evaluate the untrained, X-X, X-Y and hybrid runs over the seeds ``seed, seed+1, ...``;
    write ``out/results.json`` and ``out/results.png``. ``settings`` overrides the budget
    (:data:`hbfast.clip.study.DEFAULT` or ``QUICK``)."""
    budget = {**(study.QUICK if quick else study.DEFAULT), **(settings or {})}
    if steps is not None:
        budget["steps"] = int(steps)
    out = Path(out)
    start = study.timing()
    setup = study.Study(out, budget, progress=progress)
    seeds = [seed + k for k in range(int(budget["seeds"]))]
    runs = {"untrained": study.aggregate([setup.untrained(s) for s in seeds], synthetic.HELD_OUT,
                                         {"seeds": seeds, "settings": {"steps": 0}})}
    for name in RUNS:
        evaluations = []
        for s in seeds:
            print(f"demo --clip: training {name}, seed {s} ({budget['steps']} steps of {budget['batch_size']})",
                  flush=True)
            evaluations.append(setup.train(out / "runs" / f"{name}-seed{s}", name, seed=s))
        runs[name] = study.aggregate(evaluations, synthetic.HELD_OUT,
                                     {"seeds": seeds, "seconds": [e["seconds"] for e in evaluations],
                                      "settings": {k: v for k, v in evaluations[0]["settings"].items() if k != "seed"}})
    end = study.timing()
    results = {"chance": setup.chance, "runs": runs, "data": setup.describe(),
               "seconds": end["wall_s"] - start["wall_s"], "cpu_seconds": end["cpu_s"] - start["cpu_s"],
               "load_avg": {"start": start["load_avg"], "end": end["load_avg"]}, "cpus": end["cpus"]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot_results(results, out / "results.png")
    print(summary_table(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.png'} ({results['seconds']:.0f} s wall, "
          f"{results['cpu_seconds']:.0f} s CPU, load {end['load_avg'][0]:.1f} on {end['cpus']} CPUs)")
    return results


def _cell(group: dict, metric: str) -> str:
    if len(group[metric]["per_seed"]) == 1:
        return f"{group[metric]['mean']:.3f}"
    return f"{group[metric]['mean']:.3f}±{group[metric]['std']:.3f}"


def summary_table(results: dict) -> str:
    data = results["data"]
    seeds = len(next(iter(results["runs"].values()))["seeds"])
    lines = [f"synthetic image-text retrieval, {data['test_images']} test images (R@1 by chance "
             f"{results['chance']:.4f}); mean±std over {seeds} seed(s)",
             f"{'run':<10}{'languages':<11}" + "".join(f"{m:>14}" for m in SHOWN)]
    for name, run in results["runs"].items():
        groups = [("train", run["train_languages"])] + ([("held out", run["held_out"])] if "held_out" in run else [])
        for label, group in groups:
            lines.append(f"{name:<10}{label:<11}" + "".join(f"{_cell(group, m):>14}" for m in SHOWN))
    lines.append(f"training languages: {', '.join(data['train_languages'])}; held out: "
                 f"{', '.join(data['held_out_languages'])}")
    return "\n".join(lines)


def plot_results(results: dict, path, metrics=("t2i_r1", "i2t_r1", "t2i_r10", "map")) -> None:
    """Mean ± std over seeds per run type: training languages (left), held-out languages (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["runs"])
    groups = [g for g in ("train_languages", "held_out") if g in results["runs"][names[0]]]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False, sharey=True)
    x = np.arange(len(metrics))
    width = 0.8 / len(names)
    for ax, group in zip(axes[0], groups):
        for k, name in enumerate(names):
            run = results["runs"][name][group]
            ax.bar(x + (k - (len(names) - 1) / 2) * width, [run[m]["mean"] for m in metrics], width,
                   yerr=[run[m]["std"] for m in metrics], capsize=2, label=name)
        ax.axhline(results["chance"], color="black", lw=0.8, ls="--", label="R@1 chance")
        ax.set_xticks(x, metrics)
        ax.set_title("training languages" if group == "train_languages" else
                     "held-out languages (" + ", ".join(results["data"]["held_out_languages"]) + ")")
    axes[0][0].set_ylabel(f"mean ± std over {len(results['runs'][names[0]]['seeds'])} seed(s)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("hbfast demo --clip (synthetic scenes, frozen image tower + MiniLM)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

