"""The CLIP / LiT training loop: hybrid batches, AdamW with warmup and linear decay, atomic
checkpoints holding every piece of state, exact resume, DDP (gloo on CPU, NCCL on GPU) and XTD
evaluation of checkpoints.

Exists so that ``hbfast train-clip`` runs end to end on its own: the batch position comes from the
deterministic hybrid batch plan (seed, epoch), so a resumed run replays the same batches; the
fused loss gathers every rank's embeddings, so the negatives are the global batch's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .batches import ClipCollate, batch_alpha, clip_batch_loss

STATE_NAME = "trainer_state.pt"


@dataclasses.dataclass
class ClipTrainConfig:
    batch_type: str = "hybrid"
    alpha: float = 0.5
    batch_size: int = 32           # global batch (all ranks together)
    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1            # fraction of steps
    max_grad_norm: float = 1.0
    save_every: int = 0            # 0: only final/
    eval_every: int = 0            # 0: only at the end (when an evaluator is given)
    seed: int = 0
    loss: str = "contrastive"
    translation_weight: float = 0.0
    lang_weights: str = "uniform"
    keep_checkpoints: int = 0      # 0: keep all
    progress: bool = True


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(out: str | os.PathLike) -> Optional[Path]:
    found = [p for p in Path(out).glob("checkpoint-*") if p.is_dir() and (p / STATE_NAME).is_file()
             and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def _schedule(config: ClipTrainConfig):
    warmup = max(1, int(round(config.warmup * config.steps))) if config.warmup > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (config.steps - step) / max(1, config.steps - warmup))
    return factor


def _save_atomic(model, optimizer, scheduler, state: dict, target: Path) -> None:
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save(tmp)
        torch.save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state()}, tmp / STATE_NAME)
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train_clip(model, data, out: str | os.PathLike, config: ClipTrainConfig, *, features=None, resume: bool = False,
               evaluate: Optional[Callable] = None, log: Optional[Callable[[dict], None]] = None) -> dict:
    """Train ``model`` (:class:`~hbfast.clip.model.ClipDualEncoder`) on ``data`` (:class:`ImageTextData`).

    ``features``: cached image-tower features (frozen tower). ``evaluate(model) -> dict`` runs on
    rank 0 every ``eval_every`` steps and at the end (e.g. XTD). Writes ``out/checkpoint-<step>/``,
    ``out/final/`` and ``out/log.jsonl``; returns a summary dict.
    """
    import hbfast

    dist, rank, world = _dist()
    out = Path(out)
    if config.batch_size % world:
        raise ValueError(f"global batch size {config.batch_size} is not divisible by the {world} processes")
    if config.steps < 1:
        raise ValueError("steps must be >= 1")
    sampler = hbfast.HybridBatchSampler(data.availability, config.batch_size // world,
                                        alpha=batch_alpha(config.batch_type, config.alpha), seed=config.seed,
                                        lang_weights=config.lang_weights, rank=rank, world_size=world)
    collate = ClipCollate(data, model, features=features, translation_pairs=config.translation_weight > 0)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    step, epoch, position = 0, 0, 0
    torch.manual_seed(config.seed)
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise ValueError(f"--resume: no checkpoint-<step>/ with {STATE_NAME} in {out}")
        step, epoch, position = _load_checkpoint(model, optimizer, scheduler, checkpoint, config)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    log_file = out / "log.jsonl"
    history, evaluations, start = [], [], time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc=f"train-clip {config.batch_type}", unit="step",
               disable=not config.progress or rank != 0)
    model.train()
    while step < config.steps:
        sampler.set_epoch(epoch)
        if len(sampler) == 0:
            raise ValueError(f"batch size {config.batch_size} is larger than any {config.batch_type} batch the "
                             f"data can fill ({len(data)} images, {list(data.languages)})")
        batches = iter(sampler)
        for _ in range(position):
            next(batches)
        for rows in batches:
            batch = collate(rows)
            loss, parts = clip_batch_loss(model, batch, loss=config.loss, translation_weight=config.translation_weight,
                                          gather=dist is not None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if dist is not None:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= world
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100.0))  # CLIP's cap on the scale
            step, position = step + 1, position + 1
            record = {"step": step, "epoch": epoch, "loss": float(loss.detach()), **parts,
                      "mono": bool(rows[0][1] == rows[0][2]), "lr": scheduler.get_last_lr()[0],
                      "scale": float(model.logit_scale.detach().exp()), "seconds": time.perf_counter() - start}
            history.append(record)
            if rank == 0:
                with open(log_file, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if log is not None:
                    log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if config.save_every and step % config.save_every == 0 and step < config.steps:
                _checkpoint(model, optimizer, scheduler, out / f"checkpoint-{step}", step, epoch, position, config, dist, rank)
            if evaluate is not None and config.eval_every and step % config.eval_every == 0 and step < config.steps:
                evaluations.append(_evaluate(model, evaluate, step, out, rank, dist))
            if step >= config.steps:
                break
        else:
            epoch, position = epoch + 1, 0
    bar.close()
    if config.save_every:
        _checkpoint(model, optimizer, scheduler, out / f"checkpoint-{step}", step, epoch, position, config, dist, rank)
    if rank == 0:
        model.save(out / ".final-tmp")
        shutil.rmtree(out / "final", ignore_errors=True)
        os.replace(out / ".final-tmp", out / "final")
    if dist is not None:
        dist.barrier()
    if evaluate is not None:
        evaluations.append(_evaluate(model, evaluate, step, out, rank, dist))
    return {"steps": step, "epochs_started": epoch + 1, "seconds": time.perf_counter() - start,
            "final_loss": history[-1]["loss"] if history else None, "evaluations": evaluations}


def _checkpoint(model, optimizer, scheduler, target, step, epoch, position, config, dist, rank):
    if rank == 0:
        _save_atomic(model, optimizer, scheduler, {"step": step, "epoch": epoch, "position": position,
                                                   "config": dataclasses.asdict(config)}, target)
        if config.keep_checkpoints:
            done = sorted((p for p in target.parent.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                          key=lambda p: int(p.name.split("-")[-1]))
            for old in done[:-config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    if dist is not None:
        dist.barrier()


def _load_checkpoint(model, optimizer, scheduler, checkpoint: Path, config: ClipTrainConfig):
    try:
        state = torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=False)
        saved = type(model).load(checkpoint)
    except Exception as e:  # noqa: BLE001 - any unreadable piece makes the checkpoint unusable
        raise ValueError(f"checkpoint {checkpoint} is unreadable or incomplete: {e}") from None
    for key in ("batch_type", "alpha", "batch_size", "seed", "steps", "loss", "translation_weight"):
        if state["config"].get(key) != getattr(config, key):
            raise ValueError(f"checkpoint {checkpoint} was made with {key}={state['config'].get(key)!r}, "
                             f"this run has {key}={getattr(config, key)!r}")
    mine, theirs = model.state_dict(), saved.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        raise ValueError(f"checkpoint {checkpoint} does not match this model's architecture")
    model.load_state_dict(theirs)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state["step"], state["epoch"], state["position"]


def _evaluate(model, evaluate, step, out, rank, dist) -> dict:
    result = {}
    if rank == 0:
        model.eval()
        result = {"step": step, **evaluate(model)}
        model.train()
        with open(out / "eval.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
    if dist is not None:
        dist.barrier()
    return result
