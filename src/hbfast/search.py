"""``hbfast.search``: exact search, kept importable here (its home is ``hbfast.ops.search``)."""
from .ops.search import FlatIndex, range_search, relevant_ranks, topk

__all__ = ["FlatIndex", "range_search", "relevant_ranks", "topk"]
