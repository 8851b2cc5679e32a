// CPU implementation of the batched box-QP / balancing dual solver (contract in qp_solve.h).
//
// Per problem the valid units are gathered into a compact index space 0..n-1 (features
// transposed, D x n, so that the kernel-column loops run over units and vectorise).  The state
// (x, the gradient G = Qx - p, the working-set masks) is kept in double.  Each step costs:
//   * the column(s) of Q of the chosen coordinate(s), from an LRU cache of columns bounded by a
//     memory budget (or read in place for an explicit, unpadded, untransformed Q);
//   * for SMO, one pass over the units to choose j by the second-order rule;
//   * one pass that updates G and finds the next maximal violators.
// The passes work on fixed blocks of kBlock units: every block computes its own max / min and
// the blocks are combined in order (first index wins ties), so the selections and therefore all
// results are identical whether the blocks run on one thread or several.
//
// Gradient: G = Qx - p is built from scratch once (columns of the non-zero coordinates) and then
// updated after every step in double, so no drift worth a periodic refresh accumulates (a step
// that makes no representable progress triggers a rebuild from scratch, as in the reference).
// Beside G the solver keeps Gb, the part of Qx due to the coordinates resting at a non-zero bound
// (LIBSVM's G_bar, generalised to arbitrary bounds): it changes only when a coordinate reaches or
// leaves a bound, and it lets the gradient of any unit be rebuilt from the columns of the *free*
// coordinates alone.
//
// Shrinking (LIBSVM's idea, re-derived): every min(n, 1000) steps, coordinates at a bound whose
// gradient pushes them into that bound by more than the current extreme of the opposite working
// set are removed from the passes (the active units are kept as a sorted index list).  Before a
// problem is declared converged the gradients of the shrunk units are rebuilt from Gb and the free
// columns, and the KKT test runs on all units; if it fails there stepping continues on all units.
// Shrinking changes the cost of a step, never the stopping test.
//
// Stopping: KKT violation < tol (converged); max_iter steps; 3 consecutive steps without
// representable progress; stagnation at the rounding level of the dtype (the reference's rule:
// a tol that float32 cannot certify); or a stuck solve: kStuckWindows windows of max(1000, 5n)
// steps in a row in which neither the KKT violation reached a new minimum nor the steps decreased
// the objective beyond its rounding level (a cycle) -- the last four reported not converged.
//
// Threads: at::parallel_for, one task per thread pulling problems from a shared counter; with
// fewer problems than threads and n >= inner_min_units, the block passes and the kernel columns
// of one problem are split across threads instead, while timing shows that this pays (probe()).
// at::parallel_for is OpenMP code inlined from torch's headers, so this file must be compiled with
// -fopenmp (CMakeLists.txt does; the runtime is torch's libgomp) or it runs serially.
#include "qp_solve/qp_solve.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

// Compiled once per instruction-set variant (base; avx2 with -mavx2 -mfma on x86-64);
// cpu_dispatch.cpp picks one at run time.
#ifndef CINA_CPU_VARIANT
#define CINA_CPU_VARIANT base
#endif

#include "common/fast_exp.h"

namespace cina {
namespace CINA_CPU_VARIANT {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kBlock = 512;     // units per block of the block-wise passes
constexpr double kTauRel = 1e-12;   // curvature floor relative to max Q_ii
constexpr int64_t kShrinkEvery = 1000;
constexpr int64_t kStuckWindows = 8;  // windows without progress before a solve counts as stuck

// v[t] <- exp(v[t]); arguments below -708 give exp(-708) ~ 3e-308 (0 after rounding to float).
inline void vexp_inplace(double* v, int64_t len) {
  for (int64_t t = 0; t < len; ++t) v[t] = std::min(std::max(v[t], -708.0), 709.0);
  for (int64_t t = 0; t < len; ++t) v[t] = exp_core(v[t]);
}

// exp of one value (scalar paths: diagonal entries)
inline double vexp(double x) { return exp_core(std::min(std::max(x, -708.0), 709.0)); }

// Run f(block, begin, end) over the fixed blocks of [0, n); on torch's pool when `par`.
template <typename F>
inline void for_blocks(int64_t n, bool par, const F& f) {
  const int64_t nb = (n + kBlock - 1) / kBlock;
  auto body = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b, b * kBlock, std::min(n, (b + 1) * kBlock));
  };
  if (par && nb > 1) at::parallel_for(0, nb, 1, body);
  else body(0, nb);
}

// ------------------------------------------------------------------------------------------------
// Kernel evaluation over a compact set of units
// ------------------------------------------------------------------------------------------------

// Features of a compact set of units, transposed (D x n), in double, with the per-unit data that
// the kernels need.
struct CompactFeatures {
  int64_t n = 0, D = 0;
  std::vector<double> Xt;   // D x n
  std::vector<double> lse;  // n (cina)
};

template <typename T>
void gather_features(const T* X, int64_t D, const double* lse, const std::vector<int64_t>& idx,
                     CompactFeatures& f) {
  const int64_t n = static_cast<int64_t>(idx.size());
  f.n = n;
  f.D = D;
  f.Xt.resize(n * D);
  for (int64_t k = 0; k < n; ++k) {
    const T* xr = X + idx[k] * D;
    for (int64_t d = 0; d < D; ++d) f.Xt[d * n + k] = static_cast<double>(xr[d]);
  }
  if (lse != nullptr) {
    f.lse.resize(n);
    for (int64_t k = 0; k < n; ++k) f.lse[k] = lse[idx[k]];
  }
}

