"""Plain numpy / PyTorch twins of every hbfast kernel, with the kernels' signatures.

They are the specification the compiled kernels are tested against: written for clarity, not speed.
"""
from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_STREAM_STEP = 0xD1B54A32D192ED03
_PERM, _KIND, _LANG, _QUERY_LANG, _PASSAGE_LANG = range(5)


# ----------------------------------------------------------------------------------------------
# Counter-based random numbers (csrc/common/hbfast_common.h), on numpy uint64 arrays.
def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rng_key(seed: int, epoch: int) -> int:
    inner = int(_mix64(np.array([(seed * _GOLDEN + 1) & _MASK64], dtype=np.uint64))[0])
    return int(_mix64(np.array([(inner + epoch * _GOLDEN) & _MASK64], dtype=np.uint64))[0])


def rng_draw(key: int, stream: int, counters) -> np.ndarray:
    c = np.asarray(counters, dtype=np.uint64)
    base = np.uint64((key + stream * _STREAM_STEP) & _MASK64)
    return _mix64(base + (c + np.uint64(1)) * np.uint64(_GOLDEN))


def rng_bounded(x: np.ndarray, n) -> np.ndarray:
    return ((x >> np.uint64(32)) * np.asarray(n, dtype=np.uint64)) >> np.uint64(32)


def rng_unit(x: np.ndarray) -> np.ndarray:
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


# ----------------------------------------------------------------------------------------------
# Hybrid batch plans (csrc/cpu/sampler_cpu.cpp).
def hybrid_batch_plan(availability, weights, alpha, global_batch, seed, epoch, drop_last):
    """Twin of ``_C.hybrid_batches`` on validated arguments; returns (items, query_lang, passage_lang, mono)."""
    avail = np.asarray(availability, dtype=bool)
    N, L = avail.shape
    G = int(global_batch)
    key = rng_key(seed, epoch)

    ids = np.arange(N, dtype=np.int64)
    if N > 1:
        positions = np.arange(N - 1, 0, -1, dtype=np.uint64)
        swaps = rng_bounded(rng_draw(key, _PERM, positions), positions + np.uint64(1)).astype(np.int64)
        for i, j in zip(positions.astype(np.int64).tolist(), swaps.tolist()):
            ids[i], ids[j] = ids[j], ids[i]
    langs = avail[ids]                       # [N, L] availability in shuffled order
    n_langs = langs.sum(axis=1)
    used = np.zeros(N, dtype=bool)
    lang_left = langs.sum(axis=0).astype(np.int64)
    cross_left = int((n_langs >= 2).sum())
    cursor = [0] * (L + 1)
    batches = []  # (is_mono, [(item, q, p)], batch_index)

    def take(p):
        nonlocal cross_left
        used[p] = True
        lang_left[langs[p]] -= 1
        if n_langs[p] >= 2:
            cross_left -= 1

    def cross_row(p, row):
        available = np.flatnonzero(langs[p])
        k = len(available)
        a = int(rng_bounded(rng_draw(key, _QUERY_LANG, [row]), k)[0])
        c = int(rng_bounded(rng_draw(key, _PASSAGE_LANG, [row]), k - 1)[0])
        if c >= a:
            c += 1
        return int(ids[p]), int(available[a]), int(available[c])

    def can_fill(l):
        return weights[l] > 0 and lang_left[l] >= G

    b = 0
    while True:
        mono_ok = alpha > 0 and any(can_fill(l) for l in range(L))
        cross_ok = alpha < 1 and cross_left >= G
        if not mono_ok and not cross_ok:
            break
        want_mono = rng_unit(rng_draw(key, _KIND, [b]))[0] < alpha
        if want_mono and not mono_ok:
            want_mono = False
        if not want_mono and not cross_ok:
            want_mono = True
        rows = []
        if want_mono:
            eligible = [l for l in range(L) if can_fill(l)]
            total = 0.0
            for l in eligible:
                total += weights[l]
            target = rng_unit(rng_draw(key, _LANG, [b]))[0] * total
            acc, chosen = 0.0, eligible[-1]
            for l in eligible:
                acc += weights[l]
                if acc > target:
                    chosen = l
                    break
            p = cursor[chosen]
            while len(rows) < G:
                if not used[p] and langs[p, chosen]:
                    take(p)
                    rows.append((int(ids[p]), chosen, chosen))
                p += 1
            cursor[chosen] = p
        else:
            p = cursor[L]
            while len(rows) < G:
                if not used[p] and n_langs[p] >= 2:
                    take(p)
                    rows.append(cross_row(p, b * G + len(rows)))
                p += 1
            cursor[L] = p
        batches.append((bool(want_mono), rows))
        b += 1

    if not drop_last:
        if alpha < 1:
            rows = []
            for p in range(N):
                if used[p] or n_langs[p] < 2:
                    continue
                take(p)
                rows.append(cross_row(p, len(batches) * G + len(rows)))
                if len(rows) == G:
                    batches.append((False, rows))
                    rows = []
            if rows:
                batches.append((False, rows))
        if alpha > 0:
            for l in range(L):
                if weights[l] <= 0:
                    continue
                rows = []
                for p in range(N):
                    if used[p] or not langs[p, l]:
                        continue
                    take(p)
                    rows.append((int(ids[p]), l, l))
                    if len(rows) == G:
                        batches.append((True, rows))
                        rows = []
                if rows:
                    batches.append((True, rows))

    nb = len(batches)
    items = np.full((nb, G), -1, dtype=np.int64)
    query_lang = np.full((nb, G), -1, dtype=np.int32)
    passage_lang = np.full((nb, G), -1, dtype=np.int32)
    mono = np.zeros(nb, dtype=bool)
    for bi, (is_mono, rows) in enumerate(batches):
        mono[bi] = is_mono
        for r, (item, q, pl) in enumerate(rows):
            items[bi, r], query_lang[bi, r], passage_lang[bi, r] = item, q, pl
    return items, query_lang, passage_lang, mono


