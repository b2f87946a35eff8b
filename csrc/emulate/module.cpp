// hbfast._C_emu: hbfast's CUDA kernels compiled for the host against cuda_runtime.h beside this file,
// behind the same entry points as hbfast._C (bindings_cuda.cpp), taking host pointers where _C takes
// device ones. tests/test_cuda_emulated.py builds it and drives hbfast's CUDA-side Python on CPU
// tensors through it. Also: the handlers of g++'s -fsanitize=bounds,object-size checks (an index out
// of a __shared__ array becomes a violation of the launch) and the emulation's own self-tests.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bindings_cuda.h"
#include "cuda/runtime_cuda.h"

namespace hbfast {
std::vector<long long> emulation_features(const std::vector<int>& in, int blocks, int threads);
void emulation_violation(const std::string& name);
}  // namespace hbfast

namespace {
struct SourceLocation {  // the first member of every -fsanitize handler's data
  const char* file;
  uint32_t line, column;
};

[[noreturn]] void out_of_bounds(void* data, const char* what) {
  auto* at = static_cast<SourceLocation*>(data);
  std::string message = std::string(what) + " at " + at->file + ":" + std::to_string(at->line) + ":" +
                        std::to_string(at->column);
  if (!emu::current) {  // not in an emulated kernel (the sanitizers instrument only the kernels' sources)
    std::fprintf(stderr, "hbfast._C_emu: %s\n", message.c_str());
    std::abort();
  }
  emu::fail(message);
}
}  // namespace

#define HBFAST_HANDLER(name, what) \
  extern "C" __attribute__((visibility("hidden"))) void name(void* data, void*) { out_of_bounds(data, what); }
HBFAST_HANDLER(__ubsan_handle_out_of_bounds, "index out of an array's bounds")
HBFAST_HANDLER(__ubsan_handle_out_of_bounds_abort, "index out of an array's bounds")
HBFAST_HANDLER(__ubsan_handle_type_mismatch_v1, "access out of an object's bounds")
HBFAST_HANDLER(__ubsan_handle_type_mismatch_v1_abort, "access out of an object's bounds")

PYBIND11_MODULE(_C_emu, m) {
  m.doc() = "hbfast's CUDA kernels emulated on the host, for the tests (private)";
  hbfast::bind_cuda(m);
  m.attr("block_threads") = HBFAST_BLOCK_THREADS;
  m.def("emulation_features", &hbfast::emulation_features, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("emulation_violation", &hbfast::emulation_violation, pybind11::call_guard<pybind11::gil_scoped_release>());
  pybind11::register_exception<emu::Violation>(m, "Violation", PyExc_RuntimeError);
}
