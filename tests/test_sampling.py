"""Hybrid batch plans: every semantic of hbfast.hybrid_batches, kernel == reference, bad input."""
import numpy as np
import pytest
import torch

import hbfast

FIELDS = ("items", "query_lang", "passage_lang", "mono")


def random_availability(n, L, p, seed=0, full_langs=0):
    rng = np.random.default_rng(seed)
    a = rng.random((n, L)) < p
    a[:, :full_langs] = True
    return a


def rows(plan):
    """(batch index, item, query_lang, passage_lang) of every non-padding row."""
    b, r = np.nonzero(plan.items >= 0)
    return b, plan.items[b, r], plan.query_lang[b, r], plan.passage_lang[b, r]


def check_plan_invariants(plan, avail, batch_size):
    assert plan.items.dtype == np.int64 and plan.items.shape == (len(plan), batch_size)
    assert plan.query_lang.shape == plan.passage_lang.shape == plan.items.shape
    assert plan.mono.dtype == np.bool_ and plan.mono.shape == (len(plan),)
    pad = plan.items < 0
    assert np.array_equal(pad, plan.query_lang < 0) and np.array_equal(pad, plan.passage_lang < 0)
    assert np.all(plan.items[pad] == -1)
    b, item, ql, pl = rows(plan)
    assert np.all(avail[item, ql]) and np.all(avail[item, pl])
    assert np.all((ql == pl) == plan.mono[b]), "X-X rows share a language, X-Y rows never do"
    for k in np.flatnonzero(plan.mono):
        langs = plan.query_lang[k][plan.items[k] >= 0]
        assert len(set(langs.tolist())) <= 1, "an X-X batch has one language"
    assert len(np.unique(item)) == len(item), "an item repeats within the epoch"


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("drop_last", [True, False])
def test_invariants(alpha, drop_last):
    avail = random_availability(2000, 6, 0.5, seed=1)
    plan = hbfast.hybrid_batches(avail, 32, alpha=alpha, drop_last=drop_last, seed=3)
    check_plan_invariants(plan, avail, 32)
    if alpha == 1.0:
        assert plan.mono.all()
    if alpha == 0.0:
        assert not plan.mono.any()
    if drop_last:
        assert np.all(plan.items >= 0)


