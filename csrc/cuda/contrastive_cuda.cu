// CUDA epilogues of the fused contrastive loss: row log-sum-exp over each row's negatives (one block
// per row), column log-sum-exp over each column's negatives (one thread per column and row chunk, coalesced over the rows, then a merge of the
// chunks' partial (max, sum) pairs) and the gradient tile (one thread per element), all with the
// shared math of common/contrastive_math.h. The scale is read from device memory (a learnable
// scale never leaves the GPU), so a step needs no device-to-host synchronisation.
#include <cuda_runtime.h>

#include "common/contrastive_math.h"
#include "cuda/contrastive_cuda.h"
#include "cuda/runtime_cuda.h"

namespace hbfast {
namespace {

constexpr int kThreads = HBFAST_BLOCK_THREADS;

__device__ __forceinline__ void warp_merge(float& m, float& s) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    float m_other = __shfl_down_sync(0xffffffffu, m, offset);
    float s_other = __shfl_down_sync(0xffffffffu, s, offset);
    lse_merge(m, s, m_other, s_other);
  }
}

// One block per (span of `span` columns, row) of the tile: online (max, sum) per thread, merged across
// the block; the row's lse when one span covers the row (gridDim.x == 1), else the span's (max, sum)
// into row_partial [rows, spans, 2] for row_lse_merge_kernel.
__global__ void row_lse_kernel(const float* __restrict__ x, int64_t ld, int64_t row_begin, int64_t n_cols,
                               int64_t n_batch, const float* __restrict__ scale_ptr,
                               const int32_t* __restrict__ groups, int64_t span, float* __restrict__ row_partial,
                               float* __restrict__ row_lse, float* __restrict__ diag) {
  const float scale = *scale_ptr;
  const int64_t r = blockIdx.y;
  const int32_t i = static_cast<int32_t>(row_begin + r);
  const float* xr = x + r * ld;
  const int32_t group_row = groups ? groups[i] : 0;
  const int64_t j_end = (blockIdx.x + 1) * span < n_cols ? (blockIdx.x + 1) * span : n_cols;
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = blockIdx.x * span + threadIdx.x; j < j_end; j += blockDim.x) {
    // the positive (j == i) and, with groups, same-group pairs are not negatives
    bool masked = j < n_batch && pair_masked(group_row, groups ? groups[j] : group_row + 1, i, static_cast<int32_t>(j));
    if (!masked) lse_push(m, s, scale * xr[j]);
  }
  warp_merge(m, s);
  __shared__ float shared_m[kThreads / 32], shared_s[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared_m[warp] = m, shared_s[warp] = s;
  __syncthreads();
  if (warp == 0) {
    m = lane < kThreads / 32 ? shared_m[lane] : -INFINITY;
    s = lane < kThreads / 32 ? shared_s[lane] : 0.0f;
    warp_merge(m, s);
    if (lane == 0) {
      if (gridDim.x == 1) {
        row_lse[2 * r] = m;  // the log-sum-exp as max + log_sum (common/contrastive_math.h)
        row_lse[2 * r + 1] = log_plain(s);
      } else {
        row_partial[(r * gridDim.x + blockIdx.x) * 2] = m;
        row_partial[(r * gridDim.x + blockIdx.x) * 2 + 1] = s;
      }
      if (blockIdx.x == 0) diag[r] = xr[i];
    }
  }
}

// One thread per row: merges the row's spans, in order (deterministic), into its lse.
__global__ void row_lse_merge_kernel(int64_t rows, int64_t spans, const float* __restrict__ row_partial,
                                     float* __restrict__ row_lse) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  float m = -INFINITY, s = 0.0f;
  for (int64_t c = 0; c < spans; ++c) {
    const float* pair = row_partial + (r * spans + c) * 2;
    lse_merge(m, s, pair[0], pair[1]);
  }
  row_lse[2 * r] = m;  // as row_lse_kernel writes it
  row_lse[2 * r + 1] = log_plain(s);
}

