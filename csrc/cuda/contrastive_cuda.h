// CUDA twins of the contrastive-loss epilogues in cpu/contrastive_cpu.h (same arguments, plus the
// stream the tile products were queued on): torch's cuBLAS computes each row block of dot products,
// these kernels do the element-wise work with the math of common/contrastive_math.h.
#pragma once
#include <cstdint>

namespace hbfast {

void contrastive_forward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                    int64_t n_batch, float scale, const int32_t* groups, bool with_columns,
                                    float* row_lse, float* diag, float* col_max, float* col_sum, void* stream);

// Adds sum(G * X) of the block to *dscale_sum (a float64 on the device).
void contrastive_backward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                     int64_t n_batch, float scale, const int32_t* groups, const float* row_lse,
                                     const float* col_lse, const float* row_coef, const float* col_coef,
                                     const float* diag_coef, float* g, int64_t ldg, double* dscale_sum, void* stream);

}  // namespace hbfast
