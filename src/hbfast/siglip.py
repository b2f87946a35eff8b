"""``hbfast.siglip``: the fused SigLIP loss, kept importable here (its home is ``hbfast.ops.loss``)."""
from .ops.loss import SigLIPLoss, siglip_loss

__all__ = ["SigLIPLoss", "siglip_loss"]
