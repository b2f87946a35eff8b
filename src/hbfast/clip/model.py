"""Image-text dual encoder for multilingual CLIP / LiT training.

Exists so that any transformers vision tower (CLIP, SigLIP, or the vision half of a full CLIP-style
model) and any transformers text encoder (a multilingual encoder or a CLIP text tower) become one
module with two projections into a shared space, CLIP's learnable logit scale and the fused
``hbfast.contrastive_loss`` (or SigLIP's learnable scale and bias and the fused ``hbfast.siglip_loss``). With a frozen image tower the image side may be fed precomputed tower
features (the LiT embedding cache) instead of pixels; only the text side then runs.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..encoders import resolve_model
from ..ops.loss.siglip import SIGLIP_INIT_BIAS, SIGLIP_INIT_SCALE

LOSSES = ("contrastive", "sigmoid", "naive")
IMAGE_TEXT_LOSSES = ("contrastive", "sigmoid")
TEXT_POOLINGS = ("mean", "cls", "pooler")
CONFIG_NAME = "hbfast_clip.json"
HEADS_NAME = "heads.safetensors"


class ImagePreprocessor:
    """PIL images -> pixel tensors [n, 3, S, S]: RGB, resized (bicubic), scaled to [0, 1], normalised."""

    def __init__(self, image_size: int, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        self.image_size = int(image_size)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)

    def __call__(self, images) -> torch.Tensor:
        from PIL import Image

        out = []
        for image in images:
            image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
            pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
            out.append((pixels - self.mean) / self.std)
        return torch.stack(out)

    def fingerprint(self) -> str:
        return f"{self.image_size}:{self.mean.flatten().tolist()}:{self.std.flatten().tolist()}"

    @classmethod
    def for_model(cls, name: str, image_size: int) -> "ImagePreprocessor":
        """Mean/std of the model's own image processor when it ships one, else 0.5 / 0.5."""
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(name)
            return cls(image_size, processor.image_mean, processor.image_std)
        except (OSError, ValueError, AttributeError, TypeError):
            return cls(image_size)


class ProjectedImageTower(nn.Module):
    """The image side of a full CLIP-style model: ``get_image_features`` (vision tower + its own
    projection), the embeddings LAION publishes; saved as the full model."""

    def __init__(self, full: nn.Module):
        super().__init__()
        self.full, self.config = full, full.config.vision_config
        self.width = int(full.config.projection_dim if hasattr(full.config, "projection_dim")
                         else full.config.vision_config.hidden_size)

    def forward(self, pixel_values):
        return self.full.get_image_features(pixel_values=pixel_values)

    def save_pretrained(self, directory, **kwargs):
        self.full.save_pretrained(directory, **kwargs)


def load_image_tower(name: str | os.PathLike) -> nn.Module:
    """A transformers vision model producing ``pooler_output``; for a full CLIP-style model its image
    features (vision tower and projection, :class:`ProjectedImageTower`)."""
    from transformers import AutoConfig, AutoModel

    name = resolve_model(name)
    config = AutoConfig.from_pretrained(name)
    model = AutoModel.from_pretrained(name)
    if hasattr(model, "get_image_features") and getattr(config, "vision_config", None) is not None:
        model = ProjectedImageTower(model)
    if not hasattr(model, "config") or getattr(model.config, "image_size", None) is None:
        raise ValueError(f"{name}: not a vision model with an image_size (got {type(model).__name__})")
    return model


