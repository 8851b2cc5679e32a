// Host emulation of the CUDA kernels of csrc/qp_solve/cuda.cu (the batched box-QP solver), for
// machines without a GPU.  The kernel file is compiled unmodified as C++ with CINA_EMULATE
// defined, on the CUDA vocabulary of emulator.h (one std::thread per CUDA thread, barriers,
// emulated warp shuffles, NaN-filled shared memory with guard bytes).  The workspace that the
// host half allocates comes back filled with 0xFF bytes (NaN), so a read of anything the kernel
// did not write poisons the results.  Blocks run one after the other (the persistent grid's
// problem counter then hands every problem to the first block; CINA_EMU_SMS / CINA_QP_THREADS
// steer the grid and block sizes).
//
// Built by tests/emulator/_emulator.py and driven by tests/emulator/test_qp_cuda_emulator.py
// through ctypes.
#include "emulator.h"

#include "qp_solve/qp_solve.h"

// (the runtime shim of the host half, cina::cuda_rt::rt_*, is in emulator.h)
#include "qp_solve/cuda.cu"

// ---- C entry points for ctypes ------------------------------------------------------------------
namespace {
template <typename T>
const char* solve(int64_t kind, int64_t S, int64_t N, int64_t D, const T* X, const double* gamma,
                  double scale, const double* lse, int64_t P, const int64_t* src, const bool* mask,
                  const T* sign, const double* qscale, const double* diag_add, const T* p,
                  const T* lo, const T* up, const T* c, const T* d, const T* x0, const double* tol,
                  const int64_t* max_iter, int64_t cache_bytes, T* x, T* nu, T* obj, T* kkt,
                  int64_t* iters, bool* conv) {
  emu::launch_error.clear();
  cina::QPSource<T> s{kind, S, N, D, X, gamma, scale, lse};
  cina::QPProblems<T> pb{P,  N,  src, mask, sign, qscale, diag_add, p,
                         lo, up, c,   d,    x0,   tol,    max_iter};
  cina::QPOptions opt;
  opt.cache_bytes = cache_bytes;
  cina::QPOutputs<T> o{x, nu, obj, kkt, iters, conv};
  const char* e = cina::qp_solve_cuda<T>(s, pb, opt, o, nullptr);
  if (e) return e;
  return emu::launch_error.empty() ? nullptr : emu::launch_error.c_str();
}
template <typename T>
const char* lse(const T* X, const bool* mask, int64_t S, int64_t N, int64_t D, double scale,
                double* out) {
  emu::launch_error.clear();
  const char* e = cina::qp_kernel_lse_cuda<T>(X, mask, S, N, D, scale, out, nullptr);
  if (e) return e;
  return emu::launch_error.empty() ? nullptr : emu::launch_error.c_str();
}
template <typename T>
const char* rowsum(int64_t kind, int64_t S, int64_t N, int64_t D, const T* X, const double* gamma,
                   double scale, const double* lsev, const bool* rowmask, const bool* colmask,
                   double* out) {
  emu::launch_error.clear();
  cina::QPSource<T> s{kind, S, N, D, X, gamma, scale, lsev};
  const char* e = cina::qp_kernel_rowsum_cuda<T>(s, rowmask, colmask, out, nullptr);
  if (e) return e;
  return emu::launch_error.empty() ? nullptr : emu::launch_error.c_str();
}
}  // namespace

#define CINA_QP_EMU_ENTRY(T, SUF)                                                                 \
  const char* emu_qp_solve_##SUF(int64_t kind, int64_t S, int64_t N, int64_t D, const T* X,       \
                                 const double* gamma, double scale, const double* lse, int64_t P, \
                                 const int64_t* src, const bool* mask, const T* sign,             \
                                 const double* qscale, const double* diag_add, const T* p,        \
                                 const T* lo, const T* up, const T* c, const T* d, const T* x0,   \
                                 const double* tol, const int64_t* max_iter, int64_t cache_bytes, \
                                 T* x, T* nu, T* obj, T* kkt, int64_t* iters, bool* conv) {       \
    return solve<T>(kind, S, N, D, X, gamma, scale, lse, P, src, mask, sign, qscale, diag_add, p, \
                    lo, up, c, d, x0, tol, max_iter, cache_bytes, x, nu, obj, kkt, iters, conv);  \
  }                                                                                               \
  const char* emu_qp_lse_##SUF(const T* X, const bool* mask, int64_t S, int64_t N, int64_t D,     \
                               double scale, double* out) {                                       \
    return lse<T>(X, mask, S, N, D, scale, out);                                                  \
  }                                                                                               \
  const char* emu_qp_rowsum_##SUF(int64_t kind, int64_t S, int64_t N, int64_t D, const T* X,      \
                                  const double* gamma, double scale, const double* lsev,          \
                                  const bool* rowmask, const bool* colmask, double* out) {        \
    return rowsum<T>(kind, S, N, D, X, gamma, scale, lsev, rowmask, colmask, out);                \
  }

extern "C" {
CINA_QP_EMU_ENTRY(float, f32)
CINA_QP_EMU_ENTRY(double, f64)
}