// One thread per (batch column, chunk of rows): walks the chunk's rows (coalesced across the warp)
// and writes the chunk's partial (max, sum) to partial_max / partial_sum [chunks, n_batch].
__global__ void column_lse_partial_kernel(const float* __restrict__ x, int64_t ld, int64_t rows, int64_t row_begin,
                                          int64_t n_batch, int64_t chunk_rows, const float* __restrict__ scale_ptr,
                                          const int32_t* __restrict__ groups, float* __restrict__ partial_max,
                                          float* __restrict__ partial_sum) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= n_batch) return;
  const float scale = *scale_ptr;
  const int64_t r_begin = blockIdx.y * chunk_rows;
  const int64_t r_end = r_begin + chunk_rows < rows ? r_begin + chunk_rows : rows;
  const int32_t group_col = groups ? groups[j] : 0;
  float m = -INFINITY, s = 0.0f;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int32_t i = static_cast<int32_t>(row_begin + r);
    bool masked = pair_masked(groups ? groups[i] : group_col + 1, group_col, i, static_cast<int32_t>(j));
    if (!masked) lse_push(m, s, scale * x[r * ld + j]);
  }
  partial_max[blockIdx.y * n_batch + j] = m;
  partial_sum[blockIdx.y * n_batch + j] = s;
}

// One thread per batch column: merges the chunks' pairs, in chunk order (deterministic), into the
// running (col_max, col_sum), which only this thread touches.
__global__ void column_lse_merge_kernel(int64_t n_batch, int64_t chunks, const float* __restrict__ partial_max,
                                        const float* __restrict__ partial_sum, float* __restrict__ col_max,
                                        float* __restrict__ col_sum) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= n_batch) return;
  float m = col_max[j], s = col_sum[j];
  for (int64_t c = 0; c < chunks; ++c) lse_merge(m, s, partial_max[c * n_batch + j], partial_sum[c * n_batch + j]);
  col_max[j] = m;
  col_sum[j] = s;
}

// One thread per element of the row block: G = dL/dS in place (or into g), and sum(G * X). x and
// g may be the same buffer (the recompute path writes G over the scores it reads), so neither is
// __restrict__: each thread reads its element before it writes it.
__global__ void gradient_tile_kernel(const float* x, int64_t ld, int64_t row_begin, int64_t n_cols,
                                     int64_t n_batch, const float* __restrict__ scale_ptr,
                                     const int32_t* __restrict__ groups,
                                     const float* __restrict__ row_lse, const float* __restrict__ col_lse,
                                     const float* __restrict__ row_coef, const float* __restrict__ col_coef,
                                     const float* __restrict__ diag_coef, float* g, int64_t ldg,
                                     double* __restrict__ dscale_sum) {
  const int64_t r = blockIdx.y;
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const float scale = *scale_ptr;
  double contribution = 0.0;
  if (j < n_cols) {
    const int32_t i = static_cast<int32_t>(row_begin + r);
    const float xv = x[r * ld + j];
    const float score = scale * xv;
    float gv;
    if (j == i) {
      gv = gradient_tile_diagonal(diag_coef[r]);
    } else if (j < n_batch) {
      bool masked = groups && pair_masked(groups[i], groups[j], i, static_cast<int32_t>(j));
      gv = col_coef ? gradient_tile_element(score, row_lse[2 * r], row_lse[2 * r + 1], col_lse[2 * j],
                                            col_lse[2 * j + 1], row_coef[r], col_coef[j], masked)
                    : gradient_tile_element_rows_only(score, row_lse[2 * r], row_lse[2 * r + 1], row_coef[r], masked);
    } else {
      gv = gradient_tile_element_rows_only(score, row_lse[2 * r], row_lse[2 * r + 1], row_coef[r], false);
    }
    g[r * ldg + j] = gv;
    contribution = static_cast<double>(gv) * xv;
  }
  for (int offset = 16; offset > 0; offset >>= 1) contribution += __shfl_down_sync(0xffffffffu, contribution, offset);
  __shared__ double partial[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = contribution;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
    atomicAdd(dscale_sum, total);
  }
}

