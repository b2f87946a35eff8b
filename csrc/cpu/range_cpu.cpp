// Exact range search on the CPU (see range_cpu.h). Each row of a tile is tested 16 values at a time
// ("does any value pass?", a loop the compiler vectorises); only blocks with a hit are walked one by
// one, where the id filter is also read. Threads take blocks of queries, or, with fewer queries than
// threads, slices of the corpus (search_by_columns).
#include "cpu/range_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>

#include "common/parallel.h"
#include "cpu/finite_cpu.h"
#include "cpu/simd_clones.h"

namespace hbfast {
namespace {

constexpr int64_t kBlock = 16;

// Appends to (values, ids) the items of one row that pass; columns in increasing order.
HBFAST_SIMD_CLONES
void collect_row(const float* row, int64_t q, int64_t cols, int64_t id0, const TileParams& p, float threshold,
                 std::vector<float>& values, std::vector<int64_t>& ids) {
  const float q_norm = p.l2 ? p.q_norms[q] : 0.0f;
  auto value_at = [&](int64_t j) HBFAST_ALWAYS_INLINE_LAMBDA {
    return p.l2 ? l2_from_product(row[j], q_norm, p.c_norms[j]) : row[j];
  };
  auto take = [&](int64_t j) {
    const float v = value_at(j);
    if (range_keeps(p.l2, v, threshold) && id_selected(p.filter, id0 + j)) {
      values.push_back(v);
      ids.push_back(id0 + j);
    }
  };
  int64_t j = 0;
  for (; j + kBlock <= cols; j += kBlock) {
    int any = 0;
    if (p.l2) {
      for (int64_t t = 0; t < kBlock; ++t) any |= l2_from_product(row[j + t], q_norm, p.c_norms[j + t]) < threshold;
    } else {
      for (int64_t t = 0; t < kBlock; ++t) any |= row[j + t] > threshold;
    }
    if (!any) continue;
    for (int64_t t = j; t < j + kBlock; ++t) take(t);
  }
  for (; j < cols; ++j) take(j);
}

// tile [nq, width] = q [nq, dim] . c [width, dim]^T for a handful of queries: each corpus row is read once
// for all of them (a library sgemm packs the corpus block first, one more pass over it; with one query
// the product is a pass over the corpus, memory-bound, and that pass showed).
HBFAST_SIMD_CLONES
void few_queries_product(const float* q, int64_t nq, int64_t dim, const float* c, int64_t width, float* tile) {
  for (int64_t j = 0; j < width; ++j) {
    const float* row = c + j * dim;
    for (int64_t r = 0; r < nq; ++r) {
      const float* x = q + r * dim;
      float acc[16] = {0.0f};  // 16 running sums: one vector register
      int64_t t = 0;
      for (; t + 16 <= dim; t += 16)
        for (int u = 0; u < 16; ++u) acc[u] += x[t + u] * row[t + u];
      for (; t < dim; ++t) acc[0] += x[t] * row[t];
      float sum = 0.0f;
      for (int u = 0; u < 16; ++u) sum += acc[u];
      tile[r * width + j] = sum;
    }
  }
}

constexpr int64_t kFewQueries = 4;  // up to this many queries, few_queries_product instead of the library's

}  // namespace

RangeStateCpu::RangeStateCpu(int64_t n_queries, float threshold, bool l2)
    : n_queries_(n_queries), threshold_(threshold), l2_(l2), values_(n_queries), ids_(n_queries) {
  if (n_queries < 0) throw std::invalid_argument("RangeStateCpu: n_queries must be >= 0");
}

bool RangeStateCpu::collect_rows(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                                 const TileParams& params) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = tile + r * ld;  // [cols]
    if (!all_finite_cpu(row, cols)) return false;
    collect_row(row, q0 + r, cols, id0, params, threshold_, values_[q0 + r], ids_[q0 + r]);
  }
  return true;
}

