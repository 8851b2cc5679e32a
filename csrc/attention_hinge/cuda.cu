// CUDA implementation of the fused attention + hinge operator (contract in attention_hinge.h).
//
// Design (kernels.md §1; the CPU twin is csrc/attention_hinge/cpu.cpp, same semantics):
//
// * One "pass" kernel per variant, templated on the element type T (float: fp32 accumulation;
//   double: fp64), on the padded feature width DP (16, 32, 64 or 128: D is zero-padded to DP in
//   shared memory) and on the mode (forward without auxiliaries, forward with A/Bk, backward
//   column pass).
// * Grid: one thread block per (dataset, tile of kBM = 64 rows[, column split]), flattened into
//   blockIdx.x.  The block's 64 own rows are staged in shared memory once; the other units of
//   the dataset are streamed in tiles of kBN = 64 (keys staged in shared memory).
// * SIMT variant (float and double): 256 threads = 16 row groups (ty) x 16 lanes (tx); thread
//   (ty, tx) computes the 4 x 4 scores of rows ty*4 .. ty*4+3 and columns tx, tx+16, tx+32,
//   tx+48, so each row lives in the 16 lanes of one half-warp: row maxima and sums are half-warp
//   shuffles.  With auxiliaries / in the backward, the tile probabilities go through a
//   warp-private shared buffer and the same threads accumulate P @ [a K, b K] for their rows.
// * Tensor-core variants (float only, attn_pass_tc_kernel): 4 warps x 16 rows, scores and
//   P @ [a K, b K] on mma.sync.m16n8k8 TF32 (fp32 accumulate), probabilities kept in registers
//   as the A operand (k index permuted, no shuffles).  "tf32x3" splits each operand into two
//   TF32 parts (3 mma per product: about fp32 accuracy, the parity rule); "tf32" is plain TF32.
//   A prep kernel (tc_prep_kernel) writes every unit's key, already split into TF32 parts and
//   padded to DP features, and its column scalars (bias, values, validity) to a workspace, so
//   that staging a tile is a run of 16-byte copies; probabilities are rounded to TF32 by an
//   integer add (the tensor cores ignore the low bits) and exponentials are ex2.approx.ftz.
//   Per 64-column tile and thread (D = 16, sm_90a SASS) this took the forward-with-auxiliaries
//   loop from 1136 to about 570 instructions (tf32) and from 1606 to about 980 (tf32x3), the
//   backward from 1078 to about 460 and from 1491 to about 860, with the same bits in the
//   emulator; the D = 16 kernels are held to 128 registers (4 resident blocks per SM).
// * Forward: online softmax in the log2 domain (scores pre-multiplied by scale*log2(e), one FMA
//   per score), per-lane partial sums l, o in double, merged at the end by a fixed butterfly ->
//   deterministic.  Nothing of size N x N exists anywhere.
// * Backward: a prep kernel turns the per-unit inputs into (g, delta, -lse*log2(e), gL c o)
//   (a B*N workspace from the stream-ordered allocator), then the column pass: the block's 64
//   units play j, streamed units play i, P_ij = exp2(s_ij*scale*log2e - lse_i*log2e) <= 1 (no
//   running max needed), C1_j = sum_i P_ij g_i k_i, C2_j = sum_i P_ij delta_i k_i,
//   sum_i P_ij g_i; dK, dV are written once per unit (no atomics).
// * Column splits: when B * ceil(N / 64) blocks would leave SMs idle (e.g. B = 1, N = 4096),
//   the streamed tiles of each row tile are shared by up to 32 blocks, which write partial
//   results (max, sums, accumulators) to a workspace; combine_kernel merges them in a fixed
//   order (deterministic, no atomics).  CINA_ATTENTION_SPLITS = n forces at most n splits.
// * Masks: arbitrary bool masks.  Masked columns get a -inf score (zero key, zero value; what
//   the padding holds never matters), and a column tile with no valid unit is skipped after
//   reading its 64 column flags (so prefix masks / variable lengths cost little past each
//   dataset's last unit); a row tile with no valid unit only writes zeros.  Padded rows get
//   out = lse = 0, A = Bk = 0, dK = dV = 0.
// * Loss and db: one block per dataset, fixed-order tree reductions in double.
// * Any N (grid of B * ceil(N / 64) * splits blocks), 1 <= D <= 128 (D > 128 is refused).
// * Variant choice: CINA_ATTENTION_KERNEL = auto (default: tf32x3p) | simt | tf32x3 | tf32 |
//   tf32x3p | tf32p, read at every call; float64, and tf32x3 with D > 64, run the SIMT kernels.
//   The "p" variants double-buffer the streamed tiles: the next tile is copied with cp.async
//   while the current one is computed (same bits as without; faster at most shapes on an H200).
// * Every launch is checked (cudaGetLastError); errors come back as strings, never crashes.
//
// The file is pure CUDA (no torch headers).  It is also compiled on the host, with
// CINA_EMULATE defined, by tests/cuda_emulator/emulator.cpp, which runs these very kernels with
// one std::thread per CUDA thread (and an emulated mma.sync), so that the index logic is tested
// without a GPU (tests/test_cuda_emulator.py).
#ifndef CINA_WITH_CUDA
#define CINA_WITH_CUDA 1
#endif
#include "attention_hinge/attention_hinge.h"

#include "common/cuda_rt.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

// (under CINA_EMULATE the emulator defines CINA_DEV, CINA_KERNEL, CINA_DYN_SMEM, dim3, float4,
//  double2, float2, threadIdx/blockIdx/..., __syncthreads, __syncthreads_or, __syncwarp,
//  __shfl_xor_sync, the cina::cuda_rt::rt_* functions and CINA_LAUNCH before including us; see
//  common/cuda_rt.h)

