// Exact top-k on the CPU (see topk_cpu.h). The per-tile work is an "anything above the threshold?"
// test over blocks of 16 scores; only the rare blocks that pass touch the heap or the key buffer. The
// portable row merges below have AVX-512 twins (one compare mask per block, keys compressed in
// registers), which run where the CPU has AVX-512 (simd_clones.h) and give the same results.
#include "cpu/topk_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/parallel.h"
#include "common/select.h"
#include "cpu/finite_cpu.h"
#include "cpu/gemm_cpu.h"
#include "cpu/range_cpu.h"
#include "cpu/simd_clones.h"

namespace hbfast {
namespace {

constexpr int64_t kBlock = 16;

// True when some score of block[0, kBlock) is above the threshold.
inline bool block_has_above(const float* block, float threshold) {
  int any = 0;
  for (int64_t t = 0; t < kBlock; ++t) any |= block[t] > threshold;
  return any != 0;
}

}  // namespace

TopkStateCpu::TopkStateCpu(int64_t n_queries, int64_t k, int64_t buffer_capacity)
    : n_queries_(n_queries), k_(k), capacity_(std::max(buffer_capacity, k + kBlock)), use_heap_(k <= kHeapMaxK) {
  if (n_queries < 0 || k < 1) throw std::invalid_argument("TopkStateCpu: need n_queries >= 0 and k >= 1");
  const float worst = -std::numeric_limits<float>::infinity();
  if (use_heap_) {
    heap_scores_.assign(n_queries * k, worst);
    heap_ids_.assign(n_queries * k, std::numeric_limits<int64_t>::max());
  } else {
    if (buffer_capacity <= k) throw std::invalid_argument("TopkStateCpu: buffer_capacity must exceed k");
    buffer_.resize(n_queries * capacity_);
    buffer_fill_.assign(n_queries, 0);
    buffer_threshold_.assign(n_queries, worst);
  }
}

void TopkStateCpu::check_ids(int64_t id0, int64_t cols) const {
  if (!use_heap_ && id0 + cols > int64_t(0xffffffffLL))
    throw std::invalid_argument("topk: with k > " + std::to_string(kHeapMaxK) +
                                " corpus ids must stay below 2^32 - 1 (search the corpus in parts and merge)");
}

HBFAST_SIMD_CLONES
void TopkStateCpu::merge_heap_row(const float* row, int64_t q, int64_t cols, int64_t id0) {
  float* scores = heap_scores_.data() + q * k_;  // [k] heap, root = worst kept
  int64_t* ids = heap_ids_.data() + q * k_;
  float threshold = scores[0];
  // Ids grow along the row and across tiles, so a candidate tied with the root loses: only s > root enters.
  int64_t j = 0;
  for (; j + kBlock <= cols; j += kBlock) {
    if (!block_has_above(row + j, threshold)) continue;
    for (int64_t t = j; t < j + kBlock; ++t) {
      if (row[t] > threshold) {
        heap_replace_top(scores, ids, k_, row[t], id0 + t);
        threshold = scores[0];
      }
    }
  }
  for (; j < cols; ++j) {
    if (row[j] > threshold) {
      heap_replace_top(scores, ids, k_, row[j], id0 + j);
      threshold = scores[0];
    }
  }
}

void TopkStateCpu::shrink_buffer(int64_t q) {
  uint64_t* buf = buffer_.data() + q * capacity_;
  int64_t& fill = buffer_fill_[q];
  std::nth_element(buf, buf + (k_ - 1), buf + fill, std::greater<uint64_t>());  // larger key = ranks before
  fill = k_;
  buffer_threshold_[q] = key_score(buf[k_ - 1]);  // the k-th best: later (higher-id) ties lose to it
}

HBFAST_SIMD_CLONES
void TopkStateCpu::merge_buffer_row(const float* row, int64_t q, int64_t cols, int64_t id0) {
  uint64_t* buf = buffer_.data() + q * capacity_;  // [capacity]
  int64_t& fill = buffer_fill_[q];
  float threshold = buffer_threshold_[q];
  auto push = [&](int64_t t) {
    buf[fill] = make_key(row[t], id0 + t);
    if (++fill == capacity_) {
      shrink_buffer(q);
      threshold = buffer_threshold_[q];
    }
  };
  int64_t j = 0;
  for (; j + kBlock <= cols; j += kBlock) {
    if (!block_has_above(row + j, threshold)) continue;
    for (int64_t t = j; t < j + kBlock; ++t)
      if (row[t] > threshold) push(t);
  }
  for (; j < cols; ++j)
    if (row[j] > threshold) push(j);
}

#ifdef HBFAST_AVX512_TWINS
// ---- AVX-512 twins of merge_heap_row / merge_buffer_row: the same results (the tests run both) ----
// One compare per 16 scores gives the lanes above the threshold and one integer compare the lanes
// that are not finite; the heap visits only the set lanes, and the buffer takes the 64-bit keys of
// the set lanes with a compress in registers (no branch per score).
namespace {
// make_key (select.h) of 8 lanes: ordered score bits (32-bit lanes) and 0xffffffff - id (32-bit lanes).
HBFAST_AVX512 inline __m512i keys_of(__m256i ordered, __m256i low) {
  return _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(ordered), 32), _mm512_cvtepu32_epi64(low));
}
}  // namespace

