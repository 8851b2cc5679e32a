// Host emulation of CUDA for machines without a GPU: the vocabulary shared by the kernel
// emulators (emulator.cpp: csrc/attention_hinge/cuda.cu; qp_emulator.cpp: csrc/qp_solve/cuda.cu).
// See emulator.cpp for what is emulated and how.
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define CINA_EMULATE 1
#define CINA_WITH_CUDA 1

// Under AddressSanitizer (tests/emulator/test_emulator_sanitizers.py) the guard bytes after the
// dynamic shared memory are poisoned, so that a read past its end is reported too, not only a
// write.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define CINA_EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define CINA_EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define CINA_EMU_POISON(p, n) ((void)(p), (void)(n))
#define CINA_EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

// ---- CUDA vocabulary -------------------------------------------------------------------------
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

using std::exp2;
using std::log2;
inline float exp2f(float x) { return std::exp2(x); }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline float fmaf(float a, float b, float c) { return std::fma(a, b, c); }

namespace emu {
constexpr size_t kSmemOptinLimit = 232448;  // H100 / H200: 227 KiB per block
constexpr size_t kSmemDefaultLimit = 48 * 1024;  // without cudaFuncSetAttribute
// per kernel, the dynamic shared memory allowed by rt_set_max_dyn_smem (cudaFuncSetAttribute)
inline std::mutex smem_optin_mutex;
inline std::map<const void*, size_t> smem_optin;
template <class R, class... A>
const void* kernel_id(R (*f)(A...)) {
  return reinterpret_cast<const void*>(f);
}
constexpr size_t kGuard = 4096;

struct Block {
  Block(unsigned nthreads, size_t smem_bytes)
      : bar(nthreads), nthreads(nthreads), smem_bytes(smem_bytes) {
    const unsigned nwarps = (nthreads + 31) / 32;
    for (unsigned w = 0; w < nwarps; ++w) {
      const unsigned lanes = std::min(32u, nthreads - 32 * w);
      warp_bar.emplace_back(std::make_unique<std::barrier<>>(lanes));
    }
    xch.resize(nwarps);
    mma.resize(nwarps);
    const size_t total = smem_bytes + kGuard;
    smem = static_cast<unsigned char*>(std::aligned_alloc(128, (total + 127) / 128 * 128));
    refill();
  }
  // the state of a fresh block: shared memory NaN for float and double (guard bytes intact and
  // poisoned), flag 0
  void refill() {
    CINA_EMU_UNPOISON(smem + smem_bytes, kGuard);
    std::memset(smem, 0xFF, smem_bytes + kGuard);
    CINA_EMU_POISON(smem + smem_bytes, kGuard);
    flag.store(0);
  }
  ~Block() {
    CINA_EMU_UNPOISON(smem + smem_bytes, kGuard);
    std::free(smem);
  }
  bool guard_intact() const {
    CINA_EMU_UNPOISON(smem + smem_bytes, kGuard);
    for (size_t i = 0; i < kGuard; ++i)
      if (smem[smem_bytes + i] != 0xFF) return false;
    return true;
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<std::array<uint64_t, 32>> xch;
  struct MmaScratch {
    std::array<std::array<uint32_t, 8>, 32> a, b;
    std::array<std::array<float, 4>, 32> c;
  };
  std::vector<MmaScratch> mma;
  std::atomic<int> flag{0};
  unsigned nthreads;
  size_t smem_bytes;
  unsigned char* smem;
};

thread_local Block* blk = nullptr;
thread_local unsigned tid = 0;

// cp.async (16-byte global -> shared copies): the destination is written twice, when the copy is
// issued (the earliest time a GPU may write it) and again when cp.async.wait_group retires its
// group (the latest), so that ThreadSanitizer sees a read by another thread that is not ordered
// after the wait by a barrier (read-after-write) as well as a copy issued before the barrier that
// protects the buffer's previous readers (write-after-read).  Groups still pending when the
// kernel returns are an error (the shared memory is gone).
struct AsyncCopy {
  void* dst;
  std::array<unsigned char, 16> data;
};
thread_local std::vector<AsyncCopy> async_open;                 // issued, not yet committed
thread_local std::vector<std::vector<AsyncCopy>> async_groups;  // committed, oldest first
inline void cp_async16(void* dst, const void* src) {
  AsyncCopy c{dst, {}};
  std::memcpy(c.data.data(), src, 16);
  std::memcpy(dst, c.data.data(), 16);
  async_open.push_back(c);
}
inline void cp_async_commit() {
  async_groups.push_back(std::move(async_open));
  async_open.clear();
}
inline void cp_async_wait(size_t pending) {
  while (async_groups.size() > pending) {
    for (const AsyncCopy& c : async_groups.front()) std::memcpy(c.dst, c.data.data(), 16);
    async_groups.erase(async_groups.begin());
  }
}
// copies issued but not retired by a wait (an empty committed group needs no wait)
inline bool cp_async_pending() {
  if (!async_open.empty()) return true;
  for (const auto& g : async_groups)
    if (!g.empty()) return true;
  return false;
}

inline void warp_sync() { blk->warp_bar[tid / 32]->arrive_and_wait(); }

template <class F>
void launch(dim3 grid, dim3 block, size_t smem, F f, const void* kernel);
}  // namespace emu

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { emu::blk->bar.arrive_and_wait(); }
inline int __syncthreads_or(int p) {
  __syncthreads();
  if (emu::tid == 0) emu::blk->flag.store(0);
  __syncthreads();
  if (p) emu::blk->flag.store(1);
  __syncthreads();
  const int r = emu::blk->flag.load();
  __syncthreads();
  return r;
}
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_sync(); }
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
  auto& x = emu::blk->xch[emu::tid / 32];
  const unsigned lane = emu::tid % 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  x[lane] = bits;
  emu::warp_sync();
  unsigned src = lane ^ static_cast<unsigned>(lane_mask);
  if ((src / width) != (lane / width)) src = lane;  // outside the segment: own value
  T r;
  std::memcpy(&r, &x[src], sizeof(T));
  emu::warp_sync();
  return r;
}

