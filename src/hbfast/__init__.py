"""hbfast: hybrid batch training and evaluation of multilingual retrievers, with fused kernels."""
import importlib

from ._ext import UnsupportedGPUError, build_info, get_num_threads, set_num_threads
from .sampling import BatchPlan, HybridBatchSampler, hybrid_batches
from .losses import ContrastiveLoss, contrastive_loss
from .siglip import siglip_loss
from .search import FlatIndex, relevant_ranks, topk
from .radius import range_search
from .selectors import IDSelectorArray, IDSelectorBatch, IDSelectorBitmap, IDSelectorNot, IDSelectorRange
from .shards import ShardError, open_shards, write_shards
from .sharded import ShardedIndex
from . import metrics, reference

__version__ = build_info()["version"]

# Heavier submodules (datasets, transformers) load on first use: hbfast.data, hbfast.eval, hbfast.encoders.
_LAZY_SUBMODULES = ("data", "encoders", "eval")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hbfast' has no attribute {name!r}")


__all__ = [
    "BatchPlan",
    "ContrastiveLoss",
    "FlatIndex",
    "HybridBatchSampler",
    "IDSelectorArray",
    "IDSelectorBatch",
    "IDSelectorBitmap",
    "IDSelectorNot",
    "IDSelectorRange",
    "ShardedIndex",
    "ShardError",
    "UnsupportedGPUError",
    "build_info",
    "contrastive_loss",
    "get_num_threads",
    "hybrid_batches",
    "metrics",
    "range_search",
    "open_shards",
    "reference",
    "relevant_ranks",
    "set_num_threads",
    "siglip_loss",
    "topk",
    "write_shards",
]