namespace cina {
namespace cuda_detail {

// error strings (fail) and runtime wrappers (rt_*): common/cuda_rt.h
using namespace ::cina::cuda_rt;

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

struct ColTc;  // column data of the tensor-core passes (below)

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
  // column splits: with nsplit > 1 the columns of a row tile are shared by nsplit blocks that
  // write partial results (relative to their own running max) for combine_kernel to merge
  int nsplit;
  int64_t tiles_per_split;  // streamed tiles per split
  int64_t total;            // B * N
  T* part_m;                // [nsplit][B*N]  running max (log2 units; forward)
  double* part_l;           // [nsplit][B*N]  sum P (forward)
  double* part_o;           // [nsplit][B*N]  sum P v (forward) or sum_i P_ij g_i (backward)
  T* part_a1;               // [nsplit][B*N][D]
  T* part_a2;               // [nsplit][B*N][D]
  // tensor-core passes: split keys and column data of every unit, datasets padded to
  // row_tiles * 64 units (tc_prep_kernel)
  float* ksplit;
  ColTc* cols;
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
  const int64_t blk = static_cast<int64_t>(blockIdx.x) / a.nsplit;
  const int64_t split = static_cast<int64_t>(blockIdx.x) - blk * a.nsplit;
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
    // no valid row in this tile: zeros (with splits the combine kernel writes them)
    if (a.nsplit > 1) return;
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

