// The CUDA entry points of hbfast._C (pointers as integers, as in bindings.cpp), apart so that the
// same wrappers also serve hbfast._C_emu, the kernels compiled for the host (csrc/emulate), which
// the tests drive on CPU tensors. Inputs are validated in Python; this layer re-checks sizes.
#include "bindings_cuda.h"

#include <cstdint>
#include <stdexcept>

#include "cuda/contrastive_cuda.h"
#include "cuda/ranks_cuda.h"
#include "cuda/siglip_cuda.h"
#include "cuda/topk_cuda.h"

namespace py = pybind11;

namespace bindings {  // (named: the wrappers share their names with the kernels in hbfast::)
namespace {

template <class T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void topk_merge_cuda(uintptr_t tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0, uintptr_t keys_in,
                     uintptr_t keys_out, int64_t k, uintptr_t bad, uintptr_t stream) {
  py::gil_scoped_release release;
  hbfast::topk_merge_tile_cuda(as_ptr<const float>(tile), rows, cols, ld, id0, as_ptr<const uint64_t>(keys_in),
                               as_ptr<uint64_t>(keys_out), k, as_ptr<int32_t>(bad), stream);
}

void topk_decode_cuda(uintptr_t keys, int64_t n, uintptr_t scores, uintptr_t ids, uintptr_t stream) {
  py::gil_scoped_release release;
  hbfast::topk_decode_cuda(as_ptr<const uint64_t>(keys), n, as_ptr<float>(scores), as_ptr<int64_t>(ids), stream);
}

void topk_keys_cuda(uintptr_t scores, uintptr_t ids, int64_t n, uintptr_t keys, uintptr_t stream) {
  py::gil_scoped_release release;
  hbfast::topk_keys_cuda(as_ptr<const float>(scores), as_ptr<const int64_t>(ids), n, as_ptr<uint64_t>(keys), stream);
}

void count_beating_cuda(uintptr_t tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0, uintptr_t rel_scores,
                        uintptr_t rel_ids, int64_t r, uintptr_t counts, uintptr_t own_scores, uintptr_t bad,
                        uintptr_t stream) {
  py::gil_scoped_release release;
  hbfast::count_beating_cuda(as_ptr<const float>(tile), rows, cols, ld, id0, as_ptr<const float>(rel_scores),
                             as_ptr<const int64_t>(rel_ids), r, as_ptr<int64_t>(counts), as_ptr<float>(own_scores),
                             as_ptr<int32_t>(bad), stream);
}

// The CUDA epilogues (float32 only): `scale` points to a float32 device scalar, so nothing waits for
// the device; partial_max / partial_sum are [column_chunks, n_batch] scratch for the column term.
void contrastive_forward_block_cuda(uintptr_t x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                    int64_t n_batch, uintptr_t scale, uintptr_t groups, int64_t chunk_rows,
                                    uintptr_t partial_max, uintptr_t partial_sum, int64_t row_spans,
                                    uintptr_t row_partial, uintptr_t row_lse, uintptr_t diag, uintptr_t col_max,
                                    uintptr_t col_sum, uintptr_t stream) {
  if (rows <= 0 || n_cols < n_batch || row_begin < 0 || row_begin + rows > n_batch || ld < n_cols || chunk_rows < 1 ||
      row_spans < 1 || row_spans > n_cols || (row_spans > 1 && !row_partial))
    throw std::invalid_argument("contrastive_forward_block_cuda: inconsistent sizes");
  py::gil_scoped_release release;
  hbfast::contrastive_forward_block_cuda(as_ptr<const float>(x), ld, rows, row_begin, n_cols, n_batch,
                                         as_ptr<const float>(scale), as_ptr<const int32_t>(groups), col_max != 0,
                                         chunk_rows, as_ptr<float>(partial_max), as_ptr<float>(partial_sum),
                                         row_spans, as_ptr<float>(row_partial), as_ptr<float>(row_lse), as_ptr<float>(diag), as_ptr<float>(col_max),
                                         as_ptr<float>(col_sum), reinterpret_cast<void*>(stream));
}

void contrastive_backward_block_cuda(uintptr_t x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                     int64_t n_batch, uintptr_t scale, uintptr_t groups, uintptr_t row_lse,
                                     uintptr_t col_lse, uintptr_t row_coef, uintptr_t col_coef, uintptr_t diag_coef,
                                     uintptr_t g, int64_t ldg, uintptr_t dscale_sum, uintptr_t stream) {
  if (rows <= 0 || n_cols < n_batch || row_begin < 0 || row_begin + rows > n_batch || ld < n_cols || ldg < n_cols)
    throw std::invalid_argument("contrastive_backward_block_cuda: inconsistent sizes");
  py::gil_scoped_release release;
  hbfast::contrastive_backward_block_cuda(as_ptr<const float>(x), ld, rows, row_begin, n_cols, n_batch,
                                          as_ptr<const float>(scale), as_ptr<const int32_t>(groups),
                                          as_ptr<const float>(row_lse), as_ptr<const float>(col_lse),
                                          as_ptr<const float>(row_coef), as_ptr<const float>(col_coef),
                                          as_ptr<const float>(diag_coef), as_ptr<float>(g), ldg,
                                          as_ptr<double>(dscale_sum), reinterpret_cast<void*>(stream));
}

void contrastive_device_math_cuda(uintptr_t x, uintptr_t y, int64_t n, uintptr_t out, uintptr_t stream) {
  py::gil_scoped_release release;
  hbfast::contrastive_device_math_cuda(as_ptr<const float>(x), as_ptr<const float>(y), n, as_ptr<float>(out),
                                       reinterpret_cast<void*>(stream));
}

// The CUDA epilogues (float32): scale_bias points to [scale, bias] on the device, and the backward adds
// (sum(G * X), sum(G)) to sums (two float64 on the device), so nothing waits for the device.
void siglip_forward_block_cuda(uintptr_t x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                               uintptr_t scale_bias, int64_t row_spans, uintptr_t row_partial, uintptr_t row_loss,
                               uintptr_t stream) {
  if (rows <= 0 || row_begin < 0 || row_begin + rows > n_cols || ld < n_cols || row_spans < 1 ||
      row_spans > n_cols || (row_spans > 1 && !row_partial))
    throw std::invalid_argument("siglip_forward_block_cuda: inconsistent sizes");
  py::gil_scoped_release release;
  hbfast::siglip_forward_block_cuda(as_ptr<const float>(x), ld, rows, row_begin, n_cols,
                                    as_ptr<const float>(scale_bias), row_spans, as_ptr<float>(row_partial),
                                    as_ptr<float>(row_loss), reinterpret_cast<void*>(stream));
}

void siglip_backward_block_cuda(uintptr_t x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                uintptr_t scale_bias, uintptr_t row_coef, uintptr_t g, int64_t ldg, uintptr_t sums,
                                uintptr_t stream) {
  if (rows <= 0 || row_begin < 0 || row_begin + rows > n_cols || ld < n_cols || ldg < n_cols)
    throw std::invalid_argument("siglip_backward_block_cuda: inconsistent sizes");
  py::gil_scoped_release release;
  hbfast::siglip_backward_block_cuda(as_ptr<const float>(x), ld, rows, row_begin, n_cols,
                                     as_ptr<const float>(scale_bias), as_ptr<const float>(row_coef), as_ptr<float>(g),
                                     ldg, as_ptr<double>(sums), reinterpret_cast<void*>(stream));
}

}  // namespace
}  // namespace bindings

namespace hbfast {

void bind_cuda(py::module_& m) {
  // ---- contrastive loss ----
  m.def("contrastive_forward_block_cuda", &bindings::contrastive_forward_block_cuda);
  m.def("contrastive_backward_block_cuda", &bindings::contrastive_backward_block_cuda);
  m.def("contrastive_column_chunks", &hbfast::contrastive_column_chunks);
  m.def("contrastive_device_math_cuda", &bindings::contrastive_device_math_cuda);
  // ---- SigLIP loss ----
  m.def("siglip_forward_block_cuda", &bindings::siglip_forward_block_cuda);
  m.def("siglip_backward_block_cuda", &bindings::siglip_backward_block_cuda);
  // ---- search ----
  m.def("topk_merge_cuda", &bindings::topk_merge_cuda);
  m.def("topk_decode_cuda", &bindings::topk_decode_cuda);
  m.def("topk_keys_cuda", &bindings::topk_keys_cuda);
  m.def("count_beating_cuda", &bindings::count_beating_cuda);
}

}  // namespace hbfast
