"""Data-parallel training under torchrun: process group set-up and gradient averaging.

Each rank takes its slice of every global batch from ``HybridBatchSampler`` (so a step's global
batch has one batch type and, for X-X, one language), the loss gathers all ranks' embeddings
(``gather=True``: the negatives are the global batch's), and after the backward the gradients
are averaged over ranks with one all-reduce of a flat buffer. Replicas start identical (rank 0's
weights are broadcast), so they stay identical. gloo on CPU, NCCL on CUDA.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group when launched and not yet done."""
    if not launched():
        return 0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), dev


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_parameters(model: torch.nn.Module) -> None:
    if active():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters) -> None:
    """Mean of every rank's gradients, in place (one flat all-reduce)."""
    if not active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_scalar(value: float, device) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def all_true(flag: bool, device) -> bool:
    """Whether ``flag`` holds on every rank."""
    if not active():
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_objects(value) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not active():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