// v[t] = k(row unit, unit lo + t) for t in [0, hi - lo): the kernel between one point `xq`
// (D features, lse_q for cina) and a block of compact units.  Features are consumed four at a
// time so that the accumulator stays in registers across them.
inline void kernel_block(int64_t kind, const CompactFeatures& f, const double* xq, double lse_q,
                         double gamma, double scale, int64_t lo, int64_t hi, double* v) {
  const int64_t len = hi - lo, n = f.n, D = f.D;
  const double* base = f.Xt.data() + lo;
  for (int64_t t = 0; t < len; ++t) v[t] = 0.0;
  if (kind == kQPRbf || kind == kQPLaplace) {
    int64_t d = 0;
    for (; d + 4 <= D; d += 4) {
      const double *r0 = base + d * n, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
      const double q0 = xq[d], q1 = xq[d + 1], q2 = xq[d + 2], q3 = xq[d + 3];
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) {
        const double e0 = r0[t] - q0, e1 = r1[t] - q1, e2 = r2[t] - q2, e3 = r3[t] - q3;
        v[t] += (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3);
      }
    }
    for (; d < D; ++d) {
      const double* r0 = base + d * n;
      const double q0 = xq[d];
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) {
        const double e0 = r0[t] - q0;
        v[t] += e0 * e0;
      }
    }
    const double ng = -gamma;
    if (kind == kQPLaplace) {  // the distance, from the squared distance clamped at 0
      for (int64_t t = 0; t < len; ++t) v[t] = ng * std::sqrt(std::max(v[t], 0.0));
    } else {
      for (int64_t t = 0; t < len; ++t) v[t] *= ng;
    }
    vexp_inplace(v, len);
  } else {
    int64_t d = 0;
    for (; d + 4 <= D; d += 4) {
      const double *r0 = base + d * n, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
      const double q0 = xq[d], q1 = xq[d + 1], q2 = xq[d + 2], q3 = xq[d + 3];
#pragma omp simd
      for (int64_t t = 0; t < len; ++t)
        v[t] += (r0[t] * q0 + r1[t] * q1) + (r2[t] * q2 + r3[t] * q3);
    }
    for (; d < D; ++d) {
      const double* r0 = base + d * n;
      const double q0 = xq[d];
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) v[t] += r0[t] * q0;
    }
    if (kind == kQPCina) {
      const double* l = f.lse.data() + lo;
      for (int64_t t = 0; t < len; ++t) v[t] = scale * v[t] - l[t] - lse_q;
      vexp_inplace(v, len);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Columns of Q for one problem: computed on demand, kept in an LRU cache under a memory budget
// ------------------------------------------------------------------------------------------------

// Storage of a column cache.  Up to kKeepBytes it is a per-thread buffer reused from one problem
// to the next (a batch of small datasets would otherwise map, fault in and unmap a fresh buffer
// per dataset, and the threads would contend in the kernel's page-fault path); larger caches
// are owned by their problem and freed with it.
constexpr size_t kKeepBytes = size_t(16) << 20;

template <typename T>
T* cache_storage(int64_t count, std::unique_ptr<T[]>& own) {
  thread_local std::unique_ptr<T[]> keep;
  thread_local int64_t keep_count = 0;
  if (static_cast<size_t>(count) * sizeof(T) > kKeepBytes) {
    own.reset(new T[count]);
    return own.get();
  }
  if (keep_count < count) {
    keep.reset(new T[count]);
    keep_count = count;
  }
  return keep.get();
}

template <typename T>
class Columns {
 public:
  void init(const QPSource<T>& S, const QPProblems<T>& pb, int64_t q,
            const std::vector<int64_t>& idx, int64_t cache_bytes) {
    kind_ = S.kind;
    n_ = static_cast<int64_t>(idx.size());
    N_ = S.N;
    idx_ = &idx;
    const int64_t s = pb.src[q];
    qscale_ = pb.qscale[q];
    diag_add_ = pb.diag_add[q];
    sign_.assign(n_, 1.0);
    bool unit_sign = true;
    if (pb.sign != nullptr) {
      for (int64_t k = 0; k < n_; ++k) {
        sign_[k] = static_cast<double>(pb.sign[q * pb.N + idx[k]]);
        unit_sign = unit_sign && sign_[k] == 1.0;
      }
    }
    if (kind_ == kQPDense) {
      A_ = S.X + s * S.N * S.N;
      bool identity = true;
      for (int64_t k = 0; k < n_ && identity; ++k) identity = idx[k] == k;
      direct_ = identity && unit_sign && qscale_ == 1.0 && diag_add_ == 0.0;
    } else {
      gamma_ = (kind_ == kQPRbf || kind_ == kQPLaplace) ? S.gamma[s] : 0.0;
      scale_ = S.scale;
      gather_features(S.X + s * S.N * S.D, S.D, kind_ == kQPCina ? S.lse + s * S.N : nullptr, idx,
                      feat_);
    }
    // diagonal of Q, rounded to T like the columns
    diag_.resize(n_);
    for (int64_t k = 0; k < n_; ++k)
      diag_[k] = static_cast<double>(static_cast<T>(qvalue(k, k, kdiag(k))));
    if (!direct_ && n_ > 0) {
      const int64_t col_bytes = n_ * static_cast<int64_t>(sizeof(T));
      cap_ = std::max<int64_t>(2, std::min<int64_t>(n_, cache_bytes / col_bytes));
      buf_ = cache_storage(cap_ * n_, own_);
      slot_.assign(n_, -1);
      owner_.assign(cap_, -1);
      prev_.assign(cap_, -1);
      next_.assign(cap_, -1);
      used_ = 0;
      head_ = tail_ = -1;
    }
  }

  double diag(int64_t k) const { return diag_[k]; }
  const std::vector<double>& diag_vec() const { return diag_; }
  int64_t computed() const { return computed_; }

  // Column j of Q over the compact units (length n).  The pointer stays valid until two further
  // calls (the cache never evicts its most recently used column).
  const T* get(int64_t j, bool par) {
    if (direct_) return A_ + j * N_;
    const int64_t sl = slot_[j];
    if (sl >= 0) {
      touch(sl);
      return buf_ + sl * n_;
    }
    T* col = buf_ + claim(j) * n_;
    compute(j, col, par);
    ++computed_;
    return col;
  }

 private:
  double kdiag(int64_t k) const {
    if (kind_ == kQPDense) {
      const int64_t o = (*idx_)[k];
      return static_cast<double>(A_[o * N_ + o]);
    }
    if (kind_ == kQPRbf || kind_ == kQPLaplace) return 1.0;
    double v = 0.0;
    for (int64_t d = 0; d < feat_.D; ++d) {
      const double x = feat_.Xt[d * n_ + k];
      v += x * x;
    }
    if (kind_ == kQPCina) v = vexp(scale_ * v - feat_.lse[k] - feat_.lse[k]);
    return v;
  }

  double qvalue(int64_t i, int64_t j, double kij) const {
    const double v = (qscale_ * sign_[j]) * sign_[i] * kij;
    return i == j ? v + diag_add_ : v;
  }

  void compute(int64_t j, T* col, bool par) {
    for_blocks(n_, par, [&](int64_t, int64_t lo, int64_t hi) { segment(j, lo, hi, col + lo); });
  }

 public:
  // Q[lo:hi, j] into out[0 : hi - lo] (the values a cached column holds, rounded to T).  Reads
  // only immutable data: safe to call from several threads at once.
  void segment(int64_t j, int64_t lo, int64_t hi, T* out) const {
    const double fj = qscale_ * sign_[j];
    const double* sg = sign_.data();
    const int64_t len = hi - lo;
    if (kind_ == kQPDense) {
      const T* row = A_ + (*idx_)[j] * N_;
      const int64_t* ix = idx_->data();
      for (int64_t i = lo; i < hi; ++i)
        out[i - lo] = static_cast<T>(fj * sg[i] * static_cast<double>(row[ix[i]]));
    } else {
      double xq[64];
      std::vector<double> xq_big;
      double* q = xq;
      if (feat_.D > 64) {
        xq_big.resize(feat_.D);
        q = xq_big.data();
      }
      for (int64_t d = 0; d < feat_.D; ++d) q[d] = feat_.Xt[d * n_ + j];
      const double lq = kind_ == kQPCina ? feat_.lse[j] : 0.0;
      double v[kBlock];
      kernel_block(kind_, feat_, q, lq, gamma_, scale_, lo, hi, v);
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) out[t] = static_cast<T>(fj * sg[lo + t] * v[t]);
    }
    if (j >= lo && j < hi) out[j - lo] = static_cast<T>(diag_[j]);
  }

  // Bring the columns `js` into the cache (computed in parallel over columns when `par`), if they
  // all fit; returns whether they are all cached now.
  bool prefetch(const std::vector<int64_t>& js, bool par) {
    if (direct_) return true;
    if (static_cast<int64_t>(js.size()) > cap_) return false;
    std::vector<std::pair<int64_t, T*>> todo;
    for (const int64_t j : js) {
      const int64_t sl = slot_[j];
      if (sl >= 0) {
        touch(sl);
        continue;
      }
      todo.push_back({j, buf_ + claim(j) * n_});
    }
    const int64_t nt = static_cast<int64_t>(todo.size());
    auto body = [&](int64_t a, int64_t b) {
      for (int64_t t = a; t < b; ++t)
        for (int64_t lo = 0; lo < n_; lo += kBlock)
          segment(todo[t].first, lo, std::min(n_, lo + kBlock), todo[t].second + lo);
    };
    if (par && nt > 1) at::parallel_for(0, nt, 1, body);
    else body(0, nt);
    computed_ += nt;
    return true;
  }

  // The cached column j, or nullptr; touches nothing (safe inside a parallel region while no
  // thread calls get()).
  const T* peek(int64_t j) const {
    if (direct_) return A_ + j * N_;
    const int64_t sl = slot_[j];
    return sl >= 0 ? buf_ + sl * n_ : nullptr;
  }

 private:
  // A slot for column j, most recently used: a free one, else the least recently used column's.
  int64_t claim(int64_t j) {
    int64_t sl;
    if (used_ < cap_) {
      sl = used_++;
    } else {
      sl = tail_;
      unlink(sl);
      slot_[owner_[sl]] = -1;
    }
    owner_[sl] = j;
    slot_[j] = static_cast<int32_t>(sl);
    push_front(sl);
    return sl;
  }

  void unlink(int64_t s) {
    const int64_t p = prev_[s], nx = next_[s];
    if (p >= 0) next_[p] = nx;
    else head_ = nx;
    if (nx >= 0) prev_[nx] = p;
    else tail_ = p;
    prev_[s] = next_[s] = -1;
  }
  void push_front(int64_t s) {
    prev_[s] = -1;
    next_[s] = head_;
    if (head_ >= 0) prev_[head_] = s;
    head_ = s;
    if (tail_ < 0) tail_ = s;
  }
  void touch(int64_t s) {
    if (head_ == s) return;
    unlink(s);
    push_front(s);
  }

  int64_t kind_ = kQPDense, n_ = 0, N_ = 0;
  const std::vector<int64_t>* idx_ = nullptr;
  const T* A_ = nullptr;
  bool direct_ = false;
  double qscale_ = 1.0, diag_add_ = 0.0, gamma_ = 0.0, scale_ = 1.0;
  std::vector<double> sign_, diag_;
  CompactFeatures feat_;
  // cache
  int64_t cap_ = 0, used_ = 0, head_ = -1, tail_ = -1, computed_ = 0;
  T* buf_ = nullptr;
  std::unique_ptr<T[]> own_;
  std::vector<int32_t> slot_;
  std::vector<int64_t> owner_, prev_, next_;
};

