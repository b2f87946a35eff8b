"""hbfast.integrations.sentence_transformers against sentence-transformers itself: the losses' values
and gradients, whole SentenceTransformerTrainer runs, and the hybrid batch sampler's invariants."""
import warnings

import numpy as np
import pytest
import torch

import hbfast

st = pytest.importorskip("sentence_transformers")
from hbfast.integrations.sentence_transformers import st_losses  # noqa: E402  (6.x or 5.x path)
from sentence_transformers import util as st_util  # noqa: E402

from hbfast.integrations import sentence_transformers as hst  # noqa: E402


def st_symmetric(model, **kw):
    with warnings.catch_warnings():  # sentence-transformers 6 deprecates the class in favour of directions=
        warnings.simplefilter("ignore", DeprecationWarning)
        return st_losses.MultipleNegativesSymmetricRankingLoss(model, **kw)


def columns(b=24, d=16, negatives=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=dtype) for _ in range(2 + negatives)]


def loss_and_grads(loss, cols):
    leaves = [c.clone().requires_grad_() for c in cols]
    value = loss.compute_loss_from_embeddings(leaves, None)
    return value.detach(), torch.autograd.grad(value, leaves)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("similarity", ["cos_sim", "dot_score"])
@pytest.mark.parametrize("negatives", [0, 1, 3])
def test_loss_value_and_gradients_match_sentence_transformers(symmetric, similarity, negatives):
    fct = getattr(st_util, similarity)
    scale = 20.0 if similarity == "cos_sim" else 0.7
    ours = (hst.MultipleNegativesSymmetricRankingLoss if symmetric else hst.MultipleNegativesRankingLoss)(
        None, scale=scale, similarity_fct=fct)
    theirs = (st_symmetric if symmetric else st_losses.MultipleNegativesRankingLoss)(None, scale=scale, similarity_fct=fct)
    cols = columns(b=37, d=19, negatives=negatives, seed=negatives)
    value, grads = loss_and_grads(ours, cols)
    ref_value, ref_grads = loss_and_grads(theirs, cols)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    assert ours.get_config_dict() == theirs.get_config_dict()
    assert ours.citation == theirs.citation


def test_directions_form_of_the_symmetric_loss_and_config():
    ours = hst.MultipleNegativesRankingLoss(None, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    theirs = st_losses.MultipleNegativesRankingLoss(None, directions=("query_to_doc", "doc_to_query"),
                                                    partition_mode="per_direction")
    cols = columns(negatives=1, dtype=torch.float64)
    torch.testing.assert_close(loss_and_grads(ours, cols)[0], loss_and_grads(theirs, cols)[0], rtol=1e-10, atol=1e-10)
    assert isinstance(ours, st_losses.MultipleNegativesRankingLoss)
    assert ours.temperature == theirs.temperature


def test_columns_of_other_sizes_give_the_library_values_or_errors():
    ours, theirs = hst.MultipleNegativesRankingLoss(None), st_losses.MultipleNegativesRankingLoss(None)
    g = torch.Generator().manual_seed(3)
    a, p, n = (torch.randn(r, 6, generator=g, dtype=torch.float64) for r in (5, 8, 3))
    for cols in ([a, p], [a, p, n], [a, p[:5], n]):  # more positives than anchors; fewer negatives
        torch.testing.assert_close(loss_and_grads(ours, cols)[0], loss_and_grads(theirs, cols)[0])
        for g_ours, g_theirs in zip(loss_and_grads(ours, cols)[1], loss_and_grads(theirs, cols)[1]):
            torch.testing.assert_close(g_ours, g_theirs)
    for cols in ([p, a], [a, p, p[:, :4]], [a], [a[0], p[0]]):  # misuse: the library's own exception
        outcomes = []
        for loss in (ours, theirs):
            with pytest.raises(Exception) as info:
                loss.compute_loss_from_embeddings(cols, None)
            outcomes.append((info.type, str(info.value)))
        assert outcomes[0] == outcomes[1]
    with pytest.raises(ValueError, match="Scale must be a positive value"):  # the library's own check
        hst.MultipleNegativesRankingLoss(None, scale=0)


def test_large_batch_runs_without_the_score_matrix():
    # B = 4096 with 2 columns of negatives: sentence-transformers' matrix would be 4096 x 12288 floats
    # (192 MiB, more with its softmax); hbfast keeps blocks within memory_budget (here 8 MiB), recomputes the rest.
    loss = hst.MultipleNegativesRankingLoss(None, memory_budget=8 << 20)
    cols = [c.requires_grad_() for c in columns(b=4096, d=16, negatives=2)]
    value = loss.compute_loss_from_embeddings(cols, None)
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(c.grad).all() for c in cols)


# ---- the hybrid batch sampler ---------------------------------------------------------------------

LANGS = ("en", "de", "fr")


