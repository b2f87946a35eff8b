"""hbfast: hybrid batch training and evaluation of multilingual retrievers, with fused kernels."""
import importlib

from .ops import (ContrastiveLoss, CUDAKernelMismatchWarning, FlatIndex, IDSelectorArray, IDSelectorBatch,
                  IDSelectorBitmap, IDSelectorNot, IDSelectorRange, SigLIPLoss, UnsupportedGPUError, build_info,
                  contrastive_loss, get_num_threads, range_search, relevant_ranks, set_num_threads, siglip_loss, topk)
from .sampling import BatchPlan, HybridBatchSampler, hybrid_batches
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
    "CUDAKernelMismatchWarning",
    "ContrastiveLoss",
    "FlatIndex",
    "HybridBatchSampler",
    "IDSelectorArray",
    "IDSelectorBatch",
    "IDSelectorBitmap",
    "IDSelectorNot",
    "IDSelectorRange",
    "ShardedIndex",
    "SigLIPLoss",
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