// ------------------------------------------------------------------------------------------------
// Feasible start for {lo <= x <= up, c'x = d}: the same construction as the reference
// (x(s) = clip(s c, lo, up), c'x(s) non-decreasing and piecewise linear in s; find the linear piece
// that reaches d by binary search over the sorted breakpoints, solve on it in closed form).
// ------------------------------------------------------------------------------------------------

void feasible_start(const std::vector<double>& lo, const std::vector<double>& up,
                    const std::vector<double>& c, double d, std::vector<double>& x) {
  const int64_t n = static_cast<int64_t>(c.size());
  auto clip = [](double v, double l, double u) { return std::min(std::max(v, l), u); };
  auto f = [&](double s) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i)
      if (c[i] != 0.0) acc += c[i] * clip(s * c[i], lo[i], up[i]);
    return acc;
  };
  double fmin = 0.0, fmax = 0.0;
  std::vector<double> bp;
  bp.reserve(2 * n);
  for (int64_t i = 0; i < n; ++i) {
    if (c[i] == 0.0) continue;
    fmin += c[i] * (c[i] > 0 ? lo[i] : up[i]);
    fmax += c[i] * (c[i] > 0 ? up[i] : lo[i]);
    const double a = lo[i] / c[i], b = up[i] / c[i];
    if (std::isfinite(a)) bp.push_back(a);
    if (std::isfinite(b)) bp.push_back(b);
  }
  if (!std::isnan(fmin)) d = std::max(d, fmin);
  if (!std::isnan(fmax)) d = std::min(d, fmax);
  std::sort(bp.begin(), bp.end());
  const int64_t nf = static_cast<int64_t>(bp.size());
  int64_t lk = -1, hk = nf;
  while (hk - lk > 1) {
    const int64_t mid = (lk + hk) / 2;
    if (f(bp[mid]) <= d) lk = mid;
    else hk = mid;
  }
  double s_cls;
  if (nf == 0) s_cls = 0.0;
  else if (lk < 0) s_cls = bp[0] - 1.0;
  else if (hk >= nf) s_cls = bp[nf - 1] + 1.0;
  else s_cls = 0.5 * (bp[lk] + bp[hk]);
  double fixed_sum = 0.0, slope = 0.0;
  std::vector<uint8_t> fr(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    if (c[i] == 0.0) continue;
    const double y = s_cls * c[i];
    if (y > lo[i] && y < up[i]) {
      fr[i] = 1;
      slope += c[i] * c[i];
    } else {
      fixed_sum += c[i] * clip(y, lo[i], up[i]);
    }
  }
  const double s = (d - fixed_sum) / (slope > 0 ? slope : 1.0);
  const bool exact_left = lk >= 0 && f(bp[lk]) == d;
  for (int64_t i = 0; i < n; ++i) {
    if (c[i] == 0.0) {
      x[i] = clip(0.0, lo[i], up[i]);
      continue;
    }
    double v;
    if (exact_left) v = clip(bp[lk] * c[i], lo[i], up[i]);
    else v = fr[i] ? s * c[i] : clip(s_cls * c[i], lo[i], up[i]);
    x[i] = clip(v, lo[i], up[i]);
  }
}

// ------------------------------------------------------------------------------------------------
// One problem
// ------------------------------------------------------------------------------------------------

template <typename T>
class Solver {
 public:
  Solver(const QPSource<T>& S, const QPProblems<T>& pb, const QPOptions& opt, int64_t q, bool par)
      : S_(S), pb_(pb), opt_(opt), q_(q) {
    const int64_t N = pb.N;
    const bool* m = pb.mask + q * N;
    for (int64_t i = 0; i < N; ++i)
      if (m[i]) idx_.push_back(i);
    n_ = static_cast<int64_t>(idx_.size());
    par_ = par && n_ >= opt.inner_min_units;
    par_allowed_ = par_;
  }

