// CUDA implementation of the fused attention + hinge operator (contract in attention_hinge.h).
//
// Design (kernels.md §1; the CPU twin is csrc/attention_hinge/cpu.cpp, same semantics):
//
// * One "pass" kernel, templated on the element type T (float: fp32 accumulation; double: fp64),
//   on the padded feature width DP (16, 32, 64 or 128: D is zero-padded to DP in shared memory)
//   and on the mode (forward without auxiliaries, forward with A/Bk, backward column pass).
// * Grid: one thread block per (dataset, tile of kBM = 64 rows), flattened into blockIdx.x.
//   256 threads = 16 row groups (ty) x 16 lanes (tx).  The block's 64 own rows are staged in
//   shared memory once; the other units of the dataset are streamed in tiles of kBN = 64
//   columns (keys staged in shared memory).  Thread (ty, tx) computes the 4 x 4 scores of rows
//   ty*4 .. ty*4+3 and columns tx, tx+16, tx+32, tx+48, so each row lives in the 16 lanes of one
//   half-warp: row maxima and sums are half-warp shuffles, no shared-memory reductions.
// * Forward: online softmax in the log2 domain (scores pre-multiplied by scale*log2(e), one FMA
//   per score), per-lane partial sums l, o (kept in double for float), merged at the end by a
//   fixed butterfly -> deterministic.  With need_aux, the tile probabilities go through a
//   warp-private shared buffer and the same threads accumulate A = P (v*K) and Bk = P K for
//   their rows (4 rows x DP/16 features per thread).  Nothing of size N x N exists anywhere.
// * Backward: a prep kernel turns the per-unit inputs into (g, delta, -lse*log2(e), gL c o)
//   (a B*N workspace from the stream-ordered allocator), then the column pass: the block's 64
//   units play j, streamed units play i, P_ij = exp2(s_ij*scale*log2e - lse_i*log2e) <= 1 (no
//   running max needed), C1_j = sum_i P_ij g_i k_i, C2_j = sum_i P_ij delta_i k_i,
//   sum_i P_ij g_i; dK, dV are written once per unit by the block that owns it (no atomics).
// * Masks: arbitrary bool masks.  Masked columns get a -inf score (zero key, zero value), and a
//   column tile with no valid unit is skipped after reading its 64 mask bytes (so prefix masks /
//   variable lengths cost nothing past each dataset's last unit); a row tile with no valid unit
//   only writes zeros.  Padded rows get out = lse = 0, A = Bk = 0, dK = dV = 0.
// * Loss and db: one block per dataset, fixed-order tree reductions in double.
// * Any N (grid of B * ceil(N / 64) blocks), 1 <= D <= 128 (D > 128 is refused with a message).
//
// The file is pure CUDA (no torch headers).  It is also compiled on the host, with
// CINA_EMULATE defined, by tests/cuda_emulator/emulator.cpp, which runs these very kernels with
// one std::thread per CUDA thread so that the index logic is tested without a GPU.
#ifndef CINA_WITH_CUDA
#define CINA_WITH_CUDA 1
#endif
#include "attention_hinge/attention_hinge.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#ifndef CINA_EMULATE
#include <cuda_runtime.h>
#define CINA_DEV __device__ __forceinline__
#define CINA_KERNEL(threads) __global__ void __launch_bounds__(threads)
#define CINA_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif
// (under CINA_EMULATE the emulator defines CINA_DEV, CINA_KERNEL, CINA_DYN_SMEM, dim3, float4,
//  double2, float2, threadIdx/blockIdx/..., __syncthreads, __syncthreads_or, __syncwarp,
//  __shfl_xor_sync, the cina::cuda_detail::rt_* functions and CINA_LAUNCH before including us)

namespace cina {
namespace cuda_detail {

// ---------------------------------------------------------------------------------------------
// error strings (returned to csrc/ops.cpp, which raises them; valid until the next call on the
// same host thread)

inline const char* fail(const std::string& msg) {
  thread_local std::string last;
  last = msg;
  return last.c_str();
}

}  // namespace cuda_detail
}  // namespace cina

