"""Exact search over a shard directory: ``ShardedIndex``, out of core in one process and split over
the ranks of a torch.distributed process group.

This module exists so that ``hbfast.topk`` / ``hbfast.relevant_ranks`` reach corpora larger than one
process's memory or one machine. Shards are read from disk tile by tile (positioned reads into two
reused buffers, the next tile read while the current one is searched), so memory stays under
``memory_budget`` whatever the corpus size; queries go in blocks when their top-k state would not fit.
Tiles start at every shard's first row, so the products, and hence every score, are the same however
the shards are split over processes.

Under an initialised process group each rank searches a contiguous run of shards (about count /
world rows): top-k gathers every rank's k candidates and merges them (higher score first, then lower
id: hbfast's tie rule); ``relevant_ranks`` adds every rank's count of the items that beat each relevant
item (a rank of 1 + that count is exact across shard boundaries because the count kernels compare
global ids), the relevant item's score being the one its own tile computes, as in
``hbfast.relevant_ranks``. Every rank returns the global answer.
"""
from __future__ import annotations

import concurrent.futures
import math
import re
from numbers import Integral
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from .ops.ext import kernels
from .ops import gemm, safety
from .ops.ext import current_stream, on_gpu
from .ops.search.inputs import between_fused_tiles, check_metric, check_relevant
from .ops.search import cpu as search_cpu, cuda as search_cuda, generic as search_generic
from .ops.search.flat import (CPU_CORPUS_TILE, CPU_QUERY_TILE, CUDA_CORPUS_TILE, CUDA_QUERY_TILE,
                               check_relevant_ranks_cuda, topk)
from .shards import Shards, open_shards

DEFAULT_MEMORY_BUDGET = 1 << 30
_NO_ID = torch.iinfo(torch.int64).max  # padding of a rank's candidates: after every real id
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1 << 10, "m": 1e6, "mb": 1e6, "mib": 1 << 20,
          "g": 1e9, "gb": 1e9, "gib": 1 << 30, "t": 1e12, "tb": 1e12, "tib": 1 << 40}


def parse_bytes(value: Union[int, float, str]) -> int:
    """Bytes from an int or a string such as "512MiB", "2GiB", "1.5G" (powers of 10 for k/M/G, of 2 for KiB/MiB/GiB)."""
    if isinstance(value, bool):
        raise TypeError(f"memory_budget must be bytes (an int or e.g. '2GiB'), got {value!r}")
    if isinstance(value, (int, float)):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"memory_budget: cannot read {value!r} as a size (e.g. 536870912, '512MiB', '2GiB')")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise TypeError(f"memory_budget must be bytes (an int or e.g. '2GiB'), got {type(value).__name__}")
    if not math.isfinite(n) or n <= 0:
        raise ValueError(f"memory_budget must be positive, got {value!r}")
    return int(n)


