"""``hbfast demo --clip``: X-X, X-Y and hybrid image-text training compared on a synthetic task.

Exists to show offline, in minutes on a CPU, that the image-text path learns (R@1 far above
chance) and how batch types compare: tiny randomly initialised towers, generated images of
shapes / colours / sizes / positions, captions in 6 training languages and 2 held-out ones,
evaluated by the XTD protocol (:func:`hbfast.eval.evaluate_xtd`). Synthetic, not a real result.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import synthetic
from .run import xtd_evaluator

RUNS = ("X-X", "X-Y", "hybrid")
METRICS = ("t2i_r1", "i2t_r1", "t2i_r10", "map")
# Chosen by measurement on a loaded 2-core CPU: each run of the default takes about 2-3 minutes.
DEFAULT = {"images": 2000, "steps": 200, "batch_size": 64}
QUICK = {"images": 400, "steps": 30, "batch_size": 32}


def train_synthetic(data, evaluate, out: Path, batch_type: str, *, alpha: float = 0.5, steps: int, batch_size: int,
                    seed: int = 0, lr: float = 1e-3, translation_weight: float = 0.0, progress: bool = True) -> dict:
    """One run on the synthetic data from fresh tiny towers (same seed -> same initial weights)."""
    from ..encoders import packaged_model_path
    from ..train.config import TrainConfig
    from .task import ClipTask, ClipTrainer

    model = synthetic.tiny_clip_model(packaged_model_path(), seed=seed)
    task = ClipTask(data, model, translation_pairs=translation_weight > 0, name="synthetic tiny towers")
    config = TrainConfig(out=str(out), batch_type=batch_type, alpha=alpha, batch_size=batch_size, steps=steps,
                         seed=seed, lr=lr, temperature=0.07, learnable_scale=True, symmetric=True,
                         progress=progress)
    summary = ClipTrainer(task, config, translation_weight=translation_weight, evaluate=evaluate).run()
    result = summary["evaluations"][-1]
    result.pop("at", None)
    return {**result, "seconds": summary["seconds"],
            "settings": {"batch_type": batch_type, "alpha": config.effective_alpha, "steps": steps,
                         "batch_size": batch_size, "lr": lr, "seed": seed, "translation_weight": translation_weight}}


def run_clip_demo(out="hbfast-demo-clip", *, quick: bool = False, steps: int | None = None, seed: int = 0,
                  progress: bool = True) -> dict:
    """Train and evaluate the untrained, X-X, X-Y and hybrid runs; write ``out/results.json`` and ``out/results.png``."""
    from ..encoders import packaged_model_path

    budget = dict(QUICK if quick else DEFAULT)
    if steps is not None:
        budget["steps"] = int(steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = synthetic.make_training_data(out / "synthetic", budget["images"], seed=seed)
    test = synthetic.SyntheticXTD(out / "synthetic")
    evaluate = xtd_evaluator(test)
    untrained = synthetic.tiny_clip_model(packaged_model_path(), seed=seed)
    runs = {"untrained": {**evaluate(untrained), "settings": {"steps": 0}}}
    for name in RUNS:
        print(f"demo --clip: training {name} ({budget['steps']} steps of {budget['batch_size']})", flush=True)
        runs[name] = train_synthetic(data, evaluate, out / "runs" / name, name, steps=budget["steps"],
                                     batch_size=budget["batch_size"], seed=seed, progress=progress)
    results = {"chance": 1.0 / len(synthetic.SCENES), "runs": runs,
               "data": {"synthetic": True, "train_images": budget["images"], "train_languages": list(data.languages),
                        "held_out_languages": list(synthetic.HELD_OUT), "test_images": len(synthetic.SCENES)},
               "seconds": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot_results(results, out / "results.png")
    print(summary_table(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.png'} ({results['seconds']:.0f} s)")
    return results


def summary_table(results: dict) -> str:
    lines = [f"synthetic image-text retrieval, {results['data']['test_images']} test images "
             f"(R@1 by chance {results['chance']:.4f}); held out of training: "
             f"{', '.join(results['data']['held_out_languages'])}",
             f"{'run':<10}" + "".join(f"{m:>9}" for m in METRICS) + f"{'held-out t2i_r1':>17}"]
    for name, run in results["runs"].items():
        held = [run["per_language"][x]["t2i_r1"] for x in results["data"]["held_out_languages"]]
        lines.append(f"{name:<10}" + "".join(f"{run[m]:>9.3f}" for m in METRICS) + f"{sum(held) / len(held):>17.3f}")
    return "\n".join(lines)


def plot_results(results: dict, path) -> None:
    """Text->image R@1 per language (bars per run) with the chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["runs"])
    languages = list(next(iter(results["runs"].values()))["per_language"])
    x = np.arange(len(languages))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.1 * len(languages) + 2, 3.8))
    for k, name in enumerate(names):
        values = [results["runs"][name]["per_language"][lang]["t2i_r1"] for lang in languages]
        ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.axhline(results["chance"], color="black", lw=0.8, ls="--", label="chance")
    held = set(results["data"]["held_out_languages"])
    ax.set_xticks(x, [f"{lang}\n(held out)" if lang in held else lang for lang in languages])
    ax.set_ylabel("text->image R@1")
    ax.set_title("hbfast demo --clip (synthetic shapes task)")
    ax.legend(fontsize=8, ncol=len(names) + 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
