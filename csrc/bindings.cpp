// The only pybind11 file: exposes the kernels as functions over raw pointers and sizes. Inputs are
// validated in Python (hbfast/*.py) before they reach here; this layer only re-checks buffer sizes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/parallel.h"
#include "common/select.h"
#include "cpu/contrastive_cpu.h"
#include "cpu/gemm_cpu.h"
#include "cpu/simd_clones.h"
#include "cpu/metrics_cpu.h"
#include "cpu/range_cpu.h"
#include "cpu/ranks_cpu.h"
#include "cpu/sampler_cpu.h"
#include "cpu/siglip_cpu.h"
#include "cpu/topk_cpu.h"
#ifdef HBFAST_WITH_CUDA
#include "bindings_cuda.h"
#include "cuda/range_cuda.h"
#include "cuda/runtime_cuda.h"
#endif

namespace py = pybind11;

namespace {

template <class T>
T* mutable_data(py::array& a, const char* name, int64_t expected) {
  if (a.size() != expected) throw std::invalid_argument(std::string(name) + ": wrong buffer size");
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + ": not contiguous");
  return static_cast<T*>(a.mutable_data());
}

int64_t hybrid_batches(py::array_t<uint8_t, py::array::c_style> availability, py::array_t<double, py::array::c_style> weights,
                       double alpha, int64_t batch, uint64_t seed, uint64_t epoch, bool drop_last, py::array items,
                       py::array query_lang, py::array passage_lang, py::array mono) {
  if (availability.ndim() != 2) throw std::invalid_argument("availability must be 2-D");
  int64_t N = availability.shape(0), L = availability.shape(1);
  if (weights.size() != L) throw std::invalid_argument("weights must have one entry per language");
  int64_t max_batches = mono.size();
  int64_t* it = mutable_data<int64_t>(items, "items", max_batches * batch);
  int32_t* ql = mutable_data<int32_t>(query_lang, "query_lang", max_batches * batch);
  int32_t* pl = mutable_data<int32_t>(passage_lang, "passage_lang", max_batches * batch);
  uint8_t* mo = mutable_data<uint8_t>(mono, "mono", max_batches);
  const uint8_t* av = availability.data();
  const double* w = weights.data();
  py::gil_scoped_release release;
  return hbfast::hybrid_batches_cpu(av, N, L, w, alpha, batch, seed, epoch, drop_last, it, ql, pl, mo, max_batches);
}

py::tuple availability_counts(py::array_t<uint8_t, py::array::c_style> availability) {
  if (availability.ndim() != 2) throw std::invalid_argument("availability must be 2-D");
  int64_t N = availability.shape(0), L = availability.shape(1);
  py::array_t<int64_t> counts(L);
  int64_t* c = counts.mutable_data();
  const uint8_t* av = availability.data();
  int64_t n_multi;
  {
    py::gil_scoped_release release;
    n_multi = hbfast::availability_counts_cpu(av, N, L, c);
  }
  return py::make_tuple(counts, n_multi);
}

// ---- search and metrics (topk, relevant_ranks, trec_eval metrics) ----
// Pointers arrive as integers (tensor.data_ptr()) for buffers Python allocated and validated.
template <class T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

bool topk_merge_cpu(hbfast::TopkStateCpu& state, uintptr_t tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld,
                    int64_t id0) {
  py::gil_scoped_release release;
  return state.merge(ptr<const float>(tile), q0, rows, cols, ld, id0);
}

bool topk_search_cpu(hbfast::TopkStateCpu& state, int backend, uintptr_t queries, int64_t dim, uintptr_t corpus,
                     int64_t cols, int64_t id0) {
  auto gemm = hbfast::checked_backend(backend);
  py::gil_scoped_release release;
  return state.search(gemm, ptr<const float>(queries), dim, ptr<const float>(corpus), cols, id0);
}

void topk_finish_cpu(const hbfast::TopkStateCpu& state, uintptr_t out_scores, uintptr_t out_ids) {
  py::gil_scoped_release release;
  state.finish(ptr<float>(out_scores), ptr<int64_t>(out_ids));
}

