// Per-element math of the fused pairwise sigmoid (SigLIP) loss, shared by the CPU epilogue (where
// GCC auto-vectorises loops over these functions) and the CUDA kernels, so CPU tests exercise the
// arithmetic the GPU runs: both devices take every pair, the positive included, through
// siglip_pair_loss / siglip_pair_grad below (never a positive as a negative corrected afterwards:
// softplus(z) - z cancels catastrophically once z is large, where training converges).
// A pair (i, j) with logit z = scale * x_ij + bias and label y (+1 on the
// diagonal, -1 elsewhere) costs -log sigmoid(y z) = softplus(-y z); its derivative by z is
// -y sigmoid(-y z). Templates on the compute type T: float (plain arithmetic, no libm calls, no
// branches that block vectorisation) and double (the CPU's float64 path, with libm's exp/log1p).
#pragma once
#include <cmath>

#include "common/contrastive_math.h"  // fast_exp, fma_float, fmax_plain
#include "common/hbfast_common.h"

namespace hbfast {

// log(1 + u) for u in [0, 1], as 2 atanh(s) with s = u / (2 + u) in [0, 1/3]: the odd series up to
// s^15 (truncation below 1.1e-9). Accurate for tiny u as well, where log(1 + u) ~ u.
HBFAST_HOST_DEVICE float log1p_unit(float u) {
  float s = u / (2.0f + u);
  float s2 = s * s;
  float p = 1.0f / 15.0f;
  p = fma_float(p, s2, 1.0f / 13.0f);  // (fused steps, as fast_exp's: contrastive_math.h)
  p = fma_float(p, s2, 1.0f / 11.0f);
  p = fma_float(p, s2, 1.0f / 9.0f);
  p = fma_float(p, s2, 1.0f / 7.0f);
  p = fma_float(p, s2, 1.0f / 5.0f);
  p = fma_float(p, s2, 1.0f / 3.0f);
  p = fma_float(p, s2, 1.0f);
  return 2.0f * s * p;
}

HBFAST_HOST_DEVICE double log1p_unit(double u) {
#if defined(__CUDA_ARCH__)
  return log1p(u);
#else
  return std::log1p(u);
#endif
}

template <class T>
HBFAST_HOST_DEVICE T abs_plain(T z) { return z < T(0) ? -z : z; }

// softplus(z) = log(1 + exp(z)) = max(z, 0) + log(1 + exp(-|z|)): no overflow for any z. The loss
// of a negative pair with logit z; a positive pair's is softplus(-z).
template <class T>
HBFAST_HOST_DEVICE T softplus_stable(T z) {
  return fmax_plain(z, T(0)) + log1p_unit(fast_exp(-abs_plain(z)));
}

// sigmoid(z) = 1 / (1 + exp(-z)) through exp(-|z|) <= 1: no overflow for any z. The derivative of
// a negative pair's loss by its logit; a positive pair's is -sigmoid(-z).
template <class T>
HBFAST_HOST_DEVICE T sigmoid_stable(T z) {
  T e = fast_exp(-abs_plain(z));
  T r = T(1) / (T(1) + e);
  return z >= T(0) ? r : e * r;
}

// The loss of pair (i, j) and its derivative by the logit; positive means i == j (label +1).
template <class T>
HBFAST_HOST_DEVICE T siglip_pair_loss(T logit, bool positive) {
  return softplus_stable(positive ? -logit : logit);
}

template <class T>
HBFAST_HOST_DEVICE T siglip_pair_grad(T logit, bool positive) {
  return positive ? -sigmoid_stable(-logit) : sigmoid_stable(logit);
}

}  // namespace hbfast