#ifndef CINA_EMULATE
namespace cina {
namespace cuda_detail {

inline const char* rt_check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return nullptr;
  return fail(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}
inline const char* rt_check_launch(const char* what) { return rt_check(cudaGetLastError(), what); }
inline const char* rt_malloc(void** p, size_t bytes, void* stream) {
  return rt_check(cudaMallocAsync(p, bytes, static_cast<cudaStream_t>(stream)),
                  "cudaMallocAsync (backward workspace)");
}
inline void rt_free(void* p, void* stream) {
  if (p != nullptr) cudaFreeAsync(p, static_cast<cudaStream_t>(stream));
}
inline const char* rt_memset(void* p, size_t bytes, void* stream) {
  return rt_check(cudaMemsetAsync(p, 0, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync");
}
template <typename Kernel>
inline const char* rt_set_max_dyn_smem(Kernel kern, size_t bytes) {
  return rt_check(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)),
                  "cudaFuncSetAttribute (dynamic shared memory; this GPU has too little?)");
}

}  // namespace cuda_detail
}  // namespace cina
#define CINA_LAUNCH(kern, grid, block, smem, stream, ...) \
  kern<<<(grid), (block), (smem), static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#endif

namespace cina {
namespace cuda_detail {

constexpr int kBM = 64;        // own rows per block
constexpr int kBN = 64;        // streamed units per tile
constexpr int kThreads = 256;  // 16 row groups x 16 lanes
constexpr int kRedThreads = 256;
constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;

enum PassMode : int { kFwdPlain = 0, kFwdAux = 1, kBwd = 2 };

// Per-unit scalars of the backward (masked units: g = dl = co = 0, bias = -inf).
template <typename T>
struct alignas(4 * sizeof(T)) UnitBwd {
  T g;     // gL (u + c v) + gO
  T dl;    // delta = g o - e
  T bias;  // -lse * log2(e): the column term of P_ij = exp2(s_ij * scale * log2e + bias_i)
  T co;    // gL c o  (the explicit term of dV)
};

// ---------------------------------------------------------------------------------------------
// small device helpers

CINA_DEV float dexp2(float x) { return exp2f(x); }
CINA_DEV double dexp2(double x) { return exp2(x); }
CINA_DEV float dmax(float a, float b) { return fmaxf(a, b); }
CINA_DEV double dmax(double a, double b) { return fmax(a, b); }
CINA_DEV float dfma(float a, float b, float c) { return fmaf(a, b, c); }
CINA_DEV double dfma(double a, double b, double c) { return fma(a, b, c); }

template <typename T>
CINA_DEV T neg_inf() {
  return -static_cast<T>(INFINITY);
}

// sign(x) exp(log_c + log|x|): c * x with c = exp(log_c), never inf * 0 (cpu.cpp's twin).
CINA_DEV double scaled_product(double log_c, double x) {
  if (x == 0.0) return 0.0;
  return copysign(exp(log_c + log(fabs(x))), x);
}

// 4 contiguous T from 16-byte aligned shared memory.
CINA_DEV void ld4(const float* p, float (&v)[4]) {
  const float4 x = *reinterpret_cast<const float4*>(p);
  v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
}
CINA_DEV void ld4(const double* p, double (&v)[4]) {
  const double2 x = *reinterpret_cast<const double2*>(p);
  const double2 y = *reinterpret_cast<const double2*>(p + 2);
  v[0] = x.x; v[1] = x.y; v[2] = y.x; v[3] = y.y;
}
CINA_DEV void st4(float* p, float a, float b, float c, float d) {
  float4 x; x.x = a; x.y = b; x.z = c; x.w = d;
  *reinterpret_cast<float4*>(p) = x;
}
CINA_DEV void st4(double* p, double a, double b, double c, double d) {
  double2 x; x.x = a; x.y = b;
  double2 y; y.x = c; y.y = d;
  *reinterpret_cast<double2*>(p) = x;
  *reinterpret_cast<double2*>(p + 2) = y;
}
// W contiguous T (W = 1, 2 or 4), aligned to W * sizeof(T).
template <int W, typename T>
CINA_DEV void ldw(const T* p, T* v) {
  if constexpr (W == 4) {
    T t[4];
    ld4(p, t);
    v[0] = t[0]; v[1] = t[1]; v[2] = t[2]; v[3] = t[3];
  } else if constexpr (W == 2) {
    v[0] = p[0];
    v[1] = p[1];
  } else {
    v[0] = p[0];
  }
}

// butterfly over the 16 lanes of a half-warp (all 32 lanes participate; fixed order)
template <typename T>
CINA_DEV T halfwarp_max(T v) {
#pragma unroll
  for (int m = 8; m >= 1; m >>= 1) v = dmax(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}
template <typename T>
CINA_DEV T halfwarp_sum(T v) {
#pragma unroll
  for (int m = 8; m >= 1; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// fixed-order block sum (blockDim.x == kRedThreads); every thread gets the result
CINA_DEV double block_sum(double v, double* red) {
  const int t = threadIdx.x;
  red[t] = v;
  __syncthreads();
#pragma unroll
  for (int s = kRedThreads / 2; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  const double r = red[0];
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------------------------------------
// the pass kernel

template <typename T>
struct PassArgs {
  const T* K;
  const T* V;
  const bool* mask;
  const UnitBwd<T>* unit;  // backward only
  const T* A_in;           // backward only: forward auxiliaries
  const T* Bk_in;
  T* out;  // forward outputs
  T* lse;
  T* A;
  T* Bk;
  T* dK;  // backward outputs
  T* dV;
  int64_t N;
  int64_t row_tiles;
  int D;
  T sl2;    // scale * log2(e)
  T scale;  // backward: the factor of dK
};

// d index of the k-th accumulator column of lane tx (k < DP/16): vectors of VW consecutive
// features, lanes interleaved per vector so that a warp's loads of one key row are contiguous.
template <int DP>
CINA_DEV int acc_col(int k, int tx) {
  constexpr int TD = DP / 16;
  constexpr int VW = TD < 4 ? TD : 4;
  return (k / VW) * (16 * VW) + tx * VW + (k % VW);
}

template <typename T, int DP, int MODE>
constexpr size_t pass_smem_bytes() {
  constexpr int LD = DP + 4;
  constexpr bool kAcc = MODE != kFwdPlain;
  return sizeof(T) * (size_t(kBM) * LD + size_t(kBN) * LD + (kAcc ? size_t(8) * kBN * 8 : 0) +
                      3 * size_t(kBN)) +
         sizeof(int) * size_t(kBM + kBN);
}

template <typename T, int DP, int MODE>
CINA_KERNEL(kThreads) attn_pass_kernel(const PassArgs<T> a) {
  constexpr int LD = DP + 4;  // shared row stride (keeps 16-byte alignment, spreads banks)
  constexpr bool kAcc = MODE != kFwdPlain;
  constexpr int TD = DP / 16;  // accumulator features per lane
  constexpr int VW = TD < 4 ? TD : 4;

  CINA_DYN_SMEM(smem_raw);
  T* Kr = reinterpret_cast<T*>(smem_raw);  // [kBM][LD] own rows
  T* Kc = Kr + kBM * LD;                   // [kBN][LD] streamed tile
  T* Ps = Kc + kBN * LD;                   // [8 warps][kBN][8 rows] probabilities (kAcc)
  T* cbias = Ps + (kAcc ? 8 * kBN * 8 : 0);  // [kBN] additive score term (0 / -inf / -lse)
  T* ca = cbias + kBN;                        // [kBN] v (forward) or g (backward)
  T* cb = ca + kBN;                           // [kBN] delta (backward)
  int* rval = reinterpret_cast<int*>(cb + kBN);  // [kBM] own row valid
  int* cval = rval + kBM;                        // [kBN] streamed unit valid

  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4, warp = tid >> 5, hw = ty & 1;
  const int64_t N = a.N;
  const int D = a.D;
  const int64_t blk = blockIdx.x;
  const int64_t bi = blk / a.row_tiles;
  const int64_t r0 = (blk - bi * a.row_tiles) * kBM;
  const int64_t base = bi * N;  // first unit of the dataset
  const int64_t nrows = (N - r0 < kBM) ? (N - r0) : kBM;

  int my_valid = 0;
  if (tid < kBM) {
    my_valid = (tid < nrows && a.mask[base + r0 + tid]) ? 1 : 0;
    rval[tid] = my_valid;
  }
  if (!__syncthreads_or(my_valid)) {
    // no valid row in this tile: zeros, nothing else
    for (int64_t idx = tid; idx < nrows * D; idx += kThreads) {
      const int64_t e = (base + r0) * D + idx;
      if constexpr (MODE == kBwd) {
        a.dK[e] = T(0);
      } else if constexpr (MODE == kFwdAux) {
        a.A[e] = T(0);
        a.Bk[e] = T(0);
      }
    }
    for (int64_t r = tid; r < nrows; r += kThreads) {
      const int64_t e = base + r0 + r;
      if constexpr (MODE == kBwd) {
        a.dV[e] = T(0);
      } else {
        a.out[e] = T(0);
        a.lse[e] = T(0);
      }
    }
    return;
  }

  // own rows (zero keys for padded / out-of-range rows: finite, never written back)
  for (int idx = tid; idx < kBM * DP; idx += kThreads) {
    const int r = idx / DP, d = idx % DP;
    T v = T(0);
    if (d < D && rval[r]) v = a.K[(base + r0 + r) * D + d];
    Kr[r * LD + d] = v;
  }

  T m[4];
  double l[4], o[4];  // forward: row sum and sum P v (per lane); backward: o = sum_i P_ij g_i
  T acc1[4][TD], acc2[4][TD];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = neg_inf<T>();
    l[i] = 0.0;
    o[i] = 0.0;
#pragma unroll
    for (int k = 0; k < TD; ++k) {
      acc1[i][k] = T(0);
      acc2[i][k] = T(0);
    }
  }

  for (int64_t c0 = 0; c0 < N; c0 += kBN) {
    __syncthreads();  // the previous tile's Kc / column data / Ps are no longer read
    int cv = 0;
    if (tid < kBN) {
      const int64_t col = c0 + tid;
      T bias = neg_inf<T>(), va = T(0), vb = T(0);
      if (col < N && a.mask[base + col]) {
        cv = 1;
        if constexpr (MODE == kBwd) {
          const UnitBwd<T> u = a.unit[base + col];
          bias = u.bias;
          va = u.g;
          vb = u.dl;
        } else {
          bias = T(0);
          va = a.V[base + col];
        }
      }
      cbias[tid] = bias;
      ca[tid] = va;
      cb[tid] = vb;
      cval[tid] = cv;
    }
    if (!__syncthreads_or(cv)) continue;  // block-uniform: the whole tile is padding

    for (int idx = tid; idx < kBN * DP; idx += kThreads) {
      const int c = idx / DP, d = idx % DP;
      T v = T(0);
      if (d < D && cval[c]) v = a.K[(base + c0 + c) * D + d];
      Kc[c * LD + d] = v;
    }
    __syncthreads();

    // scores: rows ty*4+i, columns tx+16j
    T s[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = T(0);
#pragma unroll
    for (int d = 0; d < DP; d += 4) {
      T q[4][4], k[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) ld4(Kr + (ty * 4 + i) * LD + d, q[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j) ld4(Kc + (tx + 16 * j) * LD + d, k[j]);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[i][j] = dfma(q[i][e], k[j][e], s[i][j]);
    }
    T cav[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const T bj = cbias[tx + 16 * j];
      cav[j] = ca[tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) s[i][j] = dfma(s[i][j], a.sl2, bj);  // log2 units
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (MODE == kBwd) {
        T os = T(0);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const T p = dexp2(s[i][j]);  // exp(s_ij - lse_i) <= 1
          s[i][j] = p;
          os = dfma(p, cav[j], os);
        }
        o[i] += static_cast<double>(os);
      } else {
        T mx = dmax(dmax(s[i][0], s[i][1]), dmax(s[i][2], s[i][3]));
        mx = halfwarp_max(mx);
        const T m_new = dmax(m[i], mx);
        // the tile holds a valid column, so m_new is finite; guard anyway (no -inf - -inf)
        const T m_ref = (m_new == neg_inf<T>()) ? T(0) : m_new;
        const T alpha = (m[i] == m_new) ? T(1) : dexp2(m[i] - m_ref);  // 0 on the first tile
        T ls = T(0), os = T(0);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const T p = dexp2(s[i][j] - m_ref);
          s[i][j] = p;
          ls += p;
          os = dfma(p, cav[j], os);
        }
        l[i] = l[i] * static_cast<double>(alpha) + static_cast<double>(ls);
        o[i] = o[i] * static_cast<double>(alpha) + static_cast<double>(os);
        m[i] = m_new;
        if constexpr (kAcc) {
#pragma unroll
          for (int k = 0; k < TD; ++k) {
            acc1[i][k] *= alpha;
            acc2[i][k] *= alpha;
          }
        }
      }
    }

    if constexpr (kAcc) {
      // P of the warp's 8 rows (row hw*4+i of the warp) -> shared, then P @ [a K, b K]
      T* Pw = Ps + warp * (kBN * 8);
#pragma unroll
      for (int j = 0; j < 4; ++j) st4(Pw + (tx + 16 * j) * 8 + hw * 4, s[0][j], s[1][j], s[2][j], s[3][j]);
      __syncwarp();
#pragma unroll 4
      for (int c = 0; c < kBN; ++c) {
        T pv[4];
        ld4(Pw + c * 8 + hw * 4, pv);
        const T va = ca[c];
        const T vb = (MODE == kBwd) ? cb[c] : T(1);
        T kk[TD];
#pragma unroll
        for (int k0 = 0; k0 < TD; k0 += VW) ldw<VW>(Kc + c * LD + acc_col<DP>(k0, tx), kk + k0);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const T pa = pv[i] * va, pb = pv[i] * vb;
#pragma unroll
          for (int k = 0; k < TD; ++k) {
            acc1[i][k] = dfma(pa, kk[k], acc1[i][k]);
            acc2[i][k] = dfma(pb, kk[k], acc2[i][k]);
          }
        }
      }
    }
  }

  // write-back: rows ty*4+i; the 16 lanes of the half-warp hold partial sums of each row
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const double lt = halfwarp_sum(l[i]);
    const double ot = halfwarp_sum(o[i]);
    const int r = ty * 4 + i;
    if (r >= nrows) continue;
    const bool valid = rval[r] != 0;
    const int64_t e = base + r0 + r;
    if constexpr (MODE == kBwd) {
      UnitBwd<T> u{T(0), T(0), T(0), T(0)};
      T vj = T(0);
      if (valid) {
        u = a.unit[e];
        vj = a.V[e];
      }
      if (tx == 0) a.dV[e] = valid ? T(static_cast<T>(ot) + u.co) : T(0);
#pragma unroll
      for (int k = 0; k < TD; ++k) {
        const int d = acc_col<DP>(k, tx);
        if (d < D) {
          T val = T(0);
          if (valid) {
            const T query_side = u.g * a.A_in[e * D + d] - u.dl * a.Bk_in[e * D + d];
            const T key_side = vj * acc1[i][k] - acc2[i][k];
            val = a.scale * (query_side + key_side);
          }
          a.dK[e * D + d] = val;
        }
      }
    } else {
      if (tx == 0) {
        a.out[e] = valid ? static_cast<T>(ot / lt) : T(0);
        a.lse[e] = valid ? static_cast<T>((static_cast<double>(m[i]) + log2(lt)) * kLn2) : T(0);
      }
      if constexpr (kAcc) {
        const T inv = valid ? static_cast<T>(1.0 / lt) : T(0);
#pragma unroll
        for (int k = 0; k < TD; ++k) {
          const int d = acc_col<DP>(k, tx);
          if (d < D) {
            a.A[e * D + d] = valid ? acc1[i][k] * inv : T(0);
            a.Bk[e * D + d] = valid ? acc2[i][k] * inv : T(0);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// per-dataset loss (one block per dataset), backward prep (elementwise) and db (per dataset)

template <typename T>
CINA_KERNEL(kRedThreads) loss_kernel(const T* V, const T* W, const T* b, const T* lam,
                                     const bool* mask, const T* out, const T* lse, int64_t N,
                                     int loss_kind, T* loss) {
  CINA_DYN_SMEM(smem_raw);
  double* red = reinterpret_cast<double*>(smem_raw);
  const int64_t bi = blockIdx.x;
  const double log_half_lam = log(static_cast<double>(lam[bi]) / 2.0);
  const double bb = static_cast<double>(b[bi]);
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < N; j += kRedThreads) {
    const int64_t i = bi * N + j;
    if (!mask[i]) continue;
    const double oi = static_cast<double>(out[i]);
    const double r = 1.0 - static_cast<double>(W[i]) * (oi + bb);
    const double rp = r > 0.0 ? r : 0.0;
    const double hinge = loss_kind == kHinge ? rp : 0.5 * rp * rp;
    const double pen = scaled_product(static_cast<double>(lse[i]) + log_half_lam, static_cast<double>(V[i]) * oi);
    acc += hinge + pen;
  }
  const double total = block_sum(acc, red);
  if (threadIdx.x == 0) loss[bi] = static_cast<T>(total);
}

template <typename T>
CINA_KERNEL(256) bwd_prep_kernel(const T* V, const T* W, const T* b, const T* lam, const bool* mask,
                                 const T* out, const T* lse, const T* g_loss, const T* g_out,
                                 const T* g_lse, int64_t total, int64_t N, int loss_kind,
                                 UnitBwd<T>* unit) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    UnitBwd<T> u{T(0), T(0), neg_inf<T>(), T(0)};
    if (mask[i]) {
      const int64_t bi = i / N;
      const double gL = static_cast<double>(g_loss[bi]);
      const double oi = static_cast<double>(out[i]), vi = static_cast<double>(V[i]);
      const double wi = static_cast<double>(W[i]);
      const double r = 1.0 - wi * (oi + static_cast<double>(b[bi]));
      const double uu = loss_kind == kHinge ? (r > 0.0 ? -wi : 0.0) : -wi * (r > 0.0 ? r : 0.0);
      const double log_c = static_cast<double>(lse[i]) + log(static_cast<double>(lam[bi]) / 2.0);
      const double g = gL * (uu + scaled_product(log_c, vi)) + static_cast<double>(g_out[i]);
      const double ee = gL * scaled_product(log_c, vi * oi) + static_cast<double>(g_lse[i]);
      u.g = static_cast<T>(g);
      u.dl = static_cast<T>(g * oi - ee);
      u.bias = static_cast<T>(-static_cast<double>(lse[i]) * kLog2e);
      u.co = static_cast<T>(gL * scaled_product(log_c, oi));
    }
    unit[i] = u;
  }
}

template <typename T>
CINA_KERNEL(kRedThreads) db_kernel(const T* W, const T* b, const bool* mask, const T* out,
                                   const T* g_loss, int64_t N, int loss_kind, T* db) {
  CINA_DYN_SMEM(smem_raw);
  double* red = reinterpret_cast<double*>(smem_raw);
  const int64_t bi = blockIdx.x;
  const double gL = static_cast<double>(g_loss[bi]);
  const double bb = static_cast<double>(b[bi]);
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < N; j += kRedThreads) {
    const int64_t i = bi * N + j;
    if (!mask[i]) continue;
    const double wi = static_cast<double>(W[i]);
    const double r = 1.0 - wi * (static_cast<double>(out[i]) + bb);
    const double uu = loss_kind == kHinge ? (r > 0.0 ? -wi : 0.0) : -wi * (r > 0.0 ? r : 0.0);
    acc += gL * uu;
  }
  const double total = block_sum(acc, red);
  if (threadIdx.x == 0) db[bi] = static_cast<T>(total);
}

// ---------------------------------------------------------------------------------------------
// host side

template <typename T, int DP, int MODE>
const char* launch_pass(const PassArgs<T>& args, int64_t B, void* stream) {
  auto kern = &attn_pass_kernel<T, DP, MODE>;
  constexpr size_t smem = pass_smem_bytes<T, DP, MODE>();
  if (smem > 48 * 1024) {
    if (const char* e = rt_set_max_dyn_smem(kern, smem)) return e;
  }
  const int64_t blocks = B * args.row_tiles;
  if (blocks > 2147483647LL) return fail("cina attention_hinge (CUDA): B * ceil(N / 64) exceeds 2^31 - 1 blocks");
  CINA_LAUNCH(kern, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem, stream, args);
  return rt_check_launch("cina attention_hinge (CUDA): pass kernel launch");
}

template <typename T, int MODE>
const char* dispatch_pass(const PassArgs<T>& args, int64_t B, void* stream) {
  if (args.D <= 16) return launch_pass<T, 16, MODE>(args, B, stream);
  if (args.D <= 32) return launch_pass<T, 32, MODE>(args, B, stream);
  if (args.D <= 64) return launch_pass<T, 64, MODE>(args, B, stream);
  return launch_pass<T, 128, MODE>(args, B, stream);
}

inline const char* check_shape(AttentionHingeShape s, int64_t loss_kind) {
  if (s.D < 1 || s.D > 128)
    return fail("cina attention_hinge (CUDA): the CUDA kernels support 1 <= D <= 128 features, got D = " +
                std::to_string(s.D) + " (reduce the key dimension or use the CPU / reference backend)");
  if (s.B < 0 || s.N < 0) return fail("cina attention_hinge (CUDA): negative size");
  if (loss_kind != kHinge && loss_kind != kSquaredHinge)
    return fail("cina attention_hinge (CUDA): loss_kind must be 0 (hinge) or 1 (squared hinge)");
  return nullptr;
}

}  // namespace cuda_detail

template <typename T>
const char* attention_hinge_fwd_cuda(const T* K, const T* V, const T* W, const T* b, const T* lam,
                                     const bool* mask, AttentionHingeShape shape, double scale,
                                     int64_t loss_kind, bool need_aux, T* loss, T* out, T* lse,
                                     T* A, T* Bk, void* stream) {
  using namespace cuda_detail;
  if (const char* e = check_shape(shape, loss_kind)) return e;
  const int64_t B = shape.B, N = shape.N;
  if (B == 0) return nullptr;
  if (N == 0) return rt_memset(loss, sizeof(T) * static_cast<size_t>(B), stream);

  PassArgs<T> args{};
  args.K = K;
  args.V = V;
  args.mask = mask;
  args.out = out;
  args.lse = lse;
  args.A = A;
  args.Bk = Bk;
  args.N = N;
  args.row_tiles = (N + kBM - 1) / kBM;
  args.D = static_cast<int>(shape.D);
  args.sl2 = static_cast<T>(scale * kLog2e);
  args.scale = static_cast<T>(scale);
  const char* err = need_aux ? dispatch_pass<T, kFwdAux>(args, B, stream)
                             : dispatch_pass<T, kFwdPlain>(args, B, stream);
  if (err) return err;

  if (B > 2147483647LL) return fail("cina attention_hinge (CUDA): B exceeds 2^31 - 1");
  auto lk = &loss_kernel<T>;
  CINA_LAUNCH(lk, dim3(static_cast<unsigned>(B)), dim3(kRedThreads), kRedThreads * sizeof(double), stream,
              V, W, b, lam, mask, out, lse, N, static_cast<int>(loss_kind), loss);
  return rt_check_launch("cina attention_hinge (CUDA): loss kernel launch");
}

template <typename T>
const char* attention_hinge_bwd_cuda(const T* K, const T* V, const T* W, const T* b,
                                     const T* lam, const bool* mask, const T* out, const T* lse,
                                     const T* A, const T* Bk, const T* g_loss, const T* g_out,
                                     const T* g_lse, AttentionHingeShape shape, double scale,
                                     int64_t loss_kind, T* dK, T* dV, T* db, void* stream) {
  using namespace cuda_detail;
  if (const char* e = check_shape(shape, loss_kind)) return e;
  const int64_t B = shape.B, N = shape.N;
  if (B == 0) return nullptr;
  if (N == 0) return rt_memset(db, sizeof(T) * static_cast<size_t>(B), stream);
  if (B > 2147483647LL) return fail("cina attention_hinge (CUDA): B exceeds 2^31 - 1");

  const int64_t total = B * N;
  void* ws = nullptr;
  if (const char* e = rt_malloc(&ws, sizeof(UnitBwd<T>) * static_cast<size_t>(total), stream)) return e;
  UnitBwd<T>* unit = static_cast<UnitBwd<T>*>(ws);

  const char* err = nullptr;
  {
    int64_t blocks = (total + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    auto pk = &bwd_prep_kernel<T>;
    CINA_LAUNCH(pk, dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream, V, W, b, lam, mask, out, lse,
                g_loss, g_out, g_lse, total, N, static_cast<int>(loss_kind), unit);
    err = rt_check_launch("cina attention_hinge_bwd (CUDA): prep kernel launch");
  }
  if (!err) {
    auto dk = &db_kernel<T>;
    CINA_LAUNCH(dk, dim3(static_cast<unsigned>(B)), dim3(kRedThreads), kRedThreads * sizeof(double), stream,
                W, b, mask, out, g_loss, N, static_cast<int>(loss_kind), db);
    err = rt_check_launch("cina attention_hinge_bwd (CUDA): db kernel launch");
  }
  if (!err) {
    PassArgs<T> args{};
    args.K = K;
    args.V = V;
    args.mask = mask;
    args.unit = unit;
    args.A_in = A;
    args.Bk_in = Bk;
    args.dK = dK;
    args.dV = dV;
    args.N = N;
    args.row_tiles = (N + kBM - 1) / kBM;
    args.D = static_cast<int>(shape.D);
    args.sl2 = static_cast<T>(scale * kLog2e);
    args.scale = static_cast<T>(scale);
    err = dispatch_pass<T, kBwd>(args, B, stream);
  }
  rt_free(ws, stream);  // stream-ordered: released after the kernels that use it
  return err;
}

#define CINA_INSTANTIATE_CUDA(T)                                                                   \
  template const char* attention_hinge_fwd_cuda<T>(const T*, const T*, const T*, const T*,        \
                                                   const T*, const bool*, AttentionHingeShape,    \
                                                   double, int64_t, bool, T*, T*, T*, T*, T*,     \
                                                   void*);                                        \
  template const char* attention_hinge_bwd_cuda<T>(                                               \
      const T*, const T*, const T*, const T*, const T*, const bool*, const T*, const T*,          \
      const T*, const T*, const T*, const T*, const T*, AttentionHingeShape, double, int64_t, T*, \
      T*, T*, void*);
CINA_INSTANTIATE_CUDA(float)
CINA_INSTANTIATE_CUDA(double)
#undef CINA_INSTANTIATE_CUDA

}  // namespace cina
