// CPU kernel of the balancing descent (contract: csrc/balance_descent/balance_descent.h).
//
// Every step needs one product of the Gram matrix with the new imbalances, and of it only each
// unit's entry on its own arm: one dot product of length N per unit (half the work of the full
// two-arm product).  A row solves all its steps while its dataset's matrix stays in cache (the
// batched product of the PyTorch twin streams all B matrices through memory at every step).  The
// rows of a grid of penalties on one dataset step together, and each row of the matrix serves all
// of them while it is in the first-level cache.
//
// Threads (at::parallel_for; this file is compiled with -fopenmp, see CMakeLists.txt): one group
// of rows per task when there are at least as many groups as threads and a matrix is small, else
// the groups one after another with each product split across the threads (so they share one
// matrix in cache).  Either way each entry of a product is one thread's dot product, computed the
// same way whatever runs beside it: the results depend neither on the number of threads nor on
// the other rows of a grid.
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

// One dot product of a product with the Gram matrix: out = k[0:n] . e[0:n] (k a row of K, e an
// imbalance), in float32.
struct DotTask {
  const float* k;
  const float* e;
  double* out;
};

// Eight float lanes (GCC/Clang vector extension: AVX in the avx2 variant, two SSE registers in the
// baseline).  Every dot product is the same sequence of operations whatever else runs beside it:
// one 8-lane chain over the first n8 entries, a fixed pairwise sum of the lanes, then the tail in
// order.  So a problem's steps do not depend on how many problems share its products (a grid of
// penalties gives each penalty the steps it gets alone) nor on the threads.
typedef float v8f __attribute__((vector_size(32)));

#define CINA_LOAD8(dst, ptr) __builtin_memcpy(&(dst), (ptr), sizeof(v8f))
#define CINA_HSUM8(a) \
  ((((a)[0] + (a)[1]) + ((a)[2] + (a)[3])) + (((a)[4] + (a)[5]) + ((a)[6] + (a)[7])))

// Four dot products at once: four independent chains (one is bound by the FMA latency).  With
// kSharedRow the four have one row of K (t[q].k all equal), loaded once for the four products;
// the arithmetic of each product is the same either way.
template <bool kSharedRow>
void dot4(const DotTask* t, int64_t n) {
  const int64_t n8 = n & ~int64_t{7};
  const float *k0 = t[0].k, *k1 = t[1].k, *k2 = t[2].k, *k3 = t[3].k;
  const float *e0 = t[0].e, *e1 = t[1].e, *e2 = t[2].e, *e3 = t[3].e;
  v8f a0 = {}, a1 = {}, a2 = {}, a3 = {};
  for (int64_t i = 0; i < n8; i += 8) {
    v8f x, y;
    CINA_LOAD8(x, k0 + i);
    CINA_LOAD8(y, e0 + i);
    a0 += x * y;
    if constexpr (!kSharedRow) CINA_LOAD8(x, k1 + i);
    CINA_LOAD8(y, e1 + i);
    a1 += x * y;
    if constexpr (!kSharedRow) CINA_LOAD8(x, k2 + i);
    CINA_LOAD8(y, e2 + i);
    a2 += x * y;
    if constexpr (!kSharedRow) CINA_LOAD8(x, k3 + i);
    CINA_LOAD8(y, e3 + i);
    a3 += x * y;
  }
  float s0 = CINA_HSUM8(a0), s1 = CINA_HSUM8(a1), s2 = CINA_HSUM8(a2), s3 = CINA_HSUM8(a3);
  for (int64_t i = n8; i < n; ++i) {
    s0 += k0[i] * e0[i];
    s1 += k1[i] * e1[i];
    s2 += k2[i] * e2[i];
    s3 += k3[i] * e3[i];
  }
  *t[0].out = s0;
  *t[1].out = s1;
  *t[2].out = s2;
  *t[3].out = s3;
}

