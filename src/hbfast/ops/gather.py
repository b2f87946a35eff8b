"""The batch exchange of the fused losses' ``gather=True`` (and of the open_clip drop-ins) under
torch.distributed: every rank's rows gathered, with or without gradients, after one check that every
rank has the same local batch size."""
from __future__ import annotations

from typing import Tuple

import torch


class GatherWithGrad(torch.autograd.Function):
    """all_gather (same shape on every rank) whose backward sums every rank's gradient for this rank's slice (all_reduce),
    which works on every backend (gloo has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_info(q) -> Tuple[int, int]:
    """(rank, world size) for gather=True, after checking that every rank has q's batch size. The sizes
    travel as one small tensor on q's device (no pickled objects, no host round trip on a GPU: there
    the check is queued on the device and a mismatch raises at the next synchronisation)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("gather=True needs an initialised torch.distributed process group")
    world = dist.get_world_size()
    size = torch.full((1,), q.shape[0], dtype=torch.int64, device=q.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    same = torch.cat(sizes).eq(q.shape[0]).all()
    message = "gather=True needs the same local batch size on every rank"
    if q.device.type == "cuda":
        torch._assert_async(same, message)
    elif not bool(same):
        raise ValueError(f"{message}, got {torch.cat(sizes).tolist()}")
    return dist.get_rank(), world


def gather_plain(x):
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)
