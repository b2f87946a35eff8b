"""The fused losses: in-batch contrastive (InfoNCE / CLIP) and SigLIP's pairwise sigmoid, without a
B x B matrix (see contrastive.py and siglip.py)."""
from .blocks import DEFAULT_MEMORY_BUDGET
from .contrastive import ContrastiveLoss, contrastive_loss, direction_losses
from .siglip import SigLIPLoss, siglip_loss

__all__ = ["DEFAULT_MEMORY_BUDGET", "ContrastiveLoss", "SigLIPLoss", "contrastive_loss", "direction_losses",
           "siglip_loss"]
