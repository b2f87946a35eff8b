"""``hbfast encode``, ``hbfast search`` and ``hbfast eval --index``: the command line of shard
directories, in one process or under torchrun (this module keeps them out of hbfast.cli, which only
registers them).

Under torchrun every rank runs the same command: ``encode`` splits the shards between the ranks;
``search`` and ``eval`` give each rank its run of shards (hbfast.ShardedIndex) and rank 0 writes the
files, which are the same as one process writes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

PACKAGED_MODEL = "all-MiniLM-L6-v2"
EVAL_METRICS = ("ndcg@10", "recall@100", "map", "mrr")


def _model_options(p, *, model_help: str) -> None:
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--backend", default="auto", choices=("auto", "sentence-transformers", "transformers"),
                   help="model library (auto: sentence-transformers if the model has modules.json)")
    p.add_argument("--pooling", default="mean", choices=("mean", "cls"), help="transformers backend pooling")
    p.add_argument("--prefixes", action="store_true", help='prepend "Query: " / "Passage: "')
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's)")


def add_index_options(p) -> None:
    """The options of searching a shard directory (``search`` and ``eval --index``)."""
    p.add_argument("--memory-budget", default="1GiB",
                   help="memory each process may use for corpus tiles and search state (default 1GiB)")
    p.add_argument("--k", type=int, default=100, help="documents per query in the run (default 100)")
    p.add_argument("--tag", default="hbfast", help="run tag (last column of the run file)")


def add_shard_commands(commands) -> None:
    from .shards import DEFAULT_ROWS_PER_SHARD, DTYPES

    en = commands.add_parser(
        "encode", help="encode a corpus into a shard directory (resumable, torchrun-ready)",
        description="Encode a corpus into OUT: one .npy per --rows-per-shard rows, ids.jsonl and manifest.json. "
                    "A stopped run rerun with the same arguments keeps the finished shards; under torchrun each "
                    "rank encodes its share of the shards.")
    en.add_argument("--corpus", required=True,
                    help="xquad-r / mlqa-r (bundled), a BEIR directory, a .jsonl/.csv/.tsv/.parquet file with "
                         "columns id and text, or a saved datasets table")
    en.add_argument("--out", required=True, help="the shard directory")
    en.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD)
    en.add_argument("--dtype", default="float16", choices=DTYPES)
    en.add_argument("--metric", default="cosine", choices=("cosine", "ip", "l2"),
                    help="the similarity recorded in the manifest for search (default cosine)")
    _model_options(en, model_help="model directory or hub id (default: the packaged all-MiniLM-L6-v2)")
    en.add_argument("--no-progress", action="store_true")
    en.set_defaults(run=run_encode)

    se = commands.add_parser(
        "search", help="exact top-k over a shard directory into a TREC run file (torchrun-ready)",
        description="Search a shard directory (hbfast encode / hbfast.write_shards) with exact top-k and write a "
                    "TREC run file 'qid Q0 docid rank score tag' (for l2 the score is minus the squared distance). "
                    "Under torchrun each rank searches its shards and rank 0 writes the same file as one process.")
    se.add_argument("--index", required=True, help="the shard directory")
    se.add_argument("--queries", required=True,
                    help="a .npy of query embeddings [nq, dim] (query ids 0..nq-1), or a text table "
                         "(.jsonl/.csv/.tsv/.parquet with id and text, or a BEIR directory) encoded with --model")
    se.add_argument("--out", required=True, help="the run file to write")
    se.add_argument("--metric", default=None, choices=("cosine", "cos", "ip", "l2"),
                    help="similarity (default: the manifest's, else ip)")
    add_index_options(se)
    _model_options(se, model_help="query encoder for a text table (default: the index's model, else the packaged one)")
    se.add_argument("--no-progress", action="store_true")
    se.set_defaults(run=run_search)


# ---- shared pieces ---------------------------------------------------------------------------------
def _encoder(args, *, query: bool, model):
    from . import encoders

    q, p = encoders.load_text_encoders(model, backend=args.backend, pooling=args.pooling, prefixes=args.prefixes,
                                       batch_size=args.batch_size, device=args.device, progress=False)
    enc = q if query else p
    if getattr(args, "max_length", None) is not None:
        if hasattr(enc, "max_length"):
            enc.max_length = getattr(args, "max_length")
        else:
            enc.model.max_seq_length = getattr(args, "max_length")
    return enc


def _query_model(args, shards):
    if args.model is not None:
        return args.model
    hint = shards.model
    return None if not hint or hint == PACKAGED_MODEL else hint


def _load_queries(args, source, shards, rank: int, keep=None):
    """(query ids, float32 [nq, dim]) read (and encoded) on rank 0 and broadcast: every rank searches with
    the same queries. keep: query ids to keep (e.g. the judged ones), in file order."""
    from . import sharded
    from .encode_shards import load_texts

    payload = None
    if rank == 0:
        try:
            if str(source).endswith(".npy"):
                q = np.load(source, allow_pickle=False)
                if q.ndim != 2 or q.dtype.kind != "f":
                    raise ValueError(f"{source}: expected a float array [nq, dim], got {q.dtype} {q.shape}")
                qids = [str(i) for i in range(len(q))]
            else:
                qids, texts = load_texts(source, what="queries")
                if keep is not None:
                    rows = [i for i, d in enumerate(qids) if d in keep]
                    qids, texts = [qids[i] for i in rows], [texts[i] for i in rows]
                q = None
                if texts:
                    from .eval import encode

                    q = encode(_encoder(args, query=True, model=_query_model(args, shards)), texts, "queries").numpy()
            if keep is not None and str(source).endswith(".npy"):
                rows = [i for i, d in enumerate(qids) if d in keep]
                qids, q = [qids[i] for i in rows], q[rows]
            if not qids:
                raise ValueError(f"{source}: no queries{' with a judgement' if keep is not None else ''}")
            if q.shape[1] != shards.dim:
                raise ValueError(f"queries have dim {q.shape[1]}, the index {shards.directory} has dim {shards.dim} "
                                 "(another model?)")
            payload = ("ok", qids, np.ascontiguousarray(q, dtype=np.float32))
        except (ValueError, OSError, ImportError) as e:
            payload = ("error", f"{type(e).__name__}: {e}", None)
    _, world = sharded.group()
    if world > 1:
        import torch.distributed as dist

        box = [payload]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
    if payload[0] == "error":
        raise ValueError(f"queries: {payload[1]}")
    return payload[1], payload[2]


def _index(args, progress: bool):
    from .shards import open_shards
    from .sharded import ShardedIndex

    shards = open_shards(args.index)
    metric = args.metric or shards.metric or "ip"
    return ShardedIndex(shards, metric=metric, memory_budget=args.memory_budget, progress=progress)


def _run_scores(index, scores: np.ndarray) -> np.ndarray:
    """Run-file scores: higher is better (minus the squared distance for l2)."""
    return -scores if index.metric == "l2" else scores


# ---- commands --------------------------------------------------------------------------------------
def run_encode(args) -> int:
    from .encode_shards import encode_to_shards, load_texts
    from .train import distributed

    rank, world, device = distributed.setup(args.device)
    try:
        ids, texts = load_texts(args.corpus)
        args.device = args.device or str(device)  # under torchrun: this rank's GPU, if any
        loaded = []

        def encoder(texts):  # the model is loaded when a shard is left to encode
            if not loaded:
                loaded.append(_encoder(args, query=False, model=args.model))
            return loaded[0](texts)
        plan_extra = {"corpus": str(args.corpus), "max_length": args.max_length, "backend": args.backend,
                      "pooling": args.pooling, "prefixes": args.prefixes, "metric": args.metric}
        out = encode_to_shards(encoder, ids, texts, args.out, rows_per_shard=args.rows_per_shard, dtype=args.dtype,
                               model=args.model or PACKAGED_MODEL, metric=args.metric, plan_extra=plan_extra,
                               rank=rank, world=world, barrier=distributed.barrier, progress=not args.no_progress)
    finally:
        distributed.cleanup()
    if rank == 0:
        print(f"encoded {len(texts)} texts into {out}")
    return 0


def run_search(args) -> int:
    import torch

    from .train import distributed
    from .trec import write_run

    rank, world, device = distributed.setup(args.device)
    try:
        index = _index(args, not args.no_progress)
        qids, q = _load_queries(args, args.queries, index.shards, rank)
        scores, ids = index.search(torch.from_numpy(q).to(device), args.k)
        run_scores = _run_scores(index, scores.cpu().numpy())
        index.agree(lambda: write_run(args.out, qids, index.doc_ids(ids), run_scores, args.tag) if rank == 0 else None)
    finally:
        distributed.cleanup()
    if rank == 0:
        print(f"searched {index.shards.count} documents for {len(qids)} queries ({world} process"
              f"{'es' if world > 1 else ''}); wrote {args.out}", file=sys.stderr)
    return 0


def run_index_eval(args) -> int:
    """``hbfast eval --index DIR``: search, then trec_eval's metrics of the run and the full-ranking mAP."""
    import torch

    from . import metrics
    from .train import distributed
    from .trec import read_qrels

    if args.qrels is None and args.data_dir is None:
        raise ValueError("eval --index needs --qrels FILE (or --data-dir of a BEIR set)")
    if args.queries is None and args.data_dir is None:
        raise ValueError("eval --index needs --queries (a .npy or a text table) or --data-dir of a BEIR set")
    qrels_path = args.qrels or str(Path(args.data_dir) / "qrels" / f"{args.split}.tsv")
    rank, world, device = distributed.setup(args.device)
    try:
        index = _index(args, not args.no_progress)
        qrels = read_qrels(qrels_path)
        judged = {q for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
        qids, q = _load_queries(args, args.queries or args.data_dir, index.shards, rank, keep=judged)
        queries = torch.from_numpy(q).to(device)
        scores, ids = index.search(queries, min(args.k, len(index)))
        docs = index.doc_ids(ids)
        run_scores = _run_scores(index, scores.cpu().numpy())
        run = {qid: dict(zip(row, map(float, s))) for qid, row, s in zip(qids, docs, run_scores)}
        used = {qid: qrels[qid] for qid in qids}
        names = [m if m != "recall@100" else f"recall@{min(100, args.k)}" for m in EVAL_METRICS]
        values = metrics.evaluate(run, used, names)
        # Full-ranking AP: every positive judgement's rank in the whole corpus (counts summed over ranks).
        positive = [[index.shards.row_of(d) for d, g in used[qid].items() if g > 0] for qid in qids]
        width = max(len(p) for p in positive)
        rel = np.full((len(qids), width), -1, dtype=np.int64)
        for i, rows in enumerate(positive):
            present = [r for r in rows if r is not None]
            rel[i, : len(present)] = present
        ranks = index.relevant_ranks(queries, torch.from_numpy(rel).to(device)).cpu().numpy()
        values["map_full_ranking"] = float(metrics.average_precision(ranks, np.array([len(p) for p in positive])).mean())
        index.agree(lambda: _write_eval(args, index, qids, docs, run_scores, used, values, int(ids.shape[1]))
                    if rank == 0 else None)
    finally:
        distributed.cleanup()
    return 0


def _write_eval(args, index, qids, docs, run_scores, used, values, k: int) -> None:
    """Rank 0's files of ``eval --index``: the run, the qrels it was scored with, and metrics.json."""
    from .shards import atomic_write_bytes
    from .trec import write_qrels, write_run

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_path = Path(args.run_path) if args.run_path else out / "run.trec"
    write_run(run_path, qids, docs, run_scores, args.tag)
    write_qrels(out / "qrels.trec", used)
    result = {"index": str(index.shards.directory), "metric": index.metric, "k": k, "queries": len(qids),
              "documents": len(index), "processes": index.world, "metrics": values}
    atomic_write_bytes(out / "metrics.json", (json.dumps(result, indent=2) + "\n").encode("utf-8"))
    print(f"{index.shards.directory.name}: {len(qids)} queries, {len(index)} documents, {index.world} process(es)")
    print("  ".join(f"{name} {v:.4f}" for name, v in values.items()))
    print(f"wrote {run_path}, {out / 'qrels.trec'}, {out / 'metrics.json'}")