# ---- contrastive loss --------------------------------------------------------------------------
# The plain PyTorch twin of hbfast.contrastive_loss: full B x (B + M) logits and F.cross_entropy,
# computed in the input dtype (so it is also "what plain PyTorch makes" in float16/bfloat16).


def contrastive_loss(q, p, *, temperature=0.05, logit_scale=None, symmetric=True, group_ids=None,
                     hard_negatives=None, reduction="mean", normalize=False):
    """Reference in-batch contrastive loss; same arguments and meaning as hbfast.contrastive_loss."""
    import torch
    import torch.nn.functional as F

    if normalize:
        q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
        if hard_negatives is not None:
            hard_negatives = F.normalize(hard_negatives, dim=-1)
    scale = logit_scale.exp().to(q.dtype) if logit_scale is not None else 1.0 / temperature
    B = q.shape[0]
    logits = scale * (q @ p.t())  # [B, B]
    if group_ids is not None:
        same = group_ids[:, None] == group_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(B, device=q.device)
    row_logits = logits
    if hard_negatives is not None and hard_negatives.shape[0] > 0:
        row_logits = torch.cat([logits, scale * (q @ hard_negatives.t())], 1)  # [B, B + M]
    per_row = F.cross_entropy(row_logits, labels, reduction="none")
    if symmetric:
        per_row = 0.5 * (per_row + F.cross_entropy(logits.t(), labels, reduction="none"))
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


# ---- SigLIP loss --------------------------------------------------------------------------------
# The plain PyTorch twin of hbfast.siglip_loss: full B x B logits, labels 2 * I - 1 and
# F.logsigmoid, computed in the input dtype.


def siglip_loss(image_features, text_features, logit_scale, logit_bias, *, reduction="mean"):
    """Reference pairwise sigmoid loss; same arguments and meaning as hbfast.siglip_loss."""
    import torch
    import torch.nn.functional as F

    B = image_features.shape[0]
    logits = logit_scale * (image_features @ text_features.t()) + logit_bias  # [B, B]
    labels = 2 * torch.eye(B, dtype=logits.dtype, device=logits.device) - 1
    per_row = -F.logsigmoid(labels * logits).sum(1)
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


# ----------------------------------------------------------------------------------------------
# Exact search and retrieval metrics (hbfast/search.py, hbfast/metrics.py): the full score matrix,
# a stable sort for the tie rule (higher score first, then lower corpus id), numpy metrics.


def _scores(queries, corpus, metric):
    import torch

    q, c = queries.to(torch.float32), corpus.to(torch.float32)
    if metric == "cosine":
        q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
        c = c / torch.linalg.vector_norm(c, dim=1, keepdim=True)
    return q @ c.T  # [nq, N]


def _l2_distances(queries, corpus):
    """Squared L2 distances [nq, N] as the kernels compute them (csrc/common/range_math.h):
    max(0, (|x|^2 + |y|^2) - 2 x.y) in float32."""
    import torch

    q, c = queries.to(torch.float32), corpus.to(torch.float32)
    d = ((q * q).sum(1)[:, None] + (c * c).sum(1)[None, :]) - 2.0 * (q @ c.T)
    return d.clamp_(min=0.0)


