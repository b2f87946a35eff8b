"""gather=True on 2 CPU processes (gloo): each rank's loss over its rows against the gathered batch
must equal the single-process loss over the global batch, gradients included."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hbfast

WORLD, LOCAL_B, D, M = 2, 12, 6, 3


def global_inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(WORLD * LOCAL_B, D, generator=g, dtype=torch.float64), dim=1)
    p = torch.nn.functional.normalize(torch.randn(WORLD * LOCAL_B, D, generator=g, dtype=torch.float64), dim=1)
    h = torch.nn.functional.normalize(torch.randn(WORLD * M, D, generator=g, dtype=torch.float64), dim=1)
    groups = torch.arange(WORLD * LOCAL_B) % 9  # some pairs fall in one group, across ranks too
    return q, p, h, groups


def _worker(rank, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for symmetric in (True, False):
            _check_rank(rank, symmetric)
    finally:
        dist.destroy_process_group()


def _check_rank(rank, symmetric):
    q, p, h, groups = global_inputs()
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    negs = slice(rank * M, (rank + 1) * M)
    # the single-process reference over the global batch (float64)
    leaves = [t.clone().requires_grad_() for t in (q, p, h)]
    ref_rows = hbfast.reference.contrastive_loss(*leaves[:2], hard_negatives=leaves[2], group_ids=groups,
                                                 symmetric=symmetric, reduction="none")
    ref_grads = torch.autograd.grad(ref_rows.mean(), leaves)
    # this rank's share, float32 kernel
    ql, pl, hl = (t[s].float().clone().requires_grad_() for t, s in ((q, rows), (p, rows), (h, negs)))
    local = hbfast.contrastive_loss(ql, pl, hard_negatives=hl, group_ids=groups[rows], symmetric=symmetric,
                                    gather=True, reduction="none")
    torch.testing.assert_close(local.double(), ref_rows[rows].detach(), rtol=1e-5, atol=1e-6)
    local.mean().backward()
    # each rank's gradient of its own mean loss, summed through the gathers, is WORLD times the
    # gradient of the global mean loss for its slice (DDP's averaging then gives the global one)
    for got, ref in ((ql.grad, ref_grads[0][rows]), (pl.grad, ref_grads[1][rows]), (hl.grad, ref_grads[2][negs])):
        torch.testing.assert_close(got.double(), WORLD * ref, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_gather_matches_single_process_loss(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)
