"""sentence-transformers drop-ins: its in-batch losses computed by hbfast's fused kernel, and a
batch sampler that gives ``SentenceTransformerTrainer`` hbfast's hybrid batches.

    from hbfast.integrations.sentence_transformers import MultipleNegativesRankingLoss, hybrid_batch_sampler

The losses subclass sentence-transformers' own ``MultipleNegativesRankingLoss`` /
``CachedMultipleNegativesRankingLoss`` (same arguments, ``forward(sentence_features, labels)``,
``model``, ``get_config_dict()``, ``citation``) and replace only the score matrix: the value
comes from :func:`hbfast.contrastive_loss`, which never builds the B x B(1 + n) matrix. Settings
the kernel does not cover run sentence-transformers' own code (see :class:`FallbackWarning`).
Tested with sentence-transformers 6.3 (see README "Drop-ins").
"""
from __future__ import annotations

import warnings
from numbers import Real
from typing import Callable, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from sentence_transformers import util as _st_util

try:  # sentence-transformers >= 6
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer import losses as st_losses
except ImportError:  # pragma: no cover - sentence-transformers 5.x
    from sentence_transformers import losses as st_losses
    from sentence_transformers.sampler import DefaultBatchSampler

from ..ops.loss import DEFAULT_MEMORY_BUDGET, contrastive_loss
from ..sampling import hybrid_batches

__all__ = [
    "CachedMultipleNegativesRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "FallbackWarning",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "HybridDefaultBatchSampler",
    "hybrid_batch_sampler",
    "hybrid_pairs_dataset",
]

_st_losses = st_losses  # the old name, kept for callers that used it
_QUERY_TO_DOC = ("query_to_doc",)
_SYMMETRIC = {"query_to_doc", "doc_to_query"}


class FallbackWarning(UserWarning):
    """A drop-in loss was configured with an option hbfast's fused kernel does not compute; that
    loss instance runs sentence-transformers' own code (same values, with its B x B score matrix).

    Fused: ``similarity_fct`` = ``util.cos_sim`` / ``util.dot_score`` (or ``model.similarity`` of a
    cosine / dot model), ``directions=("query_to_doc",)`` (either ``partition_mode``) or
    ``("query_to_doc", "doc_to_query")`` (either ``partition_mode``; "joint" costs two kernel calls),
    ``hardness_mode`` None (or ``hardness_strength=0``), with or without ``gather_across_devices``.
    Anything else (other similarities, ``query_to_query`` / ``doc_to_doc``, hardness weighting)
    falls back, with this warning once per loss instance.
    """


def _normalizes(similarity_fct: Callable) -> Optional[bool]:
    """True for cosine, False for dot product, None for a similarity the kernel cannot compute."""
    if similarity_fct in (_st_util.cos_sim, _st_util.pytorch_cos_sim):
        return True
    if similarity_fct is _st_util.dot_score:
        return False
    owner = getattr(similarity_fct, "__self__", None)  # model.similarity, bound to the model's own function
    if getattr(similarity_fct, "__name__", None) == "similarity" and hasattr(owner, "similarity_fn_name"):
        if owner.similarity_fn_name in ("cosine", "dot"):
            return owner.similarity_fn_name == "cosine"
    return None


def unfused_reason(loss) -> Optional[str]:
    """Why ``loss`` (a MultipleNegativesRankingLoss's settings) cannot run on the fused kernel; None if it can."""
    scale = loss.scale
    if isinstance(scale, bool) or not isinstance(scale, Real) or not np.isfinite(scale):
        return f"scale={scale!r} (fused: a finite number)"
    if _normalizes(loss.similarity_fct) is None:
        name = getattr(loss.similarity_fct, "__name__", type(loss.similarity_fct).__name__)
        return f"similarity_fct={name} (fused: cos_sim, dot_score)"
    if getattr(loss, "hardness_mode", None) is not None and getattr(loss, "hardness_strength", 0.0) > 0:
        return f"hardness_mode={loss.hardness_mode!r} with hardness_strength={loss.hardness_strength}"
    directions = set(getattr(loss, "directions", _QUERY_TO_DOC))
    if directions in ({"query_to_doc"}, _SYMMETRIC):
        return None
    return (f"directions={tuple(loss.directions)} (fused: ('query_to_doc',) and ('query_to_doc', 'doc_to_query'), "
            "either partition_mode)")


def _check_memory_budget(memory_budget) -> None:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0:
        raise ValueError(f"memory_budget must be an int >= 0 (bytes), got {memory_budget!r}")


def _warn_fallback(what: str, reason: str, stacklevel: int) -> None:
    warnings.warn(FallbackWarning(
        f"hbfast {what}: {reason} is not fused; this loss runs sentence-transformers' own code "
        "(the full score matrix)"), stacklevel=stacklevel + 1)


