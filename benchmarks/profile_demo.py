"""Where ``hbfast demo``'s time goes: one training run and one evaluation, part by part, wall and CPU.

Exists to choose the demo's budget (docs/demo.md) by measurement: loading and tokenising, each
step's forward / loss / backward / optimizer, saving, and the evaluation's model load, encoding
and search + metrics. ``--bf16`` runs the training step under CPU bf16 autocast (as the trainer
does where the CPU has AVX512-BF16 / AMX), ``--eval-bf16`` the evaluation encoding too.
CPU seconds are the process's (all threads): on a loaded box, 2 threads spin while waiting for
each other and inflate them; ``--threads 1`` gives a cleaner per-core figure.

    python benchmarks/profile_demo.py --steps 8 [--bf16] [--threads 1] [--paragraphs 48] [--skip-eval]
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import torch

PARTS: dict[str, list[float]] = {}


@contextlib.contextmanager
def part(name: str):
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    total = PARTS.setdefault(name, [0.0, 0.0])
    total[0] += time.perf_counter() - wall
    total[1] += time.process_time() - cpu


def bf16(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--paragraphs", type=int, default=48)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--bf16", action="store_true", help="training step under CPU bf16 autocast")
    ap.add_argument("--eval-bf16", action="store_true", help="evaluation encoding under CPU bf16 autocast")
    ap.add_argument("--skip-eval", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from hbfast import encoders
    from hbfast.data import load_lareqa
    from hbfast.eval import lareqa_from_embeddings
    from hbfast.train import TrainConfig, Trainer, text_tasks

    out = tempfile.mkdtemp(prefix="hbfast-profile-")
    with part("load pairs + model + tokenise"):
        cfg = TrainConfig(out=out, batch_type="hybrid", alpha=0.5, batch_size=a.batch_size, steps=a.steps,
                          lr=1e-4, seed=0, progress=False, device="cpu", bf16=False)
        task, _ = text_tasks(cfg, data="mlqa-r", max_length=a.max_length)
        trainer = Trainer(task, cfg)
    trainer.sampler.set_epoch(0)
    plan = trainer.sampler.plan
    for index in range(a.steps):
        keep = plan.items[index] >= 0
        rows = list(zip(plan.items[index][keep].tolist(), plan.query_lang[index][keep].tolist(),
                        plan.passage_lang[index][keep].tolist()))
        with part("collate"):
            batch = task.collate(rows)
        with part("forward"), bf16(a.bf16):
            q = task.encode(trainer.model, "query", batch.query).float()
            p = task.encode(trainer.model, "passage", batch.passage).float()
        with part("loss"):
            loss = trainer.loss_fn(q, p, batch.group_ids)
        with part("backward"):
            loss.backward()
        with part("clip + optimizer"):
            torch.nn.utils.clip_grad_norm_(trainer.parameters, 1.0)
            trainer.optimizer.step()
            trainer.scheduler.step()
            trainer.optimizer.zero_grad(set_to_none=True)
    with part("save model"):
        task.save_model(trainer.model, f"{out}/final")
    if not a.skip_eval:
        with part("eval: load XQuAD-R"):
            ds = load_lareqa("xquad-r").head(a.paragraphs)
        with part("eval: load model"):
            query, passage = encoders.load_text_encoders(f"{out}/final", backend="sentence-transformers",
                                                         batch_size=64, progress=False)
        with part("eval: encode"), bf16(a.eval_bf16):
            qs = {x: query(ds.questions[x].data.column("question").to_pylist()) for x in ds.languages}
            cs = {x: passage(ds.candidates[x].data.column("text").to_pylist()) for x in ds.languages}
        with part("eval: search + metrics"):
            r = lareqa_from_embeddings(ds, qs, cs)
        texts = sum(len(v) for v in qs.values()) + sum(len(v) for v in cs.values())
        print(f"eval on {texts} texts: mono {r.mono_mean:.3f} cross {r.cross_mean:.3f} multi {r.multi:.3f} "
              f"rank distance {r.rank_distance:.1f}")
    print(f"{torch.get_num_threads()} threads, bf16 {a.bf16}, eval bf16 {a.eval_bf16}, {a.steps} steps of "
          f"{a.batch_size} at max length {a.max_length}")
    for name, (wall, cpu) in PARTS.items():
        print(f"  {name:<30} wall {wall:7.2f} s  cpu {cpu:7.2f} s")
    print(f"  {'total':<30} wall {sum(v[0] for v in PARTS.values()):7.2f} s  "
          f"cpu {sum(v[1] for v in PARTS.values()):7.2f} s")


if __name__ == "__main__":
    main()
