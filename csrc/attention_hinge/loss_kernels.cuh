// The per-dataset kernels around the passes: loss (forward), backward prep (per-unit scalars
// g, delta, bias, c o) and db.
#pragma once
#include "attention_hinge/reductions.cuh"

namespace cina {
namespace cuda_detail {

// per-dataset loss (one block per dataset), backward prep (elementwise) and db (per dataset)

template <typename T>
CINA_KERNEL(kRedThreads)
loss_kernel(const T* V, const T* W, const T* b, const T* lam, const bool* mask, const T* out,
            const T* lse, int64_t N, int loss_kind, T* loss) {
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
    const double pen =
        scaled_product(static_cast<double>(lse[i]) + log_half_lam, static_cast<double>(V[i]) * oi);
    acc += hinge + pen;
  }
  const double total = block_sum(acc, red);
  if (threadIdx.x == 0) loss[bi] = static_cast<T>(total);
}

template <typename T>
CINA_KERNEL(256)
bwd_prep_kernel(const T* V, const T* W, const T* b, const T* lam, const bool* mask, const T* out,
                const T* lse, const T* g_loss, const T* g_out, const T* g_lse, int64_t total,
                int64_t N, int loss_kind, UnitBwd<T>* unit) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
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
CINA_KERNEL(kRedThreads)
db_kernel(const T* W, const T* b, const bool* mask, const T* out, const T* g_loss, int64_t N,
          int loss_kind, T* db) {
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

}  // namespace cuda_detail
}  // namespace cina