// lanes of the warp holding the same value (all 32 lanes take part, as the kernels call it)
inline unsigned __match_any_sync(unsigned, int v) {
  auto& x = emu::blk->xch[emu::tid / 32];
  const unsigned lane = emu::tid % 32;
  x[lane] = static_cast<uint64_t>(static_cast<uint32_t>(v));
  emu::warp_sync();
  unsigned m = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (x[l] == x[lane]) m |= 1u << l;
  emu::warp_sync();
  return m;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }

// ---- tensor-core emulation (PTX ISA "Matrix fragments for mma.m16n8k8", .tf32 and .f32) -----
// A (16x8, row): a0:(g, t) a1:(g+8, t) a2:(g, t+4) a3:(g+8, t+4)      g = lane/4, t = lane%4
// B (8x8, col):  b0:(t, g) b1:(t+4, g)                                 (row k, column n)
// C/D (16x8):    c0:(g, 2t) c1:(g, 2t+1) c2:(g+8, 2t) c3:(g+8, 2t+1)
// tf32 operands: the low 13 mantissa bits are ignored by the hardware (truncation); the
// emulator does the same, so a kernel that forgets to round would still be visible in accuracy.
namespace emu {
inline float tf32_trunc(uint32_t bits) {
  bits &= 0xFFFFE000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                             const float (&c)[4]) {
  auto& s = blk->mma[tid / 32];
  const unsigned lane = tid % 32;
  for (int i = 0; i < 4; ++i) s.a[lane][i] = a[i];
  for (int i = 0; i < 2; ++i) s.b[lane][i] = b[i];
  for (int i = 0; i < 4; ++i) s.c[lane][i] = c[i];
  warp_sync();
  float A[16][8], Bm[8][8], C[16][8];
  for (unsigned l = 0; l < 32; ++l) {
    const unsigned g = l / 4, t = l % 4;
    A[g][t] = tf32_trunc(s.a[l][0]);
    A[g + 8][t] = tf32_trunc(s.a[l][1]);
    A[g][t + 4] = tf32_trunc(s.a[l][2]);
    A[g + 8][t + 4] = tf32_trunc(s.a[l][3]);
    Bm[t][g] = tf32_trunc(s.b[l][0]);
    Bm[t + 4][g] = tf32_trunc(s.b[l][1]);
    C[g][2 * t] = s.c[l][0];
    C[g][2 * t + 1] = s.c[l][1];
    C[g + 8][2 * t] = s.c[l][2];
    C[g + 8][2 * t + 1] = s.c[l][3];
  }
  warp_sync();
  const unsigned g = lane / 4, t = lane % 4;
  auto dot = [&](unsigned r, unsigned n) {
    double acc = C[r][n];
    for (int k = 0; k < 8; ++k) acc += static_cast<double>(A[r][k]) * Bm[k][n];
    return static_cast<float>(acc);
  };
  d[0] = dot(g, 2 * t);
  d[1] = dot(g, 2 * t + 1);
  d[2] = dot(g + 8, 2 * t);
  d[3] = dot(g + 8, 2 * t + 1);
}
}  // namespace emu

