// Hybrid batch plans (X-X with probability alpha, X-Y otherwise): CPU only, the work is sequential.
#pragma once
#include <cstdint>

namespace hbfast {

// availability: [N, L] bytes (0/1), row-major. weights: [L] language weights for X-X batches.
// Writes up to max_batches global batches of `batch` rows into items [max_batches, batch] (-1 pad),
// query_lang / passage_lang [max_batches, batch] (-1 pad), mono [max_batches]; returns the count.
int64_t hybrid_batches_cpu(const uint8_t* availability, int64_t N, int64_t L, const double* weights,
                           double alpha, int64_t batch, uint64_t seed, uint64_t epoch, bool drop_last,
                           int64_t* items, int32_t* query_lang, int32_t* passage_lang, uint8_t* mono,
                           int64_t max_batches);

// counts[l] = items available in language l; returns the number of items with >= 2 languages.
int64_t availability_counts_cpu(const uint8_t* availability, int64_t N, int64_t L, int64_t* counts);

}  // namespace hbfast
