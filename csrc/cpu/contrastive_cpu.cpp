// CPU epilogues of the fused contrastive loss: one pass over each row block of raw dot products,
// auto-vectorised by GCC and split over hbfast's threads by rows. Only per-row and per-column
// log-sum-exp pairs over the negatives (the pairs off the diagonal) survive the forward; the
// positive is kept apart (common/contrastive_math.h says why). Instruction sets: the hot functions are compiled three
// times (target_clones: x86-64-v4 = AVX-512, x86-64-v3 = AVX2+FMA, and the x86-64 baseline) and the
// loader picks the best one the CPU supports, so an older CPU runs the portable clone instead of
// failing. The reductions keep kLanes independent partial results so they vectorise without
// -ffast-math (which would break fast_exp's rounding trick). Everything is a template on the compute
// type T: float for float32/16/bf16 inputs, double for the float64 path (exact exp; no clones).
#include "cpu/contrastive_cpu.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "common/contrastive_math.h"
#include "common/parallel.h"
#include "cpu/simd_clones.h"

namespace hbfast {
namespace {

constexpr int kLanes = 16;          // independent partial sums/maxima, so reductions vectorise
constexpr int64_t kRowChunk = 8;    // rows per sub-tile: [8, 1024] floats stay in L1/L2
constexpr int64_t kColChunk = 1024;
template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

template <class T>
struct RowArgs {
  T scale;
  int64_t row;        // global row index i (its own positive is column i)
  int32_t group_row;  // groups[i]
  const int32_t* groups;
};

// Inside the vectorised loops a column is masked when its group equals the row's; the diagonal
// (the positive) is left out by splitting the column range around it, so the loops need no index
// comparisons.
template <bool kGroups, class T>
HBFAST_ALWAYS_INLINE bool same_group(const RowArgs<T>& a, int64_t j) {
  return kGroups && a.groups[j] == a.group_row;
}

// Calls element(j, lane) for j in [c0, c1), kLanes at a time (lane = j's accumulator slot).
template <class F>
HBFAST_ALWAYS_INLINE void lanes_loop(int64_t c0, int64_t c1, F&& element) {
  int64_t j = c0;
  for (; j + kLanes <= c1; j += kLanes)
    for (int l = 0; l < kLanes; ++l) element(j + l, l);
  for (; j < c1; ++j) element(j, 0);
}

// The same over [c0, c1) without column `skip` (the row's positive, when it is in the range).
template <class F>
HBFAST_ALWAYS_INLINE void lanes_loop_skipping(int64_t c0, int64_t c1, int64_t skip, F&& element) {
  if (skip < c0 || skip >= c1) {
    lanes_loop(c0, c1, element);
    return;
  }
  lanes_loop(c0, skip, element);
  lanes_loop(skip + 1, c1, element);
}

// Pass 1 over the negatives in columns [c0, c1) of one row: the row max (from `row_max`) and, with
// kColumns, the column maxima col_max_new[j] (indexed by global column).
template <bool kGroups, bool kColumns, class T>
HBFAST_ALWAYS_INLINE T row_max_pass(const T* __restrict__ x, int64_t c0, int64_t c1, const RowArgs<T>& a, T row_max,
                                    T* __restrict__ col_max_new) {
  T lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = row_max;
  lanes_loop_skipping(c0, c1, a.row, [&](int64_t j, int l) HBFAST_ALWAYS_INLINE_LAMBDA {
    T s = same_group<kGroups>(a, j) ? kNegInf<T> : a.scale * x[j];
    lane[l] = fmax_plain(lane[l], s);
    if (kColumns) col_max_new[j] = fmax_plain(col_max_new[j], s);
  });
  T m = lane[0];
  for (int l = 1; l < kLanes; ++l) m = fmax_plain(m, lane[l]);
  return m;
}

// Pass 2: sum of exp(s - row_max) over the row's negatives, and with kColumns
// col_sum[j] += exp(s - col_max[j]).
template <bool kGroups, bool kColumns, class T>
HBFAST_ALWAYS_INLINE T row_sum_pass(const T* __restrict__ x, int64_t c0, int64_t c1, const RowArgs<T>& a, T row_max,
                                    const T* __restrict__ col_max, T* __restrict__ col_sum) {
  T lane[kLanes] = {};
  lanes_loop_skipping(c0, c1, a.row, [&](int64_t j, int l) HBFAST_ALWAYS_INLINE_LAMBDA {
    bool masked = same_group<kGroups>(a, j);
    T s = a.scale * x[j];
    T e_row = fast_exp(s - row_max);
    lane[l] += masked ? T(0) : e_row;
    if (kColumns) {
      T e_col = fast_exp(s - col_max[j]);
      col_sum[j] += masked ? T(0) : e_col;
    }
  });
  T sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += lane[l];
  return sum;
}

// Forward over rows [r0, r1) of the block (a thread's share), one sub-tile at a time.
template <bool kGroups, bool kColumns, class T>
HBFAST_ALWAYS_INLINE void forward_rows(const T* x, int64_t ld, int64_t r0, int64_t r1, int64_t row_begin,
                                       int64_t n_cols, int64_t n_batch, T scale, const int32_t* groups, T* row_lse,
                                       T* diag, T* col_max, T* col_sum) {
  T row_max[kRowChunk], row_sum[kRowChunk], row_max_new[kRowChunk];
  std::vector<T> col_max_new(kColChunk);
  for (int64_t rc = r0; rc < r1; rc += kRowChunk) {
    int64_t nr = std::min(kRowChunk, r1 - rc);
    for (int64_t r = 0; r < nr; ++r) row_max[r] = kNegInf<T>, row_sum[r] = T(0);
    for (int64_t c0 = 0; c0 < n_cols; c0 += kColChunk) {
      int64_t c1 = std::min(n_cols, c0 + kColChunk);
      bool batch_cols = c0 < n_batch;  // chunks never straddle n_batch (see the split below)
      if (batch_cols) c1 = std::min(c1, n_batch);
      T* cmax_new = col_max_new.data() - c0;  // indexed by global column
      if (kColumns && batch_cols) std::copy(col_max + c0, col_max + c1, cmax_new + c0);
      for (int64_t r = 0; r < nr; ++r) {
        int64_t i = row_begin + rc + r;
        RowArgs<T> a{scale, i, kGroups ? groups[i] : 0, groups};
        const T* xr = x + (rc + r) * ld;
        row_max_new[r] = batch_cols ? row_max_pass<kGroups, kColumns>(xr, c0, c1, a, row_max[r], cmax_new)
                                    : row_max_pass<false, false, T>(xr, c0, c1, a, row_max[r], nullptr);
        row_sum[r] *= lse_rescale(row_max[r], row_max_new[r]);
        row_max[r] = row_max_new[r];
      }
      if (kColumns && batch_cols) {
        for (int64_t j = c0; j < c1; ++j) {
          col_sum[j] *= lse_rescale(col_max[j], cmax_new[j]);
          col_max[j] = cmax_new[j];
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        int64_t i = row_begin + rc + r;
        RowArgs<T> a{scale, i, kGroups ? groups[i] : 0, groups};
        const T* xr = x + (rc + r) * ld;
        row_sum[r] += batch_cols ? row_sum_pass<kGroups, kColumns>(xr, c0, c1, a, row_max[r], col_max, col_sum)
                                 : row_sum_pass<false, false, T>(xr, c0, c1, a, row_max[r], nullptr, nullptr);
      }
      if (batch_cols && c1 == n_batch) c0 = n_batch - kColChunk;  // continue exactly at n_batch
    }
    for (int64_t r = 0; r < nr; ++r) {
      int64_t local = rc + r;
      row_lse[2 * local] = row_max[r];  // the log-sum-exp as max + log_sum (contrastive_math.h)
      row_lse[2 * local + 1] = log_plain(row_sum[r]);
      diag[local] = x[local * ld + row_begin + local];
    }
  }
}

template <class T>
HBFAST_ALWAYS_INLINE void forward_rows_switch(bool with_groups, bool with_columns, const T* x, int64_t ld, int64_t r0,
                                              int64_t r1, int64_t row_begin, int64_t n_cols, int64_t n_batch, T scale,
                                              const int32_t* groups, T* row_lse, T* diag, T* col_max, T* col_sum) {
  if (with_groups && with_columns)
    forward_rows<true, true>(x, ld, r0, r1, row_begin, n_cols, n_batch, scale, groups, row_lse, diag, col_max, col_sum);
  else if (with_groups)
    forward_rows<true, false>(x, ld, r0, r1, row_begin, n_cols, n_batch, scale, groups, row_lse, diag, col_max, col_sum);
  else if (with_columns)
    forward_rows<false, true>(x, ld, r0, r1, row_begin, n_cols, n_batch, scale, groups, row_lse, diag, col_max, col_sum);
  else
    forward_rows<false, false>(x, ld, r0, r1, row_begin, n_cols, n_batch, scale, groups, row_lse, diag, col_max, col_sum);
}

// The float path is compiled per instruction set; the float64 path once (it is for verification).
HBFAST_SIMD_CLONES
void forward_rows_dispatch(bool with_groups, bool with_columns, const float* x, int64_t ld, int64_t r0, int64_t r1,
                           int64_t row_begin, int64_t n_cols, int64_t n_batch, float scale, const int32_t* groups,
                           float* row_lse, float* diag, float* col_max, float* col_sum) {
  forward_rows_switch(with_groups, with_columns, x, ld, r0, r1, row_begin, n_cols, n_batch, scale, groups, row_lse, diag,
                      col_max, col_sum);
}
void forward_rows_dispatch(bool with_groups, bool with_columns, const double* x, int64_t ld, int64_t r0, int64_t r1,
                           int64_t row_begin, int64_t n_cols, int64_t n_batch, double scale, const int32_t* groups,
                           double* row_lse, double* diag, double* col_max, double* col_sum) {
  forward_rows_switch(with_groups, with_columns, x, ld, r0, r1, row_begin, n_cols, n_batch, scale, groups, row_lse, diag,
                      col_max, col_sum);
}

template <class T>
void merge_column_pairs(T* col_max, T* col_sum, const T* part_max, const T* part_sum, int64_t begin, int64_t end) {
  for (int64_t j = begin; j < end; ++j) lse_merge(col_max[j], col_sum[j], part_max[j], part_sum[j]);
}

// Backward over one row: G[j] = dL/dS_ij for all columns; returns sum_j G_ij * X_ij. The negatives
// come from their exp terms, the positive (the diagonal) from its own upstream gradient alone. x and
// g may be the same buffer (each element is read before it is written).
template <bool kGroups, bool kColumns, class T>
HBFAST_ALWAYS_INLINE T gradient_row(const T* x, T* g, int64_t n_cols, int64_t n_batch, const RowArgs<T>& a, T row_max,
                                    T row_log_sum, T row_coef, T diag_coef, const T* __restrict__ col_lse,
                                    const T* __restrict__ col_coef) {
  const int64_t i = a.row;
  T lane[kLanes] = {};
  const T x_diag = x[i];
  lanes_loop_skipping(0, n_batch, i, [&](int64_t j, int l) HBFAST_ALWAYS_INLINE_LAMBDA {
    T xv = x[j];
    T s = a.scale * xv;
    bool masked = same_group<kGroups>(a, j);
    T gv = kColumns ? gradient_tile_element(s, row_max, row_log_sum, col_lse[2 * j], col_lse[2 * j + 1], row_coef,
                                            col_coef[j], masked)
                    : gradient_tile_element_rows_only(s, row_max, row_log_sum, row_coef, masked);
    g[j] = gv;
    lane[l] += gv * xv;
  });
  lanes_loop(n_batch, n_cols, [&](int64_t j, int l) HBFAST_ALWAYS_INLINE_LAMBDA {  // hard negatives
    T xv = x[j];
    T gv = gradient_tile_element_rows_only(a.scale * xv, row_max, row_log_sum, row_coef, false);
    g[j] = gv;
    lane[l] += gv * xv;
  });
  T sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += lane[l];
  const T g_diag = gradient_tile_diagonal(diag_coef);
  g[i] = g_diag;
  return sum + g_diag * x_diag;
}

template <class T>
HBFAST_ALWAYS_INLINE double gradient_rows_switch(bool with_groups, bool with_columns, const T* x, int64_t ld,
                                                 int64_t r0, int64_t r1, int64_t row_begin, int64_t n_cols,
                                                 int64_t n_batch, T scale, const int32_t* groups, const T* row_lse,
                                                 const T* col_lse, const T* row_coef, const T* col_coef,
                                                 const T* diag_coef, T* g, int64_t ldg) {
  double total = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    int64_t i = row_begin + r;
    RowArgs<T> a{scale, i, with_groups ? groups[i] : 0, groups};
    const T* xr = x + r * ld;
    T* gr = g + r * ldg;
    T part;
    if (with_groups && with_columns)
      part = gradient_row<true, true>(xr, gr, n_cols, n_batch, a, row_lse[2 * r], row_lse[2 * r + 1], row_coef[r],
                                         diag_coef[r], col_lse, col_coef);
    else if (with_groups)
      part = gradient_row<true, false>(xr, gr, n_cols, n_batch, a, row_lse[2 * r], row_lse[2 * r + 1], row_coef[r],
                                         diag_coef[r], col_lse, col_coef);
    else if (with_columns)
      part = gradient_row<false, true>(xr, gr, n_cols, n_batch, a, row_lse[2 * r], row_lse[2 * r + 1], row_coef[r],
                                         diag_coef[r], col_lse, col_coef);
    else
      part = gradient_row<false, false>(xr, gr, n_cols, n_batch, a, row_lse[2 * r], row_lse[2 * r + 1], row_coef[r],
                                         diag_coef[r], col_lse, col_coef);
    total += part;
  }
  return total;
}

HBFAST_SIMD_CLONES
double gradient_rows_dispatch(bool with_groups, bool with_columns, const float* x, int64_t ld, int64_t r0, int64_t r1,
                              int64_t row_begin, int64_t n_cols, int64_t n_batch, float scale, const int32_t* groups,
                              const float* row_lse, const float* col_lse, const float* row_coef, const float* col_coef,
                              const float* diag_coef, float* g, int64_t ldg) {
  return gradient_rows_switch(with_groups, with_columns, x, ld, r0, r1, row_begin, n_cols, n_batch, scale, groups,
                              row_lse, col_lse, row_coef, col_coef, diag_coef, g, ldg);
}
double gradient_rows_dispatch(bool with_groups, bool with_columns, const double* x, int64_t ld, int64_t r0, int64_t r1,
                              int64_t row_begin, int64_t n_cols, int64_t n_batch, double scale, const int32_t* groups,
                              const double* row_lse, const double* col_lse, const double* row_coef,
                              const double* col_coef, const double* diag_coef, double* g, int64_t ldg) {
  return gradient_rows_switch(with_groups, with_columns, x, ld, r0, r1, row_begin, n_cols, n_batch, scale, groups,
                              row_lse, col_lse, row_coef, col_coef, diag_coef, g, ldg);
}

HBFAST_SIMD_CLONES
void fast_exp_loop(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fast_exp(x[i]);
}

}  // namespace

template <class T>
void contrastive_forward_block_cpu(const T* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                   int64_t n_batch, T scale, const int32_t* groups, bool with_columns, T* row_lse,
                                   T* diag, T* col_max, T* col_sum) {
  const bool with_groups = groups != nullptr;
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), (rows + kRowChunk - 1) / kRowChunk));
  int64_t rows_per_part = (rows + parts - 1) / parts;
  // Each part keeps its own column pairs; they are merged into col_max/col_sum afterwards.
  std::vector<T> part_max(with_columns ? parts * n_batch : 0, kNegInf<T>);
  std::vector<T> part_sum(with_columns ? parts * n_batch : 0, T(0));
  parallel_for(parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      int64_t r0 = t * rows_per_part, r1 = std::min(rows, r0 + rows_per_part);
      if (r0 >= r1) continue;
      T* pm = with_columns ? part_max.data() + t * n_batch : nullptr;
      T* ps = with_columns ? part_sum.data() + t * n_batch : nullptr;
      forward_rows_dispatch(with_groups, with_columns, x, ld, r0, r1, row_begin, n_cols, n_batch, scale, groups,
                            row_lse, diag, pm, ps);
    }
  });
  if (!with_columns) return;
  parallel_for(n_batch, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t t = 0; t < parts; ++t)
      merge_column_pairs(col_max, col_sum, part_max.data() + t * n_batch, part_sum.data() + t * n_batch, begin, end);
  });
}