def topk(queries, corpus, k, *, metric="ip", selected=None):
    """Twin of ``hbfast.topk`` on tensors: (scores float32 [nq, k], ids int64 [nq, k]).
    metric "l2": squared distances, smallest first. selected: bool [N], the ids a selector keeps;
    rows with fewer than k of them are padded with id -1 and score -inf (+inf for "l2")."""
    import torch

    scores = -_l2_distances(queries, corpus) if metric == "l2" else _scores(queries, corpus, metric)
    if selected is not None:
        scores = scores.masked_fill(~selected[None, :], float("-inf"))
    # A stable descending sort keeps equal scores in id order: lower id first.
    sorted_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    sorted_scores, order = sorted_scores[:, :k].contiguous(), order[:, :k].contiguous()
    if selected is not None:
        valid = selected[order]
        sorted_scores = sorted_scores.masked_fill(~valid, float("-inf"))
        order = order.masked_fill(~valid, -1)
    return (sorted_scores.neg() if metric == "l2" else sorted_scores), order


def range_search(queries, corpus, threshold, *, metric="ip", selected=None):
    """Twin of ``hbfast.range_search`` on tensors: (lims int64 [nq + 1], values float32, ids int64), each
    query's items in id order. faiss's rules: score > threshold ("ip", "cosine"), squared L2 distance <
    threshold ("l2"); selected: bool [N], the ids a selector keeps."""
    import torch

    if metric == "l2":
        values = _l2_distances(queries, corpus)
        keep = values < threshold
    else:
        values = _scores(queries, corpus, metric)
        keep = values > threshold
    if selected is not None:
        keep &= selected[None, :]
    rows, ids = keep.nonzero(as_tuple=True)  # row-major: by query, then id
    lims = torch.zeros(len(values) + 1, dtype=torch.int64, device=values.device)
    lims[1:] = torch.cumsum(keep.sum(1), 0)
    return lims, values[rows, ids].contiguous(), ids.contiguous()


def relevant_ranks(queries, corpus, relevant, *, metric="ip"):
    """Twin of ``hbfast.relevant_ranks`` on tensors: the position of each relevant id in the fully
    sorted ranking, 1-based; -1 where ``relevant`` is -1."""
    import torch

    scores = _scores(queries, corpus, metric)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [nq, N]
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(1, order.shape[1] + 1, device=order.device).expand_as(order))
    ranks = position.gather(1, relevant.clamp(min=0))
    return torch.where(relevant >= 0, ranks, torch.full_like(ranks, -1))


def ranked_metrics(ranks, gains=None, n_relevant=None):
    """trec_eval's metrics from 1-based ranks [nq, r] (-1: padding / not retrieved) in plain numpy.

    Returns a function metric(kind, cutoff) -> float64 [nq] with kind in "ap", "rr", "ndcg",
    "recall", "precision" and cutoff None for the whole ranking.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    gains = (ranks != -1).astype(np.float64) if gains is None else np.asarray(gains, dtype=np.float64)
    relevant = gains > 0
    n_rel = relevant.sum(axis=1).astype(np.float64) if n_relevant is None else np.broadcast_to(
        np.asarray(n_relevant, dtype=np.float64), (len(ranks),))

    def metric(kind, cutoff=None):
        out = np.zeros(len(ranks))
        for q in range(len(ranks)):
            keep = relevant[q] & (ranks[q] > 0)
            if cutoff:
                keep &= ranks[q] <= cutoff
            order = np.argsort(ranks[q][keep], kind="stable")
            rk, g = ranks[q][keep][order].astype(np.float64), gains[q][keep][order]
            if kind == "ap":
                out[q] = (np.arange(1, len(rk) + 1) / rk).sum() / n_rel[q] if n_rel[q] > 0 else 0.0
            elif kind == "rr":
                out[q] = 1.0 / rk[0] if len(rk) else 0.0
            elif kind == "ndcg":
                ideal = np.sort(gains[q][relevant[q]])[::-1][:cutoff]
                idcg = (ideal / np.log2(np.arange(2, len(ideal) + 2))).sum()
                out[q] = (g / np.log2(rk + 1)).sum() / idcg if idcg > 0 else 0.0
            elif kind == "recall":
                out[q] = len(rk) / n_rel[q] if n_rel[q] > 0 else 0.0
            elif kind == "precision":
                out[q] = len(rk) / cutoff
            else:
                raise ValueError(f"unknown metric kind {kind!r}")
        return out

    return metric


def run_ranks(run_scores, run_ids, judged_ids):
    """Twin of ``_C.run_ranks``: rank of each judged id in its run sorted by (score desc, id asc)."""
    run_scores, run_ids, judged_ids = np.asarray(run_scores), np.asarray(run_ids), np.asarray(judged_ids)
    ranks = np.full(judged_ids.shape, -1, dtype=np.int64)
    for q in range(len(run_ids)):
        valid = run_ids[q] >= 0
        ids, scores = run_ids[q][valid], run_scores[q][valid]
        order = np.lexsort((ids, -scores.astype(np.float64)))
        position = {int(d): i + 1 for i, d in reversed(list(enumerate(ids[order])))}
        for t, d in enumerate(judged_ids[q]):
            if d >= 0 and int(d) in position:
                ranks[q, t] = position[int(d)]
    return ranks
