// Shared by every kernel family, CPU and CUDA: the host/device marker, the counter-based random
// numbers the sampler uses (mirrored bit for bit by hbfast/reference.py), and a CPU parallel_for.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define HBFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HBFAST_HOST_DEVICE inline
#endif

namespace hbfast {

// splitmix64's finaliser: a bijective 64-bit mixer.
HBFAST_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kStreamStep = 0xD1B54A32D192ED03ULL;

// One key per (seed, epoch); every random decision is draw(key, stream, counter), so a plan
// does not depend on the order in which decisions are computed.
HBFAST_HOST_DEVICE uint64_t rng_key(uint64_t seed, uint64_t epoch) {
  return mix64(mix64(seed * kGolden + 1) + epoch * kGolden);
}
HBFAST_HOST_DEVICE uint64_t rng_draw(uint64_t key, uint64_t stream, uint64_t counter) {
  return mix64(key + (counter + 1) * kGolden + stream * kStreamStep);
}
// Uniform integer in [0, n) for n <= 2^32 (multiply-shift on the high 32 bits).
HBFAST_HOST_DEVICE uint64_t rng_bounded(uint64_t x, uint64_t n) { return ((x >> 32) * n) >> 32; }
// Uniform double in [0, 1) with 53 random bits.
HBFAST_HOST_DEVICE double rng_unit(uint64_t x) { return static_cast<double>(x >> 11) * 0x1.0p-53; }

}  // namespace hbfast
