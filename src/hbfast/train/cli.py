"""``hbfast train``, ``hbfast demo`` and ``hbfast sweep``: parsers built from ``TrainConfig`` and
``TextOptions`` (:mod:`hbfast.options`), and their runners."""
from __future__ import annotations

import dataclasses
import os

from ..options import add_dataclass_arguments, from_args
from .config import TextOptions, TrainConfig
from .sweep import SweepOptions, TextSweepOptions


def add_train_options(p, *, out_default: str, with_resume: bool = True, sweep: bool = False) -> None:
    """The text trainer's options: ``TrainConfig`` and ``TextOptions`` (a sweep: ``SweepOptions``' --alpha)."""
    exclude = ("alpha",) if sweep else ()
    add_dataclass_arguments(p, TextOptions)
    add_dataclass_arguments(p, TrainConfig, defaults={"out": out_default},
                            exclude=exclude + (() if with_resume else ("resume",)))


def run_train(args) -> int:
    from . import distributed, train

    try:
        summary = train(from_args(TrainConfig, args), **dataclasses.asdict(from_args(TextOptions, args)))
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


def add_commands(commands, *, sweep_task: str = "text") -> None:
    """train, demo and (for ``sweep_task`` "text") sweep; hbfast.clip.cli adds the clip ones."""
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
    de.add_argument("--out", default="hbfast-demo",
                    help="output directory: results.json, results.png, each run's model and log "
                         "(default: hbfast-demo; with --clip hbfast-demo-clip)")
    size = de.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a quick taste: fewer steps, a smaller evaluation (text demo: 2-3 minutes on 2 CPU cores)")
    size.add_argument("--full", action="store_true", help="evaluate on the whole XQuAD-R")
    de.add_argument("--steps", type=int, default=None, help="override the step budget (default: the demo's)")
    de.add_argument("--paragraphs", type=int, default=None,
                    help="override: first N XQuAD-R paragraphs per language (default: the demo's)")
    add_dataclass_arguments(de, TrainConfig, only=("device", "progress"))
    de.set_defaults(run=run_demo)

    sw = commands.add_parser(
        "sweep", help="train one run per alpha and plot every metric against alpha",
        description="Train one hybrid run per --alpha value (same seed and budget), evaluate each, write "
                    "OUT/sweep.json and OUT/sweep.png. The options shown are those of --task (text: these; "
                    "'hbfast sweep --task clip --help' for the image-text ones).")
    sw.add_argument("--task", default="text", choices=("text", "clip"),
                    help="text: text dual encoder runs (hbfast train's options); clip: image-text runs "
                         "(train-clip's options; --data synthetic runs the demo's task)")
    add_dataclass_arguments(sw, SweepOptions)
    if sweep_task == "text":
        add_train_options(sw, out_default="hbfast-sweep", with_resume=False, sweep=True)
        add_dataclass_arguments(sw, TextSweepOptions)
        sw.set_defaults(run=run_sweep)
