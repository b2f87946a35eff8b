// Rank counting on the CPU (see ranks_cpu.h). Per relevant item the tile row splits into the part
// with lower ids (ties beat the item: count s >= score) and the part with higher ids (count s > score),
// so both counts are branch-free vectorised loops; the item itself is skipped.
#include "cpu/ranks_cpu.h"

#include <algorithm>
#include <atomic>

#include "common/parallel.h"
#include "common/select.h"
#include "cpu/finite_cpu.h"

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

bool count_beating_cpu(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                       const float* rel_scores, const int64_t* rel_ids, int64_t r, int64_t* counts,
                       float* own_scores) {
  std::atomic<bool> finite{true};
  parallel_for(rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
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
  });
  return finite.load();
}

}  // namespace hbfast
