// Exact top-k on CUDA: the running state of each query is k 64-bit keys (select.h: score and id in
// one integer, larger = better); each score tile is merged in with a per-row radix select.
#pragma once
#include <cstdint>

namespace hbfast {

// tile [rows, cols] (row stride ld): scores of `rows` queries against corpus ids [id0, id0 + cols),
// ids below 2^32 - 1, k + cols below 2^31. keys_in, keys_out [rows, k]: the state before and after the merge (distinct
// buffers; start from kEmptyKey). Sets *bad to 1 when a score is NaN or infinite. Runs on `stream`.
void topk_merge_tile_cuda(const float* tile, int64_t rows, int64_t cols, int64_t ld, int64_t id0, const uint64_t* keys_in,
                          uint64_t* keys_out, int64_t k, int32_t* bad, uintptr_t stream);

// keys [n] -> scores [n], ids [n] (element-wise; the caller sorts the keys first).
void topk_decode_cuda(const uint64_t* keys, int64_t n, float* scores, int64_t* ids, uintptr_t stream);

// keys [n] = make_key(scores, ids) computed on the device (the tests compare it with the host's).
void topk_keys_cuda(const float* scores, const int64_t* ids, int64_t n, uint64_t* keys, uintptr_t stream);

}  // namespace hbfast
