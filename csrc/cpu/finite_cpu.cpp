// See finite_cpu.h.
#include "cpu/finite_cpu.h"

#include <cstring>

#include "common/select.h"

namespace hbfast {

__attribute__((target_clones("avx512f", "avx2", "default")))
bool all_finite_cpu(const float* row, int64_t n) {
  uint32_t bad = 0;
  for (int64_t j = 0; j < n; ++j) {
    uint32_t bits;
    std::memcpy(&bits, row + j, sizeof(bits));
    bad |= non_finite_bits(bits);
  }
  return bad == 0;
}

}  // namespace hbfast