bool count_beating_cpu(uintptr_t tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0, uintptr_t rel_scores,
                       uintptr_t rel_ids, int64_t r, uintptr_t counts, uintptr_t own_scores) {
  py::gil_scoped_release release;
  return hbfast::count_beating_cpu(ptr<const float>(tile), rows, cols, ld, id0, ptr<const float>(rel_scores),
                                   ptr<const int64_t>(rel_ids), r, ptr<int64_t>(counts), ptr<float>(own_scores));
}

bool count_beating_search_cpu(int backend, uintptr_t queries, int64_t rows, int64_t dim, uintptr_t corpus, int64_t cols,
                              int64_t id0, uintptr_t rel_scores, uintptr_t rel_ids, int64_t r, uintptr_t counts,
                              uintptr_t own_scores) {
  auto gemm = hbfast::checked_backend(backend);
  py::gil_scoped_release release;
  return hbfast::count_beating_search_cpu(gemm, ptr<const float>(queries), rows, dim, ptr<const float>(corpus), cols, id0,
                                          ptr<const float>(rel_scores), ptr<const int64_t>(rel_ids), r,
                                          ptr<int64_t>(counts), ptr<float>(own_scores));
}

// C [m, n] (ldc) = alpha * op(A) @ op(B) + beta * C over hbfast's threads, by OpenBLAS (backend 0) or
// torch's MKL (1) (gemm_cpu.h).
void sgemm_cpu(int backend, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, uintptr_t a, int64_t lda,
               uintptr_t b, int64_t ldb, double beta, uintptr_t c, int64_t ldc) {
  auto gemm = hbfast::checked_backend(backend);
  py::gil_scoped_release release;
  hbfast::sgemm_parallel(gemm, trans_a, trans_b, m, n, k, float(alpha), ptr<const float>(a), lda, ptr<const float>(b), ldb,
                         float(beta), ptr<float>(c), ldc);
}

using IntArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::array_t<double> ranked_metrics(IntArray ranks, std::optional<DoubleArray> gains, std::optional<DoubleArray> n_relevant,
                                   py::array_t<int32_t, py::array::c_style | py::array::forcecast> kinds, IntArray cutoffs) {
  if (ranks.ndim() != 2) throw std::invalid_argument("ranks must be 2-D");
  int64_t nq = ranks.shape(0), r = ranks.shape(1), m = kinds.size();
  if (gains && gains->size() != nq * r) throw std::invalid_argument("gains must match ranks");
  if (n_relevant && n_relevant->size() != nq) throw std::invalid_argument("n_relevant needs one value per query");
  if (cutoffs.size() != m) throw std::invalid_argument("one cutoff per metric");
  py::array_t<double> out({m, nq});
  const int64_t* rk = ranks.data();
  const double* g = gains ? gains->data() : nullptr;
  const double* n = n_relevant ? n_relevant->data() : nullptr;
  const int32_t* kd = kinds.data();
  const int64_t* ct = cutoffs.data();
  double* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    hbfast::ranked_metrics_cpu(rk, g, n, nq, r, kd, ct, m, o);
  }
  return out;
}

IntArray run_ranks(IntArray run_ids, py::array_t<float, py::array::c_style | py::array::forcecast> run_scores, IntArray judged_ids) {
  if (run_ids.ndim() != 2 || judged_ids.ndim() != 2) throw std::invalid_argument("run ids and judged ids must be 2-D");
  int64_t nq = run_ids.shape(0), depth = run_ids.shape(1), r = judged_ids.shape(1);
  if (run_scores.size() != nq * depth) throw std::invalid_argument("run scores must match run ids");
  if (judged_ids.shape(0) != nq) throw std::invalid_argument("judged ids need one row per query");
  IntArray ranks({nq, r});
  const int64_t* ids = run_ids.data();
  const float* scores = run_scores.data();
  const int64_t* judged = judged_ids.data();
  int64_t* out = ranks.mutable_data();
  {
    py::gil_scoped_release release;
    hbfast::run_ranks_cpu(ids, scores, nq, depth, judged, r, out);
  }
  return ranks;
}