HBFAST_AVX512
bool TopkStateCpu::merge_heap_row_avx512(const float* row, int64_t q, int64_t cols, int64_t id0) {
  float* scores = heap_scores_.data() + q * k_;  // [k] heap, root = worst kept
  int64_t* ids = heap_ids_.data() + q * k_;
  float threshold = scores[0];
  __mmask16 bad = 0;
  for (int64_t j = 0; j < cols; j += kBlock) {
    const __mmask16 valid = lanes_below(cols - j);
    const __m512 v = _mm512_maskz_loadu_ps(valid, row + j);
    bad |= non_finite_lanes(v) & valid;
    unsigned above = _mm512_mask_cmp_ps_mask(valid, v, _mm512_set1_ps(threshold), _CMP_GT_OQ);
    while (above) {  // ids grow along the row: a tie with the root loses, only s > root enters
      const int64_t t = j + __builtin_ctz(above);
      above &= above - 1;
      if (row[t] > threshold) {
        heap_replace_top(scores, ids, k_, row[t], id0 + t);
        threshold = scores[0];
      }
    }
  }
  return bad == 0;
}

HBFAST_AVX512
bool TopkStateCpu::merge_buffer_row_avx512(const float* row, int64_t q, int64_t cols, int64_t id0) {
  uint64_t* buf = buffer_.data() + q * capacity_;  // [capacity], capacity >= k + kBlock
  int64_t fill = buffer_fill_[q];
  float threshold = buffer_threshold_[q];
  __m512 thr = _mm512_set1_ps(threshold);
  __mmask16 bad = 0;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i sign_bit = _mm512_set1_epi32(int(0x80000000u));
  for (int64_t j = 0; j < cols; j += kBlock) {
    const __mmask16 valid = lanes_below(cols - j);
    const __m512 v = _mm512_maskz_loadu_ps(valid, row + j);
    bad |= non_finite_lanes(v) & valid;
    __mmask16 above = _mm512_mask_cmp_ps_mask(valid, v, thr, _CMP_GT_OQ);
    if (!above) continue;
    if (fill + kBlock > capacity_) {  // room for a whole block: select the k best, raise the threshold
      buffer_fill_[q] = fill;
      shrink_buffer(q);
      fill = k_;
      threshold = buffer_threshold_[q];
      thr = _mm512_set1_ps(threshold);
      above = _mm512_mask_cmp_ps_mask(valid, v, thr, _CMP_GT_OQ);
      if (!above) continue;
    }
    __m512i bits = _mm512_castps_si512(v);
    bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(bits, sign_bit), _mm512_setzero_si512());  // -0 -> +0
    const __m512i flip = _mm512_or_si512(_mm512_srai_epi32(bits, 31), sign_bit);  // float_to_ordered
    const __m512i ordered = _mm512_xor_si512(bits, flip);
    const __m512i low = _mm512_sub_epi32(_mm512_set1_epi32(int(uint32_t(0xffffffffu - uint32_t(id0 + j)))), iota);
    const __m512i keys_lo = keys_of(_mm512_castsi512_si256(ordered), _mm512_castsi512_si256(low));
    const __m512i keys_hi = keys_of(_mm512_extracti64x4_epi64(ordered, 1), _mm512_extracti64x4_epi64(low, 1));
    const __mmask8 above_lo = __mmask8(above & 0xff), above_hi = __mmask8(above >> 8);
    _mm512_storeu_si512(buf + fill, _mm512_maskz_compress_epi64(above_lo, keys_lo));
    fill += __builtin_popcount(above_lo);
    _mm512_storeu_si512(buf + fill, _mm512_maskz_compress_epi64(above_hi, keys_hi));
    fill += __builtin_popcount(above_hi);
  }
  buffer_fill_[q] = fill;
  return bad == 0;
}
#endif

