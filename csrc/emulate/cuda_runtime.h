// A host stand-in for <cuda_runtime.h>: with it g++ compiles hbfast's CUDA kernels (csrc/cuda/*.cu)
// for the CPU, so that the CUDA code paths run in every CI job, GPU or not (tests/test_cuda_emulated.py
// builds hbfast._C_emu this way; CMake's HBFAST_CUDA_EMULATE=ON too).
//
// The model: one host thread per CUDA thread of a block, the blocks of a grid one after another (so a
// static __shared__ array is a plain static, and each block sees its own); __syncthreads and the warp
// operations (__shfl_*_sync, __ballot_sync, __any_sync, __all_sync) are real barriers among those
// threads. Whatever breaks the CUDA model is a hard failure (emu::Violation, a RuntimeError in Python):
// a launch over the limits (1024 threads per block, grid sizes, 48 KiB of dynamic shared memory
// without the opt-in attribute), threads of a block at different barriers or some gone while the
// others wait (barrier divergence, found by comparing call sites and by deadlock detection), a warp
// operation with a partial mask or in a warp with missing lanes, an index out of a __shared__ array
// (g++ -fsanitize=bounds,object-size, whose handlers are in module.cpp) or out of the dynamic shared
// memory. Dynamic shared memory (HBFAST_DYNAMIC_SHARED) is filled with 0xff bytes before each block.
// Not modelled: the size of the static __shared__ arrays (ptxas refuses over 48 KiB in the GPU build),
// their contents between blocks (they keep the last block's), and the out-of-bounds global memory.
#pragma once
#define HBFAST_CUDA_EMULATION 1
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 800  // so the device branches of common/*.h are the ones compiled and tested
#endif

#include <math.h>  // ::log(float), ::exp(float), ...: the float overloads CUDA's headers declare

#include <atomic>
#include <condition_variable>
#include <csetjmp>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time: a static is shared by the block's threads

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
constexpr int warpSize = 32;
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorNoDevice = 100 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }  // launch errors throw (see emu::launch)
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
inline const char* cudaGetErrorName(cudaError_t e) { return e ? "cudaErrorEmulated" : "cudaSuccess"; }
inline const char* cudaGetErrorString(cudaError_t e) { return e ? "error in the CUDA emulation" : "no error"; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 0; return cudaSuccess; }
inline cudaError_t cudaDriverGetVersion(int* v) { *v = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }  // launches are synchronous

