// CPU kernel of the balancing descent (contract: csrc/balance_descent/balance_descent.h).
//
// Every step needs one product of the Gram matrix with the new imbalances, and of it only each
// unit's entry on its own arm: one dot product of length N per unit (half the work of the full
// two-arm product).  A row solves all its steps while its dataset's matrix stays in cache (the
// batched product of the PyTorch twin streams all B matrices through memory at every step).
//
// Threads (at::parallel_for; this file is compiled with -fopenmp, see CMakeLists.txt): one row
// per task when there are at least as many rows as threads and a matrix is small, else the rows
// one after another with each product split across the threads (so they share one matrix in
// cache).  Either way each entry of a product is one thread's dot product: the results do not
// depend on the number of threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#ifndef CINA_CPU_VARIANT
#define CINA_CPU_VARIANT base
#endif

#include "balance_descent/balance_descent.h"
#include "common/fast_exp.h"

namespace cina {
namespace CINA_CPU_VARIANT {
namespace {

// out[j] = K_j . d_{arm j} for the units j in [j0, j1); 0 on padded slots.  The sums run over
// the first n entries (n: one past the last unit), so trailing padding changes neither the work
// nor the rounding: a dataset gives the same steps alone and in a padded batch.  Four rows at a
// time: four independent accumulator chains (a single chain is bound by the FMA latency).
void own_arm_product(const float* K, int64_t N, int64_t n, const float* d1, const float* d0,
                     const int8_t* arm, int64_t j0, int64_t j1, double* out) {
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    const float* k0 = K + j * N;
    const float* k1 = k0 + N;
    const float* k2 = k1 + N;
    const float* k3 = k2 + N;
    const float* e0 = arm[j] > 0 ? d1 : d0;
    const float* e1 = arm[j + 1] > 0 ? d1 : d0;
    const float* e2 = arm[j + 2] > 0 ? d1 : d0;
    const float* e3 = arm[j + 3] > 0 ? d1 : d0;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t i = 0; i < n; ++i) {
      a0 += k0[i] * e0[i];
      a1 += k1[i] * e1[i];
      a2 += k2[i] * e2[i];
      a3 += k3[i] * e3[i];
    }
    out[j] = arm[j] < 0 ? 0.0 : a0;
    out[j + 1] = arm[j + 1] < 0 ? 0.0 : a1;
    out[j + 2] = arm[j + 2] < 0 ? 0.0 : a2;
    out[j + 3] = arm[j + 3] < 0 ? 0.0 : a3;
  }
  for (; j < j1; ++j) {
    const float* k0 = K + j * N;
    const float* e0 = arm[j] > 0 ? d1 : d0;
    float a0 = 0.f;
#pragma omp simd reduction(+ : a0)
    for (int64_t i = 0; i < n; ++i) a0 += k0[i] * e0[i];
    out[j] = arm[j] < 0 ? 0.0 : a0;
  }
}

// Both arms' products for the units j in [j0, j1) (the starting objective needs both).
void two_arm_product(const float* K, int64_t N, int64_t n, const float* d1, const float* d0,
                     const int8_t* arm, int64_t j0, int64_t j1, double* out1, double* out0) {
  for (int64_t j = j0; j < j1; ++j) {
    if (arm[j] < 0) {
      out1[j] = out0[j] = 0.0;
      continue;
    }
    const float* k0 = K + j * N;
    float a1 = 0.f, a0 = 0.f;
#pragma omp simd reduction(+ : a1, a0)
    for (int64_t i = 0; i < n; ++i) {
      a1 += k0[i] * d1[i];
      a0 += k0[i] * d0[i];
    }
    out1[j] = a1;
    out0[j] = a0;
  }
}

// Split [0, N) across the threads when `split`, else run it here.
template <typename F>
void over_units(bool split, int64_t N, const F& body) {
  if (split && N > 64) {
    at::parallel_for(0, N, 64, [&](int64_t j0, int64_t j1) { body(j0, j1); });
  } else {
    body(0, N);
  }
}

void solve_row(const DescentProblems& pr, const DescentOptions& opt, const DescentOutputs& out,
               int64_t r, bool split) {
  const int64_t N = pr.N;
  const float* K = pr.K + (r / pr.rows_per_kernel) * N * N;
  const double* w0 = pr.w0 + r * N;
  const int8_t* arm = pr.arm + r * N;
  const double* c = pr.target + r * N;
  const bool* mov = pr.moving + r * N;
  const double lam = pr.lam[r];
  double* best_w = out.w + r * N;

  int64_t n = N;  // one past the last unit
  while (n > 0 && arm[n - 1] < 0) --n;
  std::vector<double> w(w0, w0 + N), v(N, 0.0), g(N), gk(N), dw(N), kn(N), k0(N);
  std::vector<float> d1(N), d0(N);
  auto imbalance = [&](const double* x) {
    for (int64_t i = 0; i < N; ++i) {
      d1[i] = static_cast<float>((arm[i] == 1 ? x[i] : 0.0) - c[i]);
      d0[i] = static_cast<float>((arm[i] == 0 ? x[i] : 0.0) - c[i]);
    }
  };

  // the start: both arms' products give the objective, the own-arm entries the gradient
  imbalance(w.data());
  std::fill(kn.begin(), kn.end(), 0.0);
  std::fill(k0.begin(), k0.end(), 0.0);
  over_units(split, n, [&](int64_t j0, int64_t j1) {
    two_arm_product(K, N, n, d1.data(), d0.data(), arm, j0, j1, kn.data(), k0.data());
  });
  double obj = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    const double e1 = (arm[i] == 1 ? w[i] : 0.0) - c[i];
    const double e0 = (arm[i] == 0 ? w[i] : 0.0) - c[i];
    obj += e1 * kn[i] + e0 * k0[i] + (mov[i] ? lam * w[i] * w[i] : 0.0);
    gk[i] = arm[i] == 1 ? kn[i] : (arm[i] == 0 ? k0[i] : 0.0);
  }
  out.finite[r] = std::isfinite(obj);
  std::copy(w.begin(), w.end(), best_w);
  double best = obj;
  const double tiny = std::numeric_limits<double>::min();
  const double ninf = -std::numeric_limits<double>::infinity();

