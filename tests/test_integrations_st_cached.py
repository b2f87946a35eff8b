"""hbfast.integrations.sentence_transformers against sentence-transformers itself, the behaviours its own
tests exercise: every constructor argument (fused or falling back to the library's code, with a
FallbackWarning), the library's errors for the same misuse, the cached (GradCache) drop-ins against the
library's cached losses on a real (tiny, random) BERT with dropout, and the float32 value's accuracy."""
import inspect
import warnings

import pytest
import torch

st = pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer, util as st_util  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling, StaticEmbedding, Transformer  # noqa: E402

from hbfast.integrations import sentence_transformers as hst  # noqa: E402
from train_fixtures import WORDS, tiny_bert  # noqa: E402

lib = hst.st_losses
PAIRS = [  # (hbfast class, sentence-transformers class)
    (hst.MultipleNegativesRankingLoss, lib.MultipleNegativesRankingLoss),
    (hst.MultipleNegativesSymmetricRankingLoss, lib.MultipleNegativesSymmetricRankingLoss),
    (hst.CachedMultipleNegativesRankingLoss, lib.CachedMultipleNegativesRankingLoss),
    (hst.CachedMultipleNegativesSymmetricRankingLoss, lib.CachedMultipleNegativesSymmetricRankingLoss),
]