def _group_size() -> int:
    """The torch.distributed world size, 1 outside an initialised process group."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gathers(gather_across_devices: bool) -> bool:
    """Like sentence-transformers: no gathering outside an initialised torch.distributed group."""
    return bool(gather_across_devices) and _group_size() > 1


class MultipleNegativesRankingLoss(st_losses.MultipleNegativesRankingLoss):
    """sentence-transformers' ``MultipleNegativesRankingLoss`` (InfoNCE with in-batch negatives) on
    hbfast's fused kernel: same arguments, value and gradients, without the score matrix.

    Columns: (anchor, positive) pairs or (anchor, positive, negative_1, ..., negative_n) tuples; the
    negatives join every anchor's candidates. Every argument of sentence-transformers' class is
    accepted and checked by it (same errors). Fused: see :class:`FallbackWarning`; other settings
    compute sentence-transformers' own loss (``fused`` is then False and a FallbackWarning is
    issued when the loss is built). ``gather_across_devices=True`` under torch.distributed scores
    each rank's anchors against every rank's candidates (``contrastive_loss(gather=True)``).
    ``memory_budget`` (bytes, keyword only) bounds the score blocks kept for the backward.
    """

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable[[Tensor, Tensor], Tensor] = _st_util.cos_sim,
                 gather_across_devices: bool = False, directions: Tuple[str, ...] = _QUERY_TO_DOC,
                 partition_mode: str = "joint", hardness_mode: Optional[str] = None, hardness_strength: float = 0.0,
                 *, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__(model, scale=scale, similarity_fct=similarity_fct, gather_across_devices=gather_across_devices,
                         directions=directions, partition_mode=partition_mode, hardness_mode=hardness_mode,
                         hardness_strength=hardness_strength)
        _check_memory_budget(memory_budget)
        self.memory_budget = memory_budget
        reason = unfused_reason(self)
        if reason is not None:
            _warn_fallback(type(self).__name__, reason, stacklevel=2)

    @property
    def fused(self) -> bool:
        """Whether the current settings run on hbfast's kernel (else on sentence-transformers' code)."""
        return unfused_reason(self) is None

    def compute_loss_from_embeddings(self, embeddings: List[Tensor], labels: Optional[Tensor] = None) -> Tensor:
        """The loss from one embedding tensor per column: anchors [B, D], positives [P, D] (P >= B: rows
        past B are more candidates, as in sentence-transformers), negatives [*, D]. Columns that do not
        fit that layout (or, under torch.distributed, columns of different sizes) go to
        sentence-transformers' own code, so they raise its errors or get its values."""
        if len(embeddings) < 2:
            raise ValueError(f"Expected at least 2 embeddings, got {len(embeddings)}")
        gather = _gathers(self.gather_across_devices)
        if not self.fused or not _fusable_columns(embeddings, gather):
            return super().compute_loss_from_embeddings(embeddings, labels)
        anchors, positives = embeddings[0], embeddings[1]
        b = anchors.shape[0]
        candidates = [positives[b:]] + list(embeddings[2:])  # every column's rows past the pairs
        candidates = [c for c in candidates if c.shape[0] > 0]
        hard_negatives = torch.cat(candidates, 0) if candidates else None
        symmetric = set(self.directions) == _SYMMETRIC
        kw = dict(temperature=1.0 / self.scale, hard_negatives=hard_negatives, normalize=_normalizes(self.similarity_fct),
                  gather=gather, memory_budget=self.memory_budget)
        if not symmetric or self.partition_mode == "per_direction":
            return contrastive_loss(anchors, positives[:b], symmetric=symmetric, **kw)
        # one softmax over anchor i's candidates and positive i's anchors: logaddexp of the two directions'
        # per-row losses (both are logsumexp - positive score); the symmetric loss is their mean
        rows = contrastive_loss(anchors, positives[:b], symmetric=False, reduction="none", **kw)
        both = contrastive_loss(anchors, positives[:b], symmetric=True, reduction="none", **kw)
        return torch.logaddexp(rows, 2 * both - rows).mean()


def _fusable_columns(embeddings: List[Tensor], gather: bool) -> bool:
    """Floating matrices of one width, dtype and device, at least as many positives as anchors (the
    same number of rows in every column when gathered across ranks)."""
    anchors = embeddings[0]
    if not all(isinstance(t, Tensor) and t.dim() == 2 and t.is_floating_point() for t in embeddings):
        return False
    if anchors.shape[0] == 0 or embeddings[1].shape[0] < anchors.shape[0]:
        return False
    if any(t.shape[1] != anchors.shape[1] or t.dtype != anchors.dtype or t.device != anchors.device
           for t in embeddings):
        return False
    return not gather or all(t.shape[0] == anchors.shape[0] for t in embeddings)