  void run(const QPOutputs<T>& out) {
    const int64_t q = q_, N = pb_.N, n = n_;
    T* xo = out.x + q * N;
    for (int64_t i = 0; i < N; ++i) xo[i] = T(0);
    if (n == 0) {
      out.nu[q] = T(0);
      out.objective[q] = T(0);
      out.kkt[q] = T(0);
      out.iterations[q] = 0;
      out.converged[q] = true;
      return;
    }
    setup();
    const double tol = pb_.tol[q];
    const int64_t max_iter = pb_.max_iter[q];
    if (!has_pair_ && !has_single_) {
      // every unit is fixed (lo == up): nothing to do
      refresh();
      finish(out, 0, true);
      return;
    }
    refresh();
    int64_t it = 0, stall = 0;
    bool conv = false;
    int64_t since_shrink = 0, since_window = 0;
    const int64_t shrink_every = std::min<int64_t>(n, kShrinkEvery);
    const int64_t window = std::max<int64_t>(1000, 5 * n);
    // Stagnation (as the reference): checks at which the KKT violation sits at the rounding level
    // of the gradient and failed to halve; the requested tol is then below what the dtype can
    // certify (float32 with a tight tol) and the problem stops, reported not converged.
    int64_t nfail = 0, nwin = 0, nstuck = 0;
    double best_fail = kInf, best_win = kInf, best_stuck = kInf;
    // Stuck (a cycle, or progress below the rounding of the objective): kStuckWindows windows in a
    // row in which the KKT violation did not reach a new minimum (by 0.1%) and the steps did not
    // decrease the objective by more than its rounding level; stops, reported not converged.
    auto stuck = [&]() {
      double scale = 0.0;
      for (int64_t k = 0; k < n; ++k)
        scale += std::abs(x_[k]) * (std::abs(0.5 * (G_[k] + p_[k])) + std::abs(p_[k]));
      const bool kkt_better = kkt_ < (1.0 - 1e-3) * best_stuck;
      if (kkt_better) best_stuck = kkt_;
      const bool obj_better = dec_ > std::numeric_limits<double>::epsilon() * scale;
      dec_ = 0.0;
      nstuck = (kkt_better || obj_better) ? 0 : nstuck + 1;
    };
    auto stagnant = [&](double& best, int64_t& count) {
      double xl1 = 0.0;
      for (int64_t k = 0; k < n; ++k) xl1 += std::abs(x_[k]);
      const double floor = std::numeric_limits<T>::epsilon() * (qmax_ * xl1 + pmax_);
      const bool better = kkt_ < 0.5 * best;
      if (better) best = kkt_;
      count = (better || kkt_ > floor) ? 0 : count + 1;
    };
    while (true) {
      if (kkt_ < tol) {
        // the gradients of shrunk units are stale: rebuild them and re-check on all units
        if (shrunk_) {
          unshrink();
          if (kkt_ >= tol) stagnant(best_fail, nfail);
        }
        if (kkt_ < tol) {
          conv = true;
          break;
        }
      }
      if (it >= max_iter) break;
      if (stall >= 3 || nfail >= 20 || nwin >= 3 || nstuck >= kStuckWindows) break;
      if (++since_window >= window) {
        since_window = 0;
        stagnant(best_win, nwin);
        stuck();
      }
      if (opt_.shrinking && ++since_shrink >= shrink_every) {
        since_shrink = 0;
        shrink();
      }
      if (par_allowed_) probe(it);
      const bool progress = step();
      sum_active_ += na_;
      ++it;
      if (!progress) {
        // no representable progress: recompute the gradient from scratch; give up after 3
        ++stall;
        unshrink();
        refresh();
      } else {
        stall = 0;
      }
    }
    if (shrunk_) unshrink();
    if (opt_.debug)
      std::fprintf(
          stderr,
          "cina qp[%lld]: n=%lld it=%lld kkt=%.3e columns=%lld refreshes=%lld mean_active=%.1f "
          "threaded windows=%lld/%lld\n",
          (long long)q_, (long long)n_, (long long)it, kkt_, (long long)cols_.computed(),
          (long long)n_refresh_, it > 0 ? double(sum_active_) / double(it) : double(n_),
          (long long)par_windows_, (long long)windows_);
    finish(out, it, conv && kkt_ < tol);
  }

 private:
  // Inner parallelism pays only when the threads are really there: a step synchronises them a few
  // times, and on a machine whose cores are taken by other work each synchronisation can cost a
  // scheduler time slice.  So it is measured: kProbe steps without threads, then up to kProbe with
  // them, abandoned as soon as they are slower; threads are kept only when they win.  The next
  // probe comes kProbeEvery steps later, or twice as late as the last one after a loss.  Results
  // do not depend on the choice (the blocks are the same either way).
  static constexpr int64_t kProbe = 8, kProbeEvery = 2048, kProbeMax = int64_t(1) << 17;
  void probe(int64_t it) {
    using clock = std::chrono::steady_clock;
    auto since = [&] { return std::chrono::duration<double>(clock::now() - probe_t0_).count(); };
    if (probe_phase_ == 0) {
      if (it < probe_next_) return;
      probe_phase_ = 1;
      par_ = false;
      probe_t0_ = clock::now();
      probe_it0_ = it;
    } else if (probe_phase_ == 1) {
      if (it - probe_it0_ < kProbe) return;
      probe_ser_ = since();
      probe_phase_ = 2;
      par_ = true;
      probe_t0_ = clock::now();
      probe_it0_ = it;
    } else {
      const double t = since();
      const bool lost = t > 0.9 * probe_ser_;
      if (!lost && it - probe_it0_ < kProbe) return;
      ++windows_;
      probe_phase_ = 0;
      if (lost) {
        par_ = false;
        probe_every_ = std::min(kProbeMax, 2 * probe_every_);
      } else {
        ++par_windows_;
        probe_every_ = kProbeEvery;
      }
      probe_next_ = it + probe_every_;
    }
  }

