"""The image-text commands: ``hbfast train-clip``, and the ``--clip`` / ``--task clip`` branches of
``hbfast demo`` and ``hbfast sweep``, added to the parsers ``hbfast.train.cli`` builds.

Exists so that the image-text options live beside the image-text code and the shared CLI only
calls :func:`add_clip_commands` once.
"""
from __future__ import annotations

from ..options import add_dataclass_arguments
from ..train.config import TrainConfig
from .run import CLIP_DEFAULTS, ClipOptions
from .sweep import ClipSweepOptions


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


def add_clip_run_options(p, *, out_default: str, sweep: bool = False) -> None:
    """An image-text run's options: the trainer's (train-clip's defaults) and ``ClipOptions``."""
    exclude = ("alpha", "resume") if sweep else ()
    add_dataclass_arguments(p, TrainConfig, exclude=exclude, defaults={"out": out_default, **CLIP_DEFAULTS})
    add_dataclass_arguments(p, ClipOptions, required=() if sweep else ("data", "text_model"))


def run_clip_demo(args) -> int:
    from .demo import run_clip_demo as demo

    out = args.out if args.out != "hbfast-demo" else "hbfast-demo-clip"
    demo(out, quick=args.quick, steps=args.steps, progress=not args.no_progress)
    return 0


def run_clip_sweep(args) -> int:
    from .sweep import run_clip_sweep as sweep

    sweep(args)
    return 0


def add_clip_commands(commands, *, sweep_task: str = "text") -> None:
    tc = commands.add_parser(
        "train-clip", help="train a multilingual image-text dual encoder (CLIP / LiT) with hybrid batches",
        description="Train a text tower (and optionally the image tower) against images with hybrid batches; "
                    "--data is a JSONL/CSV/Parquet image-caption table (wide: image + one column per language; "
                    "long: image, language, caption). Writes OUT/checkpoint-<step>/, OUT/final/, OUT/log.jsonl "
                    "and, with --xtd-images, OUT/xtd.jsonl.")
    add_clip_run_options(tc, out_default="hbfast-train-clip")
    tc.set_defaults(run=run_train_clip)

    demo = commands.choices.get("demo")
    if demo is not None:
        demo.add_argument("--clip", action="store_true",
                          help="the image-text demo instead (offline study: frozen synthetic-scene image tower + MiniLM, "
                               "3 seeds; default --out hbfast-demo-clip)")
        text_demo = demo.get_default("run")
        demo.set_defaults(run=lambda args: run_clip_demo(args) if args.clip else text_demo(args))
    sweep = commands.choices.get("sweep")
    if sweep is not None and sweep_task == "clip":
        add_clip_run_options(sweep, out_default="hbfast-sweep", sweep=True)
        add_dataclass_arguments(sweep, ClipSweepOptions)
        sweep.set_defaults(run=run_clip_sweep)
