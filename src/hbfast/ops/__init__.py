"""Every kernel's Python side, one subpackage per op family, each with a ``cpu.py`` and a ``cuda.py``
body, shared input checks and one dispatch point per op:

- ``ops.loss``: the fused contrastive (InfoNCE / CLIP) and SigLIP losses (``contrastive.py``,
  ``siglip.py``; ``blocks.py`` the row-block walk both make; ``generic.py`` their plain PyTorch twin);
- ``ops.search``: exact search (``flat.py``: topk, relevant_ranks, FlatIndex; ``radius.py``: range
  search; ``selectors.py``: id filters; ``inputs.py``: the checks and the corpus tiling);
- ``ext.py`` loads the extension ``hbfast._C`` and says what it was built with and where it runs;
  ``gemm.py`` chooses the CPU matrix product; ``gather.py`` is the losses' distributed gather;
  ``safety.py`` checks each CUDA op family on first use and falls back to PyTorch on a mismatch.

Users import these from ``hbfast`` (or ``hbfast.losses`` / ``hbfast.search`` / ``hbfast.siglip``).
"""
from .ext import UnsupportedGPUError, build_info, get_num_threads, set_num_threads
from .loss import ContrastiveLoss, SigLIPLoss, contrastive_loss, siglip_loss
from .safety import CUDAKernelMismatchWarning
from .search import (FlatIndex, IDSelector, IDSelectorArray, IDSelectorBatch, IDSelectorBitmap, IDSelectorNot,
                     IDSelectorRange, range_search, relevant_ranks, topk)

__all__ = ["CUDAKernelMismatchWarning", "ContrastiveLoss", "FlatIndex", "IDSelector", "IDSelectorArray",
           "IDSelectorBatch", "IDSelectorBitmap", "IDSelectorNot", "IDSelectorRange", "SigLIPLoss",
           "UnsupportedGPUError", "build_info", "contrastive_loss", "get_num_threads", "range_search",
           "relevant_ranks", "set_num_threads", "siglip_loss", "topk"]