  // ---- set-up -------------------------------------------------------------------------------
  void setup() {
    const int64_t q = q_, N = pb_.N, n = n_;
    cols_.init(S_, pb_, q, idx_, opt_.cache_bytes);
    x_.resize(n);
    G_.resize(n);
    Gb_.resize(n);
    inb_.assign(n, 0);
    p_.resize(n);
    lo_.resize(n);
    up_.resize(n);
    c_.assign(n, 0.0);
    invc_.assign(n, 0.0);
    dinv_.assign(n, 0.0);
    upm_.assign(n, -kInf);
    lowm_.assign(n, kInf);
    pl_.assign(n, 0.0);
    ph_.assign(n, 0.0);
    is_pair_.assign(n, 0);
    is_single_.assign(n, 0);
    const bool has_eq = pb_.c != nullptr;
    double dmax = 0.0;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t o = q * N + idx_[k];
      p_[k] = static_cast<double>(pb_.p[o]);
      lo_[k] = static_cast<double>(pb_.lo[o]);
      up_[k] = static_cast<double>(pb_.up[o]);
      if (has_eq) c_[k] = static_cast<double>(pb_.c[o]);
      const double dk = cols_.diag(k);
      dmax = std::max(dmax, std::abs(dk));
      if (c_[k] != 0.0) {
        is_pair_[k] = 1;
        invc_[k] = 1.0 / c_[k];
        dinv_[k] = dk * invc_[k] * invc_[k];
        has_pair_ = true;
      } else if (lo_[k] < up_[k]) {
        is_single_[k] = 1;
        has_single_ = true;
      }
    }
    tau_ = dmax > 0 ? kTauRel * dmax : kTauRel;
    qmax_ = dmax;  // max |Q_ij| = max Q_ii for a PSD Q
    pmax_ = 0.0;
    for (int64_t k = 0; k < n; ++k) pmax_ = std::max(pmax_, std::abs(p_[k]));
    if (pb_.x0 != nullptr) {
      for (int64_t k = 0; k < n; ++k) {
        const double v = static_cast<double>(pb_.x0[q * N + idx_[k]]);
        x_[k] = std::min(std::max(v, lo_[k]), up_[k]);
      }
    } else if (has_eq) {
      feasible_start(lo_, up_, c_, static_cast<double>(pb_.d[q]), x_);
    } else {
      for (int64_t k = 0; k < n; ++k) x_[k] = std::min(std::max(0.0, lo_[k]), up_[k]);
    }
    for (int64_t k = 0; k < n; ++k) x_[k] = static_cast<double>(static_cast<T>(x_[k]));
    for (int64_t k = 0; k < n; ++k) set_flags(k);
    act_.resize(n);
    for (int64_t k = 0; k < n; ++k) act_[k] = k;
    na_ = n;
    nb_ = (n + kBlock - 1) / kBlock;
    bm_.resize(nb_);
    bM_.resize(nb_);
    bs_.resize(nb_);
  }

  void set_flags(int64_t k) {
    const bool can_inc = x_[k]<up_[k], can_dec = x_[k]> lo_[k];
    if (is_pair_[k]) {
      const bool in_up = c_[k] > 0 ? can_inc : can_dec;
      const bool in_low = c_[k] > 0 ? can_dec : can_inc;
      upm_[k] = in_up ? 0.0 : -kInf;
      lowm_[k] = in_low ? 0.0 : kInf;
    }
    if (is_single_[k]) {
      ph_[k] = can_dec ? kInf : 0.0;
      pl_[k] = can_inc ? -kInf : 0.0;
    }
  }

  // ---- gradient and scans ---------------------------------------------------------------------
  // G = Qx - p on all units from scratch (columns of the non-zero coordinates, in increasing
  // order), together with Gb, the part of Qx due to the coordinates resting at a bound, then a full
  // scan.  Between refreshes G is updated incrementally (in double); Gb lets the gradients of the
  // shrunk units be rebuilt from the columns of the free coordinates only (LIBSVM's G_bar idea).
  void refresh() {
    const int64_t n = n_;
    std::vector<int64_t> nz;
    for (int64_t j = 0; j < n; ++j) {
      inb_[j] = at_bound(j) ? 1 : 0;
      if (x_[j] != 0.0) nz.push_back(j);
    }
    cols_.prefetch(nz, par_);  // when they all fit: computed once, in parallel, and kept
    double* G = G_.data();
    double* Gb = Gb_.data();
    // one pass over fixed row blocks, each summing the columns of the non-zero coordinates in
    // increasing order (cached columns read in place, the others computed block by block and not
    // cached): a single parallel region however many columns there are.
    for_blocks(n, par_, [&](int64_t, int64_t lo, int64_t hi) {
      T seg[kBlock];
      for (int64_t k = lo; k < hi; ++k) G[k] = Gb[k] = 0.0;
      for (const int64_t j : nz) {
        const double xj = x_[j];
        const T* col = cols_.peek(j);
        const T* c;
        if (col != nullptr) {
          c = col + lo;
        } else {
          cols_.segment(j, lo, hi, seg);
          c = seg;
        }
        double* acc = (inb_[j] ? Gb : G) + lo;
        const int64_t len = hi - lo;
#pragma omp simd
        for (int64_t t = 0; t < len; ++t) acc[t] += xj * static_cast<double>(c[t]);
      }
      for (int64_t k = lo; k < hi; ++k) G[k] = (G[k] + Gb[k]) - p_[k];
    });
    ++n_refresh_;
    scan_full();
  }

  // x_k rests at a bound with a non-zero value: its column is part of Gb.
  bool at_bound(int64_t k) const { return x_[k] != 0.0 && (x_[k] == lo_[k] || x_[k] == up_[k]); }

  // Rebuild G at the units of `rows` from Gb and the columns of the free non-zero coordinates.
  void rebuild(const std::vector<int64_t>& rows) {
    if (rows.empty()) return;
    const int64_t nr = static_cast<int64_t>(rows.size());
    std::vector<int64_t> fr;
    for (int64_t j = 0; j < n_; ++j)
      if (x_[j] != 0.0 && !inb_[j]) fr.push_back(j);
    const int64_t* r = rows.data();
    if (cols_.prefetch(fr, par_)) {
      // all free columns cached: one pass over blocks of rows (a single parallel region)
      for_blocks(nr, par_, [&](int64_t, int64_t lo, int64_t hi) {
        for (int64_t t = lo; t < hi; ++t) {
          const int64_t k = r[t];
          double a = Gb_[k];
          for (const int64_t j : fr) a += x_[j] * static_cast<double>(cols_.peek(j)[k]);
          G_[k] = a - p_[k];
        }
      });
    } else {
      // too many to cache at once: column by column, in the same order (same sums)
      std::vector<double> acc(nr);
      for (int64_t t = 0; t < nr; ++t) acc[t] = Gb_[r[t]];
      for (const int64_t j : fr) {
        const double xj = x_[j];
        const T* col = cols_.get(j, false);
        for (int64_t t = 0; t < nr; ++t) acc[t] += xj * static_cast<double>(col[r[t]]);
      }
      for (int64_t t = 0; t < nr; ++t) G_[r[t]] = acc[t] - p_[r[t]];
    }
    ++n_refresh_;
  }

  // -G_k / c_k: the violation measure of a coordinate of the equality (not stored: recomputed,
  // always with this one expression, so that the block passes and the index searches agree).
  double val(int64_t k) const { return -G_[k] * invc_[k]; }

  // The block-wise pass over the active units (all units after scan_full): optionally
  // G += dxa Qa (+ dxb Qb) (NCOL = 1, 2), then per block the max over I_up of -G/c (PAIR), the
  // min over I_low of -G/c (PAIR) and the max projected-gradient violation (SINGLE).
  template <bool PAIR, bool SINGLE, int NCOL>
  void pass(const T* Qa, double dxa, const T* Qb, double dxb) {
    double* G = G_.data();
    const double *invc = invc_.data(), *upm = upm_.data(), *lowm = lowm_.data(), *pl = pl_.data(),
                 *ph = ph_.data();
    const int64_t* act = act_.data();
    const bool dense = na_ == n_;
    nb_ = (na_ + kBlock - 1) / kBlock;
    for_blocks(na_, par_, [&](int64_t b, int64_t lo, int64_t hi) {
      double mb = -kInf, Mb = kInf, sb = 0.0;
      if (dense) {
#pragma omp simd reduction(max : mb, sb) reduction(min : Mb)
        for (int64_t k = lo; k < hi; ++k) {
          double g = G[k];
          if (NCOL >= 1) g = g + dxa * static_cast<double>(Qa[k]);
          if (NCOL >= 2) g = g + dxb * static_cast<double>(Qb[k]);
          if (NCOL >= 1) G[k] = g;
          if (PAIR) {
            const double v = -g * invc[k];
            mb = std::max(mb, v + upm[k]);
            Mb = std::min(Mb, v + lowm[k]);
          }
          if (SINGLE) sb = std::max(sb, std::abs(std::min(std::max(g, pl[k]), ph[k])));
        }
      } else {
        for (int64_t t = lo; t < hi; ++t) {
          const int64_t k = act[t];
          double g = G[k];
          if (NCOL >= 1) g = g + dxa * static_cast<double>(Qa[k]);
          if (NCOL >= 2) g = g + dxb * static_cast<double>(Qb[k]);
          if (NCOL >= 1) G[k] = g;
          if (PAIR) {
            const double v = -g * invc[k];
            mb = std::max(mb, v + upm[k]);
            Mb = std::min(Mb, v + lowm[k]);
          }
          if (SINGLE) sb = std::max(sb, std::abs(std::min(std::max(g, pl[k]), ph[k])));
        }
      }
      bm_[b] = mb;
      bM_[b] = Mb;
      bs_[b] = sb;
    });
    combine(dense);
  }

  template <int NCOL>
  void pass_any(const T* Qa, double dxa, const T* Qb, double dxb) {
    if (has_pair_ && has_single_) pass<true, true, NCOL>(Qa, dxa, Qb, dxb);
    else if (has_pair_) pass<true, false, NCOL>(Qa, dxa, Qb, dxb);
    else pass<false, true, NCOL>(Qa, dxa, Qb, dxb);
  }

  // Block-wise scan over all units (clears the shrinking state first: callers rebuilt G).
  void scan_full() {
    na_ = n_;
    for (int64_t k = 0; k < n_; ++k) act_[k] = k;
    shrunk_ = false;
    nb_ = (n_ + kBlock - 1) / kBlock;
    bm_.resize(nb_);
    bM_.resize(nb_);
    bs_.resize(nb_);
    pass_any<0>(nullptr, 0.0, nullptr, 0.0);
  }

  // Combine the block results in order (first index wins ties).  dense: blocks index units
  // 0..n-1 directly; else positions of the active list.
  void combine(bool dense) {
    double m = -kInf, M = kInf, sv = 0.0;
    int64_t bmi = -1, bsi = -1;
    for (int64_t b = 0; b < nb_; ++b) {
      if (bm_[b] > m) {
        m = bm_[b];
        bmi = b;
      }
      if (bs_[b] > sv) {
        sv = bs_[b];
        bsi = b;
      }
      M = std::min(M, bM_[b]);
    }
    m_ = m;
    M_ = M;
    sv_ = sv;
    i_ = -1;
    k_ = -1;
    const int64_t len = dense ? n_ : na_;
    if (has_pair_ && bmi >= 0 && m > -kInf) {
      for (int64_t t = bmi * kBlock, e = std::min(len, (bmi + 1) * kBlock); t < e; ++t) {
        const int64_t u = dense ? t : act_[t];
        if (val(u) + upm_[u] == m) {
          i_ = u;
          break;
        }
      }
    }
    if (has_single_ && bsi >= 0 && sv > 0) {
      for (int64_t t = bsi * kBlock, e = std::min(len, (bsi + 1) * kBlock); t < e; ++t) {
        const int64_t u = dense ? t : act_[t];
        if (std::abs(std::min(std::max(G_[u], pl_[u]), ph_[u])) == sv) {
          k_ = u;
          break;
        }
      }
    }
    pv_ = has_pair_ ? std::max(0.0, m - M) : 0.0;
    if (std::isnan(pv_)) pv_ = 0.0;
    kkt_ = std::max(pv_, has_single_ ? sv : 0.0);
  }

  // ---- one step ---------------------------------------------------------------------------------
  bool step() {
    const bool use_pair = has_pair_ && (!has_single_ || pv_ >= sv_);
    int64_t a, b = -1;
    double ua, ub = 0.0, tstar;
    const T* Qa;
    const T* Qb = nullptr;
    if (use_pair) {
      a = i_;
      if (a < 0) return false;
      Qa = cols_.get(a, par_);
      const double ici = invc_[a];
      b = select_j(a, Qa, ici);
      // no partner (cannot happen while kkt >= tol), or i itself (a null step; excluded by
      // select_j): counts as a stall
      if (b < 0 || b == a) return false;
      const double bb = m_ - val(b);
      double aa = (cols_.diag(a) * ici * ici + dinv_[b]) -
                  static_cast<double>(Qa[b]) * ((2.0 * ici) * invc_[b]);
      aa = std::max(aa, tau_);
      tstar = bb / aa;
      ua = ici;
      ub = -invc_[b];
      Qb = cols_.get(b, par_);
    } else {
      a = k_;
      if (a < 0) return false;
      const double pg = std::min(std::max(G_[a], pl_[a]), ph_[a]);
      ua = pg > 0 ? -1.0 : (pg < 0 ? 1.0 : 0.0);
      tstar = std::abs(pg) / std::max(cols_.diag(a), tau_);
      Qa = cols_.get(a, par_);
    }
    auto tmax = [&](int64_t u, double dir) {
      if (dir == 0.0) return kInf;
      const double room = dir > 0 ? up_[u] - x_[u] : lo_[u] - x_[u];
      return std::max(room / dir, 0.0);
    };
    const double tma = tmax(a, ua), tmb = b >= 0 ? tmax(b, ub) : kInf;
    const double t = std::min(tstar, std::min(tma, tmb));
    auto move = [&](int64_t u, double dir, double tm) {
      double xn = x_[u] + t * dir;
      if (t == tm) xn = dir > 0 ? up_[u] : (dir < 0 ? lo_[u] : xn);
      xn = std::min(std::max(xn, lo_[u]), up_[u]);
      xn = static_cast<double>(static_cast<T>(xn));
      const double dx = xn - x_[u];
      x_[u] = xn;
      set_flags(u);
      return dx;
    };
    const double xa0 = x_[a], xb0 = b >= 0 ? x_[b] : 0.0;
    const double dxa = move(a, ua, tma);
    const double dxb = b >= 0 ? move(b, ub, tmb) : 0.0;
    if (dxa == 0.0 && dxb == 0.0) return false;
    // decrease of the objective made by this step (O(1), from the gradient before the update):
    // the stuck-window test in run() sums it
    {
      double df = dxa * (G_[a] + 0.5 * dxa * cols_.diag(a));
      if (b >= 0)
        df += dxb * ((G_[b] + 0.5 * dxb * cols_.diag(b)) + dxa * static_cast<double>(Qa[b]));
      dec_ -= df;
    }
    bound_change(a, xa0, Qa);
    if (b >= 0) bound_change(b, xb0, Qb);
    if (b >= 0) pass_any<2>(Qa, dxa, Qb, dxb);
    else pass_any<1>(Qa, dxa, nullptr, 0.0);
    return true;
  }

  // Keep Gb (the bound coordinates' part of Qx) in step with coordinate u, whose value was x_old.
  void bound_change(int64_t u, double x_old, const T* Qu) {
    const bool nb = at_bound(u);
    const double delta = (nb ? x_[u] : 0.0) - (inb_[u] ? x_old : 0.0);
    inb_[u] = nb ? 1 : 0;
    if (delta == 0.0) return;
    double* Gb = Gb_.data();
    for_blocks(n_, par_, [&](int64_t, int64_t lo, int64_t hi) {
#pragma omp simd
      for (int64_t k = lo; k < hi; ++k) Gb[k] += delta * static_cast<double>(Qu[k]);
    });
  }

  // WSS2 gains b^2 / a of the units [lo, hi) of the active list (positions), given i (m, its
  // column, 1/c_i): -inf outside I_low or where b <= 0.  The candidate test is the comparison
  // val(k) < m, not b > 0: b = m - val(k) may be evaluated as one fused multiply-add (the avx2
  // variant is built with -mfma, the GPU contracts too), which leaves the rounding residual of
  // val(i) instead of an exact 0 at k = i (and at ties with i).  i itself then became its own
  // partner whenever c_i was small (all true partners have curvature ~ Q_ii / c_i^2, so their
  // gains fell below residual^2 / tau): a null step (x_i += t/c_i, then -= t/c_i) repeated until
  // max_iter.  The comparison is exact, so i and ties are excluded as in the reference.
  // Not inlined: the block pass and the search inside the winning block run this same code, so
  // they see the same values.
  struct GainArgs {
    const double *G, *invc, *dinv, *lowm;
    const int64_t* act;
    bool dense;
    double m, qi_term, twoici, tau;
  };
  template <typename Q>
  __attribute__((noinline)) static double gain_block(const GainArgs& g, const Q* Qi, int64_t lo,
                                                     int64_t hi, double* out) {
    double gb = -kInf;
    const int64_t len = hi - lo;
    if (g.dense) {
      const double *G = g.G + lo, *invc = g.invc + lo, *dinv = g.dinv + lo, *lowm = g.lowm + lo;
      const Q* q = Qi + lo;
#pragma omp simd reduction(max : gb)
      for (int64_t t = 0; t < len; ++t) {
        const double vk = -G[t] * invc[t];
        const double bk = g.m - vk;
        double ak = (g.qi_term + dinv[t]) - static_cast<double>(q[t]) * (g.twoici * invc[t]);
        ak = std::max(ak, g.tau);
        const double v = (lowm[t] == 0.0 && vk < g.m) ? bk * bk / ak : -kInf;
        out[t] = v;
        gb = std::max(gb, v);
      }
    } else {
      for (int64_t t = 0; t < len; ++t) {
        const int64_t k = g.act[lo + t];
        const double vk = -g.G[k] * g.invc[k];
        const double bk = g.m - vk;
        double ak = (g.qi_term + g.dinv[k]) - static_cast<double>(Qi[k]) * (g.twoici * g.invc[k]);
        ak = std::max(ak, g.tau);
        const double v = (g.lowm[k] == 0.0 && vk < g.m) ? bk * bk / ak : -kInf;
        out[t] = v;
        gb = std::max(gb, v);
      }
    }
    return gb;
  }

  // Second-order choice of j (WSS2) over the active units, given i and its column.
  int64_t select_j(int64_t i, const T* Qi, double ici) {
    GainArgs ga{G_.data(),   invc_.data(), dinv_.data(), lowm_.data(),
                act_.data(), na_ == n_,    m_,           cols_.diag(i) * ici * ici,
                2.0 * ici,   tau_};
    for_blocks(na_, par_, [&](int64_t blk, int64_t lo, int64_t hi) {
      double buf[kBlock];
      bm_[blk] = gain_block(ga, Qi, lo, hi, buf);
    });
    const int64_t nbA = (na_ + kBlock - 1) / kBlock;
    double g = -kInf;
    int64_t bb = -1;
    for (int64_t blk = 0; blk < nbA; ++blk)
      if (bm_[blk] > g) {
        g = bm_[blk];
        bb = blk;
      }
    if (bb < 0) return -1;  // no candidate (cannot happen while kkt >= tol)
    double buf[kBlock];
    const int64_t lo = bb * kBlock, hi = std::min(na_, (bb + 1) * kBlock);
    gain_block(ga, Qi, lo, hi, buf);
    for (int64_t t = 0; t < hi - lo; ++t)
      if (buf[t] == g) return ga.dense ? lo + t : act_[lo + t];
    return -1;
  }

  // ---- shrinking ------------------------------------------------------------------------------
  // A unit leaves the active set when it sits at a bound and its violation measure points into
  // that bound by more than the current extreme of the opposite set (so it cannot be chosen in
  // the next steps and its value would not change).  Uses the state of the last scan.
  void shrink() {
    if (na_ <= 2) return;
    const double m = m_, M = M_;
    int64_t w = 0;
    for (int64_t t = 0; t < na_; ++t) {
      const int64_t k = act_[t];
      bool drop = false;
      if (is_pair_[k]) {
        const bool in_up = upm_[k] == 0.0, in_low = lowm_[k] == 0.0;
        // only at a bound (in exactly one of the two sets)
        if (in_up && !in_low) drop = val(k) < M;   // cannot be the max of I_up nor pair with i
        else if (in_low && !in_up) drop = val(k) > m;
        else if (!in_up && !in_low) drop = true;  // fixed unit
      } else if (is_single_[k]) {
        const bool at_lo = pl_[k] == -kInf && ph_[k] == 0.0;   // can only increase
        const bool at_up = ph_[k] == kInf && pl_[k] == 0.0;    // can only decrease
        if (at_lo) drop = G_[k] > 0.0;        // pushes into the lower bound
        else if (at_up) drop = G_[k] < 0.0;   // pushes into the upper bound
      } else {
        drop = true;
      }
      if (drop && (k == i_ || k == k_)) drop = false;
      if (!drop) act_[w++] = k;
    }
    if (w < 2) return;  // keep the previous set (nothing sensible to shrink to)
    if (w < na_) {
      na_ = w;
      shrunk_ = true;
    }
  }

  // Back to all units: rebuild the gradients of the shrunk units, then a full scan.
  void unshrink() {
    if (!shrunk_) return;
    std::vector<uint8_t> active(n_, 0);
    for (int64_t t = 0; t < na_; ++t) active[act_[t]] = 1;
    std::vector<int64_t> rows;
    rows.reserve(n_ - na_);
    for (int64_t k = 0; k < n_; ++k)
      if (!active[k]) rows.push_back(k);
    rebuild(rows);
    for (int64_t k = 0; k < n_; ++k) act_[k] = k;
    na_ = n_;
    shrunk_ = false;
    scan_full();
  }

  // ---- results --------------------------------------------------------------------------------
  void finish(const QPOutputs<T>& out, int64_t it, bool conv) {
    const int64_t q = q_, N = pb_.N, n = n_;
    T* xo = out.x + q * N;
    double obj = 0.0;
    for (int64_t k = 0; k < n; ++k) {
      xo[idx_[k]] = static_cast<T>(x_[k]);
      obj += x_[k] * (0.5 * (G_[k] + p_[k]) - p_[k]);
    }
    double nu = 0.0;
    if (pb_.c != nullptr) {
      double s = 0.0;
      int64_t nf = 0;
      for (int64_t k = 0; k < n; ++k) {
        if (is_pair_[k] && x_[k] > lo_[k] && x_[k] < up_[k]) {
          s += val(k);
          ++nf;
        }
      }
      if (nf > 0) {
        nu = s / static_cast<double>(nf);
      } else {
        const bool fm = std::isfinite(m_), fM = std::isfinite(M_);
        nu = fm && fM ? 0.5 * (m_ + M_) : (fm ? m_ : (fM ? M_ : 0.0));
      }
    }
    out.nu[q] = static_cast<T>(nu);
    out.objective[q] = static_cast<T>(obj);
    out.kkt[q] = static_cast<T>(kkt_);
    out.iterations[q] = it;
    out.converged[q] = conv;
  }

  const QPSource<T>& S_;
  const QPProblems<T>& pb_;
  const QPOptions& opt_;
  int64_t q_;
  bool par_ = false, par_allowed_ = false;
  std::chrono::steady_clock::time_point probe_t0_;
  double probe_ser_ = 0.0;
  int64_t probe_phase_ = 0, probe_it0_ = 0, probe_next_ = 0, probe_every_ = kProbeEvery;
  int64_t windows_ = 0, par_windows_ = 0;
  std::vector<int64_t> idx_;
  int64_t n_ = 0;
  Columns<T> cols_;
  std::vector<double> x_, G_, p_, lo_, up_, c_, invc_, dinv_, upm_, lowm_, pl_, ph_;
  std::vector<double> Gb_;
  std::vector<uint8_t> is_pair_, is_single_, inb_;
  std::vector<int64_t> act_;
  int64_t na_ = 0, nb_ = 0, n_refresh_ = 0, sum_active_ = 0;
  bool shrunk_ = false, has_pair_ = false, has_single_ = false;
  std::vector<double> bm_, bM_, bs_;
  double qmax_ = 0.0, pmax_ = 0.0;
  double tau_ = kTauRel, m_ = -kInf, M_ = kInf, sv_ = 0.0, pv_ = 0.0, kkt_ = 0.0;
  int64_t i_ = -1, k_ = -1;
  double dec_ = 0.0;  // objective decrease accumulated by the steps since the last window check
};