void dot1(const DotTask& t, int64_t n) {
  const int64_t n8 = n & ~int64_t{7};
  v8f a0 = {};
  for (int64_t i = 0; i < n8; i += 8) {
    v8f x, y;
    CINA_LOAD8(x, t.k + i);
    CINA_LOAD8(y, t.e + i);
    a0 += x * y;
  }
  float s0 = CINA_HSUM8(a0);
  for (int64_t i = n8; i < n; ++i) s0 += t.k[i] * t.e[i];
  *t.out = s0;
}

#undef CINA_LOAD8
#undef CINA_HSUM8

// A group of G rows that share one Gram matrix and one arm assignment (a grid of penalties on one
// dataset).  Row l's imbalances are d1 + l N (treated arm) and d0 + l N (control arm).
struct Group {
  const float* K;
  int64_t N;
  int64_t n;  // one past the last unit: the sums stop there
  int64_t G;
  const int8_t* arm;
  const float* d1;
  const float* d0;
};

// The products for the units j in [j0, j1): own arm only (out1[l N + j] = K_j . d_{l, arm j}), or
// both arms (out1 / out0 with d1 / d0) when out0 is given; 0 on padded slots.  A unit's products
// run four at a time on its row of K (one load of K for four products), and the row is read from
// memory once per step: a grid of G penalties costs one pass over the matrix, not G.  What is
// left of a unit (G not a multiple of 4; G = 1) runs four units at a time.
void group_product(const Group& gp, int64_t j0, int64_t j1, double* out1, double* out0) {
  if (gp.G == 1 && !out0) {  // one row, own arm (every step of the default estimator): no task list
    DotTask t[4];
    int64_t m = 0;
    for (int64_t j = j0; j < j1; ++j) {
      if (gp.arm[j] < 0) {
        out1[j] = 0.0;
        continue;
      }
      t[m++] = {gp.K + j * gp.N, gp.arm[j] > 0 ? gp.d1 : gp.d0, out1 + j};
      if (m == 4) {
        dot4<false>(t, gp.n);
        m = 0;
      }
    }
    for (int64_t q = 0; q < m; ++q) dot1(t[q], gp.n);
    return;
  }
  const int64_t per = out0 ? 2 * gp.G : gp.G;
  std::vector<DotTask> unit(per);
  DotTask pending[4];  // the products left over by units whose count is not a multiple of 4
  int64_t np = 0;
  for (int64_t j = j0; j < j1; ++j) {
    if (gp.arm[j] < 0) {
      for (int64_t l = 0; l < gp.G; ++l) {
        out1[l * gp.N + j] = 0.0;
        if (out0) out0[l * gp.N + j] = 0.0;
      }
      continue;
    }
    const float* kj = gp.K + j * gp.N;
    int64_t m = 0;
    for (int64_t l = 0; l < gp.G; ++l) {
      if (out0) {
        unit[m++] = {kj, gp.d1 + l * gp.N, out1 + l * gp.N + j};
        unit[m++] = {kj, gp.d0 + l * gp.N, out0 + l * gp.N + j};
      } else {
        unit[m++] = {kj, (gp.arm[j] > 0 ? gp.d1 : gp.d0) + l * gp.N, out1 + l * gp.N + j};
      }
    }
    int64_t q = 0;
    for (; q + 4 <= m; q += 4) dot4<true>(unit.data() + q, gp.n);
    for (; q < m; ++q) {
      pending[np++] = unit[q];
      if (np == 4) {
        dot4<false>(pending, gp.n);
        np = 0;
      }
    }
  }
  for (int64_t q = 0; q < np; ++q) dot1(pending[q], gp.n);
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

// Rows r0 .. r0 + G - 1: all their steps, with the products of the G rows together.
void solve_group(const DescentProblems& pr, const DescentOptions& opt, const DescentOutputs& out,
                 int64_t r0, int64_t G, bool split) {
  const int64_t N = pr.N;
  const int8_t* arm = pr.arm + r0 * N;  // the same for every row of the group
  int64_t n = N;  // one past the last unit
  while (n > 0 && arm[n - 1] < 0) --n;
  const size_t GN = static_cast<size_t>(G * N);
  std::vector<double> w(pr.w0 + r0 * N, pr.w0 + r0 * N + GN), v(GN, 0.0), g(GN), gk(GN), dw(GN),
      kn(GN, 0.0), k0(GN, 0.0);
  std::vector<float> d1(GN), d0(GN);
  const Group gp{pr.K + (r0 / pr.rows_per_kernel) * N * N, N, n, G, arm, d1.data(), d0.data()};
  // row l's imbalances against its target, from the weights x + l N
  auto imbalance = [&](int64_t l, const double* x) {
    const double* c = pr.target + (r0 + l) * N;
    float* e1 = d1.data() + l * N;
    float* e0 = d0.data() + l * N;
    for (int64_t i = 0; i < N; ++i) {
      e1[i] = static_cast<float>((arm[i] == 1 ? x[i] : 0.0) - c[i]);
      e0[i] = static_cast<float>((arm[i] == 0 ? x[i] : 0.0) - c[i]);
    }
  };

  // the start: both arms' products give the objective, the own-arm entries the gradient
  for (int64_t l = 0; l < G; ++l) imbalance(l, w.data() + l * N);
  over_units(split, n,
             [&](int64_t j0, int64_t j1) { group_product(gp, j0, j1, kn.data(), k0.data()); });
  std::vector<double> obj(G), best(G);
  bool all_finite = true;
  for (int64_t l = 0; l < G; ++l) {
    const int64_t r = r0 + l;
    const double* c = pr.target + r * N;
    const bool* mov = pr.moving + r * N;
    const double lam = pr.lam[r];
    const double* wl = w.data() + l * N;
    double o = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      const double e1 = (arm[i] == 1 ? wl[i] : 0.0) - c[i];
      const double e0 = (arm[i] == 0 ? wl[i] : 0.0) - c[i];
      const double p1 = kn[l * N + i], p0 = k0[l * N + i];
      o += e1 * p1 + e0 * p0 + (mov[i] ? lam * wl[i] * wl[i] : 0.0);
      gk[l * N + i] = arm[i] == 1 ? p1 : (arm[i] == 0 ? p0 : 0.0);
    }
    obj[l] = best[l] = o;
    out.finite[r] = std::isfinite(o);
    all_finite = all_finite && out.finite[r];
    std::copy(wl, wl + N, out.w + r * N);
  }
  const double tiny = std::numeric_limits<double>::min();
  const double ninf = -std::numeric_limits<double>::infinity();

  // (a non-finite start is an error of the glue: no steps then)
  for (int64_t s = 0; s < opt.steps && all_finite; ++s) {
    for (int64_t l = 0; l < G; ++l) {
      const int64_t r = r0 + l;
      const bool* mov = pr.moving + r * N;
      const double lam = pr.lam[r];
      double *wl = w.data() + l * N, *vl = v.data() + l * N, *gl = g.data() + l * N;
      double *dl = dw.data() + l * N, *nl = kn.data() + l * N;
      const double* gkl = gk.data() + l * N;
      double m1 = ninf, m0 = ninf;
      for (int64_t i = 0; i < N; ++i) {
        gl[i] = gkl[i] + lam * wl[i];
        vl[i] = mov[i] ? opt.momentum * vl[i] - opt.step_size * gl[i] : 0.0;
        if (arm[i] == 1) m1 = std::max(m1, vl[i]);
        if (arm[i] == 0) m0 = std::max(m0, vl[i]);
      }
      // w exp(v - the arm's largest v): exponents <= 0 (padding: weight 0)
      const double sh1 = std::isfinite(m1) ? m1 : 0.0;
      const double sh0 = std::isfinite(m0) ? m0 : 0.0;
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) {
        const double x = vl[i] - (arm[i] == 1 ? sh1 : sh0);
        dl[i] = wl[i] * exp_core(std::max(std::min(x, 0.0), -708.0));
      }
      double s1 = 0.0, s0 = 0.0;
      for (int64_t i = 0; i < N; ++i) {
        if (arm[i] == 1) s1 += dl[i];
        if (arm[i] == 0) s0 += dl[i];
      }
      s1 = std::max(s1, tiny);
      s0 = std::max(s0, tiny);
      for (int64_t i = 0; i < N; ++i) {
        const double wn = mov[i] ? dl[i] / (arm[i] == 1 ? s1 : s0) : wl[i];
        dl[i] = wn - wl[i];
        nl[i] = wn;  // the new point, for its imbalance
      }
      imbalance(l, nl);
    }
    over_units(split, n,
               [&](int64_t j0, int64_t j1) { group_product(gp, j0, j1, kn.data(), nullptr); });
    for (int64_t l = 0; l < G; ++l) {
      const int64_t r = r0 + l;
      const double lam = pr.lam[r];
      double *wl = w.data() + l * N, *vl = v.data() + l * N, *nl = kn.data() + l * N;
      double* gkl = gk.data() + l * N;
      const double *gl = g.data() + l * N, *dl = dw.data() + l * N;
      std::fill(nl + n, nl + N, 0.0);
      double slope = 0.0, curv = 0.0;
      for (int64_t i = 0; i < N; ++i) {
        nl[i] -= gkl[i];  // the change of the own-arm product
        slope += dl[i] * gl[i];
        curv += dl[i] * (nl[i] + lam * dl[i]);
      }
      double t;
      if (curv > 0.0) {
        t = std::min(1.0, std::max(0.0, -slope / std::max(curv, tiny)));
      } else {
        t = slope < 0.0 ? 1.0 : 0.0;
      }
      for (int64_t i = 0; i < N; ++i) {
        wl[i] += t * dl[i];
        gkl[i] += t * nl[i];
        vl[i] *= t;
      }
      obj[l] += t * (2.0 * slope + t * curv);
      if (obj[l] < best[l]) {
        best[l] = obj[l];
        std::copy(wl, wl + N, out.w + r * N);
      }
    }
  }
  for (int64_t l = 0; l < G; ++l) out.obj[r0 + l] = best[l];
}

}  // namespace