namespace emu {

struct Violation : std::runtime_error { using std::runtime_error::runtime_error; };

constexpr unsigned kFullMask = 0xffffffffu;
constexpr size_t kSharedBytes = 48 << 10;        // dynamic shared memory per block without the opt-in
constexpr size_t kOptInSharedBytes = 163 << 10;  // with it: sm_80's most (sm_90: 227 KiB)

struct Site { const char* op; unsigned line; };  // where a thread waits
struct Barrier { int arrived = 0; uint64_t phase = 0; std::condition_variable cv; };

struct Launch {  // one running launch; every barrier operation holds `mu`
  const char* kernel;
  dim3 grid, block;
  int threads;
  std::mutex mu;
  int running = 0;  // threads of the block not blocked in a barrier
  bool failed = false;
  std::string message;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<Site> site;             // per thread
  std::vector<uint64_t> operand[2];   // per thread: warp-operation operands, by phase parity
  std::vector<unsigned char> shared;  // the dynamic shared memory
};

inline thread_local Launch* current = nullptr;
inline thread_local int tid = 0;           // linear thread index in the block
inline thread_local std::jmp_buf* exit_point = nullptr;

inline std::string where(const Launch& L) {
  return std::string(L.kernel) + " (block " + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + ", thread " + std::to_string(tid) + ")";
}

// Records the first violation of the launch and wakes every waiting thread (which then leaves). Holds `mu`.
inline void record(Launch& L, const std::string& what) {
  if (!L.failed) L.failed = true, L.message = where(L) + ": " + what;
  L.block_barrier.cv.notify_all();
  for (auto& b : L.warp_barriers) b.cv.notify_all();
}

// Leaves the emulated thread: its frames are the kernel's, with nothing to destroy, so a longjmp to
// the launcher is enough (an exception could not cross the sanitizers' nothrow handlers).
[[noreturn]] inline void leave() { std::longjmp(*exit_point, 1); }

// A violation in this thread: the launch fails. Called without `mu`.
[[noreturn]] inline void fail(const std::string& what) {
  if (!current) throw Violation(what);  // (not inside a kernel)
  {
    std::lock_guard<std::mutex> lock(current->mu);
    record(*current, what);
  }
  leave();
}

inline std::string describe(const Launch& L, int first, int count) {
  std::string out;
  for (int i = first; i < first + count; ++i)
    if (i == first || L.site[i].op != L.site[i - 1].op || L.site[i].line != L.site[i - 1].line)
      out += "; thread " + std::to_string(i) + ": " + L.site[i].op +
             (L.site[i].line ? " at line " + std::to_string(L.site[i].line) : "");
  return out;
}

// Waits until threads [first, first + count) all reach barrier b, and checks that they reached it
// from the same call site; when every thread of the block waits and no barrier can complete, that
// is a deadlock. Returns with `lock` held; after a violation (here or in another thread), leaves.
// `end_of_block`: the completing thread refills the dynamic shared memory for the next block.
inline void arrive(std::unique_lock<std::mutex>& lock, Barrier& b, int first, int count, Site site,
                   bool end_of_block = false) {
  Launch& L = *current;
  L.site[tid] = site;
  if (!L.failed) {
    if (++b.arrived == count) {
      for (int i = first; i < first + count; ++i)
        if (L.site[i].op != site.op || L.site[i].line != site.line) {
          record(L, "barrier divergence: the threads of one barrier came from different places" +
                        describe(L, first, count));
          break;
        }
      if (end_of_block) std::memset(L.shared.data(), 0xff, L.shared.size());
      b.arrived = 0, ++b.phase, L.running += count - 1;
      b.cv.notify_all();
    } else if (--L.running == 0) {
      record(L, "barrier divergence (deadlock): not every thread reached the barrier" + describe(L, 0, L.threads));
    } else {
      const uint64_t phase = b.phase;
      b.cv.wait(lock, [&] { return b.phase != phase || L.failed; });
    }
  }
  if (L.failed) {
    lock.unlock();
    leave();
  }
}

inline void syncthreads(unsigned line) {
  std::unique_lock<std::mutex> lock(current->mu);
  arrive(lock, current->block_barrier, 0, current->threads, {"__syncthreads", line});
}

// A warp operation: every lane of the warp gives `bits` and gets pick(the 32 lanes' bits, its lane).
template <class Pick>
uint64_t warp_exchange(const char* op, unsigned line, unsigned mask, uint64_t bits, Pick pick) {
  Launch& L = *current;
  const int warp = tid / 32, lane = tid % 32, lanes = L.threads - warp * 32 < 32 ? L.threads - warp * 32 : 32;
  if (mask != kFullMask) fail(std::string(op) + " at line " + std::to_string(line) + ": partial mask " +
                              std::to_string(mask) + " (only full-warp masks are allowed)");
  if (lanes != 32) fail(std::string(op) + " at line " + std::to_string(line) + ": full mask in a warp of " +
                        std::to_string(lanes) + " threads (blockDim not a multiple of 32)");
  std::unique_lock<std::mutex> lock(L.mu);
  Barrier& b = L.warp_barriers[warp];
  const int parity = static_cast<int>(b.phase & 1);
  L.operand[parity][tid] = bits;
  arrive(lock, b, warp * 32, 32, {op, line});
  return pick(&L.operand[parity][warp * 32], lane);  // (the next operation writes the other parity)
}

template <class T> uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "8 bytes at most");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof v);
  return b;
}
template <class T> T from_bits(uint64_t b) { T v; std::memcpy(&v, &b, sizeof v); return v; }

template <class T>
T shuffle(const char* op, unsigned line, unsigned mask, T v, int width, std::function<int(int)> source) {
  if (width < 1 || width > 32 || (width & (width - 1))) fail(std::string(op) + ": width must be a power of 2 <= 32");
  return from_bits<T>(warp_exchange(op, line, mask, to_bits(v), [&](const uint64_t* lanes, int lane) {
    int src = source(lane), segment = lane / width * width;
    return src >= segment && src < segment + width ? lanes[src] : lanes[lane];  // outside: its own value
  }));
}

inline std::mutex& atomic_mutex() { static std::mutex m; return m; }
template <class T, class F> T atomic_update(T* address, F f) {
  std::lock_guard<std::mutex> lock(atomic_mutex());
  T old = *address;
  *address = f(old);
  return old;
}