// The CUDA top-k state's 64-bit keys (select.h), exposed so the CPU tests check the GPU's ordering.
py::array_t<uint64_t> selection_keys(py::array_t<float, py::array::c_style | py::array::forcecast> scores, IntArray ids) {
  if (scores.size() != ids.size()) throw std::invalid_argument("scores and ids must have the same size");
  py::array_t<uint64_t> keys(scores.size());
  for (int64_t i = 0; i < scores.size(); ++i) keys.mutable_data()[i] = hbfast::make_key(scores.data()[i], ids.data()[i]);
  return keys;
}

py::tuple decode_keys(py::array_t<uint64_t, py::array::c_style | py::array::forcecast> keys) {
  py::array_t<float> scores(keys.size());
  IntArray ids(keys.size());
  for (int64_t i = 0; i < keys.size(); ++i) {
    scores.mutable_data()[i] = hbfast::key_score(keys.data()[i]);
    ids.mutable_data()[i] = hbfast::key_id(keys.data()[i]);
  }
  return py::make_tuple(scores, ids);
}


// ---- range search and filtered / L2 top-k (range_cpu.h, range_cuda.h) ----
// TileParams carry raw pointers (norms, filter bitmap) that Python keeps alive for the call.
hbfast::TileParams make_tile_params(int l2, uintptr_t q_norms, uintptr_t c_norms, int64_t lo, int64_t hi, uintptr_t bits,
                                    int64_t n_bits, bool invert) {
  hbfast::TileParams p;
  p.l2 = l2 ? 1 : 0;
  p.q_norms = ptr<const float>(q_norms);
  p.c_norms = ptr<const float>(c_norms);
  p.filter.lo = lo;
  p.filter.hi = hi;
  p.filter.bits = ptr<const uint8_t>(bits);
  p.filter.n_bits = n_bits;
  p.filter.invert = invert ? 1 : 0;
  if (p.l2 && !q_norms) throw std::invalid_argument("TileParams: L2 needs query norms");
  return p;
}

bool range_merge_cpu(hbfast::RangeStateCpu& state, uintptr_t tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld,
                     int64_t id0, const hbfast::TileParams& params) {
  py::gil_scoped_release release;
  return state.merge(ptr<const float>(tile), q0, rows, cols, ld, id0, params);
}

bool range_search_cpu(hbfast::RangeStateCpu& state, int backend, uintptr_t queries, int64_t dim, uintptr_t corpus,
                      int64_t cols, int64_t id0, const hbfast::TileParams& params) {
  auto gemm = hbfast::checked_backend(backend);
  py::gil_scoped_release release;
  return state.search(gemm, ptr<const float>(queries), dim, ptr<const float>(corpus), cols, id0, params);
}

void range_finish_cpu(const hbfast::RangeStateCpu& state, uintptr_t lims, uintptr_t values, uintptr_t ids) {
  py::gil_scoped_release release;
  state.finish(ptr<int64_t>(lims), ptr<float>(values), ptr<int64_t>(ids));
}

bool topk_search_params_cpu(hbfast::TopkStateCpu& state, int backend, uintptr_t queries, int64_t dim, uintptr_t corpus,
                            int64_t cols, int64_t id0, const hbfast::TileParams& params) {
  auto gemm = hbfast::checked_backend(backend);
  py::gil_scoped_release release;
  return state.search(gemm, ptr<const float>(queries), dim, ptr<const float>(corpus), cols, id0, &params);
}

static void require_corpus_norms(const hbfast::TileParams& params, const char* what) {
  if (params.l2 && params.c_norms == nullptr) throw std::invalid_argument(std::string(what) + ": L2 needs corpus norms");
}

void topk_tile_scores_cpu(uintptr_t tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                          const hbfast::TileParams& params) {
  require_corpus_norms(params, "topk_tile_scores_cpu");
  py::gil_scoped_release release;
  hbfast::topk_tile_scores_cpu(ptr<float>(tile), q0, rows, cols, ld, id0, params);
}