void balance_descent_cpu(const DescentProblems& pr, const DescentOptions& opt,
                         const DescentOutputs& out) {
  if (pr.R == 0) return;
  const int64_t N = pr.N;
  // The rows that share a matrix form one group when they also share the arm assignment (a grid
  // of penalties on one dataset: the caller repeats its rows), else each row is its own group.
  const int64_t per = pr.rows_per_kernel;
  bool grouped = per > 1;
  for (int64_t b = 0; grouped && b < pr.B; ++b) {
    const int8_t* first = pr.arm + b * per * N;
    for (int64_t l = 1; grouped && l < per; ++l) {
      grouped = std::equal(first, first + N, first + l * N);
    }
  }
  const int64_t G = grouped ? per : 1;
  const int64_t groups = pr.R / G;
  const int64_t threads = at::get_num_threads();
  // From kSplitUnits units a matrix (4 MB) no longer fits in cache once per thread, but one
  // shared by all threads still may: the threads then work on one group at a time.
  constexpr int64_t kSplitUnits = 1024;
  if ((groups >= threads && N < kSplitUnits) || N <= 256) {
    at::parallel_for(0, groups, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) solve_group(pr, opt, out, q * G, G, false);
    });
  } else {
    for (int64_t q = 0; q < groups; ++q) solve_group(pr, opt, out, q * G, G, true);
  }
}

}  // namespace CINA_CPU_VARIANT
}  // namespace cina
