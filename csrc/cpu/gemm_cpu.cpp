// OpenBLAS behind hbfast's CPU products (see gemm_cpu.h).
#include "cpu/gemm_cpu.h"

#include <cblas.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <mutex>
#include <stdexcept>

#include "common/parallel.h"

namespace hbfast {
namespace {

// hbfast's threads call OpenBLAS concurrently, each for its own tile: OpenBLAS must not start its
// own threads on top of them (2 pools on the same cores would oversubscribe them).
void single_threaded_openblas() {
  static std::once_flag once;
  std::call_once(once, [] { scipy_openblas_set_num_threads(1); });
}

blasint blas_int(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX) throw std::invalid_argument(std::string("sgemm: ") + what + " out of OpenBLAS's 32-bit range");
  return static_cast<blasint>(v);
}

// torch's MKL, found in the library torch loaded (libtorch_cpu exports MKL's Fortran sgemm_ and
// MKL_Set_Num_Threads_Local, the C mkl_set_num_threads_local): the same product torch computes, called per tile in hbfast's threads.
using FortranSgemm = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                              const int*, const float*, const int*, const float*, float*, const int*);
using SetThreadsLocal = int (*)(int);
std::atomic<FortranSgemm> g_mkl_sgemm{nullptr};
std::atomic<SetThreadsLocal> g_mkl_threads_local{nullptr};

}  // namespace

bool load_torch_mkl(const std::string& library) {
  void* handle = dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD);  // only a library already loaded
  if (!handle) return false;
  auto sgemm = reinterpret_cast<FortranSgemm>(dlsym(handle, "sgemm_"));
  auto local = reinterpret_cast<SetThreadsLocal>(dlsym(handle, "MKL_Set_Num_Threads_Local"));
  if (!sgemm || !local) return false;
  g_mkl_threads_local.store(local);
  g_mkl_sgemm.store(sgemm);
  return true;
}

bool torch_mkl_loaded() { return g_mkl_sgemm.load() != nullptr; }

GemmBackend checked_backend(int backend) {
  if (backend == kGemmOpenBlas) return kGemmOpenBlas;
  if (backend != kGemmTorchMkl) throw std::invalid_argument("sgemm: backend must be 0 (OpenBLAS) or 1 (torch's MKL)");
  if (!torch_mkl_loaded()) throw std::invalid_argument("sgemm: torch's MKL was not found in this process");
  return kGemmTorchMkl;
}


namespace {
// Row-major C = alpha op(A) op(B) + beta C through the column-major Fortran interface: C^T = op(B)^T op(A)^T.
void sgemm_serial_mkl(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                      int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int M = blas_int(n, "n"), N = blas_int(m, "m"), K = blas_int(k, "k");
  const int LDA = blas_int(std::max<int64_t>(ldb, 1), "ldb"), LDB = blas_int(std::max<int64_t>(lda, 1), "lda");
  const int LDC = blas_int(std::max<int64_t>(ldc, 1), "ldc");
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  SetThreadsLocal local = g_mkl_threads_local.load();
  if (!local) throw std::invalid_argument("sgemm: torch's MKL was not found in this process (load_torch_mkl)");
  int previous = local(1);  // this call in this thread only; restored after (0: the global setting)
  g_mkl_sgemm.load()(&ta, &tb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
  local(previous);
}
}  // namespace

void sgemm_serial(GemmBackend backend, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (backend == kGemmTorchMkl) return sgemm_serial_mkl(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  single_threaded_openblas();
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                    blas_int(m, "m"), blas_int(n, "n"), blas_int(k, "k"), alpha, a, blas_int(std::max<int64_t>(lda, 1), "lda"),
                    b, blas_int(std::max<int64_t>(ldb, 1), "ldb"), beta, c, blas_int(std::max<int64_t>(ldc, 1), "ldc"));
}

void sgemm_parallel(GemmBackend backend, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  parallel_for(m, 64, [&](int64_t begin, int64_t end) {
    const float* a_rows = trans_a ? a + begin : a + begin * lda;  // rows of op(A)
    sgemm_serial(backend, trans_a, trans_b, end - begin, n, k, alpha, a_rows, lda, b, ldb, beta, c + begin * ldc, ldc);
  });
}

namespace {
std::atomic<int64_t> g_block_rows{kFusedBlockRows}, g_block_cols{kFusedBlockCols};
}

void set_fused_blocks(int64_t rows, int64_t cols) {
  g_block_rows.store(rows > 0 ? rows : kFusedBlockRows);
  g_block_cols.store(cols > 0 ? cols : kFusedBlockCols);
}

int64_t fused_block_rows(int64_t n) {
  int64_t rows = g_block_rows.load(), threads = get_num_threads();
  int64_t share = (n + threads - 1) / threads;  // a thread's share
  return std::max<int64_t>(1, std::min(rows, share));
}

int64_t fused_block_cols(int64_t cols) { return std::max<int64_t>(1, std::min(g_block_cols.load(), cols)); }

std::string gemm_library() {
  std::string config = scipy_openblas_get_config();  // " OpenBLAS 0.3.34 DYNAMIC_ARCH ..."
  size_t start = config.find_first_not_of(' ');
  size_t word2 = config.find(' ', config.find(' ', start) + 1);  // after "OpenBLAS <version>"
  return config.substr(start, word2 - start) + " " + scipy_openblas_get_corename();
}

}  // namespace hbfast
