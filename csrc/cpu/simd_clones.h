// Why this file exists: the CPU epilogues (contrastive, SigLIP) are compiled for a portable baseline
// and cloned for AVX2 (x86-64-v3) and AVX-512 (x86-64-v4); the loader picks a clone per CPU at run
// time. One definition of those attributes, shared by every kernel that vectorises.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HBFAST_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HBFAST_SIMD_CLONES
#endif
#define HBFAST_ALWAYS_INLINE inline __attribute__((always_inline))
#define HBFAST_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