static void check_params(const TileParams& params, bool l2, bool need_c_norms) {
  if (bool(params.l2) != l2) throw std::invalid_argument("RangeStateCpu: params.l2 differs from the state's metric");
  if (l2 && (params.q_norms == nullptr || (need_c_norms && params.c_norms == nullptr)))
    throw std::invalid_argument("RangeStateCpu: L2 needs query and corpus norms");
}

TileParams block_params(const TileParams& params, const float* c, int64_t dim, int64_t j0, int64_t width, float* scratch) {
  TileParams sub = params;
  if (sub.c_norms != nullptr) {
    sub.c_norms += j0;
  } else if (sub.l2) {
    sq_norms_serial(c + j0 * dim, width, dim, scratch);
    sub.c_norms = scratch;
  }
  return sub;
}

bool RangeStateCpu::merge(const float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                          const TileParams& params) {
  if (q0 < 0 || rows < 0 || q0 + rows > n_queries_) throw std::invalid_argument("RangeStateCpu.merge: query rows out of range");
  check_params(params, l2_, true);
  if (cols <= 0 || rows == 0) return true;
  std::atomic<bool> finite{true};
  parallel_for(rows, 8, [&](int64_t begin, int64_t end) {
    if (!collect_rows(tile + begin * ld, q0 + begin, end - begin, cols, ld, id0, params)) finite = false;
  });
  return finite.load();
}

// Fewer queries than threads (a single query, say): the threads split the columns instead, each into
// its own per-query lists, appended afterwards in column order (so ids stay in increasing order).
bool RangeStateCpu::search_by_columns(GemmBackend backend, const float* q, int64_t dim, const float* c, int64_t cols,
                                      int64_t id0, const TileParams& params) {
  constexpr int64_t kMinChunk = 64;
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), cols / kMinChunk));
  // blocks of at most 512 rows (256 KiB at dim 128): few queries make the product a pass over the
  // corpus, and the L2 norms then read the block again while it is still in the core's cache
  const int64_t chunk = (cols + n_chunks - 1) / n_chunks, block_cols = std::min<int64_t>(fused_block_cols(chunk), 512);
  std::vector<std::vector<std::vector<float>>> values(n_chunks, std::vector<std::vector<float>>(n_queries_));
  std::vector<std::vector<std::vector<int64_t>>> ids(n_chunks, std::vector<std::vector<int64_t>>(n_queries_));
  std::atomic<bool> finite{true};
  parallel_for(n_chunks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> tile(size_t(n_queries_ * block_cols));  // [n_queries, width]
    std::vector<float> norms(static_cast<size_t>(block_cols));  // [width]
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t end = std::min(cols, (b + 1) * chunk);
      for (int64_t j0 = b * chunk; j0 < end; j0 += block_cols) {
        const int64_t width = std::min(block_cols, end - j0);
        if (n_queries_ <= kFewQueries)
          few_queries_product(q, n_queries_, dim, c + j0 * dim, width, tile.data());
        else
          sgemm_serial(backend, false, true, n_queries_, width, dim, 1.0f, q, dim, c + j0 * dim, dim, 0.0f, tile.data(), width);
        const TileParams sub = block_params(params, c, dim, j0, width, norms.data());
        for (int64_t r = 0; r < n_queries_; ++r) {
          const float* row = tile.data() + r * width;
          if (!all_finite_cpu(row, width)) finite = false;
          collect_row(row, r, width, id0 + j0, sub, threshold_, values[b][r], ids[b][r]);
        }
      }
    }
  });
  for (int64_t r = 0; r < n_queries_; ++r)
    for (int64_t b = 0; b < n_chunks; ++b) {
      values_[r].insert(values_[r].end(), values[b][r].begin(), values[b][r].end());
      ids_[r].insert(ids_[r].end(), ids[b][r].begin(), ids[b][r].end());
    }
  return finite.load();
}

