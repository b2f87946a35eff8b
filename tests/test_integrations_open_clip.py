"""hbfast.integrations.open_clip against open_clip's own loss.py (loaded alone: `import open_clip`
would pull in torchvision), single process and on 2 CPU processes (gloo). Skipped when
open_clip_torch is not installed (`pip install --no-deps open_clip_torch`)."""
import importlib.util
import pathlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import hbfast
from hbfast.integrations import open_clip as drop_in

WORLD, LOCAL_B, D = 2, 10, 12


def load_open_clip_loss():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    path = pathlib.Path(spec.origin).parent / "loss.py"
    loss_spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


open_clip_loss = load_open_clip_loss()
requires_open_clip = pytest.mark.skipif(open_clip_loss is None, reason="needs open_clip_torch (pip install --no-deps)")


def make_inputs(B, dim=D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(B, dim, generator=g, dtype=torch.float64), dim=1)
    text = F.normalize(torch.randn(B, dim, generator=g, dtype=torch.float64) + image, dim=1)
    return image.to(dtype), text.to(dtype), torch.tensor(10.0, dtype=dtype), torch.tensor(-10.0, dtype=dtype)


def run(loss_fn, image, text, scale, bias):
    """Loss and the gradients of every input (bias: None when not given)."""
    leaves = [t.detach().clone().requires_grad_() for t in (image, text, scale)]
    bias_leaf = None if bias is None else bias.detach().clone().requires_grad_()
    out = loss_fn(*leaves, bias_leaf, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    loss = out["contrastive_loss"]
    grads = torch.autograd.grad(loss, leaves + ([bias_leaf] if bias_leaf is not None else []), allow_unused=True)
    return [loss.detach()] + [torch.zeros(()) if g is None else g for g in grads]


def assert_same(got, expected, rtol=1e-5):
    for name, a, b in zip(["loss", "grad_image", "grad_text", "grad_scale", "grad_bias"], got, expected):
        err = ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1.0)).item()
        assert err < rtol, (name, err)


# ---- single process -------------------------------------------------------------------------------

@requires_open_clip
@pytest.mark.parametrize("B", [1, 7, 130])
@pytest.mark.parametrize("with_bias", [False, True])
def test_clip_loss_matches_open_clip(B, with_bias):
    image, text, scale, bias = make_inputs(B, seed=B)
    bias = bias if with_bias else None
    expected = run(open_clip_loss.ClipLoss(cache_labels=True), image, text, scale, bias)
    ours = drop_in.ClipLoss(cache_labels=True)
    for _ in range(2):  # a second call (open_clip: cached labels)
        assert_same(run(ours, image, text, scale, bias), expected)