def load_text_tower(name: str | os.PathLike):
    """(model, tokenizer) of a transformers text encoder; the text half of a full CLIP-style model."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    name = resolve_model(name)
    config = AutoConfig.from_pretrained(name)
    model = AutoModel.from_pretrained(name)
    if hasattr(model, "text_model") and getattr(config, "text_config", None) is not None:
        model = model.text_model
    return model, AutoTokenizer.from_pretrained(name)


def tower_width(model: nn.Module) -> int:
    if isinstance(model, ProjectedImageTower):
        return model.width
    config = model.config
    return int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))


class ClipDualEncoder(nn.Module):
    """Image tower + text tower, each projected to ``dim``, with CLIP's learnable logit scale.

    ``image_tower`` may be ``None`` when the image side is always fed precomputed features of width
    ``image_width`` (frozen tower, LiT). ``freeze_image`` keeps the tower's weights fixed (its
    projection still trains unless ``train_image_projection=False``).
    """

    def __init__(self, text_tower: nn.Module, tokenizer, *, image_tower: Optional[nn.Module] = None,
                 image_width: Optional[int] = None, dim: int = 512, freeze_image: bool = True,
                 text_pooling: str = "mean", max_length: int = 64, init_temperature: float = 0.07,
                 preprocess: Optional[ImagePreprocessor] = None, train_image_projection: bool = True,
                 image_text_loss: str = "contrastive"):
        super().__init__()
        if image_text_loss not in IMAGE_TEXT_LOSSES:
            raise ValueError(f"image_text_loss must be one of {IMAGE_TEXT_LOSSES}, got {image_text_loss!r}")
        if text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {text_pooling!r}")
        if image_tower is None and image_width is None:
            raise ValueError("give an image_tower or the image_width of precomputed image features")
        self.text_tower, self.tokenizer, self.image_tower = text_tower, tokenizer, image_tower
        self.image_width = int(image_width if image_width is not None else tower_width(image_tower))
        if image_tower is not None and tower_width(image_tower) != self.image_width:
            raise ValueError(f"image features of dimension {image_width} (e.g. precomputed embeddings) do not match "
                             f"the image tower's output dimension {tower_width(image_tower)}")
        self.dim, self.text_pooling, self.max_length = int(dim), text_pooling, int(max_length)
        self.freeze_image = bool(freeze_image)
        self.text_projection = nn.Linear(tower_width(text_tower), self.dim, bias=False)
        self.image_projection = nn.Linear(self.image_width, self.dim, bias=False)
        # CLIP: log(1 / temperature); SigLIP: log(10) and a bias of -10 (the bias is unused by CLIP's loss).
        self.image_text_loss = image_text_loss
        sigmoid = image_text_loss == "sigmoid"
        self.logit_scale = nn.Parameter(torch.tensor(math.log(SIGLIP_INIT_SCALE if sigmoid else 1.0 / init_temperature)))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_BIAS if sigmoid else 0.0))
        if image_tower is not None:
            image_tower.requires_grad_(not self.freeze_image)
            if preprocess is None:
                preprocess = ImagePreprocessor(image_tower.config.image_size)
        self.image_projection.requires_grad_(bool(train_image_projection))
        self.preprocess = preprocess

    # ---- encoding ----
    def tokenize(self, texts: Sequence[str]) -> dict:
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def text_features(self, tokens: dict) -> torch.Tensor:
        """Pooled text tower output [n, text_width] (before the projection)."""
        device = self.text_projection.weight.device
        tokens = {k: v.to(device) for k, v in tokens.items()}
        out = self.text_tower(**tokens)
        if self.text_pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state  # [n, T, H]
        if self.text_pooling == "cls":
            return hidden[:, 0]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [n, T, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def encode_text(self, tokens_or_texts) -> torch.Tensor:
        """L2-normalised text embeddings [n, dim] from token tensors or a list of strings."""
        tokens = self.tokenize(tokens_or_texts) if isinstance(tokens_or_texts, (list, tuple)) else tokens_or_texts
        return F.normalize(self.text_projection(self.text_features(tokens)), dim=-1)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image tower output [n, image_width] (``pooler_output``) from pixels [n, 3, S, S]."""
        if self.image_tower is None:
            raise ValueError("this model has no image tower (it was built for precomputed image features)")
        pixels = pixels.to(self.image_projection.weight.device)
        if self.freeze_image:
            with torch.no_grad():
                self.image_tower.eval()
                return self.image_tower(pixel_values=pixels).pooler_output
        return self.image_tower(pixel_values=pixels).pooler_output

    def encode_image(self, pixels: Optional[torch.Tensor] = None, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L2-normalised image embeddings [n, dim] from pixels or from precomputed tower features."""
        if (pixels is None) == (features is None):
            raise ValueError("give exactly one of pixels or features")
        if features is None:
            features = self.image_features(pixels)
        else:
            if features.ndim != 2 or features.shape[1] != self.image_width:
                raise ValueError(f"image features must be [n, {self.image_width}], got {list(features.shape)}")
            features = features.to(self.image_projection.weight.device, self.image_projection.weight.dtype)
        return F.normalize(self.image_projection(features), dim=-1)

    def image_encoder(self, batch_size: int = 64):
        """A callable PIL images -> [n, dim] for :func:`hbfast.eval.evaluate_xtd`."""
        def encode(images):
            with torch.no_grad():
                return torch.cat([self.encode_image(self.preprocess(images[i:i + batch_size]))
                                  for i in range(0, len(images), batch_size)]).float().cpu()
        return encode

    def text_encoder(self, batch_size: int = 256):
        """A callable texts -> [n, dim] for :func:`hbfast.eval.evaluate_xtd`."""
        def encode(texts):
            with torch.no_grad():
                return torch.cat([self.encode_text(list(texts[i:i + batch_size]))
                                  for i in range(0, len(texts), batch_size)]).float().cpu()
        return encode

    # ---- saving ----
    def config_dict(self) -> dict:
        return {"dim": self.dim, "image_width": self.image_width, "freeze_image": self.freeze_image,
                "text_pooling": self.text_pooling, "max_length": self.max_length,
                "has_image_tower": self.image_tower is not None, "image_text_loss": self.image_text_loss,
                "image_size": None if self.preprocess is None else self.preprocess.image_size,
                "image_mean": None if self.preprocess is None else self.preprocess.mean.flatten().tolist(),
                "image_std": None if self.preprocess is None else self.preprocess.std.flatten().tolist()}

    def save(self, directory: str | os.PathLike) -> None:
        """``text_tower/`` (+ tokenizer), ``image_tower/`` when present, ``heads.safetensors``, config JSON."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.text_tower.save_pretrained(directory / "text_tower")
        self.tokenizer.save_pretrained(directory / "text_tower")
        if self.image_tower is not None:
            self.image_tower.save_pretrained(directory / "image_tower")
        heads = {"text_projection": self.text_projection.weight, "image_projection": self.image_projection.weight,
                 "logit_scale": self.logit_scale.reshape(1), "logit_bias": self.logit_bias.reshape(1)}
        save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()}, str(directory / HEADS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ClipDualEncoder":
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise ValueError(f"{directory}: not an hbfast CLIP model directory (no {CONFIG_NAME})")
        config = json.loads((directory / CONFIG_NAME).read_text())
        text, tokenizer = load_text_tower(directory / "text_tower")
        image = load_image_tower(directory / "image_tower") if config["has_image_tower"] else None
        preprocess = None if config["image_size"] is None else ImagePreprocessor(
            config["image_size"], config["image_mean"], config["image_std"])
        model = cls(text, tokenizer, image_tower=image, image_width=config["image_width"], dim=config["dim"],
                    freeze_image=config["freeze_image"], text_pooling=config["text_pooling"],
                    max_length=config["max_length"], preprocess=preprocess,
                    image_text_loss=config.get("image_text_loss", "contrastive"))
        heads = load_file(str(directory / HEADS_NAME))
        with torch.no_grad():
            model.text_projection.weight.copy_(heads["text_projection"])
            model.image_projection.weight.copy_(heads["image_projection"])
            model.logit_scale.copy_(heads["logit_scale"].reshape(()))
            if "logit_bias" in heads:  # saved before the sigmoid loss was wired: CLIP's loss, no bias
                model.logit_bias.copy_(heads["logit_bias"].reshape(()))
        return model


def build_clip_model(image_model: Optional[str], text_model: str, *, dim: int = 512, freeze_image: bool = True,
                     image_width: Optional[int] = None, text_pooling: str = "mean", max_length: int = 64,
                     image_text_loss: str = "contrastive") -> ClipDualEncoder:
    """Load both towers by name or path. ``image_model=None`` needs ``image_width`` (precomputed features only)."""
    text, tokenizer = load_text_tower(text_model)
    image = preprocess = None
    if image_model is not None:
        image = load_image_tower(image_model)
        preprocess = ImagePreprocessor.for_model(resolve_model(image_model), image.config.image_size)
    return ClipDualEncoder(text, tokenizer, image_tower=image, image_width=image_width, dim=dim,
                           freeze_image=freeze_image, text_pooling=text_pooling, max_length=max_length,
                           preprocess=preprocess, image_text_loss=image_text_loss)


def clip_loss(text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor, *, loss: str = "contrastive",
              gather: bool = False, logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Image-text loss of matched rows; ``logit_scale`` is the log of the multiplier (CLIP's
    convention) for every loss. ``loss``: "contrastive" (fused symmetric cross-entropy), "naive"
    (plain PyTorch cross-entropy, for comparison) or "sigmoid" (fused SigLIP loss, mean over images
    of each image's pairs; needs ``logit_bias``)."""
    import hbfast

    if loss == "contrastive":
        return hbfast.contrastive_loss(text, image, logit_scale=logit_scale, symmetric=True, gather=gather)
    if loss == "naive":
        if gather:
            raise ValueError("loss='naive' does not gather across ranks; use loss='contrastive'")
        logits = logit_scale.exp() * text.float() @ image.float().T  # [B, B]
        target = torch.arange(text.shape[0], device=text.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    if loss == "sigmoid":
        if logit_bias is None:
            raise ValueError("loss='sigmoid' needs logit_bias (SigLIP's learnable bias)")
        return hbfast.siglip_loss(image, text, logit_scale.exp(), logit_bias, gather=gather)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