class MultipleNegativesSymmetricRankingLoss(MultipleNegativesRankingLoss):
    """sentence-transformers' ``MultipleNegativesSymmetricRankingLoss`` on hbfast's kernel: the mean of
    the anchor -> candidates loss (negatives included) and the positive -> anchors loss."""

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable[[Tensor, Tensor], Tensor] = _st_util.cos_sim,
                 gather_across_devices: bool = False, *, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__(model, scale, similarity_fct, gather_across_devices, directions=("query_to_doc", "doc_to_query"),
                         partition_mode="per_direction", memory_budget=memory_budget)


class CachedMultipleNegativesRankingLoss(st_losses.CachedMultipleNegativesRankingLoss):
    """sentence-transformers' ``CachedMultipleNegativesRankingLoss`` (GradCache) with the fused loss.

    sentence-transformers' own GradCache steps are kept (embed the mini-batches without grad,
    replaying their random state when re-embedding them with grad; ``mini_batch_size``,
    ``mini_batch_num_tokens``, ``show_progress_bar``, DDP handling); only the loss over the whole
    batch and its gradient with respect to the embeddings (step 2) run on hbfast's kernel, in one
    call with no B x B matrix and no mini-batch loop over the loss. Same arguments (checked by
    sentence-transformers) and results; settings the kernel does not cover run the library's own
    chunked loss (:class:`FallbackWarning`). ``self.loss`` is hbfast's
    :class:`MultipleNegativesRankingLoss` with the same settings; ``memory_budget``: see it.
    """

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable[[Tensor, Tensor], Tensor] = _st_util.cos_sim,
                 mini_batch_size: int = 32, mini_batch_num_tokens: Optional[int] = None,
                 gather_across_devices: bool = False, directions: Tuple[str, ...] = _QUERY_TO_DOC,
                 partition_mode: str = "joint", show_progress_bar: bool = False, hardness_mode: Optional[str] = None,
                 hardness_strength: float = 0.0, *, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__(model, scale=scale, similarity_fct=similarity_fct, mini_batch_size=mini_batch_size,
                         mini_batch_num_tokens=mini_batch_num_tokens, gather_across_devices=gather_across_devices,
                         directions=directions, partition_mode=partition_mode, show_progress_bar=show_progress_bar,
                         hardness_mode=hardness_mode, hardness_strength=hardness_strength)
        _check_memory_budget(memory_budget)
        with warnings.catch_warnings():  # warned below, naming this class
            warnings.simplefilter("ignore", FallbackWarning)
            self.loss = MultipleNegativesRankingLoss(
                model, scale=scale, similarity_fct=similarity_fct, gather_across_devices=gather_across_devices,
                directions=directions, partition_mode=partition_mode, hardness_mode=hardness_mode,
                hardness_strength=hardness_strength, memory_budget=memory_budget)
        reason = unfused_reason(self.loss)
        if reason is not None:
            _warn_fallback(type(self).__name__, reason, stacklevel=2)

    @property
    def memory_budget(self) -> int:
        return self.loss.memory_budget

    @property
    def fused(self) -> bool:
        return self.loss.fused

    def calculate_loss(self, reps: List[List[Tensor]], labels: Optional[Tensor] = None, *,
                       with_backward: bool = False) -> Tensor:
        """The loss of the whole batch from the per-mini-batch embeddings; with ``with_backward`` its
        gradients reach the embeddings (``rep.grad``) and the detached value is returned."""
        if not self.fused:
            return super().calculate_loss(reps, labels, with_backward=with_backward)
        loss = self.loss.compute_loss_from_embeddings([torch.cat(column) for column in reps], labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss


class CachedMultipleNegativesSymmetricRankingLoss(CachedMultipleNegativesRankingLoss):
    """sentence-transformers' ``CachedMultipleNegativesSymmetricRankingLoss`` with the fused loss:
    :class:`CachedMultipleNegativesRankingLoss` with directions ("query_to_doc", "doc_to_query") and
    ``partition_mode="per_direction"``."""

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable[[Tensor, Tensor], Tensor] = _st_util.cos_sim,
                 mini_batch_size: int = 32, mini_batch_num_tokens: Optional[int] = None,
                 gather_across_devices: bool = False, show_progress_bar: bool = False, *,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__(model, scale, similarity_fct, mini_batch_size, mini_batch_num_tokens, gather_across_devices,
                         directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
                         show_progress_bar=show_progress_bar, memory_budget=memory_budget)


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
    group_size = _group_size()
    if world_size is None:
        return group_size
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if group_size > 1 and world_size != group_size:
        raise ValueError(f"world_size={world_size} does not match the torch.distributed process group ({group_size})")
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