def test_mono_fraction_follows_alpha():
    avail = random_availability(200_000, 8, 0.8, seed=2)
    for alpha in (0.2, 0.5, 0.9):
        plan = hbfast.hybrid_batches(avail, 10, alpha=alpha, seed=5)
        # Drop the end of the epoch, where one kind may run out and the other takes over.
        head = plan.mono[: len(plan) // 2]
        sd = np.sqrt(alpha * (1 - alpha) / len(head))
        assert abs(head.mean() - alpha) < 5 * sd


def language_frequencies(plan, L):
    # The head of the epoch only: later, languages that ran out leave the draw.
    head = len(plan) // 10
    mono = plan.mono[:head]
    langs = plan.query_lang[:head, 0][mono]
    return np.bincount(langs, minlength=L) / len(langs), len(langs)


def test_language_weights():
    L = 4
    avail = np.zeros((400_000, L), dtype=bool)
    avail[:, 0] = True
    avail[:200_000, 1] = True
    avail[:100_000, 2] = True
    avail[:50_000, 3] = True
    cases = {
        "uniform": np.full(L, 0.25),
        "size": avail.sum(0) / avail.sum(),
        (1.0, 0.0, 3.0, 0.0): np.array([0.25, 0.0, 0.75, 0.0]),
    }
    for weights, expected in cases.items():
        plan = hbfast.hybrid_batches(avail, 4, alpha=1.0, lang_weights=weights, seed=9)
        freq, n = language_frequencies(plan, L)
        assert np.all(np.abs(freq - expected) < 5 * np.sqrt(expected * (1 - expected) / n) + 1e-12), (weights, freq)


def test_drop_last_false_uses_every_item_once():
    avail = random_availability(3001, 5, 0.35, seed=4)
    n_langs = avail.sum(1)
    for alpha in (0.0, 0.5, 1.0):
        plan = hbfast.hybrid_batches(avail, 64, alpha=alpha, drop_last=False, seed=1)
        check_plan_invariants(plan, avail, 64)
        b, item, ql, pl = rows(plan)
        used = np.zeros(len(avail), dtype=int)
        np.add.at(used, item, 1)
        assert np.all(used[n_langs >= 2] == 1), "every multi-language item exactly once"
        single = n_langs == 1
        assert np.all(plan.mono[b[single[item]]]), "single-language items only in X-X batches"
        if alpha > 0:
            assert np.all(used[single] == 1)
        else:
            assert np.all(used[single] == 0)
        assert np.all(used[n_langs == 0] == 0)
        assert np.any(plan.items < 0), "3001 items do not fill 64-row batches exactly"


def test_drop_last_true_has_full_batches_only_and_stops_when_nothing_fills():
    avail = random_availability(1000, 3, 0.5, seed=6)
    plan = hbfast.hybrid_batches(avail, 50, alpha=0.5, seed=2)
    check_plan_invariants(plan, avail, 50)
    b, item, *_ = rows(plan)
    left = np.setdiff1d(np.arange(len(avail)), item)
    n_multi_left = (avail[left].sum(1) >= 2).sum()
    per_lang_left = avail[left].sum(0)
    assert n_multi_left < 50 and per_lang_left.max() < 50


def test_deterministic_and_epoch_dependent():
    avail = random_availability(5000, 7, 0.6)
    a = hbfast.hybrid_batches(avail, 40, seed=11, epoch=2)
    b = hbfast.hybrid_batches(avail, 40, seed=11, epoch=2)
    for f in FIELDS:
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.items, hbfast.hybrid_batches(avail, 40, seed=11, epoch=3).items)
    assert not np.array_equal(a.items, hbfast.hybrid_batches(avail, 40, seed=12, epoch=2).items)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_distributed_ranks(world_size, drop_last):
    avail = random_availability(4000, 5, 0.5, seed=8)
    plans = [
        hbfast.hybrid_batches(avail, 16, seed=1, rank=r, world_size=world_size, drop_last=drop_last)
        for r in range(world_size)
    ]
    assert len({len(p) for p in plans}) == 1, "equal length on every rank"
    for p in plans:
        check_plan_invariants(p, avail, 16)
    for p in plans[1:]:
        assert np.array_equal(p.mono, plans[0].mono), "same kind at each step"
    mono_lang = [np.where(p.mono, np.max(p.query_lang, axis=1), -1) for p in plans]
    for ml in mono_lang[1:]:
        full = (mono_lang[0] >= 0) & (ml >= 0)
        assert np.array_equal(ml[full], mono_lang[0][full]), "same language in X-X steps"
    real_rows = np.stack([(p.items >= 0).sum(1) for p in plans])  # [ranks, batches]
    assert np.all(real_rows.max(0) - real_rows.min(0) <= 1), "padded batches are spread evenly over ranks"
    items = np.concatenate([p.items[p.items >= 0] for p in plans])
    assert len(np.unique(items)) == len(items), "ranks get disjoint items"
    whole = hbfast.hybrid_batches(avail, 16 * world_size, seed=1, drop_last=drop_last)
    assert np.array_equal(np.sort(items), np.sort(whole.items[whole.items >= 0]))


@pytest.mark.parametrize(
    "n,L,p,batch,alpha,weights,drop_last",
    [
        (1, 2, 1.0, 1, 0.5, "uniform", False),
        (97, 3, 0.6, 7, 0.5, "uniform", False),
        (500, 11, 0.7, 20, 0.4, "size", True),
        (500, 11, 0.7, 20, 0.6, "size", False),
        (800, 5, 0.4, 9, 1.0, (0.5, 0.0, 1.0, 2.0, 1.0), False),
        (800, 5, 0.4, 9, 0.0, "uniform", False),
        (300, 40, 0.2, 5, 0.5, "uniform", False),   # 32 < L <= 64: generic mask path
        (300, 70, 0.1, 3, 0.5, "size", False),      # L > 64: two mask words
    ],
)
def test_kernel_equals_reference(n, L, p, batch, alpha, weights, drop_last):
    avail = random_availability(n, L, p, seed=n + L, full_langs=1 if n < 10 else 0)
    for world_size, rank in ((1, 0), (2, 1)):
        if batch * world_size > n:
            continue
        args = dict(alpha=alpha, lang_weights=weights, drop_last=drop_last, seed=7, epoch=1, rank=rank, world_size=world_size)
        k = hbfast.hybrid_batches(avail, batch, impl="kernel", **args)
        r = hbfast.hybrid_batches(avail, batch, impl="reference", **args)
        for f in FIELDS:
            assert np.array_equal(getattr(k, f), getattr(r, f)), f


