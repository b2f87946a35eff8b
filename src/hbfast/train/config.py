"""Every option of a training run: ``TrainConfig`` (the loop's) and ``TextOptions`` (the text task's), each
field declared once with its default and help; the CLI is built from them (:mod:`hbfast.options`)."""
from __future__ import annotations

import dataclasses

from ..options import option

BATCH_TYPES = {"hybrid": None, "X-X": 1.0, "X-Y": 0.0}  # batch type -> the alpha it forces
LOSSES = ("fused", "naive")

# Fields that must match for --resume to continue a run (the rest may change between sessions).
RUN_DEFINING = ("batch_type", "alpha", "lang_weights", "batch_size", "steps", "seed", "lr", "warmup",
                "weight_decay", "clip", "temperature", "learnable_scale", "symmetric", "loss", "mini_batch",
                "heldout", "eval_every", "eval_batches", "patience", "world_size")


@dataclasses.dataclass
class TrainConfig:
    """The training loop's options; each field is also the ``hbfast train`` flag of its name."""

    out: str = option("hbfast-train", "output directory: checkpoint-<step>/, final/, log.jsonl")
    batch_type: str = option("hybrid", "hybrid, or only X-X / only X-Y batches", choices=list(BATCH_TYPES))
    alpha: float = option(0.5, "hybrid: probability of an X-X (monolingual) batch")
    lang_weights: str = option("uniform", "X-X language draw: uniform, size, or w1,w2,...")
    batch_size: int = option(32, "global batch size (all processes together)")
    steps: int = option(1000, "optimizer steps")
    save_every: int = option(0, "checkpoint every K steps (0: only final/)")
    resume: bool = option(False, "continue from the latest checkpoint in --out (which must exist)")
    seed: int = option(0, "seed of the batch plan and the initialisation")
    lr: float = option(3e-5, "peak learning rate (AdamW)")
    warmup: float = option(0.1, "fraction of steps of linear warmup, then linear decay to 0")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and norms)")
    clip: float = option(1.0, "max gradient norm (0: no clipping)")
    temperature: float = option(0.05, "softmax temperature of the contrastive loss")
    learnable_scale: bool = option(False, "learn the logit scale (CLIP)")
    symmetric: bool = option(False, "average the query->passage and passage->query losses (the paper: "
                                    "query->passage only)")
    loss: str = option("fused", "fused (hbfast.contrastive_loss) or naive (plain PyTorch)", choices=LOSSES)
    mini_batch: int = option(0, "cached-embedding mode: embed this many rows at a time (0: off)")
    heldout: float = option(0.0, "fraction of items held out for early stopping (0: none)")
    eval_every: int = option(0, "held-out loss every N steps (0: never; with --heldout: steps / 10)")
    eval_batches: int = option(4, "held-out batches per evaluation")
    patience: int = option(0, "stop after this many held-out evaluations without improvement (0: never)")
    keep: int = option(0, "keep only the newest K checkpoints (0: all)")
    device: str | None = option(None, "torch device (default: cuda if available, under torchrun this rank's GPU)")
    bf16: bool = option(True, "no bf16 autocast of the encoder (default: on, on CUDA and on CPUs with "
                                  "AVX512-BF16 / AMX; the loss always takes float32)")
    progress: bool = option(True, "no progress bar (default: one progress bar)")
    world_size: int = option(1, "set by the loop from torch.distributed", cli=False)

    def __post_init__(self):
        if self.batch_type not in BATCH_TYPES:
            raise ValueError(f"batch type must be one of {list(BATCH_TYPES)}, got {self.batch_type!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "mini_batch", "eval_every", "eval_batches", "patience", "keep"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.warmup < 1.0 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("need 0 <= warmup < 1, lr > 0 and temperature > 0")

    @property
    def effective_alpha(self) -> float:
        forced = BATCH_TYPES[self.batch_type]
        return self.alpha if forced is None else forced

    @property
    def weights(self):
        if self.lang_weights in ("uniform", "size"):
            return self.lang_weights
        return [float(w) for w in self.lang_weights.split(",")]

    def run_defining(self) -> dict:
        values = dataclasses.asdict(self)
        values["alpha"] = self.effective_alpha
        return {k: values[k] for k in RUN_DEFINING}


@dataclasses.dataclass
class DataOptions:
    """What every training task reads of its data (text pairs, image captions)."""

    languages: str | None = option(None, "comma-separated subset of the data's languages (default: all)")
    max_length: int = option(128, "tokens per text")


@dataclasses.dataclass
class TextOptions(DataOptions):
    """The text dual encoder's options: ``train(config, **dataclasses.asdict(TextOptions(...)))``."""

    model: str | None = option(None, "sentence-transformers or transformers model: a local directory, or a hub "
                                     "id ('name' or 'org/name'); a value that exists locally, starts with "
                                     "/ ./ ../ ~, or has a second '/' is a directory, and a missing one is an "
                                     "error at once (default: the packaged all-MiniLM-L6-v2)")
    data: str = option("mlqa-r", "mlqa-r, xquad-r (bundled), a LAReQA directory, or a .jsonl/.csv/.parquet file "
                                 "with columns id, language, query, passage")
    pooling: str | None = option(None, "embedding pooling (default: the model's own, else mean)",
                                 choices=("mean", "cls"))
    prefixes: bool = option(False, 'prepend "Query: " / "Passage: " (as the paper)')
    dropout: float | None = option(None, "set every dropout probability of the model (default: the model's)")
    freeze_embeddings: bool = option(False, "freeze the word embeddings")
