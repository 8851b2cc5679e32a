// Host-side CUDA runtime helpers shared by the CUDA files (csrc/attention_hinge/cuda.cu,
// csrc/qp_solve/cuda.cu): the kernel-definition macros, the launch macro and the thin wrappers of
// the CUDA runtime (namespace cina::cuda_rt) through which the host halves allocate workspaces,
// query the device and check launches.  Errors come back as strings, never crashes.
//
// Under CINA_EMULATE (the CPU emulator, tests/emulator/cuda_emulator/emulator.h) the emulator
// defines CINA_DEV, CINA_KERNEL, CINA_KERNEL_MIN_BLOCKS, CINA_DYN_SMEM, CINA_LAUNCH and the
// cina::cuda_rt::rt_* functions before this header is included; only fail() comes from here.
#pragma once

#include <cstddef>
#include <string>

#ifndef CINA_EMULATE
#include <cuda_runtime.h>
#define CINA_DEV __device__ __forceinline__
#define CINA_KERNEL(threads) __global__ void __launch_bounds__(threads)
// with a minimum of resident blocks per SM (caps the registers per thread)
#define CINA_KERNEL_MIN_BLOCKS(threads, blocks) __global__ void __launch_bounds__(threads, blocks)
#define CINA_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define CINA_LAUNCH(kern, grid, block, smem, stream, ...) \
  kern<<<(grid), (block), (smem), static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#endif

namespace cina {
namespace cuda_rt {

// Error strings (returned to the C++ glue, which raises them; valid until the next call on the
// same host thread).
inline const char* fail(const std::string& msg) {
  thread_local std::string last;
  last = msg;
  return last.c_str();
}

#ifndef CINA_EMULATE
inline const char* rt_check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return nullptr;
  return fail(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}
inline const char* rt_check_launch(const char* what) { return rt_check(cudaGetLastError(), what); }
// Stream-ordered workspace allocation; `workspace` names it in the error message.
inline const char* rt_malloc(void** p, size_t bytes, void* stream, const char* workspace) {
  return rt_check(cudaMallocAsync(p, bytes, static_cast<cudaStream_t>(stream)),
                  (std::string("cudaMallocAsync (") + workspace + ")").c_str());
}
inline void rt_free(void* p, void* stream) {
  if (p != nullptr) cudaFreeAsync(p, static_cast<cudaStream_t>(stream));
}
inline const char* rt_memset(void* p, size_t bytes, void* stream) {
  return rt_check(cudaMemsetAsync(p, 0, bytes, static_cast<cudaStream_t>(stream)),
                  "cudaMemsetAsync");
}
// Blocking copy of a few bytes device -> host (waits for the work queued on `stream` before it).
inline const char* rt_read(void* dst, const void* src, size_t bytes, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (const char* e =
          rt_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync"))
    return e;
  return rt_check(cudaStreamSynchronize(st), "cudaStreamSynchronize");
}
inline int rt_sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    cudaGetLastError();  // clear
    return 132;
  }
  return n;
}
// the most dynamic shared memory a block may opt in to (cudaFuncSetAttribute)
inline size_t rt_smem_optin() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
      v <= 0) {
    cudaGetLastError();
    return 48 * 1024;
  }
  return static_cast<size_t>(v);
}
inline size_t rt_free_memory() {
  size_t fr = 0, tot = 0;
  if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
    cudaGetLastError();
    return size_t(1) << 30;
  }
  return fr;
}
template <typename Kernel>
inline int rt_blocks_per_sm(Kernel kern, int threads, size_t smem) {
  int nb = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, kern, threads, smem) != cudaSuccess ||
      nb <= 0) {
    cudaGetLastError();
    return 1;
  }
  return nb;
}
template <typename Kernel>
inline const char* rt_set_max_dyn_smem(Kernel kern, size_t bytes) {
  return rt_check(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)),
                  "cudaFuncSetAttribute (dynamic shared memory; this GPU has too little?)");
}
// A point in the work queued on a stream, for timing diagnostics (CINA_QP_WS_STATS): rt_mark
// records it (creating the event on first use), rt_ms waits for `b` and returns the milliseconds
// from `a` to `b` (0 when either is missing), rt_mark_free releases it.
struct RtMark {
  cudaEvent_t ev = nullptr;
};
inline const char* rt_mark(RtMark& m, void* stream) {
  if (m.ev == nullptr)
    if (const char* e = rt_check(cudaEventCreate(&m.ev), "cudaEventCreate")) return e;
  return rt_check(cudaEventRecord(m.ev, static_cast<cudaStream_t>(stream)), "cudaEventRecord");
}
inline double rt_ms(const RtMark& a, const RtMark& b) {
  float ms = 0.0f;
  if (a.ev == nullptr || b.ev == nullptr || cudaEventSynchronize(b.ev) != cudaSuccess ||
      cudaEventElapsedTime(&ms, a.ev, b.ev) != cudaSuccess) {
    cudaGetLastError();
    return 0.0;
  }
  return ms;
}
inline void rt_mark_free(RtMark& m) {
  if (m.ev != nullptr) cudaEventDestroy(m.ev);
  m.ev = nullptr;
}
#endif

}  // namespace cuda_rt
}  // namespace cina
