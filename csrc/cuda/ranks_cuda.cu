// Rank counting on CUDA (see ranks_cuda.h): one block per query row; for each relevant item the
// threads count the row's candidates that beat it (select.h's beats_relevant) and reduce.
#include <cuda_runtime.h>

#include "common/select.h"
#include "cuda/ranks_cuda.h"
#include "cuda/runtime_cuda.h"

namespace hbfast {
namespace {

constexpr int kThreads = HBFAST_BLOCK_THREADS;

__device__ __forceinline__ long long block_sum(long long value, long long* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  long long total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < int(blockDim.x >> 5); ++w) total += scratch[w];
  __syncthreads();
  return total;  // valid in thread 0
}

__global__ void count_beating_kernel(const float* tile, int64_t cols, int64_t ld, int64_t id0, const float* rel_scores,
                                     const int64_t* rel_ids, int64_t r, int64_t* counts, float* own_scores,
                                     int32_t* bad) {
  __shared__ long long scratch[kThreads / 32];
  const int64_t row = blockIdx.x;
  const float* scores = tile + row * ld;  // [cols]
  uint32_t non_finite = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) non_finite |= non_finite_bits(__float_as_uint(scores[j]));
  if (non_finite) atomicExch(bad, 1);
  for (int64_t t = 0; t < r; ++t) {
    const int64_t rel_id = rel_ids[row * r + t];
    if (rel_id < 0) continue;  // the same branch for the whole block
    const float rel_score = rel_scores[row * r + t];
    if (threadIdx.x == 0 && rel_id >= id0 && rel_id < id0 + cols) own_scores[row * r + t] = scores[rel_id - id0];
    long long local = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) local += beats_relevant(scores[j], id0 + j, rel_score, rel_id);
    long long total = block_sum(local, scratch);
    if (threadIdx.x == 0) counts[row * r + t] += total;
  }
}

}  // namespace

void count_beating_cuda(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0, const float* rel_scores,
                        const int64_t* rel_ids, int64_t r, int64_t* counts, float* own_scores, int32_t* bad,
                        uintptr_t stream) {
  if (rows <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  HBFAST_LAUNCH(count_beating_kernel, unsigned(rows), kThreads, 0, s)(tile, cols, ld, id0, rel_scores, rel_ids, r,
                                                                      counts, own_scores, bad);
  check_cuda_launch("count_beating_cuda");
}

}  // namespace hbfast