// Rows [0, rows) of tile are queries q0.. (one thread). False when a score is not finite (the
// caller raises and throws the state away).
bool TopkStateCpu::merge_rows(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0) {
#ifdef HBFAST_AVX512_TWINS
  if (cpu_simd_enabled()) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = tile + r * ld;  // [cols]
      bool finite = use_heap_ ? merge_heap_row_avx512(row, q0 + r, cols, id0)
                              : merge_buffer_row_avx512(row, q0 + r, cols, id0);
      if (!finite) return false;
    }
    return true;
  }
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = tile + r * ld;  // [cols]
    if (!all_finite_cpu(row, cols)) return false;
    if (use_heap_)
      merge_heap_row(row, q0 + r, cols, id0);
    else
      merge_buffer_row(row, q0 + r, cols, id0);
  }
  return true;
}

bool TopkStateCpu::merge(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0) {
  if (q0 < 0 || rows < 0 || q0 + rows > n_queries_) throw std::invalid_argument("TopkStateCpu.merge: query rows out of range");
  if (cols <= 0 || rows == 0) return true;
  check_ids(id0, cols);
  std::atomic<bool> finite{true};
  parallel_for(rows, 8, [&](int64_t begin, int64_t end) {
    if (!merge_rows(tile + begin * ld, q0 + begin, end - begin, cols, ld, id0)) finite = false;
  });
  return finite.load();
}

bool TopkStateCpu::search(GemmBackend backend, const float* q, int64_t dim, const float* c, int64_t cols, int64_t id0,
                          const TileParams* params) {
  if (cols <= 0 || n_queries_ == 0) return true;
  check_ids(id0, cols);
  std::atomic<bool> finite{true};
  const int64_t block_rows = fused_block_rows(n_queries_), block_cols = fused_block_cols(cols);
  const size_t tile_size = size_t(block_rows * block_cols);
  scratch_.resize(std::max(scratch_.size(), tile_size * parallel_workers(n_queries_, block_rows)));
  parallel_blocks(n_queries_, block_rows, [&](int64_t begin, int64_t end, int64_t worker) {
    float* tile = scratch_.data() + worker * tile_size;  // [rows, width], this worker's own
    std::vector<float> norms;  // [width]: L2 norms of the block's columns, when params has none
    for (int64_t j0 = 0; j0 < cols; j0 += block_cols) {  // ids in increasing order for these queries
      int64_t width = std::min(block_cols, cols - j0);
      sgemm_serial(backend, false, true, end - begin, width, dim, 1.0f, q + begin * dim, dim, c + j0 * dim, dim, 0.0f, tile,
                   width);
      if (params != nullptr) {  // filter / L2 distance, on the tile while it is in cache
        norms.resize(params->l2 && params->c_norms == nullptr ? block_cols : 0);
        const TileParams sub = block_params(*params, c, dim, j0, width, norms.data());
        topk_tile_scores_serial(tile, begin, end - begin, width, width, id0 + j0, sub);
      }
      if (!merge_rows(tile, begin, end - begin, width, width, id0 + j0)) finite = false;
    }
  });
  return finite.load();
}

void TopkStateCpu::finish(float* out_scores, int64_t* out_ids) const {
  parallel_for(n_queries_, 16, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> tmp;
    for (int64_t q = begin; q < end; ++q) {
      float* s = out_scores + q * k_;  // [k]
      int64_t* id = out_ids + q * k_;
      if (use_heap_) {
        std::memcpy(s, heap_scores_.data() + q * k_, k_ * sizeof(float));
        std::memcpy(id, heap_ids_.data() + q * k_, k_ * sizeof(int64_t));
        heap_sort_best_first(s, id, k_);
        continue;
      }
      const uint64_t* buf = buffer_.data() + q * capacity_;
      tmp.assign(buf, buf + buffer_fill_[q]);
      int64_t keep = std::min<int64_t>(k_, tmp.size());
      if (keep < int64_t(tmp.size()))
        std::nth_element(tmp.begin(), tmp.begin() + (keep - 1), tmp.end(), std::greater<uint64_t>());
      std::sort(tmp.begin(), tmp.begin() + keep, std::greater<uint64_t>());
      for (int64_t i = 0; i < keep; ++i) {
        s[i] = key_score(tmp[i]);
        id[i] = key_id(tmp[i]);
      }
      for (int64_t i = keep; i < k_; ++i) {
        s[i] = -std::numeric_limits<float>::infinity();
        id[i] = -1;
      }
    }
  });
}

}  // namespace hbfast