def group() -> Tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def assign_shards(shards: Shards, rank: int, world: int) -> range:
    """The contiguous run of shard indices that ``rank`` searches: a shard goes to the rank whose
    share of [0, count) holds its middle row, so ranks get about count / world rows each."""
    owner = [min(world - 1, int((s.first_id + s.rows / 2) * world // max(shards.count, 1))) for s in shards.shards]
    mine = [i for i, o in enumerate(owner) if o == rank]
    return range(mine[0], mine[-1] + 1) if mine else range(0)


class ShardedIndex:
    """Exact search over a shard directory (``hbfast.write_shards`` / ``hbfast encode``).

    >>> index = ShardedIndex("corpus-shards/", metric="cosine", memory_budget="2GiB")
    >>> scores, ids = index.search(queries, k=100)          # = hbfast.topk on the whole corpus
    >>> ranks = index.relevant_ranks(queries, relevant)    # = hbfast.relevant_ranks

    metric: "ip", "cosine" (alias "cos") or "l2" (squared Euclidean distances, nearest first; ranked
    by the inner product of [x, 1] with [y, -|y|^2 / 2], as ``hbfast.integrations.faiss.IndexFlatL2``).
    memory_budget: bytes (or "512MiB", "2GiB") this process may use for the corpus tiles, the queries'
    search state and the results. Under an initialised torch.distributed process group (created before
    the index) each rank reads and searches only its own shards, and every rank gets the global answer;
    every rank must then make the same calls with the same queries.
    Outputs follow the queries: numpy in, numpy out; a tensor in, tensors on its device out.
    """

    def __init__(self, dir_or_manifest, metric: str = "ip", memory_budget=DEFAULT_MEMORY_BUDGET, *,
                 progress: bool = False):
        self.shards = open_shards(dir_or_manifest)
        metric = check_metric(metric)
        if self.shards.count == 0:
            raise ValueError(f"{self.shards.directory}: the shard directory holds no rows")
        self.metric = metric
        self.memory_budget = parse_bytes(memory_budget)
        self.progress = progress
        self.query_block: Optional[int] = None  # queries per walk over the shards in the last call
        self.rank, self.world = group()
        self.local = assign_shards(self.shards, self.rank, self.world)
        entries = [self.shards.shards[i] for i in self.local]
        self.local_first = entries[0].first_id if entries else self.shards.count
        self.local_rows = sum(s.rows for s in entries)

    def __len__(self) -> int:
        return self.shards.count

    @property
    def dim(self) -> int:
        return self.shards.dim

    def __repr__(self) -> str:
        return (f"ShardedIndex({str(self.shards.directory)!r}, metric={self.metric!r}, {self.shards.count} x "
                f"{self.shards.dim} {self.shards.dtype}; rank {self.rank}/{self.world}: shards "
                f"[{self.local.start}, {self.local.stop}))")

    def doc_ids(self, ids) -> List[List[str]]:
        """Document id strings of a [nq, k] id array (-1 -> "")."""
        ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        return [[self.shards.doc_id(int(i)) if i >= 0 else "" for i in row] for row in ids]

    # ---- inputs --------------------------------------------------------------------------------
    def _queries(self, queries) -> Tuple[torch.Tensor, bool, Optional[torch.Tensor]]:
        """(queries as the kernels take them [nq, D'] fp32, numpy?, squared norms for l2)."""
        as_numpy = isinstance(queries, np.ndarray)
        if as_numpy:
            if queries.dtype not in (np.float16, np.float32, np.float64):
                raise TypeError(f"queries must hold floats (float32, float16), got numpy dtype {queries.dtype}")
            q = torch.from_numpy(np.array(queries, dtype=np.float32))
        elif isinstance(queries, torch.Tensor):
            if not queries.dtype.is_floating_point:
                raise TypeError(f"queries must hold floats (float32, float16, bfloat16), got {queries.dtype}")
            q = queries.detach().to(torch.float32).contiguous()
        else:
            raise TypeError(f"queries must be a torch tensor or numpy array [nq, dim], got {type(queries).__name__}")
        if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [nq >= 1, {self.dim}] (the shards' dim), got shape {tuple(q.shape)}")
        if not all(math.isfinite(v) for v in torch.stack(torch.aminmax(q)).tolist()):
            raise ValueError("queries contain NaN or infinite values")
        sq = None
        if self.metric == "cosine":
            norms = torch.linalg.vector_norm(q, dim=1, keepdim=True)
            zero = (norms == 0).flatten().nonzero()
            if len(zero):
                raise ValueError(f"queries row {int(zero[0])} has zero norm (cosine similarity is undefined)")
            q = q / norms
        elif self.metric == "l2":
            sq = (q * q).sum(1)  # [nq]
            q = torch.cat([q, torch.ones(q.shape[0], 1, dtype=q.dtype, device=q.device)], 1)
        return q.contiguous(), as_numpy, sq

    def _tile_rows(self, device: torch.device) -> int:
        return CUDA_CORPUS_TILE if device.type == "cuda" else CPU_CORPUS_TILE

    def _query_block(self, nq: int, per_query: int, held_per_query: int, device: torch.device) -> int:
        """Queries per walk over the shards so that tiles + the block's state + all results fit the budget."""
        tile, dim_k = self._tile_rows(device), self.dim + (self.metric == "l2")
        fixed = 2 * tile * self.dim * self.shards.itemsize + 3 * tile * dim_k * 4 + (8 << 20)  # buffers, tiles, scratch
        held = nq * (held_per_query + dim_k * 4 * 2)  # results and the queries (given and prepared)
        room = self.memory_budget - fixed - held
        if room < per_query:
            need = fixed + held + per_query
            raise ValueError(f"memory_budget {self.memory_budget} bytes is too small for this search: it needs at least "
                             f"{need} ({tile}-row tiles of dim {self.dim}, {nq} queries' results)")
        self.query_block = max(1, min(nq, room // per_query))
        return self.query_block

    # ---- the shards, tile by tile --------------------------------------------------------------
    def _raw_tiles(self, tile: int) -> Iterator[Tuple[int, int, int, np.ndarray]]:
        """(shard index, start, stop, rows) of this rank's shards in tiles starting at each shard's first
        row; the next tile is read (GIL released) while the caller works on this one."""
        jobs = [(si, j0, min(j0 + tile, self.shards.shards[si].rows))
                for si in self.local for j0 in range(0, self.shards.shards[si].rows, tile)]
        if not jobs:
            return
        buffers = [np.empty((tile, self.dim), dtype=self.shards.dtype) for _ in range(2)]
        with concurrent.futures.ThreadPoolExecutor(1) as reader:
            pending = reader.submit(self.shards.read, *jobs[0], buffers[0])
            for n, job in enumerate(jobs):
                rows = pending.result()
                if n + 1 < len(jobs):
                    pending = reader.submit(self.shards.read, *jobs[n + 1], buffers[(n + 1) % 2])
                yield (*job, rows)

    def _tiles(self, device: torch.device, bar=None) -> Iterator[Tuple[int, torch.Tensor]]:
        """(global first id, fp32 tile [<= tile, D'] on device as the kernels take it) of this rank's
        shards. The tile is one reused buffer, valid until the next one is asked for (fresh tiles would
        leave the allocator's heap growing with every size it has seen)."""
        tile_rows, dim = self._tile_rows(device), self.dim
        buffer = torch.empty(tile_rows, dim + (self.metric == "l2"), dtype=torch.float32, device=device)
        square = torch.empty(tile_rows, dim, dtype=torch.float32, device=device) if self.metric == "l2" else None
        for si, j0, j1, rows in self._raw_tiles(tile_rows):
            shard, n = self.shards.shards[si], j1 - j0
            with between_fused_tiles(device):
                t = buffer[:n, :dim]
                t.copy_(torch.from_numpy(rows))
                if not all(math.isfinite(v) for v in torch.stack(torch.aminmax(t)).tolist()):
                    raise ValueError(f"shard {shard.file}: NaN or infinite values in rows [{j0}, {j1}) "
                                     f"(ids [{shard.first_id + j0}, {shard.first_id + j1}))")
                if self.metric == "cosine":  # as hbfast.topk normalises a corpus tile (t / norms)
                    norms = torch.linalg.vector_norm(t, dim=1, keepdim=True)
                    zero = (norms == 0).flatten().nonzero()
                    if len(zero):
                        raise ValueError(f"shard {shard.file}: row {j0 + int(zero[0])} (id "
                                         f"{shard.first_id + j0 + int(zero[0])}) has zero norm (cosine similarity is undefined)")
                    t.div_(norms)
                elif self.metric == "l2":  # [y, -|y|^2 / 2]
                    torch.sum(torch.mul(t, t, out=square[:n]), 1, keepdim=True, out=buffer[:n, dim:]).mul_(-0.5)
                    t = buffer[:n]
            if bar is not None:
                bar.update(n)
            yield shard.first_id + j0, t

    def _bar(self, what: str, passes: int):
        from tqdm.auto import tqdm

        return tqdm(total=self.local_rows * passes, unit="row", desc=what, unit_scale=True,
                    disable=not self.progress or self.rank != 0)

    # ---- agreement between ranks ---------------------------------------------------------------
    def agree(self, fn):
        """fn() on every rank of the index's group; when it raised on some rank, every rank raises (no
        rank is left waiting in a collective): its own error, or a RuntimeError naming the failing rank.
        (hbfast search uses it for rank 0's file writes.)"""
        error, result = None, None
        try:
            result = fn()
        except Exception as e:  # re-raised below, after every rank has heard of it
            error = e
        if self.world > 1:
            messages = [None] * self.world
            dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
            if error is None:
                failed = [(r, m) for r, m in enumerate(messages) if m is not None]
                if failed:
                    raise RuntimeError(f"ShardedIndex: rank {failed[0][0]} failed: {failed[0][1]}")
        if error is not None:
            raise error
        return result

    def _comm_device(self, t: torch.Tensor) -> torch.device:
        return t.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        x = t.to(self._comm_device(t))
        dist.all_reduce(x)
        return x.to(t.device)

    # ---- top-k ---------------------------------------------------------------------------------
    def search(self, queries, k: int):
        """(scores float32 [nq, k] best first, ids int64 [nq, k]) over the whole corpus; for "l2" the
        scores are squared distances, nearest first. Ties: the lower id first."""
        q, as_numpy, sq = self._queries(queries)
        if isinstance(k, bool) or not isinstance(k, Integral):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if not 1 <= k <= self.shards.count:
            raise ValueError(f"k must be in [1, {self.shards.count}] (the corpus size), got {k}")
        k = int(k)
        nq = q.shape[0]
        per_query = k * 48 * 2 + q.shape[1] * 4  # top-k state (and the scratch state of a first measurement)
        block = self._query_block(nq, per_query, k * 12 * (self.world + 1) * 2, q.device)
        local_k = min(k, self.local_rows)

        def local():
            scores = torch.full((nq, k), -math.inf, dtype=torch.float32, device=q.device)
            ids = torch.full((nq, k), _NO_ID, dtype=torch.int64, device=q.device)
            if local_k:
                passes = math.ceil(nq / block)
                with self._bar("search", passes) as bar:
                    for b0 in range(0, nq, block):
                        tiles = (t for _, t in self._tiles(q.device, bar))
                        s, i = topk(q[b0 : b0 + block], tiles, local_k, metric="ip")
                        scores[b0 : b0 + block, :local_k], ids[b0 : b0 + block, :local_k] = s, i + self.local_first
            return scores, ids

        scores, ids = self.agree(local)
        if self.world > 1:
            device = self._comm_device(scores)
            parts_s = [torch.empty(nq, k, dtype=torch.float32, device=device) for _ in range(self.world)]
            parts_i = [torch.empty(nq, k, dtype=torch.int64, device=device) for _ in range(self.world)]
            dist.all_gather(parts_s, scores.to(device))
            dist.all_gather(parts_i, ids.to(device))
            scores, ids = merge_candidates(torch.cat(parts_s, 1), torch.cat(parts_i, 1), k)
            scores, ids = scores.to(q.device), ids.to(q.device)
        if self.metric == "l2":
            scores = (sq[:, None] - 2 * scores).clamp_min_(0)
        return (scores.cpu().numpy(), ids.cpu().numpy()) if as_numpy else (scores, ids)

    # ---- ranks ---------------------------------------------------------------------------------
    def relevant_ranks(self, queries, relevant_ids):
        """int64 [nq, r]: 1-based rank of each relevant row in the full ranking of the corpus (1 + the
        rows that beat it: a higher score, or an equal score and a lower id), -1 at padding; as
        ``hbfast.relevant_ranks`` on the concatenated corpus."""
        q, as_numpy, _ = self._queries(queries)
        rel = check_relevant(relevant_ids, q.shape[0], self.shards.count, q.device, name="relevant_ids",
                             ids_name="relevant_ids", to_device=True)
        nq, r = rel.shape
        counts = torch.zeros(nq, r, dtype=torch.int64, device=q.device)
        if r:
            per_query = r * 48 + q.shape[1] * 4 * (r + 1)  # counts, scores, ids; the relevant rows, gathered
            block = self._query_block(nq, per_query, r * 8 * 2, q.device)
            for b0 in range(0, nq, block):
                counts[b0 : b0 + block] = self._count_block(q[b0 : b0 + block], rel[b0 : b0 + block])
        ranks = torch.where(rel >= 0, counts + 1, torch.full_like(counts, -1))
        return ranks.cpu().numpy() if as_numpy else ranks

    def _count_block(self, q: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """Counts [nq, r] of the corpus rows that beat each relevant row, summed over the ranks."""
        owned = (rel >= self.local_first) & (rel < self.local_first + self.local_rows)  # [nq, r]
        rel_scores = self._all_reduce(self.agree(lambda: self._owned_scores(q, rel, owned)))
        tile_q = min(q.shape[0], CUDA_QUERY_TILE if q.device.type == "cuda" else CPU_QUERY_TILE)
        starts = list(range(0, q.shape[0], tile_q))
        counts = torch.zeros_like(rel)
        own = rel_scores.clone()  # each item's score as its own tile computes it (set by the owning rank)
        products = {}
        self.agree(lambda: self._count_pass(q, rel, rel_scores, counts, own, starts, tile_q, products))
        # The owner's batched product may round an item's score differently from its tile (by an ulp):
        # where it did, count again with the tile's score, on every rank (as hbfast.relevant_ranks does).
        own = self._all_reduce(torch.where(owned, own, torch.zeros_like(own)))
        differs = ((own != rel_scores) & (rel >= 0)).any(dim=1)
        redo = [i0 for i0 in starts if bool(differs[i0 : i0 + tile_q].any())]
        if redo:
            for i0 in redo:
                counts[i0 : i0 + tile_q] = 0
            own_again = own.clone()
            self.agree(lambda: self._count_pass(q, rel, own, counts, own_again, redo, tile_q, products))
        return self._all_reduce(counts)

    def _owned_scores(self, q: torch.Tensor, rel: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
        """[nq, r] scores of the relevant rows this rank holds (0 elsewhere), from batched products."""
        out = torch.zeros(rel.shape, dtype=torch.float32, device=q.device)
        where = owned.nonzero()  # [m, 2] (query, slot)
        if not len(where):
            return out
        rows = torch.from_numpy(self.shards.rows(rel[owned].cpu().numpy()).astype(np.float32)).to(q.device)  # [m, D]
        if self.metric == "cosine":
            rows = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        elif self.metric == "l2":
            rows = torch.cat([rows, (rows * rows).sum(1, keepdim=True).mul_(-0.5)], 1)
        out[owned] = (rows * q[where[:, 0]]).sum(1)
        return out

    def _count_pass(self, q32, rel, rel_scores, counts, own_scores, starts, tile_q, products) -> None:
        """One walk over this rank's tiles for the query tiles at ``starts``: adds to counts the rows that
        beat each relevant item (scores ``rel_scores``, global ids ``rel``) and records in own_scores the
        score of each item in its own tile (the same kernels as hbfast.relevant_ranks)."""
        cuda = q32.device.type == "cuda"
        counts_on_cuda = cuda and safety.trusted("relevant_ranks", q32.device, check_relevant_ranks_cuda)
        r = rel.shape[1]
        tile_c = self._tile_rows(q32.device)
        key = gemm.shape_class("relevant_ranks", tile_q, tile_c, q32.shape[1])
        buffer = []
        if cuda:
            bad = torch.zeros(1, dtype=torch.int32, device=q32.device)
            no_row = torch.full((), search_cuda.NO_ROW, dtype=torch.int64, device=q32.device)
            stream = current_stream(q32.device)

        def count(backend, qt, i0, first_id, ct, target, own):
            rel_args = (rel_scores[i0].data_ptr(), rel[i0].data_ptr(), r, target.data_ptr(), own.data_ptr())
            if not cuda:
                return search_cpu.count_tile(backend, qt, first_id, ct, rel_args, buffer, tile_q * tile_c)
            tile = search_cpu.product(buffer, tile_q * tile_c, qt, ct)  # [tq, tc]
            if not counts_on_cuda:  # the kernel failed its first-use check on this device (ops.safety)
                rows = slice(i0, i0 + qt.shape[0])
                return search_generic.count_tile(tile, first_id, rel_scores[rows], rel[rows], target, own)
            kernels.count_beating_cuda(tile.data_ptr(), qt.shape[0], ct.shape[0], ct.shape[0], first_id, *rel_args,
                                  bad.data_ptr(), stream)

        with self._bar("relevant_ranks", 1) as bar, on_gpu(q32.device):
            for first_id, ct in self._tiles(q32.device, bar):
                for i0 in starts:
                    qt = q32[i0 : i0 + tile_q]
                    target, own = counts[i0 : i0 + qt.shape[0]], own_scores[i0 : i0 + qt.shape[0]]
                    if "backend" not in products:  # measured on this tile into scratch counts (once per class)
                        scratch = lambda b: count(b, qt, i0, first_id, ct, torch.zeros_like(target), own.clone())  # noqa: E731
                        products["backend"] = "mkl" if cuda else gemm.chooser.decide(key, scratch)
                    count(products["backend"], qt, i0, first_id, ct, target, own)
        if cuda:
            search_cuda.device_checks(bad, no_row)


def merge_candidates(scores: torch.Tensor, ids: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k best of [nq, m] candidates: higher score first, equal scores by lower id (hbfast's tie rule)."""
    by_id = torch.argsort(ids, dim=1, stable=True)
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, by_score), ids.gather(1, by_score)
