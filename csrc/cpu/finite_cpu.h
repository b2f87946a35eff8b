// One vectorised finiteness scan of a score row, shared by the top-k and rank-counting epilogues
// (both reject NaN/inf scores instead of ranking them silently).
#pragma once

#include <cstdint>

namespace hbfast {
bool all_finite_cpu(const float* row, int64_t n);  // true when every row[0, n) is finite
}  // namespace hbfast
