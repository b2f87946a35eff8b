"""The offline CLIP study's setup, shared by ``hbfast demo --clip`` and ``hbfast sweep --task clip``.

Exists so that the demo and the alpha sweep train on exactly the same setup, on the pattern of real
multilingual CLIP (LiT / M-CLIP): a frozen image tower that carries the scene
(:mod:`hbfast.clip.image_tower`, trained once and cached), its features of the training images
computed once (the LiT cache), and the packaged English-pretrained all-MiniLM-L6-v2 as the text
tower, fine-tuned with hybrid batches on synthetic captions in 6 languages (2 more held out).
Also the aggregation over seeds (mean, std, min, max per metric and language).
"""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import numpy as np

from . import image_tower, synthetic

# R@1 / R@10 / mAP in both directions (the XTD protocol's R@5 is in every run's xtd.jsonl too).
METRICS = ("t2i_r1", "i2t_r1", "t2i_r10", "i2t_r10", "map", "i2t_map")
# Chosen by measurement on the shared 2-core CPU (docs/clip-study.md): about a minute per run.
# ``test_scenes``: None scores all 240 scenes (tests use fewer).
# ``frozen_layers``: MiniLM's embeddings and its first this many layers stay fixed (the top ones train).
DEFAULT = {"images": 3000, "steps": 80, "batch_size": 32, "lr": 2e-4, "dim": 128, "max_length": 24,
           "frozen_layers": 4, "seeds": 3, "tower": {}}
QUICK = {"images": 1000, "steps": 40, "batch_size": 32, "lr": 2e-4, "dim": 128, "max_length": 24,
         "frozen_layers": 4, "seeds": 1, "tower": {}}


class Study:
    """The frozen tower, the synthetic training and test data and their cached image features."""

    def __init__(self, out: str | Path, settings: dict, *, data_seed: int = 0, progress: bool = True):
        from ..encoders import packaged_model_path
        from .run import xtd_evaluator

        self.out, self.settings, self.progress = Path(out), dict(settings), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.tower, self.tower_info = image_tower.load_or_train(settings.get("tower"), progress=progress)
        print(f"frozen image tower {self.tower_info['path']} ({'cached' if self.tower_info['cached'] else 'trained now'}"
              f"; held-out attribute accuracy {_accuracy(self.tower_info['accuracy'])})", flush=True)
        self.text_model = packaged_model_path()
        self.data = synthetic.make_training_data(self.out / "synthetic", settings["images"], seed=data_seed,
                                                 image_size=self.tower.config.image_size)
        self.test = synthetic.SyntheticXTD(self.out / "synthetic", image_size=self.tower.config.image_size,
                                           n_scenes=settings.get("test_scenes"))
        self.chance = 1.0 / len(self.test.scenes)
        self.evaluate = xtd_evaluator(self.test)
        self._features = self._text = None

    def model(self, seed: int):
        """The study's start for ``seed``: pretrained MiniLM, the frozen tower, fresh projections."""
        import torch

        from .model import ClipDualEncoder, ImagePreprocessor, load_text_tower

        if self._text is None:
            self._text = load_text_tower(self.text_model)
        torch.manual_seed(seed)
        text, tokenizer = copy.deepcopy(self._text[0]), self._text[1]
        text.embeddings.requires_grad_(False)  # a BERT encoder (MiniLM): no gradient below the trained layers
        for layer in text.encoder.layer[:self.settings["frozen_layers"]]:
            layer.requires_grad_(False)
        return ClipDualEncoder(text, tokenizer, image_tower=self.tower, dim=self.settings["dim"], freeze_image=True,
                               max_length=self.settings["max_length"],
                               preprocess=ImagePreprocessor(self.tower.config.image_size))

    def features(self, model):
        """The frozen tower's features of the training images (the LiT cache in ``out/image-cache``)."""
        from .cache import cached_image_features

        if self._features is None:
            self._features = cached_image_features(model, self.data, self.out / "image-cache",
                                                   model_name=f"synthetic-tower:{self.tower_info['key']}",
                                                   progress=self.progress)
        return self._features

    def untrained(self, seed: int) -> dict:
        return self.evaluate(self.model(seed))

    def train(self, out: Path, batch_type: str, *, seed: int, alpha: float = 0.5, steps: int | None = None) -> dict:
        """One run from the seed's start; its XTD metrics, ``seconds`` and ``settings``. The run's
        model directory is removed afterwards (the demo keeps metrics and logs, not 9 MiniLM copies)."""
        from ..train.config import TrainConfig
        from .task import ClipTask, ClipTrainer

        s = self.settings
        steps = int(steps or s["steps"])
        model = self.model(seed)
        task = ClipTask(self.data, model, features=self.features(model), name="frozen synthetic ViT + all-MiniLM-L6-v2")
        config = TrainConfig(out=str(out), batch_type=batch_type, alpha=alpha, batch_size=s["batch_size"], steps=steps,
                             seed=seed, lr=s["lr"], temperature=0.07, learnable_scale=True, symmetric=True,
                             progress=self.progress)
        summary = ClipTrainer(task, config, evaluate=self.evaluate).run()
        shutil.rmtree(summary["final"], ignore_errors=True)
        result = summary["evaluations"][-1]
        result.pop("at", None)
        result.pop("step", None)
        return {**result, "seconds": summary["seconds"], "last_loss": summary["last_loss"],
                "settings": {"batch_type": batch_type, "alpha": config.effective_alpha, "steps": steps,
                             "batch_size": s["batch_size"], "lr": s["lr"], "seed": seed}}

    def describe(self) -> dict:
        return {"synthetic": True, "train_images": len(self.data), "train_languages": list(self.data.languages),
                "held_out_languages": list(synthetic.HELD_OUT), "test_images": len(self.test.scenes),
                "image_tower": {k: self.tower_info[k] for k in ("key", "path", "accuracy", "seconds", "cached", "settings")},
                "text_tower": "all-MiniLM-L6-v2 (packaged, English-pretrained)", "settings": self.settings}


