// The only pybind11 file: exposes the kernels as functions over raw pointers and sizes. Inputs are
// validated in Python (hbfast/*.py) before they reach here; this layer only re-checks buffer sizes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/parallel.h"
#include "cpu/sampler_cpu.h"
#ifdef HBFAST_WITH_CUDA
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
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::vector<std::string>{};
  info["cuda_device_count"] = 0;
#endif
  info["threads"] = hbfast::get_num_threads();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "hbfast's compiled kernels (private: use the hbfast package)";
  m.def("build_info", &build_info);
  m.def("get_num_threads", &hbfast::get_num_threads);
  m.def("set_num_threads", &hbfast::set_num_threads);
  m.def("hybrid_batches", &hybrid_batches);
  m.def("availability_counts", &availability_counts);
}