// Bounds-checked view of the dynamic shared memory (indexing checks; a conversion to T* does not).
template <class T> struct SharedArray {
  T* data;
  size_t size;
  T& operator[](size_t i) const {
    if (i >= size)
      fail("dynamic shared memory index " + std::to_string(i) + " out of bounds (" + std::to_string(size) +
           " elements)");
    return data[i];
  }
  operator T*() const { return data; }
};
template <class T> SharedArray<T> dynamic_shared() {
  return {reinterpret_cast<T*>(current->shared.data()), current->shared.size() / sizeof(T)};
}

// Runs job(thread index) on n pool threads at once (one per CUDA thread) and waits for all.
class Pool {
 public:
  void run(int n, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> lock(mu_);
    while (static_cast<int>(workers_.size()) < n) {
      workers_.emplace_back([this, i = static_cast<int>(workers_.size())] { loop(i); });
      workers_.back().detach();  // the pool lives as long as the process
    }
    job_ = &job, needed_ = n, done_ = 0, ++generation_;
    start_.notify_all();
    finished_.wait(lock, [&] { return done_ == needed_; });
  }
 private:
  void loop(int i) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(mu_);
      start_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (i >= needed_) continue;
      const std::function<void(int)>* job = job_;
      lock.unlock();
      (*job)(i);
      lock.lock();
      if (++done_ == needed_) finished_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable start_, finished_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  int needed_ = 0, done_ = 0;
  uint64_t generation_ = 0;
};

inline std::mutex& launch_mutex() { static std::mutex m; return m; }  // one launch at a time (one stream)
inline Pool& pool() { static Pool* p = new Pool; return *p; }
inline std::vector<std::pair<const void*, size_t>>& shared_opt_in() {  // (kernel, bytes) of cudaFuncSetAttribute
  static std::vector<std::pair<const void*, size_t>> v;
  return v;
}

inline void check_config(const char* kernel, dim3 g, dim3 b, size_t shared_bytes, const void* fn) {
  auto bad = [&](const std::string& what) { throw Violation(std::string(kernel) + ": invalid launch: " + what); };
  if (!b.x || !b.y || !b.z || !g.x || !g.y || !g.z) bad("a zero grid or block dimension");
  if (b.x > 1024 || b.y > 1024 || b.z > 64 || uint64_t(b.x) * b.y * b.z > 1024) bad("more than 1024 threads per block");
  if (g.x > 2147483647u || g.y > 65535 || g.z > 65535) bad("grid dimensions over (2^31 - 1, 65535, 65535)");
  size_t limit = kSharedBytes;
  for (auto& entry : shared_opt_in()) if (entry.first == fn) limit = entry.second;
  if (shared_bytes > limit)
    bad(std::to_string(shared_bytes) + " bytes of dynamic shared memory, over " + std::to_string(limit));
}

// kernel<<<grid, block, shared_bytes, stream>>>(args) on the host: returns when the grid has run.
template <class Kernel> struct Launcher {
  Kernel* kernel;
  const char* name;
  dim3 grid, block;
  size_t shared_bytes;
  template <class... Args> void operator()(Args&&... args) const {
    check_config(name, grid, block, shared_bytes, reinterpret_cast<const void*>(kernel));
    std::lock_guard<std::mutex> serial(launch_mutex());
    Launch L;
    L.kernel = name, L.grid = grid, L.block = block;
    L.threads = static_cast<int>(block.x * block.y * block.z);
    L.warp_barriers = std::vector<Barrier>((L.threads + 31) / 32);
    L.site.assign(L.threads, Site{"", 0});
    L.operand[0].assign(L.threads, 0), L.operand[1].assign(L.threads, 0);
    L.shared.assign(shared_bytes, 0xff);
    const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
    L.running = L.threads;
    pool().run(L.threads, [&](int t) {
      current = &L, tid = t;
      blockDim = block, gridDim = grid;
      threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
      std::jmp_buf jump;
      exit_point = &jump;
      for (uint64_t n = 0; n < blocks; ++n) {
        blockIdx = {unsigned(n % grid.x), unsigned(n / grid.x % grid.y), unsigned(n / (uint64_t(grid.x) * grid.y))};
        if (setjmp(jump)) break;  // a violation: this thread stops (and so do the others)
        kernel(args...);
        std::unique_lock<std::mutex> lock(L.mu);  // the end of the block: every thread must get here
        arrive(lock, L.block_barrier, 0, L.threads, {"the kernel's end", 0}, true);
      }
      current = nullptr;
    });
    if (L.failed) throw Violation(L.message);
  }
};

template <class Kernel>
Launcher<Kernel> launch(Kernel* kernel, const char* name, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t) {
  return {kernel, name, grid, block, shared_bytes};
}

}  // namespace emu

