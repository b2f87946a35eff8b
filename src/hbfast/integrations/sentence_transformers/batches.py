"""Hybrid batches for ``SentenceTransformerTrainer``: a batch sampler (``HybridDefaultBatchSampler``,
``hybrid_batch_sampler``) that gives the trainer hbfast's hybrid batch plans, and
``hybrid_pairs_dataset``, the (anchor, positive) table it samples from.
"""
from __future__ import annotations

from numbers import Real
from typing import Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch

try:  # sentence-transformers >= 6
    from sentence_transformers.base.sampler import DefaultBatchSampler
except ImportError:  # pragma: no cover - sentence-transformers 5.x
    from sentence_transformers.sampler import DefaultBatchSampler

from ...sampling import hybrid_batches
from .losses import group_size

__all__ = ["DefaultBatchSampler", "HybridDefaultBatchSampler", "hybrid_batch_sampler", "hybrid_pairs_dataset"]


# ---- hybrid batches for SentenceTransformerTrainer ------------------------------------------------

def _labels(values) -> np.ndarray:
    """Integer labels stay integers; anything else (language codes, string ids) becomes str."""
    a = np.asarray(values)
    return a if a.dtype.kind in "iu" else np.asarray(values, dtype=object).astype(str)


class _HybridLayout:
    """Which dataset row holds (item, query language, passage language), and the availability matrix."""

    def __init__(self, item_ids: Sequence[Hashable], languages: Sequence[Tuple[Hashable, Hashable]], alpha: float):
        if item_ids is None or languages is None:
            raise ValueError(
                "the hybrid batch sampler needs each row's item id and (query language, passage language): "
                "pass hybrid_batch_sampler(item_ids=..., languages=...) as batch_sampler, not the class itself"
            )
        if len(item_ids) != len(languages):
            raise ValueError(f"item_ids has {len(item_ids)} rows but languages has {len(languages)}")
        if len(item_ids) == 0:
            raise ValueError("item_ids and languages are empty")
        pairs = list(languages)
        bad = next((p for p in pairs if isinstance(p, (str, bytes)) or not hasattr(p, "__len__") or len(p) != 2), None)
        if bad is not None:
            raise ValueError(f"languages must hold one (query language, passage language) pair per row, found {bad!r}")
        self.item_labels, items = np.unique(_labels(item_ids), return_inverse=True)
        self.language_labels, langs = np.unique(_labels(pairs).reshape(-1), return_inverse=True)
        langs = langs.reshape(-1, 2)
        self.n_rows, n_items, n_langs = len(items), len(self.item_labels), len(self.language_labels)
        keys = (items.astype(np.int64) * n_langs + langs[:, 0]) * n_langs + langs[:, 1]  # [rows]
        self._order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[self._order]
        dup = np.flatnonzero(np.diff(self._sorted_keys) == 0)
        if len(dup):
            row = int(self._order[dup[0] + 1])
            raise ValueError(f"rows {int(self._order[dup[0]])} and {row} are both item {item_ids[row]!r} with "
                             f"languages {tuple(pairs[row])}")
        self.n_langs = n_langs
        # an item exists in a language when some row uses that language on either side
        self.availability = np.zeros((n_items, n_langs), dtype=bool)
        self.availability[items, langs[:, 0]] = True
        self.availability[items, langs[:, 1]] = True
        self._check_complete(alpha, items, langs)

    def _check_complete(self, alpha: float, items: np.ndarray, langs: np.ndarray) -> None:
        """Every (item, x, y) a plan may draw must have a row: x == y when alpha > 0, x != y when alpha < 1."""
        n_items = self.availability.shape[0]
        k = self.availability.sum(1)  # [items] languages per item
        same = langs[:, 0] == langs[:, 1]
        have_mono = np.bincount(items[same], minlength=n_items)
        have_cross = np.bincount(items[~same], minlength=n_items)
        short = np.zeros(n_items, dtype=bool)
        if alpha > 0:
            short |= have_mono < k
        if alpha < 1:
            short |= have_cross < k * (k - 1)
        if not short.any():
            return
        i = int(np.flatnonzero(short)[0])
        ls = np.flatnonzero(self.availability[i])
        for q in ls:
            for p in ls:
                if ((q == p and alpha > 0) or (q != p and alpha < 1)) and self.rows(np.array([i]), q, p)[0] < 0:
                    raise ValueError(
                        f"item {self.item_labels[i]!r} exists in languages {self.language_labels[ls].tolist()} but has "
                        f"no row with query language {self.language_labels[q]!r} and passage language "
                        f"{self.language_labels[p]!r}: hybrid batches need one row per (item, query language, "
                        "passage language) among the item's languages"
                    )

    def rows(self, items: np.ndarray, query_lang: np.ndarray, passage_lang: np.ndarray) -> np.ndarray:
        """Dataset rows of (item, query language, passage language) index triples; -1 where none."""
        keys = (items.astype(np.int64) * self.n_langs + query_lang) * self.n_langs + passage_lang
        at = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
        found = self._sorted_keys[at] == keys
        return np.where(found, self._order[at], -1)


