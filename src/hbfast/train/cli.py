"""``hbfast train``, ``hbfast demo`` and ``hbfast sweep``: argument parsing into ``TrainConfig``."""
from __future__ import annotations

import argparse
import os

from .config import BATCH_TYPES, LOSSES, TrainConfig, config_from, text_options


def add_train_options(p: argparse.ArgumentParser, *, out_default: str, with_resume: bool = True,
                      sweep: bool = False) -> None:
    d = TrainConfig()
    p.add_argument("--model", default=None,
                   help="sentence-transformers or transformers model directory or hub id "
                        "(default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--data", default="mlqa-r",
                   help="mlqa-r, xquad-r (bundled), a LAReQA directory, or a .jsonl/.csv/.parquet file with "
                        "columns id, language, query, passage (default: mlqa-r)")
    p.add_argument("--languages", default=None, help="comma-separated subset of the data's languages")
    p.add_argument("--batch-type", default=d.batch_type, choices=list(BATCH_TYPES))
    if sweep:
        p.add_argument("--alpha", default="0,0.25,0.5,0.75,1", help="comma-separated alphas, one run each")
    else:
        p.add_argument("--alpha", type=float, default=d.alpha, help="hybrid: probability of an X-X batch (default 0.5)")
    p.add_argument("--lang-weights", default=d.lang_weights, help="X-X language draw: uniform, size, or w1,w2,...")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (all processes)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every K steps (0: only final/)")
    p.add_argument("--out", default=out_default)
    if with_resume:
        p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (default 128)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--dropout", type=float, default=None, help="set every dropout probability of the model")
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of steps of linear warmup")
    p.add_argument("--clip", type=float, default=d.clip, help="max gradient norm (0: off)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--learnable-scale", action="store_true", help="learn the logit scale (CLIP)")
    p.add_argument("--symmetric", action="store_true", help="average the query->passage and passage->query losses")
    p.add_argument("--loss", default=d.loss, choices=LOSSES, help="fused (hbfast) or naive (plain PyTorch)")
    p.add_argument("--mini-batch", type=int, default=d.mini_batch,
                   help="cached-embedding mode: embed this many rows at a time (0: off)")
    p.add_argument("--heldout", type=float, default=d.heldout, help="fraction of items held out (early stopping)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out loss every N steps")
    p.add_argument("--eval-batches", type=int, default=d.eval_batches)
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many held-out evaluations without improvement (0: never)")
    p.add_argument("--keep", type=int, default=d.keep, help="keep the newest K checkpoints (0: all)")
    p.add_argument("--pooling", default=None, choices=("mean", "cls"), help="default: the model's own, else mean")
    p.add_argument("--prefixes", action="store_true", help='prepend "Query: " / "Passage: " (as the paper)')
    p.add_argument("--freeze-embeddings", action="store_true", help="freeze the word embeddings")
    p.add_argument("--device", default=None)
    p.add_argument("--no-bf16", action="store_true",
                   help="no bf16 autocast (on by default on CUDA and on CPUs with AVX512-BF16 / AMX)")
    p.add_argument("--no-progress", action="store_true")


def run_train(args) -> int:
    from . import distributed, train

    try:
        summary = train(config_from(args), **text_options(args))
    finally:
        distributed.cleanup()
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"trained {summary['steps']} steps in {summary['seconds']:.1f} s (last loss {summary['last_loss']:.4f}"
          f"{', stopped early' if summary['stopped_early'] else ''}); model: {summary['final']}")
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo

    demo(args)
    return 0


def run_sweep(args) -> int:
    from .sweep import run_sweep as sweep

    sweep(args)
    return 0


def add_commands(commands) -> None:
    tr = commands.add_parser(
        "train", help="train a dual encoder with hybrid batches (torchrun-ready)",
        description="Train a shared-weight dual encoder on parallel query/passage pairs with hybrid batches; "
                    "write OUT/checkpoint-<step>/ every --save-every steps and OUT/final/ "
                    "(sentence-transformers model directories) and OUT/log.jsonl.")
    add_train_options(tr, out_default="hbfast-train")
    tr.set_defaults(run=run_train)

    de = commands.add_parser(
        "demo", help="train X-X, X-Y and hybrid models on MLQA-R and compare them on XQuAD-R",
        description="The packaged all-MiniLM-L6-v2 trained on the bundled MLQA-R with X-X, X-Y and hybrid "
                    "(alpha 0.5) batches, each evaluated on the bundled XQuAD-R beside the untrained model.")
    de.add_argument("--out", default="hbfast-demo")
    size = de.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a quick taste: fewer steps, a smaller evaluation (text demo: 2-3 minutes on 2 CPU cores)")
    size.add_argument("--full", action="store_true", help="evaluate on the whole XQuAD-R")
    de.add_argument("--steps", type=int, default=None, help="override the step budget")
    de.add_argument("--paragraphs", type=int, default=None, help="override: first N XQuAD-R paragraphs per language")
    de.add_argument("--device", default=None)
    de.add_argument("--no-progress", action="store_true")
    de.set_defaults(run=run_demo)

    sw = commands.add_parser(
        "sweep", help="train one run per alpha and plot every metric against alpha",
        description="Train one hybrid run per --alpha value (same seed and budget), evaluate each on "
                    "--eval-data, write OUT/sweep.json and OUT/sweep.png.")
    add_train_options(sw, out_default="hbfast-sweep", with_resume=False, sweep=True)
    sw.add_argument("--eval-data", default="xquad-r", help="LAReQA dataset to evaluate on (default xquad-r)")
    sw.add_argument("--paragraphs", type=int, default=None, help="evaluate on the first N paragraphs per language")
    sw.set_defaults(run=run_sweep)
