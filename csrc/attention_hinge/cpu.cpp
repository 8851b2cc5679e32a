// CPU implementation of the fused attention + hinge operator (contract in attention_hinge.h).
//
// Design: per dataset the valid units are gathered into a compact block (keys also transposed,
// D x n, so that the inner loops over units are contiguous and vectorise).  Work items are
// (dataset, block of 16 rows); each item streams over all units in tiles of 128 with an online
// softmax, so nothing of size N x N is ever stored.  The forward is one row pass; the backward is
// one column pass (the scores are symmetric, so a "column" pass is a row pass with the softmax
// reference lse taken from the reduced index).  Each output row is written by exactly one work
// item and every reduction runs in a fixed order, so results do not depend on the thread count.
#include "attention_hinge/attention_hinge.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

// This file is compiled once per instruction-set variant (CINA_CPU_VARIANT = base, or avx2 with
// -mavx2 -mfma on x86-64); cpu_dispatch.cpp picks one at run time.
#ifndef CINA_CPU_VARIANT
#define CINA_CPU_VARIANT base
#endif

#include "common/fast_exp.h"

namespace cina {
namespace CINA_CPU_VARIANT {
namespace {

constexpr int64_t kRowBlock = 16;
constexpr int64_t kColBlock = 128;

// sign(x) * exp(log_c + log|x|): the product c * x with c = exp(log_c) formed without overflow
// when x is small, and exactly 0 when x == 0 (never inf * 0 = NaN).
inline double scaled_product(double log_c, double x) {
  if (x == 0.0) return 0.0;
  return std::copysign(std::exp(log_c + std::log(std::fabs(x))), x);
}

template <typename T>
struct CompactBatch {
  // per dataset: offset into the compact arrays and number of valid units
  std::vector<int64_t> offset, count;
  std::vector<int64_t> index;  // compact position -> position within the dataset (0..N-1)
  std::vector<T> keys;         // (sum n) x D, row-major
  std::vector<T> keys_t;       // per dataset: D x n block at offset * D
  std::vector<T> values;       // (sum n)
};

template <typename T>
CompactBatch<T> gather(const T* K, const T* V, const bool* mask, AttentionHingeShape s) {
  CompactBatch<T> c;
  c.offset.resize(s.B);
  c.count.resize(s.B);
  int64_t total = 0;
  for (int64_t bi = 0; bi < s.B; ++bi) {
    int64_t n = 0;
    const bool* m = mask + bi * s.N;
    for (int64_t i = 0; i < s.N; ++i) n += m[i] ? 1 : 0;
    c.offset[bi] = total;
    c.count[bi] = n;
    total += n;
  }
  c.index.resize(total);
  c.keys.resize(total * s.D);
  c.keys_t.resize(total * s.D);
  c.values.resize(total);
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const bool* m = mask + bi * s.N;
      const int64_t off = c.offset[bi], n = c.count[bi];
      int64_t p = 0;
      for (int64_t i = 0; i < s.N; ++i) {
        if (!m[i]) continue;
        c.index[off + p] = i;
        const T* k = K + (bi * s.N + i) * s.D;
        for (int64_t d = 0; d < s.D; ++d) {
          c.keys[(off + p) * s.D + d] = k[d];
          c.keys_t[off * s.D + d * n + p] = k[d];
        }
        c.values[off + p] = V[bi * s.N + i];
        ++p;
      }
    }
  });
  return c;
}

// Work items: (dataset, first compact row) for blocks of kRowBlock rows.
struct WorkItem {
  int64_t dataset, row0;
};

std::vector<WorkItem> make_work(const std::vector<int64_t>& count) {
  std::vector<WorkItem> work;
  for (int64_t bi = 0; bi < static_cast<int64_t>(count.size()); ++bi)
    for (int64_t r = 0; r < count[bi]; r += kRowBlock) work.push_back({bi, r});
  return work;
}

