"""The text dual encoder: one transformers encoder shared by queries and passages, with pooling.

Loads a sentence-transformers directory (its Transformer and Pooling modules) or a plain
transformers encoder, and saves as a sentence-transformers directory (``model.safetensors``,
tokenizer, ``modules.json``, pooling and normalisation) that ``SentenceTransformer(path)`` and
``hbfast eval --model path`` load directly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

POOLINGS = ("mean", "cls")


def _pooling_of_st_dir(path: Path) -> tuple[str, str, bool]:
    """(transformer subdirectory, pooling, normalize) from a sentence-transformers modules.json."""
    modules = json.loads((path / "modules.json").read_text())
    transformer, pooling, normalize = "", "mean", False
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith("Transformer"):
            transformer = m.get("path", "")
        elif kind.endswith("Pooling"):
            config = json.loads((path / m["path"] / "config.json").read_text())
            if config.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif not config.get("pooling_mode_mean_tokens", True):
                raise ValueError(f"{path}: only mean or CLS pooling can be trained, got {config}")
        elif kind.endswith("Normalize"):
            normalize = True
    return transformer, pooling, normalize


def set_dropout(module: torch.nn.Module, p: float) -> None:
    """Every ``nn.Dropout`` and every ``*dropout*`` probability of a transformers config to ``p``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        config = getattr(m, "config", None)
        if config is not None:
            for name, value in list(vars(config).items()):
                if "dropout" in name and isinstance(value, float):
                    setattr(config, name, p)


class TextEncoder(torch.nn.Module):
    """``forward(input_ids, attention_mask) -> [b, d]`` pooled embeddings (not normalised; the loss normalises)."""

    def __init__(self, encoder, tokenizer, pooling: str = "mean", normalize: bool = True, max_length: int = 256):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder, self.tokenizer = encoder, tokenizer
        self.pooling, self.normalize, self.max_length = pooling, normalize, max_length

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, *, pooling: str | None = None,
             dropout: float | None = None, max_length: int = 256) -> "TextEncoder":
        """A sentence-transformers directory, a transformers encoder directory or a hub id
        (default: the packaged all-MiniLM-L6-v2). ``pooling=None`` keeps the model's own (mean otherwise)."""
        from transformers import AutoModel, AutoTokenizer

        from ..encoders import resolve_model

        if model is not None and not Path(model).exists() and (
                Path(model).is_absolute() or str(model).startswith((".", "~")) or str(model).count("/") > 1):
            raise ValueError(f"model path {str(model)!r} does not exist")
        path = Path(resolve_model(model))
        sub, own_pooling, normalize = "", "mean", True
        if (path / "modules.json").is_file():
            sub, own_pooling, normalize = _pooling_of_st_dir(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path / sub) if sub else str(path))
            encoder = AutoModel.from_pretrained(str(path / sub) if sub else str(path))
        except OSError as e:
            raise ValueError(f"cannot load model {str(model)!r}: not a local model directory, and the hub "
                             f"is unreachable or has no such model ({str(e).splitlines()[0]})") from None
        if dropout is not None:
            set_dropout(encoder, dropout)
        return cls(encoder, tokenizer, pooling or own_pooling, normalize, max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [b, t, d]
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def save(self, directory: str | os.PathLike) -> None:
        """A sentence-transformers model directory (weights in model.safetensors)."""
        from transformers.utils import logging as hf_logging

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no bar per checkpoint
        try:
            self.encoder.save_pretrained(str(directory), safe_serialization=True)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        self.tokenizer.save_pretrained(str(directory))
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            (directory / "2_Normalize").mkdir(exist_ok=True)
        (directory / "modules.json").write_text(json.dumps(modules, indent=2))
        (directory / "1_Pooling").mkdir(exist_ok=True)
        dim = self.encoder.config.hidden_size
        (directory / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": dim, "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
        (directory / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": self.max_length, "do_lower_case": False}, indent=2))

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Weights saved by :meth:`save` (strict: a different architecture is an error)."""
        from safetensors.torch import load_file

        path = Path(directory) / "model.safetensors"
        if not path.is_file():
            raise ValueError(f"{directory}: no model.safetensors")
        try:
            state = load_file(str(path))
        except Exception as e:
            raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
        own = self.encoder.state_dict()
        base = getattr(self.encoder, "base_model_prefix", "")
        state = {k[len(base) + 1:] if base and k.startswith(base + ".") and k[len(base) + 1:] in own else k: v
                 for k, v in state.items()}
        missing = [k for k in own if k not in state]
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or wrong:
            raise ValueError(f"{path} does not match the model: missing {missing[:3]}, wrong shape {wrong[:3]}")
        self.encoder.load_state_dict({k: state[k] for k in own}, strict=True)
