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