template <class T>
double contrastive_backward_block_cpu(const T* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                      int64_t n_batch, T scale, const int32_t* groups, const T* row_lse,
                                      const T* col_lse, const T* row_coef, const T* col_coef, const T* diag_coef, T* g,
                                      int64_t ldg) {
  const bool with_groups = groups != nullptr, with_columns = col_coef != nullptr;
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), rows));
  int64_t rows_per_part = (rows + parts - 1) / parts;
  std::vector<double> part_total(parts, 0.0);
  parallel_for(parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      int64_t r0 = t * rows_per_part, r1 = std::min(rows, r0 + rows_per_part);
      if (r0 >= r1) continue;
      part_total[t] = gradient_rows_dispatch(with_groups, with_columns, x, ld, r0, r1, row_begin, n_cols, n_batch, scale,
                                             groups, row_lse, col_lse, row_coef, col_coef, diag_coef, g, ldg);
    }
  });
  double total = 0.0;
  for (double v : part_total) total += v;
  return total;
}

#define HBFAST_INSTANTIATE_CONTRASTIVE(T)                                                                          \
  template void contrastive_forward_block_cpu<T>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, T,           \
                                                 const int32_t*, bool, T*, T*, T*, T*);                              \
  template double contrastive_backward_block_cpu<T>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, T,        \
                                                    const int32_t*, const T*, const T*, const T*, const T*, const T*, \
                                                    T*, int64_t);
HBFAST_INSTANTIATE_CONTRASTIVE(float)
HBFAST_INSTANTIATE_CONTRASTIVE(double)
#undef HBFAST_INSTANTIATE_CONTRASTIVE

void advise_huge_pages(void* ptr, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + static_cast<uintptr_t>(nbytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice only
#else
  (void)ptr;
  (void)nbytes;
#endif
}

void fast_exp_cpu(const float* x, float* y, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t begin, int64_t end) { fast_exp_loop(x + begin, y + begin, end - begin); });
}

}  // namespace hbfast