#define CINA_DEV inline
#define CINA_KERNEL(threads) void
#define CINA_KERNEL_MIN_BLOCKS(threads, blocks) void
#define CINA_DYN_SMEM(name) unsigned char* name = emu::blk->smem
#define CINA_EMU_MMA_TF32(d, a, b, c) emu::mma_m16n8k8_tf32(d, a, b, c)
#define CINA_EMU_CP_ASYNC16(dst, src) emu::cp_async16(dst, src)
#define CINA_EMU_CP_ASYNC_COMMIT() emu::cp_async_commit()
#define CINA_EMU_CP_ASYNC_WAIT(n) emu::cp_async_wait(n)

// 32-bit atomics (blocks run one after the other; threads of a block concurrently)
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }

// ---- launches -----------------------------------------------------------------------------------
#define CINA_LAUNCH(kern, grid, block, smem, stream, ...) \
  emu::launch((grid), (block), (smem), [&]() { kern(__VA_ARGS__); }, emu::kernel_id(kern))

namespace emu {
thread_local std::string launch_error;
// One worker thread per CUDA thread of the block, created once per launch: each runs the blocks of
// the grid one after the other (x fastest), with a block barrier after every block, at which
// thread 0 checks the guard bytes and re-fills the shared memory with NaN for the next block.
// (Creating the threads once per launch instead of once per block makes the emulator several
// times faster, above all under ThreadSanitizer.)
// The launch checks of a GPU: the block size (1024 threads), the grid (y and z at most 65535),
// and the dynamic shared memory (above 48 KiB only after rt_set_max_dyn_smem for this kernel).
template <class F>
void launch(dim3 grid, dim3 block, size_t smem, F f, const void* kernel) {
  if (smem > kSmemOptinLimit) {
    launch_error = "emulator: launch with too much shared memory";
    return;
  }
  if (smem > kSmemDefaultLimit) {
    std::lock_guard<std::mutex> lock(smem_optin_mutex);
    const auto it = smem_optin.find(kernel);
    if (it == smem_optin.end() || it->second < smem) {
      launch_error =
          "emulator: launch with more than 48 KiB of dynamic shared memory without "
          "rt_set_max_dyn_smem (cudaFuncSetAttribute) for this kernel";
      return;
    }
  }
  if (uint64_t(block.x) * block.y * block.z > 1024 || block.z > 64 || grid.y > 65535 ||
      grid.z > 65535 || grid.x > 2147483647u) {
    launch_error = "emulator: launch configuration beyond the GPU's limits";
    return;
  }
  const unsigned nt = block.x * block.y * block.z;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  if (nt == 0 || nblocks == 0) return;
  Block b(nt, smem);
  bool overflow = false;
  std::atomic<bool> async_leak{false};
  std::vector<std::thread> threads;
  threads.reserve(nt);
  for (unsigned t = 0; t < nt; ++t) {
    threads.emplace_back([&, t]() {
      blk = &b;
      tid = t;
      threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      blockDim = block;
      gridDim = grid;
      for (uint64_t k = 0; k < nblocks; ++k) {
        blockIdx =
            dim3(static_cast<unsigned>(k % grid.x), static_cast<unsigned>((k / grid.x) % grid.y),
                 static_cast<unsigned>(k / (uint64_t(grid.x) * grid.y)));
        f();
        if (cp_async_pending()) async_leak = true;
        async_open.clear();
        async_groups.clear();
        b.bar.arrive_and_wait();  // every thread of this block is done
        if (t == 0) {
          if (!b.guard_intact()) overflow = true;
          b.refill();
        }
        b.bar.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
  if (overflow) launch_error = "emulator: shared memory written past the dynamic size";
  if (async_leak) launch_error = "emulator: a thread returned with cp.async copies not waited for";
}
}  // namespace emu

// ---- runtime shim used by the host halves of the kernel files (csrc/common/cuda_rt.h) ---------
// Workspaces come back filled with 0xFF bytes (NaN), so a read of anything the kernels did not
// write poisons the results.  CINA_EMU_SMS steers the SM count (grid / split heuristics),
// CINA_EMU_FREE_BYTES the free memory (to force a small QP column cache in tests).
namespace cina {
namespace cuda_rt {
inline const char* rt_check_launch(const char*) { return nullptr; }
inline int rt_sm_count() {  // an H100 SXM, or CINA_EMU_SMS
  const char* s = std::getenv("CINA_EMU_SMS");
  return s ? std::atoi(s) : 132;
}
inline size_t rt_smem_optin() { return emu::kSmemOptinLimit; }
inline size_t rt_free_memory() {
  const char* s = std::getenv("CINA_EMU_FREE_BYTES");
  return s ? static_cast<size_t>(std::atoll(s)) : (size_t(1) << 30);
}
template <typename Kernel>
inline int rt_blocks_per_sm(Kernel, int, size_t smem) {
  return smem > emu::kSmemOptinLimit ? 0 : 1;
}
template <typename Kernel>
inline const char* rt_set_max_dyn_smem(Kernel kern, size_t bytes) {
  if (bytes > emu::kSmemOptinLimit)
    return "emulator: dynamic shared memory above the H100 opt-in limit";
  std::lock_guard<std::mutex> lock(emu::smem_optin_mutex);
  emu::smem_optin[emu::kernel_id(kern)] = bytes;
  return nullptr;
}
inline const char* rt_malloc(void** p, size_t bytes, void*, const char*) {
  *p = std::malloc(bytes > 0 ? bytes : 1);
  if (*p == nullptr) return "malloc failed";
  std::memset(*p, 0xFF, bytes);
  return nullptr;
}
inline void rt_free(void* p, void*) { std::free(p); }
inline const char* rt_read(void* dst, const void* src, size_t bytes, void*) {
  std::memcpy(dst, src, bytes);
  return nullptr;
}
inline const char* rt_memset(void* p, size_t bytes, void*) {
  std::memset(p, 0, bytes);
  return nullptr;
}
// timing marks: kernels run synchronously here, so a mark is the host clock
struct RtMark {
  std::chrono::steady_clock::time_point t{};
  bool set = false;
};
inline const char* rt_mark(RtMark& m, void*) {
  m.t = std::chrono::steady_clock::now();
  m.set = true;
  return nullptr;
}
inline double rt_ms(const RtMark& a, const RtMark& b) {
  if (!a.set || !b.set) return 0.0;
  return std::chrono::duration<double, std::milli>(b.t - a.t).count();
}
inline void rt_mark_free(RtMark& m) { m.set = false; }
}  // namespace cuda_rt
}  // namespace cina
