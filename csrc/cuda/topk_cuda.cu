// Exact top-k on CUDA (see topk_cuda.h). One block per query row merges the row's k kept keys with
// the tile's candidates: an 8-pass radix select (8 bits per pass, 32-bit histogram counters in
// shared memory: native shared atomics, where 64-bit ones compile to compare-and-swap loops) finds
// the k-th best 64-bit key, then every key above it is written out. Any k works; keys hold the
// score and the id (select.h), so the tie rule needs no extra pass.
#include <cuda_runtime.h>

#include "common/select.h"
#include "cuda/runtime_cuda.h"
#include "cuda/topk_cuda.h"

namespace hbfast {
namespace {

constexpr int kThreads = HBFAST_BLOCK_THREADS;

// Candidate i of a row: the k kept keys first, then the tile's scores turned into keys.
__device__ __forceinline__ uint64_t candidate_key(int64_t i, int64_t k, const uint64_t* kept, const float* scores,
                                                  int64_t id0, bool* non_finite) {
  if (i < k) return kept[i];
  float s = scores[i - k];
  if (non_finite_bits(__float_as_uint(s))) {
    *non_finite = true;
    return kEmptyKey;
  }
  return make_key(s, id0 + (i - k));
}

__global__ void topk_merge_kernel(const float* tile, int64_t cols, int64_t ld, int64_t id0, const uint64_t* keys_in,
                                  uint64_t* keys_out, int64_t k, int32_t* bad) {
  const int64_t row = blockIdx.x;
  const float* scores = tile + row * ld;       // [cols]
  const uint64_t* kept = keys_in + row * k;    // [k]
  uint64_t* out = keys_out + row * k;          // [k]
  const int64_t n = k + cols;

  // 32-bit counts (Python keeps k + cols below 2^31), one histogram per warp: similar scores share
  // one or two buckets in the first passes, and per-warp copies split that contention 8 ways.
  constexpr int kWarps = kThreads / 32;
  __shared__ unsigned int warp_histogram[kWarps][256];
  unsigned int* histogram = warp_histogram[0];  // the sum over warps, after each counting pass
  unsigned int* my_histogram = warp_histogram[threadIdx.x / 32];
  __shared__ uint64_t shared_prefix;
  __shared__ unsigned int shared_remaining;
  __shared__ unsigned int written;

  uint64_t prefix = 0, mask = 0;               // the high bits of the k-th best key found so far
  unsigned int remaining = static_cast<unsigned int>(k);  // its position among the keys that share `prefix`
  bool non_finite = false;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kWarps * 256; b += blockDim.x) warp_histogram[b / 256][b % 256] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      uint64_t key = candidate_key(i, k, kept, scores, id0, &non_finite);
      if ((key & mask) == prefix) atomicAdd(&my_histogram[(key >> shift) & 0xff], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      unsigned int total = 0;
      for (int w = 0; w < kWarps; ++w) total += warp_histogram[w][b];
      histogram[b] = total;  // warp 0's row: each bucket read and written by the same thread only
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned int above = 0;  // keys in higher buckets
      int b = 255;
      for (; b > 0; --b) {
        if (above + histogram[b] >= remaining) break;
        above += histogram[b];
      }
      shared_prefix = prefix | (uint64_t(b) << shift);
      shared_remaining = remaining - above;
    }
    __syncthreads();
    prefix = shared_prefix;
    remaining = shared_remaining;
    mask |= uint64_t(0xff) << shift;
  }
  if (non_finite) atomicExch(bad, 1);

  // prefix is now the k-th best key: keep the keys above it, then pad with it (only the empty key
  // can repeat, before k real candidates were seen).
  if (threadIdx.x == 0) written = 0;
  __syncthreads();
  bool ignored = false;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    uint64_t key = candidate_key(i, k, kept, scores, id0, &ignored);
    if (key > prefix) out[atomicAdd(&written, 1u)] = key;
  }
  __syncthreads();
  for (int64_t i = int64_t(written) + threadIdx.x; i < k; i += blockDim.x) out[i] = prefix;
}

// select.h's make_key on the device, for the tests of the GPU's key order (subnormals, -0).
__global__ void topk_keys_kernel(const float* scores, const int64_t* ids, int64_t n, uint64_t* keys) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) keys[i] = make_key(scores[i], ids[i]);
}

__global__ void topk_decode_kernel(const uint64_t* keys, int64_t n, float* scores, int64_t* ids) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint64_t key = keys[i];
  scores[i] = key_score(key);
  ids[i] = key == kEmptyKey ? -1 : key_id(key);
}

}  // namespace

void topk_merge_tile_cuda(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0, const uint64_t* keys_in,
                          uint64_t* keys_out, int64_t k, int32_t* bad, uintptr_t stream) {
  if (rows <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  HBFAST_LAUNCH(topk_merge_kernel, unsigned(rows), kThreads, 0, s)(tile, cols, ld, id0, keys_in, keys_out, k, bad);
  check_cuda_launch("topk_merge_tile_cuda");
}

void topk_decode_cuda(const uint64_t* keys, int64_t n, float* scores, int64_t* ids, uintptr_t stream) {
  if (n <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  HBFAST_LAUNCH(topk_decode_kernel, unsigned((n + kThreads - 1) / kThreads), kThreads, 0, s)(keys, n, scores, ids);
  check_cuda_launch("topk_decode_cuda");
}

void topk_keys_cuda(const float* scores, const int64_t* ids, int64_t n, uint64_t* keys, uintptr_t stream) {
  if (n <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  HBFAST_LAUNCH(topk_keys_kernel, unsigned((n + kThreads - 1) / kThreads), kThreads, 0, s)(scores, ids, n, keys);
  check_cuda_launch("topk_keys_cuda");
}

}  // namespace hbfast
