// Per-element search and metric math shared by the CPU and CUDA kernels (topk, relevant_ranks,
// metrics), so the CPU tests exercise the exact comparisons and formulas the GPU runs.
//
// Tie rule, everywhere in hbfast: a candidate ranks before another when its score is higher, or
// when the scores are equal and its corpus id is lower.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/hbfast_common.h"

namespace hbfast {

// True when (score_a, id_a) ranks strictly before (score_b, id_b).
HBFAST_HOST_DEVICE bool ranks_before(float score_a, int64_t id_a, float score_b, int64_t id_b) {
  return score_a > score_b || (score_a == score_b && id_a < id_b);
}

// True for NaN and +-inf, from the bits only (vectorises, and survives fast-math flags).
HBFAST_HOST_DEVICE bool non_finite_bits(uint32_t bits) { return (bits & 0x7f800000u) == 0x7f800000u; }

// ---- bounded heap of the k best (score, id) pairs; the root is the worst kept pair --------------
// Sift the pair at `pos` down so that every parent ranks after (is worse than) its children.
HBFAST_HOST_DEVICE void heap_sift_down(float* scores, int64_t* ids, int64_t size, int64_t pos) {
  float s = scores[pos];
  int64_t id = ids[pos];
  for (;;) {
    int64_t child = 2 * pos + 1;
    if (child >= size) break;
    // pick the worse child: the one the other ranks before
    if (child + 1 < size && ranks_before(scores[child], ids[child], scores[child + 1], ids[child + 1])) ++child;
    if (!ranks_before(s, id, scores[child], ids[child])) break;
    scores[pos] = scores[child];
    ids[pos] = ids[child];
    pos = child;
  }
  scores[pos] = s;
  ids[pos] = id;
}

// Replace the worst kept pair (the root) by a better one.
HBFAST_HOST_DEVICE void heap_replace_top(float* scores, int64_t* ids, int64_t size, float s, int64_t id) {
  scores[0] = s;
  ids[0] = id;
  heap_sift_down(scores, ids, size, 0);
}

// Turn a heap into the k best pairs sorted best first (in place, heap sort).
HBFAST_HOST_DEVICE void heap_sort_best_first(float* scores, int64_t* ids, int64_t size) {
  for (int64_t end = size - 1; end > 0; --end) {
    float s = scores[0];
    int64_t id = ids[0];
    scores[0] = scores[end];
    ids[0] = ids[end];
    scores[end] = s;  // the worst remaining pair goes to the back
    ids[end] = id;
    heap_sift_down(scores, ids, end, 0);
  }
}

// ---- 64-bit selection keys: one unsigned integer per (score, id), larger key = ranks before -------
// High 32 bits: the float's bits mapped to an order-preserving unsigned integer; low 32 bits: the
// complement of the id (ids below 2^32 - 1), so equal scores order by lower id first.
HBFAST_HOST_DEVICE uint32_t float_to_ordered(float s) {
  uint32_t bits;
  memcpy(&bits, &s, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
HBFAST_HOST_DEVICE float ordered_to_float(uint32_t u) {
  uint32_t bits = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
  float s;
  memcpy(&s, &bits, sizeof(s));
  return s;
}
constexpr uint64_t kEmptyKey = 0;  // below every real key (finite scores map above it)
HBFAST_HOST_DEVICE uint64_t make_key(float s, int64_t id) {
  if (s == 0.0f) s = 0.0f;  // -0 ties with +0, as in ranks_before
  return (uint64_t(float_to_ordered(s)) << 32) | uint64_t(0xffffffffu - uint32_t(id));
}
HBFAST_HOST_DEVICE float key_score(uint64_t key) { return ordered_to_float(uint32_t(key >> 32)); }
HBFAST_HOST_DEVICE int64_t key_id(uint64_t key) { return int64_t(0xffffffffu - uint32_t(key & 0xffffffffu)); }

// ---- rank counting ---------------------------------------------------------------------------------
// Does candidate (s, candidate_id) beat the relevant item (rel_score, rel_id)? The item never beats
// itself, whatever rounding its own tile score got.
HBFAST_HOST_DEVICE int beats_relevant(float s, int64_t candidate_id, float rel_score, int64_t rel_id) {
  return candidate_id != rel_id && ranks_before(s, candidate_id, rel_score, rel_id);
}

// ---- metrics from the ranks of a query's relevant items (1-based; sorted ascending) ---------------
// trec_eval's average precision: sum over retrieved relevant items of precision at their rank,
// divided by the number of relevant items (retrieved or not). `sorted_ranks` holds `n_found` ranks.
HBFAST_HOST_DEVICE double average_precision_sorted(const int64_t* sorted_ranks, int64_t n_found, double n_relevant) {
  if (n_relevant <= 0) return 0.0;
  double sum = 0.0;
  for (int64_t i = 0; i < n_found; ++i) sum += double(i + 1) / double(sorted_ranks[i]);
  return sum / n_relevant;
}

// trec_eval's nDCG discount: gain / log2(rank + 1).
HBFAST_HOST_DEVICE double dcg_term(double gain, int64_t rank) { return gain / log2(double(rank) + 1.0); }

}  // namespace hbfast