  const int64_t c_begin = split * a.tiles_per_split * kBN;
  const int64_t c_stop = c_begin + a.tiles_per_split * kBN;
  const int64_t c_end = c_stop < N ? c_stop : N;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kBN) {
    __syncthreads();  // the previous tile's Kc / column data / Ps are no longer read
    int cv = 0;
    if (tid < kBN) {
      const int64_t col = c0 + tid;
      T bias = neg_inf<T>(), va = T(0), vb = T(0);
      if (col < c_end && a.mask[base + col]) {
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
    if (a.nsplit > 1) {  // partial results for combine_kernel (which also writes padded rows)
      if (!valid) continue;
      const int64_t pe = split * a.total + e;
      if (tx == 0) {
        if constexpr (MODE != kBwd) {
          a.part_m[pe] = m[i];
          a.part_l[pe] = lt;
        }
        a.part_o[pe] = ot;
      }
      if constexpr (kAcc) {
#pragma unroll
        for (int k = 0; k < TD; ++k) {
          const int d = acc_col<DP>(k, tx);
          if (d < D) {
            a.part_a1[pe * D + d] = acc1[i][k];
            a.part_a2[pe * D + d] = acc2[i][k];
          }
        }
      }
      continue;
    }
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
// tensor-core pass (float only): mma.sync.m16n8k8 TF32 with fp32 accumulation
//
// Same blocking as the SIMT pass (64 own rows, streamed tiles of 64 units), 4 warps; warp w owns
// rows 16w .. 16w+15.  Scores S (16 x 64 per warp) = Q Kc^T are 8 x (DP/8) mma; the
// probabilities stay in the accumulator registers and are used directly as the A operand of
// P @ [a K, b K] (2 x 8 x (DP/8) mma): the accumulator holds columns (2t, 2t+1) where the A
// operand expects (t, t+4), so the k index of the second product is permuted — k slot t is
// column 2t and slot t+4 is column 2t+1 — in both operands (the B fragment reads key rows
// 2t and 2t+1), which leaves the product unchanged and needs no shuffle.
// NSPLIT = 3: "3xTF32" — every fp32 operand x = hi + lo with hi = tf32(x), lo = tf32(x - hi), and
// a b ~ lo_a hi_b + hi_a lo_b + hi_a hi_b: about fp32 accuracy (the parity rule).  NSPLIT = 1:
// plain TF32 (10-bit mantissa operands): fastest, TF32 accuracy (like torch's
// allow_tf32 / float32_matmul_precision("high")).

CINA_DEV uint32_t to_tf32(float x) {
#ifdef CINA_EMULATE
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // round half away from 0
  return u;
#else
  uint32_t u;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(u) : "f"(x));
  return u;
#endif
}
CINA_DEV float tf32_value(uint32_t u) {
#ifdef CINA_EMULATE
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#else
  return __uint_as_float(u);
#endif
}
// d += a b  (A 16x8 row, B 8x8 col, fp32 accumulate)
CINA_DEV void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef CINA_EMULATE
  const float c[4] = {d[0], d[1], d[2], d[3]};
  CINA_EMU_MMA_TF32(d, a, b, c);
#else
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
// the bits of a float that already is a TF32 value (an mma operand as is)
CINA_DEV uint32_t f32_bits(float x) {
#ifdef CINA_EMULATE
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#else
  return __float_as_uint(x);
#endif
}
// a staged key element: hi = tf32(v) at hi[o], and lo = tf32(v - hi) at lo[o] for 3xTF32
template <int NSPLIT>
CINA_DEV void stage_tf32(float* hi, float* lo, int o, float v) {
  const float h = tf32_value(to_tf32(v));
  hi[o] = h;
  if constexpr (NSPLIT == 3) lo[o] = tf32_value(to_tf32(v - h));
}
template <int NSPLIT>
CINA_DEV void mma_split(float (&d)[4], const uint32_t (&ahi)[4], const uint32_t (&alo)[4],
                        const uint32_t (&bhi)[2], const uint32_t (&blo)[2]) {
  if constexpr (NSPLIT == 3) {
    mma_tf32(d, alo, bhi);  // small terms first
    mma_tf32(d, ahi, blo);
  }
  mma_tf32(d, ahi, bhi);
}

// butterfly over the 4 lanes of a quad (lanes 4g .. 4g+3 hold one row in the mma layouts)
template <typename T>
CINA_DEV T quad_max(T v) {
  v = dmax(v, __shfl_xor_sync(0xffffffffu, v, 1));
  v = dmax(v, __shfl_xor_sync(0xffffffffu, v, 2));
  return v;
}
template <typename T>
CINA_DEV T quad_sum(T v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// fast operand rounding for the mma: the bits of x plus half a TF32 unit in the last place.  The
// tensor cores ignore the 13 low bits of a .tf32 operand, so this is x rounded to nearest, ties
// away from zero -- cvt.rna.tf32.f32 for every finite x, without its inf / NaN test (2 of the 3
// instructions of cvt.rna on sm_90; the operands here are finite: probabilities, their products
// with finite values, and finite keys)
CINA_DEV uint32_t tf32_bits_rna(float x) { return f32_bits(x) + 0x1000u; }
// the value of such an operand (its low bits cleared)
CINA_DEV float tf32_bits_value(uint32_t u) { return tf32_value(u & 0xffffe000u); }
// split of fragment values: hi = tf32(x) and, for 3xTF32, lo = tf32(x - hi), both as mma operands
// (the operand values of cvt.rna.tf32.f32)
template <int NSPLIT, int NV>
CINA_DEV void split_tf32(const float (&x)[NV], uint32_t (&hi)[NV], uint32_t (&lo)[NV]) {
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    hi[i] = tf32_bits_rna(x[i]);
    if constexpr (NSPLIT == 3) lo[i] = tf32_bits_rna(x[i] - tf32_bits_value(hi[i]));
  }
}

// 2^x with flush of subnormal results to zero (ex2.approx.ftz.f32: one MUFU instruction; exp2f
// adds a range test and two scalings so that results below 2^-126 keep their subnormal value,
// which a probability relative to a row maximum of 1 never needs)
CINA_DEV float fexp2(float x) {
#ifdef CINA_EMULATE
  const float r = std::exp2(x);
  return r < 1.17549435e-38f ? 0.f : r;
#else
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
  return r;
#endif
}

// 16-byte copies from global to shared memory: a plain load / store, or cp.async (the copy
// proceeds while the thread goes on; async_commit closes a group of copies, async_wait<n> waits
// until at most n groups are pending).  The emulator writes an async copy's destination both at
// the copy and at the wait that retires it (emulator.h), so that its race detection sees both ends.
template <bool ASYNC>
CINA_DEV void copy16(void* dst_smem, const void* src) {
#ifdef CINA_EMULATE
  if constexpr (ASYNC) {
    CINA_EMU_CP_ASYNC16(dst_smem, src);
  } else {
    *static_cast<float4*>(dst_smem) = *static_cast<const float4*>(src);
  }
#else
  if constexpr (ASYNC) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst_smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
  } else {
    *static_cast<float4*>(dst_smem) = __ldg(static_cast<const float4*>(src));
  }
#endif
}
CINA_DEV void async_commit() {
#ifdef CINA_EMULATE
  CINA_EMU_CP_ASYNC_COMMIT();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
CINA_DEV void async_wait() {
#ifdef CINA_EMULATE
  CINA_EMU_CP_ASYNC_WAIT(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

constexpr int kTcThreads = 128;  // 4 warps x 16 rows

// Per-unit column data of the tensor-core passes, written once per pass by tc_prep_kernel:
// everything a streamed tile needs, so that staging a tile is a plain 16-byte copy.
struct alignas(16) ColTc {
  float bias;   // forward: 0, or -inf for a masked / padded unit; backward: -lse * log2(e)
  float va;     // forward: v; backward: g
  float vb;     // backward: delta (forward: unused)
  float valid;  // 1 or 0
};
// floats per unit of the split keys: tf32(k) padded to DP features, then (3xTF32) tf32(k - hi)
template <int DP, int NSPLIT>
constexpr int kTcKeyFloats = DP * (NSPLIT == 3 ? 2 : 1);

// The keys split into TF32 parts (zero for masked or padded units and for features d >= D) and
// the column data, for every unit of every dataset padded to npad = row_tiles * 64 units: the
// conversions happen once per element and pass, instead of once per staged element in every
// block (the old kernels' staging loop took about 38 instructions per element).
template <int DP, int MODE, int NSPLIT>
CINA_KERNEL(256) tc_prep_kernel(const PassArgs<float> a, int64_t B) {
  constexpr int KW = kTcKeyFloats<DP, NSPLIT>;
  const int64_t npad = a.row_tiles * kBM;
  const int64_t n_elem = B * npad * DP;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; idx < n_elem;
       idx += static_cast<int64_t>(gridDim.x) * 256) {
    const int64_t u = idx / DP;
    const int d = static_cast<int>(idx - u * DP);
    const int64_t bi = u / npad, n = u - bi * npad;
    const int64_t e = bi * a.N + n;
    const bool valid = n < a.N && a.mask[e];
    const float v = (valid && d < a.D) ? a.K[e * a.D + d] : 0.f;
    stage_tf32<NSPLIT>(a.ksplit + u * KW, a.ksplit + u * KW + DP, d, v);
    if (d == 0) {
      ColTc c{neg_inf<float>(), 0.f, 0.f, 0.f};
      if (valid) {
        if constexpr (MODE == kBwd) {
          const UnitBwd<float> ub = a.unit[e];
          c = ColTc{ub.bias, ub.g, ub.dl, 1.f};
        } else {
          c = ColTc{0.f, a.V[e], 0.f, 1.f};
        }
      }
      a.cols[u] = c;
    }
  }
}

// keys are staged already split into TF32 parts (hi, and lo for 3xTF32) and padded
template <int DP, int NSPLIT, bool PF>
constexpr size_t tc_smem_bytes() {
  constexpr size_t nbuf = PF ? 2 : 1;
  constexpr size_t parts = NSPLIT == 3 ? 2 : 1;
  return sizeof(ColTc) * nbuf * kBN + sizeof(float) * (size_t(kBM) + nbuf * kBN) * (DP + 4) * parts +
         sizeof(int) * size_t(kBM);
}

// PF (pipelined, variants tf32x3p / tf32p): two buffers for the streamed tiles; the next tile is
// copied with cp.async while the current one is computed, so a block does not wait on global
// memory at every tile.  Without PF, each tile is copied (16-byte loads / stores) and then used.
template <int DP, int MODE, int NSPLIT, bool PF = false>
CINA_KERNEL_MIN_BLOCKS(kTcThreads, DP <= 16 ? 4 : 1) attn_pass_tc_kernel(const PassArgs<float> a) {
  constexpr int LD = DP + 4;  // row stride: conflict-free fragment loads (see the bank notes)
  constexpr bool kAcc = MODE != kFwdPlain;
  constexpr int KS = DP / 8;   // k steps of the score product
  constexpr int NT = kBN / 8;  // 8-column tiles of a streamed tile
  constexpr int DN = DP / 8;   // 8-feature tiles of the accumulators
  constexpr int KW = kTcKeyFloats<DP, NSPLIT>;
  constexpr int NBUF = PF ? 2 : 1;
  constexpr int PARTS = NSPLIT == 3 ? 2 : 1;
  static_assert(kBM == 4 * 16, "4 warps x 16 rows");

  CINA_DYN_SMEM(smem_raw);
  ColTc* cs_all = reinterpret_cast<ColTc*>(smem_raw);              // [NBUF][kBN]
  float* Kr = reinterpret_cast<float*>(cs_all + NBUF * kBN);        // [kBM][LD]  tf32(k)
  float* Krl = Kr + kBM * LD;                                       // [kBM][LD]  tf32(k - tf32(k)) (3xTF32)
  float* Kc_all = Kr + PARTS * kBM * LD;                            // [NBUF][PARTS][kBN][LD]
  int* rval = reinterpret_cast<int*>(Kc_all + NBUF * PARTS * kBN * LD);  // [kBM]

  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int64_t N = a.N;
  const int D = a.D;
  const int64_t blk = static_cast<int64_t>(blockIdx.x) / a.nsplit;
  const int64_t split = static_cast<int64_t>(blockIdx.x) - blk * a.nsplit;
  const int64_t bi = blk / a.row_tiles;
  const int64_t r0 = (blk - bi * a.row_tiles) * kBM;
  const int64_t base = bi * N;
  const int64_t ubase = bi * a.row_tiles * kBM;  // this dataset's first unit in ksplit / cols
  const int64_t nrows = (N - r0 < kBM) ? (N - r0) : kBM;
  const int rA = warp * 16 + g;  // this lane's two rows: rA and rA + 8

  int my_valid = 0;
  if (tid < kBM) {
    my_valid = a.cols[ubase + r0 + tid].valid != 0.f ? 1 : 0;  // (0 past the dataset's end)
    rval[tid] = my_valid;
  }
  if (!__syncthreads_or(my_valid)) {
    if (a.nsplit > 1) return;  // the combine kernel writes the zeros
    for (int64_t idx = tid; idx < nrows * D; idx += kTcThreads) {
      const int64_t e = (base + r0) * D + idx;
      if constexpr (MODE == kBwd) {
        a.dK[e] = 0.f;
      } else if constexpr (MODE == kFwdAux) {
        a.A[e] = 0.f;
        a.Bk[e] = 0.f;
      }
    }
    for (int64_t r = tid; r < nrows; r += kTcThreads) {
      const int64_t e = base + r0 + r;
      if constexpr (MODE == kBwd) {
        a.dV[e] = 0.f;
      } else {
        a.out[e] = 0.f;
        a.lse[e] = 0.f;
      }
    }
    return;
  }

  // 16-byte copies of 64 units from ksplit into shared memory: the units' chunks are contiguous
  // in ksplit, so chunk idx comes from src + 4 idx (a fixed number of copies per thread)
  constexpr int kChunksPerUnit = KW / 4;
  constexpr int kCopies = kBN * kChunksPerUnit / kTcThreads;
  static_assert(kBM == kBN && kCopies * kTcThreads == kBN * kChunksPerUnit, "whole copies per thread");
  auto copy_keys = [&](float* dst, int64_t u0, auto async) {
    constexpr bool kAsync = decltype(async)::value;
    const float* src = a.ksplit + u0 * KW;
#pragma unroll 1  // (unrolled, the precomputed addresses cost registers that the pass needs)
    for (int i = 0; i < kCopies; ++i) {
      const int idx = tid + i * kTcThreads;
      const int r = idx / kChunksPerUnit, q = idx % kChunksPerUnit;
      const int part = q / (DP / 4), d4 = q % (DP / 4);
      copy16<kAsync>(dst + (part * kBN + r) * LD + d4 * 4, src + 4 * idx);
    }
  };
  auto stage_tile = [&](int64_t c0, int buf, auto async) {
    constexpr bool kAsync = decltype(async)::value;
    copy_keys(Kc_all + buf * PARTS * kBN * LD, ubase + c0, async);
    if (tid < kBN) copy16<kAsync>(cs_all + buf * kBN + tid, a.cols + ubase + c0 + tid);
  };
  using Sync = std::integral_constant<bool, false>;
  using Async = std::integral_constant<bool, true>;
  copy_keys(Kr, ubase + r0, Sync{});  // (published by the first barrier of the loop)

  float m[2] = {neg_inf<float>(), neg_inf<float>()};
  double l[2] = {0.0, 0.0}, o[2] = {0.0, 0.0};
  float acc1[DN][4], acc2[DN][4];
#pragma unroll
  for (int n = 0; n < DN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc1[n][e] = 0.f;
      acc2[n][e] = 0.f;
    }

  const int64_t c_begin = split * a.tiles_per_split * kBN;
  const int64_t c_stop = c_begin + a.tiles_per_split * kBN;
  const int64_t c_end = c_stop < N ? c_stop : N;
  if constexpr (PF) {
    stage_tile(c_begin, 0, Async{});
    async_commit();
  }
  int buf = 0;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kBN, buf ^= (NBUF - 1)) {
    __syncthreads();  // every warp is done with the tile that was in the buffer written next
    if constexpr (PF) {
      if (c0 + kBN < c_end) stage_tile(c0 + kBN, buf ^ 1, Async{});
      async_commit();   // (an empty group after the last tile)
      async_wait<1>();  // this thread's copies of tile c0 have landed
    } else {
      stage_tile(c0, 0, Sync{});
    }
    const ColTc* cs = cs_all + buf * kBN;
    const float* Kc = Kc_all + buf * PARTS * kBN * LD;
    const float* Kcl = Kc + kBN * LD;  // (3xTF32 only)
    if (!__syncthreads_or(tid < kBN && cs[tid].valid != 0.f)) continue;  // (also publishes the tile)

    // S = Q Kc^T: s[nt] holds (rA, 8nt+2t), (rA, 8nt+2t+1), (rA+8, 8nt+2t), (rA+8, 8nt+2t+1)
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const int qo = rA * LD + ks * 8 + t;
      uint32_t ahi[4] = {f32_bits(Kr[qo]), f32_bits(Kr[qo + 8 * LD]), f32_bits(Kr[qo + 4]),
                         f32_bits(Kr[qo + 8 * LD + 4])};
      uint32_t alo[4] = {0u, 0u, 0u, 0u};
      if constexpr (NSPLIT == 3) {
        alo[0] = f32_bits(Krl[qo]);
        alo[1] = f32_bits(Krl[qo + 8 * LD]);
        alo[2] = f32_bits(Krl[qo + 4]);
        alo[3] = f32_bits(Krl[qo + 8 * LD + 4]);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int ko = (nt * 8 + g) * LD + ks * 8 + t;
        const uint32_t bhi[2] = {f32_bits(Kc[ko]), f32_bits(Kc[ko + 4])};
        uint32_t blo[2] = {0u, 0u};
        if constexpr (NSPLIT == 3) {
          blo[0] = f32_bits(Kcl[ko]);
          blo[1] = f32_bits(Kcl[ko + 4]);
        }
        mma_split<NSPLIT>(s[nt], ahi, alo, bhi, blo);
      }
    }

    // column data of this lane's columns 8nt+2t, 8nt+2t+1 (two 16-byte loads per nt)
    float cav[NT][2], cbv[NT][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int c = nt * 8 + 2 * t;
      const ColTc c0v = cs[c], c1v = cs[c + 1];
      cav[nt][0] = c0v.va;
      cav[nt][1] = c1v.va;
      cbv[nt][0] = c0v.vb;
      cbv[nt][1] = c1v.vb;
      s[nt][0] = fmaf(s[nt][0], a.sl2, c0v.bias);
      s[nt][1] = fmaf(s[nt][1], a.sl2, c1v.bias);
      s[nt][2] = fmaf(s[nt][2], a.sl2, c0v.bias);
      s[nt][3] = fmaf(s[nt][3], a.sl2, c1v.bias);
    }

#pragma unroll
    for (int h = 0; h < 2; ++h) {  // h = 0: row rA (elements 0, 1); h = 1: row rA + 8 (2, 3)
      if constexpr (MODE == kBwd) {
        float os = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = fexp2(s[nt][2 * h + e]);
            s[nt][2 * h + e] = p;
            os = fmaf(p, cav[nt][e], os);
          }
        o[h] += static_cast<double>(os);
      } else {
        float mx = neg_inf<float>();
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
        mx = quad_max(mx);
        const float m_new = fmaxf(m[h], mx);
        const float m_ref = (m_new == neg_inf<float>()) ? 0.f : m_new;
        const float alpha = (m[h] == m_new) ? 1.f : fexp2(m[h] - m_ref);
        float ls = 0.f, os = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = fexp2(s[nt][2 * h + e] - m_ref);
            s[nt][2 * h + e] = p;
            ls += p;
            os = fmaf(p, cav[nt][e], os);
          }
        l[h] = l[h] * static_cast<double>(alpha) + static_cast<double>(ls);
        o[h] = o[h] * static_cast<double>(alpha) + static_cast<double>(os);
        m[h] = m_new;
        if constexpr (kAcc) {
#pragma unroll
          for (int n = 0; n < DN; ++n) {
            acc1[n][2 * h] *= alpha;
            acc1[n][2 * h + 1] *= alpha;
            acc2[n][2 * h] *= alpha;
            acc2[n][2 * h + 1] *= alpha;
          }
        }
      }
    }

    if constexpr (kAcc) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {  // k chunk = columns 8nt .. 8nt+7 (permuted, see above)
        const int c = nt * 8 + 2 * t;
        const float va0 = cav[nt][0], va1 = cav[nt][1];
        const float vb0 = (MODE == kBwd) ? cbv[nt][0] : 1.f;
        const float vb1 = (MODE == kBwd) ? cbv[nt][1] : 1.f;
        // A fragment: a0 = (rA, slot t) = col 2t; a1 = (rA+8, col 2t); a2 = (rA, col 2t+1); a3 = (rA+8, col 2t+1)
        const float pa[4] = {s[nt][0] * va0, s[nt][2] * va0, s[nt][1] * va1, s[nt][3] * va1};
        const float pb[4] = {s[nt][0] * vb0, s[nt][2] * vb0, s[nt][1] * vb1, s[nt][3] * vb1};
        uint32_t pahi[4], palo[4], pbhi[4], pblo[4];
        split_tf32<NSPLIT>(pa, pahi, palo);
        split_tf32<NSPLIT>(pb, pbhi, pblo);
#pragma unroll
        for (int n = 0; n < DN; ++n) {
          // B fragment: b0 = (slot t, feature g) = Kc[col 2t][8n+g]; b1 = (slot t+4) = Kc[col 2t+1][8n+g]
          const int ko = c * LD + n * 8 + g;
          const uint32_t bhi[2] = {f32_bits(Kc[ko]), f32_bits(Kc[ko + LD])};
          uint32_t blo[2] = {0u, 0u};
          if constexpr (NSPLIT == 3) {
            blo[0] = f32_bits(Kcl[ko]);
            blo[1] = f32_bits(Kcl[ko + LD]);
          }
          mma_split<NSPLIT>(acc1[n], pahi, palo, bhi, blo);
          mma_split<NSPLIT>(acc2[n], pbhi, pblo, bhi, blo);
        }
      }
    }
  }

  // write-back: lane holds rows rA (h = 0) and rA + 8 (h = 1), accumulator features 8n+2t, +1
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const double lt = quad_sum(l[h]);
    const double ot = quad_sum(o[h]);
    const int r = rA + 8 * h;
    if (r >= nrows) continue;
    const bool valid = rval[r] != 0;
    const int64_t e = base + r0 + r;
    if (a.nsplit > 1) {  // partial results for combine_kernel
      if (!valid) continue;
      const int64_t pe = split * a.total + e;
      if (t == 0) {
        if constexpr (MODE != kBwd) {
          a.part_m[pe] = m[h];
          a.part_l[pe] = lt;
        }
        a.part_o[pe] = ot;
      }
      if constexpr (kAcc) {
#pragma unroll
        for (int n = 0; n < DN; ++n)
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const int d = n * 8 + 2 * t + q;
            if (d < D) {
              a.part_a1[pe * D + d] = acc1[n][2 * h + q];
              a.part_a2[pe * D + d] = acc2[n][2 * h + q];
            }
          }
      }
      continue;
    }
    if constexpr (MODE == kBwd) {
      UnitBwd<float> u{0.f, 0.f, 0.f, 0.f};
      float vj = 0.f;
      if (valid) {
        u = a.unit[e];
        vj = a.V[e];
      }
      if (t == 0) a.dV[e] = valid ? static_cast<float>(ot) + u.co : 0.f;
#pragma unroll
      for (int n = 0; n < DN; ++n)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int d = n * 8 + 2 * t + q;
          if (d < D) {
            float val = 0.f;
            if (valid) {
              const float query_side = u.g * a.A_in[e * D + d] - u.dl * a.Bk_in[e * D + d];
              const float key_side = vj * acc1[n][2 * h + q] - acc2[n][2 * h + q];
              val = a.scale * (query_side + key_side);
            }
            a.dK[e * D + d] = val;
          }
        }
    } else {
      if (t == 0) {
        a.out[e] = valid ? static_cast<float>(ot / lt) : 0.f;
        a.lse[e] = valid ? static_cast<float>((static_cast<double>(m[h]) + log2(lt)) * kLn2) : 0.f;
      }
      if constexpr (kAcc) {
        const float inv = valid ? static_cast<float>(1.0 / lt) : 0.f;
#pragma unroll
        for (int n = 0; n < DN; ++n)
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const int d = n * 8 + 2 * t + q;
            if (d < D) {
              a.A[e * D + d] = valid ? acc1[n][2 * h + q] * inv : 0.f;
              a.Bk[e * D + d] = valid ? acc2[n][2 * h + q] * inv : 0.f;
            }
          }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// merge of the column splits (fixed order over the splits: deterministic)

template <typename T, int MODE>
CINA_KERNEL(256) combine_kernel(const PassArgs<T> a) {
  constexpr bool kAcc = MODE != kFwdPlain;
  const int64_t D = a.D;
  const int64_t W = kAcc ? D : 1;  // threads per unit
  const int64_t total = a.total;
  const int S = a.nsplit;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total * W; idx += stride) {
    const int64_t e = idx / W;
    const int64_t d = idx - e * W;
    const bool valid = a.mask[e];
    if constexpr (MODE == kBwd) {
      if (!valid) {
        if (d == 0) a.dV[e] = T(0);
        a.dK[e * D + d] = T(0);
        continue;
      }
      double cg = 0.0, s1 = 0.0, s2 = 0.0;
      for (int s = 0; s < S; ++s) {
        const int64_t pe = s * total + e;
        cg += a.part_o[pe];
        s1 += static_cast<double>(a.part_a1[pe * D + d]);
        s2 += static_cast<double>(a.part_a2[pe * D + d]);
      }
      const UnitBwd<T> u = a.unit[e];
      if (d == 0) a.dV[e] = static_cast<T>(cg) + u.co;
      const T query_side = u.g * a.A_in[e * D + d] - u.dl * a.Bk_in[e * D + d];
      const T key_side = a.V[e] * static_cast<T>(s1) - static_cast<T>(s2);
      a.dK[e * D + d] = a.scale * (query_side + key_side);
    } else {
      if (!valid) {
        if (d == 0) {
          a.out[e] = T(0);
          a.lse[e] = T(0);
        }
        if constexpr (kAcc) {
          a.A[e * D + d] = T(0);
          a.Bk[e * D + d] = T(0);
        }
        continue;
      }
      T mx = neg_inf<T>();
      for (int s = 0; s < S; ++s) mx = dmax(mx, a.part_m[s * total + e]);
      double l = 0.0, o = 0.0, s1 = 0.0, s2 = 0.0;
      for (int s = 0; s < S; ++s) {
        const int64_t pe = s * total + e;
        const T ms = a.part_m[pe];
        if (ms == neg_inf<T>()) continue;  // this split saw no valid column
        const double w = exp2(static_cast<double>(ms) - static_cast<double>(mx));
        l += w * a.part_l[pe];
        o += w * a.part_o[pe];
        if constexpr (kAcc) {
          s1 += w * static_cast<double>(a.part_a1[pe * D + d]);
          s2 += w * static_cast<double>(a.part_a2[pe * D + d]);
        }
      }
      if (d == 0) {
        a.out[e] = static_cast<T>(o / l);
        a.lse[e] = static_cast<T>((static_cast<double>(mx) + log2(l)) * kLn2);
      }
      if constexpr (kAcc) {
        a.A[e * D + d] = static_cast<T>(s1 / l);
        a.Bk[e * D + d] = static_cast<T>(s2 / l);
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
  const int64_t blocks = B * args.row_tiles * args.nsplit;
  if (blocks > 2147483647LL) return fail("cina attention_hinge (CUDA): B * ceil(N / 64) exceeds 2^31 - 1 blocks");
  CINA_LAUNCH(kern, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem, stream, args);
  return rt_check_launch("cina attention_hinge (CUDA): pass kernel launch");
}

// Kernel variant, from the environment variable CINA_ATTENTION_KERNEL (read at every call):
//   auto (or unset): kDefaultVariant = tf32x3p: 3xTF32 (meets the fp32 parity rule for D <= 64)
//   with the streamed tiles double-buffered by cp.async, the same bits as tf32x3 and faster on
//   an H200 at 6 of 7 benchmark shapes (fwd+bwd 1 x 32768 x 16: 4.63 vs 4.99 ms; 4096 x 256 x 16:
//   1.94 vs 2.22 ms; forward 1 x 1e6 x 16: 0.87 vs 1.57 s);
//   simt: the SIMT kernels;
//   tf32x3: tensor cores, 3xTF32 split (about fp32 accuracy);  tf32: tensor cores, plain TF32;
//   tf32x3p, tf32p: the same with cp.async double buffering.
// The tensor-core variants apply to float32; float64 always runs the SIMT kernels.
enum Variant : int { kSimt = 0, kTf32 = 1, kTf32x3 = 3, kTf32p = 11, kTf32x3p = 13 };
constexpr int kDefaultVariant = kTf32x3p;

inline const char* read_variant(int* variant) {
  const char* s = std::getenv("CINA_ATTENTION_KERNEL");
  if (s == nullptr || *s == '\0' || std::strcmp(s, "auto") == 0) {
    *variant = kDefaultVariant;
  } else if (std::strcmp(s, "simt") == 0) {
    *variant = kSimt;
  } else if (std::strcmp(s, "tf32x3") == 0) {
    *variant = kTf32x3;
  } else if (std::strcmp(s, "tf32") == 0) {
    *variant = kTf32;
  } else if (std::strcmp(s, "tf32x3p") == 0) {
    *variant = kTf32x3p;
  } else if (std::strcmp(s, "tf32p") == 0) {
    *variant = kTf32p;
  } else {
    return fail(std::string("cina attention_hinge (CUDA): CINA_ATTENTION_KERNEL must be one of auto, simt, "
                            "tf32x3, tf32, tf32x3p, tf32p; got '") + s + "'");
  }
  return nullptr;
}

// Column splits (CINA_ATTENTION_SPLITS: unset / 0 / auto = heuristic, n >= 1 = at most n).
// Heuristic: a grid of fewer than 2 blocks per SM leaves the GPU idle (e.g. B = 1, N = 4096 has
// 64 row tiles), so the columns of each row tile are split until about 4 blocks per SM exist,
// keeping at least 4 streamed tiles per split.
inline const char* choose_splits(int64_t row_blocks, int64_t col_tiles, int* nsplit, int64_t* tiles_per_split) {
  int64_t want = 0;
  const char* s = std::getenv("CINA_ATTENTION_SPLITS");
  if (s != nullptr && *s != '\0' && std::strcmp(s, "auto") != 0) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 0 || v > 1024)
      return fail(std::string("cina attention_hinge (CUDA): CINA_ATTENTION_SPLITS must be auto or an integer "
                              "in [0, 1024]; got '") + s + "'");
    want = v;
  }
  if (want == 0) {
    const int64_t sms = rt_sm_count();
    if (row_blocks >= 2 * sms) {
      want = 1;
    } else {
      want = (4 * sms + row_blocks - 1) / row_blocks;
      const int64_t cap = col_tiles / 4 > 1 ? col_tiles / 4 : 1;
      if (want > cap) want = cap;
      if (want > 32) want = 32;
    }
  }
  if (want < 1) want = 1;
  if (want > col_tiles) want = col_tiles;
  *tiles_per_split = (col_tiles + want - 1) / want;
  *nsplit = static_cast<int>((col_tiles + *tiles_per_split - 1) / *tiles_per_split);  // no empty split
  return nullptr;
}

template <int DP, int MODE, int NSPLIT, bool PF>
const char* launch_pass_tc(PassArgs<float> args, int64_t B, void* stream) {
  auto kern = &attn_pass_tc_kernel<DP, MODE, NSPLIT, PF>;
  constexpr size_t smem = tc_smem_bytes<DP, NSPLIT, PF>();
  if (smem > 48 * 1024) {
    if (const char* e = rt_set_max_dyn_smem(kern, smem)) return e;
  }
  const int64_t blocks = B * args.row_tiles * args.nsplit;
  if (blocks > 2147483647LL) return fail("cina attention_hinge (CUDA): B * ceil(N / 64) exceeds 2^31 - 1 blocks");
  // the split keys and column data (stream-ordered workspace, released after the pass)
  const int64_t units = B * args.row_tiles * kBM;
  const size_t key_bytes = sizeof(float) * static_cast<size_t>(units) * kTcKeyFloats<DP, NSPLIT>;
  void* ws = nullptr;
  if (const char* e = rt_malloc(&ws, key_bytes + sizeof(ColTc) * static_cast<size_t>(units), stream,
                                "tensor-core key workspace"))
    return e;
  args.ksplit = static_cast<float*>(ws);
  args.cols = reinterpret_cast<ColTc*>(static_cast<char*>(ws) + key_bytes);
  int64_t prep_blocks = (units * DP + 255) / 256;
  if (prep_blocks > 65536) prep_blocks = 65536;
  auto prep = &tc_prep_kernel<DP, MODE, NSPLIT>;
  CINA_LAUNCH(prep, dim3(static_cast<unsigned>(prep_blocks)), dim3(256), 0, stream, args, B);
  const char* err = rt_check_launch("cina attention_hinge (CUDA): tensor-core prep kernel launch");
  if (!err) {
    CINA_LAUNCH(kern, dim3(static_cast<unsigned>(blocks)), dim3(kTcThreads), smem, stream, args);
    err = rt_check_launch("cina attention_hinge (CUDA): tensor-core pass kernel launch");
  }
  rt_free(ws, stream);
  return err;
}

template <int MODE, int NSPLIT, bool PF>
const char* dispatch_pass_tc(const PassArgs<float>& args, int64_t B, void* stream) {
  if (args.D <= 16) return launch_pass_tc<16, MODE, NSPLIT, PF>(args, B, stream);
  if (args.D <= 32) return launch_pass_tc<32, MODE, NSPLIT, PF>(args, B, stream);
  if (args.D <= 64) return launch_pass_tc<64, MODE, NSPLIT, PF>(args, B, stream);
  return launch_pass_tc<128, MODE, NSPLIT, PF>(args, B, stream);
}

template <typename T, int MODE>
const char* dispatch_pass(const PassArgs<T>& args, int64_t B, int variant, void* stream) {
  if constexpr (std::is_same_v<T, float>) {
    // 3xTF32 meets the fp32 parity rule up to D = 64; at D = 128 it measured 10x the fp32
    // reference's error on an H200 (tests/test_ops_cuda.py), so wider keys run the SIMT kernel.
    if (variant == kTf32x3 && args.D <= 64) return dispatch_pass_tc<MODE, 3, false>(args, B, stream);
    if (variant == kTf32x3p && args.D <= 64) return dispatch_pass_tc<MODE, 3, true>(args, B, stream);
    if (variant == kTf32) return dispatch_pass_tc<MODE, 1, false>(args, B, stream);
    if (variant == kTf32p) return dispatch_pass_tc<MODE, 1, true>(args, B, stream);
  }
  if (args.D <= 16) return launch_pass<T, 16, MODE>(args, B, stream);
  if (args.D <= 32) return launch_pass<T, 32, MODE>(args, B, stream);
  if (args.D <= 64) return launch_pass<T, 64, MODE>(args, B, stream);
  return launch_pass<T, 128, MODE>(args, B, stream);
}

// The pass, split or not; with splits, the partial buffers are carved out of `ws` (sized by
// split_workspace_bytes) and combine_kernel writes the outputs.
template <typename T>
size_t split_workspace_bytes(const PassArgs<T>& args, bool acc) {
  if (args.nsplit <= 1) return 0;
  const size_t n = static_cast<size_t>(args.nsplit) * static_cast<size_t>(args.total);
  const size_t units = 2 * sizeof(double) + sizeof(T) + (acc ? 2 * sizeof(T) * static_cast<size_t>(args.D) : 0);
  return n * units + 256;
}

template <typename T, int MODE>
const char* run_pass(PassArgs<T>& args, int64_t B, int variant, void* ws, void* stream) {
  constexpr bool kAcc = MODE != kFwdPlain;
  if (args.nsplit > 1) {
    const size_t n = static_cast<size_t>(args.nsplit) * static_cast<size_t>(args.total);
    char* p = static_cast<char*>(ws);
    args.part_l = reinterpret_cast<double*>(p);
    args.part_o = args.part_l + n;
    p = reinterpret_cast<char*>(args.part_o + n);
    args.part_m = reinterpret_cast<T*>(p);
    args.part_a1 = args.part_m + n;
    args.part_a2 = args.part_a1 + (kAcc ? n * static_cast<size_t>(args.D) : 0);
  }
  if (const char* e = dispatch_pass<T, MODE>(args, B, variant, stream)) return e;
  if (args.nsplit <= 1) return nullptr;
  const int64_t work = args.total * (kAcc ? args.D : 1);
  int64_t blocks = (work + 255) / 256;
  if (blocks > 65536) blocks = 65536;
  auto ck = &combine_kernel<T, MODE>;
  CINA_LAUNCH(ck, dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream, args);
  return rt_check_launch("cina attention_hinge (CUDA): combine kernel launch");
}

inline const char* check_shape(AttentionHingeShape s, int64_t loss_kind) {
  if (s.D < 1 || s.D > 128)
    return fail("cina attention_hinge (CUDA): the CUDA kernels support 1 <= D <= 128 features, got D = " +
                std::to_string(s.D) + " (reduce the key dimension or use the CPU / reference backend)");
  if (s.B < 0 || s.N < 0) return fail("cina attention_hinge (CUDA): negative size");
  if (s.B > 2147483647LL) return fail("cina attention_hinge (CUDA): B exceeds 2^31 - 1");
  if (loss_kind != kHinge && loss_kind != kSquaredHinge)
    return fail("cina attention_hinge (CUDA): loss_kind must be 0 (hinge) or 1 (squared hinge)");
  return nullptr;
}

template <typename T>
void init_args(PassArgs<T>& args, const T* K, const T* V, const bool* mask, AttentionHingeShape shape,
               double scale) {
  args.K = K;
  args.V = V;
  args.mask = mask;
  args.N = shape.N;
  args.row_tiles = (shape.N + kBM - 1) / kBM;
  args.D = static_cast<int>(shape.D);
  args.sl2 = static_cast<T>(scale * kLog2e);
  args.scale = static_cast<T>(scale);
  args.total = shape.B * shape.N;
  args.nsplit = 1;
  args.tiles_per_split = args.row_tiles;  // column tiles = row tiles
}

}  // namespace cuda_detail