// Compact index lists of the masked units of every dataset.
std::vector<std::vector<int64_t>> mask_lists(const bool* mask, int64_t S, int64_t N) {
  std::vector<std::vector<int64_t>> r(S);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t i = 0; i < N; ++i)
      if (mask[s * N + i]) r[s].push_back(i);
  return r;
}

}  // namespace

template <typename T>
void qp_solve_cpu(const QPSource<T>& S, const QPProblems<T>& pb, const QPOptions& opt,
                  const QPOutputs<T>& out) {
  const int64_t P = pb.P;
  if (P == 0) return;
  int64_t max_n = 0;
  for (int64_t q = 0; q < P; ++q) {
    int64_t n = 0;
    for (int64_t i = 0; i < pb.N; ++i) n += pb.mask[q * pb.N + i] ? 1 : 0;
    max_n = std::max(max_n, n);
  }
  const int64_t nthreads = at::get_num_threads();
  const bool inner =
      !at::in_parallel_region() && nthreads > 1 && P < nthreads && max_n >= opt.inner_min_units;
  if (inner || nthreads <= 1 || P == 1) {
    for (int64_t q = 0; q < P; ++q) Solver<T>(S, pb, opt, q, inner).run(out);
    return;
  }
  // One task per thread, each pulling problems from a shared counter (problems differ widely in
  // cost); results do not depend on which thread solves which problem.
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(nthreads, P), 1, [&](int64_t, int64_t) {
    for (int64_t q = next.fetch_add(1); q < P; q = next.fetch_add(1))
      Solver<T>(S, pb, opt, q, false).run(out);
  });
}