class HybridDefaultBatchSampler(DefaultBatchSampler):
    """hbfast hybrid batches (:func:`hbfast.hybrid_batches`) as a sentence-transformers batch sampler.

    Dataset layout: one row per (item, query language, passage language), e.g. columns
    ``anchor`` (the item's query in the query language) and ``positive`` (its passage in the
    passage language), plus optional negative columns. The rows' item ids and language pairs are
    given here, not as dataset columns (the data collator would tokenise them): ``item_ids[r]`` and
    ``languages[r] = (query_language, passage_language)`` describe row r. An item exists in the
    languages its rows use; it needs a row for every (x, x) of them when ``alpha > 0`` (X-X
    batches) and every (x, y), x != y, when ``alpha < 1`` (X-Y batches); :func:`hybrid_pairs_dataset`
    builds such a dataset from parallel texts. Use :func:`hybrid_batch_sampler` to bind the layout.

    Each epoch's plan is a pure function of (seed, epoch) (``set_epoch`` is called by the trainer);
    no item repeats within an epoch. Under DDP (``world_size`` > 1, default: torch.distributed's)
    every rank iterates the same sequence, in which global step s is the ``world_size`` consecutive
    batches s*W ... s*W + W - 1, one per rank (accelerate hands batch i to rank i % W): the slices
    of one global hybrid batch, so all ranks share the batch kind and, for X-X, the language.
    ``generator`` is not used.
    """

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns: Optional[List[str]] = None,
                 generator: Optional[torch.Generator] = None, seed: int = 0, *, item_ids=None, languages=None,
                 alpha: float = 0.5, lang_weights="uniform", world_size: Optional[int] = None, _layout=None):
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns,
                         generator=generator, seed=seed)
        self.layout = _layout if _layout is not None else _HybridLayout(item_ids, languages, alpha)
        if dataset is not None and hasattr(dataset, "__len__") and len(dataset) != self.layout.n_rows:
            raise ValueError(f"the dataset has {len(dataset)} rows but item_ids / languages describe {self.layout.n_rows}")
        self.world_size = _world_size(world_size)
        self.alpha, self.lang_weights = alpha, lang_weights
        self._plans = {}
        self._global_batches(0)  # checks batch_size, alpha, lang_weights against the data now

    def _global_batches(self, epoch: int) -> List[List[int]]:
        """Dataset rows of every per-rank batch of an epoch, global step by global step."""
        if epoch not in self._plans:
            batch_size = self._plan_batch_size()
            if batch_size == 0:  # drop_last and no full batch: an empty epoch, as DefaultBatchSampler's
                self._plans = {epoch: []}
                return []
            plans = [hybrid_batches(self.layout.availability, batch_size, alpha=self.alpha, seed=self.seed or 0,
                                    epoch=epoch, lang_weights=self.lang_weights, drop_last=self.drop_last, rank=r,
                                    world_size=self.world_size) for r in range(self.world_size)]
            batches = []
            for step in range(len(plans[0])):
                per_rank = []
                for plan in plans:
                    keep = plan.items[step] >= 0
                    per_rank.append(self.layout.rows(plan.items[step][keep], plan.query_lang[step][keep],
                                                     plan.passage_lang[step][keep]).tolist())
                if min(map(len, per_rank)) == 0:  # a last global batch too small to give every rank a row
                    continue
                batches += per_rank
            self._plans = {epoch: batches}
        return self._plans[epoch]

    def _plan_batch_size(self) -> int:
        """The per-rank batch size to plan with: ``batch_size``, unless the data cannot fill one global
        batch of any kind. Then, like DefaultBatchSampler on a dataset smaller than one batch, short
        batches (the largest global batch the data can fill, split over the ranks), or none with
        ``drop_last``."""
        capacity = _batch_capacity(self.layout.availability, self.alpha, self.lang_weights)
        if capacity is None or self.batch_size * self.world_size <= capacity:
            return self.batch_size  # (hybrid_batches checks the arguments)
        if self.drop_last or capacity < self.world_size:
            return 0
        return capacity // self.world_size

    def __len__(self) -> int:
        return len(self._global_batches(self.epoch))

    def __iter__(self):
        yield from self._global_batches(self.epoch)


