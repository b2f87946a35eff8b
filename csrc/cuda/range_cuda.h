// Why this file exists: the CUDA twin of csrc/cpu/range_cpu.h: range search's selection on a product
// tile, and the id filter / L2 values of top-k tiles, with range_math.h's per-element rules.
#pragma once
#include <cstdint>

#include "common/range_math.h"

namespace hbfast {

// tile [rows, cols] (row stride ld): products of queries [q0, q0 + rows) with corpus ids [id0, id0 + cols)
// (params.c_norms by column of this tile; every pointer in params on the device). Each kept item gets
// the next slot from *counter: (out_q, out_ids, out_values)[slot] when slot < capacity. *counter
// counts every item found, so a caller that sees it above capacity searches again with more room.
// The slots follow no order (the caller sorts). Sets *bad to 1 when a product is not finite.
void range_collect_cuda(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t q0, int64_t id0,
                        float threshold, const TileParams& params, int64_t* out_q, int64_t* out_ids, float* out_values,
                        int64_t capacity, unsigned long long* counter, int32_t* bad, uintptr_t stream);

// tile[r, j] = topk_tile_score(params, ...) in place (filter / minus the squared L2 distance).
void topk_tile_scores_cuda(float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                           const TileParams& params, uintptr_t stream);

}  // namespace hbfast
