// Retrieval metrics on the CPU (see metrics_cpu.h), one query per loop iteration, threads over queries.
#include "cpu/metrics_cpu.h"

#include <algorithm>
#include <vector>

#include "common/parallel.h"
#include "common/select.h"

namespace hbfast {

void ranked_metrics_cpu(const int64_t* ranks, const double* gains, const double* n_relevant, int64_t nq, int64_t r,
                        const int32_t* kinds, const int64_t* cutoffs, int64_t m, double* out) {
  parallel_for(nq, 256, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<int64_t, double>> found;  // (rank, gain) of retrieved relevant items
    std::vector<int64_t> found_ranks;
    std::vector<double> ideal;                      // gains of every relevant item, best first
    for (int64_t q = begin; q < end; ++q) {
      found.clear();
      ideal.clear();
      for (int64_t t = 0; t < r; ++t) {
        double g = gains ? gains[q * r + t] : (ranks[q * r + t] == -1 ? 0.0 : 1.0);
        if (!(g > 0)) continue;
        ideal.push_back(g);
        int64_t rank = ranks[q * r + t];
        if (rank > 0) found.emplace_back(rank, g);
      }
      // without gains, -1 is padding; with gains, a relevant item with rank -1 is relevant, not retrieved
      std::sort(found.begin(), found.end());
      std::sort(ideal.begin(), ideal.end(), [](double a, double b) { return a > b; });
      double n_rel = n_relevant ? n_relevant[q] : double(ideal.size());
      int64_t n_found = int64_t(found.size());
      for (int64_t i = 0; i < m; ++i) {
        int64_t cut = cutoffs[i] > 0 ? cutoffs[i] : INT64_MAX;
        int64_t in_cut = 0;  // retrieved relevant items within the cutoff
        while (in_cut < n_found && found[in_cut].first <= cut) ++in_cut;
        double value = 0.0;
        switch (kinds[i]) {
          case kAveragePrecision:
            found_ranks.resize(in_cut);
            for (int64_t j = 0; j < in_cut; ++j) found_ranks[j] = found[j].first;
            value = average_precision_sorted(found_ranks.data(), in_cut, n_rel);
            break;
          case kReciprocalRank:
            value = in_cut > 0 ? 1.0 / double(found[0].first) : 0.0;
            break;
          case kNdcg: {
            double dcg = 0.0, idcg = 0.0;
            for (int64_t j = 0; j < in_cut; ++j) dcg += dcg_term(found[j].second, found[j].first);
            int64_t n_ideal = std::min<int64_t>(int64_t(ideal.size()), cut);
            for (int64_t j = 0; j < n_ideal; ++j) idcg += dcg_term(ideal[j], j + 1);
            value = idcg > 0 ? dcg / idcg : 0.0;
            break;
          }
          case kRecall:
            value = n_rel > 0 ? double(in_cut) / n_rel : 0.0;
            break;
          case kPrecision:
            value = cutoffs[i] > 0 ? double(in_cut) / double(cutoffs[i]) : 0.0;  // Python requires a cutoff
            break;
        }
        out[i * nq + q] = value;
      }
    }
  });
}

namespace {

// Is the run row ordered best first (score descending, ties by lower id), with no empty slot?
__attribute__((target_clones("avx512f", "avx2", "default")))
bool row_is_ranked(const float* scores, const int64_t* ids, int64_t n) {
  int ok = 1;
  for (int64_t j = 0; j + 1 < n; ++j) ok &= (ids[j] >= 0) & ranks_before(scores[j], ids[j], scores[j + 1], ids[j + 1]);
  return ok != 0;
}

// position[t] = first j with ids[j] == judged[t] (left as is when absent). Blocks of 16 run ids
// are first tested against every judged id with vector compares; only blocks with a hit are searched.
__attribute__((target_clones("avx512f", "avx2", "default")))
void find_judged(const int64_t* ids, int64_t n, const int64_t* judged, int64_t r, int64_t* position) {
  constexpr int64_t kIds = 16;
  int64_t j0 = 0;
  for (; j0 + kIds <= n; j0 += kIds) {
    int64_t any = 0;
    for (int64_t t = 0; t < r; ++t)
      for (int64_t j = 0; j < kIds; ++j) any |= ids[j0 + j] == judged[t];
    if (!any) continue;
    for (int64_t j = j0; j < j0 + kIds; ++j)
      for (int64_t t = 0; t < r; ++t)
        if (ids[j] == judged[t] && position[t] < 0) position[t] = j;
  }
  for (int64_t j = j0; j < n; ++j)
    for (int64_t t = 0; t < r; ++t)
      if (ids[j] == judged[t] && position[t] < 0) position[t] = j;
}

}  // namespace

void run_ranks_cpu(const int64_t* run_ids, const float* run_scores, int64_t nq, int64_t depth, const int64_t* judged_ids,
                   int64_t r, int64_t* ranks) {
  parallel_for(nq, 64, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> position(r);
    for (int64_t q = begin; q < end; ++q) {
      const int64_t* ids = run_ids + q * depth;     // [depth]
      const float* scores = run_scores + q * depth;  // [depth]
      const int64_t* judged = judged_ids + q * r;    // [r]
      int64_t filled = depth;                        // trailing empty slots (id < 0) are ignored
      while (filled > 0 && ids[filled - 1] < 0) --filled;
      // position[t]: first index of judged[t] in the run; padding (-1) is reset afterwards
      for (int64_t t = 0; t < r; ++t) position[t] = -1;
      find_judged(ids, filled, judged, r, position.data());
      for (int64_t t = 0; t < r; ++t)
        if (judged[t] < 0) position[t] = -1;
      const bool ranked = row_is_ranked(scores, ids, filled);  // the usual case (topk output): rank = position
      for (int64_t t = 0; t < r; ++t) {
        int64_t pos = position[t], rank = -1;
        if (pos >= 0 && ranked) {
          rank = pos + 1;
        } else if (pos >= 0) {  // count the entries that rank before it
          rank = 1;
          for (int64_t j = 0; j < filled; ++j)
            if (ids[j] >= 0 && j != pos && ranks_before(scores[j], ids[j], scores[pos], ids[pos])) ++rank;
        }
        ranks[q * r + t] = rank;
      }
    }
  });
}

}  // namespace hbfast
