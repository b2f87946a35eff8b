"""Every option of a training run, in one dataclass (the CLI, the demo and the sweep fill it)."""
from __future__ import annotations

import dataclasses

BATCH_TYPES = {"hybrid": None, "X-X": 1.0, "X-Y": 0.0}  # batch type -> the alpha it forces
LOSSES = ("fused", "naive")

# Fields that must match for --resume to continue a run (the rest may change between sessions).
RUN_DEFINING = ("batch_type", "alpha", "lang_weights", "batch_size", "steps", "seed", "lr", "warmup",
                "weight_decay", "clip", "temperature", "learnable_scale", "symmetric", "loss", "mini_batch",
                "heldout", "eval_every", "eval_batches", "patience", "world_size")


@dataclasses.dataclass
class TrainConfig:
    out: str = "hbfast-train"
    batch_type: str = "hybrid"  # hybrid | X-X | X-Y
    alpha: float = 0.5  # P(X-X batch) for hybrid
    lang_weights: str = "uniform"  # uniform | size | comma-separated weights
    batch_size: int = 32  # global batch (all ranks together)
    steps: int = 1000
    save_every: int = 0  # 0: only final/
    resume: bool = False
    seed: int = 0
    lr: float = 3e-5
    warmup: float = 0.1  # fraction of steps with linear warmup, then linear decay to 0
    weight_decay: float = 0.01
    clip: float = 1.0  # max gradient norm (0: no clipping)
    temperature: float = 0.05
    learnable_scale: bool = False
    symmetric: bool = False  # the paper: query -> passage only
    loss: str = "fused"  # fused (hbfast.contrastive_loss) | naive (plain PyTorch)
    mini_batch: int = 0  # > 0: cached-embedding mode, embedding this many rows at a time
    heldout: float = 0.0  # fraction of items held out for early stopping (0: none)
    eval_every: int = 0  # held-out loss every this many steps (0: never)
    eval_batches: int = 4  # held-out batches per evaluation
    patience: int = 0  # stop after this many held-out evaluations without improvement (0: never stop)
    keep: int = 0  # keep only the newest this many checkpoints (0: all)
    device: str | None = None
    bf16: bool = True  # bf16 autocast of the encoder on CUDA and on CPUs with AVX512-BF16 / AMX (else ignored)
    progress: bool = True
    world_size: int = 1  # set by the loop from torch.distributed

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


# ---- from parsed command-line arguments (train/cli.py, train/sweep.py, clip/run.py) ----------------

CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def config_from(args, **override) -> TrainConfig:
    values = {k: v for k, v in vars(args).items() if k in CONFIG_FIELDS}
    values.update(bf16=not args.no_bf16, progress=not args.no_progress, **override)
    values.pop("world_size", None)
    return TrainConfig(**values)


def text_options(args) -> dict:
    return {"model": args.model, "data": args.data, "languages": args.languages, "max_length": args.max_length,
            "pooling": args.pooling, "prefixes": args.prefixes, "dropout": args.dropout,
            "freeze_embeddings": args.freeze_embeddings}
