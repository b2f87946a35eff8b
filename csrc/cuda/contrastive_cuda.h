// CUDA twins of the contrastive-loss epilogues in cpu/contrastive_cpu.h (same arguments, plus the
// stream the tile products were queued on): torch's cuBLAS computes each row block of dot products,
// these kernels do the element-wise work with the math of common/contrastive_math.h. The scale is a
// pointer to one float in device memory, so no launch needs its value on the host.
#pragma once
#include <cstdint>

namespace hbfast {

// How many row chunks the column log-sum-exp splits a block of `rows` rows into; the caller sizes
// partial_max / partial_sum as [chunks, n_batch] each.
int64_t contrastive_column_chunks(int64_t rows, int64_t chunk_rows);

// Each row's columns are split into row_spans spans, one block each (so that a block of few long rows
// fills the GPU); with more than one, row_partial [rows, row_spans, 2] is scratch for their (max, sum).
void contrastive_forward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                    int64_t n_batch, const float* scale, const int32_t* groups, bool with_columns,
                                    int64_t chunk_rows, float* partial_max, float* partial_sum, int64_t row_spans,
                                    float* row_partial, float* row_lse, float* diag, float* col_max, float* col_sum,
                                    void* stream);

// Adds sum(G * X) of the block to *dscale_sum (a float64 on the device). g may alias x.
void contrastive_backward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                     int64_t n_batch, const float* scale, const int32_t* groups, const float* row_lse,
                                     const float* col_lse, const float* row_coef, const float* col_coef,
                                     const float* diag_coef, float* g, int64_t ldg, double* dscale_sum, void* stream);

// out [4, n]: fast_exp(x), log_plain(x), lse_value(x, y) and the lse of x and y pushed in turn, as
// the device computes them (for the accuracy tests).
void contrastive_device_math_cuda(const float* x, const float* y, int64_t n, float* out, void* stream);

}  // namespace hbfast
