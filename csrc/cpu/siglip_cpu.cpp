// CPU epilogues of the fused pairwise sigmoid (SigLIP) loss: one pass over each row block of raw
// dot products, auto-vectorised by GCC and split over hbfast's threads by rows. Each pair's loss and
// derivative come from common/siglip_math.h, the formulas the CUDA kernels use: the negatives in
// vectorised loops over the columns either side of the row's positive (so the loops need no index
// comparisons), the positive on its own with its own formula (softplus(-z), -sigmoid(-z)), never as
// a negative corrected afterwards (softplus(z) - z cancels catastrophically once z is large, which
// is where training converges). Like contrastive_cpu.cpp: the float loops are compiled per
// instruction set (target_clones) and reduce into kLanes independent partial sums so they
// vectorise without -ffast-math; the float64 path (exact libm math) is compiled once.
#include "cpu/siglip_cpu.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/parallel.h"
#include "common/siglip_math.h"
#include "cpu/simd_clones.h"

namespace hbfast {
namespace {

constexpr int kLanes = 16;  // independent partial sums, so reductions vectorise

// Calls element(j, lane) for j in [0, n) except `skip`, kLanes at a time (lane = j's slot).
template <class F>
HBFAST_ALWAYS_INLINE void lanes_loop_skipping(int64_t n, int64_t skip, F&& element) {
  for (int64_t part = 0; part < 2; ++part) {
    const int64_t c0 = part == 0 ? 0 : skip + 1, c1 = part == 0 ? std::min(skip, n) : n;
    int64_t j = c0;
    for (; j + kLanes <= c1; j += kLanes)
      for (int l = 0; l < kLanes; ++l) element(j + l, l);
    for (; j < c1; ++j) element(j, 0);
  }
}

// Loss of one row over all its columns; diag_col is the row's positive.
template <class T>
HBFAST_ALWAYS_INLINE T loss_row(const T* __restrict__ x, int64_t n_cols, int64_t diag_col, T scale, T bias) {
  T lane[kLanes] = {};
  lanes_loop_skipping(n_cols, diag_col, [&](int64_t j, int l) __attribute__((always_inline)) {
    lane[l] += siglip_pair_loss(scale * x[j] + bias, false);
  });
  T sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += lane[l];
  return sum + siglip_pair_loss(scale * x[diag_col] + bias, true);
}

template <class T>
HBFAST_ALWAYS_INLINE void loss_rows(const T* x, int64_t ld, int64_t r0, int64_t r1, int64_t row_begin,
                                    int64_t n_cols, T scale, T bias, T* row_loss) {
  for (int64_t r = r0; r < r1; ++r) row_loss[r] = loss_row(x + r * ld, n_cols, row_begin + r, scale, bias);
}

HBFAST_SIMD_CLONES
void loss_rows_dispatch(const float* x, int64_t ld, int64_t r0, int64_t r1, int64_t row_begin, int64_t n_cols,
                        float scale, float bias, float* row_loss) {
  loss_rows(x, ld, r0, r1, row_begin, n_cols, scale, bias, row_loss);
}
void loss_rows_dispatch(const double* x, int64_t ld, int64_t r0, int64_t r1, int64_t row_begin, int64_t n_cols,
                        double scale, double bias, double* row_loss) {
  loss_rows(x, ld, r0, r1, row_begin, n_cols, scale, bias, row_loss);
}

// Gradient of one row: g[j] = scale * G_j with G_j = coef * dloss_j/dz_j; adds sum(G * X) and
// sum(G) to the accumulators. x and g may be the same buffer (each element is read before it is
// written; the diagonal is read up front).
template <class T>
HBFAST_ALWAYS_INLINE void gradient_row(const T* x, T* g, int64_t n_cols, int64_t diag_col, T scale, T bias, T coef,
                                       T& sum_gx, T& sum_g) {
  const T x_diag = x[diag_col];
  T lane_gx[kLanes] = {}, lane_g[kLanes] = {};
  lanes_loop_skipping(n_cols, diag_col, [&](int64_t j, int l) __attribute__((always_inline)) {
    T xv = x[j];
    T gz = coef * siglip_pair_grad(scale * xv + bias, false);
    g[j] = scale * gz;
    lane_gx[l] += gz * xv;
    lane_g[l] += gz;
  });
  T gx = 0, g1 = 0;
  for (int l = 0; l < kLanes; ++l) gx += lane_gx[l], g1 += lane_g[l];
  const T gz_diag = coef * siglip_pair_grad(scale * x_diag + bias, true);
  g[diag_col] = scale * gz_diag;
  sum_gx += gx + gz_diag * x_diag;
  sum_g += g1 + gz_diag;
}

template <class T>
HBFAST_ALWAYS_INLINE void gradient_rows(const T* x, int64_t ld, int64_t r0, int64_t r1, int64_t row_begin,
                                        int64_t n_cols, T scale, T bias, const T* row_coef, T* g, int64_t ldg,
                                        double* sums) {
  for (int64_t r = r0; r < r1; ++r) {
    T gx = 0, g1 = 0;
    gradient_row(x + r * ld, g + r * ldg, n_cols, row_begin + r, scale, bias, row_coef[r], gx, g1);
    sums[0] += gx;
    sums[1] += g1;
  }
}

HBFAST_SIMD_CLONES
void gradient_rows_dispatch(const float* x, int64_t ld, int64_t r0, int64_t r1, int64_t row_begin, int64_t n_cols,
                            float scale, float bias, const float* row_coef, float* g, int64_t ldg, double* sums) {
  gradient_rows(x, ld, r0, r1, row_begin, n_cols, scale, bias, row_coef, g, ldg, sums);
}
void gradient_rows_dispatch(const double* x, int64_t ld, int64_t r0, int64_t r1, int64_t row_begin, int64_t n_cols,
                            double scale, double bias, const double* row_coef, double* g, int64_t ldg, double* sums) {
  gradient_rows(x, ld, r0, r1, row_begin, n_cols, scale, bias, row_coef, g, ldg, sums);
}

HBFAST_SIMD_CLONES
void softplus_loop(const float* z, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = softplus_stable(z[i]);
}

HBFAST_SIMD_CLONES
void sigmoid_loop(const float* z, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = sigmoid_stable(z[i]);
}

}  // namespace

template <class T>
void siglip_forward_block_cpu(const T* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols, T scale,
                              T bias, T* row_loss) {
  parallel_for(rows, 8, [&](int64_t r0, int64_t r1) {
    loss_rows_dispatch(x, ld, r0, r1, row_begin, n_cols, scale, bias, row_loss);
  });
}

template <class T>
void siglip_backward_block_cpu(const T* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols, T scale,
                               T bias, const T* row_coef, T* g, int64_t ldg, double* sum_gx, double* sum_g) {
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), rows));
  int64_t rows_per_part = (rows + parts - 1) / parts;
  std::vector<double> part_sums(2 * parts, 0.0);
  parallel_for(parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      int64_t r0 = t * rows_per_part, r1 = std::min(rows, r0 + rows_per_part);
      if (r0 < r1) gradient_rows_dispatch(x, ld, r0, r1, row_begin, n_cols, scale, bias, row_coef, g, ldg, &part_sums[2 * t]);
    }
  });
  for (int64_t t = 0; t < parts; ++t) *sum_gx += part_sums[2 * t], *sum_g += part_sums[2 * t + 1];
}

template void siglip_forward_block_cpu<float>(const float*, int64_t, int64_t, int64_t, int64_t, float, float, float*);
template void siglip_forward_block_cpu<double>(const double*, int64_t, int64_t, int64_t, int64_t, double, double,
                                               double*);
template void siglip_backward_block_cpu<float>(const float*, int64_t, int64_t, int64_t, int64_t, float, float,
                                               const float*, float*, int64_t, double*, double*);
template void siglip_backward_block_cpu<double>(const double*, int64_t, int64_t, int64_t, int64_t, double, double,
                                                const double*, double*, int64_t, double*, double*);

void siglip_softplus_cpu(const float* z, float* y, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t begin, int64_t end) { softplus_loop(z + begin, y + begin, end - begin); });
}

void siglip_sigmoid_cpu(const float* z, float* y, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t begin, int64_t end) { sigmoid_loop(z + begin, y + begin, end - begin); });
}

}  // namespace hbfast
