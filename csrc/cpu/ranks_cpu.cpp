// Rank counting on the CPU (see ranks_cpu.h). Per relevant item the tile row splits into the part
// with lower ids (ties beat the item: count s >= score) and the part with higher ids (count s > score),
// so both counts are branch-free vectorised loops; the item itself is skipped.
#include "cpu/ranks_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common/parallel.h"
#include "common/select.h"
#include "cpu/finite_cpu.h"
#include "cpu/gemm_cpu.h"
#include "cpu/simd_clones.h"

namespace hbfast {
namespace {

// How many of x[0, n) are >= t (or_equal) or > t: beats_relevant (select.h) split at the item.
__attribute__((target_clones("avx512f", "avx2", "default")))
int64_t count_above(const float* x, int64_t n, float t, bool or_equal) {
  int32_t c = 0;
  if (or_equal)
    for (int64_t j = 0; j < n; ++j) c += x[j] >= t;
  else
    for (int64_t j = 0; j < n; ++j) c += x[j] > t;
  return c;
}

}  // namespace

#ifdef HBFAST_AVX512_TWINS
namespace {
// The AVX-512 twin of one row's counts, for G relevant items at once: the row is read once per
// 16-score block and compared with G thresholds held in registers. The split rule of the portable code
// becomes a threshold that changes once along the row: below the item's id, s >= t, i.e.
// s > nextafter(t, -inf); above it, s > t. The block that holds the split is corrected lane by lane.
template <int G>
HBFAST_AVX512 bool count_row_group_avx512(const float* row, int64_t cols, int64_t id0, const float* rel_scores,
                                          const int64_t* rel_ids, int64_t* counts, float* own_scores,
                                          bool check_finite) {
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  const float inf = std::numeric_limits<float>::infinity();
  __m512 threshold[G];
  __m512i count[G];
  int64_t split[G], switch_block[G], fix[G];
  int64_t next_switch = kNone;
  for (int i = 0; i < G; ++i) {
    count[i] = _mm512_setzero_si512();
    fix[i] = 0;
    switch_block[i] = kNone;
    if (rel_ids[i] < 0) {  // padding: nothing beats it
      threshold[i] = _mm512_set1_ps(inf);
      continue;
    }
    split[i] = std::clamp<int64_t>(rel_ids[i] - id0, 0, cols);
    threshold[i] = _mm512_set1_ps(std::nextafter(rel_scores[i], -inf));  // candidates below the split
    if (split[i] < cols) switch_block[i] = split[i] / 16;
    next_switch = std::min(next_switch, switch_block[i]);
  }
  const __m512i minus_one = _mm512_set1_epi32(-1);
  __mmask16 bad = 0;
  for (int64_t j = 0, b = 0; j < cols; j += 16, ++b) {
    const __mmask16 valid = lanes_below(cols - j);
    const __m512 v = _mm512_maskz_loadu_ps(valid, row + j);
    if (check_finite) bad |= non_finite_lanes(v) & valid;
    for (int i = 0; i < G; ++i)
      count[i] = _mm512_mask_sub_epi32(count[i], _mm512_mask_cmp_ps_mask(valid, v, threshold[i], _CMP_GT_OQ),
                                       count[i], minus_one);
    if (b != next_switch) continue;
    next_switch = kNone;
    for (int i = 0; i < G; ++i) {
      if (switch_block[i] != b) {
        if (switch_block[i] > b) next_switch = std::min(next_switch, switch_block[i]);
        continue;
      }
      // Lanes from the split on were counted as s >= t: the item itself must not count, and the
      // candidates above it count only when s > t.
      const float t = rel_scores[i];
      const bool holds_item = rel_ids[i] - id0 == split[i];
      for (int64_t l = split[i]; l < std::min(cols, j + 16); ++l) {
        if (l == split[i] && holds_item) {
          own_scores[i] = row[l];
          fix[i] -= row[l] >= t;
        } else {
          fix[i] -= row[l] == t;
        }
      }
      threshold[i] = _mm512_set1_ps(t);
    }
  }
  for (int i = 0; i < G; ++i) counts[i] += _mm512_reduce_add_epi32(count[i]) + fix[i];
  return bad == 0;
}

bool count_row_avx512(const float* row, int64_t cols, int64_t id0, const float* rel_scores, const int64_t* rel_ids,
                      int64_t r, int64_t* counts, float* own_scores) {
  if (r == 0) return all_finite_cpu(row, cols);
  bool finite = true;
  for (int64_t i0 = 0; i0 < r; i0 += 8) {
    const float* s = rel_scores + i0;
    const int64_t* ids = rel_ids + i0;
    int64_t* c = counts + i0;
    float* own = own_scores + i0;
    const bool check = i0 == 0;
    switch (std::min<int64_t>(8, r - i0)) {
      case 1: finite &= count_row_group_avx512<1>(row, cols, id0, s, ids, c, own, check); break;
      case 2: finite &= count_row_group_avx512<2>(row, cols, id0, s, ids, c, own, check); break;
      case 3: finite &= count_row_group_avx512<3>(row, cols, id0, s, ids, c, own, check); break;
      case 4: finite &= count_row_group_avx512<4>(row, cols, id0, s, ids, c, own, check); break;
      case 5: finite &= count_row_group_avx512<5>(row, cols, id0, s, ids, c, own, check); break;
      case 6: finite &= count_row_group_avx512<6>(row, cols, id0, s, ids, c, own, check); break;
      case 7: finite &= count_row_group_avx512<7>(row, cols, id0, s, ids, c, own, check); break;
      default: finite &= count_row_group_avx512<8>(row, cols, id0, s, ids, c, own, check); break;
    }
    if (!finite) return false;
  }
  return true;
}
}  // namespace
#endif

namespace {

// count_beating_cpu for rows [0, rows) in the calling thread; false when a score is not finite.
bool count_beating_rows(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                        const float* rel_scores, const int64_t* rel_ids, int64_t r, int64_t* counts,
                        float* own_scores) {
  bool finite = true;
#ifdef HBFAST_AVX512_TWINS
  if (cpu_simd_enabled()) {
    for (int64_t q = 0; q < rows; ++q)
      finite &= count_row_avx512(tile + q * ld, cols, id0, rel_scores + q * r, rel_ids + q * r, r, counts + q * r,
                                 own_scores + q * r);
    return finite;
  }
#endif
  for (int64_t q = 0; q < rows; ++q) {
    const float* row = tile + q * ld;  // [cols]
    if (!all_finite_cpu(row, cols)) {
      finite = false;
      continue;
    }
    for (int64_t t = 0; t < r; ++t) {
      int64_t rel_id = rel_ids[q * r + t];
      if (rel_id < 0) continue;
      float s = rel_scores[q * r + t];
      // candidates [0, split) have lower ids than the item (a tie beats it), [split + 1, cols) higher
      int64_t split = std::clamp<int64_t>(rel_id - id0, 0, cols);
      int64_t n = count_above(row, split, s, true);
      bool holds_item = rel_id - id0 == split && split < cols;
      if (holds_item) own_scores[q * r + t] = row[split];
      int64_t after = split + (holds_item ? 1 : 0);  // skip the item itself
      n += count_above(row + after, cols - after, s, false);
      counts[q * r + t] += n;
    }
  }
  return finite;
}

}  // namespace

bool count_beating_cpu(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                       const float* rel_scores, const int64_t* rel_ids, int64_t r, int64_t* counts,
                       float* own_scores) {
  std::atomic<bool> finite{true};
  parallel_for(rows, 4, [&](int64_t begin, int64_t end) {
    if (!count_beating_rows(tile + begin * ld, end - begin, cols, ld, id0, rel_scores + begin * r,
                            rel_ids + begin * r, r, counts + begin * r, own_scores + begin * r))
      finite = false;
  });
  return finite.load();
}

bool count_beating_search_cpu(GemmBackend backend, const float* q, int64_t rows, int64_t dim, const float* c, int64_t cols, int64_t id0,
                              const float* rel_scores, const int64_t* rel_ids, int64_t r, int64_t* counts,
                              float* own_scores) {
  if (rows <= 0 || cols <= 0) return true;
  std::atomic<bool> finite{true};
  const int64_t block_rows = fused_block_rows(rows), block_cols = fused_block_cols(cols);
  const size_t tile_size = size_t(block_rows * block_cols);
  // The workers' tiles, kept by the calling thread between calls (a fresh buffer would be paged in and
  // zeroed by the kernel for every corpus tile).
  thread_local std::vector<float> kept;
  kept.resize(std::max(kept.size(), tile_size * parallel_workers(rows, block_rows)));
  float* scratch = kept.data();  // (the workers reach the caller's buffer through this pointer)
  parallel_blocks(rows, block_rows, [&](int64_t begin, int64_t end, int64_t worker) {
    float* tile = scratch + worker * tile_size;  // [rows, width], this worker's own
    for (int64_t j0 = 0; j0 < cols; j0 += block_cols) {
      int64_t width = std::min(block_cols, cols - j0);
      sgemm_serial(backend, false, true, end - begin, width, dim, 1.0f, q + begin * dim, dim, c + j0 * dim, dim, 0.0f, tile,
                   width);
      if (!count_beating_rows(tile, end - begin, width, width, id0 + j0, rel_scores + begin * r, rel_ids + begin * r,
                              r, counts + begin * r, own_scores + begin * r))
        finite = false;
    }
  });
  return finite.load();
}

}  // namespace hbfast