bool RangeStateCpu::search(GemmBackend backend, const float* q, int64_t dim, const float* c, int64_t cols, int64_t id0,
                           const TileParams& params) {
  check_params(params, l2_, false);
  if (cols <= 0 || n_queries_ == 0) return true;
  if (n_queries_ < get_num_threads() && cols >= 2 * 64) return search_by_columns(backend, q, dim, c, cols, id0, params);
  std::atomic<bool> finite{true};
  const int64_t block_rows = fused_block_rows(n_queries_), block_cols = fused_block_cols(cols);
  const size_t tile_size = size_t(block_rows * block_cols);
  scratch_.resize(std::max(scratch_.size(), tile_size * parallel_workers(n_queries_, block_rows)));
  parallel_blocks(n_queries_, block_rows, [&](int64_t begin, int64_t end, int64_t worker) {
    float* tile = scratch_.data() + worker * tile_size;  // [rows, width], this worker's own
    std::vector<float> norms(params.l2 && params.c_norms == nullptr ? block_cols : 0);  // [width]
    for (int64_t j0 = 0; j0 < cols; j0 += block_cols) {  // ids in increasing order for these queries
      const int64_t width = std::min(block_cols, cols - j0);
      sgemm_serial(backend, false, true, end - begin, width, dim, 1.0f, q + begin * dim, dim, c + j0 * dim, dim, 0.0f, tile,
                   width);
      const TileParams sub = block_params(params, c, dim, j0, width, norms.data());  // norms of this block's columns
      if (!collect_rows(tile, begin, end - begin, width, width, id0 + j0, sub)) finite = false;
    }
  });
  return finite.load();
}

int64_t RangeStateCpu::total() const {
  int64_t n = 0;
  for (const auto& v : ids_) n += int64_t(v.size());
  return n;
}

void RangeStateCpu::finish(int64_t* lims, float* values, int64_t* ids) const {
  lims[0] = 0;
  for (int64_t q = 0; q < n_queries_; ++q) lims[q + 1] = lims[q] + int64_t(ids_[q].size());
  parallel_for(n_queries_, 64, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      if (ids_[q].empty()) continue;
      std::memcpy(values + lims[q], values_[q].data(), values_[q].size() * sizeof(float));
      std::memcpy(ids + lims[q], ids_[q].data(), ids_[q].size() * sizeof(int64_t));
    }
  });
}

HBFAST_SIMD_CLONES
void topk_tile_scores_serial(float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                             const TileParams& params) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = tile + r * ld;  // [cols]
    for (int64_t j = 0; j < cols; ++j) row[j] = topk_tile_score(params, row[j], q0 + r, j, id0 + j);
  }
}

void topk_tile_scores_cpu(float* tile, int64_t q0, int64_t rows, int64_t cols, int64_t ld, int64_t id0,
                          const TileParams& params) {
  parallel_for(rows, 8, [&](int64_t begin, int64_t end) {
    topk_tile_scores_serial(tile + begin * ld, q0 + begin, end - begin, cols, ld, id0, params);
  });
}

HBFAST_SIMD_CLONES
void sq_norms_serial(const float* x, int64_t rows, int64_t dim, float* out) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = x + i * dim;
    float acc[16] = {0.0f};  // 16 running sums: one vector register, no chain of dependent adds
    int64_t t = 0;
    for (; t + 16 <= dim; t += 16)
      for (int u = 0; u < 16; ++u) acc[u] += row[t + u] * row[t + u];
    for (; t < dim; ++t) acc[0] += row[t] * row[t];
    float s = 0.0f;
    for (int u = 0; u < 16; ++u) s += acc[u];
    out[i] = s;
  }
}

void sq_norms_cpu(const float* x, int64_t rows, int64_t dim, float* out) {
  parallel_for(rows, 1024, [&](int64_t begin, int64_t end) { sq_norms_serial(x + begin * dim, end - begin, dim, out + begin); });
}

}  // namespace hbfast