void sq_norms_cpu(uintptr_t x, int64_t rows, int64_t dim, uintptr_t out) {
  py::gil_scoped_release release;
  hbfast::sq_norms_cpu(ptr<const float>(x), rows, dim, ptr<float>(out));
}

#ifdef HBFAST_WITH_CUDA
void range_collect_cuda(uintptr_t tile, int64_t rows, int64_t cols, int64_t ld, int64_t q0, int64_t id0, double threshold,
                        const hbfast::TileParams& params, uintptr_t out_q, uintptr_t out_ids, uintptr_t out_values,
                        int64_t capacity, uintptr_t counter, uintptr_t bad, uintptr_t stream) {
  require_corpus_norms(params, "range_collect_cuda");
  py::gil_scoped_release release;
  hbfast::range_collect_cuda(ptr<const float>(tile), rows, cols, ld, q0, id0, float(threshold), params, ptr<int64_t>(out_q),
                             ptr<int64_t>(out_ids), ptr<float>(out_values), capacity, ptr<unsigned long long>(counter),
                             ptr<int32_t>(bad), stream);
}

void topk_tile_scores_cuda(uintptr_t tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                           const hbfast::TileParams& params, uintptr_t stream) {
  require_corpus_norms(params, "topk_tile_scores_cuda");
  py::gil_scoped_release release;
  hbfast::topk_tile_scores_cuda(ptr<float>(tile), q0, rows, cols, ld, id0, params, stream);
}
#endif
// ---- end of range search ----

