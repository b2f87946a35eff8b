"""Evaluation protocols: LAReQA (XQuAD-R, MLQA-R), BEIR-style retrieval and XTD image-text retrieval.

Encoders are callables ``items -> [n, d]``. Ranks come from ``hbfast.relevant_ranks`` /
``hbfast.topk`` over the full candidate set, metrics from ``hbfast.metrics``; results are
dataclasses that serialise to JSON, write CSV and draw a heatmap PNG.

LAReQA settings (arXiv 2004.05484), each scored by mAP over the full ranking:
monolingual (queries and pool in one language), cross-lingual (every ordered pair of different
languages), multilingual (the union pool of every language, one relevant candidate per language
that has the question), and the language bias as the mean maximum rank distance between a
query's parallel relevant candidates in the union pool (arXiv 2305.09025).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .ops.search import relevant_ranks, topk
from .ops.search.inputs import RANK_METRICS, check_metric

METRICS = RANK_METRICS  # ("ip", "cosine"), and the alias "cos" (ops.search.inputs.check_metric)


# ---- embeddings ----

def check_embeddings(embeddings, n: int, what: str, dim: int | None = None) -> torch.Tensor:
    """Turn an encoder's output into a float32 CPU tensor [n, d], or raise naming ``what``."""
    if isinstance(embeddings, torch.Tensor):
        tensor = embeddings.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(embeddings))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}: the encoder returned {type(embeddings).__name__}, not an array ({e})") from None
    if tensor.dim() != 2 or tensor.shape[0] != n:
        raise ValueError(f"{what}: the encoder returned shape {tuple(tensor.shape)} for {n} inputs; expected [{n}, d]")
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{what}: the encoder returned dtype {tensor.dtype}, expected floats")
    if dim is not None and tensor.shape[1] != dim:
        raise ValueError(f"{what}: embeddings have dimension {tensor.shape[1]}, other inputs had {dim}")
    tensor = tensor.float().cpu()
    if tensor.numel() and all(math.isfinite(v) for v in torch.aminmax(tensor)):  # one pass, no mask (the usual case)
        return tensor
    bad = ~torch.isfinite(tensor).all(1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{what}: the encoder returned NaN or inf in {int(bad.sum())} row(s), first {rows}")
    return tensor


PROGRESS_STEP = 1024  # texts per encoder call when a progress bar is shown


def encode(encoder: Callable, items: Sequence, what: str, dim: int | None = None, bar=None) -> torch.Tensor:
    """``encoder(items)`` checked; with ``bar`` (a tqdm over texts), in calls of PROGRESS_STEP items
    that each advance it, so one bar shows the rate and the time left over every text encoded."""
    if len(items) == 0:
        raise ValueError(f"{what}: nothing to encode")
    items = list(items)
    if bar is None:
        return check_embeddings(encoder(items), len(items), what, dim)
    parts = []
    for start in range(0, len(items), PROGRESS_STEP):
        part = items[start : start + PROGRESS_STEP]
        parts.append(check_embeddings(encoder(part), len(part), what, dim))
        dim = parts[-1].shape[1]
        bar.update(len(part))
    return torch.cat(parts)


def _text_bar(total: int, desc: str, progress: bool):
    """The one progress bar of an evaluation's encoding: texts, with rate and time left."""
    return tqdm(total=total, desc=desc, unit="text", disable=not progress)


def _prepare(x: torch.Tensor, metric: str) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1) if metric == "cosine" else x


# ---- results: JSON, CSV, heatmap ----

def _write_json(data: dict, path) -> str:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n", encoding="utf-8")
    return text


