// A minimal CPU parallel_for over index ranges. The kernels never run while torch's own BLAS
// threads run (Python calls tile products and epilogues in turn), and the fused kernels call
// OpenBLAS single-threaded inside these threads, so one pool size is enough.
#pragma once
#include <algorithm>
#include <atomic>
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

// Calls fn(begin, end, worker) for the blocks [b * block, min(n, (b + 1) * block)) of [0, n), handed
// out one at a time to at most get_num_threads() workers (worker in [0, workers)), so a core slowed by
// other work takes fewer blocks. parallel_workers(n, block) says how many workers it will use (callers
// size per-worker scratch with it).
int64_t parallel_workers(int64_t n, int64_t block);
template <class Fn>
void parallel_blocks(int64_t n, int64_t block, Fn&& fn) {
  if (n <= 0) return;
  const int64_t n_blocks = (n + block - 1) / block, workers = parallel_workers(n, block);
  std::atomic<int64_t> next{0};
  parallel_for(workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w)
      for (int64_t b = next++; b < n_blocks; b = next++) fn(b * block, std::min(n, (b + 1) * block), w);
  });
}

}  // namespace hbfast
