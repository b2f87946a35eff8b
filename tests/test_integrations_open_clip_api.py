"""The rest of open_clip's loss API on hbfast's drop-ins, against open_clip's own loss.py (loaded alone):
constructor arguments, get_logits / get_ground_truth, CoCaLoss and DistillClipLoss (values, gradients,
return conventions; single process and 2 gloo processes) and the exception types open_clip raises."""
import inspect

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hbfast.integrations import open_clip as drop_in
from test_integrations_open_clip import load_open_clip_loss, make_inputs, open_clip_loss, requires_open_clip

pytestmark = requires_open_clip
NAMES = ("ClipLoss", "SigLipLoss", "CoCaLoss", "DistillClipLoss")


def grads_of(fn, *inputs):
    """fn's outputs (a tensor, tuple or dict) and the gradient of their sum w.r.t. every input tensor."""
    leaves = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
              for t in inputs]
    out = fn(*leaves)
    values = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, tuple) else [out]
    total = sum(v.sum() for v in values if v.requires_grad)
    wrt = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(total, wrt, allow_unused=True)
    return out, [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]


def assert_outputs_equal(got, expected, rtol):
    assert type(got) is type(expected)
    if isinstance(expected, dict):
        assert list(got) == list(expected)
        got, expected = list(got.values()), list(expected.values())
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("name", NAMES)
def test_every_open_clip_argument_is_accepted_in_the_same_place(name):
    theirs = list(inspect.signature(getattr(open_clip_loss, name).__init__).parameters.values())
    ours = list(inspect.signature(getattr(drop_in, name).__init__).parameters.values())
    assert [(p.name, p.default) for p in ours[: len(theirs)]] == [(p.name, p.default) for p in theirs]
    extra = [p.name for p in ours[len(theirs):]]
    assert extra == (["chunk_size", "memory_budget"] if name == "SigLipLoss" else ["memory_budget"])
    assert issubclass(getattr(drop_in, name), drop_in.ClipLoss) == issubclass(getattr(open_clip_loss, name),
                                                                               open_clip_loss.ClipLoss)


@pytest.mark.parametrize("with_bias", [False, True])
def test_get_logits_and_ground_truth_match_open_clip(with_bias):
    image, text, scale, bias = make_inputs(11, 7, seed=2)
    bias = bias if with_bias else None
    for name in ("ClipLoss", "SigLipLoss"):
        ours, theirs = getattr(drop_in, name)(), getattr(open_clip_loss, name)()
        got = grads_of(lambda *a: ours.get_logits(*a), image, text, scale, bias)
        expected = grads_of(lambda *a: theirs.get_logits(*a), image, text, scale, bias)
        assert_outputs_equal(got[0], expected[0], 1e-6)
        for g, e in zip(got[1], expected[1]):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    for cache in (False, True):
        ours, theirs = drop_in.ClipLoss(cache_labels=cache), open_clip_loss.ClipLoss(cache_labels=cache)
        for n in (5, 5, 3):
            assert torch.equal(ours.get_ground_truth(torch.device("cpu"), n), theirs.get_ground_truth(torch.device("cpu"), n))
        assert (ours.prev_num_logits, list(ours.labels)) == (theirs.prev_num_logits, list(theirs.labels))
    for negative_only in (False, True):
        assert torch.equal(drop_in.SigLipLoss().get_ground_truth("cpu", torch.float64, 4, negative_only),
                           open_clip_loss.SigLipLoss().get_ground_truth("cpu", torch.float64, 4, negative_only))


def caption_inputs(B, T=6, V=13, seed=0, pad_id=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed + 100)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, T - 2:] = pad_id  # padded tail, ignored
    return logits, labels


