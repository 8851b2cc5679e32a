// The SIMT pass kernel (float and double): 256 threads = 16 row groups x 16 lanes, each thread
// 4 x 4 scores of a 64 x 64 tile; forward (with or without A / Bk) and the backward column pass.
#pragma once
#include "attention_hinge/pass_args.cuh"
#include "attention_hinge/reductions.cuh"

namespace cina {
namespace cuda_detail {

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
CINA_KERNEL(kThreads)
attn_pass_kernel(const PassArgs<T> a) {
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
      for (int j = 0; j < 4; ++j)
        st4(Pw + (tx + 16 * j) * 8 + hw * 4, s[0][j], s[1][j], s[2][j], s[3][j]);
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

}  // namespace cuda_detail
}  // namespace cina
