// Per-element math of the fused contrastive loss, shared by the CPU epilogue (where GCC
// auto-vectorises loops over these functions) and the CUDA kernels, so CPU tests exercise the
// arithmetic the GPU runs. Templates on the compute type T: float (every kernel; plain float
// arithmetic, no libm calls, no branches that block vectorisation) and double (the CPU's float64
// path, where exp and log are the library's).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/hbfast_common.h"

namespace hbfast {

HBFAST_HOST_DEVICE float float_from_bits(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

HBFAST_HOST_DEVICE int32_t bits_from_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

template <class T>
HBFAST_HOST_DEVICE T fmax_plain(T a, T b) { return a > b ? a : b; }

// a * b + c in one rounding, written out: the build turns off implicit contraction (CMakeLists.txt:
// scores must round alike in every pass), so the polynomial below asks for its fused steps, which
// both devices then compute the same way (the x86-64-v3/v4 clones and the GPU in one instruction).
HBFAST_HOST_DEVICE float fma_float(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}

// exp(x) for float x, relative error ~1 ulp on [-87.3, 88.7]; 0 below (including -inf), so a
// masked score (-inf) contributes nothing. Range reduction x = n ln2 + r with |r| <= ln2/2 (n by
// the round-to-nearest "magic number" trick, which needs no float->int conversion instruction),
// then a degree-6 minimax polynomial for exp(r) and 2^n built in the exponent bits.
HBFAST_HOST_DEVICE float fast_exp(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  float xc = x < -87.0f ? -87.0f : (x > 88.3762626647949f ? 88.3762626647949f : x);
  float shifted = xc * kLog2e + kRound;
  float n = shifted - kRound;
  int32_t n_int = bits_from_float(shifted) - bits_from_float(kRound);
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = fma_float(p, r, 1.3981999507e-3f);
  p = fma_float(p, r, 8.3334519073e-3f);
  p = fma_float(p, r, 4.1665795894e-2f);
  p = fma_float(p, r, 1.6666665459e-1f);
  p = fma_float(p, r, 5.0000001201e-1f);
  float y = fma_float(p, r * r, r) + 1.0f;
  float two_n = float_from_bits(static_cast<int32_t>(static_cast<uint32_t>(n_int + 127) << 23));  // (unsigned: no UB for NaN input)
  float result = y * two_n;
  return x < -87.0f ? 0.0f : result;
}

// The float64 path's exp: the library's (exact to an ulp; exp(-inf) = 0).
HBFAST_HOST_DEVICE double fast_exp(double x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return std::exp(x);
#endif
}

// log(x) for x > 0 (used once per row/column, so plain accuracy matters more than speed).
template <class T>
HBFAST_HOST_DEVICE T log_plain(T x) {
#if defined(__CUDA_ARCH__)
  return log(x);
#else
  return std::log(x);
#endif
}

// ---- online log-sum-exp: a running (max m, sum s) pair represents m + log(s) -------------------

// Factor that rescales a sum taken relative to `old_max` to be relative to `new_max` (>= old_max).
// Equal maxima (including both -inf: nothing seen yet) give exactly 1.
template <class T>
HBFAST_HOST_DEVICE T lse_rescale(T old_max, T new_max) {
  return old_max == new_max ? T(1) : fast_exp(old_max - new_max);
}

// Merges (m_b, s_b) into (m_a, s_a).
template <class T>
HBFAST_HOST_DEVICE void lse_merge(T& m_a, T& s_a, T m_b, T s_b) {
  T m = fmax_plain(m_a, m_b);
  s_a = s_a * lse_rescale(m_a, m) + s_b * lse_rescale(m_b, m);
  m_a = m;
}

// Adds one score to a running pair (one exp per element: the larger of the two is the reference).
template <class T>
HBFAST_HOST_DEVICE void lse_push(T& m, T& s, T score) {
  if (score > m) {
    s = s * lse_rescale(m, score) + T(1);
    m = score;
  } else {
    s += fast_exp(score - m);
  }
}

template <class T>
HBFAST_HOST_DEVICE T lse_value(T m, T s) { return m + log_plain(s); }

// ---- the gradient tile -----------------------------------------------------------------------
// The forward returns, per row i, the log-sum-exp of S_ij over the row's negatives (its unmasked
// pairs j != i), per batch column j the same over the column's pairs i != j, and the positive
// scores d_i = S_ii. Each log-sum-exp is kept as the unevaluated sum max + log_sum (log_sum =
// log sum exp(S - max) in [0, log N]): its low bits survive, so exp(S_ij - lse) is computed as
// exp((S_ij - max) - log_sum), exactly 1 - (the rest of the softmax) for a dominant score, where
// the rounded max + log_sum would lose everything below the score's last bit (PyTorch's
// log_softmax keeps them the same way). The loss is l_i = log(exp(d_i) + exp(off_i)) - d_i =
// softplus((max_i - d_i) + log_sum_i): no cancellation even when the positive dominates (the
// trained regime, where logsumexp(row) - d_i would round to zero). Given the upstream gradients a_i,
// b_j and c_i of (row lse, column lse, d), the element (i, j != i) of dL/dS is
//   G_ij = a_i exp(S_ij - lse_row_i) + b_j exp(S_ij - lse_col_j)
// masked pairs (excluded from both log-sum-exps) give 0, and the diagonal is G_ii = c_i: one formula
// per pair, with no 1 - softmax cancellation. For the usual loss a_i = w_i sigmoid(off_i - d_i)
// and c_i = -a_i (+ the column direction's terms).

// exp(score - lse) for lse = max + log_sum.
template <class T>
HBFAST_HOST_DEVICE T exp_minus_lse(T score, T max, T log_sum) { return fast_exp((score - max) - log_sum); }

template <class T>
HBFAST_HOST_DEVICE T gradient_tile_element(T score, T row_max, T row_log_sum, T col_max, T col_log_sum, T row_coef,
                                           T col_coef, bool masked) {
  T g = row_coef * exp_minus_lse(score, row_max, row_log_sum) + col_coef * exp_minus_lse(score, col_max, col_log_sum);
  return masked ? T(0) : g;
}

// The same element for a column without a column term (hard negatives, or the one-sided loss).
template <class T>
HBFAST_HOST_DEVICE T gradient_tile_element_rows_only(T score, T row_max, T row_log_sum, T row_coef, bool masked) {
  T g = row_coef * exp_minus_lse(score, row_max, row_log_sum);
  return masked ? T(0) : g;
}

// The diagonal element G_ii (the positive pair): its upstream gradient alone.
template <class T>
HBFAST_HOST_DEVICE T gradient_tile_diagonal(T diag_coef) { return diag_coef; }

// A pair (i, j != i) is dropped from the negatives when both carry the same group id (the
// diagonal, the positive, is never among the negatives).
HBFAST_HOST_DEVICE bool pair_masked(int32_t group_row, int32_t group_col, int32_t i, int32_t j) {
  return i == j || group_row == group_col;
}

}  // namespace hbfast