@pytest.mark.parametrize("B", [1, 9, 70])
@pytest.mark.parametrize("weights", [(2.0, 1.0), (1.0, 0.0), (0.5, None)])
@pytest.mark.parametrize("output_dict", [False, True])
def test_coca_loss_matches_open_clip(B, weights, output_dict):
    caption_weight, clip_weight = weights
    image, text, scale, _ = make_inputs(B, seed=B)
    logits, labels = caption_inputs(B, pad_id=3)
    kw = dict(caption_loss_weight=caption_weight, clip_loss_weight=clip_weight, pad_id=3)
    ours, theirs = drop_in.CoCaLoss(**kw), open_clip_loss.CoCaLoss(**kw)
    args = (image, text, logits, labels, scale)
    got = grads_of(lambda *a: ours(*a, output_dict=output_dict), *args)
    expected = grads_of(lambda *a: theirs(*a, output_dict=output_dict), *args)
    assert_outputs_equal(got[0], expected[0], 1e-5)
    for g, e in zip(got[1], expected[1]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("B,dim", [(1, 4), (13, 8), (150, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distill_loss_matches_open_clip(B, dim, dtype, monkeypatch):
    image, text, scale, _ = make_inputs(B, dim, seed=B, dtype=dtype)
    t_image, t_text, _, _ = make_inputs(B, dim, seed=B + 1, dtype=dtype)
    t_scale = torch.tensor(30.0, dtype=dtype)
    monkeypatch.setattr(drop_in, "DISTILL_BLOCK_ELEMENTS", 7 * B)  # several row blocks of the distillation term
    ours, theirs = drop_in.DistillClipLoss(cache_labels=True), open_clip_loss.DistillClipLoss(cache_labels=True)
    rtol = 1e-5 if dtype == torch.float32 else 1e-11
    args = (image, text, scale, t_image, t_text, t_scale)
    for output_dict in (False, True):
        got = grads_of(lambda *a: ours(*a, output_dict=output_dict), *args)
        expected = grads_of(lambda *a: theirs(*a, output_dict=output_dict), *args)
        assert_outputs_equal(got[0], expected[0], rtol)
        assert len(got[1]) == len(expected[1]) == 6
        for g, e in zip(got[1], expected[1]):
            torch.testing.assert_close(g, e, rtol=rtol, atol=rtol)


def raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return e
    return None


def test_misuse_raises_the_exception_types_open_clip_raises():
    image, text, scale, bias = make_inputs(8)
    cases = [  # (loss name, forward arguments): mismatched dimension (open_clip: RuntimeError), SigLIP rows
        ("ClipLoss", (image, text[:, :5], scale)),
        ("SigLipLoss", (image, text[:5], scale, bias)), ("SigLipLoss", (image, text[:, :5], scale, bias)),
        ("DistillClipLoss", (image, text[:, :5], scale, image, text, scale)),
        ("DistillClipLoss", (image, text, scale, image, text[:, :3], scale)),
    ]
    # CLIP with fewer texts than images: open_clip's labels overflow (IndexError), with more its
    # cross_entropy sees two batch sizes (ValueError); hbfast says which shapes differ (a ValueError)
    for args in ((image, text[:5], scale), (image[:5], text, scale)):
        assert raised(lambda: open_clip_loss.ClipLoss()(*args)) is not None
        with pytest.raises(ValueError, match="same number of rows"):
            drop_in.ClipLoss()(*args)
    for name, args in cases:
        expected = raised(lambda: getattr(open_clip_loss, name)()(*args))
        got = raised(lambda: getattr(drop_in, name)()(*args))
        assert expected is not None and isinstance(got, type(expected)), (name, expected, got)
        assert isinstance(got, ValueError) and ("same dimension" in str(got) or "same number of rows" in str(got))
    logits, labels = caption_inputs(8)
    for bad in ((image, text[:, :5], logits, labels, scale), (image, text, logits, labels[:, :2], scale)):
        expected = raised(lambda: open_clip_loss.CoCaLoss(1.0, 1.0)(*bad))
        assert expected is not None and isinstance(raised(lambda: drop_in.CoCaLoss(1.0, 1.0)(*bad)), type(expected))
    expected = raised(lambda: open_clip_loss.SigLipLoss(dist_impl="ring"))
    got = raised(lambda: drop_in.SigLipLoss(dist_impl="ring"))
    assert isinstance(expected, AssertionError) and isinstance(got, AssertionError) and isinstance(got, ValueError)
    assert "dist_impl" in str(got)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            drop_in.SigLipLoss(chunk_size=bad)


def test_siglip_chunk_size_changes_nothing_but_is_kept():
    image, text, scale, bias = make_inputs(40, seed=4)
    expected = open_clip_loss.SigLipLoss()(image, text, scale, bias)
    for chunk_size in (0, 1, 7, 1000):
        loss = drop_in.SigLipLoss(chunk_size=chunk_size)
        assert loss.chunk_size == chunk_size
        torch.testing.assert_close(loss(image, text, scale, bias), expected, rtol=1e-6, atol=1e-6)


# ---- 2 processes (gloo) ---------------------------------------------------------------------------

WORLD, LOCAL_B = 2, 6


def _worker(rank, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        theirs_module = load_open_clip_loss()
        image_all, text_all, scale, bias = make_inputs(WORLD * LOCAL_B, 10, seed=7)
        t_image_all, t_text_all, _, _ = make_inputs(WORLD * LOCAL_B, 10, seed=8)
        logits_all, labels_all = caption_inputs(WORLD * LOCAL_B)
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        image, text, t_image, t_text = image_all[rows], text_all[rows], t_image_all[rows], t_text_all[rows]
        t_scale = torch.tensor(20.0)
        for local_loss in (False, True):
            for gather_with_grad in (False, True):
                kw = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=WORLD)
                ours, theirs = drop_in.DistillClipLoss(**kw), theirs_module.DistillClipLoss(**kw)
                args = (image, text, scale, t_image, t_text, t_scale)
                got, expected = grads_of(lambda *a: ours(*a, output_dict=True), *args), \
                    grads_of(lambda *a: theirs(*a, output_dict=True), *args)
                assert_outputs_equal(got[0], expected[0], 1e-5)
                for g, e in zip(got[1], expected[1]):
                    torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
                ours = drop_in.CoCaLoss(2.0, 1.0, **kw)
                theirs = theirs_module.CoCaLoss(2.0, 1.0, **kw)
                args = (image, text, logits_all[rows], labels_all[rows], scale)
                got, expected = grads_of(ours, *args), grads_of(theirs, *args)
                assert_outputs_equal(got[0], expected[0], 1e-5)
                for g, e in zip(got[1], expected[1]):
                    torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
                got = drop_in.ClipLoss(**kw).get_logits(image, text, scale, bias)
                expected = theirs_module.ClipLoss(**kw).get_logits(image, text, scale, bias)
                assert_outputs_equal(tuple(t.detach() for t in got), tuple(t.detach() for t in expected), 1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_processes_match_open_clip(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)