// scores[r][c] = scale * k_{row0+r} . k_{col0+c} over the compact block of one dataset.
template <typename T>
inline void score_tile(const T* keys, const T* keys_t, int64_t n, int64_t D, int64_t row0,
                       int64_t nr, int64_t col0, int64_t nc, T scale, T* scores) {
  for (int64_t r = 0; r < nr; ++r) {
    T* srow = scores + r * kColBlock;
    for (int64_t c = 0; c < nc; ++c) srow[c] = T(0);
    const T* kr = keys + (row0 + r) * D;
    for (int64_t d = 0; d < D; ++d) {
      const T kd = kr[d];
      const T* kt = keys_t + d * n + col0;
      for (int64_t c = 0; c < nc; ++c) srow[c] += kd * kt[c];
    }
    for (int64_t c = 0; c < nc; ++c) srow[c] *= scale;
  }
}

}  // namespace

template <typename T>
void attention_hinge_fwd_cpu(const T* K, const T* V, const T* W, const T* b, const T* lam,
                             const bool* mask, AttentionHingeShape s, double scale,
                             int64_t loss_kind, bool need_aux, T* loss, T* out, T* lse, T* A,
                             T* Bk) {
  const int64_t D = s.D;
  // padded rows: out = lse = 0, aux = 0
  std::fill(out, out + s.B * s.N, T(0));
  std::fill(lse, lse + s.B * s.N, T(0));
  if (need_aux) {
    std::fill(A, A + s.B * s.N * D, T(0));
    std::fill(Bk, Bk + s.B * s.N * D, T(0));
  }
  CompactBatch<T> c = gather(K, V, mask, s);
  std::vector<WorkItem> work = make_work(c.count);

  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t wb, int64_t we) {
    std::vector<T> scores(kRowBlock * kColBlock), p(kColBlock);
    std::vector<double> m(kRowBlock), l(kRowBlock), o(kRowBlock);
    std::vector<T> accA(need_aux ? kRowBlock * D : 0), accB(need_aux ? kRowBlock * D : 0);
    for (int64_t w = wb; w < we; ++w) {
      const int64_t bi = work[w].dataset, row0 = work[w].row0;
      const int64_t n = c.count[bi], off = c.offset[bi];
      const int64_t nr = std::min(kRowBlock, n - row0);
      const T* keys = c.keys.data() + off * D;
      const T* keys_t = c.keys_t.data() + off * D;
      const T* vals = c.values.data() + off;
      std::fill(m.begin(), m.end(), -std::numeric_limits<double>::infinity());
      std::fill(l.begin(), l.end(), 0.0);
      std::fill(o.begin(), o.end(), 0.0);
      std::fill(accA.begin(), accA.end(), T(0));
      std::fill(accB.begin(), accB.end(), T(0));
      for (int64_t col0 = 0; col0 < n; col0 += kColBlock) {
        const int64_t nc = std::min(kColBlock, n - col0);
        score_tile(keys, keys_t, n, D, row0, nr, col0, nc, T(scale), scores.data());
        for (int64_t r = 0; r < nr; ++r) {
          const T* srow = scores.data() + r * kColBlock;
          T mx = srow[0];
#pragma omp simd reduction(max : mx)
          for (int64_t cc = 1; cc < nc; ++cc) mx = std::max(mx, srow[cc]);
          const double m_new = std::max(m[r], static_cast<double>(mx));
          const double rescale = std::exp(m[r] - m_new);  // 0 on the first tile (m = -inf)
          const T mt = static_cast<T>(m_new);
          T lsum = 0, osum = 0;
          const T* vj = vals + col0;
#pragma omp simd reduction(+ : lsum, osum)
          for (int64_t cc = 0; cc < nc; ++cc) {
            const T e = exp_or_zero(srow[cc] - mt);
            p[cc] = e;
            lsum += e;
            osum += e * vj[cc];
          }
          l[r] = l[r] * rescale + lsum;
          o[r] = o[r] * rescale + osum;
          m[r] = m_new;
          if (need_aux) {
            T* a = accA.data() + r * D;
            T* bb = accB.data() + r * D;
            const T rs = static_cast<T>(rescale);
            for (int64_t d = 0; d < D; ++d) {
              const T* kt = keys_t + d * n + col0;
              T sa = 0, sb = 0;
              const T* vj = vals + col0;
#pragma omp simd reduction(+ : sa, sb)
              for (int64_t cc = 0; cc < nc; ++cc) {
                const T pk = p[cc] * kt[cc];
                sb += pk;
                sa += pk * vj[cc];
              }
              a[d] = a[d] * rs + sa;
              bb[d] = bb[d] * rs + sb;
            }
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = bi * s.N + c.index[off + row0 + r];
        out[i] = static_cast<T>(o[r] / l[r]);
        lse[i] = static_cast<T>(m[r] + std::log(l[r]));
        if (need_aux) {
          const T inv = static_cast<T>(1.0 / l[r]);
          for (int64_t d = 0; d < D; ++d) {
            A[i * D + d] = accA[r * D + d] * inv;
            Bk[i * D + d] = accB[r * D + d] * inv;
          }
        }
      }
    }
  });

  // per-dataset loss, summed in a fixed order
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const double log_half_lam = std::log(static_cast<double>(lam[bi]) / 2.0);
      double total = 0.0;
      for (int64_t i = bi * s.N; i < (bi + 1) * s.N; ++i) {
        if (!mask[i]) continue;
        const double r = 1.0 - static_cast<double>(W[i]) * (static_cast<double>(out[i]) + b[bi]);
        const double hinge =
            loss_kind == kHinge ? std::max(r, 0.0) : 0.5 * std::max(r, 0.0) * std::max(r, 0.0);
        const double pen =
            scaled_product(lse[i] + log_half_lam, static_cast<double>(V[i]) * out[i]);
        total += hinge + pen;
      }
      loss[bi] = static_cast<T>(total);
    }
  });
}

