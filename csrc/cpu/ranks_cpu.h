// Ranks of known relevant items in the full ranking of a corpus, without sorting: for each
// relevant item, count the corpus items that beat it (higher score, or equal score and lower id).
#pragma once
#include <cstdint>

#include "cpu/gemm_cpu.h"

namespace hbfast {

// tile [rows, cols] (row stride ld): scores of `rows` queries against corpus ids [id0, id0 + cols).
// rel_scores, rel_ids, counts: [rows, r] for the same queries (rel_ids < 0 are padding, skipped).
// Adds to counts[q, t] the candidates of this tile that beat relevant item t of query q, and writes
// to own_scores[q, t] ([rows, r]) the item's score in this tile when the tile holds it.
// Returns false when a score of the tile is NaN or infinite.
bool count_beating_cpu(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                       const float* rel_scores, const int64_t* rel_ids, int64_t r, int64_t* counts,
                       float* own_scores);

// The same with the product fused in (gemm_cpu.h): the tile is q [rows, dim] @ c [cols, dim]^T,
// multiplied block by block of queries by each thread and counted while in cache.
bool count_beating_search_cpu(GemmBackend backend, const float* q, int64_t rows, int64_t dim, const float* c, int64_t cols, int64_t id0,
                              const float* rel_scores, const int64_t* rel_ids, int64_t r, int64_t* counts,
                              float* own_scores);

}  // namespace hbfast
