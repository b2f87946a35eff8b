"""Image-text training on the task-generic trainer: ``ClipTask`` (the ``TrainTask`` protocol of
``hbfast.train``) and ``ClipTrainer`` (the loop plus an optional translation-pair loss term and XTD
evaluation of every checkpoint).

Exists so that image-text runs get the text trainer's hybrid batches, checkpoints, exact resume,
DDP and cached-embedding mode unchanged: the query side is a caption (in the row's query language),
the passage side an image (pixels, or cached features of a frozen tower), the group id the image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..train import checkpoint, distributed
from ..train.loop import Trainer, lr_schedule
from ..ops.loss import SigLIPLoss
from .model import IMAGE_TEXT_LOSSES
from ..train.task import Batch


class ClipTask:
    """``data``: :class:`~hbfast.clip.data.ImageTextData`; ``model``:
    :class:`~hbfast.clip.model.ClipDualEncoder`; ``features``: cached image-tower features [N, W]
    (frozen tower); ``translation_pairs``: collate the X-Y rows' captions in both languages."""

    def __init__(self, data, model, *, features=None, translation_pairs: bool = False, name: str = ""):
        if features is not None and len(features) != len(data):
            raise ValueError(f"{len(features)} image features for {len(data)} images")
        if features is not None and features.shape[1] != model.image_width:
            raise ValueError(f"image features have dimension {features.shape[1]}, the model's image side expects "
                             f"{model.image_width}")
        if features is None and model.image_tower is None:
            raise ValueError("the model has no image tower: give precomputed image features")
        self.data, self.model, self.features = data, model, features
        self.languages, self.availability = data.languages, data.availability
        self.translation_pairs, self.name, self.criterion = translation_pairs, name, None

    def build_model(self) -> torch.nn.Module:
        self.model.logit_scale.requires_grad_(False)  # the trainer's criterion owns the learnable scale (and bias)
        self.model.logit_bias.requires_grad_(False)
        return self.model

    def collate(self, rows: Sequence[tuple]) -> Batch:
        items = [int(r[0]) for r in rows]
        tokens = self.model.tokenize([self.data.caption(i, int(r[1])) for i, r in zip(items, rows)])
        if self.features is not None:
            image = torch.from_numpy(np.asarray(self.features[items], dtype=np.float32))  # [b, W]
        else:
            image = self.model.preprocess([self.data.load_image(i) for i in items])  # [b, 3, S, S]
        batch = Batch(tokens, image, torch.as_tensor(items, dtype=torch.long), list(rows))
        if self.translation_pairs:
            cross = [(int(i), int(q), int(p)) for i, q, p in rows if q != p]
            if cross:
                batch.translation = (self.model.tokenize([self.data.caption(i, q) for i, q, _ in cross]),
                                     self.model.tokenize([self.data.caption(i, p) for i, _, p in cross]),
                                     torch.as_tensor([i for i, _, _ in cross], dtype=torch.long))
        return batch

    def to_device(self, inputs, device):
        if isinstance(inputs, dict):
            return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        return inputs.to(device, non_blocking=True)

    def encode(self, model, side: str, inputs) -> torch.Tensor:
        if side == "query":
            return model.encode_text(inputs)
        if inputs.ndim == 2:
            return model.encode_image(features=inputs)
        return model.encode_image(pixels=inputs)

    def split(self, inputs, size: int) -> list:
        if not isinstance(inputs, dict):
            return list(inputs.split(size))
        out = []
        for start in range(0, inputs["input_ids"].shape[0], size):
            longest = int(inputs["attention_mask"][start:start + size].sum(1).max())
            out.append({k: v[start:start + size, :longest] for k, v in inputs.items()})
        return out

    def save_model(self, model, directory) -> None:
        with torch.no_grad():
            for name in ("logit_scale", "logit_bias"):
                if getattr(self.criterion, name, None) is not None:
                    getattr(model, name).copy_(getattr(self.criterion, name).detach())
        model.save(directory)

    def load_model(self, model, directory) -> None:
        from .model import ClipDualEncoder

        saved = ClipDualEncoder.load(directory).state_dict()
        mine = model.state_dict()
        if mine.keys() != saved.keys() or any(mine[k].shape != saved[k].shape for k in mine):
            raise ValueError(f"{directory} does not hold this model's architecture")
        model.load_state_dict(saved)

    def describe(self) -> dict:
        return {"task": "image-text", "model": self.name, "languages": list(self.languages), "items": len(self.data),
                "dim": self.model.dim, "image_text_loss": self.model.image_text_loss, "image_width": self.model.image_width,
                "cached_features": self.features is not None, "freeze_image": self.model.freeze_image,
                "translation_pairs": self.translation_pairs}