// The shared per-element math evaluated on the device, for the accuracy tests: out [4, n] =
// fast_exp(x), log_plain(x), lse_value(x, y) and lse of the pair pushed one by one.
__global__ void device_math_kernel(const float* __restrict__ x, const float* __restrict__ y, int64_t n,
                                   float* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  out[i] = fast_exp(x[i]);
  out[n + i] = log_plain(x[i]);
  out[2 * n + i] = lse_value(x[i], y[i]);
  float m = -INFINITY, s = 0.0f;
  lse_push(m, s, x[i]);
  lse_push(m, s, y[i]);
  out[3 * n + i] = lse_value(m, s);
}

}  // namespace

int64_t contrastive_column_chunks(int64_t rows, int64_t chunk_rows) { return (rows + chunk_rows - 1) / chunk_rows; }

void contrastive_forward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                    int64_t n_batch, const float* scale, const int32_t* groups, bool with_columns,
                                    int64_t chunk_rows, float* partial_max, float* partial_sum, int64_t row_spans,
                                    float* row_partial, float* row_lse, float* diag, float* col_max, float* col_sum,
                                    void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t span = (n_cols + row_spans - 1) / row_spans;
  HBFAST_LAUNCH(row_lse_kernel, dim3(static_cast<unsigned>(row_spans), static_cast<unsigned>(rows)), kThreads, 0, s)(
      x, ld, row_begin, n_cols, n_batch, scale, groups, span, row_partial, row_lse, diag);
  check_cuda_launch("contrastive row_lse_kernel");
  if (row_spans > 1) {
    HBFAST_LAUNCH(row_lse_merge_kernel, static_cast<unsigned>((rows + kThreads - 1) / kThreads), kThreads, 0, s)(
        rows, row_spans, row_partial, row_lse);
    check_cuda_launch("contrastive row_lse_merge_kernel");
  }
  if (with_columns) {
    const unsigned col_blocks = static_cast<unsigned>((n_batch + kThreads - 1) / kThreads);
    const int64_t chunks = contrastive_column_chunks(rows, chunk_rows);
    HBFAST_LAUNCH(column_lse_partial_kernel, dim3(col_blocks, static_cast<unsigned>(chunks)), kThreads, 0, s)(
        x, ld, rows, row_begin, n_batch, chunk_rows, scale, groups, partial_max, partial_sum);
    check_cuda_launch("contrastive column_lse_partial_kernel");
    HBFAST_LAUNCH(column_lse_merge_kernel, col_blocks, kThreads, 0, s)(n_batch, chunks, partial_max, partial_sum,
                                                                       col_max, col_sum);
    check_cuda_launch("contrastive column_lse_merge_kernel");
  }
}

void contrastive_backward_block_cuda(const float* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                     int64_t n_batch, const float* scale, const int32_t* groups, const float* row_lse,
                                     const float* col_lse, const float* row_coef, const float* col_coef,
                                     const float* diag_coef, float* g, int64_t ldg, double* dscale_sum, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  dim3 grid(static_cast<unsigned>((n_cols + kThreads - 1) / kThreads), static_cast<unsigned>(rows));
  HBFAST_LAUNCH(gradient_tile_kernel, grid, kThreads, 0, s)(x, ld, row_begin, n_cols, n_batch, scale, groups, row_lse,
                                                            col_lse, row_coef, col_coef, diag_coef, g, ldg, dscale_sum);
  check_cuda_launch("contrastive gradient_tile_kernel");
}

void contrastive_device_math_cuda(const float* x, const float* y, int64_t n, float* out, void* stream) {
  if (n <= 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  HBFAST_LAUNCH(device_math_kernel, blocks, kThreads, 0, s)(x, y, n, out);
  check_cuda_launch("contrastive device_math_kernel");
}

}  // namespace hbfast