def parallel_texts(n_items=30, seed=0):
    """Item i's query and passage per language; some items miss some languages."""
    rng = np.random.default_rng(seed)
    queries, passages = {}, {}
    for lang in LANGS:
        present = rng.random(n_items) < 0.8
        queries[lang] = [f"{lang} question {i} about topic {i % 7}" if present[i] else None for i in range(n_items)]
        passages[lang] = [f"{lang} passage {i}: the answer is {i * 3}" if present[i] else None for i in range(n_items)]
    return queries, passages


def check_hybrid_epoch(batches, dataset, item_ids, languages, world_size):
    """X-X: one language per global batch; X-Y: query language != passage language in every row; no
    item twice in an epoch; the world_size consecutive batches of a step share kind (and language)."""
    assert len(batches) % world_size == 0
    seen = set()
    for step in range(0, len(batches), world_size):
        rows = [r for b in batches[step : step + world_size] for r in b]
        assert all(len(b) > 0 for b in batches[step : step + world_size])
        pairs = [tuple(languages[r]) for r in rows]
        mono = [q == p for q, p in pairs]
        assert all(mono) or not any(mono), "a global step mixes X-X and X-Y rows"
        if all(mono):
            assert len({q for q, _ in pairs}) == 1, "an X-X step uses more than one language"
        items = [item_ids[r] for r in rows]
        assert not seen & set(items) and len(set(items)) == len(items), "an item repeats within the epoch"
        seen |= set(items)
        for r in rows:  # the row's texts are the item's, in the row's languages
            q, p = languages[r]
            assert dataset[r]["anchor"].startswith(f"{q} question {item_ids[r]} ")
            assert dataset[r]["positive"].startswith(f"{p} passage {item_ids[r]}:")
    return seen


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_hybrid_sampler_batches_satisfy_the_invariants(world_size, alpha):
    queries, passages = parallel_texts(40)
    dataset, item_ids, languages = hst.hybrid_pairs_dataset(queries, passages, alpha=alpha)
    make = hst.hybrid_batch_sampler(item_ids, languages, alpha=alpha, world_size=world_size)
    sampler = make(dataset, batch_size=4, drop_last=False, valid_label_columns=["label"],
                   generator=torch.Generator(), seed=3)
    assert isinstance(sampler, hst.DefaultBatchSampler)
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        seen = check_hybrid_epoch(batches, dataset, item_ids, languages, world_size)
        if alpha < 1:  # drop_last=False: every item with two languages is used, but for a last global
            # batch of fewer than world_size rows (it cannot give every rank a row, so it is left out)
            multi = {i for i in set(item_ids) if len({l for j, ls in zip(item_ids, languages) if j == i for l in ls}) > 1}
            assert len(multi - seen) < world_size
        epochs.append(batches)
    assert epochs[0] != epochs[1]  # reseeded per epoch
    sampler.set_epoch(0)
    assert list(sampler) == epochs[0]  # a pure function of (seed, epoch)
    # the per-rank batches are exactly hbfast.hybrid_batches' rank slices
    plan = hbfast.hybrid_batches(make(dataset, 4, False, seed=3).layout.availability, 4, alpha=alpha, seed=3, epoch=0,
                              drop_last=False, rank=world_size - 1, world_size=world_size)
    last_rank = epochs[0][world_size - 1 :: world_size]
    assert [len(b) for b in last_rank] == [int((row >= 0).sum()) for row in plan.items][: len(last_rank)]


def test_accelerate_hands_each_rank_its_slice_of_the_global_batch():
    # what the trainer does under DDP: accelerate wraps the batch sampler in BatchSamplerShard
    from accelerate.data_loader import BatchSamplerShard

    queries, passages = parallel_texts(40)
    dataset, item_ids, languages = hst.hybrid_pairs_dataset(queries, passages)
    make = hst.hybrid_batch_sampler(item_ids, languages, world_size=2)
    sampler = make(dataset, batch_size=3, drop_last=True, seed=5)
    layout = sampler.layout
    for rank in (0, 1):
        shard = BatchSamplerShard(sampler, num_processes=2, process_index=rank, split_batches=False, even_batches=False)
        plan = hbfast.hybrid_batches(layout.availability, 3, alpha=0.5, seed=5, epoch=0, rank=rank, world_size=2)
        expected = [layout.rows(i, q, p).tolist() for i, q, p in zip(plan.items, plan.query_lang, plan.passage_lang)]
        assert list(shard) == expected