def test_torch_availability_is_accepted():
    avail = random_availability(300, 4, 0.5)
    a = hbfast.hybrid_batches(torch.from_numpy(avail), 8)
    b = hbfast.hybrid_batches(avail, 8)
    assert np.array_equal(a.items, b.items)


def test_sampler_in_a_dataloader():
    avail = random_availability(1000, 4, 0.5, seed=3)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(avail)

        def __getitem__(self, key):
            item, q, p = key
            assert avail[item, q] and avail[item, p]
            return torch.tensor([item, q, p])

    sampler = hbfast.HybridBatchSampler(avail, 16, alpha=0.5, seed=0, drop_last=False)
    loader = torch.utils.data.DataLoader(Pairs(), batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler) == len(hbfast.hybrid_batches(avail, 16, drop_last=False))
    first = [b[:, 0].tolist() for b in batches]
    sampler.set_epoch(1)
    second = [b[:, 0].tolist() for b in loader]
    assert first != second
    seen = np.concatenate([np.array(x) for x in first])
    assert len(np.unique(seen)) == len(seen) == (avail.sum(1) >= 1).sum()


def test_sampler_ranks_have_equal_length():
    avail = random_availability(1000, 4, 0.5, seed=3)
    lens = {len(hbfast.HybridBatchSampler(avail, 8, rank=r, world_size=3)) for r in range(3)}
    assert len(lens) == 1


@pytest.mark.parametrize(
    "avail,kwargs,error,match",
    [
        (np.ones(5, bool), {}, ValueError, "2-D"),
        (np.ones((5, 2), np.int64), {}, TypeError, "boolean"),
        (np.ones((0, 2), bool), {}, ValueError, "empty"),
        (np.ones((5, 0), bool), {}, ValueError, "empty"),
        (np.ones((5, 2), bool), {"batch_size": 0}, ValueError, "batch_size"),
        (np.ones((5, 2), bool), {"batch_size": 2.0}, TypeError, "batch_size"),
        (np.ones((5, 2), bool), {"batch_size": 6}, ValueError, "larger than"),
        (np.ones((5, 2), bool), {"batch_size": 3, "world_size": 2}, ValueError, "larger than"),
        (np.eye(5, dtype=bool), {"batch_size": 2, "alpha": 0.0}, ValueError, "larger than"),
        (np.ones((5, 2), bool), {"alpha": 1.5}, ValueError, "alpha"),
        (np.ones((5, 2), bool), {"alpha": float("nan")}, ValueError, "alpha"),
        (np.ones((5, 2), bool), {"seed": -1}, ValueError, "seed"),
        (np.ones((5, 2), bool), {"rank": 2, "world_size": 2}, ValueError, "rank"),
        (np.ones((5, 2), bool), {"world_size": 0}, ValueError, "world_size"),
        (np.ones((5, 2), bool), {"lang_weights": (1.0,)}, ValueError, "one weight per language"),
        (np.ones((5, 2), bool), {"lang_weights": (1.0, -1.0)}, ValueError, "non-negative"),
        (np.ones((5, 2), bool), {"lang_weights": "zipf"}, ValueError, "lang_weights"),
        (np.array([[1, 0]] * 5, bool), {}, ValueError, r"languages \[1\] have no items"),
        (np.array([[1, 0]] * 5, bool), {"lang_weights": (1.0, 1.0)}, ValueError, "no items"),
        (np.ones((5, 2), bool), {"impl": "fast"}, ValueError, "impl"),
    ],
)
def test_bad_input(avail, kwargs, error, match):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(error, match=match):
        hbfast.hybrid_batches(avail, **kwargs)


def test_size_weights_allow_an_empty_language():
    avail = np.array([[1, 0]] * 5, bool)
    plan = hbfast.hybrid_batches(avail, 2, alpha=1.0, lang_weights="size")
    assert np.all(plan.query_lang == 0)


def test_availability_counts_matches_numpy():
    from hbfast.ops import _C

    avail = random_availability(100_003, 13, 0.3, seed=5)
    counts, n_multi = _C.availability_counts(avail.view(np.uint8))
    assert np.array_equal(counts, avail.sum(0)) and n_multi == (avail.sum(1) >= 2).sum()