template <typename T>
void attention_hinge_bwd_cpu(const T* K, const T* V, const T* W, const T* b, const T* lam,
                             const bool* mask, const T* out, const T* lse, const T* A, const T* Bk,
                             const T* g_loss, const T* g_out, const T* g_lse, AttentionHingeShape s,
                             double scale, int64_t loss_kind, T* dK, T* dV, T* db) {
  const int64_t D = s.D;
  std::fill(dK, dK + s.B * s.N * D, T(0));
  std::fill(dV, dV + s.B * s.N, T(0));
  CompactBatch<T> c = gather(K, V, mask, s);
  const int64_t total = static_cast<int64_t>(c.index.size());
  // per-unit scalars of the backward (compact layout): g, delta, lse, and c_j o_j
  std::vector<T> gv(total), dv(total), lsev(total), co(total);
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const double gL = g_loss[bi];
      const double log_half_lam = std::log(static_cast<double>(lam[bi]) / 2.0);
      double dbsum = 0.0;
      for (int64_t p = 0; p < c.count[bi]; ++p) {
        const int64_t q = c.offset[bi] + p;
        const int64_t i = bi * s.N + c.index[q];
        const double oi = out[i], vi = V[i], wi = W[i];
        const double r = 1.0 - wi * (oi + b[bi]);
        const double u = loss_kind == kHinge ? (r > 0.0 ? -wi : 0.0) : -wi * std::max(r, 0.0);
        const double log_c = lse[i] + log_half_lam;
        const double cv = scaled_product(log_c, vi);
        const double g = gL * (u + cv) + static_cast<double>(g_out[i]);
        const double e = gL * scaled_product(log_c, vi * oi) + static_cast<double>(g_lse[i]);
        gv[q] = static_cast<T>(g);
        dv[q] = static_cast<T>(g * oi - e);
        lsev[q] = lse[i];
        co[q] = static_cast<T>(gL * scaled_product(log_c, oi));
        dbsum += gL * u;
      }
      db[bi] = static_cast<T>(dbsum);
    }
  });

  std::vector<WorkItem> work = make_work(c.count);
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t wb, int64_t we) {
    std::vector<T> scores(kRowBlock * kColBlock), q1(kColBlock), q2(kColBlock);
    std::vector<double> colg(kRowBlock);
    std::vector<T> acc1(kRowBlock * D), acc2(kRowBlock * D);
    for (int64_t w = wb; w < we; ++w) {
      const int64_t bi = work[w].dataset, row0 = work[w].row0;
      const int64_t n = c.count[bi], off = c.offset[bi];
      const int64_t nr = std::min(kRowBlock, n - row0);
      const T* keys = c.keys.data() + off * D;
      const T* keys_t = c.keys_t.data() + off * D;
      const T* g = gv.data() + off;
      const T* dl = dv.data() + off;
      const T* ls = lsev.data() + off;
      std::fill(colg.begin(), colg.end(), 0.0);
      std::fill(acc1.begin(), acc1.end(), T(0));
      std::fill(acc2.begin(), acc2.end(), T(0));
      // The block's units play the role of columns j; the tile's units are the rows i.
      for (int64_t i0 = 0; i0 < n; i0 += kColBlock) {
        const int64_t ni = std::min(kColBlock, n - i0);
        score_tile(keys, keys_t, n, D, row0, nr, i0, ni, T(scale), scores.data());
        for (int64_t r = 0; r < nr; ++r) {
          const T* srow = scores.data() + r * kColBlock;
          T gs = 0;
          const T* lsi = ls + i0;
          const T* gi = g + i0;
          const T* di = dl + i0;
#pragma omp simd reduction(+ : gs)
          for (int64_t cc = 0; cc < ni; ++cc) {
            const T pij = exp_or_zero(srow[cc] - lsi[cc]);  // <= 1: never overflows
            q1[cc] = pij * gi[cc];
            q2[cc] = pij * di[cc];
            gs += q1[cc];
          }
          colg[r] += gs;
          T* a1 = acc1.data() + r * D;
          T* a2 = acc2.data() + r * D;
          for (int64_t d = 0; d < D; ++d) {
            const T* kt = keys_t + d * n + i0;
            T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
            for (int64_t cc = 0; cc < ni; ++cc) {
              s1 += q1[cc] * kt[cc];
              s2 += q2[cc] * kt[cc];
            }
            a1[d] += s1;
            a2[d] += s2;
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t q = row0 + r;
        const int64_t j = bi * s.N + c.index[off + q];
        const T vj = c.values[off + q];
        dV[j] = static_cast<T>(colg[r]) + co[off + q];
        const T sc = static_cast<T>(scale);
        for (int64_t d = 0; d < D; ++d) {
          const T query_side = g[q] * A[j * D + d] - dl[q] * Bk[j * D + d];
          const T key_side = vj * acc1[r * D + d] - acc2[r * D + d];
          dK[j * D + d] = sc * (query_side + key_side);
        }
      }
    }
  });
}

#define CINA_INSTANTIATE(T)                                                                        \
  template void attention_hinge_fwd_cpu<T>(const T*, const T*, const T*, const T*, const T*,       \
                                           const bool*, AttentionHingeShape, double, int64_t,      \
                                           bool, T*, T*, T*, T*, T*);                              \
  template void attention_hinge_bwd_cpu<T>(                                                        \
      const T*, const T*, const T*, const T*, const T*, const bool*, const T*, const T*, const T*, \
      const T*, const T*, const T*, const T*, AttentionHingeShape, double, int64_t, T*, T*, T*);
CINA_INSTANTIATE(float)
CINA_INSTANTIATE(double)
#undef CINA_INSTANTIATE

}  // namespace CINA_CPU_VARIANT
}  // namespace cina
