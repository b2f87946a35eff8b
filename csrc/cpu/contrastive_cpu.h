// CPU epilogues of the fused contrastive loss. Python computes each row block of raw dot products
// X = q[rows] @ keys.T with torch's BLAS; these functions do everything element-wise on it in one
// vectorised, multi-threaded pass. keys = [p; hard negatives]: columns [0, n_batch) are the batch's
// positives (they have column statistics and group masks), columns [n_batch, n_cols) hard negatives.
#pragma once
#include <cstdint>

namespace hbfast {

// Forward over X [rows, n_cols] (row stride ld) holding batch rows row_begin.. row_begin+rows.
// Writes row_lse[2r], row_lse[2r + 1] = the log-sum-exp over the negatives of row r (its unmasked
// scores off the diagonal) as the pair (max, log_sum) (-inf, -inf when it has none) and diag[r] = X[r, row_begin+r] (raw); when with_columns, merges this
// block's negatives into the running column pairs (col_max [n_batch], col_sum [n_batch]) that
// represent col_max + log(col_sum). See common/contrastive_math.h for why the positive is apart.
// groups: [n_batch] int32 group codes, or nullptr for no masking.
// T: float (float32/16/bf16 inputs) or double (float64 inputs); every array is T.
template <class T>
void contrastive_forward_block_cpu(const T* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                   int64_t n_batch, T scale, const int32_t* groups, bool with_columns, T* row_lse,
                                   T* diag, T* col_max, T* col_sum);

// Backward: G [rows, n_cols] (row stride ldg) = dL/dS for the same block, from X (may alias G).
// row_coef [rows], col_coef [n_batch] (nullptr: no column term) and diag_coef [rows] are the
// upstream gradients of row_lse, col_lse (both over negatives) and the positive scores (see
// gradient_tile_element);
// row_lse [rows, 2] and col_lse [n_batch, 2] as (max, log_sum) pairs. Returns sum(G * X), from which Python gets dL/dscale.
template <class T>
double contrastive_backward_block_cpu(const T* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                      int64_t n_batch, T scale, const int32_t* groups, const T* row_lse,
                                      const T* col_lse, const T* row_coef, const T* col_coef, const T* diag_coef, T* g,
                                      int64_t ldg);

// Asks Linux to back [ptr, ptr + nbytes) with transparent huge pages (when THP is in "madvise"
// mode) before it is first written: one fault per 2 MiB instead of per 4 KiB for the large score
// blocks, which are allocated fresh every step. A no-op elsewhere or when refused.
void advise_huge_pages(void* ptr, int64_t nbytes);

// fast_exp applied to n floats (for the accuracy/speed check of the shared exp).
void fast_exp_cpu(const float* x, float* y, int64_t n);

}  // namespace hbfast
