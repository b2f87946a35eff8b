// hbfast._C's CUDA entry points (bindings_cuda.cpp), shared with the emulated module hbfast._C_emu.
#pragma once
#include <pybind11/pybind11.h>

namespace hbfast {
void bind_cuda(pybind11::module_& m);  // defines the *_cuda functions (and contrastive_column_chunks) on m
}
