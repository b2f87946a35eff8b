// Range search's selection on CUDA (see range_cuda.h): one thread per tile element, one atomic per
// warp for the slots of the warp's kept items.
#include <cuda_runtime.h>

#include "common/range_math.h"
#include "common/select.h"
#include "cuda/range_cuda.h"
#include "cuda/runtime_cuda.h"

namespace hbfast {
namespace {

constexpr int kThreads = HBFAST_BLOCK_THREADS;

__global__ void range_collect_kernel(const float* tile, int64_t cols, int64_t ld, int64_t q0, int64_t id0,
                                     float threshold, TileParams params, int64_t* out_q, int64_t* out_ids,
                                     float* out_values, int64_t capacity, unsigned long long* counter, int32_t* bad) {
  const int64_t r = blockIdx.y;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  bool keep = false;
  float value = 0.0f;
  if (j < cols) {
    const float product = tile[r * ld + j];
    if (non_finite_bits(__float_as_uint(product))) atomicExch(bad, 1);
    value = range_value(params, product, q0 + r, j);
    keep = range_keeps(params.l2, value, threshold) && id_selected(params.filter, id0 + j);
  }
  const unsigned mask = __ballot_sync(0xffffffffu, keep);  // every lane reaches this (no early return)
  const int lane = threadIdx.x & 31;
  unsigned long long base = 0;
  if (lane == 0 && mask) base = atomicAdd(counter, (unsigned long long)__popc(mask));
  base = __shfl_sync(0xffffffffu, base, 0);
  if (!keep) return;
  const unsigned long long slot = base + __popc(mask & ((1u << lane) - 1u));
  if (slot < (unsigned long long)capacity) {
    out_q[slot] = q0 + r;
    out_ids[slot] = id0 + j;
    out_values[slot] = value;
  }
}

__global__ void topk_tile_scores_kernel(float* tile, int64_t cols, int64_t ld, int64_t q0, int64_t id0, TileParams params) {
  const int64_t r = blockIdx.y;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float* x = tile + r * ld + j;
  *x = topk_tile_score(params, *x, q0 + r, j, id0 + j);
}

}  // namespace

void range_collect_cuda(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t q0, int64_t id0,
                        float threshold, const TileParams& params, int64_t* out_q, int64_t* out_ids, float* out_values,
                        int64_t capacity, unsigned long long* counter, int32_t* bad, uintptr_t stream) {
  if (rows <= 0 || cols <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dim3 grid(unsigned((cols + kThreads - 1) / kThreads), unsigned(rows));
  HBFAST_LAUNCH(range_collect_kernel, grid, kThreads, 0, s)(tile, cols, ld, q0, id0, threshold, params, out_q, out_ids,
                                                             out_values, capacity, counter, bad);
  check_cuda_launch("range_collect_cuda");
}

void topk_tile_scores_cuda(float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                           const TileParams& params, uintptr_t stream) {
  if (rows <= 0 || cols <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dim3 grid(unsigned((cols + kThreads - 1) / kThreads), unsigned(rows));
  HBFAST_LAUNCH(topk_tile_scores_kernel, grid, kThreads, 0, s)(tile, cols, ld, q0, id0, params);
  check_cuda_launch("topk_tile_scores_cuda");
}

}  // namespace hbfast
