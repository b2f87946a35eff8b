"""hbfast: hybrid batch training and evaluation of multilingual retrievers, with fused kernels."""
from ._ext import build_info, get_num_threads, set_num_threads
from .sampling import BatchPlan, HybridBatchSampler, hybrid_batches
from .losses import ContrastiveLoss, contrastive_loss
from .search import FlatIndex, relevant_ranks, topk
from . import metrics, reference

__version__ = build_info()["version"]

__all__ = [
    "BatchPlan",
    "ContrastiveLoss",
    "FlatIndex",
    "HybridBatchSampler",
    "build_info",
    "contrastive_loss",
    "get_num_threads",
    "hybrid_batches",
    "metrics",
    "reference",
    "relevant_ranks",
    "set_num_threads",
    "topk",
]
