// Why this file exists: exact range search on the CPU (every corpus item with a score above a threshold,
// or a squared L2 distance below a radius), and the id filter of top-k tiles. The threshold is applied
// inside the fused product tile: no score matrix is kept, only the items found, per query in id order.
#pragma once
#include <cstdint>
#include <vector>

#include "common/range_math.h"
#include "cpu/gemm_cpu.h"

namespace hbfast {

class RangeStateCpu {
 public:
  RangeStateCpu(int64_t n_queries, float threshold, bool l2);

  // Tiles of one query must arrive in increasing id order (then each query's items are in id order).
  // tile [rows, cols] (row stride ld): products of queries [q0, q0 + rows) with corpus ids
  // [id0, id0 + cols); params.c_norms by column of this tile. False when a product is not finite.
  bool merge(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0, const TileParams& params);
  // The product and the selection in one pass (gemm_cpu.h), every query q [n_queries, dim] against
  // corpus rows c [cols, dim] with ids [id0, id0 + cols). For L2, params.c_norms may be null: each
  // block's norms are then computed from the block the product just read (no separate pass).
  bool search(GemmBackend backend, const float* q, int64_t dim, const float* c, int64_t cols, int64_t id0,
              const TileParams& params);

  int64_t total() const;  // items found so far, over all queries
  // lims [n_queries + 1], values [total()], ids [total()] (faiss's RangeSearchResult layout).
  void finish(int64_t* lims, float* values, int64_t* ids) const;

 private:
  bool search_by_columns(GemmBackend backend, const float* q, int64_t dim, const float* c, int64_t cols, int64_t id0,
                         const TileParams& params);
  bool collect_rows(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                    const TileParams& params);
  int64_t n_queries_;
  float threshold_;
  bool l2_;
  std::vector<std::vector<float>> values_;  // per query
  std::vector<std::vector<int64_t>> ids_;   // per query
  std::vector<float> scratch_;              // search's tiles, one per worker (reused)
};

// Top-k tiles under a filter or the L2 distance: tile[r, j] = topk_tile_score(...) in place (range_math.h),
// rows are queries [q0, q0 + rows), columns ids [id0, id0 + cols). _serial in the calling thread,
// _cpu over hbfast's threads.
void topk_tile_scores_serial(float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                             const TileParams& params);
void topk_tile_scores_cpu(float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                          const TileParams& params);

// out[i] = |x_i|^2 of the rows of x [rows, dim], in float32 (L2's norms): _serial in the calling
// thread, _cpu over hbfast's threads.
void sq_norms_serial(const float* x, int64_t rows, int64_t dim, float* out);
void sq_norms_cpu(const float* x, int64_t rows, int64_t dim, float* out);

// params for the columns [j0, j0 + width) of c [cols, dim]: params.c_norms moved to j0, or (null, L2)
// the block's norms computed into scratch [width].
TileParams block_params(const TileParams& params, const float* c, int64_t dim, int64_t j0, int64_t width, float* scratch);

}  // namespace hbfast
