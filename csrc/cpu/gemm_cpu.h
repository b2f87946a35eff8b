// The matrix product under hbfast's fused CPU kernels: OpenBLAS (the scipy-openblas32 wheel, symbols
// prefixed scipy_) linked into _C, or the MKL inside torch. It is called single-threaded from inside hbfast's own thread pool,
// so each thread multiplies a small tile and runs the epilogue on it while the tile is still in its
// cache; OpenBLAS's own pool is set to one thread on first use (no oversubscription).
#pragma once
#include <cstdint>
#include <string>

namespace hbfast {

// Which library computes a fused product: the OpenBLAS linked in, or torch's own MKL (when the torch
// in this process has it: load_torch_mkl below), called single-threaded in hbfast's threads.
enum GemmBackend : int { kGemmOpenBlas = 0, kGemmTorchMkl = 1 };

// Row-major C[m, n] (row stride ldc) = alpha * op(A) @ op(B) + beta * C in the calling thread.
// op(A) is [m, k]: A [m, k] (lda), or A [k, m] when trans_a; op(B) is [k, n]: B [k, n] (ldb), or
// B [n, k] when trans_b. Sizes must fit OpenBLAS's 32-bit integers (checked).
void sgemm_serial(GemmBackend backend, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The same product split by rows of C over hbfast's threads (one serial OpenBLAS call per thread).
void sgemm_parallel(GemmBackend backend, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Block sizes of the fused kernels: each thread multiplies [rows, cols] tiles of queries x corpus
// items. OpenBLAS packs both operands on every call, so neither side may be small: one thread's
// OpenBLAS ran topk's product 6% faster with 1000-row blocks than with 256 or 512 rows (the packing
// is repeated less often). Rows: up to 1024, at most a thread's share of n (every thread gets work);
// columns: 2048 (a tile of at most 8 MiB, read by the epilogue from the core's L2 / the shared L3).
constexpr int64_t kFusedBlockRows = 1024, kFusedBlockCols = 2048;
int64_t fused_block_rows(int64_t n);
int64_t fused_block_cols(int64_t cols);
// Tests shrink the blocks so that small inputs span several (<= 0 restores the defaults).
void set_fused_blocks(int64_t rows, int64_t cols);

// Finds MKL's sgemm_ in a library torch already loaded (libtorch_cpu.so exports it when torch is
// built with MKL); false when it is not there. kGemmTorchMkl needs it (checked: invalid_argument).
bool load_torch_mkl(const std::string& library);
bool torch_mkl_loaded();
// A backend number from Python, checked (unknown number, or MKL not loaded: invalid_argument).
GemmBackend checked_backend(int backend);

// "OpenBLAS <version> <kernel core>", e.g. "OpenBLAS 0.3.34.481.3 SkylakeX".
std::string gemm_library();

}  // namespace hbfast
