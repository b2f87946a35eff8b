"""``hbfast.losses``: the fused contrastive loss, kept importable here (its home is ``hbfast.ops.loss``)."""
from .ops.loss import DEFAULT_MEMORY_BUDGET, ContrastiveLoss, contrastive_loss, direction_losses

__all__ = ["DEFAULT_MEMORY_BUDGET", "ContrastiveLoss", "contrastive_loss", "direction_losses"]
