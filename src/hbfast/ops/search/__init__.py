"""Exact similarity search: top-k, ranks of relevant items, range search and id filters (see flat.py,
radius.py and selectors.py)."""
from .flat import FlatIndex, relevant_ranks, topk
from .radius import range_search
from .selectors import IDSelector, IDSelectorArray, IDSelectorBatch, IDSelectorBitmap, IDSelectorNot, IDSelectorRange

__all__ = ["FlatIndex", "IDSelector", "IDSelectorArray", "IDSelectorBatch", "IDSelectorBitmap", "IDSelectorNot",
           "IDSelectorRange", "range_search", "relevant_ranks", "topk"]
