// What the CUDA runtime says about this machine, for build_info() and device checks.
#pragma once
#include <string>

namespace hbfast {
int cuda_device_count();         // 0 when no driver or no GPU is present
std::string cuda_device_error(); // why cudaGetDeviceCount failed ("" when it did not)
int cuda_runtime_version();      // of the runtime hbfast links (statically), e.g. 13000
int cuda_driver_version();       // the newest CUDA the installed driver supports; 0 without a driver
void check_cuda_launch(const char* what);  // throws std::runtime_error naming `what` if the last launch failed
}

// Threads per block of every kernel (a multiple of 32, at most 1024). The host emulation's tests
// (csrc/emulate) build with fewer, so small inputs cross the kernels' strided loops.
#ifndef HBFAST_BLOCK_THREADS
#define HBFAST_BLOCK_THREADS 256
#endif
static_assert(HBFAST_BLOCK_THREADS % 32 == 0 && HBFAST_BLOCK_THREADS >= 32 && HBFAST_BLOCK_THREADS <= 1024,
              "HBFAST_BLOCK_THREADS must be a multiple of 32 in [32, 1024]");

// HBFAST_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...) is kernel<<<...>>>(args...), and
// HBFAST_DYNAMIC_SHARED(T, name) declares the dynamic shared memory as T name[]; under the host
// emulation (csrc/emulate/cuda_runtime.h, which defines both) they are checked host equivalents.
#ifndef HBFAST_CUDA_EMULATION
#define HBFAST_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#define HBFAST_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