@requires_open_clip
@pytest.mark.parametrize("B,dim", [(1, 3), (7, 12), (130, 59)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_siglip_loss_matches_open_clip(B, dim, dtype):
    image, text, scale, bias = make_inputs(B, dim, seed=B, dtype=dtype)
    expected = run(open_clip_loss.SigLipLoss(), image, text, scale, bias)
    assert_same(run(drop_in.SigLipLoss(), image, text, scale, bias), expected,
                rtol=1e-5 if dtype == torch.float32 else 1e-12)


@requires_open_clip
@pytest.mark.skipif(not hbfast.build_info()["cuda_available"], reason="needs a CUDA GPU")
def test_cuda_matches_open_clip():
    image, text, scale, bias = (t.cuda() for t in make_inputs(300, 64, seed=5))
    for ours, theirs in ((drop_in.ClipLoss(), open_clip_loss.ClipLoss()),
                         (drop_in.SigLipLoss(), open_clip_loss.SigLipLoss())):
        got = [t.cpu() for t in run(ours, image, text, scale, bias)]
        assert_same(got, [t.cpu() for t in run(theirs, image, text, scale, bias)])


@requires_open_clip
def test_plain_loss_value_without_output_dict():
    image, text, scale, bias = make_inputs(9)
    assert torch.allclose(drop_in.SigLipLoss()(image, text, scale, bias),
                          open_clip_loss.SigLipLoss()(image, text, scale, bias), rtol=1e-6)
    assert torch.allclose(drop_in.ClipLoss()(image, text, scale), open_clip_loss.ClipLoss()(image, text, scale),
                          rtol=1e-6)


def test_bad_input_is_rejected():
    image, text, scale, bias = make_inputs(8)
    for loss, extra in ((drop_in.ClipLoss(), ()), (drop_in.SigLipLoss(), (bias,))):
        with pytest.raises(ValueError, match="same number of rows"):
            loss(image, text[:5], scale, *extra)
        with pytest.raises(ValueError, match="same dimension"):
            loss(image, text[:, :5], scale, *extra)
    with pytest.raises(ValueError, match="SigLipLoss needs logit_bias"):
        drop_in.SigLipLoss()(image, text, scale)
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        drop_in.ClipLoss()(image, text, scale.log() - 5)
    with pytest.raises(ValueError, match="world_size=2 needs an initialised torch.distributed"):
        drop_in.SigLipLoss(rank=0, world_size=2)(image, text, scale, bias)
    with pytest.raises(ValueError, match="world_size=2 needs an initialised torch.distributed"):
        drop_in.ClipLoss(rank=1, world_size=2)(image, text, scale)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        drop_in.ClipLoss(rank=2, world_size=2)
    with pytest.raises(ValueError, match="horovod"):
        drop_in.ClipLoss(use_horovod=True)
    with pytest.raises(ValueError, match="dist_impl"):
        drop_in.SigLipLoss(dist_impl="ring")


# ---- 2 processes (gloo) ---------------------------------------------------------------------------

CLIP_CONFIGS = [dict(local_loss=l, gather_with_grad=g) for l in (False, True) for g in (False, True)]


def _worker(rank, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        module = load_open_clip_loss()
        image_all, text_all, scale, bias = make_inputs(WORLD * LOCAL_B, seed=3)
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        image, text = image_all[rows], text_all[rows]
        for config in CLIP_CONFIGS:
            expected = run(module.ClipLoss(rank=rank, world_size=WORLD, **config), image, text, scale, bias)
            got = run(drop_in.ClipLoss(rank=rank, world_size=WORLD, **config), image, text, scale, bias)
            assert_same(got, expected)
        for dist_impl in ("bidir", "gather"):
            expected = run(module.SigLipLoss(rank=rank, world_size=WORLD, dist_impl=dist_impl), image, text, scale,
                           bias)
            got = run(drop_in.SigLipLoss(rank=rank, world_size=WORLD, dist_impl=dist_impl), image, text, scale, bias)
            assert_same(got, expected)
        # the ranks' mean SigLIP losses average to the single-process loss of the global batch
        local = hbfast.siglip_loss(image, text, scale, bias, gather=True)
        total = local.detach().clone()
        dist.all_reduce(total)
        single = hbfast.reference.siglip_loss(image_all.double(), text_all.double(), scale.double(), bias.double())
        assert abs(total.item() / WORLD - single.item()) < 1e-5 * abs(single.item())
        # a world_size that is not the process group's
        for loss in (drop_in.ClipLoss(rank=rank, world_size=3), drop_in.SigLipLoss(rank=rank, world_size=3)):
            with pytest.raises(ValueError, match="do not match the process group"):
                loss(image, text, scale, bias)
        # local batches of different sizes (every rank raises: the sizes are exchanged first)
        for loss in (drop_in.ClipLoss(rank=rank, world_size=WORLD), drop_in.SigLipLoss(rank=rank, world_size=WORLD)):
            with pytest.raises(ValueError, match="same local batch size"):
                loss(image[: LOCAL_B - rank], text[: LOCAL_B - rank], scale, bias)
    finally:
        dist.destroy_process_group()


@requires_open_clip
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_processes_match_open_clip(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)


# ---- the open_clip_train launcher (examples/open_clip_train.py) ------------------------------------

def test_launcher_builds_the_drop_ins_from_open_clip_train_args():
    from types import SimpleNamespace

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "open_clip_train.py"
    spec = importlib.util.spec_from_file_location("open_clip_train_launcher", path)
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)  # does not import open_clip_train (main() does)
    args = SimpleNamespace(distill=False, model="ViT-B-32", horovod=False, siglip=False, loss_dist_impl=None,
                           local_loss=True, gather_with_grad=True, rank=1, world_size=4)
    clip = launcher.create_loss(args)
    assert isinstance(clip, drop_in.ClipLoss)
    assert (clip.local_loss, clip.gather_with_grad, clip.rank, clip.world_size) == (True, True, 1, 4)
    args.siglip, args.loss_dist_impl = True, "shift"
    siglip = launcher.create_loss(args)
    assert isinstance(siglip, drop_in.SigLipLoss)
    assert (siglip.rank, siglip.world_size, siglip.dist_impl) == (1, 4, "shift")
    args.siglip, args.distill = False, True
    distill = launcher.create_loss(args)
    assert isinstance(distill, drop_in.DistillClipLoss) and (distill.local_loss, distill.rank) == (True, 1)
    args.distill, args.model = False, "coca_ViT-B-32"
    args.coca_caption_loss_weight, args.coca_contrastive_loss_weight = 2.0, 1.0
    coca = launcher.create_loss(args)
    assert isinstance(coca, drop_in.CoCaLoss) and (coca.caption_loss_weight, coca.clip_loss_weight) == (2.0, 1.0)