#define HBFAST_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::emu::launch(kernel, #kernel, grid, block, shared_bytes, stream)
#define HBFAST_DYNAMIC_SHARED(T, name) ::emu::SharedArray<T> name = ::emu::dynamic_shared<T>()

template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || size_t(value) > emu::kOptInSharedBytes)
    return cudaErrorInvalidValue;
  emu::shared_opt_in().push_back({reinterpret_cast<const void*>(kernel), size_t(value)});
  return cudaSuccess;
}

inline void __syncthreads(unsigned line = __builtin_LINE()) { emu::syncthreads(line); }
inline void __syncwarp(unsigned mask = emu::kFullMask, unsigned line = __builtin_LINE()) {
  emu::warp_exchange("__syncwarp", line, mask, 0, [](const uint64_t*, int) { return uint64_t(0); });
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// (`line`: the caller's, by which the emulation tells the lanes' call sites apart)
template <class T> T __shfl_sync(unsigned mask, T v, int src, int width = 32, unsigned line = __builtin_LINE()) {
  return emu::shuffle("__shfl_sync", line, mask, v, width,
                      [&](int lane) { return lane / width * width + (src % width + width) % width; });
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, unsigned line = __builtin_LINE()) {
  return emu::shuffle("__shfl_up_sync", line, mask, v, width, [&](int lane) { return lane - int(delta); });
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, unsigned line = __builtin_LINE()) {
  return emu::shuffle("__shfl_down_sync", line, mask, v, width, [&](int lane) { return lane + int(delta); });
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, unsigned line = __builtin_LINE()) {
  return emu::shuffle("__shfl_xor_sync", line, mask, v, width, [&](int lane) { return lane ^ lane_mask; });
}
inline unsigned __ballot_sync(unsigned mask, int predicate, unsigned line = __builtin_LINE()) {
  return unsigned(emu::warp_exchange("__ballot_sync", line, mask, predicate != 0, [](const uint64_t* lanes, int) {
    uint64_t bits = 0;
    for (int i = 0; i < 32; ++i) bits |= lanes[i] << i;
    return bits;
  }));
}
inline int __any_sync(unsigned mask, int predicate, unsigned line = __builtin_LINE()) {
  return __ballot_sync(mask, predicate, line) != 0;
}
inline int __all_sync(unsigned mask, int predicate, unsigned line = __builtin_LINE()) {
  return __ballot_sync(mask, predicate, line) == emu::kFullMask;
}

// The fused multiply-add intrinsic (one rounding, as on the GPU).
inline float __fmaf_rn(float a, float b, float c) { return __builtin_fmaf(a, b, c); }

// Bit counts (integer intrinsics: no thread interaction).
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }

namespace emu { template <class T> struct same { using type = T; }; }  // (no deduction from the value)
#define HBFAST_EMU_ATOMIC(name, update)                                   \
  template <class T> T name(T* p, typename emu::same<T>::type v) {        \
    return emu::atomic_update(p, [&](T old) { return T(update); });       \
  }
HBFAST_EMU_ATOMIC(atomicAdd, old + v)
HBFAST_EMU_ATOMIC(atomicSub, old - v)
HBFAST_EMU_ATOMIC(atomicExch, (void(old), v))
HBFAST_EMU_ATOMIC(atomicMax, old < v ? v : old)
HBFAST_EMU_ATOMIC(atomicMin, v < old ? v : old)
HBFAST_EMU_ATOMIC(atomicOr, old | v)
HBFAST_EMU_ATOMIC(atomicAnd, old & v)
#undef HBFAST_EMU_ATOMIC
template <class T> T atomicCAS(T* p, typename emu::same<T>::type compare, typename emu::same<T>::type v) {
  return emu::atomic_update(p, [&](T old) { return old == compare ? T(v) : old; });
}

inline unsigned __float_as_uint(float f) { return emu::from_bits<unsigned>(emu::to_bits(f)); }
inline int __float_as_int(float f) { return emu::from_bits<int>(emu::to_bits(f)); }
inline float __uint_as_float(unsigned u) { return emu::from_bits<float>(emu::to_bits(u)); }
inline float __int_as_float(int i) { return emu::from_bits<float>(emu::to_bits(i)); }
inline long long __double_as_longlong(double d) { return emu::from_bits<long long>(emu::to_bits(d)); }
inline double __longlong_as_double(long long i) { return emu::from_bits<double>(emu::to_bits(i)); }