def _accuracy(accuracy: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items())


def _stats(values: list) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max())}


def _group(evaluations: list, languages) -> dict:
    """Mean over ``languages`` per seed, then mean / std / min / max / per-seed values over seeds."""
    out = {}
    for m in METRICS:
        per_seed = [float(np.mean([e["per_language"][lang][m] for lang in languages])) for e in evaluations]
        out[m] = {**_stats(per_seed), "per_seed": per_seed}
    return out


def aggregate(evaluations: list, held_out, extra: dict | None = None) -> dict:
    """One run type over seeds (``evaluations``: :func:`~hbfast.clip.run.xtd_metrics` results, one per
    seed). Top level and ``per_language`` keep the single-run schema (each metric: its mean over
    seeds); ``per_seed`` / ``std`` / ``min`` / ``max`` beside them; ``train_languages`` and
    ``held_out`` are the two language groups, each metric with mean, spread and per-seed values."""
    languages = list(evaluations[0]["per_language"])
    train = [lang for lang in languages if lang not in held_out]
    held = [lang for lang in languages if lang in held_out]

    def flat(group: dict) -> dict:
        return {**{m: group[m]["mean"] for m in METRICS},
                **{k: {m: group[m][k] for m in METRICS} for k in ("per_seed", "std", "min", "max")}}

    result = flat(_group(evaluations, languages))
    result["per_language"] = {lang: flat(_group(evaluations, [lang])) for lang in languages}
    result["train_languages"] = _group(evaluations, train)
    if held:
        result["held_out"] = _group(evaluations, held)
    return {**result, **(extra or {})}


def timing() -> dict:
    """Wall and CPU seconds so far and the machine load (the box may be shared: say so with figures)."""
    import os

    return {"wall_s": time.perf_counter(), "cpu_s": time.process_time(), "load_avg": list(os.getloadavg()),
            "cpus": os.cpu_count()}