template <typename T>
const char* attention_hinge_fwd_cuda(const T* K, const T* V, const T* W, const T* b, const T* lam,
                                     const bool* mask, AttentionHingeShape shape, double scale,
                                     int64_t loss_kind, bool need_aux, T* loss, T* out, T* lse,
                                     T* A, T* Bk, void* stream) {
  using namespace cuda_detail;
  if (const char* e = check_shape(shape, loss_kind)) return e;
  int variant = kDefaultVariant;
  if (const char* e = read_variant(&variant)) return e;
  const int64_t B = shape.B, N = shape.N;
  if (B == 0) return nullptr;
  if (N == 0) return rt_memset(loss, sizeof(T) * static_cast<size_t>(B), stream);

  PassArgs<T> args{};
  init_args(args, K, V, mask, shape, scale);
  args.out = out;
  args.lse = lse;
  args.A = A;
  args.Bk = Bk;
  if (const char* e = choose_splits(B * args.row_tiles, args.row_tiles, &args.nsplit, &args.tiles_per_split))
    return e;
  void* ws = nullptr;
  if (const size_t bytes = split_workspace_bytes(args, need_aux)) {
    if (const char* e = rt_malloc(&ws, bytes, stream, "backward workspace")) return e;
  }
  const char* err = need_aux ? run_pass<T, kFwdAux>(args, B, variant, ws, stream)
                             : run_pass<T, kFwdPlain>(args, B, variant, ws, stream);
  if (!err) {
    auto lk = &loss_kernel<T>;
    CINA_LAUNCH(lk, dim3(static_cast<unsigned>(B)), dim3(kRedThreads), kRedThreads * sizeof(double), stream,
                V, W, b, lam, mask, out, lse, N, static_cast<int>(loss_kind), loss);
    err = rt_check_launch("cina attention_hinge (CUDA): loss kernel launch");
  }
  rt_free(ws, stream);  // stream-ordered: released after the kernels that use it
  return err;
}

