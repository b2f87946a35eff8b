// Exact top-k on the CPU: a running per-query state that score tiles (from any matrix product) are
// merged into, then read out sorted best first. Ties: higher score first, then lower corpus id.
#pragma once
#include <cstdint>
#include <vector>

#include "common/range_math.h"
#include "cpu/gemm_cpu.h"

namespace hbfast {

class TopkStateCpu {
 public:
  // k up to kHeapMaxK keeps a bounded heap per query; larger k keeps a buffer of `buffer_capacity`
  // (>= k + 1) candidates above a threshold, as 64-bit selection keys
  // (select.h: make_key), and shrinks it back to k with a partial selection of those integers.
  // Buffer mode needs corpus ids below 2^32 - 1 (checked: merge and search throw beyond).
  static constexpr int64_t kHeapMaxK = 64;
  TopkStateCpu(int64_t n_queries, int64_t k, int64_t buffer_capacity);

  // Merge one score tile: tile [rows, cols] (row stride ld) holds the scores of queries
  // [q0, q0 + rows) against corpus ids [id0, id0 + cols). Tiles must arrive in increasing id order
  // for each query. Returns false when a score is NaN or infinite (the tile is then ignored).
  bool merge(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0);

  // The product and the merge in one pass (gemm_cpu.h): scores of every query, q [n_queries, dim],
  // against corpus rows c [cols, dim] with ids [id0, id0 + cols). Each thread takes blocks of
  // queries, multiplies a block into its own small tile and merges it while it is in cache.
  // Same contract as merge. With params (range_math.h), each tile first becomes topk_tile_score's values
  // (an id filter, or minus the squared L2 distance; params->c_norms by column of c, or null: each
  // block's norms computed from the block the product just read).
  bool search(GemmBackend backend, const float* q, int64_t dim, const float* c, int64_t cols, int64_t id0,
              const TileParams* params = nullptr);

  // Write the k best of every query, best first: out_scores [n_queries, k], out_ids [n_queries, k].
  // Valid once at least k candidates were merged for every query.
  void finish(float* out_scores, int64_t* out_ids) const;

  int64_t n_queries() const { return n_queries_; }
  int64_t k() const { return k_; }

 private:
  void merge_heap_row(const float* row, int64_t q, int64_t cols, int64_t id0);
  void merge_buffer_row(const float* row, int64_t q, int64_t cols, int64_t id0);
  bool merge_heap_row_avx512(const float* row, int64_t q, int64_t cols, int64_t id0);  // false: not finite
  bool merge_buffer_row_avx512(const float* row, int64_t q, int64_t cols, int64_t id0);
  void shrink_buffer(int64_t q);
  void check_ids(int64_t id0, int64_t cols) const;
  bool merge_rows(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0);

  int64_t n_queries_, k_, capacity_;
  bool use_heap_;
  std::vector<float> heap_scores_;      // [n_queries, k] (heap mode)
  std::vector<int64_t> heap_ids_;       // [n_queries, k]
  std::vector<uint64_t> buffer_;        // [n_queries, capacity] selection keys (buffer mode)
  std::vector<int64_t> buffer_fill_;    // [n_queries]
  std::vector<float> buffer_threshold_; // [n_queries] score a candidate must beat to enter
  std::vector<float> scratch_;          // search's tiles, one [block rows, cols] per worker (reused)
};

}  // namespace hbfast
