"""hbfast.metrics against pytrec_eval (trec_eval itself) and the numpy reference."""
import numpy as np
import pytest
import torch

import hbfast
from hbfast import metrics, reference

pytrec_eval = pytest.importorskip("pytrec_eval")

TREC = {"map": "map", "mrr": "recip_rank", "ndcg@10": "ndcg_cut_10", "recall@10": "recall_10",
        "precision@10": "P_10", "ndcg": "ndcg", "recall@100": "recall_100", "map_cut_5": "map_cut_5"}


def random_run(nq, n_docs, depth, n_judged, seed, graded=True):
    """A run without score ties and graded qrels that include unretrieved and non-relevant items."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.choice(n_docs, depth, replace=False) for _ in range(nq)])  # [nq, depth]
    scores = np.sort(rng.random((nq, depth)).astype(np.float32), axis=1)[:, ::-1].copy()  # distinct, descending
    # distinct judged ids per row; the first two are retrieved, the others rarely are
    judged = np.empty((nq, n_judged), dtype=np.int64)  # [nq, r]
    for i in range(nq):
        picked = ids[i, rng.choice(depth, 2, replace=False)]
        others = rng.choice(np.setdiff1d(np.arange(n_docs), picked), n_judged - 2, replace=False)
        judged[i] = np.concatenate([picked, others])
    gains = rng.integers(0, 4 if graded else 2, judged.shape).astype(np.float64)
    judged[nq // 2 :, -1] = -1  # padding
    gains[judged < 0] = 0
    return scores, ids, judged, gains


def to_dicts(scores, ids, judged, gains):
    run = {f"q{i}": {f"d{d}": float(s) for d, s in zip(ids[i], scores[i])} for i in range(len(ids))}
    qrels = {f"q{i}": {f"d{d}": int(g) for d, g in zip(judged[i], gains[i]) if d >= 0} for i in range(len(ids))}
    return run, qrels


def trec_values(run, qrels, names):
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {TREC[n].rsplit("_", 1)[0] if n.startswith(("ndcg@", "recall@", "precision@", "map_cut")) else TREC[n] for n in names} | {"ndcg_cut", "recall", "P", "map_cut"})
    per_query = evaluator.evaluate(run)
    qids = sorted(per_query)
    return {n: np.array([per_query[q][TREC[n]] for q in qids]) for n in names}, qids


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_matches_pytrec_eval(seed):
    scores, ids, judged, gains = random_run(60, 500, 120, 9, seed)
    names = list(TREC)
    run, qrels = to_dicts(scores, ids, judged, gains)
    expected, qids = trec_values(run, qrels, names)
    order = [int(q[1:]) for q in qids]
    got = metrics.evaluate((scores, ids), (judged, gains), names, per_query=True)
    for n in names:
        np.testing.assert_allclose(got[n][order], expected[n], atol=1e-6, rtol=0, err_msg=n)
    means = metrics.evaluate((torch.from_numpy(scores), torch.from_numpy(ids)), (judged, gains), names)
    for n in names:
        assert abs(means[n] - expected[n].mean()) < 1e-6, n
    from_dicts = metrics.evaluate(run, qrels, names, per_query=True)
    index = {q: i for i, q in enumerate(from_dicts["query_ids"])}
    for n in names:
        np.testing.assert_allclose(from_dicts[n][[index[q] for q in qids]], expected[n], atol=1e-6, rtol=0, err_msg=n)


def test_evaluate_unsorted_run_and_dict_qrels():
    scores, ids, judged, gains = random_run(20, 300, 50, 6, seed=2)
    perm = np.random.default_rng(0).permuted(np.tile(np.arange(50), (20, 1)), axis=1)
    shuffled = (np.take_along_axis(scores, perm, 1), np.take_along_axis(ids, perm, 1))
    qrels = {i: {int(d): float(g) for d, g in zip(judged[i], gains[i]) if d >= 0} for i in range(20)}
    names = ["map", "mrr", "ndcg@10", "precision@10", "recall@10"]
    a = metrics.evaluate((scores, ids), (judged, gains), names, per_query=True)
    b = metrics.evaluate(shuffled, qrels, names, per_query=True)
    for n in names:
        np.testing.assert_allclose(a[n], b[n], atol=1e-12)


def test_dict_run_ties_fall_as_in_trec_eval():
    rng = np.random.default_rng(3)
    run = {f"q{i}": {f"d{j:03d}": float(rng.integers(0, 4)) for j in rng.choice(200, 40, replace=False)} for i in range(30)}
    qrels = {f"q{i}": {f"d{j:03d}": int(rng.integers(1, 3)) for j in rng.choice(200, 15, replace=False)} for i in range(30)}
    names = ["map", "mrr", "ndcg@10", "precision@10"]
    expected, qids = trec_values(run, qrels, names)
    got = metrics.evaluate(run, qrels, names, per_query=True)
    index = {q: i for i, q in enumerate(got["query_ids"])}
    for n in names:
        np.testing.assert_allclose(got[n][[index[q] for q in qids]], expected[n], atol=1e-6, err_msg=n)


def test_metrics_from_ranks_match_reference_and_pytrec_eval():
    rng = np.random.default_rng(4)
    ranks = np.stack([rng.choice(np.arange(1, 2000), 11, replace=False) for _ in range(40)])
    ranks[5, 3:] = -1
    ranks[7, 1:] = -1
    ref = reference.ranked_metrics(ranks)
    np.testing.assert_allclose(metrics.average_precision(ranks), ref("ap"), atol=1e-12)
    np.testing.assert_allclose(metrics.reciprocal_rank(ranks), ref("rr"), atol=1e-12)
    np.testing.assert_allclose(metrics.ndcg(ranks, 10), ref("ndcg", 10), atol=1e-12)
    np.testing.assert_allclose(metrics.recall(ranks, 100), ref("recall", 100), atol=1e-12)
    np.testing.assert_allclose(metrics.precision(ranks, 100), ref("precision", 100), atol=1e-12)
    # the same numbers from trec_eval, with a run that puts relevant doc t of query q at ranks[q, t]
    run, qrels = {}, {}
    for q in range(len(ranks)):
        depth = 2000
        docs = {f"n{j}": float(depth - j) for j in range(1, depth + 1)}
        rel = {}
        for t, rk in enumerate(ranks[q]):
            if rk > 0:
                del docs[f"n{rk}"]
                docs[f"r{t}"] = float(depth - rk)
                rel[f"r{t}"] = 1
        run[f"q{q:02d}"], qrels[f"q{q:02d}"] = docs, rel
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"map", "recip_rank", "ndcg_cut"}).evaluate(run)
    np.testing.assert_allclose(metrics.average_precision(ranks), [trec[f"q{q:02d}"]["map"] for q in range(40)], atol=1e-6)
    np.testing.assert_allclose(metrics.ndcg(ranks, 10), [trec[f"q{q:02d}"]["ndcg_cut_10"] for q in range(40)], atol=1e-6)


def test_average_precision_n_relevant_and_truncated_ranks():
    ranks = np.array([[1, 3, -1], [2, -1, -1], [-1, -1, -1]])
    np.testing.assert_allclose(metrics.average_precision(ranks), [(1 + 2 / 3) / 2, 1 / 2, 0.0])
    np.testing.assert_allclose(metrics.average_precision(ranks, 3), [(1 + 2 / 3) / 3, 1 / 6, 0.0])
    np.testing.assert_allclose(metrics.average_precision(ranks, np.array([4, 1, 2])), [(1 + 2 / 3) / 4, 1 / 2, 0.0])
    np.testing.assert_allclose(metrics.average_precision(torch.tensor([5, 1])), [0.2, 1.0])  # [nq]: one item each


def test_max_rank_distance():
    ranks = np.array([[3, 10, 7], [5, -1, -1], [-1, 40, 1], [-1, -1, -1]])
    np.testing.assert_allclose(metrics.rank_distance(ranks), [7, 0, 39, 0])
    assert metrics.max_rank_distance(ranks) == pytest.approx((7 + 39) / 4)
    assert metrics.max_rank_distance(torch.tensor(ranks)) == pytest.approx(11.5)


def test_ranks_and_runs_agree_end_to_end():
    g = torch.Generator().manual_seed(5)
    q, c = torch.randn(30, 16, generator=g), torch.randn(400, 16, generator=g)
    relevant = torch.randint(0, 400, (30, 4), generator=g)
    relevant[:, 1] = (relevant[:, 0] + 1) % 400  # distinct ids per row
    relevant[:, 2] = (relevant[:, 0] + 2) % 400
    relevant[:, 3] = (relevant[:, 0] + 3) % 400
    ranks = hbfast.relevant_ranks(q, c, relevant)
    run = hbfast.topk(q, c, 400)
    names = ["map", "mrr", "ndcg@10", "recall@100", "precision@10"]
    from_run = metrics.evaluate(run, relevant, names)
    from_ranks = metrics.evaluate_ranks(ranks, names)
    for n in names:
        assert from_run[n] == pytest.approx(from_ranks[n], abs=1e-12)
    assert from_ranks["map"] == pytest.approx(float(metrics.average_precision(ranks).mean()))


def test_bad_metric_input():
    ranks = np.array([[1, 2]])
    cases = [
        (lambda: metrics.average_precision(np.array([[0, 1]])), ValueError, "1-based"),
        (lambda: metrics.average_precision(np.array([[1.0, 2.0]])), TypeError, "integers"),
        (lambda: metrics.average_precision(ranks, np.array([1, 2])), ValueError, "one count per query"),
        (lambda: metrics.average_precision(ranks, -1), ValueError, ">= 0"),
        (lambda: metrics.evaluate_ranks(ranks, ["mapp"]), ValueError, "unknown metric"),
        (lambda: metrics.evaluate_ranks(ranks, ["precision"]), ValueError, "unknown metric"),
        (lambda: metrics.evaluate((np.zeros((2, 3), np.float32), np.zeros((2, 4), np.int64)), np.zeros((2, 1), np.int64)), ValueError, "both be"),
        (lambda: metrics.evaluate((np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64)), np.zeros((3, 1), np.int64)), ValueError, "qrels ids must be"),
        (lambda: metrics.evaluate((np.full((1, 2), np.nan, np.float32), np.zeros((1, 2), np.int64)), np.zeros((1, 1), np.int64)), ValueError, "NaN"),
        (lambda: metrics.evaluate({"q": {"d": 1.0}}, (np.zeros((1, 1), np.int64),)), TypeError, "dict qrels"),
        (lambda: metrics.evaluate({"q": {"d": float("nan"), "e": 1.0}}, {"q": {"d": 1}}), ValueError, "run scores contain NaN"),
        (lambda: metrics.evaluate({"q": {"d": 2.0, "e": 1.0}}, {"q": {"d": float("nan")}}), ValueError, "gains contain NaN"),
        (lambda: metrics.evaluate({"q": {"d": 2.0}}, {"q": {"d": float("inf")}}), ValueError, "gains contain NaN"),
        (lambda: metrics.evaluate((np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int64)), {5: {1: 1}}), ValueError, "outside"),
        (lambda: metrics.evaluate((np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int64)), np.array([[3, 3]])), ValueError, "repeats"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
