// The thread count shared by every CPU kernel: HBFAST_NUM_THREADS, else the CPUs this process may use.
#include "common/parallel.h"

#include <atomic>
#include <cstdlib>
#if defined(__linux__)
#include <sched.h>
#endif

namespace hbfast {
namespace {
int default_threads() {
  if (const char* env = std::getenv("HBFAST_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}
std::atomic<int> g_threads{default_threads()};
}  // namespace

int get_num_threads() { return g_threads.load(); }
void set_num_threads(int n) { g_threads.store(n > 0 ? n : default_threads()); }

int64_t parallel_workers(int64_t n, int64_t block) {
  return std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), (n + block - 1) / std::max<int64_t>(block, 1)));
}

}  // namespace hbfast
