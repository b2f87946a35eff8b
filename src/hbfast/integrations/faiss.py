"""faiss drop-ins: ``IndexFlat``, ``IndexFlatIP`` and ``IndexFlatL2`` whose ``search`` and ``range_search``
run hbfast's kernels (:func:`hbfast.topk`, :func:`hbfast.range_search`).

    import hbfast.integrations.faiss as faiss   # was: import faiss
    index = faiss.IndexFlatIP(384)
    index.add(xb)
    D, I = index.search(xq, 10)
    lims, D, I = index.range_search(xq, 0.5)

With faiss installed, the three classes subclass faiss's own: the vectors live in faiss's storage, so
everything else is faiss's code and works where faiss takes an index (``write_index`` /
``serialize_index`` / ``clone_index``, ``IndexIDMap(index)``, ``Clustering.train(x, index)``,
``ProductQuantizer``'s ``assign_index``, ``reconstruct_batch``, ``remove_ids(IDSelectorRange(...))``,
``add_with_ids``' RuntimeError...). Only the Python-level ``search`` and ``range_search`` are replaced:
they read the stored vectors in place (no copy) and return what faiss returns (same dtypes, the same
padding with -1 and -/+FLT_MAX, AssertionError for k <= 0 or a wrong dimension, IP ties listed higher
id first, range results in id order). ``params=faiss.SearchParameters(sel=...)`` is honoured inside
hbfast's tiles: IDSelectorRange, IDSelectorArray and IDSelectorBitmap directly, any other selector
(Batch, Not, And, Or, ...) by letting faiss evaluate it once over the ids into a bitmap.

faiss's own code runs instead (the results are then faiss's by construction) for: METRIC_L1, METRIC_Linf
and the other metrics hbfast has no kernel for; queries holding NaN or inf, or stored vectors that do;
``numeric_type`` other than float32; an empty index. Where faiss's C++ calls the index itself (e.g.
``IndexIDMap.search``, ``search_and_reconstruct``, ``Clustering``), it reaches faiss's C++ search, not
this Python one: those give faiss's results at faiss's speed. ``clone_index`` / ``read_index`` return
faiss's own classes.

Without faiss, the module serves hbfast.integrations.faiss_standalone's classes (the same search, in
hbfast's own storage) and nothing else of faiss's. Any other name (``faiss.write_index``,
``faiss.IndexIDMap``, ...) is faiss's own, so the module replaces ``import faiss`` as a whole.
"""
from __future__ import annotations

import numpy as np

try:
    import faiss as _faiss
except ImportError:  # no faiss: hbfast's own storage and search
    _faiss = None

if _faiss is None:
    from .faiss_standalone import (METRIC_INNER_PRODUCT, METRIC_L2, IndexFlat, IndexFlatIP,  # noqa: F401
                                   IndexFlatL2, normalize_L2)

    __all__ = ["IndexFlat", "IndexFlatIP", "IndexFlatL2", "METRIC_INNER_PRODUCT", "METRIC_L2", "normalize_L2"]
