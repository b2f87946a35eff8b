// CPU epilogues of the fused pairwise sigmoid (SigLIP) loss. Python computes each row block of raw
// dot products X = image[rows] @ text.T with torch's BLAS; these functions do everything
// element-wise on it in one vectorised, multi-threaded pass. Row r of a block is batch row
// row_begin + r, whose positive is column row_begin + r; every other column is a negative.
#pragma once
#include <cstdint>

namespace hbfast {

// Forward over X [rows, n_cols] (row stride ld): row_loss[r] = sum_j -log sigmoid(y_rj z_rj) with
// z = scale * X + bias. T: float (float32/16/bf16 inputs) or double (float64 inputs).
template <class T>
void siglip_forward_block_cpu(const T* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols, T scale,
                              T bias, T* row_loss);

// Backward for the same block: with G_rj = row_coef[r] * dloss_rj/dz_rj (row_coef: the upstream
// gradient of row_loss), writes scale * G into g [rows, n_cols] (row stride ldg; g may alias x) and
// adds sum(G * X) (= dL/dscale) to *sum_gx and sum(G) (= dL/dbias) to *sum_g.
template <class T>
void siglip_backward_block_cpu(const T* x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols, T scale,
                               T bias, const T* row_coef, T* g, int64_t ldg, double* sum_gx, double* sum_g);

// softplus_stable and sigmoid_stable applied to n floats (for the accuracy check of the shared math).
void siglip_softplus_cpu(const float* z, float* y, int64_t n);
void siglip_sigmoid_cpu(const float* z, float* y, int64_t n);

}  // namespace hbfast