template <typename T>
const char* attention_hinge_bwd_cuda(const T* K, const T* V, const T* W, const T* b,
                                     const T* lam, const bool* mask, const T* out, const T* lse,
                                     const T* A, const T* Bk, const T* g_loss, const T* g_out,
                                     const T* g_lse, AttentionHingeShape shape, double scale,
                                     int64_t loss_kind, T* dK, T* dV, T* db, void* stream) {
  using namespace cuda_detail;
  if (const char* e = check_shape(shape, loss_kind)) return e;
  int variant = kDefaultVariant;
  if (const char* e = read_variant(&variant)) return e;
  const int64_t B = shape.B, N = shape.N;
  if (B == 0) return nullptr;
  if (N == 0) return rt_memset(db, sizeof(T) * static_cast<size_t>(B), stream);

  PassArgs<T> args{};
  init_args(args, K, V, mask, shape, scale);
  args.A_in = A;
  args.Bk_in = Bk;
  args.dK = dK;
  args.dV = dV;
  if (const char* e = choose_splits(B * args.row_tiles, args.row_tiles, &args.nsplit, &args.tiles_per_split))
    return e;
  // one allocation: per-unit scalars, then (with splits) the partial results
  const int64_t total = B * N;
  const size_t unit_bytes = (sizeof(UnitBwd<T>) * static_cast<size_t>(total) + 255) / 256 * 256;
  void* ws = nullptr;
  if (const char* e = rt_malloc(&ws, unit_bytes + split_workspace_bytes(args, true), stream, "backward workspace"))
    return e;
  UnitBwd<T>* unit = static_cast<UnitBwd<T>*>(ws);
  args.unit = unit;

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
  if (!err) err = run_pass<T, kBwd>(args, B, variant, static_cast<char*>(ws) + unit_bytes, stream);
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
