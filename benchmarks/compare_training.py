"""Training throughput (pairs/s) and peak memory: hbfast's trainer (fused loss, and --loss naive)
against sentence-transformers' SentenceTransformerTrainer (MultipleNegativesRankingLoss; the cached
variant for the large batch), same model (packaged all-MiniLM-L6-v2), data (MLQA-R pairs), batch
size and max length, in one run. Each measurement runs in its own process (peak memory = that
process's peak RSS, or peak CUDA memory on a GPU); time counts the steps after the first (the
only step when there is one).

    python benchmarks/compare_training.py                       # demo config and batch 4096 (cached)
    python benchmarks/compare_training.py --steps 4 --large-steps 2 --large-length 16
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _pairs(n: int, seed: int = 0):
    """n (query, passage) pairs from MLQA-R, as hbfast's X-Y plan draws them (for the ST trainer)."""
    import hbfast
    from hbfast.data.pairs import load_pairs

    pairs = load_pairs("mlqa-r")
    plan = hbfast.hybrid_batches(pairs.availability, 256, alpha=0.5, seed=seed)
    rows = [(int(i), int(q), int(p)) for b in range(len(plan)) for i, q, p in
            zip(plan.items[b], plan.query_lang[b], plan.passage_lang[b])]
    rows = (rows * (1 + n // len(rows)))[:n]
    return ([pairs.queries[pairs.languages[q]][i] for i, q, _ in rows],
            [pairs.passages[pairs.languages[p]][i] for i, _, p in rows])


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(times: list) -> dict:
    """Seconds of the steps after the first (of the only step when there is one)."""
    timed = times[1:] or times
    return {"seconds": sum(timed), "timed_steps": len(timed)}


def run_hbfast(spec: dict) -> dict:
    from hbfast.train import TrainConfig, Trainer, text_tasks
    from hbfast.train.loop import _rows

    cfg = TrainConfig(out=spec["out"], steps=spec["steps"], batch_size=spec["batch"], lr=1e-5, progress=False,
                      loss=spec["loss"], mini_batch=spec["mini_batch"], device=spec["device"])
    task, _ = text_tasks(cfg, data="mlqa-r", max_length=spec["length"])
    trainer = Trainer(task, cfg)
    plan, times = trainer.sampler.plan, []
    for step in range(spec["steps"]):
        start = time.perf_counter()
        trainer.train_step(_rows(plan, step % len(plan)))
        times.append(time.perf_counter() - start)
    return {**_timed(times), "peak_mb": _peak_mb(str(trainer.device))}


def run_st(spec: dict) -> dict:
    import datasets
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    import hbfast

    device = spec["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    model = SentenceTransformer(str(hbfast.encoders.packaged_model_path()), device=device)
    model.max_seq_length = spec["length"]
    queries, passages = _pairs(spec["batch"] * spec["steps"])
    data = datasets.Dataset.from_dict({"anchor": queries, "positive": passages})
    loss = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=spec["mini_batch"]) if spec["mini_batch"]
            else MultipleNegativesRankingLoss(model))
    times = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            times.append(-time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            times[-1] += time.perf_counter()

    args = SentenceTransformerTrainingArguments(
        output_dir=spec["out"], per_device_train_batch_size=spec["batch"], max_steps=spec["steps"], learning_rate=1e-5,
        warmup_ratio=0.0, weight_decay=0.01, report_to="none", save_strategy="no", logging_strategy="no",
        dataloader_drop_last=True, use_cpu=device == "cpu", bf16=device.startswith("cuda"), disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[Stamp()])
    trainer.train()
    return {**_timed(times), "peak_mb": _peak_mb(device)}


def child(spec: dict) -> None:
    result = (run_st if spec["impl"] == "st" else run_hbfast)(spec)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="demo config: steps per measurement (first untimed)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--large-batch", type=int, default=4096)
    parser.add_argument("--large-steps", type=int, default=2)
    parser.add_argument("--large-length", type=int, default=16)
    parser.add_argument("--mini-batch", type=int, default=256, help="large batch: rows embedded at a time")
    parser.add_argument("--device", default=None)
    parser.add_argument("--only", default=None, help="comma-separated subset: demo, large")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    import tempfile

    configs = {"demo": (args.batch, args.length, args.steps, 0),
               "large": (args.large_batch, args.large_length, args.large_steps, args.mini_batch)}
    wanted = args.only.split(",") if args.only else list(configs)
    impls = [("hbfast (fused)", "hbfast", "fused"), ("hbfast --loss naive", "hbfast", "naive"),
             ("sentence-transformers", "st", None)]
    print(f"{'config':<34} {'implementation':<24} {'pairs/s':>9} {'peak MB':>9} {'vs hbfast':>10}", flush=True)
    for name in wanted:
        batch, length, steps, mini = configs[name]
        label = f"{name}: B={batch} L={length}" + (f" cached M={mini}" if mini else "")
        base = None
        for title, impl, loss in impls:
            with tempfile.TemporaryDirectory() as out:
                spec = {"impl": impl, "loss": loss, "batch": batch, "length": length, "steps": steps,
                        "mini_batch": mini, "device": args.device, "out": out}
                done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                      text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                print(f"{label:<34} {title:<24} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(lines[-1][7:])
            rate = batch * r["timed_steps"] / r["seconds"]
            base = base or rate
            st_name = title if impl != "st" else ("ST + CachedMNRL" if mini else "ST + MNRL")
            print(f"{label:<34} {st_name:<24} {rate:9.1f} {r['peak_mb']:9.0f} {rate / base:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
