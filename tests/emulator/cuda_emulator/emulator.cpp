// Host emulation of the CUDA kernels of csrc/attention_hinge/cuda.cu, for machines without a GPU.
//
// cuda.cu is compiled as plain C++ with CINA_EMULATE defined.  Every CUDA thread of a block is a
// std::thread; __syncthreads / __syncthreads_or are block barriers, __syncwarp a warp barrier,
// __shfl_xor_sync an exchange through a per-warp buffer between two warp barriers, and the
// inline-PTX tensor-core instructions (mma.sync) are emulated by gathering the fragments of the
// 32 lanes, multiplying the matrices in the layouts that the PTX ISA documents, and scattering the
// result fragments back.  Shared memory is filled with NaN before each block (so a read of
// something never written poisons the results) and followed by guard bytes that are checked
// after the block (overflow of the dynamic shared-memory size).  The opt-in shared-memory limit
// of an H100 (227 KiB) is enforced.  Blocks run one after the other (on one pool of threads per
// launch).
//
// This is a test of the kernels' index logic, synchronisation structure and arithmetic; it is
// not a model of timing or of memory coalescing.  Races are found by building it under
// ThreadSanitizer (tests/emulator/test_emulator_sanitizers.py), not by this build.
// Built by tests/emulator/_emulator.py and driven by tests/emulator/test_cuda_emulator.py through
// ctypes.
#include "emulator.h"

// (the runtime shim of the host half, cina::cuda_rt::rt_*, is in emulator.h)
#include "attention_hinge/cuda.cu"

// ---- C entry points for ctypes ------------------------------------------------------------------
namespace {
template <typename T>
const char* fwd(const T* K, const T* V, const T* W, const T* b, const T* lam, const bool* mask,
                int64_t B, int64_t N, int64_t D, double scale, int64_t loss_kind, int need_aux,
                T* loss, T* out, T* lse, T* A, T* Bk) {
  emu::launch_error.clear();
  const char* e =
      cina::attention_hinge_fwd_cuda<T>(K, V, W, b, lam, mask, {B, N, D}, scale, loss_kind,
                                        need_aux != 0, loss, out, lse, A, Bk, nullptr);
  if (e) return e;
  return emu::launch_error.empty() ? nullptr : emu::launch_error.c_str();
}
template <typename T>
const char* bwd(const T* K, const T* V, const T* W, const T* b, const T* lam, const bool* mask,
                const T* out, const T* lse, const T* A, const T* Bk, const T* gL, const T* gO,
                const T* gLse, int64_t B, int64_t N, int64_t D, double scale, int64_t loss_kind,
                T* dK, T* dV, T* db) {
  emu::launch_error.clear();
  const char* e =
      cina::attention_hinge_bwd_cuda<T>(K, V, W, b, lam, mask, out, lse, A, Bk, gL, gO, gLse,
                                        {B, N, D}, scale, loss_kind, dK, dV, db, nullptr);
  if (e) return e;
  return emu::launch_error.empty() ? nullptr : emu::launch_error.c_str();
}
}  // namespace

extern "C" {
const char* emu_fwd_f32(const float* K, const float* V, const float* W, const float* b,
                        const float* lam, const bool* mask, int64_t B, int64_t N, int64_t D,
                        double scale, int64_t loss_kind, int need_aux, float* loss, float* out,
                        float* lse, float* A, float* Bk) {
  return fwd<float>(K, V, W, b, lam, mask, B, N, D, scale, loss_kind, need_aux, loss, out, lse, A,
                    Bk);
}
const char* emu_fwd_f64(const double* K, const double* V, const double* W, const double* b,
                        const double* lam, const bool* mask, int64_t B, int64_t N, int64_t D,
                        double scale, int64_t loss_kind, int need_aux, double* loss, double* out,
                        double* lse, double* A, double* Bk) {
  return fwd<double>(K, V, W, b, lam, mask, B, N, D, scale, loss_kind, need_aux, loss, out, lse, A,
                     Bk);
}
const char* emu_bwd_f32(const float* K, const float* V, const float* W, const float* b,
                        const float* lam, const bool* mask, const float* out, const float* lse,
                        const float* A, const float* Bk, const float* gL, const float* gO,
                        const float* gLse, int64_t B, int64_t N, int64_t D, double scale,
                        int64_t loss_kind, float* dK, float* dV, float* db) {
  return bwd<float>(K, V, W, b, lam, mask, out, lse, A, Bk, gL, gO, gLse, B, N, D, scale, loss_kind,
                    dK, dV, db);
}
const char* emu_bwd_f64(const double* K, const double* V, const double* W, const double* b,
                        const double* lam, const bool* mask, const double* out, const double* lse,
                        const double* A, const double* Bk, const double* gL, const double* gO,
                        const double* gLse, int64_t B, int64_t N, int64_t D, double scale,
                        int64_t loss_kind, double* dK, double* dV, double* db) {
  return bwd<double>(K, V, W, b, lam, mask, out, lse, A, Bk, gL, gO, gLse, B, N, D, scale,
                     loss_kind, dK, dV, db);
}
}
