// Retrieval metrics (trec_eval definitions) from the ranks of each query's judged items, and the
// ranks of judged items inside a run (ids + scores), on the CPU.
#pragma once
#include <cstdint>

namespace hbfast {

enum MetricKind : int32_t { kAveragePrecision = 0, kReciprocalRank = 1, kNdcg = 2, kRecall = 3, kPrecision = 4 };

// ranks [nq, r]: 1-based rank of each judged item, -1 when not retrieved or padding;
// gains [nq, r] (nullptr: every non-padding item has gain 1): items with gain > 0 are relevant;
// n_relevant [nq] (nullptr: count of items with gain > 0): AP and recall denominators;
// kinds, cutoffs [m] (cutoff 0: no cutoff); out [m, nq].
void ranked_metrics_cpu(const int64_t* ranks, const double* gains, const double* n_relevant, int64_t nq, int64_t r,
                        const int32_t* kinds, const int64_t* cutoffs, int64_t m, double* out);

// run_ids, run_scores [nq, depth] (run_ids < 0: empty slots), judged_ids [nq, r] (< 0: padding):
// writes ranks [nq, r], the 1-based rank of each judged id in its run ordered by score (descending,
// ties by lower id), or -1 when the run does not hold it. The first occurrence of a repeated id counts.
void run_ranks_cpu(const int64_t* run_ids, const float* run_scores, int64_t nq, int64_t depth, const int64_t* judged_ids,
                   int64_t r, int64_t* ranks);

}  // namespace hbfast
