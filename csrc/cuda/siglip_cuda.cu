// CUDA epilogues of the fused pairwise sigmoid (SigLIP) loss: the row loss (one block per row) and
// the gradient tile (one thread per element, with block-reduced sums for dL/dscale and dL/dbias),
// with the shared math of common/siglip_math.h.
#include <cuda_runtime.h>

#include "common/siglip_math.h"
#include "cuda/runtime_cuda.h"
#include "cuda/siglip_cuda.h"

namespace hbfast {
namespace {

constexpr int kThreads = HBFAST_BLOCK_THREADS;

template <class T>
__device__ __forceinline__ T block_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  __shared__ T partial[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  T total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  return total;  // valid in thread 0
}

// One block per (span of `span` columns, row) of the tile: the sum over the span's pairs of their loss,
// into row_loss[r] when one span covers the row (gridDim.x == 1), else into row_partial [rows, spans].
__global__ void siglip_row_loss_kernel(const float* __restrict__ x, int64_t ld, int64_t row_begin, int64_t n_cols,
                                       const float* __restrict__ scale_bias, int64_t span,
                                       float* __restrict__ row_partial, float* __restrict__ row_loss) {
  const float scale = scale_bias[0], bias = scale_bias[1];
  const int64_t r = blockIdx.y;
  const int64_t diag_col = row_begin + r;
  const float* xr = x + r * ld;
  const int64_t j_end = (blockIdx.x + 1) * span < n_cols ? (blockIdx.x + 1) * span : n_cols;
  float sum = 0.0f;
  for (int64_t j = blockIdx.x * span + threadIdx.x; j < j_end; j += blockDim.x)
    sum += siglip_pair_loss(scale * xr[j] + bias, j == diag_col);
  sum = block_sum(sum);
  if (threadIdx.x == 0) (gridDim.x == 1 ? row_loss[r] : row_partial[r * gridDim.x + blockIdx.x]) = sum;
}

// One thread per row: the sum of the row's spans, in order (deterministic).
__global__ void siglip_row_merge_kernel(int64_t rows, int64_t spans, const float* __restrict__ row_partial,
                                        float* __restrict__ row_loss) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  float sum = 0.0f;
  for (int64_t c = 0; c < spans; ++c) sum += row_partial[r * spans + c];
  row_loss[r] = sum;
}

// One thread per element of the row block: g = scale * G (in place or into g); sums of G * X and G.
// x and g may be the same buffer (the recompute path writes G over the scores it reads), so neither
// is __restrict__: each thread reads its element before it writes it.
__global__ void siglip_gradient_tile_kernel(const float* x, int64_t ld, int64_t row_begin,
                                            int64_t n_cols, const float* __restrict__ scale_bias,
                                            const float* __restrict__ row_coef, float* g, int64_t ldg,
                                            double* __restrict__ sums) {
  const float scale = scale_bias[0], bias = scale_bias[1];
  const int64_t r = blockIdx.y;
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  double gx = 0.0, g1 = 0.0;
  if (j < n_cols) {
    const float xv = x[r * ld + j];
    const float gz = row_coef[r] * siglip_pair_grad(scale * xv + bias, j == row_begin + r);
    g[r * ldg + j] = scale * gz;
    gx = static_cast<double>(gz) * xv;
    g1 = gz;
  }
  gx = block_sum(gx);
  g1 = block_sum(g1);
  if (threadIdx.x == 0) {
    atomicAdd(&sums[0], gx);
    atomicAdd(&sums[1], g1);
  }
}

}  // namespace

void siglip_forward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                               const float* scale_bias, int64_t row_spans, float* row_partial, float* row_loss,
                               void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t span = (n_cols + row_spans - 1) / row_spans;
  HBFAST_LAUNCH(siglip_row_loss_kernel, dim3(static_cast<unsigned>(row_spans), static_cast<unsigned>(rows)), kThreads,
                0, s)(x, ld, row_begin, n_cols, scale_bias, span, row_partial, row_loss);
  check_cuda_launch("siglip_row_loss_kernel");
  if (row_spans > 1) {
    HBFAST_LAUNCH(siglip_row_merge_kernel, static_cast<unsigned>((rows + kThreads - 1) / kThreads), kThreads, 0, s)(
        rows, row_spans, row_partial, row_loss);
    check_cuda_launch("siglip_row_merge_kernel");
  }
}

void siglip_backward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                const float* scale_bias, const float* row_coef, float* g, int64_t ldg, double* sums,
                                void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  dim3 grid(static_cast<unsigned>((n_cols + kThreads - 1) / kThreads), static_cast<unsigned>(rows));
  HBFAST_LAUNCH(siglip_gradient_tile_kernel, grid, kThreads, 0, s)(x, ld, row_begin, n_cols, scale_bias, row_coef, g,
                                                                   ldg, sums);
  check_cuda_launch("siglip_gradient_tile_kernel");
}

}  // namespace hbfast