def _write_csv(header: list[str], rows: list[list], path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], path, *,
            title: str = "", xlabel: str = "", ylabel: str = "") -> None:
    """A labelled heatmap PNG (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=float)
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * cols, 0.8 + 0.5 * rows), dpi=120)
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(np.nanmax(matrix))))
    ax.set_xticks(range(cols), labels=list(col_labels))
    ax.set_yticks(range(rows), labels=list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    middle = np.nanmean(matrix) if np.isfinite(matrix).any() else 0.0
    for i in range(rows):
        for j in range(cols):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if matrix[i, j] > middle else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


@dataclasses.dataclass
class LAReQAResult:
    """mAP of every LAReQA setting. ``cross`` is keyed by (query_language, pool_language)."""

    dataset: str
    languages: list[str]
    mono: dict[str, float]
    cross: dict[tuple[str, str], float]
    multi: float
    rank_distance: float
    multi_by_language: dict[str, float]
    rank_distance_by_language: dict[str, float]
    n_queries: dict[str, int]
    n_candidates: dict[str, int]
    model: str = ""
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def mono_mean(self) -> float:
        return float(np.mean(list(self.mono.values())))

    @property
    def cross_mean(self) -> float:
        return float(np.mean(list(self.cross.values()))) if self.cross else math.nan

    @property
    def matrix(self) -> np.ndarray:
        """[L, L] mAP: rows are query languages, columns pool languages; the diagonal is ``mono``."""
        m = np.full((len(self.languages), len(self.languages)), np.nan)
        for i, x in enumerate(self.languages):
            for j, y in enumerate(self.languages):
                m[i, j] = self.mono[x] if x == y else self.cross.get((x, y), np.nan)
        return m

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["cross"] = {x: {y: v for (q, y), v in self.cross.items() if q == x} for x in self.languages}
        data["summary"] = {"mono": self.mono_mean, "cross": self.cross_mean, "multi": self.multi,
                           "rank_distance": self.rank_distance}
        return data

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        return _write_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "LAReQAResult":
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):  # a path, not JSON text
            text = Path(path_or_text).read_text(encoding="utf-8")
        data = json.loads(text)
        data.pop("summary", None)
        data["cross"] = {(x, y): v for x, row in data["cross"].items() for y, v in row.items()}
        return cls(**data)

    def to_csv(self, path: str | os.PathLike) -> None:
        """The L x L mAP matrix: one row per query language, one column per pool language."""
        m = self.matrix
        _write_csv(["query\\pool", *self.languages],
                   [[x, *(f"{v:.6f}" for v in m[i])] for i, x in enumerate(self.languages)], path)

    def plot(self, path: str | os.PathLike) -> None:
        heatmap(self.matrix, self.languages, self.languages, path, xlabel="pool language",
                ylabel="query language", title=f"{self.dataset} mAP {self.model}".strip())

    def summary(self) -> str:
        lines = [f"{self.dataset}  {self.model}".rstrip(),
                 f"{'lang':<6}{'mono':>8}{'cross->':>9}{'->cross':>9}{'multi':>8}{'bias':>9}{'queries':>9}"]
        for x in self.languages:
            out = [v for (q, _), v in self.cross.items() if q == x]
            into = [v for (_, p), v in self.cross.items() if p == x]
            lines.append(f"{x:<6}{self.mono[x]:>8.3f}{np.mean(out) if out else math.nan:>9.3f}"
                         f"{np.mean(into) if into else math.nan:>9.3f}{self.multi_by_language[x]:>8.3f}"
                         f"{self.rank_distance_by_language[x]:>9.1f}{self.n_queries[x]:>9d}")
        lines.append(f"{'all':<6}{self.mono_mean:>8.3f}{self.cross_mean:>9.3f}{self.cross_mean:>9.3f}"
                     f"{self.multi:>8.3f}{self.rank_distance:>9.1f}{sum(self.n_queries.values()):>9d}")
        lines.append(f"mAP mono / cross / multi = {self.mono_mean:.3f} / {self.cross_mean:.3f} / {self.multi:.3f}; "
                     f"mean max rank distance = {self.rank_distance:.1f}")
        return "\n".join(lines)


# ---- LAReQA ----

def evaluate_lareqa(ds, query_encoder: Callable, passage_encoder: Callable | None = None, *,
                    metric: str = "cosine", model: str = "", progress: bool = True) -> LAReQAResult:
    """Encode ``ds`` (a ``hbfast.data.LAReQADataset``) and score every LAReQA setting."""
    metric = check_metric(metric, METRICS)
    passage_encoder = passage_encoder or query_encoder
    start = time.perf_counter()
    queries, candidates, dim = {}, {}, None
    total = sum(len(ds.questions[lang]) + len(ds.candidates[lang]) for lang in ds.languages)
    with _text_bar(total, f"encoding {ds.name}", progress) as bar:
        for lang in ds.languages:
            bar.set_postfix_str(lang)
            queries[lang] = encode(query_encoder, _column(ds.questions[lang], "question"),
                                   f"{ds.name}/{lang} questions", dim, bar)
            dim = queries[lang].shape[1]
            candidates[lang] = encode(passage_encoder, _column(ds.candidates[lang], "text"),
                                      f"{ds.name}/{lang} candidates", dim, bar)
    encode_seconds = time.perf_counter() - start
    result = lareqa_from_embeddings(ds, queries, candidates, metric=metric, model=model)
    result.seconds["encode"] = encode_seconds
    return result


def _column(table, name: str) -> list:
    """A column of a datasets table as a list, read from Arrow at once (row iteration is ~50x slower)."""
    return table.data.column(name).to_pylist()


def _relevant_by_language(ds) -> dict[str, torch.Tensor]:
    """Per query language, [nq, L] rows of the relevant candidate in each language (-1: question absent)."""
    ids = {lang: _column(ds.questions[lang], "id") for lang in ds.languages}
    row_of = {lang: dict(zip(ids[lang], _column(ds.questions[lang], "relevant"))) for lang in ds.languages}
    return {x: torch.tensor([[row_of[y].get(qid, -1) for y in ds.languages] for qid in ids[x]],
                            dtype=torch.int64).reshape(-1, len(ds.languages))
            for x in ds.languages}


def lareqa_from_embeddings(ds, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor], *,
                           metric: str = "cosine", model: str = "") -> LAReQAResult:
    """Score every LAReQA setting from precomputed embeddings: ``queries[lang]`` [nq, d], ``candidates[lang]`` [nc, d]."""
    metric = check_metric(metric, METRICS)
    start = time.perf_counter()
    languages = list(ds.languages)
    checked_queries, checked_candidates, dim = {}, {}, None
    for lang in languages:
        if lang not in queries or lang not in candidates:
            raise ValueError(f"{ds.name}: no embeddings for language {lang!r}")
        checked_queries[lang] = check_embeddings(queries[lang], len(ds.questions[lang]),
                                                 f"{ds.name}/{lang} question embeddings", dim)
        dim = checked_queries[lang].shape[1]
        checked_candidates[lang] = check_embeddings(candidates[lang], len(ds.candidates[lang]),
                                                    f"{ds.name}/{lang} candidate embeddings", dim)
    queries = {lang: _prepare(checked_queries[lang], metric) for lang in languages}
    candidates = {lang: _prepare(checked_candidates[lang], metric) for lang in languages}
    relevant = _relevant_by_language(ds)
    sizes = [len(candidates[lang]) for lang in languages]
    offsets = torch.tensor([0] + sizes[:-1]).cumsum(0)  # [L] first row of each language in the union pool
    pools = [candidates[lang] for lang in languages]  # the union pool, one chunk per language

    in_union = [torch.where(relevant[x] >= 0, relevant[x] + offsets, -1) for x in languages]  # [nq_x, L] each
    # One pass of every question over the union pool ranks its answers in the union (multilingual)
    # and, chunk by chunk, in each language's own pool (mono and cross).
    all_ranks, all_pool_ranks = relevant_ranks(torch.cat([queries[x] for x in languages]), pools,
                                               torch.cat(in_union), per_chunk=True)  # [sum nq, L] each
    n_questions = [len(queries[x]) for x in languages]
    mono, cross, multi_by_language, distance_by_language = {}, {}, {}, {}
    multi_ap = []
    for x, ranks, pool_ranks, rel in zip(languages, all_ranks.split(n_questions), all_pool_ranks.split(n_questions),
                                         in_union):
        for j, y in enumerate(languages):
            present = pool_ranks[:, j] >= 0
            if not present.any():
                continue  # no question of x exists in y (never in XQuAD-R / MLQA-R)
            score = float(metrics.average_precision(pool_ranks[present, j, None], 1).mean())
            if x == y:
                mono[x] = score
            else:
                cross[(x, y)] = score
        if x not in mono:
            raise ValueError(f"{ds.name}/{x}: questions without a relevant candidate in their own language")
        ap = metrics.average_precision(ranks, (rel >= 0).sum(1))
        multi_by_language[x] = float(ap.mean())
        distance_by_language[x] = metrics.max_rank_distance(ranks)
        multi_ap.append(ap)
    return LAReQAResult(
        dataset=ds.name, languages=languages, mono=mono, cross=cross,
        multi=float(np.concatenate(multi_ap).mean()),
        rank_distance=metrics.max_rank_distance(all_ranks),
        multi_by_language=multi_by_language, rank_distance_by_language=distance_by_language,
        n_queries={lang: len(ds.questions[lang]) for lang in languages},
        n_candidates={lang: len(ds.candidates[lang]) for lang in languages},
        model=model, seconds={"search": time.perf_counter() - start},
    )


# ---- BEIR-style ----

@dataclasses.dataclass
class BEIRResult:
    dataset: str
    ndcg_at_10: float
    recall_at_100: float
    n_queries: int
    n_documents: int
    per_query: dict[str, dict[str, float]]
    model: str = ""
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        return _write_json(dataclasses.asdict(self), path)

    def to_csv(self, path: str | os.PathLike) -> None:
        _write_csv(["query", "ndcg@10", "recall@100"],
                   [[q, f"{m['ndcg@10']:.6f}", f"{m['recall@100']:.6f}"] for q, m in self.per_query.items()], path)

    def summary(self) -> str:
        return (f"{self.dataset}  {self.model}".rstrip() + f"\nnDCG@10 = {self.ndcg_at_10:.4f}; "
                f"Recall@100 = {self.recall_at_100:.4f} ({self.n_queries} queries, {self.n_documents} documents)")


def ndcg_recall(ranked: tuple[torch.Tensor, torch.Tensor], doc_ids: Sequence[str], query_ids: Sequence[str],
                qrels: dict[str, dict[str, int]], k_ndcg: int = 10, k_recall: int = 100) -> dict[str, dict[str, float]]:
    """nDCG@k and Recall@k per query (``hbfast.metrics``, trec_eval's definitions) from a ranking
    ``(scores, corpus rows)`` [nq, >= k]. Judged documents missing from the corpus count as relevant
    and never retrieved; negative gains count as 0."""
    row_of = {d: i for i, d in enumerate(doc_ids)}
    width = max(len(qrels[q]) for q in query_ids)
    judged_rows = np.full((len(query_ids), width), -1, dtype=np.int64)
    gains = np.zeros((len(query_ids), width))
    missing = len(doc_ids)  # rows beyond the corpus for judged documents it lacks
    for i, qid in enumerate(query_ids):
        for j, (doc, gain) in enumerate(qrels[qid].items()):
            if doc not in row_of:
                row_of[doc], missing = missing, missing + 1
            judged_rows[i, j], gains[i, j] = row_of[doc], max(float(gain), 0.0)
    names = [f"ndcg@{k_ndcg}", f"recall@{k_recall}"]
    scores, ids = ranked
    per_query = metrics.evaluate((scores, ids), (judged_rows, gains), names, per_query=True)
    return {qid: {name: float(per_query[name][i]) for name in names} for i, qid in enumerate(query_ids)}


def evaluate_beir(ds, query_encoder: Callable, passage_encoder: Callable | None = None, *, metric: str = "cosine",
                  model: str = "", title: bool = True, progress: bool = False) -> BEIRResult:
    """nDCG@10 and Recall@100 (the paper's MIRACL table) over the queries with a positive judgement."""
    metric = check_metric(metric, METRICS)
    passage_encoder = passage_encoder or query_encoder
    judged = {q for q, docs in ds.qrels.items() if any(g > 0 for g in docs.values())}
    if not judged:
        raise ValueError(f"{ds.name}: no query has a positive judgement")
    all_query_ids, all_query_texts = _column(ds.queries, "id"), _column(ds.queries, "text")
    query_rows = [i for i, q in enumerate(all_query_ids) if q in judged]
    query_ids = [all_query_ids[i] for i in query_rows]
    query_texts = [all_query_texts[i] for i in query_rows]
    doc_ids = list(ds.corpus["id"])
    doc_texts = [f"{t} {x}".strip() if title else x for t, x in zip(_column(ds.corpus, "title"), _column(ds.corpus, "text"))]
    start = time.perf_counter()
    with _text_bar(len(query_texts) + len(doc_texts), f"encoding {ds.name}", progress) as bar:
        q = encode(query_encoder, query_texts, f"{ds.name} queries", bar=bar if progress else None)
        c = encode(passage_encoder, doc_texts, f"{ds.name} corpus", q.shape[1], bar if progress else None)
    encode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ranked = topk(_prepare(q, metric), _prepare(c, metric), min(100, len(doc_texts)))  # [nq, k] each
    per_query = ndcg_recall(ranked, doc_ids, query_ids, ds.qrels)
    return BEIRResult(
        dataset=ds.name, ndcg_at_10=float(np.mean([m["ndcg@10"] for m in per_query.values()])),
        recall_at_100=float(np.mean([m["recall@100"] for m in per_query.values()])),
        n_queries=len(query_ids), n_documents=len(doc_texts), per_query=per_query, model=model,
        seconds={"encode": encode_seconds, "search": time.perf_counter() - start},
    )


# ---- XTD image-text ----

XTD_METRICS = ("R@1", "R@5", "R@10", "mAP")


@dataclasses.dataclass
class XTDResult:
    """Per language, text->image and image->text R@1, R@5, R@10 and mAP (one relevant item each)."""

    languages: list[str]
    text_to_image: dict[str, dict[str, float]]
    image_to_text: dict[str, dict[str, float]]
    n_images: int
    model: str = ""
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def average(self, direction: str) -> dict[str, float]:
        table = {"text_to_image": self.text_to_image, "image_to_text": self.image_to_text}[direction]
        return {m: float(np.mean([table[lang][m] for lang in self.languages])) for m in XTD_METRICS}

    @property
    def matrix(self) -> np.ndarray:
        """[L, 8]: text->image then image->text, each R@1, R@5, R@10, mAP."""
        return np.array([[self.text_to_image[x][m] for m in XTD_METRICS] + [self.image_to_text[x][m] for m in XTD_METRICS]
                         for x in self.languages])

    @property
    def columns(self) -> list[str]:
        return [f"t2i {m}" for m in XTD_METRICS] + [f"i2t {m}" for m in XTD_METRICS]

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        data = dataclasses.asdict(self)
        data["average"] = {"text_to_image": self.average("text_to_image"), "image_to_text": self.average("image_to_text")}
        return _write_json(data, path)

    def to_csv(self, path: str | os.PathLike) -> None:
        _write_csv(["language", *self.columns],
                   [[x, *(f"{v:.6f}" for v in row)] for x, row in zip(self.languages, self.matrix)], path)

    def plot(self, path: str | os.PathLike) -> None:
        heatmap(self.matrix, self.languages, self.columns, path, title=f"XTD {self.model}".strip())

    def summary(self) -> str:
        lines = [f"XTD ({self.n_images} images)  {self.model}".rstrip(), f"{'lang':<6}" + "".join(f"{c:>10}" for c in self.columns)]
        for x, row in zip(self.languages, self.matrix):
            lines.append(f"{x:<6}" + "".join(f"{v:>10.3f}" for v in row))
        avg = [*self.average("text_to_image").values(), *self.average("image_to_text").values()]
        lines.append(f"{'avg':<6}" + "".join(f"{v:>10.3f}" for v in avg))
        return "\n".join(lines)


def encode_images(image_encoder: Callable, paths: Sequence[os.PathLike], *, batch_size: int = 64,
                  progress: bool = True, what: str = "images") -> torch.Tensor:
    """Open images (RGB, PIL) in batches and encode them, checking every batch."""
    from PIL import Image

    out, dim = [], None
    for start in tqdm(range(0, len(paths), batch_size), desc=f"encoding {what}", unit="batch", disable=not progress):
        images = []
        for path in paths[start:start + batch_size]:
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except OSError as e:
                raise ValueError(f"{what}: cannot read image {path} ({e})") from None
        out.append(encode(image_encoder, images, f"{what} {start}..{start + len(images) - 1}", dim))
        dim = out[-1].shape[1]
    return torch.cat(out)


def _retrieval_scores(ranks: torch.Tensor) -> dict[str, float]:
    """R@k and mAP from the ranks [n, 1] of the single relevant item."""
    r = ranks[:, 0].double()
    return {"R@1": float((r <= 1).double().mean()), "R@5": float((r <= 5).double().mean()),
            "R@10": float((r <= 10).double().mean()), "mAP": float(metrics.average_precision(ranks, 1).mean())}


def evaluate_xtd(ds, text_encoder: Callable, image_encoder: Callable, *, metric: str = "cosine", model: str = "",
                 batch_size: int = 64, progress: bool = True) -> XTDResult:
    """Text->image and image->text retrieval over the XTD images, per caption language."""
    metric = check_metric(metric, METRICS)
    start = time.perf_counter()
    images = _prepare(encode_images(image_encoder, ds.image_paths(), batch_size=batch_size, progress=progress,
                                    what="XTD images"), metric)  # [n, d]
    n = images.shape[0]
    diagonal = torch.arange(n).unsqueeze(1)  # caption i describes image i
    t2i, i2t = {}, {}
    for lang in tqdm(ds.languages, desc="encoding XTD captions", unit="language", disable=not progress):
        texts = _prepare(encode(text_encoder, ds.captions[lang], f"XTD {lang} captions", images.shape[1]), metric)
        t2i[lang] = _retrieval_scores(relevant_ranks(texts, images, diagonal))
        i2t[lang] = _retrieval_scores(relevant_ranks(images, texts, diagonal))
    return XTDResult(list(ds.languages), t2i, i2t, n, model, {"total": time.perf_counter() - start})
