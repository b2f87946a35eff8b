// CUDA runtime queries. Kept apart from the kernels so that a build without a GPU still links.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/runtime_cuda.h"

namespace hbfast {
int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

void check_cuda_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
}  // namespace hbfast