class ClipTrainer(Trainer):
    """The trainer with ``translation_weight`` x the text-text loss of X-Y rows' caption pairs, and
    ``evaluate(model) -> dict`` (e.g. XTD) run on rank 0 after every checkpoint and at the end,
    appended to ``OUT/xtd.jsonl``. ``image_text_loss="sigmoid"``: SigLIP's loss with its learnable
    log-scale and bias (:class:`hbfast.SigLIPLoss`) as the criterion, saved with the
    model and in checkpoints; the translation term then uses it too."""

    def __init__(self, task: ClipTask, config, *, translation_weight: float = 0.0,
                 evaluate: Optional[Callable] = None, image_text_loss: str = "contrastive", stream=None):
        if translation_weight < 0:
            raise ValueError(f"translation weight must be >= 0, got {translation_weight}")
        if translation_weight > 0 and not task.translation_pairs:
            raise ValueError("translation_weight > 0 needs ClipTask(translation_pairs=True)")
        if image_text_loss not in IMAGE_TEXT_LOSSES:
            raise ValueError(f"image-text loss must be one of {IMAGE_TEXT_LOSSES}, got {image_text_loss!r}")
        if image_text_loss == "sigmoid" and config.loss == "naive":
            raise ValueError("--loss naive is the plain softmax loss; it does not combine with --image-text-loss sigmoid")
        task.model.image_text_loss = image_text_loss  # part of the run (checkpoints check it) and of the saved model
        super().__init__(task, config)
        if image_text_loss == "sigmoid":
            self.criterion = SigLIPLoss(gather=config.world_size > 1).to(self.device)
            self.loss_fn = lambda text, image, groups: self.criterion(image, text)
            self._build_optimizer()
        task.criterion = self.criterion
        self.stream = stream  # a StreamingHybridBatches: each step's samples come from it (train-clip --stream)
        if stream is not None and task.availability is not None:
            raise ValueError("a streamed run needs a task without an availability table (StreamClipTask)")
        self.translation_weight, self.evaluate, self.evaluations = float(translation_weight), evaluate, []

    def _build_optimizer(self) -> None:
        """The trainer's AdamW and schedule again, over the sigmoid criterion's scale and bias."""
        cfg, trainable = self.config, [p for p in self.model.parameters() if p.requires_grad]
        self.parameters = trainable + list(self.criterion.parameters())
        groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in trainable if p.ndim < 2] + list(self.criterion.parameters()),
                   "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(int(cfg.warmup * cfg.steps),
                                                                                     cfg.steps))

    # ---- streamed batches (train-clip --stream) ------------------------------------------------------
    def _next_batch(self) -> tuple:
        if self.stream is None:
            return super()._next_batch()
        samples, kind, fallback = self.stream.next_batch(self.step + 1)
        write_plan(self.out / f"stream-plan-rank{self.rank}.jsonl", self.step + 1, kind, samples, fallback)
        return samples, kind

    def _state(self) -> dict:
        state = super()._state()
        if self.stream is not None:
            state["stream"] = distributed.gather_objects(self.stream.state_dict())  # one per rank
        return state

    def resume(self) -> Path:
        path = super().resume()
        if self.stream is not None:
            state = torch.load(path / checkpoint.STATE_FILE, map_location="cpu", weights_only=False)
            self.stream.load_state_dict(state["stream"][self.rank])
            plan = self.out / f"stream-plan-rank{self.rank}.jsonl"
            if plan.is_file():  # drop the steps planned after the checkpoint
                lines = [x for x in plan.read_text(encoding="utf-8").splitlines() if x.strip()]
                plan.write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= self.step),
                                encoding="utf-8")
        return path

    def _backward(self, batch: Batch) -> float:
        loss = super()._backward(batch)
        pairs = getattr(batch, "translation", None)
        if self.translation_weight > 0 and pairs is not None:
            q = self._embed(batch, "query", self.task.to_device(pairs[0], self.device))
            p = self._embed(batch, "query", self.task.to_device(pairs[1], self.device))
            extra = self.translation_weight * self.loss_fn(q, p, pairs[2].to(self.device))
            extra.backward()
            loss += float(extra.detach())
        return loss

    def _run_evaluation(self, label) -> None:
        if self.evaluate is None or self.rank != 0:
            return
        self.model.eval()
        result = {"step": self.step, "at": label, **self.evaluate(self.model)}
        self.model.train()
        self.evaluations.append(result)
        with open(self.out / "xtd.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")

    def save_checkpoint(self) -> Path:
        path = super().save_checkpoint()
        self._run_evaluation(path.name)
        return path

    def run(self) -> dict:
        summary = super().run()
        self._run_evaluation("final")
        summary["evaluations"] = self.evaluations
        return summary


def write_plan(path: Path, step: int, kind: str, samples: list, fallback: Optional[str]) -> None:
    """One line per step of a rank's plan log: the kind and where its samples came from."""
    record = {"step": step, "batch": kind, "shards": sorted({s["shard"] for s in samples}),
              "keys": [s["key"] for s in samples]}
    if fallback:
        record["fallback"] = fallback
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