else:
    import torch

    from ..ops.search import radius, selectors
    from ..ops.search import flat as search

    __all__ = ["IndexFlat", "IndexFlatIP", "IndexFlatL2", "hbfast_selector"]
    FAISS_VERSION = _faiss.__version__
    _FLT_MAX = float(np.finfo(np.float32).max)
    _METRICS = {_faiss.METRIC_INNER_PRODUCT: "ip", _faiss.METRIC_L2: "l2"}

    def __getattr__(name):  # everything else is faiss's
        return getattr(_faiss, name)

    def _members(sel, n: int) -> np.ndarray:
        """The ids in [0, n) faiss's selector `sel` selects, evaluated by faiss itself (one range
        search of n zero vectors with sel as its filter: any selector, in C++)."""
        probe = _faiss.IndexFlatL2(1)
        probe.add(np.zeros((n, 1), np.float32))
        _, _, ids = _faiss.IndexFlatL2.range_search(probe, np.zeros((1, 1), np.float32), 1.0,
                                                    params=_faiss.SearchParameters(sel=sel))
        return ids

    def hbfast_selector(sel, ntotal: int):
        """hbfast's selector for faiss's selector `sel` over ids [0, ntotal) (None: every id)."""
        if sel is None or isinstance(sel, _faiss.IDSelectorAll):
            return None
        if isinstance(sel, _faiss.IDSelectorRange):
            return selectors.IDSelectorRange(int(sel.imin), int(sel.imax))
        if isinstance(sel, _faiss.IDSelectorArray):
            return selectors.IDSelectorArray(_faiss.rev_swig_ptr(sel.ids, sel.n).copy() if sel.n else np.zeros(0, np.int64))
        if isinstance(sel, _faiss.IDSelectorBitmap):
            return selectors.IDSelectorBitmap(_faiss.rev_swig_ptr(sel.bitmap, sel.n).copy() if sel.n else np.zeros(0, np.uint8))
        return selectors.IDSelectorArray(_members(sel, ntotal))

    def _params_selector(params, ntotal: int):
        if params is None:
            return None
        sel = params.sel  # reads back as the base class IDSelector; faiss's wrapper keeps the object given
        kept = (getattr(params, "_sp_field_refs", None) or {}).get("sel")
        if sel is not None and kept is not None and int(kept.this) == int(sel.this):
            sel = kept
        return hbfast_selector(sel, ntotal)

    def _finite(x: np.ndarray) -> bool:
        return x.size == 0 or bool(np.isfinite(x.min())) and bool(np.isfinite(x.max()))

    def _non_finite_scores(error: ValueError) -> bool:
        return "non-finite" in str(error)

    class _HbfastFlatSearch:
        """search / range_search on hbfast's kernels, over the faiss storage of the class it is mixed into."""

        def _hbfast_metric(self):
            return _METRICS.get(self.metric_type)

        def _stored(self) -> torch.Tensor:
            """The stored vectors [ntotal, d], viewed in place in faiss's storage."""
            n, d = self.ntotal, self.d
            return torch.from_numpy(_faiss.rev_swig_ptr(self.get_xb(), n * d).reshape(n, d))

        def search(self, x, k, *, params=None, D=None, I=None, numeric_type=None):  # noqa: E741 - faiss's names
            """faiss's search, computed by hbfast.topk (see the module's docstring for when faiss's runs)."""
            metric = self._hbfast_metric()
            if metric is None or (numeric_type is not None and numeric_type != _faiss.Float32):
                extra = {} if numeric_type is None else {"numeric_type": numeric_type}
                return super().search(x, k, params=params, D=D, I=I, **extra)
            n, d = x.shape
            x = np.ascontiguousarray(x, dtype="float32")
            assert d == self.d
            assert k > 0
            if D is None:
                D = np.empty((n, k), dtype=np.float32)
            else:
                assert D.shape == (n, k)
            if I is None:
                I = np.empty((n, k), dtype=np.int64)  # noqa: E741
            else:
                assert I.shape == (n, k)
            if n == 0 or self.ntotal == 0 or not _finite(x):
                return super().search(x, k, params=params, D=D, I=I)
            found = min(int(k), self.ntotal)
            try:
                scores, ids = search.topk(x, self._stored(), found, metric=metric,
                                          selector=_params_selector(params, self.ntotal))
            except ValueError as error:  # NaN / inf stored: faiss's own results
                if not _non_finite_scores(error):
                    raise
                return super().search(x, k, params=params, D=D, I=I)
            if metric == "ip":  # faiss lists equal scores higher id first (padding, -inf, stays last)
                order = np.lexsort((-ids, -scores), axis=1)
                scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
            pad = -_FLT_MAX if metric == "ip" else _FLT_MAX
            D[:, :found] = np.where(ids >= 0, scores, pad)
            I[:, :found] = ids
            D[:, found:] = pad
            I[:, found:] = -1
            return D, I

        def range_search(self, x, thresh, *, params=None):
            """faiss's range_search, computed by hbfast.range_search: (lims uint64 [n + 1], D float32, I int64);
            IP keeps score > thresh, L2 keeps squared distance < thresh; each query's items in id order."""
            metric = self._hbfast_metric()
            if metric is None:
                return super().range_search(x, thresh, params=params)
            n, d = x.shape
            assert d == self.d
            x = np.ascontiguousarray(x, dtype="float32")
            thresh = float(thresh)
            if n == 0 or self.ntotal == 0 or not _finite(x) or np.isnan(thresh):
                return super().range_search(x, thresh, params=params)
            try:
                lims, values, ids = radius.range_search(x, self._stored(), thresh, metric=metric,
                                                        selector=_params_selector(params, self.ntotal))
            except ValueError as error:
                if not _non_finite_scores(error):
                    raise
                return super().range_search(x, thresh, params=params)
            return lims.astype(np.uint64), values, ids

    class IndexFlat(_HbfastFlatSearch, _faiss.IndexFlat):
        """faiss.IndexFlat (METRIC_L2 by default, or METRIC_INNER_PRODUCT) searched by hbfast."""

    class IndexFlatIP(_HbfastFlatSearch, _faiss.IndexFlatIP):
        """faiss.IndexFlatIP searched by hbfast."""

    class IndexFlatL2(_HbfastFlatSearch, _faiss.IndexFlatL2):
        """faiss.IndexFlatL2 searched by hbfast."""