namespace {

constexpr int64_t kRowTile = 32;  // rows per work item of the row passes (lse, row sums)

// Work items (dataset, first row) over the rows of every dataset.
std::vector<std::pair<int64_t, int64_t>> row_items(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<std::pair<int64_t, int64_t>> work;
  for (int64_t s = 0; s < static_cast<int64_t>(rows.size()); ++s)
    for (int64_t r = 0; r < static_cast<int64_t>(rows[s].size()); r += kRowTile)
      work.push_back({s, r});
  return work;
}

}  // namespace

// Row passes: a work item is a tile of kRowTile rows of one dataset; it sweeps the dataset's units
// in blocks of kBlock, computing the kernel of every row of the tile against the block while the
// block's features are in cache (streaming the features once per tile, not once per row).  Each
// row is reduced in a fixed order by one work item: results do not depend on the thread count.
template <typename T>
void qp_kernel_lse_cpu(const T* X, const bool* mask, int64_t S, int64_t N, int64_t D, double scale,
                       double* lse) {
  std::fill(lse, lse + S * N, 0.0);
  const auto lists = mask_lists(mask, S, N);
  std::vector<CompactFeatures> feats(S);
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s)
      gather_features(X + s * N * D, D, nullptr, lists[s], feats[s]);
  });
  const auto work = row_items(lists);
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t w0, int64_t w1) {
    double v[kBlock];
    std::vector<double> xq(kRowTile * D), mx(kRowTile), sum(kRowTile);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t s = work[w].first, r0 = work[w].second;
      const CompactFeatures& f = feats[s];
      const int64_t n = f.n, nr = std::min(kRowTile, n - r0);
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t d = 0; d < D; ++d) xq[r * D + d] = f.Xt[d * n + r0 + r];
        mx[r] = -kInf;
        sum[r] = 0.0;
      }
      for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock), len = e - b;
        for (int64_t r = 0; r < nr; ++r) {
          kernel_block(kQPLinear, f, xq.data() + r * D, 0.0, 0.0, 1.0, b, e, v);
          double bm = -kInf;
#pragma omp simd reduction(max : bm)
          for (int64_t t = 0; t < len; ++t) {
            v[t] *= scale;
            bm = std::max(bm, v[t]);
          }
          if (bm > mx[r]) {  // online log-sum-exp: rescale the running sum to the new maximum
            sum[r] *= vexp(mx[r] - bm);
            mx[r] = bm;
          }
          const double m = mx[r];
          for (int64_t t = 0; t < len; ++t) v[t] -= m;
          vexp_inplace(v, len);
          double acc = 0.0;
#pragma omp simd reduction(+ : acc)
          for (int64_t t = 0; t < len; ++t) acc += v[t];
          sum[r] += acc;
        }
      }
      for (int64_t r = 0; r < nr; ++r) lse[s * N + lists[s][r0 + r]] = mx[r] + std::log(sum[r]);
    }
  });
}

