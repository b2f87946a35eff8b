// Kernels that test the host emulation itself (csrc/emulate/cuda_runtime.h): one that uses every
// emulated feature correctly, whose results the tests check, and one per breach of the CUDA model
// that the emulation must turn into an error. Built into hbfast._C_emu only (valid CUDA all the same).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/runtime_cuda.h"

namespace hbfast {
namespace {

// out[block] = sum of in[block * blockDim + t] through shared memory, shuffles and atomics;
// out[gridDim + block] = ballot count of odd values (per warp, summed); votes[block] = any/all.
__global__ void features_kernel(const int* in, long long* out, int* votes) {
  HBFAST_DYNAMIC_SHARED(long long, partial);  // one per warp
  const int t = threadIdx.x, lane = t % 32, warp = t / 32, warps = blockDim.x / 32;
  long long v = in[blockIdx.x * blockDim.x + t];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const long long up = __shfl_up_sync(0xffffffffu, static_cast<long long>(lane), 1);  // lane - 1 (lane 0: 0)
  const int src = __shfl_sync(0xffffffffu, lane, 31 - lane);                           // 31 - lane
  unsigned odd = __ballot_sync(0xffffffffu, in[blockIdx.x * blockDim.x + t] & 1);
  int any = __any_sync(0xffffffffu, in[blockIdx.x * blockDim.x + t] < 0);
  int all = __all_sync(0xffffffffu, in[blockIdx.x * blockDim.x + t] >= 0);
  if (up != (lane ? lane - 1 : 0) || src != 31 - lane) atomicExch(votes + gridDim.x, 1);  // a wrong shuffle
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (t == 0) {
    long long total = 0;
    for (int w = 0; w < warps; ++w) total += partial[w];
    out[blockIdx.x] = total;
    votes[blockIdx.x] = any * 2 + all;
  }
  unsigned long long count = 0;
  for (; odd; odd &= odd - 1) ++count;
  if (lane == 0) atomicAdd(reinterpret_cast<unsigned long long*>(out + gridDim.x + blockIdx.x), count);
}

__global__ void static_shared_out_of_bounds_kernel(int* out) {
  __shared__ int values[32];
  values[threadIdx.x] = 1;  // launched with 64 threads
  __syncthreads();
  out[threadIdx.x] = values[0];
}

__global__ void dynamic_shared_out_of_bounds_kernel(int* out) {
  HBFAST_DYNAMIC_SHARED(int, values);  // launched with blockDim - 1 ints
  values[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] = values[0];
}

__global__ void early_exit_before_barrier_kernel(int* out) {
  if (threadIdx.x >= 40) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void two_barriers_kernel(int* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void partial_mask_kernel(int* out) { out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, 1, 1); }

__global__ void shuffle_after_lanes_left_kernel(int* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1);
}

__global__ void full_mask_shuffle_kernel(int* out) { out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1); }

__global__ void noop_kernel(int* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = 1;
}

}  // namespace

// The features kernel over in [blocks * threads]: returns out [2 * blocks] and votes [blocks + 1].
std::vector<long long> emulation_features(const std::vector<int>& in, int blocks, int threads) {
  std::vector<long long> out(2 * blocks, 0);
  std::vector<int> votes(blocks + 1, 0);
  HBFAST_LAUNCH(features_kernel, blocks, threads, sizeof(long long) * (threads / 32), nullptr)(in.data(), out.data(),
                                                                                             votes.data());
  out.insert(out.end(), votes.begin(), votes.end());
  return out;
}

// Runs one breach of the CUDA model; the emulation must throw.
void emulation_violation(const std::string& name) {
  std::vector<int> out(4096);
  int* o = out.data();
  if (name == "static_shared_out_of_bounds") HBFAST_LAUNCH(static_shared_out_of_bounds_kernel, 1, 64, 0, nullptr)(o);
  else if (name == "dynamic_shared_out_of_bounds")
    HBFAST_LAUNCH(dynamic_shared_out_of_bounds_kernel, 1, 64, 63 * sizeof(int), nullptr)(o);
  else if (name == "early_exit_before_barrier") HBFAST_LAUNCH(early_exit_before_barrier_kernel, 1, 64, 0, nullptr)(o);
  else if (name == "two_barriers") HBFAST_LAUNCH(two_barriers_kernel, 1, 64, 0, nullptr)(o);
  else if (name == "partial_mask") HBFAST_LAUNCH(partial_mask_kernel, 1, 32, 0, nullptr)(o);
  else if (name == "shuffle_after_lanes_left") HBFAST_LAUNCH(shuffle_after_lanes_left_kernel, 1, 64, 0, nullptr)(o);
  else if (name == "partial_warp_shuffle") HBFAST_LAUNCH(full_mask_shuffle_kernel, 1, 48, 0, nullptr)(o);
  else if (name == "too_many_threads") HBFAST_LAUNCH(noop_kernel, 1, 1025, 0, nullptr)(o);
  else if (name == "too_large_grid_y") HBFAST_LAUNCH(noop_kernel, dim3(1, 65536), 32, 0, nullptr)(o);
  else if (name == "too_much_dynamic_shared") HBFAST_LAUNCH(noop_kernel, 1, 32, 48 * 1024 + 1, nullptr)(o);
  else throw std::invalid_argument("no such violation: " + name);
}

}  // namespace hbfast
