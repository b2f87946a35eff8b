// What the CUDA runtime says about this machine, for build_info() and device checks.
#pragma once

namespace hbfast {
int cuda_device_count();  // 0 when no driver or no GPU is present
void check_cuda_launch(const char* what);  // throws std::runtime_error naming `what` if the last launch failed
}