def test_hybrid_sampler_bad_input():
    queries, passages = parallel_texts(12)
    dataset, item_ids, languages = hst.hybrid_pairs_dataset(queries, passages)
    with pytest.raises(ValueError, match="item_ids=..., languages=..."):  # the class given without the layout
        hst.HybridDefaultBatchSampler(dataset, 4, False)
    with pytest.raises(ValueError, match="rows"):
        hst.hybrid_batch_sampler(item_ids, languages[:-1])
    with pytest.raises(ValueError, match="one .query language, passage language. pair"):
        hst.hybrid_batch_sampler(item_ids, [q for q, _ in languages])
    cross = [i for i, (q, p) in enumerate(languages) if q != p]
    with pytest.raises(ValueError, match="has no row with query language"):
        hst.hybrid_batch_sampler([item_ids[i] for i in range(len(item_ids)) if i != cross[0]],
                                 [languages[i] for i in range(len(item_ids)) if i != cross[0]], alpha=0.5)
    with pytest.raises(ValueError, match="are both item"):
        hst.hybrid_batch_sampler(item_ids + item_ids[:1], languages + languages[:1])
    make = hst.hybrid_batch_sampler(item_ids, languages)
    with pytest.raises(ValueError, match="dataset has 3 rows"):
        make(dataset.select(range(3)), 4, False)
    assert isinstance(hst.hybrid_batch_sampler(item_ids, languages, other_datasets="default")(dataset.select(range(3)), 2, False),
                      hst.DefaultBatchSampler)
    with pytest.raises(ValueError, match="world_size"):
        hst.hybrid_batch_sampler(item_ids, languages, world_size=0)(dataset, 4, False)


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_hybrid_sampler_on_data_smaller_than_one_batch_gives_short_batches(world_size, alpha):
    # like DefaultBatchSampler: a dataset smaller than one batch gives short batches, none with drop_last
    queries, passages = parallel_texts(12)
    dataset, item_ids, languages = hst.hybrid_pairs_dataset(queries, passages, alpha=alpha)
    make = hst.hybrid_batch_sampler(item_ids, languages, alpha=alpha, world_size=world_size)
    sampler = make(dataset, batch_size=1000, drop_last=False, seed=1)
    batches = list(sampler)
    assert 0 < len(batches) == len(sampler) and all(0 < len(b) < 1000 for b in batches)
    seen = check_hybrid_epoch(batches, dataset, item_ids, languages, world_size)
    if alpha < 1:  # every item with two languages is used, as with a batch size the data can fill
        multi = {i for i in set(item_ids) if len({l for j, ls in zip(item_ids, languages) if j == i for l in ls}) > 1}
        assert len(multi - seen) < world_size
    assert list(make(dataset, batch_size=1000, drop_last=True, seed=1)) == []
    assert len(make(dataset, batch_size=1000, drop_last=True, seed=1)) == 0
    one = [next(r for r, (q, p) in enumerate(languages) if q == p)] if alpha > 0 else []  # a single X-X row
    if not one:
        return
    tiny = hst.hybrid_batch_sampler([item_ids[r] for r in one], [languages[r] for r in one], alpha=1.0,
                                    world_size=1)(dataset.select(one), 8, False)
    assert list(tiny) == [[0]]
    from sentence_transformers.base.sampler import DefaultBatchSampler

    assert len(list(DefaultBatchSampler(dataset.select(one), 8, False))) == 1  # one short batch there too
    assert list(DefaultBatchSampler(dataset.select(one), 8, True)) == []


# ---- whole trainer runs (examples/st_drop_in.py) -----------------------------------------------------

def load_example(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_gives_the_same_losses_as_sentence_transformers():
    # the example on 3 bundled XQuAD-R languages, hybrid batches; same seed, so the same batches and dropout
    example = load_example("st_drop_in")
    kw = dict(languages=("en", "de", "zh"), n_items=24, steps=2, batch_size=4, alpha=0.5, max_seq_length=24)
    ours = example.train(loss="hbfast", **kw)
    theirs = example.train(loss="sentence-transformers", **kw)
    assert len(ours) == 2
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert ours[0] != ours[1]


# ---- gather_across_devices under torch.distributed ---------------------------------------------------

def _gather_worker(rank, init_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        full = columns(b=2 * 9, d=12, negatives=1, seed=11)
        local = [c[rank * 9 : (rank + 1) * 9] for c in full]
        for symmetric in (False, True):
            ours = (hst.MultipleNegativesSymmetricRankingLoss if symmetric else hst.MultipleNegativesRankingLoss)(
                None, gather_across_devices=True)
            theirs = (st_symmetric if symmetric else st_losses.MultipleNegativesRankingLoss)(None, gather_across_devices=True)
            assert ours.fused
            value, grads = loss_and_grads(ours, local)
            ref_value, ref_grads = loss_and_grads(theirs, local)
            torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-5)
            for g, r in zip(grads, ref_grads):
                torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
        joint = dict(gather_across_devices=True, directions=("query_to_doc", "doc_to_query"), partition_mode="joint")
        ours, theirs = hst.MultipleNegativesRankingLoss(None, **joint), st_losses.MultipleNegativesRankingLoss(None, **joint)
        assert ours.fused
        for got, expected in zip(loss_and_grads(ours, local), loss_and_grads(theirs, local)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_gather_across_devices_matches_sentence_transformers(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    mp.spawn(_gather_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True)
