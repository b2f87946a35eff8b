"""The training loop: plan -> collate -> encode -> loss -> step, for any ``TrainTask``.

Batches come from ``HybridBatchSampler`` over ``task.availability``; the loss is
``hbfast.contrastive_loss`` on L2-normalised embeddings (cosine similarity) with the batch's group
ids, or plain PyTorch (``loss="naive"``). AdamW with warmup and linear decay, gradient clipping,
bf16 autocast on CUDA and on CPUs with AVX512-BF16 / AMX (the loss takes float32), a held-out loss
for early stopping, a JSONL log and a progress bar.
With ``mini_batch > 0`` a step runs in the cached-embedding (GradCache) mode: embed mini-batches
without grad, take the loss and its embedding gradients over the whole batch, then re-embed each
mini-batch with grad (same RNG state, so the same dropout) and back-propagate those gradients.
Checkpoints hold everything needed to resume bit-exactly (``hbfast.train.checkpoint``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import reference
from ..ops import gemm
from ..ops.loss import ContrastiveLoss
from ..sampling import HybridBatchSampler
from . import checkpoint, distributed
from .config import TrainConfig
from .task import SIDES, Batch, TrainTask


def _naive_loss(criterion: ContrastiveLoss):
    def loss(q, p, group_ids):
        scale = None if criterion.logit_scale is None else criterion.logit_scale.clamp(max=math.log(criterion.max_scale))
        return reference.contrastive_loss(q, p, temperature=criterion.temperature, logit_scale=scale,
                                          symmetric=criterion.symmetric, group_ids=group_ids, normalize=True)
    return loss


def bf16_autocast_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is worth it on ``device``: CUDA, or a CPU with AVX512-BF16 / AMX (else it is slower)."""
    if device.type == "cuda":
        return True
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # torch >= 2.1
    return device.type == "cpu" and probe is not None and bool(probe())


def lr_schedule(warmup_steps: int, total: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total - step) / max(1, total - warmup_steps))
    return factor


def _rows(plan, index: int) -> list:
    keep = plan.items[index] >= 0
    return list(zip(plan.items[index][keep].tolist(), plan.query_lang[index][keep].tolist(),
                    plan.passage_lang[index][keep].tolist()))


