// The tensor-core pass kernels (float only) and their prep kernel (tc_prep_kernel: keys split
// into TF32 parts, column data).
#pragma once
#include "attention_hinge/pass_args.cuh"
#include "attention_hinge/tc_primitives.cuh"

namespace cina {
namespace cuda_detail {

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
CINA_KERNEL(256)
tc_prep_kernel(const PassArgs<float> a, int64_t B) {
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
  return sizeof(ColTc) * nbuf * kBN +
         sizeof(float) * (size_t(kBM) + nbuf * kBN) * (DP + 4) * parts + sizeof(int) * size_t(kBM);
}

// PF (pipelined, variants tf32x3p / tf32p): two buffers for the streamed tiles; the next tile is
// copied with cp.async while the current one is computed, so a block does not wait on global
// memory at every tile.  Without PF, each tile is copied (16-byte loads / stores) and then used.
template <int DP, int MODE, int NSPLIT, bool PF = false>
CINA_KERNEL_MIN_BLOCKS(kTcThreads, DP <= 16 ? 4 : 1)
attn_pass_tc_kernel(const PassArgs<float> a) {
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
  float* Krl = Kr + kBM * LD;  // [kBM][LD]  tf32(k - tf32(k)) (3xTF32)
  float* Kc_all = Kr + PARTS * kBM * LD;  // [NBUF][PARTS][kBN][LD]
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
  static_assert(kBM == kBN && kCopies * kTcThreads == kBN * kChunksPerUnit,
                "whole copies per thread");
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
      async_commit();  // (an empty group after the last tile)
      async_wait<1>();  // this thread's copies of tile c0 have landed
    } else {
      stage_tile(c0, 0, Sync{});
    }
    const ColTc* cs = cs_all + buf * kBN;
    const float* Kc = Kc_all + buf * PARTS * kBN * LD;
    const float* Kcl = Kc + kBN * LD;  // (3xTF32 only)
    if (!__syncthreads_or(tid < kBN && cs[tid].valid != 0.f))
      continue;  // (also publishes the tile)

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
        // A fragment: a0 = (rA, slot t) = col 2t; a1 = (rA+8, col 2t); a2 = (rA, col 2t+1); a3 =
        // (rA+8, col 2t+1)
        const float pa[4] = {s[nt][0] * va0, s[nt][2] * va0, s[nt][1] * va1, s[nt][3] * va1};
        const float pb[4] = {s[nt][0] * vb0, s[nt][2] * vb0, s[nt][1] * vb1, s[nt][3] * vb1};
        uint32_t pahi[4], palo[4], pbhi[4], pblo[4];
        split_tf32<NSPLIT>(pa, pahi, palo);
        split_tf32<NSPLIT>(pb, pbhi, pblo);
#pragma unroll
        for (int n = 0; n < DN; ++n) {
          // B fragment: b0 = (slot t, feature g) = Kc[col 2t][8n+g]; b1 = (slot t+4) = Kc[col
          // 2t+1][8n+g]
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

}  // namespace cuda_detail
}  // namespace cina