template <typename T>
void qp_kernel_rowsum_cpu(const QPSource<T>& src, const bool* rowmask, const bool* colmask,
                          double* out) {
  const int64_t S = src.S, N = src.N;
  std::fill(out, out + S * N, 0.0);
  const auto rows = mask_lists(rowmask, S, N);
  const auto colsl = mask_lists(colmask, S, N);
  const auto work = row_items(rows);
  if (src.kind == kQPDense) {
    at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t s = work[w].first;
        const auto& rl = rows[s];
        const auto& cl = colsl[s];
        for (int64_t r = work[w].second;
             r < std::min<int64_t>(rl.size(), work[w].second + kRowTile); ++r) {
          const T* a = src.X + (s * N + rl[r]) * N;
          double acc = 0.0;
          for (int64_t j : cl) acc += static_cast<double>(a[j]);
          out[s * N + rl[r]] = acc;
        }
      }
    });
    return;
  }
  const int64_t D = src.D;
  std::vector<CompactFeatures> feats(S);
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s)
      gather_features(src.X + s * N * D, D, src.kind == kQPCina ? src.lse + s * N : nullptr,
                      colsl[s], feats[s]);
  });
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t w0, int64_t w1) {
    double v[kBlock];
    std::vector<double> xq(kRowTile * D), lq(kRowTile), acc(kRowTile);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t s = work[w].first, r0 = work[w].second;
      const CompactFeatures& f = feats[s];
      const int64_t n = f.n;
      const auto& rl = rows[s];
      const int64_t nr = std::min<int64_t>(kRowTile, static_cast<int64_t>(rl.size()) - r0);
      const double gamma = (src.kind == kQPRbf || src.kind == kQPLaplace) ? src.gamma[s] : 0.0;
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t o = rl[r0 + r];
        const T* xr = src.X + (s * N + o) * D;
        for (int64_t d = 0; d < D; ++d) xq[r * D + d] = static_cast<double>(xr[d]);
        lq[r] = src.kind == kQPCina ? src.lse[s * N + o] : 0.0;
        acc[r] = 0.0;
      }
      for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock), len = e - b;
        for (int64_t r = 0; r < nr; ++r) {
          kernel_block(src.kind, f, xq.data() + r * D, lq[r], gamma, src.scale, b, e, v);
          double a = 0.0;
#pragma omp simd reduction(+ : a)
          for (int64_t t = 0; t < len; ++t) a += v[t];
          acc[r] += a;
        }
      }
      for (int64_t r = 0; r < nr; ++r) out[s * N + rl[r0 + r]] = acc[r];
    }
  });
}

template <typename T>
void qp_check_dense_cpu(const T* A, const bool* mask, int64_t S, int64_t N, double* asym,
                        bool* finite) {
  const auto lists = mask_lists(mask, S, N);
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    constexpr int64_t tile = 32;
    for (int64_t s = s0; s < s1; ++s) {
      const auto& l = lists[s];
      const int64_t n = static_cast<int64_t>(l.size());
      const T* a = A + s * N * N;
      double dmax = 0.0, amax = 0.0;
      bool fin = true;
      for (int64_t i0 = 0; i0 < n; i0 += tile) {
        for (int64_t j0 = i0; j0 < n; j0 += tile) {
          for (int64_t i = i0; i < std::min(n, i0 + tile); ++i) {
            const T* ri = a + l[i] * N;
            for (int64_t j = std::max(j0, i); j < std::min(n, j0 + tile); ++j) {
              const double u = static_cast<double>(ri[l[j]]),
                           v = static_cast<double>(a[l[j] * N + l[i]]);
              if (!std::isfinite(u) || !std::isfinite(v)) fin = false;
              amax = std::max(amax, std::max(std::abs(u), std::abs(v)));
              dmax = std::max(dmax, std::abs(u - v));
            }
          }
        }
      }
      finite[s] = fin;
      asym[s] = !fin ? kInf : (amax > 0 ? dmax / amax : 0.0);
    }
  });
}

#define CINA_QP_INSTANTIATE(T)                                                                  \
  template void qp_solve_cpu<T>(const QPSource<T>&, const QPProblems<T>&, const QPOptions&,     \
                                const QPOutputs<T>&);                                           \
  template void qp_kernel_lse_cpu<T>(const T*, const bool*, int64_t, int64_t, int64_t, double,  \
                                     double*);                                                  \
  template void qp_kernel_rowsum_cpu<T>(const QPSource<T>&, const bool*, const bool*, double*); \
  template void qp_check_dense_cpu<T>(const T*, const bool*, int64_t, int64_t, double*, bool*);
CINA_QP_INSTANTIATE(float)
CINA_QP_INSTANTIATE(double)
#undef CINA_QP_INSTANTIATE

}  // namespace CINA_CPU_VARIANT
}  // namespace cina
