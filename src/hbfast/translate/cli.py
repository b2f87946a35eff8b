"""``hbfast translate``'s options and run, kept out of hbfast.cli (which only registers the command)."""
from __future__ import annotations

import sys

from .tables import DEFAULT_CHUNK_SIZE


def add_translate_command(commands) -> None:
    p = commands.add_parser(
        "translate", help="add machine translations to training data (text pairs, caption tables, tar shards)",
        description="Add translations into the --to languages to a long text table (id, language, query, passage), "
                    "a caption table (wide: image + one column per language; long: image, language, caption) or "
                    "a directory of webdataset .tar shards (the captions of each KEY.json), with a transformers "
                    "translation model (Marian, NLLB, M2M100, mBART-50, madlad400). A stopped run rerun with the "
                    "same arguments keeps what is done; under torchrun each rank translates its share.")
    p.add_argument("--model", required=True, help="translation model: hub id or local directory")
    p.add_argument("--data", required=True,
                   help="a .jsonl/.csv/.parquet table, or tar shards (a directory, a .tar file, or 'dir/{000..009}.tar')")
    p.add_argument("--to", required=True, help="comma-separated target languages, e.g. de,fr,ja")
    p.add_argument("--out", required=True,
                   help="a table: the output file (.jsonl/.csv/.parquet; its chunks are kept in OUT.parts/); "
                        "shards: the output directory")
    p.add_argument("--from", dest="sources", default=None,
                   help="source language(s) in order of preference (default for long tables: each item's first "
                        "language; needed for wide tables and shards)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per generate call (batched by length)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per source text and per translation")
    p.add_argument("--num-beams", type=int, default=None, help="beam search width (default: the model's)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                   help="tables: distinct texts per chunk, the unit of resume and of the ranks' shares")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_translate)


def run_translate(args) -> int:
    from ..train import distributed
    from . import translate

    rank, world, device = distributed.setup(args.device)
    try:
        summary = translate(args.data, args.out, model=args.model, to=args.to, sources=args.sources,
                            batch_size=args.batch_size, max_length=args.max_length, num_beams=args.num_beams,
                            device=args.device or str(device), chunk_size=args.chunk_size, rank=rank, world=world,
                            barrier=distributed.barrier, progress=not args.no_progress)
        if "translated_shards" in summary:  # shards: every rank counted its own
            parts = distributed.gather_objects(summary)
            summary = {k: (v if k == "shards" else sum(p[k] for p in parts)) for k, v in summary.items()}
    finally:
        distributed.cleanup()
    if rank == 0:
        print(" ".join(f"{k} {v}" for k, v in summary.items()), file=sys.stderr)
        print(f"wrote {args.out}")
    return 0