  for (int64_t s = 0; s < opt.steps && out.finite[r]; ++s) {
    double m1 = ninf, m0 = ninf;
    for (int64_t i = 0; i < N; ++i) {
      g[i] = gk[i] + lam * w[i];
      v[i] = mov[i] ? opt.momentum * v[i] - opt.step_size * g[i] : 0.0;
      if (arm[i] == 1) m1 = std::max(m1, v[i]);
      if (arm[i] == 0) m0 = std::max(m0, v[i]);
    }
    // w exp(v - the arm's largest v): exponents <= 0 (padding: weight 0)
    const double sh1 = std::isfinite(m1) ? m1 : 0.0;
    const double sh0 = std::isfinite(m0) ? m0 : 0.0;
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) {
      const double x = v[i] - (arm[i] == 1 ? sh1 : sh0);
      dw[i] = w[i] * exp_core(std::max(std::min(x, 0.0), -708.0));
    }
    double s1 = 0.0, s0 = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      if (arm[i] == 1) s1 += dw[i];
      if (arm[i] == 0) s0 += dw[i];
    }
    s1 = std::max(s1, tiny);
    s0 = std::max(s0, tiny);
    for (int64_t i = 0; i < N; ++i) {
      const double wn = mov[i] ? dw[i] / (arm[i] == 1 ? s1 : s0) : w[i];
      dw[i] = wn - w[i];
      kn[i] = wn;  // the new point, for its imbalance
    }
    imbalance(kn.data());
    over_units(split, n, [&](int64_t j0, int64_t j1) {
      own_arm_product(K, N, n, d1.data(), d0.data(), arm, j0, j1, kn.data());
    });
    std::fill(kn.begin() + n, kn.end(), 0.0);
    double slope = 0.0, curv = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      kn[i] -= gk[i];  // the change of the own-arm product
      slope += dw[i] * g[i];
      curv += dw[i] * (kn[i] + lam * dw[i]);
    }
    double t;
    if (curv > 0.0) {
      t = std::min(1.0, std::max(0.0, -slope / std::max(curv, tiny)));
    } else {
      t = slope < 0.0 ? 1.0 : 0.0;
    }
    for (int64_t i = 0; i < N; ++i) {
      w[i] += t * dw[i];
      gk[i] += t * kn[i];
      v[i] *= t;
    }
    obj += t * (2.0 * slope + t * curv);
    if (obj < best) {
      best = obj;
      std::copy(w.begin(), w.end(), best_w);
    }
  }
  out.obj[r] = best;
}

}  // namespace

void balance_descent_cpu(const DescentProblems& pr, const DescentOptions& opt,
                         const DescentOutputs& out) {
  if (pr.R == 0) return;
  const int64_t threads = at::get_num_threads();
  // From kSplitUnits units a matrix (4 MB) no longer fits in cache once per thread, but one
  // shared by all threads still may: the threads then work on one row at a time.
  constexpr int64_t kSplitUnits = 1024;
  if ((pr.R >= threads && pr.N < kSplitUnits) || pr.N <= 256) {
    at::parallel_for(0, pr.R, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) solve_row(pr, opt, out, r, false);
    });
  } else {
    for (int64_t r = 0; r < pr.R; ++r) solve_row(pr, opt, out, r, true);
  }
}

}  // namespace CINA_CPU_VARIANT
}  // namespace cina
