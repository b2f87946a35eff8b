"""The image-text commands: ``hbfast train-clip``, and the ``--clip`` / ``--task clip`` branches of
``hbfast demo`` and ``hbfast sweep``, added to the parsers ``hbfast.train.cli`` builds.

Exists so that the image-text options live beside the image-text code and the shared CLI only
calls :func:`add_clip_commands` once.
"""
from __future__ import annotations

import argparse

from ..train.cli import add_train_options
from .run import CLIP_DEFAULTS, add_clip_options


def run_train_clip(args) -> int:
    from ..train import distributed
    from .run import train_clip

    try:
        summary = train_clip(args)
    finally:
        distributed.cleanup()
    print(f"trained {summary['steps']} steps in {summary['seconds']:.1f} s (last loss {summary['last_loss']:.4f}); "
          f"model: {summary['final']}")
    for record in summary.get("evaluations", []):
        print(f"XTD at {record['at']} (step {record['step']}): t2i R@1 {record['t2i_r1']:.3f}, "
              f"i2t R@1 {record['i2t_r1']:.3f}, t2i R@10 {record['t2i_r10']:.3f}, mAP {record['map']:.3f}")
    return 0


def _wrap(parser: argparse.ArgumentParser, flag: str, clip_run) -> None:
    """Dispatch ``parser``'s command to ``clip_run`` when ``flag`` says so, else to its own runner."""
    own = parser.get_default("run")

    def run(args):
        return clip_run(args) if flag_set(args) else own(args)

    def flag_set(args):
        return bool(getattr(args, "clip", False)) if flag == "clip" else getattr(args, "task", "text") == "clip"

    parser.set_defaults(run=run)


def run_clip_demo(args) -> int:
    from .demo import run_clip_demo as demo

    out = args.out if args.out != "hbfast-demo" else "hbfast-demo-clip"
    demo(out, quick=args.quick, steps=args.steps, progress=not args.no_progress)
    return 0


def run_clip_sweep(args) -> int:
    from .sweep import run_clip_sweep as sweep

    sweep(args)
    return 0


def add_clip_commands(commands) -> None:
    tc = commands.add_parser(
        "train-clip", help="train a multilingual image-text dual encoder (CLIP / LiT) with hybrid batches",
        description="Train a text tower (and optionally the image tower) against images with hybrid batches; "
                    "--data is a JSONL/CSV/Parquet image-caption table (wide: image + one column per language; "
                    "long: image, language, caption). Writes OUT/checkpoint-<step>/, OUT/final/, OUT/log.jsonl "
                    "and, with --xtd-images, OUT/xtd.jsonl.")
    add_train_options(tc, out_default="hbfast-train-clip")
    add_clip_options(tc)
    tc.set_defaults(run=run_train_clip, **CLIP_DEFAULTS)

    demo = commands.choices.get("demo")
    if demo is not None:
        demo.add_argument("--clip", action="store_true",
                          help="the image-text demo instead (offline study: frozen synthetic-scene image tower + MiniLM, "
                               "3 seeds; default --out hbfast-demo-clip)")
        _wrap(demo, "clip", run_clip_demo)
    sweep = commands.choices.get("sweep")
    if sweep is not None:
        sweep.add_argument("--task", default="text", choices=("text", "clip"),
                           help="clip: image-text runs (train-clip options; without --data, or with --data synthetic, "
                                "the offline study of demo --clip)")
        add_clip_options(sweep, required=False)
        sweep.add_argument("--seeds", type=int, default=3,
                           help="clip, offline study (no --data or --data synthetic): seeds per alpha (default 3)")
        _wrap(sweep, "task", run_clip_sweep)