class Trainer:
    """``Trainer(task, config, heldout=None).run()`` -> summary dict (``final``: the model directory)."""

    def __init__(self, task: TrainTask, config: TrainConfig, heldout: TrainTask | None = None):
        self.task, self.config, self.heldout = task, config, heldout
        self.rank, world, self.device = distributed.setup(config.device)
        config.world_size = world
        if config.batch_size % world:
            raise ValueError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                             f"number of processes ({world})")
        if config.loss == "naive" and world > 1:
            raise ValueError("--loss naive gathers no embeddings across processes; use the fused loss with torchrun")
        if config.heldout and config.eval_every == 0:
            config.eval_every = max(1, config.steps // 10)
        self.out = Path(config.out)
        self.local_batch = config.batch_size // world
        # A task without an availability table (a stream) plans its own batches: see _next_batch.
        self.sampler = None if task.availability is None else HybridBatchSampler(
            task.availability, self.local_batch, alpha=config.effective_alpha, seed=config.seed,
            lang_weights=config.weights, rank=self.rank, world_size=world)
        self.heldout_plan = None
        if heldout is not None and config.eval_every:
            try:
                self.heldout_plan = HybridBatchSampler(heldout.availability, self.local_batch,
                                                       alpha=config.effective_alpha, seed=config.seed,
                                                       lang_weights="size", rank=self.rank, world_size=world).plan
            except ValueError as e:
                raise ValueError(f"the held-out split ({len(heldout.availability)} items) cannot fill one batch of "
                                 f"{config.batch_size}: raise --heldout or lower --batch-size ({e})") from None
        torch.manual_seed(config.seed + self.rank)
        np.random.seed(config.seed + self.rank)
        self.bf16 = config.bf16 and bf16_autocast_supported(self.device)  # the loss always takes float32
        self.model = task.build_model().to(self.device)
        self.model.train()
        distributed.broadcast_parameters(self.model)
        self.criterion = ContrastiveLoss(temperature=config.temperature, learnable_scale=config.learnable_scale,
                                         symmetric=config.symmetric, gather=world > 1, normalize=True).to(self.device)
        self.loss_fn = _naive_loss(self.criterion) if config.loss == "naive" else (
            lambda q, p, g: self.criterion(q, p, group_ids=g))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.parameters = trainable + list(self.criterion.parameters())
        groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in trainable if p.ndim < 2] + list(self.criterion.parameters()),
                   "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr)
        warmup = int(config.warmup * config.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(warmup, config.steps))
        self.step, self.epoch, self.index = 0, 0, 0
        self.best, self.bad_evals, self.stopped = math.inf, 0, False

    # ---- one step ---------------------------------------------------------------------------------
    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _embed(self, batch: Batch, side: str, inputs):
        with self._autocast():
            return self.task.encode(self.model, side, inputs).float()

    def _rng(self):
        return (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)

    def _set_rng(self, state) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def _backward(self, batch: Batch) -> float:
        """Loss of ``batch`` and its gradients in ``.grad`` (plain or cached-embedding mode)."""
        inputs = {side: self.task.to_device(getattr(batch, side), self.device) for side in SIDES}
        groups = batch.group_ids.to(self.device)
        size = self.config.mini_batch
        if size == 0 or size >= len(batch):
            loss = self.loss_fn(self._embed(batch, "query", inputs["query"]),
                                self._embed(batch, "passage", inputs["passage"]), groups)
            loss.backward()
            return float(loss.detach())
        chunks = [(side, c) for side in SIDES for c in self.task.split(inputs[side], size)]
        states, parts = [], []
        with torch.no_grad():
            for side, c in chunks:
                states.append(self._rng())
                parts.append(self._embed(batch, side, c))
        after = self._rng()
        n_query = sum(1 for side, _ in chunks if side == "query")
        q = torch.cat(parts[:n_query]).requires_grad_()
        p = torch.cat(parts[n_query:]).requires_grad_()
        loss = self.loss_fn(q, p, groups)
        loss.backward()
        grads = list(q.grad.split([x.shape[0] for x in parts[:n_query]])) + \
            list(p.grad.split([x.shape[0] for x in parts[n_query:]]))
        for (side, c), state, grad in zip(chunks, states, grads):
            self._set_rng(state)
            self._embed(batch, side, c).backward(grad)
        self._set_rng(after)
        return float(loss.detach())

    def train_step(self, rows: list) -> float:
        batch = self.task.collate(rows)
        loss = self._backward(batch)
        distributed.average_gradients(self.parameters)
        if self.config.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return distributed.mean_scalar(loss, self.device)

    @torch.no_grad()
    def heldout_loss(self) -> float:
        self.model.eval()
        losses = []
        for index in range(min(self.config.eval_batches, len(self.heldout_plan))):
            batch = self.heldout.collate(_rows(self.heldout_plan, index))
            q = self._embed(batch, "query", self.heldout.to_device(batch.query, self.device))
            p = self._embed(batch, "passage", self.heldout.to_device(batch.passage, self.device))
            losses.append(float(self.loss_fn(q, p, batch.group_ids.to(self.device))))
        self.model.train()
        return distributed.mean_scalar(float(np.mean(losses)), self.device)

    # ---- checkpoints ------------------------------------------------------------------------------
    def _expect(self) -> dict:
        return {**self.config.run_defining(), "task": self.task.describe()}

    def _state(self) -> dict:
        return {"run": self._expect(), "step": self.step, "epoch": self.epoch, "index": self.index,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "criterion": self.criterion.state_dict(), "best": self.best, "bad_evals": self.bad_evals,
                "stopped": self.stopped, "gemm": gemm.loss_choices()}

    def save_checkpoint(self) -> Path:
        path = checkpoint.write(self.out, self.step, lambda d: self.task.save_model(self.model, d), self._state(),
                                rank=self.rank, barrier=distributed.barrier)
        if self.rank == 0:
            checkpoint.prune(self.out, self.config.keep)
        return path

    def resume(self) -> Path:
        path = checkpoint.latest(self.out)
        if path is None:
            raise ValueError(f"--resume: {self.out} holds no checkpoint-<step> directory to resume from")
        state, rng = checkpoint.read(path, self.rank, self._expect())
        try:
            self.task.load_model(self.model, path)
        except ValueError as e:
            raise checkpoint.CheckpointError(f"checkpoint {path}: {e}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.criterion.load_state_dict(state["criterion"])
        self.step, self.epoch, self.index = state["step"], state["epoch"], state["index"]
        self.best, self.bad_evals, self.stopped = state["best"], state["bad_evals"], state["stopped"]
        gemm.pin_loss_choices(state.get("gemm", {}))  # the loss's products of the run this continues
        checkpoint.set_rng_state(rng)
        return path

    # ---- the run ----------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _truncate_log(self) -> None:
        """Drop log lines past the resumed step (they were written after the checkpoint)."""
        log = self.out / "log.jsonl"
        if self.rank == 0 and log.is_file():
            lines = [x for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
            kept = [x for x in lines if json.loads(x).get("step", 0) <= self.step]
            log.write_text("".join(x + "\n" for x in kept), encoding="utf-8")

    def _batch_kind(self, plan, index: int) -> str:
        if plan.mono[index]:
            return f"X-X {self.task.languages[int(plan.query_lang[index][0])]}"
        return "X-Y"

    def _next_batch(self) -> tuple:
        """(rows, kind) of the next step from the sampler's plan (a new epoch when it runs out)."""
        if self.index >= len(self.sampler.plan):
            self.epoch, self.index = self.epoch + 1, 0
            self.sampler.set_epoch(self.epoch)
        plan, index = self.sampler.plan, self.index
        return _rows(plan, index), self._batch_kind(plan, index)

    def run(self) -> dict:
        cfg = self.config
        if cfg.resume:
            checkpoint.check_resume_directory(self.out)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoint.remove_partial(self.out)
        distributed.barrier()
        if cfg.resume:
            resumed = self.resume()
            self._truncate_log()
            if self.rank == 0:
                print(f"resumed from {resumed} (step {self.step})", flush=True)
        elif checkpoint.latest(self.out) is not None:
            raise ValueError(f"{self.out} already holds checkpoints; pass --resume to continue, or another --out")
        elif self.rank == 0 and (self.out / "log.jsonl").exists():
            (self.out / "log.jsonl").unlink()
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        start, t0 = self.step, time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.batch_type}", unit="step",
                   disable=not cfg.progress or self.rank != 0, dynamic_ncols=True)
        loss = math.nan
        while self.step < cfg.steps and not self.stopped:
            rows, kind = self._next_batch()
            loss = self.train_step(rows)
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss} at step {self.step + 1}; lower --lr")
            self.index += 1
            self.step += 1
            record = {"step": self.step, "loss": round(loss, 6), "lr": self.scheduler.get_last_lr()[0],
                      "batch": kind, "epoch": self.epoch,
                      "seconds": round(time.perf_counter() - t0, 3)}
            if self.heldout_plan is not None and self.step % cfg.eval_every == 0:
                record["heldout_loss"] = round(self.heldout_loss(), 6)
                if record["heldout_loss"] < self.best:
                    self.best, self.bad_evals = record["heldout_loss"], 0
                else:
                    self.bad_evals += 1
                    self.stopped = cfg.patience > 0 and self.bad_evals >= cfg.patience
            self._log(record)
            bar.set_postfix(loss=f"{loss:.4f}", **({"heldout": f"{record['heldout_loss']:.4f}"}
                                                   if "heldout_loss" in record else {}))
            bar.update(1)
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save_checkpoint()
        bar.close()
        final = self.out / "final"
        if self.rank == 0:
            tmp = self.out / ".tmp-final"
            shutil.rmtree(tmp, ignore_errors=True)
            self.task.save_model(self.model, tmp)
            summary = {"steps": self.step, "stopped_early": self.stopped, "last_loss": loss,
                       "best_heldout_loss": None if math.isinf(self.best) else self.best,
                       "seconds": time.perf_counter() - t0, "steps_this_session": self.step - start,
                       "config": dataclasses.asdict(cfg), "task": self.task.describe()}
            (tmp / "hbfast_train.json").write_text(json.dumps(summary, indent=2, default=str))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        distributed.barrier()
        return {"final": final, "steps": self.step, "stopped_early": self.stopped, "last_loss": loss,
                "seconds": time.perf_counter() - t0}
