// Exact top-k on the CPU (see topk_cpu.h). The per-tile work is a vectorised "anything above the
// threshold?" test over blocks of 16 scores; only the rare blocks that pass touch the heap/buffer.
#include "cpu/topk_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "common/parallel.h"
#include "common/select.h"
#include "cpu/finite_cpu.h"
#include "cpu/gemm_cpu.h"

namespace hbfast {
namespace {

constexpr int64_t kBlock = 16;

// True when some score of block[0, kBlock) is above the threshold.
inline bool block_has_above(const float* block, float threshold) {
  int any = 0;
  for (int64_t t = 0; t < kBlock; ++t) any |= block[t] > threshold;
  return any != 0;
}

}  // namespace

TopkStateCpu::TopkStateCpu(int64_t n_queries, int64_t k, int64_t buffer_capacity)
    : n_queries_(n_queries), k_(k), capacity_(buffer_capacity), use_heap_(k <= kHeapMaxK) {
  if (n_queries < 0 || k < 1) throw std::invalid_argument("TopkStateCpu: need n_queries >= 0 and k >= 1");
  const float worst = -std::numeric_limits<float>::infinity();
  if (use_heap_) {
    heap_scores_.assign(n_queries * k, worst);
    heap_ids_.assign(n_queries * k, std::numeric_limits<int64_t>::max());
  } else {
    if (capacity_ <= k) throw std::invalid_argument("TopkStateCpu: buffer_capacity must exceed k");
    buffer_.resize(n_queries * capacity_);
    buffer_fill_.assign(n_queries, 0);
    buffer_threshold_.assign(n_queries, worst);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void TopkStateCpu::merge_heap_row(const float* row, int64_t q, int64_t cols, int64_t id0) {
  float* scores = heap_scores_.data() + q * k_;  // [k] heap, root = worst kept
  int64_t* ids = heap_ids_.data() + q * k_;
  float threshold = scores[0];
  // Ids grow along the row and across tiles, so a candidate tied with the root loses: only s > root enters.
  int64_t j = 0;
  for (; j + kBlock <= cols; j += kBlock) {
    if (!block_has_above(row + j, threshold)) continue;
    for (int64_t t = j; t < j + kBlock; ++t) {
      if (row[t] > threshold) {
        heap_replace_top(scores, ids, k_, row[t], id0 + t);
        threshold = scores[0];
      }
    }
  }
  for (; j < cols; ++j) {
    if (row[j] > threshold) {
      heap_replace_top(scores, ids, k_, row[j], id0 + j);
      threshold = scores[0];
    }
  }
}

void TopkStateCpu::shrink_buffer(int64_t q) {
  Candidate* buf = buffer_.data() + q * capacity_;
  int64_t& fill = buffer_fill_[q];
  auto better = [](const Candidate& a, const Candidate& b) { return ranks_before(a.score, a.id, b.score, b.id); };
  std::nth_element(buf, buf + (k_ - 1), buf + fill, better);
  fill = k_;
  buffer_threshold_[q] = buf[k_ - 1].score;  // the k-th best: later (higher-id) ties lose to it
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void TopkStateCpu::merge_buffer_row(const float* row, int64_t q, int64_t cols, int64_t id0) {
  Candidate* buf = buffer_.data() + q * capacity_;  // [capacity]
  int64_t& fill = buffer_fill_[q];
  float threshold = buffer_threshold_[q];
  auto push = [&](int64_t t) {
    buf[fill].score = row[t];
    buf[fill].id = id0 + t;
    if (++fill == capacity_) {
      shrink_buffer(q);
      threshold = buffer_threshold_[q];
    }
  };
  int64_t j = 0;
  for (; j + kBlock <= cols; j += kBlock) {
    if (!block_has_above(row + j, threshold)) continue;
    for (int64_t t = j; t < j + kBlock; ++t)
      if (row[t] > threshold) push(t);
  }
  for (; j < cols; ++j)
    if (row[j] > threshold) push(j);
}

// Rows [0, rows) of tile are queries q0.. (one thread). False when a score is not finite.
bool TopkStateCpu::merge_rows(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0) {
  bool finite = true;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = tile + r * ld;  // [cols]
    if (!all_finite_cpu(row, cols)) {
      finite = false;  // the caller raises; the state is then thrown away
      continue;
    }
    if (use_heap_)
      merge_heap_row(row, q0 + r, cols, id0);
    else
      merge_buffer_row(row, q0 + r, cols, id0);
  }
  return finite;
}

bool TopkStateCpu::merge(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0) {
  if (q0 < 0 || rows < 0 || q0 + rows > n_queries_) throw std::invalid_argument("TopkStateCpu.merge: query rows out of range");
  if (cols <= 0 || rows == 0) return true;
  std::atomic<bool> finite{true};
  parallel_for(rows, 8, [&](int64_t begin, int64_t end) {
    if (!merge_rows(tile + begin * ld, q0 + begin, end - begin, cols, ld, id0)) finite = false;
  });
  return finite.load();
}

bool TopkStateCpu::search(const float* q, int64_t dim, const float* c, int64_t cols, int64_t id0) {
  if (cols <= 0 || n_queries_ == 0) return true;
  std::atomic<bool> finite{true};
  const int64_t block_rows = fused_block_rows(n_queries_), block_cols = fused_block_cols(cols);
  const size_t tile_size = size_t(block_rows * block_cols);
  scratch_.resize(std::max(scratch_.size(), tile_size * parallel_workers(n_queries_, block_rows)));
  parallel_blocks(n_queries_, block_rows, [&](int64_t begin, int64_t end, int64_t worker) {
    float* tile = scratch_.data() + worker * tile_size;  // [rows, width], this worker's own
    for (int64_t j0 = 0; j0 < cols; j0 += block_cols) {  // ids in increasing order for these queries
      int64_t width = std::min(block_cols, cols - j0);
      sgemm_serial(false, true, end - begin, width, dim, 1.0f, q + begin * dim, dim, c + j0 * dim, dim, 0.0f, tile,
                   width);
      if (!merge_rows(tile, begin, end - begin, width, width, id0 + j0)) finite = false;
    }
  });
  return finite.load();
}

void TopkStateCpu::finish(float* out_scores, int64_t* out_ids) const {
  parallel_for(n_queries_, 16, [&](int64_t begin, int64_t end) {
    std::vector<Candidate> tmp;
    for (int64_t q = begin; q < end; ++q) {
      float* s = out_scores + q * k_;  // [k]
      int64_t* id = out_ids + q * k_;
      if (use_heap_) {
        std::memcpy(s, heap_scores_.data() + q * k_, k_ * sizeof(float));
        std::memcpy(id, heap_ids_.data() + q * k_, k_ * sizeof(int64_t));
        heap_sort_best_first(s, id, k_);
        continue;
      }
      const Candidate* buf = buffer_.data() + q * capacity_;
      tmp.assign(buf, buf + buffer_fill_[q]);
      auto better = [](const Candidate& a, const Candidate& b) { return ranks_before(a.score, a.id, b.score, b.id); };
      int64_t keep = std::min<int64_t>(k_, tmp.size());
      if (keep < int64_t(tmp.size())) std::nth_element(tmp.begin(), tmp.begin() + (keep - 1), tmp.end(), better);
      std::sort(tmp.begin(), tmp.begin() + keep, better);
      for (int64_t i = 0; i < keep; ++i) {
        s[i] = tmp[i].score;
        id[i] = tmp[i].id;
      }
      for (int64_t i = keep; i < k_; ++i) {
        s[i] = -std::numeric_limits<float>::infinity();
        id[i] = -1;
      }
    }
  });
}

}  // namespace hbfast