def _batch_capacity(availability: np.ndarray, alpha, lang_weights) -> Optional[int]:
    """Rows of the largest batch any kind allowed by ``alpha`` can fill (X-X: a language's items, X-Y:
    the items in >= 2 languages); None when the arguments are not valid (hybrid_batches says why)."""
    counts = availability.sum(0)
    if isinstance(lang_weights, str):
        usable = counts > 0
    else:
        try:
            usable = np.asarray(lang_weights, dtype=np.float64).reshape(-1) > 0
        except (TypeError, ValueError):
            return None
        if usable.shape != counts.shape:
            return None
    if not isinstance(alpha, Real) or not 0 <= alpha <= 1:
        return None
    capacity = []
    if alpha > 0:
        capacity.append(int(counts[usable].max(initial=0)))
    if alpha < 1:
        capacity.append(int((availability.sum(1) >= 2).sum()))
    return max(capacity)


def _world_size(world_size: Optional[int]) -> int:
    group = group_size()
    if world_size is None:
        return group
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if group > 1 and world_size != group:
        raise ValueError(f"world_size={world_size} does not match the torch.distributed process group ({group})")
    return world_size


def hybrid_batch_sampler(item_ids: Sequence[Hashable], languages: Sequence[Tuple[Hashable, Hashable]], *,
                         alpha: float = 0.5, lang_weights="uniform", world_size: Optional[int] = None,
                         other_datasets: str = "error"):
    """The ``batch_sampler`` for ``SentenceTransformerTrainingArguments``: hybrid batches over a dataset
    laid out as :class:`HybridDefaultBatchSampler` describes (``item_ids[r]``, ``languages[r] =
    (query_language, passage_language)`` for row r).

    The trainer calls it for every dataset it batches (train and eval alike). A dataset whose
    length is not ``len(item_ids)`` raises, unless ``other_datasets="default"``: it then gets
    sentence-transformers' plain sequential batches (e.g. an eval_dataset with a different layout).
    """
    if other_datasets not in ("error", "default"):
        raise ValueError(f"other_datasets must be 'error' or 'default', got {other_datasets!r}")
    layout = _HybridLayout(item_ids, languages, alpha)

    def make(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        if other_datasets == "default" and len(dataset) != layout.n_rows:
            return DefaultBatchSampler(torch.utils.data.SequentialSampler(dataset), batch_size=batch_size,
                                       drop_last=drop_last, valid_label_columns=valid_label_columns,
                                       generator=generator, seed=seed)
        return HybridDefaultBatchSampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed,
                                         alpha=alpha, lang_weights=lang_weights, world_size=world_size, _layout=layout)

    return make


def hybrid_pairs_dataset(queries, passages, *, alpha: float = 0.5, query_column: str = "anchor",
                         passage_column: str = "positive"):
    """A dataset for hybrid batches from parallel texts: ``queries[lang][i]`` and ``passages[lang][i]``
    are item i's query and passage in ``lang`` (None where the item is missing in that language).

    Returns ``(dataset, item_ids, languages)``: one row per (item, x, y) that hybrid batches may draw
    (x == y when alpha > 0, x != y when alpha < 1, among the languages where the item has both
    texts), ready for ``hybrid_batch_sampler(item_ids, languages, alpha=alpha)``. The rows of an
    item with k languages number up to k * k, so texts are repeated; keep it for corpora that fit.
    """
    from datasets import Dataset

    if set(queries) != set(passages):
        raise ValueError(f"queries and passages must cover the same languages, got {sorted(queries)} and {sorted(passages)}")
    langs = list(queries)
    sizes = {len(queries[l]) for l in langs} | {len(passages[l]) for l in langs}
    if len(sizes) != 1:
        raise ValueError(f"every language must list the same number of items, got lengths {sorted(sizes)}")
    columns = {query_column: [], passage_column: []}
    item_ids, languages = [], []
    for i in range(sizes.pop()):
        have = [l for l in langs if queries[l][i] is not None and passages[l][i] is not None]
        for x in have:
            for y in have:
                if (x == y and alpha > 0) or (x != y and alpha < 1):
                    columns[query_column].append(queries[x][i])
                    columns[passage_column].append(passages[y][i])
                    item_ids.append(i)
                    languages.append((x, y))
    if not item_ids:
        raise ValueError("no item has both a query and a passage in any language")
    return Dataset.from_dict(columns), item_ids, languages
