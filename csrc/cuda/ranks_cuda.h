// Rank counting on CUDA: the twin of cpu/ranks_cpu.h (same arguments, plus the non-finite flag and
// the stream, since a kernel cannot return a value without a synchronisation).
#pragma once
#include <cstdint>

namespace hbfast {

// Adds to counts[q, t] ([rows, r]) the candidates of the tile that beat relevant item t of query q,
// writes the item's own tile score to own_scores[q, t] when the tile holds it, and sets *bad to 1
// when a score is NaN or infinite. Runs on `stream`.
void count_beating_cuda(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0, const float* rel_scores,
                        const int64_t* rel_ids, int64_t r, int64_t* counts, float* own_scores, int32_t* bad,
                        uintptr_t stream);

}  // namespace hbfast
