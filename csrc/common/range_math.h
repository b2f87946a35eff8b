// Why this file exists: the per-element logic of range search and of id-filtered search, shared by the
// CPU kernels (csrc/cpu/range_cpu.cpp, topk's filtered tiles) and the CUDA ones (csrc/cuda/range_cuda.cu),
// so the CPU tests exercise the exact comparisons the GPU runs.
//
// faiss's rules, kept exactly: an inner-product range search keeps score > threshold; an L2 one keeps
// squared distance < radius, the distance computed from norms as faiss's BLAS path does
// ((|x|^2 + |y|^2) - 2 x.y, clamped at 0).
#pragma once
#include <cstdint>

#include "common/hbfast_common.h"

namespace hbfast {

// Which corpus ids a search may return: ids in [lo, hi) that are also set in `bits` (when given; bit i
// of byte i >> 3, little-endian, ids >= n_bits unset), the complement of that when `invert`.
struct IdFilter {
  int64_t lo = 0;
  int64_t hi = INT64_MAX;
  const uint8_t* bits = nullptr;  // host or device memory, as the kernel that reads it
  int64_t n_bits = 0;
  int32_t invert = 0;
};

HBFAST_HOST_DEVICE bool id_selected(const IdFilter& f, int64_t id) {
  bool in = id >= f.lo && id < f.hi;
  if (in && f.bits != nullptr) in = id < f.n_bits && ((f.bits[id >> 3] >> (id & 7)) & 1);
  return in != (f.invert != 0);
}

// How the raw products q.y of a tile become the values a search keeps.
struct TileParams {
  int32_t l2 = 0;                  // 0: the value is the product; 1: the squared L2 distance
  const float* q_norms = nullptr;  // [queries] |x|^2 by query index (l2)
  const float* c_norms = nullptr;  // [cols] |y|^2 of this tile's corpus rows, by column (l2)
  IdFilter filter;
};

// The squared distance from the product and both squared norms, in faiss's order of operations.
HBFAST_HOST_DEVICE float l2_from_product(float product, float q_norm, float c_norm) {
  float d = (q_norm + c_norm) - 2.0f * product;
  return d < 0.0f ? 0.0f : d;  // round-off can push identical vectors below 0
}

// A tile element's value: the product (inner product) or the squared distance (L2).
HBFAST_HOST_DEVICE float range_value(const TileParams& p, float product, int64_t q, int64_t col) {
  return p.l2 ? l2_from_product(product, p.q_norms[q], p.c_norms[col]) : product;
}

// faiss's range rule: IP keeps value > threshold, L2 keeps value < radius (both strict).
HBFAST_HOST_DEVICE bool range_keeps(int32_t l2, float value, float threshold) {
  return l2 ? value < threshold : value > threshold;
}

// Value an id the filter excludes gets in a top-k tile: below every real score, and finite (the top-k
// epilogues reject non-finite scores); the caller turns such ids into -1 padding.
constexpr float kExcludedScore = -3.4028234663852886e38f;  // -FLT_MAX

// The top-k score of a tile element (larger = better): the product, or minus the squared distance;
// kExcludedScore for an id the filter excludes.
HBFAST_HOST_DEVICE float topk_tile_score(const TileParams& p, float product, int64_t q, int64_t col, int64_t id) {
  if (!id_selected(p.filter, id)) return kExcludedScore;
  return p.l2 ? -l2_from_product(product, p.q_norms[q], p.c_norms[col]) : product;
}

}  // namespace hbfast
