"""The frozen image tower of the offline CLIP study: a small ViT trained once on synthetic scenes.

Exists because real multilingual CLIP starts from a pretrained image tower that already carries the
scene (LiT locks it; M-CLIP reuses it), and nothing pretrained on images can be fetched offline. So
a CLIP-vision ViT is trained here, once, to read the synthetic scenes' four attributes (shape, colour,
size, position: one classification head each, cross-entropy) from generated images disjoint from
the study's training and test images. Its ``pooler_output`` is then the frozen image feature of the
study. The trained tower is cached under ``$HBFAST_CACHE/clip-image-tower/<hash of its settings>/``
(else ``~/.cache/hbfast``) and reused by every later run; its held-out attribute accuracy is stored
beside it (it bounds the R@1 any text tower can reach).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from . import synthetic

VERSION = 1  # bump when the training recipe changes: the cache key includes it
DEFAULT = {"images": 4000, "epochs": 12, "width": 64, "layers": 2, "image_size": 32, "batch_size": 128,
           "lr": 2e-3, "seed": 1000}
ATTRIBUTES = (synthetic.SHAPES, tuple(synthetic.COLOURS), synthetic.SIZES, synthetic.POSITIONS)
META_NAME = "tower.json"


def cache_root() -> Path:
    from ..data.lareqa import default_cache_dir

    return default_cache_dir() / "clip-image-tower"


def settings_key(settings: dict) -> str:
    text = json.dumps({"version": VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def labels(scene: tuple) -> list:
    """The scene's attribute indices (shape, colour, size, position)."""
    return [values.index(v) for values, v in zip(ATTRIBUTES, scene)]


def _pixels(scenes, rng, image_size: int):
    import torch

    from .model import ImagePreprocessor

    return ImagePreprocessor(image_size)([synthetic.draw(s, rng, image_size) for s in scenes]).to(torch.float32)


def _vit(width: int, layers: int, image_size: int):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(image_size=image_size, patch_size=4, hidden_size=width,
                                            intermediate_size=2 * width, num_hidden_layers=layers,
                                            num_attention_heads=4))


def train_image_tower(settings: dict, *, progress: bool = True):
    """(tower, held-out accuracy per attribute and of the whole scene) for ``settings`` (see DEFAULT)."""
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    s = {**DEFAULT, **settings}
    torch.manual_seed(s["seed"])
    rng = np.random.default_rng(s["seed"])
    scenes = [synthetic.SCENES[i] for i in rng.integers(len(synthetic.SCENES), size=s["images"])]
    x = _pixels(scenes, rng, s["image_size"])  # [N, 3, S, S]
    y = torch.tensor([labels(sc) for sc in scenes])  # [N, 4]
    tower = _vit(s["width"], s["layers"], s["image_size"])
    heads = nn.ModuleList(nn.Linear(s["width"], len(values)) for values in ATTRIBUTES)
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=s["lr"], weight_decay=0.01)
    steps = s["epochs"] * (len(x) // s["batch_size"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=s["lr"], total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(s["seed"])
    bar = tqdm(total=steps, desc="training the frozen image tower (once)", unit="step", disable=not progress)
    for _ in range(s["epochs"]):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - s["batch_size"] + 1, s["batch_size"]):
            rows = order[start:start + s["batch_size"]]
            features = tower(pixel_values=x[rows]).pooler_output
            loss = sum(nn.functional.cross_entropy(h(features), y[rows, k]) for k, h in enumerate(heads))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    tower.eval()
    test_rng = np.random.default_rng(s["seed"] + 1)
    test = [sc for sc in synthetic.SCENES for _ in range(2)]
    with torch.no_grad():
        features = tower(pixel_values=_pixels(test, test_rng, s["image_size"])).pooler_output
        right = torch.stack([h(features).argmax(1) == torch.tensor([labels(sc)[k] for sc in test])
                             for k, h in enumerate(heads)], 1)  # [n, 4]
    names = ("shape", "colour", "size", "position")
    accuracy = {n: float(right[:, k].float().mean()) for k, n in enumerate(names)}
    accuracy["scene"] = float(right.all(1).float().mean())
    return tower, accuracy


def load_or_train(settings: dict | None = None, *, root: str | os.PathLike | None = None, progress: bool = True):
    """``(tower, info)``: the cached tower for ``settings`` (trained and cached on first use), frozen
    and in eval mode. ``info``: ``key``, ``path``, ``accuracy``, ``seconds`` (training), ``cached``."""
    from transformers import CLIPVisionModel

    s = {**DEFAULT, **(settings or {})}
    key = settings_key(s)
    directory = Path(root or cache_root()) / key
    cached = (directory / META_NAME).is_file()
    if not cached:
        start = time.perf_counter()
        tower, accuracy = train_image_tower(s, progress=progress)
        tmp = directory.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tower.save_pretrained(tmp)
        meta = {"key": key, "settings": s, "version": VERSION, "accuracy": accuracy,
                "seconds": time.perf_counter() - start}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, directory)
        except OSError:  # another process cached the same tower first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((directory / META_NAME).read_text())
    tower = CLIPVisionModel.from_pretrained(str(directory))
    tower.requires_grad_(False)
    tower.eval()
    return tower, {**meta, "path": str(directory), "cached": cached}
