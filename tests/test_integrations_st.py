"""hbfast.integrations.sentence_transformers against sentence-transformers itself: the losses' values
and gradients, whole SentenceTransformerTrainer runs, and the hybrid batch sampler's invariants."""
import warnings

import numpy as np
import pytest
import torch

st = pytest.importorskip("sentence_transformers")
from hbfast.integrations.sentence_transformers import _st_losses as st_losses  # noqa: E402  (6.x or 5.x path)
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


def test_unfusable_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="cannot be fused"):
        hst.MultipleNegativesRankingLoss(None, similarity_fct=st_util.euclidean_sim)
    with pytest.raises(ValueError, match="cannot be fused"):
        hst.MultipleNegativesRankingLoss(None, similarity_fct=lambda a, b: a @ b.T)
    with pytest.raises(ValueError, match="directions"):
        hst.MultipleNegativesRankingLoss(None, directions=("query_to_doc", "query_to_query"))
    with pytest.raises(ValueError, match="scale"):
        hst.MultipleNegativesRankingLoss(None, scale=0)
    loss = hst.MultipleNegativesRankingLoss(None)
    a, p = columns(b=8, negatives=0)
    with pytest.raises(ValueError, match="mismatched batch"):
        loss.compute_loss_from_embeddings([a, p[:5]], None)
    with pytest.raises(ValueError, match="mismatched batch"):
        loss.compute_loss_from_embeddings([a, p, p[:, :4]], None)
    with pytest.raises(ValueError, match="at least 2"):
        loss.compute_loss_from_embeddings([a], None)


def test_large_batch_runs_without_the_score_matrix():
    # B = 8192 with 2 columns of negatives: sentence-transformers' matrix would be 8192 x 24576 floats
    # (768 MiB with its softmax); hbfast keeps blocks within memory_budget (here 16 MiB) and recomputes the rest.
    loss = hst.MultipleNegativesRankingLoss(None, memory_budget=16 << 20)
    cols = [c.requires_grad_() for c in columns(b=8192, d=32, negatives=2)]
    value = loss.compute_loss_from_embeddings(cols, None)
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(c.grad).all() for c in cols)
