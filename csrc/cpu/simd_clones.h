// Why this file exists: the CPU epilogues (contrastive, SigLIP) are compiled for a portable baseline
// and cloned for AVX2 (x86-64-v3) and AVX-512 (x86-64-v4); the loader picks a clone per CPU at run
// time. One definition of those attributes, shared by every kernel that vectorises. The search
// epilogues (topk row merges, relevant_ranks counting) also have hand-written AVX-512 twins of their
// portable code, switched here.
#pragma once
#include <atomic>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HBFAST_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HBFAST_SIMD_CLONES
#endif
#define HBFAST_ALWAYS_INLINE inline __attribute__((always_inline))
#define HBFAST_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HBFAST_AVX512_TWINS 1
#define HBFAST_AVX512 __attribute__((target("avx512f")))
#endif

namespace hbfast {
// Whether the AVX-512 twins run: the CPU has AVX-512F, and set_cpu_simd(false) was not called (the
// tests call it to check the portable code on an AVX-512 machine too).
inline std::atomic<bool> g_cpu_simd_allowed{true};
inline bool cpu_simd_enabled() {
#ifdef HBFAST_AVX512_TWINS
  static const bool has_avx512 = __builtin_cpu_supports("avx512f");
  return has_avx512 && g_cpu_simd_allowed.load();
#else
  return false;
#endif
}
inline void set_cpu_simd(bool allowed) { g_cpu_simd_allowed.store(allowed); }

#ifdef HBFAST_AVX512_TWINS
// Lanes [0, n) of a 16-lane block (the full block for n >= 16).
HBFAST_AVX512 inline __mmask16 lanes_below(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }
// Lanes holding NaN or +-inf (from the bits: select.h's non_finite_bits).
HBFAST_AVX512 inline __mmask16 non_finite_lanes(__m512 v) {
  const __m512i exponent = _mm512_set1_epi32(0x7f800000);
  return _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), exponent), exponent);
}
#endif
}  // namespace hbfast
