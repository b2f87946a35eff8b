// Rank counting on the CPU (see ranks_cpu.h). Per relevant item the tile row splits into the part
// with lower ids (ties beat the item: count s >= score) and the part with higher ids (count s > score),
// so both counts are branch-free vectorised loops; the item itself is skipped.
#include "cpu/ranks_cpu.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "common/parallel.h"
#include "common/select.h"
#include "cpu/finite_cpu.h"
#include "cpu/gemm_cpu.h"

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

namespace {

// count_beating_cpu for rows [0, rows) in the calling thread; false when a score is not finite.
bool count_beating_rows(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                        const float* rel_scores, const int64_t* rel_ids, int64_t r, int64_t* counts,
                        float* own_scores) {
  bool finite = true;
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
