// The helper operators' kernels, one thread per row: row log-sum-exp of the cina scores
// (qp_lse_kernel) and row sums of the kernel matrix (qp_rowsum_kernel).
#pragma once
#include "qp_solve/device.cuh"

namespace cina {
namespace qp_cuda_detail {

// ---- helper kernels: one thread per row
// ----------------------------------------------------------

template <typename T>
CINA_DEV double dot_rows(const T* a, const T* b, int64_t D) {
  double v = 0.0;
  int64_t d = 0;
  for (; d + 4 <= D; d += 4)
    v += (static_cast<double>(a[d]) * static_cast<double>(b[d]) +
          static_cast<double>(a[d + 1]) * static_cast<double>(b[d + 1])) +
         (static_cast<double>(a[d + 2]) * static_cast<double>(b[d + 2]) +
          static_cast<double>(a[d + 3]) * static_cast<double>(b[d + 3]));
  for (; d < D; ++d) v += static_cast<double>(a[d]) * static_cast<double>(b[d]);
  return v;
}
template <typename T>
CINA_DEV double sqdist_rows(const T* a, const T* b, int64_t D) {
  double v = 0.0;
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) {
    const double e0 = static_cast<double>(a[d]) - static_cast<double>(b[d]);
    const double e1 = static_cast<double>(a[d + 1]) - static_cast<double>(b[d + 1]);
    const double e2 = static_cast<double>(a[d + 2]) - static_cast<double>(b[d + 2]);
    const double e3 = static_cast<double>(a[d + 3]) - static_cast<double>(b[d + 3]);
    v += (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3);
  }
  for (; d < D; ++d) {
    const double e0 = static_cast<double>(a[d]) - static_cast<double>(b[d]);
    v += e0 * e0;
  }
  return v;
}

template <typename T>
CINA_KERNEL(kRowThreads)
qp_lse_kernel(const T* X, const bool* mask, int64_t N, int64_t D, int64_t tiles, double scale,
              double* lse) {
  const int64_t s = blockIdx.x / tiles;
  const int64_t i = (blockIdx.x % tiles) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const bool* ms = mask + s * N;
  if (!ms[i]) {
    lse[s * N + i] = 0.0;
    return;
  }
  const T* Xs = X + s * N * D;
  const T* xi = Xs + i * D;
  double mx = -kInf, acc = 0.0;
  for (int64_t j = 0; j < N; ++j) {
    if (!ms[j]) continue;
    const double v = scale * dot_rows(xi, Xs + j * D, D);
    if (v > mx) {  // online log-sum-exp
      acc = acc * exp(mx - v) + 1.0;
      mx = v;
    } else {
      acc += exp(v - mx);
    }
  }
  lse[s * N + i] = mx + log(acc);
}

template <typename T>
CINA_KERNEL(kRowThreads)
qp_rowsum_kernel(QPSource<T> src, const bool* rowmask, const bool* colmask, int64_t tiles,
                 double* out) {
  const int64_t N = src.N, D = src.D;
  const int64_t s = blockIdx.x / tiles;
  const int64_t i = (blockIdx.x % tiles) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  if (!rowmask[s * N + i]) {
    out[s * N + i] = 0.0;
    return;
  }
  const bool* cm = colmask + s * N;
  const T* Xs = src.X + s * N * D;
  double acc = 0.0;
  if (src.kind == kQPDense) {
    const T* row = Xs + i * N;
    for (int64_t j = 0; j < N; ++j)
      if (cm[j]) acc += static_cast<double>(row[j]);
  } else {
    const T* xi = Xs + i * D;
    const double g = (src.kind == kQPRbf || src.kind == kQPLaplace) ? src.gamma[s] : 0.0;
    const double li = src.kind == kQPCina ? src.lse[s * N + i] : 0.0;
    for (int64_t j = 0; j < N; ++j) {
      if (!cm[j]) continue;
      const T* xj = Xs + j * D;
      double v;
      if (src.kind == kQPRbf) v = exp_clamped(sqdist_rows(xj, xi, D) * -g);
      else if (src.kind == kQPLaplace)
        v = exp_clamped(sqrt(dmax(sqdist_rows(xj, xi, D), 0.0)) * -g);
      else if (src.kind == kQPCina)
        v = exp_clamped(src.scale * dot_rows(xj, xi, D) - src.lse[s * N + j] - li);
      else v = dot_rows(xj, xi, D);
      acc += v;
    }
  }
  out[s * N + i] = acc;
}

}  // namespace qp_cuda_detail
}  // namespace cina