py::dict build_info() {
  py::dict info;
  info["version"] = HBFAST_VERSION;
#ifdef HBFAST_WITH_CUDA
  info["cuda"] = true;
  std::vector<std::string> archs;
  std::string list = HBFAST_CUDA_ARCHS;
  for (size_t start = 0; start <= list.size();) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    if (end > start) archs.push_back(list.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_archs"] = archs;
  info["cuda_device_count"] = hbfast::cuda_device_count();
  info["cuda_device_error"] = hbfast::cuda_device_error();
  info["cuda_runtime_version"] = hbfast::cuda_runtime_version();
  info["cuda_driver_version"] = hbfast::cuda_driver_version();
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::vector<std::string>{};
  info["cuda_device_count"] = 0;
  info["cuda_device_error"] = "";
  info["cuda_runtime_version"] = 0;
  info["cuda_driver_version"] = 0;
#endif
  info["threads"] = hbfast::get_num_threads();
  info["openblas"] = hbfast::gemm_library();
  return info;
}

// ---- contrastive loss ----
// Pointers arrive as integers (tensor.data_ptr()); Python has checked shapes, dtypes (float32 tiles,
// or float64 ones on the CPU when f64 is set; int32 group codes), devices and contiguity. Pointer 0
// means "absent" (no groups, no columns).
template <class T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void contrastive_forward_block(uintptr_t x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                               int64_t n_batch, double scale, uintptr_t groups, uintptr_t row_lse, uintptr_t diag,
                               uintptr_t col_max, uintptr_t col_sum, bool f64) {
  if (rows <= 0 || n_cols < n_batch || row_begin < 0 || row_begin + rows > n_batch || ld < n_cols)
    throw std::invalid_argument("contrastive_forward_block: inconsistent sizes");
  bool with_columns = col_max != 0;
  py::gil_scoped_release release;
  if (f64) {
    hbfast::contrastive_forward_block_cpu(as_ptr<const double>(x), ld, rows, row_begin, n_cols, n_batch, scale,
                                          as_ptr<const int32_t>(groups), with_columns, as_ptr<double>(row_lse),
                                          as_ptr<double>(diag), as_ptr<double>(col_max), as_ptr<double>(col_sum));
    return;
  }
  hbfast::contrastive_forward_block_cpu(as_ptr<const float>(x), ld, rows, row_begin, n_cols, n_batch, float(scale),
                                        as_ptr<const int32_t>(groups), with_columns, as_ptr<float>(row_lse),
                                        as_ptr<float>(diag), as_ptr<float>(col_max), as_ptr<float>(col_sum));
}

// The CPU epilogue of the backward: writes G into g and returns this block's sum(G * X).
double contrastive_backward_block(uintptr_t x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols,
                                  int64_t n_batch, double scale, uintptr_t groups, uintptr_t row_lse, uintptr_t col_lse,
                                  uintptr_t row_coef, uintptr_t col_coef, uintptr_t diag_coef, uintptr_t g, int64_t ldg, bool f64) {
  if (rows <= 0 || n_cols < n_batch || row_begin < 0 || row_begin + rows > n_batch || ld < n_cols || ldg < n_cols)
    throw std::invalid_argument("contrastive_backward_block: inconsistent sizes");
  py::gil_scoped_release release;
  if (f64) {
    return hbfast::contrastive_backward_block_cpu(as_ptr<const double>(x), ld, rows, row_begin, n_cols, n_batch, scale,
                                                  as_ptr<const int32_t>(groups), as_ptr<const double>(row_lse),
                                                  as_ptr<const double>(col_lse), as_ptr<const double>(row_coef),
                                                  as_ptr<const double>(col_coef), as_ptr<const double>(diag_coef),
                                                  as_ptr<double>(g), ldg);
  }
  return hbfast::contrastive_backward_block_cpu(as_ptr<const float>(x), ld, rows, row_begin, n_cols, n_batch,
                                                float(scale), as_ptr<const int32_t>(groups),
                                                as_ptr<const float>(row_lse), as_ptr<const float>(col_lse),
                                                as_ptr<const float>(row_coef), as_ptr<const float>(col_coef),
                                                as_ptr<const float>(diag_coef), as_ptr<float>(g), ldg);
}


void contrastive_advise_huge_pages(uintptr_t ptr, int64_t nbytes) {
  hbfast::advise_huge_pages(as_ptr<void>(ptr), nbytes);
}

void contrastive_fast_exp(uintptr_t x, uintptr_t y, int64_t n) {
  py::gil_scoped_release release;
  hbfast::fast_exp_cpu(as_ptr<const float>(x), as_ptr<float>(y), n);
}

// ---- SigLIP loss ----
// Same conventions as the contrastive loss above: validated in Python, pointers as integers.
void siglip_forward_block(uintptr_t x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols, double scale,
                          double bias, uintptr_t row_loss, bool f64) {
  if (rows <= 0 || row_begin < 0 || row_begin + rows > n_cols || ld < n_cols)
    throw std::invalid_argument("siglip_forward_block: inconsistent sizes");
  py::gil_scoped_release release;
  if (f64) {
    hbfast::siglip_forward_block_cpu(as_ptr<const double>(x), ld, rows, row_begin, n_cols, scale, bias,
                                     as_ptr<double>(row_loss));
    return;
  }
  hbfast::siglip_forward_block_cpu(as_ptr<const float>(x), ld, rows, row_begin, n_cols, float(scale), float(bias),
                                   as_ptr<float>(row_loss));
}

// Returns (sum(G * X), sum(G)) of the block.
py::tuple siglip_backward_block(uintptr_t x, int64_t ld, int64_t rows, int64_t row_begin, int64_t n_cols, double scale,
                                double bias, uintptr_t row_coef, uintptr_t g, int64_t ldg, bool f64) {
  if (rows <= 0 || row_begin < 0 || row_begin + rows > n_cols || ld < n_cols || ldg < n_cols)
    throw std::invalid_argument("siglip_backward_block: inconsistent sizes");
  double sum_gx = 0.0, sum_g = 0.0;
  {
    py::gil_scoped_release release;
    if (f64) {
      hbfast::siglip_backward_block_cpu(as_ptr<const double>(x), ld, rows, row_begin, n_cols, scale, bias,
                                        as_ptr<const double>(row_coef), as_ptr<double>(g), ldg, &sum_gx, &sum_g);
    } else {
      hbfast::siglip_backward_block_cpu(as_ptr<const float>(x), ld, rows, row_begin, n_cols, float(scale),
                                        float(bias), as_ptr<const float>(row_coef), as_ptr<float>(g), ldg, &sum_gx,
                                        &sum_g);
    }
  }
  return py::make_tuple(sum_gx, sum_g);
}


void siglip_elementwise(uintptr_t z, uintptr_t y, int64_t n, bool sigmoid) {
  py::gil_scoped_release release;
  if (sigmoid)
    hbfast::siglip_sigmoid_cpu(as_ptr<const float>(z), as_ptr<float>(y), n);
  else
    hbfast::siglip_softplus_cpu(as_ptr<const float>(z), as_ptr<float>(y), n);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "hbfast's compiled kernels (private: use the hbfast package)";
  m.def("build_info", &build_info);
  m.def("get_num_threads", &hbfast::get_num_threads);
  m.def("set_num_threads", &hbfast::set_num_threads);
  m.def("hybrid_batches", &hybrid_batches);
  m.def("availability_counts", &availability_counts);
  // ---- contrastive loss ----
  m.def("contrastive_forward_block", &contrastive_forward_block);
  m.def("contrastive_backward_block", &contrastive_backward_block);
  m.def("contrastive_fast_exp", &contrastive_fast_exp);
  m.def("contrastive_advise_huge_pages", &contrastive_advise_huge_pages);
  // ---- SigLIP loss ----
  m.def("siglip_forward_block", &siglip_forward_block);
  m.def("siglip_backward_block", &siglip_backward_block);
  m.def("siglip_elementwise", &siglip_elementwise);

  // ---- search and metrics ----
  py::class_<hbfast::TopkStateCpu>(m, "TopkStateCpu")
      .def(py::init<int64_t, int64_t, int64_t>(), py::arg("n_queries"), py::arg("k"), py::arg("buffer_capacity"));
  m.attr("TOPK_HEAP_MAX_K") = hbfast::TopkStateCpu::kHeapMaxK;
  m.def("topk_merge_cpu", &topk_merge_cpu);
  m.def("topk_finish_cpu", &topk_finish_cpu);
  m.def("count_beating_cpu", &count_beating_cpu);
  m.def("topk_search_cpu", &topk_search_cpu);
  m.def("count_beating_search_cpu", &count_beating_search_cpu);
  m.def("sgemm_cpu", &sgemm_cpu);
  m.def("load_torch_mkl", &hbfast::load_torch_mkl);
  m.def("set_cpu_simd", &hbfast::set_cpu_simd);
  m.def("set_fused_blocks", &hbfast::set_fused_blocks);
  m.def("ranked_metrics", &ranked_metrics, py::arg("ranks"), py::arg("gains"), py::arg("n_relevant"), py::arg("kinds"),
        py::arg("cutoffs"));
  m.def("run_ranks", &run_ranks);
  m.def("selection_keys", &selection_keys);
  m.def("decode_keys", &decode_keys);
#ifdef HBFAST_WITH_CUDA
  hbfast::bind_cuda(m);  // the *_cuda functions (bindings_cuda.cpp)
#endif

  // ---- range search and filtered / L2 top-k ----
  py::class_<hbfast::TileParams>(m, "TileParams")
      .def(py::init(&make_tile_params), py::arg("l2"), py::arg("q_norms"), py::arg("c_norms"), py::arg("lo"), py::arg("hi"),
           py::arg("bits"), py::arg("n_bits"), py::arg("invert"));
  py::class_<hbfast::RangeStateCpu>(m, "RangeStateCpu")
      .def(py::init<int64_t, float, bool>(), py::arg("n_queries"), py::arg("threshold"), py::arg("l2"))
      .def("total", &hbfast::RangeStateCpu::total);
  m.def("range_merge_cpu", &range_merge_cpu);
  m.def("range_search_cpu", &range_search_cpu);
  m.def("range_finish_cpu", &range_finish_cpu);
  m.def("topk_search_params_cpu", &topk_search_params_cpu);
  m.def("topk_tile_scores_cpu", &topk_tile_scores_cpu);
  m.def("sq_norms_cpu", &sq_norms_cpu);
#ifdef HBFAST_WITH_CUDA
  m.def("range_collect_cuda", &range_collect_cuda);
  m.def("topk_tile_scores_cuda", &topk_tile_scores_cuda);
#endif
}