def library(cls, *args, **kw):
    """The library's class; its symmetric classes are deprecated (a DeprecationWarning) in 6.x."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cls(*args, **kw)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("st-tiny-bert"))


def make_model(bert_dir, seed=0):
    torch.manual_seed(seed)
    model = SentenceTransformer(modules=[Transformer(str(bert_dir)), Pooling(32, "mean")], device="cpu")
    model.train()  # dropout on: the cached losses must replay each mini-batch's random state
    return model


def texts(shift, n):
    return [" ".join(WORDS[(i * 7 + j * shift) % len(WORDS)] for j in range(2 + i % 5)) for i in range(n)]


def features(model, n=20, columns=3):
    return [model.preprocess(texts(2 * k + 1, n)) for k in range(columns)]


def value_and_grads(loss, model, feats, seed=1):
    torch.manual_seed(seed)
    value = loss(feats, None)
    value.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return value.detach(), grads


def assert_grads_close(got, expected, rtol=1e-5):
    assert got.keys() == expected.keys()
    scale = max(g.abs().max().item() for g in expected.values())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=rtol * scale, msg=name)


# ---- constructor arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("ours,theirs", PAIRS, ids=lambda c: c.__name__)
def test_every_library_argument_is_accepted_in_the_same_place(ours, theirs):
    lib_params = list(inspect.signature(theirs.__init__).parameters.values())
    our_params = list(inspect.signature(ours.__init__).parameters.values())
    assert [(p.name, p.default, p.kind) for p in our_params[: len(lib_params)]] == \
           [(p.name, p.default, p.kind) for p in lib_params]
    assert [p.name for p in our_params[len(lib_params):]] == ["memory_budget"]  # hbfast's own, keyword only
    assert our_params[-1].kind is inspect.Parameter.KEYWORD_ONLY
    assert issubclass(ours, lib.CachedMultipleNegativesRankingLoss if "Cached" in ours.__name__
                      else lib.MultipleNegativesRankingLoss)


FALLBACKS = [  # settings the kernel does not compute: the library's code runs, with a FallbackWarning
    dict(hardness_mode="in_batch_negatives", hardness_strength=9.0),
    dict(hardness_mode="hard_negatives", hardness_strength=5.0),
    dict(hardness_mode="all_negatives", hardness_strength=2.0),
    dict(directions=("query_to_doc", "query_to_query")),
    dict(directions=("query_to_doc", "doc_to_query", "query_to_query", "doc_to_doc")),
    dict(similarity_fct=st_util.euclidean_sim, scale=1.0),
    dict(similarity_fct=st_util.manhattan_sim, scale=0.5),
]
FUSED = [
    dict(),
    dict(partition_mode="per_direction"),
    dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"),
    dict(directions=("query_to_doc", "doc_to_query"), partition_mode="joint"),
    dict(directions=("doc_to_query", "query_to_doc"), partition_mode="joint", similarity_fct=st_util.dot_score, scale=2.0),
    dict(similarity_fct=st_util.dot_score, scale=0.3),
    dict(hardness_mode="all_negatives", hardness_strength=0.0),  # no hardness weighting (the library logs it)
]


def columns(b=16, d=24, n=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=dtype) for _ in range(n)]


def embedding_value_and_grads(loss, cols):
    leaves = [c.clone().requires_grad_() for c in cols]
    value = loss.compute_loss_from_embeddings(leaves, None)
    return value.detach(), torch.autograd.grad(value, leaves)


@pytest.mark.parametrize("kw", FALLBACKS + FUSED, ids=repr)
def test_each_setting_gives_the_library_value_fused_or_not(kw):
    fused = kw in FUSED
    if fused:
        ours = hst.MultipleNegativesRankingLoss(None, **kw)  # filterwarnings=error: no warning
    else:
        with pytest.warns(hst.FallbackWarning, match="runs sentence-transformers' own code"):
            ours = hst.MultipleNegativesRankingLoss(None, **kw)
    assert ours.fused is fused
    theirs = lib.MultipleNegativesRankingLoss(None, **kw)
    cols = columns(dtype=torch.float64)
    value, grads = embedding_value_and_grads(ours, cols)
    ref_value, ref_grads = embedding_value_and_grads(theirs, cols)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert ours.get_config_dict() == theirs.get_config_dict()
    assert ours.citation == theirs.citation


def test_settings_changed_after_construction_are_honoured():
    ours = hst.MultipleNegativesRankingLoss(None)
    ours.hardness_mode, ours.hardness_strength = "in_batch_negatives", 3.0
    assert not ours.fused
    theirs = lib.MultipleNegativesRankingLoss(None, hardness_mode="in_batch_negatives", hardness_strength=3.0)
    cols = columns(dtype=torch.float64)
    torch.testing.assert_close(embedding_value_and_grads(ours, cols)[0], embedding_value_and_grads(theirs, cols)[0])


def test_a_tensor_scale_runs_the_library_code():
    with pytest.warns(hst.FallbackWarning, match="scale=tensor"):
        ours = hst.MultipleNegativesRankingLoss(None, scale=torch.tensor(15.0, dtype=torch.float64))
    theirs = lib.MultipleNegativesRankingLoss(None, scale=torch.tensor(15.0, dtype=torch.float64))
    cols = columns(dtype=torch.float64)
    assert not ours.fused
    torch.testing.assert_close(embedding_value_and_grads(ours, cols)[0], embedding_value_and_grads(theirs, cols)[0])


MISUSE = [
    dict(scale=0.0), dict(scale=-1.0), dict(directions=()), dict(directions=("query_to_doc", "sideways")),
    dict(directions=("doc_to_query",)), dict(partition_mode="softmax"),
    dict(directions=("query_to_doc", "doc_to_doc"), partition_mode="per_direction"),
    dict(hardness_mode="hardest"), dict(hardness_mode="hard_negatives", hardness_strength=-1.0),
]


def outcome(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type and message are what is compared
        return type(e), str(e)
    return None


@pytest.mark.parametrize("kw", MISUSE, ids=repr)
def test_misuse_raises_what_the_library_raises(kw, bert_dir):
    expected = outcome(lambda: lib.MultipleNegativesRankingLoss(None, **kw))
    assert expected is not None
    assert outcome(lambda: hst.MultipleNegativesRankingLoss(None, **kw)) == expected
    model = make_model(bert_dir)
    expected = outcome(lambda: lib.CachedMultipleNegativesRankingLoss(model, **kw))
    assert expected is not None
    assert outcome(lambda: hst.CachedMultipleNegativesRankingLoss(model, **kw)) == expected


def test_cached_misuse_raises_what_the_library_raises(bert_dir):
    model = make_model(bert_dir)
    for ours, theirs in PAIRS[2:]:
        expected = outcome(lambda: library(theirs, model, mini_batch_num_tokens=0))
        assert expected is not None and outcome(lambda: ours(model, mini_batch_num_tokens=0)) == expected
    static = SentenceTransformer(modules=[StaticEmbedding(model.tokenizer, embedding_dim=8)], device="cpu")
    expected = outcome(lambda: lib.CachedMultipleNegativesRankingLoss(static))
    assert expected is not None and expected[0] is ValueError
    assert outcome(lambda: hst.CachedMultipleNegativesRankingLoss(static)) == expected
    # one column: the library's message, from forward
    loss_ours, loss_theirs = hst.CachedMultipleNegativesRankingLoss(model), lib.CachedMultipleNegativesRankingLoss(model)
    one = features(model, 4, columns=1)
    assert outcome(lambda: loss_ours(one, None)) == outcome(lambda: loss_theirs(one, None)) != None  # noqa: E711
    plain = hst.MultipleNegativesRankingLoss(model)
    assert outcome(lambda: plain.compute_loss_from_embeddings(columns(n=1), None)) == \
        outcome(lambda: lib.MultipleNegativesRankingLoss(model).compute_loss_from_embeddings(columns(n=1), None))
    with pytest.raises(ValueError, match="memory_budget"):
        hst.CachedMultipleNegativesRankingLoss(model, memory_budget=-1)


# ---- the cached (GradCache) drop-ins ---------------------------------------------------------------

@pytest.mark.parametrize("mini_batch_size", [1, 7, 64])
@pytest.mark.parametrize("symmetric", [False, True])
def test_cached_loss_matches_the_library_cached_loss(bert_dir, mini_batch_size, symmetric):
    ours_cls, theirs_cls = PAIRS[3] if symmetric else PAIRS[2]
    model = make_model(bert_dir)
    feats = features(model, n=6 if mini_batch_size == 1 else 20, columns=2 if symmetric else 3)  # (1: slow)
    ours = ours_cls(model, mini_batch_size=mini_batch_size)
    theirs = library(theirs_cls, model, mini_batch_size=mini_batch_size)
    value, grads = value_and_grads(ours, model, feats)
    ref_value, ref_grads = value_and_grads(theirs, model, feats)
    torch.testing.assert_close(value, ref_value, rtol=1e-6, atol=0)
    assert_grads_close(grads, ref_grads)
    assert ours.get_config_dict() == theirs.get_config_dict()
    assert ours.citation == theirs.citation and ours.uses_gradient_cache
    assert ours.fused and isinstance(ours.loss, hst.MultipleNegativesRankingLoss)


def test_cached_loss_equals_the_plain_loss_and_bounds_mini_batches_by_tokens(bert_dir):
    model = make_model(bert_dir)
    model.eval()  # no dropout: the cached and the plain loss see the same embeddings
    feats = features(model, n=24)
    plain = value_and_grads(hst.MultipleNegativesRankingLoss(model), model, feats)
    for kw in (dict(mini_batch_size=5), dict(mini_batch_num_tokens=20)):
        cached = value_and_grads(hst.CachedMultipleNegativesRankingLoss(model, **kw), model, feats)
        library_cached = value_and_grads(lib.CachedMultipleNegativesRankingLoss(model, **kw), model, feats)
        torch.testing.assert_close(cached[0], plain[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(cached[0], library_cached[0], rtol=1e-6, atol=0)
        assert_grads_close(cached[1], plain[1])
        assert_grads_close(cached[1], library_cached[1])


def test_cached_loss_without_grad_and_with_a_fallback_setting(bert_dir):
    model = make_model(bert_dir)
    model.eval()
    feats = features(model, n=12)
    with torch.no_grad():
        ours = hst.CachedMultipleNegativesRankingLoss(model, mini_batch_size=5)(feats, None)
        theirs = lib.CachedMultipleNegativesRankingLoss(model, mini_batch_size=5)(feats, None)
    assert not ours.requires_grad
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    with pytest.warns(hst.FallbackWarning, match="CachedMultipleNegativesRankingLoss: hardness_mode"):
        ours = hst.CachedMultipleNegativesRankingLoss(model, mini_batch_size=5, hardness_mode="all_negatives",
                                                      hardness_strength=4.0)
    assert not ours.fused
    theirs = lib.CachedMultipleNegativesRankingLoss(model, mini_batch_size=5, hardness_mode="all_negatives",
                                                    hardness_strength=4.0)
    got, expected = value_and_grads(ours, model, feats), value_and_grads(theirs, model, feats)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-6, atol=0)
    assert_grads_close(got[1], expected[1])
    # the hyperparameters live on the wrapped loss, as in the library
    ours.scale = 10.0
    assert ours.loss.scale == 10.0 and ours.get_config_dict()["scale"] == 10.0


# ---- accuracy of the float32 value ------------------------------------------------------------------

def test_float32_value_is_within_1e6_of_float64_like_the_library(bert_dir):
    model = make_model(bert_dir)
    model.eval()
    with torch.no_grad():
        embeddings = [model(f)["sentence_embedding"] for f in features(model, n=48)]
    for kw in (dict(), dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")):
        reference = lib.MultipleNegativesRankingLoss(None, **kw).compute_loss_from_embeddings(
            [e.double() for e in embeddings], None).item()
        library_error = abs(lib.MultipleNegativesRankingLoss(None, **kw).compute_loss_from_embeddings(
            embeddings, None).item() - reference) / reference
        ours_error = abs(hst.MultipleNegativesRankingLoss(None, **kw).compute_loss_from_embeddings(
            embeddings, None).item() - reference) / reference
        assert library_error <= 1e-6
        assert ours_error <= 1e-6, (kw, ours_error, library_error)


@pytest.mark.parametrize("seed", range(4))
def test_float32_value_on_anisotropic_embeddings_is_within_1e6_of_float64(seed):
    # pretrained encoders' embeddings share a large common direction (all cosines near 1): a few
    # (anchor, positive, negative) rows of width 768, like the library's own MNRL-vs-cached checks
    g = torch.Generator().manual_seed(seed)
    common = 3 * torch.randn(768, generator=g, dtype=torch.float64)
    cols = [common + torch.randn(5, 768, generator=g, dtype=torch.float64) for _ in range(3)]
    reference = lib.MultipleNegativesRankingLoss(None).compute_loss_from_embeddings(cols, None).item()
    value = hst.MultipleNegativesRankingLoss(None).compute_loss_from_embeddings([c.float() for c in cols], None).item()
    assert abs(value - reference) <= 1e-6 * reference


# ---- inside SentenceTransformerTrainer -----------------------------------------------------------------

def test_trainer_steps_with_the_cached_drop_in_log_the_library_losses(bert_dir, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    logged = []
    for loss_cls in (hst.CachedMultipleNegativesRankingLoss, lib.CachedMultipleNegativesRankingLoss):
        model = make_model(bert_dir)
        dataset = Dataset.from_dict({"anchor": texts(1, 24), "positive": texts(3, 24), "negative": texts(5, 24)})
        args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp_path / loss_cls.__module__), max_steps=3, per_device_train_batch_size=8,
            learning_rate=1e-3, logging_steps=1, seed=0, report_to="none", save_strategy="no", use_cpu=True,
            disable_tqdm=True)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=loss_cls(model, mini_batch_size=3))
        trainer.train()
        logged.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert len(logged[0]) == 3 and len(set(logged[0])) == 3  # the weights moved between steps
    assert logged[0] == pytest.approx(logged[1], rel=1e-4)
