// combine_kernel: merge of the column splits' partial results into the outputs.
#pragma once
#include "attention_hinge/pass_args.cuh"

namespace cina {
namespace cuda_detail {

// merge of the column splits (fixed order over the splits: deterministic)

template <typename T, int MODE>
CINA_KERNEL(256)
combine_kernel(const PassArgs<T> a) {
  constexpr bool kAcc = MODE != kFwdPlain;
  const int64_t D = a.D;
  const int64_t W = kAcc ? D : 1;  // threads per unit
  const int64_t total = a.total;
  const int S = a.nsplit;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total * W;
       idx += stride) {
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

}  // namespace cuda_detail
}  // namespace cina
