// A minimal CPU parallel_for over index ranges. The kernels never run while torch's own BLAS
// threads run (Python calls tile products and epilogues in turn), so one pool size is enough.
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace hbfast {

int get_num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on contiguous chunks of [0, n), at most get_num_threads() at once, with
// chunks no smaller than min_grain. The first exception thrown by a worker is re-thrown here.
template <class Fn>
void parallel_for(int64_t n, int64_t min_grain, Fn&& fn) {
  if (n <= 0) return;
  int64_t threads = std::min<int64_t>(get_num_threads(), (n + min_grain - 1) / std::max<int64_t>(min_grain, 1));
  if (threads <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::vector<std::thread> pool;
  std::exception_ptr error;
  std::mutex error_lock;
  int64_t chunk = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t) {
    int64_t begin = t * chunk, end = std::min(n, begin + chunk);
    if (begin >= end) break;
    pool.emplace_back([&, begin, end] {
      try {
        fn(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> guard(error_lock);
        if (!error) error = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace hbfast
