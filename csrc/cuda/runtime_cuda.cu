// CUDA runtime queries. Kept apart from the kernels so that a build without a GPU still links.
#include <cuda_runtime.h>

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
}  // namespace hbfast
