// CUDA twins of the SigLIP-loss epilogues in cpu/siglip_cpu.h (the same arguments, except that the
// scale and bias are read on the device from scale_bias = [scale, bias], so nothing waits for the
// device; plus the stream the tile products were queued on): torch's cuBLAS computes each row block
// of dot products, these kernels do the element-wise work with the math of common/siglip_math.h.
#pragma once
#include <cstdint>

namespace hbfast {

// Each row's columns are split into row_spans spans, one block each (so that a block of few long rows
// fills the GPU); with more than one, row_partial [rows, row_spans] is scratch for their sums.
void siglip_forward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                               const float* scale_bias, int64_t row_spans, float* row_partial, float* row_loss,
                               void* stream);

// Adds sum(G * X) to sums[0] and sum(G) to sums[1] (two float64 on the device).
void siglip_backward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                const float* scale_bias, const float* row_coef, float* g, int64_t ldg, double* sums,
                                void* stream);

}  // namespace hbfast
