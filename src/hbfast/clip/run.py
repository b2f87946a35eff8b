"""``hbfast train-clip``: data, towers, LiT cache and XTD evaluation put together for one run.

Exists to keep the CLI thin: it resolves where the image side comes from (pixels through an
unfrozen tower, cached features of a frozen tower, or precomputed embedding shards), builds the
``ClipTask`` and runs the ``ClipTrainer`` with an XTD evaluator when XTD images are given.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..options import from_args, option
from ..train.config import DataOptions, TrainConfig

# train-clip's own defaults of the trainer's options (which keep their names and meaning).
CLIP_DEFAULTS = {"temperature": 0.07, "lr": 1e-4}


@dataclasses.dataclass
class ClipOptions(DataOptions):
    """train-clip's options beside the trainer's (``TrainConfig``); ``train_clip`` reads them from the
    parsed arguments."""

    data: str | None = option(None, "image-caption table (.jsonl/.csv/.parquet; wide: image + one column per "
                                    "language; long: image, language, caption) or tar shards (a directory or "
                                    "'dir/{000..099}.tar'); sweep --task clip: 'synthetic' for the demo's task "
                                    "(default: none; train-clip requires it)")
    image_model: str | None = option(None, "transformers vision model or CLIP/SigLIP model (directory or hub id; "
                                           "default: none, then --image-embeddings)")
    text_model: str | None = option(None, "transformers text encoder or CLIP model (directory or hub id; "
                                          "default: none; train-clip requires it)")
    image_embeddings: str | None = option(None, "precomputed image embeddings (.npy / parquet file or directory of "
                                                "shards), row for row with --data; no image tower is then loaded "
                                                "(default: none)")
    unfreeze_image: bool = option(False, "train the image tower too (full CLIP fine-tuning)")
    no_cache: bool = option(False, "frozen tower: recompute image features every step")
    cache_dir: str | None = option(None, "LiT image feature cache (default: OUT/image-cache)")
    dim: int = option(512, "shared embedding dimension of the projections")
    text_pooling: str = option("mean", "text tower pooling", choices=("mean", "cls", "pooler"))
    translation_weight: float = option(0.0, "weight of the text-text loss of X-Y rows' caption pairs (0: off)")
    image_text_loss: str = option("contrastive", "contrastive: CLIP's symmetric softmax loss; sigmoid: SigLIP's "
                                                 "pairwise sigmoid loss with a learnable scale (init 10) and bias "
                                                 "(init -10)", choices=("contrastive", "sigmoid"))
    stream: bool = option(False, "stream --data tar shards ('dir/{000..099}.tar' or a directory): each rank reads "
                                 "its own shards into a bounded buffer; resumable at shard granularity")
    stream_buffer: int = option(4096, "--stream: samples each rank keeps buffered")
    on_corrupt: str = option("skip", "tar shards: skip a corrupt shard (logged, counted) or stop with an error",
                             choices=("skip", "fail"))
    xtd_images: str | None = option(None, "COCO images of XTD: evaluate every checkpoint and the final model "
                                          "(default: no evaluation)")
    xtd_data: str | None = option(None, "XTD captions directory (default: downloaded once)")
    xtd_languages: str | None = option(None, "comma-separated XTD languages (default: all)")


def xtd_metrics(result) -> dict:
    """Mean over languages of R@1, R@10 and mAP in both directions, with the same per language."""
    def row(lang):
        t2i, i2t = result.text_to_image[lang], result.image_to_text[lang]
        return {"t2i_r1": t2i["R@1"], "i2t_r1": i2t["R@1"], "t2i_r10": t2i["R@10"], "i2t_r10": i2t["R@10"],
                "map": t2i["mAP"], "i2t_map": i2t["mAP"]}
    per = {lang: row(lang) for lang in result.languages}
    mean = {k: float(sum(p[k] for p in per.values()) / len(per)) for k in next(iter(per.values()))}
    return {**mean, "per_language": per}


def xtd_evaluator(dataset, *, batch_size: int = 64):
    """``model -> metrics`` on an XTD-shaped dataset (:func:`hbfast.data.load_xtd` or the synthetic one)."""
    from ..eval import evaluate_xtd

    def evaluate(model) -> dict:
        return xtd_metrics(evaluate_xtd(dataset, model.text_encoder(), model.image_encoder(batch_size),
                                        progress=False))
    return evaluate


def _is_shards(data: str) -> bool:
    path = Path(data)
    if path.is_dir():
        return any(p.name.endswith((".tar", ".tar.gz", ".tgz")) for p in path.iterdir())
    return path.name.endswith((".tar", ".tar.gz", ".tgz"))


def train_clip(args: argparse.Namespace) -> dict:
    """Run ``hbfast train-clip`` from parsed arguments; returns the trainer's summary."""
    from . import cache, model as clip_model
    from ..train import distributed
    from .data import load_image_text_table
    from .task import ClipTask, ClipTrainer

    if args.stream:
        return _train_clip_streamed(args)
    languages = args.languages
    image_model = args.image_model
    if image_model is None and args.image_embeddings is None:
        raise ValueError("give --image-model (a transformers vision / CLIP model) or --image-embeddings")
    features = None
    if args.image_embeddings is not None:
        features = cache.load_precomputed_embeddings(args.image_embeddings)
        width = features.shape[1]
    else:
        width = None
    torch.manual_seed(args.seed)  # the projection heads' initialisation is part of the run
    model = clip_model.build_clip_model(image_model, args.text_model, dim=args.dim,
                                        freeze_image=not args.unfreeze_image, image_width=width,
                                        text_pooling=args.text_pooling, max_length=args.max_length,
                                        image_text_loss=args.image_text_loss)
    if _is_shards(args.data):
        from .shards import shards_to_table

        if features is not None:
            raise ValueError("shards carry their own images or embeddings; do not combine them with --image-embeddings")
        data = shards_to_table(args.data, languages, on_corrupt=args.on_corrupt)
    elif features is not None:
        data = load_image_text_table(args.data, languages, features=features)
    else:
        data = load_image_text_table(args.data, languages)
        if not args.unfreeze_image and not args.no_cache:
            cache_dir = args.cache_dir or os.path.join(args.out, "image-cache")
            rank = distributed.setup(args.device)[0]  # rank 0 fills the cache, the others then read it
            if rank != 0:
                distributed.barrier()
            features = cache.cached_image_features(model, data, cache_dir, model_name=str(image_model),
                                                   progress=not args.no_progress and rank == 0)
            if rank == 0:
                distributed.barrier()
    print(data, flush=True)
    evaluate = None
    if args.xtd_images is not None:
        from ..data import load_xtd

        evaluate = xtd_evaluator(load_xtd(args.xtd_data, images=args.xtd_images, languages=args.xtd_languages))
    task = ClipTask(data, model, features=features, translation_pairs=args.translation_weight > 0,
                    name=f"{image_model or 'precomputed'} + {args.text_model}")
    config = from_args(TrainConfig, args, symmetric=True, learnable_scale=True)
    trainer = ClipTrainer(task, config, translation_weight=args.translation_weight, evaluate=evaluate,
                          image_text_loss=args.image_text_loss)
    return trainer.run()


