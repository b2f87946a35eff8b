// CUDA runtime queries. Kept apart from the kernels so that a build without a GPU still links.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/runtime_cuda.h"

namespace hbfast {
namespace {
cudaError_t device_count_status(int* count) {
  *count = 0;
  cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error (no driver, or a driver older than the runtime)
    *count = 0;
  }
  return err;
}
}  // namespace

int cuda_device_count() {
  int count;
  device_count_status(&count);
  return count;
}

std::string cuda_device_error() {
  int count;
  cudaError_t err = device_count_status(&count);
  if (err == cudaSuccess) return "";
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

int cuda_runtime_version() {
  int version = 0;
  cudaRuntimeGetVersion(&version);
  return version;
}

int cuda_driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return version;
}

void check_cuda_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
}  // namespace hbfast