def _first_embedding_width(shards) -> int:
    from .shards import read_shard

    for path in shards:
        try:
            for sample in read_shard(path):
                if "npy" in sample:
                    return int(np.asarray(sample["npy"]).size)
        except (OSError, ValueError, EOFError, tarfile.TarError):
            continue
    raise ValueError(f"no npy image embedding in the shards {shards[:3]}: give --image-model to decode their images")


def _train_clip_streamed(args: argparse.Namespace) -> dict:
    """``train-clip --stream``: each rank streams its own shards (see :mod:`hbfast.clip.stream`)."""
    from . import model as clip_model
    from ..train import distributed
    from .stream import StreamClipTask, StreamingHybridBatches, expand_shards
    from .task import ClipTrainer

    if args.image_embeddings is not None:
        raise ValueError("--stream reads images or npy embeddings from the shards; do not give --image-embeddings")
    if args.unfreeze_image is False and args.image_model is not None and not args.no_cache:
        print("--stream: image features are computed every step (the LiT cache needs the whole data set); "
              "shards with npy embeddings avoid the image tower", flush=True)
    if not args.languages:
        raise ValueError("--stream needs --languages (the shards are not read ahead to find them)")
    languages = [x for x in args.languages.split(",") if x] if isinstance(args.languages, str) else list(args.languages)
    shards = expand_shards(args.data)
    embeddings = args.image_model is None
    width = _first_embedding_width(shards) if embeddings else None
    torch.manual_seed(args.seed)
    model = clip_model.build_clip_model(args.image_model, args.text_model, dim=args.dim,
                                        freeze_image=not args.unfreeze_image, image_width=width,
                                        text_pooling=args.text_pooling, max_length=args.max_length,
                                        image_text_loss=args.image_text_loss)
    evaluate = None
    if args.xtd_images is not None:
        from ..data import load_xtd

        evaluate = xtd_evaluator(load_xtd(args.xtd_data, images=args.xtd_images, languages=args.xtd_languages))
    task = StreamClipTask(model, languages, translation_pairs=args.translation_weight > 0, embeddings=embeddings,
                          name=f"{args.image_model or 'shard embeddings'} + {args.text_model}", shards=len(shards))
    config = from_args(TrainConfig, args, symmetric=True, learnable_scale=True)
    rank, world, device = distributed.setup(args.device)
    if config.batch_size % world:
        raise ValueError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                         f"number of processes ({world})")
    stream = StreamingHybridBatches(shards, languages, config.batch_size // world, alpha=config.effective_alpha,
                                    seed=config.seed, rank=rank, world_size=world, buffer_size=args.stream_buffer,
                                    on_corrupt=args.on_corrupt, embeddings=embeddings,
                                    agree=lambda ok: distributed.all_true(ok, device))
    print(f"streaming {len(shards)} shard(s), {world} process(es), buffer {args.stream_buffer} samples", flush=True)
    trainer = ClipTrainer(task, config, translation_weight=args.translation_weight, evaluate=evaluate,
                          image_text_loss=args.image_text_loss, stream=stream)
    summary = trainer.run()
    summary["corrupt_shards"] = sum(distributed.gather_objects(stream.corrupt))
    if rank == 0 and summary["corrupt_shards"]:
        print(f"skipped {summary['corrupt_shards']} corrupt shard(s) (read passes x shards; see the log)", flush=True)
    return summary
