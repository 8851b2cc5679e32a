// CUDA implementation of the batched box-QP / balancing dual solver (contract in qp_solve.h; the
// CPU twin is csrc/qp_solve/cpu.cpp, the ground truth cina_ext/reference_qp.py).
//
// Design:
// * One thread block per problem.  The grid is persistent: min(P, SMs x resident blocks per SM)
//   blocks, each pulling problems from a global counter (problems differ widely in cost; results
//   do not depend on which block solves which problem).
// * Per block a workspace in global memory (one allocation per call, stream ordered): the valid
//   units of the problem are compacted (index list idx, order preserved), their features
//   gathered and transposed (D x n, double) so that a kernel column is a coalesced pass, and the
//   state kept in double: x, the gradient G = Qx - p, bounds, 1/c, diag(Q), signs and per-unit
//   flags (pair / single / I_up / I_low membership).
// * Unit k belongs to thread k % blockDim.x for the whole solve: it computes the entries of every
//   kernel column at its units, updates G there, and is the only thread that reads them in the
//   passes, so column computation needs no barrier.  Scalars of a step (the chosen coordinates,
//   the step length, the new x values) are computed by thread 0 and broadcast through shared
//   memory.  Every block-wide reduction (argmax / argmin with first-index tie-breaking, sums) is a
//   warp butterfly followed by an in-order fold over the warps, read identically by all threads:
//   every thread takes the same decisions, and results are deterministic for a given block size.
// * Kernel columns: computed on the fly (dense: gathered from the given matrix) and kept in a
//   per-block column cache in global memory (FIFO eviction that never evicts the column in use),
//   sized from QPOptions::cache_bytes and the free device memory.  Cached or not, a column holds
//   the same values (rounded to T, as in the CPU solver).
// * Algorithm: the CPU solver's without shrinking (shrinking changes the cost of a step, not the
//   iterates): greedy coordinate descent on coordinates with c_i = 0, SMO with LIBSVM's WSS2
//   second-order choice of j on coordinates with c_i != 0, curvature floored at
//   tau = 1e-12 max Q_ii, gradient updated in double after every step and rebuilt from scratch
//   after a step without representable progress; feasible start built as the CPU solver and the
//   reference do (sorted breakpoints: bitonic sort in the workspace, then binary search); same
//   KKT measure, multiplier nu, iteration counting, stop rules (tol; max_iter; 3 steps without
//   progress; stagnation at the rounding level of T; kStuckWindows windows without progress, a
//   cycle) and not-converged flag.
// * Helper operators: qp_kernel_lse_cuda (row log-sum-exp of the cina scores, online, one thread
//   per row) and qp_kernel_rowsum_cuda (row sums of the kernel, one thread per row).
//
// The file is pure CUDA (no torch headers).  Compiled on the host with CINA_EMULATE defined by
// tests/cuda_emulator/qp_emulator.cpp (one std::thread per CUDA thread), so that the very kernels
// are tested without a GPU (tests/test_qp_cuda_emulator.py).
#ifndef CINA_WITH_CUDA
#define CINA_WITH_CUDA 1
#endif
#include "qp_solve/qp_solve.h"

#include "common/cuda_rt.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#ifndef CINA_EMULATE
#define CINA_QP_HD __host__ __device__ __forceinline__
#else
#define CINA_QP_HD inline
#endif
// (under CINA_EMULATE the emulator defines CINA_DEV, CINA_KERNEL, CINA_DYN_SMEM, dim3,
//  threadIdx/blockIdx/..., __syncthreads, __shfl_xor_sync, atomicAdd, CINA_LAUNCH and the
//  cina::cuda_rt::rt_* functions before including this file; see common/cuda_rt.h)

namespace cina {
namespace qp_cuda_detail {

using namespace ::cina::cuda_rt;  // fail, rt_* (common/cuda_rt.h)

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kTauRel = 1e-12;
constexpr int64_t kStuckWindows = 8;  // windows without progress before a solve counts as stuck
constexpr int kMaxThreads = 1024;
constexpr int kRowThreads = 128;  // helper kernels: one thread per row

template <typename T>
struct Eps;
template <>
struct Eps<float> {
  static constexpr double value = 1.1920928955078125e-07;
};
template <>
struct Eps<double> {
  static constexpr double value = 2.220446049250313080847e-16;
};

// std::min / std::max semantics (the CPU solver's), usable on the device
CINA_QP_HD double dmin(double a, double b) { return (b < a) ? b : a; }
CINA_QP_HD double dmax(double a, double b) { return (a < b) ? b : a; }
CINA_QP_HD double clip(double v, double l, double u) { return dmin(dmax(v, l), u); }
CINA_QP_HD bool finite(double v) { return v == v && v != kInf && v != -kInf; }
CINA_QP_HD double exp_clamped(double v) { return exp(dmin(dmax(v, -708.0), 709.0)); }

// Unit flags
enum : unsigned char { kPair = 1, kSingle = 2, kCpos = 4, kCanInc = 8, kCanDec = 16 };
CINA_QP_HD bool in_up(unsigned char f) {
  return (f & kPair) && ((f & kCpos) ? (f & kCanInc) : (f & kCanDec));
}
CINA_QP_HD bool in_low(unsigned char f) {
  return (f & kPair) && ((f & kCpos) ? (f & kCanDec) : (f & kCanInc));
}
// projected gradient of a single coordinate: clamp(g, pl, ph) (pl = -inf when it can increase,
// ph = +inf when it can decrease, else 0)
CINA_QP_HD double proj_grad(double g, unsigned char f) {
  if (!(f & kSingle)) return 0.0;
  const double pl = (f & kCanInc) ? -kInf : 0.0;
  const double ph = (f & kCanDec) ? kInf : 0.0;
  return dmin(dmax(g, pl), ph);
}

// Per-block workspace layout (byte offsets), identical on host and device.
struct Layout {
  int64_t x, G, p, lo, up, c, invc, diag, sgn, lse, Xt, bp, idx, slot, owner, flags, cache, total;
};
CINA_QP_HD int64_t align256(int64_t v) { return (v + 255) & ~int64_t(255); }
CINA_QP_HD Layout make_layout(int64_t N, int64_t D, bool feats, int64_t cap, int64_t m2, int64_t tsize) {
  Layout L{};
  int64_t o = 0;
  const int64_t nd = align256(N * 8);
  L.x = o; o += nd;
  L.G = o; o += nd;
  L.p = o; o += nd;
  L.lo = o; o += nd;
  L.up = o; o += nd;
  L.c = o; o += nd;
  L.invc = o; o += nd;
  L.diag = o; o += nd;
  L.sgn = o; o += nd;
  L.lse = o; o += nd;
  L.Xt = o; o += feats ? align256(N * D * 8) : 0;
  L.bp = o; o += align256(m2 * 8);
  L.idx = o; o += align256(N * 4);
  L.slot = o; o += align256(N * 4);
  L.owner = o; o += align256(cap * 4);
  L.flags = o; o += align256(N);
  L.cache = o; o += align256(cap * N * tsize);
  L.total = o > 0 ? o : 256;
  return L;
}

template <typename T>
struct QPArgs {
  QPSource<T> S;
  QPProblems<T> pb;
  QPOutputs<T> out;
  unsigned char* ws;    // gridDim.x blocks of block_bytes
  int64_t block_bytes;
  int64_t cap;          // cache slots per block (>= 2)
  int64_t m2;           // sort buffer length (power of two >= 2N) when there is an equality, else 0
  int* counter;         // next problem
};

// Shared memory: reduction scratch (one entry per warp), step control, scan scratch.
struct Red {
  double m, M, s;
  int im, is;
};
struct Ctl {
  int q, n, used, victim;
  int slot_a, need_a, slot_b, need_b, progress;
  double dxa, dxb, df;
};
CINA_QP_HD size_t smem_bytes(int nt) { return 32 * sizeof(Red) + sizeof(Ctl) + sizeof(int) * (nt + 1); }

// first-index argmax / argmin combination (symmetric: both orders give the same result)
CINA_QP_HD void take_max(double& v, int& i, double v2, int i2) {
  if (i2 >= 0 && (i < 0 || v2 > v || (v2 == v && i2 < i))) {
    v = v2;
    i = i2;
  }
}

template <typename T>
struct BlockSolver {
  // problem and source
  QPSource<T> S;
  QPProblems<T> pb;
  QPOutputs<T> out;
  int nt, tid, lane, warp, nwarps;
  Red* red;
  Ctl* ctl;
  int* scan;
  // workspace
  double *x, *G, *p, *lo, *up, *c, *invc, *diag, *sgn, *lse, *Xt, *bp;
  int *idx, *slot, *owner;
  unsigned char* fl;
  T* cache;
  int64_t cap, m2;
  // problem scalars (uniform across the block)
  int64_t q, N, n, src;
  int kind;
  double qscale, diag_add, gamma, scale;
  const T* Xs;  // the problem's source dataset
  bool has_eq, has_pair, has_single;
  bool direct;  // every column j is at cache + j n (the working-set sub-problem): no cache lookups
  double tau, qmax, pmax;
  // state of the last pass (uniform)
  double m, M, sv, pv, kkt;
  double dec;  // objective decrease of the steps since the last window check (same in all threads)
  int i_, k_;

  // ---- binding (the solver kernel and the working-set kernels) -------------------------------
  // thread indices
  CINA_DEV void bind_threads() {
    nt = blockDim.x;
    tid = threadIdx.x;
    lane = tid % 32;
    warp = tid / 32;
    nwarps = (nt + 31) / 32;
  }
  // thread indices and the shared scratch: Red[32], Ctl, scan (nt + 1); the kernels without
  // shared scratch (ws_update_kernel) call bind_threads() alone.
  CINA_DEV void bind_block(unsigned char* smem) {
    bind_threads();
    red = reinterpret_cast<Red*>(smem);
    ctl = reinterpret_cast<Ctl*>(smem + 32 * sizeof(Red));
    scan = reinterpret_cast<int*>(smem + 32 * sizeof(Red) + sizeof(Ctl));
  }
  // the arrays of one workspace region laid out by L (cache: the column cache)
  CINA_DEV void bind_workspace(unsigned char* base, const Layout& L) {
    x = reinterpret_cast<double*>(base + L.x);
    G = reinterpret_cast<double*>(base + L.G);
    p = reinterpret_cast<double*>(base + L.p);
    lo = reinterpret_cast<double*>(base + L.lo);
    up = reinterpret_cast<double*>(base + L.up);
    c = reinterpret_cast<double*>(base + L.c);
    invc = reinterpret_cast<double*>(base + L.invc);
    diag = reinterpret_cast<double*>(base + L.diag);
    sgn = reinterpret_cast<double*>(base + L.sgn);
    lse = reinterpret_cast<double*>(base + L.lse);
    Xt = reinterpret_cast<double*>(base + L.Xt);
    bp = reinterpret_cast<double*>(base + L.bp);
    idx = reinterpret_cast<int*>(base + L.idx);
    slot = reinterpret_cast<int*>(base + L.slot);
    owner = reinterpret_cast<int*>(base + L.owner);
    fl = base + L.flags;
    cache = reinterpret_cast<T*>(base + L.cache);
  }

  // ---- block-wide reductions (every thread gets the same bits) ------------------------------
  CINA_DEV Red reduce(Red r) {
    for (int o = 16; o >= 1; o >>= 1) {
      const double m2v = __shfl_xor_sync(0xffffffffu, r.m, o);
      const int im2 = __shfl_xor_sync(0xffffffffu, r.im, o);
      const double M2 = __shfl_xor_sync(0xffffffffu, r.M, o);
      const double s2 = __shfl_xor_sync(0xffffffffu, r.s, o);
      const int is2 = __shfl_xor_sync(0xffffffffu, r.is, o);
      take_max(r.m, r.im, m2v, im2);
      r.M = dmin(r.M, M2);
      take_max(r.s, r.is, s2, is2);
    }
    if (lane == 0) red[warp] = r;
    __syncthreads();
    Red res = red[0];
    for (int w = 1; w < nwarps; ++w) {
      const Red t = red[w];
      take_max(res.m, res.im, t.m, t.im);
      res.M = dmin(res.M, t.M);
      take_max(res.s, res.is, t.s, t.is);
    }
    __syncthreads();
    return res;
  }
  CINA_DEV void argmax(double& v, int& i) {
    for (int o = 16; o >= 1; o >>= 1) {
      const double v2 = __shfl_xor_sync(0xffffffffu, v, o);
      const int i2 = __shfl_xor_sync(0xffffffffu, i, o);
      take_max(v, i, v2, i2);
    }
    if (lane == 0) {
      red[warp].m = v;
      red[warp].im = i;
    }
    __syncthreads();
    v = red[0].m;
    i = red[0].im;
    for (int w = 1; w < nwarps; ++w) take_max(v, i, red[w].m, red[w].im);
    __syncthreads();
  }
  CINA_DEV double sum(double v) {
    for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) red[warp].m = v;
    __syncthreads();
    double r = red[0].m;
    for (int w = 1; w < nwarps; ++w) r += red[w].m;
    __syncthreads();
    return r;
  }
  CINA_DEV double max_all(double v) {
    for (int o = 16; o >= 1; o >>= 1) v = dmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) red[warp].m = v;
    __syncthreads();
    double r = red[0].m;
    for (int w = 1; w < nwarps; ++w) r = dmax(r, red[w].m);
    __syncthreads();
    return r;
  }

  // ---- kernel entries -------------------------------------------------------------------------
  // k(unit k, unit j) of the source kernel (not scaled, no sign), k != j
  CINA_DEV double kval(int k, int j) const {
    return kval_at(k, idx[j], Xt + j, n, kind == kQPCina ? lse[j] : 0.0);
  }
  // the same with unit j given by its source index, its features (stride js) and its lse: one
  // code path (the same rounding and FMA contraction) for a column held by the problem's arrays
  // and for one gathered into the working set's
  CINA_DEV double kval_at(int k, int jsrc, const double* qv, int64_t js, double lsej) const {
    if (kind == kQPDense) return static_cast<double>(Xs[static_cast<int64_t>(jsrc) * N + idx[k]]);
    const int64_t D = S.D;
    const double* r = Xt + k;
    double v = 0.0;
    int64_t d = 0;
    if (kind == kQPRbf) {
      for (; d + 4 <= D; d += 4) {
        const double e0 = r[d * n] - qv[d * js], e1 = r[(d + 1) * n] - qv[(d + 1) * js];
        const double e2 = r[(d + 2) * n] - qv[(d + 2) * js], e3 = r[(d + 3) * n] - qv[(d + 3) * js];
        v += (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3);
      }
      for (; d < D; ++d) {
        const double e0 = r[d * n] - qv[d * js];
        v += e0 * e0;
      }
      return exp_clamped(v * -gamma);
    }
    for (; d + 4 <= D; d += 4)
      v += (r[d * n] * qv[d * js] + r[(d + 1) * n] * qv[(d + 1) * js]) +
           (r[(d + 2) * n] * qv[(d + 2) * js] + r[(d + 3) * n] * qv[(d + 3) * js]);
    for (; d < D; ++d) v += r[d * n] * qv[d * js];
    if (kind == kQPCina) return exp_clamped(scale * v - lse[k] - lsej);
    return v;
  }
  // k(k, k) (the CPU solver's kdiag)
  CINA_DEV double kdiag(int k) const {
    if (kind == kQPDense) return static_cast<double>(Xs[static_cast<int64_t>(idx[k]) * N + idx[k]]);
    if (kind == kQPRbf) return 1.0;
    double v = 0.0;
    for (int64_t d = 0; d < S.D; ++d) {
      const double xv = Xt[d * n + k];
      v += xv * xv;
    }
    if (kind == kQPCina) v = exp_clamped(scale * v - lse[k] - lse[k]);
    return v;
  }
  // Q_kj rounded to T (the value a column holds)
  CINA_DEV double qentry(int k, int j) const {
    if (k == j) return diag[k];
    return static_cast<double>(static_cast<T>((qscale * sgn[j]) * sgn[k] * kval(k, j)));
  }
  // Q_kj for a unit j held outside the problem's arrays (a moved column of the working set): its
  // unit index j, source index jsrc, features at qv (stride js), sign and lse; the value of
  // qentry(k, j)
  CINA_DEV double qentry_at(int k, int j, int jsrc, const double* qv, int64_t js, double sgnj, double lsej) const {
    if (k == j) return diag[k];
    return static_cast<double>(static_cast<T>((qscale * sgnj) * sgn[k] * kval_at(k, jsrc, qv, js, kind == kQPCina ? lsej : 0.0)));
  }
  CINA_DEV void fetch(int j, int s) {
    T* col = cache + static_cast<int64_t>(s) * n;
    for (int k = tid; k < n; k += nt) col[k] = static_cast<T>(qentry(k, j));
  }
  // cache slot of column j (thread 0 only); `protect` is a slot that must not be evicted
  CINA_DEV void lookup(int j, int protect, int& s_out, int& need) {
    int s = slot[j];
    if (s >= 0) {
      s_out = s;
      need = 0;
      return;
    }
    if (ctl->used < cap) {
      s = ctl->used++;
    } else {
      s = ctl->victim;
      if (s == protect) s = (s + 1) % static_cast<int>(cap);
      ctl->victim = (s + 1) % static_cast<int>(cap);
      slot[owner[s]] = -1;
    }
    owner[s] = j;
    slot[j] = s;
    s_out = s;
    need = 1;
  }

  CINA_DEV void set_flags(int k) {
    unsigned char f = fl[k] & (kPair | kSingle | kCpos);
    if (x[k] < up[k]) f |= kCanInc;
    if (x[k] > lo[k]) f |= kCanDec;
    fl[k] = f;
  }

  // ---- set-up ---------------------------------------------------------------------------------
  // Returns false for an empty problem (outputs written).
  CINA_DEV bool setup() {
    N = pb.N;
    const int64_t row = q * N;
    for (int64_t i = tid; i < N; i += nt) out.x[row + i] = T(0);
    // compaction of the mask (contiguous chunks per thread, exclusive scan by thread 0)
    const int64_t chunk = (N + nt - 1) / nt;
    const int64_t beg = tid * chunk < N ? tid * chunk : N;
    const int64_t end = beg + chunk < N ? beg + chunk : N;
    int cnt = 0;
    for (int64_t i = beg; i < end; ++i) cnt += pb.mask[row + i] ? 1 : 0;
    scan[tid] = cnt;
    __syncthreads();
    if (tid == 0) {
      int acc = 0;
      for (int t = 0; t < nt; ++t) {
        const int v = scan[t];
        scan[t] = acc;
        acc += v;
      }
      ctl->n = acc;
    }
    __syncthreads();
    int off = scan[tid];
    n = ctl->n;
    for (int64_t i = beg; i < end; ++i)
      if (pb.mask[row + i]) idx[off++] = static_cast<int>(i);
    __syncthreads();
    if (n == 0) {
      if (tid == 0) {
        out.nu[q] = T(0);
        out.objective[q] = T(0);
        out.kkt[q] = T(0);
        out.iterations[q] = 0;
        out.converged[q] = true;
      }
      return false;
    }
    src = pb.src[q];
    qscale = pb.qscale[q];
    diag_add = pb.diag_add[q];
    gamma = kind == kQPRbf ? S.gamma[src] : 0.0;
    scale = S.scale;
    Xs = S.X + src * S.N * S.D;
    has_eq = pb.c != nullptr;
    double dm = 0.0, pm = 0.0, hp = 0.0, hs = 0.0;
    for (int k = tid; k < n; k += nt) {
      const int64_t o = row + idx[k];
      p[k] = static_cast<double>(pb.p[o]);
      lo[k] = static_cast<double>(pb.lo[o]);
      up[k] = static_cast<double>(pb.up[o]);
      const double ck = has_eq ? static_cast<double>(pb.c[o]) : 0.0;
      c[k] = ck;
      sgn[k] = pb.sign != nullptr ? static_cast<double>(pb.sign[o]) : 1.0;
      if (kind == kQPCina) lse[k] = S.lse[src * S.N + idx[k]];
      if (kind != kQPDense) {
        const T* xr = Xs + static_cast<int64_t>(idx[k]) * S.D;
        for (int64_t d = 0; d < S.D; ++d) Xt[d * n + k] = static_cast<double>(xr[d]);
      }
      unsigned char f = 0;
      if (ck != 0.0) {
        f = kPair | (ck > 0 ? kCpos : 0);
        invc[k] = 1.0 / ck;
        hp = 1.0;
      } else {
        invc[k] = 0.0;
        if (lo[k] < up[k]) {
          f = kSingle;
          hs = 1.0;
        }
      }
      fl[k] = f;
      const double dk = static_cast<double>(
          static_cast<T>((qscale * sgn[k]) * sgn[k] * kdiag(k) + diag_add));
      diag[k] = dk;
      dm = dmax(dm, dk < 0 ? -dk : dk);
      pm = dmax(pm, p[k] < 0 ? -p[k] : p[k]);
      slot[k] = -1;
    }
    dm = max_all(dm);
    pmax = max_all(pm);
    has_pair = max_all(hp) > 0;
    has_single = max_all(hs) > 0;
    tau = dm > 0 ? kTauRel * dm : kTauRel;
    qmax = dm;
    // starting point
    if (pb.x0 != nullptr) {
      for (int k = tid; k < n; k += nt) x[k] = clip(static_cast<double>(pb.x0[row + idx[k]]), lo[k], up[k]);
    } else if (has_eq) {
      feasible_start(static_cast<double>(pb.d[q]));
    } else {
      for (int k = tid; k < n; k += nt) x[k] = clip(0.0, lo[k], up[k]);
    }
    for (int k = tid; k < n; k += nt) {
      x[k] = static_cast<double>(static_cast<T>(x[k]));
      set_flags(k);
    }
    if (tid == 0) {
      ctl->used = 0;
      ctl->victim = 0;
    }
    __syncthreads();
    return true;
  }

  // c'x(s) with x(s) = clip(s c, lo, up) over the coordinates of the equality
  CINA_DEV double f_of(double s) {
    double acc = 0.0;
    for (int k = tid; k < n; k += nt)
      if (c[k] != 0.0) acc += c[k] * clip(s * c[k], lo[k], up[k]);
    return sum(acc);
  }

  // The CPU solver's / reference's construction: sorted breakpoints, binary search for the
  // linear piece of c'x(s) that reaches d, closed form on it.
  CINA_DEV void feasible_start(double d) {
    double fmn = 0.0, fmx = 0.0, nfl = 0.0;
    int64_t len = 2;
    while (len < 2 * n) len <<= 1;
    for (int k = tid; k < n; k += nt) {
      const double ck = c[k];
      double a = kInf, b = kInf;
      if (ck != 0.0) {
        fmn += ck * (ck > 0 ? lo[k] : up[k]);
        fmx += ck * (ck > 0 ? up[k] : lo[k]);
        a = lo[k] / ck;
        b = up[k] / ck;
        if (!finite(a)) a = kInf;
        else nfl += 1.0;
        if (!finite(b)) b = kInf;
        else nfl += 1.0;
      }
      bp[2 * k] = a;
      bp[2 * k + 1] = b;
    }
    for (int64_t i = 2 * n + tid; i < len; i += nt) bp[i] = kInf;
    fmn = sum(fmn);
    fmx = sum(fmx);
    const int64_t nf = static_cast<int64_t>(sum(nfl));
    if (fmn == fmn) d = dmax(d, fmn);
    if (fmx == fmx) d = dmin(d, fmx);
    // bitonic sort, ascending (the padding +inf goes last)
    for (int64_t kk = 2; kk <= len; kk <<= 1) {
      for (int64_t jj = kk >> 1; jj > 0; jj >>= 1) {
        for (int64_t i = tid; i < len; i += nt) {
          const int64_t l = i ^ jj;
          if (l > i) {
            const bool asc = (i & kk) == 0;
            const double u = bp[i], v = bp[l];
            if ((u > v) == asc) {
              bp[i] = v;
              bp[l] = u;
            }
          }
        }
        __syncthreads();
      }
    }
    int64_t lk = -1, hk = nf;
    while (hk - lk > 1) {
      const int64_t mid = (lk + hk) / 2;
      if (f_of(bp[mid]) <= d) lk = mid;
      else hk = mid;
    }
    double s_cls;
    if (nf == 0) s_cls = 0.0;
    else if (lk < 0) s_cls = bp[0] - 1.0;
    else if (hk >= nf) s_cls = bp[nf - 1] + 1.0;
    else s_cls = 0.5 * (bp[lk] + bp[hk]);
    double fixed = 0.0, slope = 0.0;
    for (int k = tid; k < n; k += nt) {
      const double ck = c[k];
      if (ck == 0.0) continue;
      const double y = s_cls * ck;
      if (y > lo[k] && y < up[k]) slope += ck * ck;
      else fixed += ck * clip(y, lo[k], up[k]);
    }
    fixed = sum(fixed);
    slope = sum(slope);
    const double s = (d - fixed) / (slope > 0 ? slope : 1.0);
    const double left = lk >= 0 ? bp[lk] : 0.0;
    const bool exact_left = lk >= 0 && f_of(left) == d;
    for (int k = tid; k < n; k += nt) {
      const double ck = c[k];
      if (ck == 0.0) {
        x[k] = clip(0.0, lo[k], up[k]);
        continue;
      }
      double v;
      if (exact_left) {
        v = clip(left * ck, lo[k], up[k]);
      } else {
        const double y = s_cls * ck;
        v = (y > lo[k] && y < up[k]) ? s * ck : clip(y, lo[k], up[k]);
      }
      x[k] = clip(v, lo[k], up[k]);
    }
    __syncthreads();  // bp is read by every thread above; nothing else reuses it
  }

  // ---- passes ---------------------------------------------------------------------------------
  // G += dxa Q_a (+ dxb Q_b) at the units of this thread, then the block-wide maxima / minima.
  template <int NCOL>
  CINA_DEV void pass(int sa, double dxa, int sb, double dxb) {
    const T* Qa = cache + static_cast<int64_t>(sa < 0 ? 0 : sa) * n;
    const T* Qb = cache + static_cast<int64_t>(sb < 0 ? 0 : sb) * n;
    Red r{-kInf, kInf, 0.0, -1, -1};
    for (int k = tid; k < n; k += nt) {
      double g = G[k];
      if (NCOL >= 1) g = g + dxa * static_cast<double>(Qa[k]);
      if (NCOL >= 2) g = g + dxb * static_cast<double>(Qb[k]);
      if (NCOL >= 1) G[k] = g;
      const unsigned char f = fl[k];
      if (f & kPair) {
        const double v = -g * invc[k];
        if (in_up(f) && v > r.m) {
          r.m = v;
          r.im = k;
        }
        if (in_low(f)) r.M = dmin(r.M, v);
      } else if (f & kSingle) {
        const double pg = proj_grad(g, f);
        const double a = pg < 0 ? -pg : pg;
        if (a > r.s) {
          r.s = a;
          r.is = k;
        }
      }
    }
    r = reduce(r);
    m = r.m;
    M = r.M;
    sv = r.s;
    i_ = has_pair ? r.im : -1;
    k_ = has_single ? r.is : -1;
    pv = has_pair ? dmax(0.0, m - M) : 0.0;
    if (pv != pv) pv = 0.0;
    kkt = dmax(pv, has_single ? sv : 0.0);
  }

  // G = Qx - p from scratch (columns of the non-zero coordinates, in increasing order), then a scan
  CINA_DEV void refresh() {
    for (int k = tid; k < n; k += nt) {
      double acc = 0.0;
      for (int j = 0; j < n; ++j) {
        const double xj = x[j];
        if (xj == 0.0) continue;
        const int s = slot[j];
        const double qv = s >= 0 ? static_cast<double>(cache[static_cast<int64_t>(s) * n + k]) : qentry(k, j);
        acc += xj * qv;
      }
      G[k] = acc - p[k];
    }
    __syncthreads();
    pass<0>(-1, 0.0, -1, 0.0);
  }

  // WSS2: j maximising b_j^2 / a_j over I_low with b_j > 0 (first index on ties); -1 if none
  CINA_DEV int select_j(int a, int sa) {
    const T* Qa = cache + static_cast<int64_t>(sa) * n;
    const double ici = invc[a];
    const double qi_term = diag[a] * ici * ici;
    const double twoici = 2.0 * ici;
    double best = -kInf;
    int bi = -1;
    for (int k = tid; k < n; k += nt) {
      if (!in_low(fl[k])) continue;
      // candidate test by comparison (exact), not b > 0: b = m - val(k) is contracted into an FMA,
      // which leaves the rounding residual of val(a) at k = a (and at ties) instead of 0; with a
      // small c_a, a then won as its own partner (every true partner has curvature ~ Q_aa / c_a^2)
      // and the solve repeated a null step until max_iter (the CPU solver's select_j, same fix)
      const double vk = -G[k] * invc[k];
      if (!(vk < m)) continue;
      const double bk = m - vk;
      double ak = (qi_term + diag[k] * invc[k] * invc[k]) - static_cast<double>(Qa[k]) * (twoici * invc[k]);
      ak = dmax(ak, tau);
      const double v = bk * bk / ak;
      if (v > best) {
        best = v;
        bi = k;
      }
    }
    argmax(best, bi);
    return bi;
  }

  // thread 0: the scalar part of a step (the CPU solver's step()), x and flags of a and b updated
  CINA_DEV void step_scalars(int a, int b, int sa) {
    double ua, ub = 0.0, tstar;
    if (b >= 0) {
      const double ici = invc[a];
      const double bb = m - (-G[b] * invc[b]);
      double aa = (diag[a] * ici * ici + diag[b] * invc[b] * invc[b]) -
                  static_cast<double>(cache[static_cast<int64_t>(sa) * n + b]) * ((2.0 * ici) * invc[b]);
      aa = dmax(aa, tau);
      tstar = bb / aa;
      ua = ici;
      ub = -invc[b];
    } else {
      const double pg = proj_grad(G[a], fl[a]);
      ua = pg > 0 ? -1.0 : (pg < 0 ? 1.0 : 0.0);
      tstar = (pg < 0 ? -pg : pg) / dmax(diag[a], tau);
    }
    const double tma = tmax(a, ua), tmb = b >= 0 ? tmax(b, ub) : kInf;
    const double t = dmin(tstar, dmin(tma, tmb));
    const double dxa = move(a, ua, tma, t);
    const double dxb = b >= 0 ? move(b, ub, tmb, t) : 0.0;
    // objective change of the step (for the stuck-window test; G is not updated yet)
    double df = dxa * (G[a] + 0.5 * dxa * diag[a]);
    if (b >= 0) df += dxb * ((G[b] + 0.5 * dxb * diag[b]) + dxa * static_cast<double>(cache[static_cast<int64_t>(sa) * n + b]));
    ctl->dxa = dxa;
    ctl->dxb = dxb;
    ctl->df = df;
    ctl->progress = (dxa != 0.0 || dxb != 0.0) ? 1 : 0;
  }
  CINA_DEV double tmax(int u, double dir) const {
    if (dir == 0.0) return kInf;
    const double room = dir > 0 ? up[u] - x[u] : lo[u] - x[u];
    return dmax(room / dir, 0.0);
  }
  CINA_DEV double move(int u, double dir, double tm, double t) {
    double xn = x[u] + t * dir;
    if (t == tm) xn = dir > 0 ? up[u] : (dir < 0 ? lo[u] : xn);
    xn = clip(xn, lo[u], up[u]);
    xn = static_cast<double>(static_cast<T>(xn));
    const double dx = xn - x[u];
    x[u] = xn;
    set_flags(u);
    return dx;
  }

  // One step; false when no representable progress was made (or no candidate).
  CINA_DEV bool step() {
    const bool use_pair = has_pair && (!has_single || pv >= sv);
    const int a = use_pair ? i_ : k_;
    if (a < 0) return false;
    int sa = a;
    if (!direct) {
      if (tid == 0) lookup(a, -1, ctl->slot_a, ctl->need_a);
      __syncthreads();
      sa = ctl->slot_a;
      if (ctl->need_a) fetch(a, sa);
    }
    int b = -1;
    if (use_pair) {
      b = select_j(a, sa);  // (its barriers also publish column a)
      if (b < 0 || b == a) return false;
    }
    if (tid == 0) {
      step_scalars(a, b, sa);
      if (ctl->progress && b >= 0 && !direct) lookup(b, sa, ctl->slot_b, ctl->need_b);
    }
    __syncthreads();
    const double dxa = ctl->dxa, dxb = ctl->dxb;
    const bool progress = ctl->progress != 0;
    if (!progress) return false;
    dec -= ctl->df;  // every thread: the same sum
    if (b >= 0) {
      const int sb = direct ? b : ctl->slot_b;
      if (!direct && ctl->need_b) fetch(b, sb);
      pass<2>(sa, dxa, sb, dxb);
    } else {
      pass<1>(sa, dxa, -1, 0.0);
    }
    return true;
  }

  // Stagnation at the rounding level of T (the CPU solver's / reference's rule)
  CINA_DEV void stagnant(double& best, int64_t& count) {
    double l1 = 0.0;
    for (int k = tid; k < n; k += nt) l1 += x[k] < 0 ? -x[k] : x[k];
    l1 = sum(l1);
    const double floor = Eps<T>::value * (qmax * l1 + pmax);
    const bool better = kkt < 0.5 * best;
    if (better) best = kkt;
    count = (better || kkt > floor) ? 0 : count + 1;
  }

  // Stuck (the CPU solver's rule): a window in which the KKT violation reached no new minimum
  // (by 0.1%) and the steps decreased the objective by no more than its rounding level
  CINA_DEV void stuck(double& best, int64_t& count) {
    double scale = 0.0;
    for (int k = tid; k < n; k += nt) {
      const double h = 0.5 * (G[k] + p[k]);
      scale += (x[k] < 0 ? -x[k] : x[k]) * ((h < 0 ? -h : h) + (p[k] < 0 ? -p[k] : p[k]));
    }
    scale = sum(scale);
    const bool kkt_better = kkt < (1.0 - 1e-3) * best;
    if (kkt_better) best = kkt;
    const bool obj_better = dec > Eps<double>::value * scale;
    dec = 0.0;
    count = (kkt_better || obj_better) ? 0 : count + 1;
  }

  CINA_DEV void finish(int64_t it, bool conv) {
    double obj = 0.0, s = 0.0, nf = 0.0;
    for (int k = tid; k < n; k += nt) {
      obj += x[k] * (0.5 * (G[k] + p[k]) - p[k]);
      if ((fl[k] & kPair) && x[k] > lo[k] && x[k] < up[k]) {
        s += -G[k] * invc[k];
        nf += 1.0;
      }
      out.x[q * N + idx[k]] = static_cast<T>(x[k]);
    }
    obj = sum(obj);
    double nu = 0.0;
    if (has_eq) {
      s = sum(s);
      nf = sum(nf);
      if (nf > 0) {
        nu = s / nf;
      } else {
        const bool fm = finite(m), fM = finite(M);
        nu = fm && fM ? 0.5 * (m + M) : (fm ? m : (fM ? M : 0.0));
      }
    }
    if (tid == 0) {
      out.nu[q] = static_cast<T>(nu);
      out.objective[q] = static_cast<T>(obj);
      out.kkt[q] = static_cast<T>(kkt);
      out.iterations[q] = it;
      out.converged[q] = conv;
    }
  }

  CINA_DEV void run() {
    if (!setup()) return;
    if (!has_pair && !has_single) {
      refresh();
      finish(0, true);
      return;
    }
    refresh();
    const double tol = pb.tol[q];
    const int64_t max_iter = pb.max_iter[q];
    int64_t it = 0, stall = 0, nwin = 0, nstuck = 0, since_window = 0;
    const int64_t window = n * 5 > 1000 ? n * 5 : 1000;
    double best_win = kInf, best_stuck = kInf;
    dec = 0.0;
    bool conv = false;
    while (true) {
      if (kkt < tol) {
        conv = true;
        break;
      }
      if (it >= max_iter) break;
      if (stall >= 3 || nwin >= 3 || nstuck >= kStuckWindows) break;
      if (++since_window >= window) {
        since_window = 0;
        stagnant(best_win, nwin);
        stuck(best_stuck, nstuck);
      }
      const bool progress = step();
      ++it;
      if (!progress) {
        ++stall;
        refresh();
      } else {
        stall = 0;
      }
    }
    finish(it, conv && kkt < tol);
  }
};

template <typename T>
CINA_KERNEL(kMaxThreads) qp_solve_kernel(QPArgs<T> A) {
  CINA_DYN_SMEM(smem_raw);
  BlockSolver<T> s;
  s.S = A.S;
  s.pb = A.pb;
  s.out = A.out;
  s.bind_block(smem_raw);
  s.kind = static_cast<int>(A.S.kind);
  s.cap = A.cap;
  s.direct = false;
  s.m2 = A.m2;
  const bool feats = A.S.kind != kQPDense;
  const Layout L = make_layout(A.pb.N, A.S.D, feats, A.cap, A.m2, static_cast<int64_t>(sizeof(T)));
  s.bind_workspace(A.ws + static_cast<int64_t>(blockIdx.x) * A.block_bytes, L);
  while (true) {
    if (s.tid == 0) s.ctl->q = atomicAdd(A.counter, 1);
    __syncthreads();
    const int64_t q = s.ctl->q;
    __syncthreads();
    if (q >= A.pb.P) break;
    s.q = q;
    s.run();
    __syncthreads();
  }
}

// ---- working-set decomposition (large problems) -------------------------------------------------
//
// One block per problem is bound by one SM: at N = 20000 a step costs ~60 us of passes over the
// units.  For large problems the solve is split the way GPU SVM solvers do it (decomposition with
// a working set, as in ThunderSVM): per outer iteration
//   1. ws_select_kernel (one block per problem): the KKT test on all units (stop rules as above,
//      counted in steps), then the working set B: the q/2 largest violators of I_up and the q/2 of
//      I_low by -G_i/c_i (a radix select on float keys kept in shared memory when they fit, ties
//      by index; single coordinates by |projected gradient|), and B's data gathered;
//   2. ws_qbb_kernel (many blocks per problem): B's q x q block of Q (rounded to T, as a column
//      would be);
//   3. ws_solve_kernel (one block per problem, one thread per unit of B): the sub-problem over B
//      with everything else fixed, by the very BlockSolver steps (WSS2 SMO / greedy CD) on shared
//      memory copies, to max(tol, ltol KKT) (ltol 0.3 by default) or a step cap; the units it
//      moved and their dx are written out, compacted;
//   4. ws_update_kernel (many blocks per problem): G += Q[:, B] dx_B over all units and the moved
//      units of B only, the kernel entries computed on the fly (or G = Qx - p from scratch after a
//      solve without progress).
// CINA_QP_WS_STATS=1 prints the rounds, steps and GPU time of each kernel (the time of a run is
// rounds x (select + update) + steps x step latency; benchmarks/solver_breakdown.py).
// Iterates differ from the block solver's (the optimum does not): the KKT violation, nu, the
// objective and the converged flag are computed exactly as there, `iterations` counts the
// sub-problem steps and max_iter bounds them.
constexpr int kWsLists = 3;          // up (pairs), low (pairs), single coordinates
constexpr int kWsMaxSize = 512;      // largest working set (shared memory of the solve kernel)
constexpr int kWsUpdateUnits = 32;    // update kernel: a block is 32 units (a warp's lanes) x
constexpr int kWsUpdateGroups = 8;    // 8 warps, each summing every 8th column
constexpr int kWsUpdateThreads = kWsUpdateUnits * kWsUpdateGroups;
constexpr int kWsLocalStepsPerUnit = 20;  // step cap of a sub-problem: 20 |B| (at least 200)

// Per-problem state kept between the launches (global memory).
struct WsCtl {
  int64_t n, it, since_window, nwin, nstuck, noprog;
  int status;   // 0 active, 1 done (outputs written)
  int refresh;  // the next update rebuilds G from scratch
  int nb;       // working-set size
  int nch;      // units of the working set that the last sub-problem moved (wsch / wsdx)
  int has_pair, has_single;
  double tau, qmax, pmax, ltol, best_win, best_stuck, dec;
};

struct WsLayout {
  Layout base;
  int64_t keys, wsidx, wsdx, wsch, qbb, xb, sb, lb, db, ib, total;
};
CINA_QP_HD WsLayout make_ws_layout(int64_t N, int64_t D, bool feats, int64_t m2, int64_t qws, int64_t tsize) {
  WsLayout W{};
  W.base = make_layout(N, D, feats, 0, m2, tsize);
  int64_t o = W.base.total;
  W.keys = o; o += align256(kWsLists * N * 4);
  W.wsidx = o; o += align256(qws * 4);
  W.wsdx = o; o += align256(qws * 8);   // the moves of the last sub-problem, compacted
  W.wsch = o; o += align256(qws * 4);   // and their positions in the working set
  W.qbb = o; o += align256(qws * qws * tsize);
  // the working set's features (D x qws), signs, lse, diagonal and source indices, gathered so
  // that Q_BB is computed from a few contiguous kilobytes instead of scattered columns of Xt
  W.xb = o; o += feats ? align256(qws * D * 8) : 0;
  W.sb = o; o += align256(qws * 8);
  W.lb = o; o += align256(qws * 8);
  W.db = o; o += align256(qws * 8);
  W.ib = o; o += align256(qws * 4);
  W.total = o;
  return W;
}

template <typename T>
struct WsArgs {
  QPSource<T> S;
  QPProblems<T> pb;
  QPOutputs<T> out;
  unsigned char* ws;   // one region of pbytes per problem of the group
  int64_t pbytes;
  int64_t m2;
  int64_t qws;         // working-set size
  int64_t p0;          // first problem of the group
  WsCtl* ctl;          // per problem of the group
  int* active;         // problems still active after the last select (for the host's stop test)
  double ltol;         // a sub-problem is solved to max(tol, ltol x the KKT violation)
  int64_t keys_smem;   // the select kernel's keys live in shared memory when they fit in this many
};

// shared memory: Red[32], Ctl, scan (nt + 1 ints), then the kernel's own arrays: histograms, scan
// and radix scratch, and room for keys_smem keys
inline size_t ws_smem_select_base(int nt) { return smem_bytes(nt) + sizeof(int) * (kWsLists * 256 + 32 * kWsLists + 2 * kWsLists); }
inline size_t ws_smem_select(int nt, int64_t keys_smem) { return ws_smem_select_base(nt) + sizeof(uint32_t) * static_cast<size_t>(keys_smem); }
// the solve kernel: then the sub-problem's arrays (x, G, lo, up, 1/c, diag: doubles; flags),
// 16-byte aligned, and the scan scratch
CINA_QP_HD size_t ws_sub_arrays(int64_t qws) {
  return (static_cast<size_t>(qws) * (6 * sizeof(double) + 1) + 15) & ~static_cast<size_t>(15);
}
inline size_t ws_smem_solve(int nt, int64_t qws) { return smem_bytes(nt) + 16 + ws_sub_arrays(qws) + sizeof(int) * 32 * kWsLists; }

// monotone map of a key to uint32 (larger key, larger code); 0 is kept for "not a candidate"
CINA_DEV uint32_t order_key(double v) {
  const float f = static_cast<float>(v);
  uint32_t b;
#ifdef CINA_EMULATE
  std::memcpy(&b, &f, 4);
#else
  b = __float_as_uint(f);
#endif
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return b == 0u ? 1u : b;
}

// Binds a BlockSolver to problem g of the group (workspace pointers, thread indices; the kernels
// with shared scratch then call bind_block); the problem's scalars come from ws_load after the set-up.
template <typename T>
CINA_DEV WsLayout ws_bind(BlockSolver<T>& s, const WsArgs<T>& A, int64_t g) {
  s.S = A.S;
  s.pb = A.pb;
  s.out = A.out;
  s.bind_threads();  // the kernels with shared scratch bind it themselves (bind_block)
  s.kind = static_cast<int>(A.S.kind);
  s.cap = 0;
  s.direct = false;
  s.m2 = A.m2;
  const bool feats = A.S.kind != kQPDense;
  const WsLayout W = make_ws_layout(A.pb.N, A.S.D, feats, A.m2, A.qws, static_cast<int64_t>(sizeof(T)));
  unsigned char* base = A.ws + g * A.pbytes;
  s.bind_workspace(base, W.base);
  s.cache = reinterpret_cast<T*>(base + W.qbb);  // no column cache: the "columns" are Q_BB
  s.q = A.p0 + g;
  return W;
}

// the problem's scalars (what BlockSolver::setup derived), from the per-problem state
template <typename T>
CINA_DEV void ws_load(BlockSolver<T>& s, const WsCtl& c) {
  s.N = s.pb.N;
  s.n = c.n;
  s.src = s.pb.src[s.q];
  s.qscale = s.pb.qscale[s.q];
  s.diag_add = s.pb.diag_add[s.q];
  s.gamma = s.kind == kQPRbf ? s.S.gamma[s.src] : 0.0;
  s.scale = s.S.scale;
  s.Xs = s.S.X + s.src * s.S.N * s.S.D;
  s.has_eq = s.pb.c != nullptr;
  s.has_pair = c.has_pair != 0;
  s.has_single = c.has_single != 0;
  s.tau = c.tau;
  s.qmax = c.qmax;
  s.pmax = c.pmax;
  s.dec = c.dec;
}

// A full view of problem g for the kernels that take steps or reductions on it (select, solve):
// workspace, shared scratch and scalars.  Each view is bound this way, never copied from
// another: nvcc 13.0 compiled `BlockSolver<T> loc = s` into loads from the kernel's argument,
// past its end (the reductions then took their scratch address from an argument field: illegal
// address on the H200; tests/test_ptx.py checks the PTX for such loads).
template <typename T>
CINA_DEV WsLayout ws_view(BlockSolver<T>& s, const WsArgs<T>& A, int64_t g, unsigned char* smem, const WsCtl& c) {
  const WsLayout W = ws_bind(s, A, g);
  s.bind_block(smem);
  ws_load(s, c);
  return W;
}

// Set-up of every problem of the group: the block solver's set-up (compaction, gathered
// features, bounds, feasible start), G = -p; the first update adds Qx.
template <typename T>
CINA_KERNEL(kMaxThreads) ws_setup_kernel(WsArgs<T> A) {
  CINA_DYN_SMEM(smem_raw);
  const int64_t g = blockIdx.x;
  BlockSolver<T> s;
  ws_bind(s, A, g);
  s.bind_block(smem_raw);
  const bool ok = s.setup();
  if (ok)
    for (int64_t k = s.tid; k < s.n; k += s.nt) s.G[k] = -s.p[k];
  if (s.tid == 0) {
    WsCtl c{};
    c.n = ok ? s.n : 0;
    c.status = ok ? 0 : 1;
    c.refresh = 1;
    c.has_pair = ok && s.has_pair ? 1 : 0;
    c.has_single = ok && s.has_single ? 1 : 0;
    c.tau = ok ? s.tau : 0.0;
    c.qmax = ok ? s.qmax : 0.0;
    c.pmax = ok ? s.pmax : 0.0;
    c.best_win = kInf;
    c.best_stuck = kInf;
    A.ctl[g] = c;
  }
}

// G += Q[:, B] dx_B over the moved units of B only (or G = Qx - p from scratch).  A block is 32
// units x 8 warps: lane u holds unit blockIdx.x * 32 + u, warp w sums the columns w, w + 8, ...
// and the 8 partial sums are added in warp order (deterministic).  The moved columns' data (unit,
// source index, sign, lse, dx and, up to kWsUpdateMaxD covariates, the features) is staged in
// shared memory kWsUpdateTile columns at a time, so that the column loop reads no global memory
// but the unit's own features.  (One thread per unit over all columns, reading them from global
// memory, left most SMs a few warps with long serial chains of loads: 111 us a round at N = 20000
// on an H200.)
constexpr int kWsUpdateTile = 32;
constexpr int64_t kWsUpdateMaxD = 128;
CINA_QP_HD size_t ws_smem_update(int64_t D) {
  return sizeof(double) * kWsUpdateThreads +
         kWsUpdateTile * (3 * sizeof(double) + 2 * sizeof(int) + (D <= kWsUpdateMaxD ? D : 0) * sizeof(double));
}
template <typename T>
CINA_KERNEL(kWsUpdateThreads) ws_update_kernel(WsArgs<T> A) {
  CINA_DYN_SMEM(smem_raw);
  double* part = reinterpret_cast<double*>(smem_raw);  // [kWsUpdateGroups][kWsUpdateUnits]
  double* cdx = part + kWsUpdateThreads;                // the tile: dx, signs, lse, features
  double* csg = cdx + kWsUpdateTile;
  double* cls = csg + kWsUpdateTile;
  double* cx = cls + kWsUpdateTile;                     // D x kWsUpdateTile (D <= kWsUpdateMaxD)
  const int64_t g = blockIdx.y;
  const WsCtl c = A.ctl[g];
  if (c.status != 0) return;  // (uniform over the block)
  if (static_cast<int64_t>(blockIdx.x) * kWsUpdateUnits >= c.n) return;
  BlockSolver<T> s;
  const WsLayout W = ws_bind(s, A, g);
  ws_load(s, c);
  const int64_t D = s.kind == kQPDense ? 0 : A.S.D;
  const bool staged = D <= kWsUpdateMaxD;
  int* cj = reinterpret_cast<int*>(cx + (staged ? D : 0) * kWsUpdateTile);  // units, source indices
  int* ci = cj + kWsUpdateTile;
  const int lane = threadIdx.x % kWsUpdateUnits, w = threadIdx.x / kWsUpdateUnits;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kWsUpdateUnits + lane;
  const bool valid = k < c.n;
  const int kk = valid ? static_cast<int>(k) : 0;
  unsigned char* base = A.ws + g * A.pbytes;
  double acc = 0.0;
  if (c.refresh) {
    for (int64_t j = w; j < c.n; j += kWsUpdateGroups) {
      const double xj = s.x[j];
      if (xj != 0.0 && valid) acc += xj * s.qentry(kk, static_cast<int>(j));
    }
  } else {
    const int* wsu = reinterpret_cast<const int*>(base + W.wsidx);
    const int* wsi = reinterpret_cast<const int*>(base + W.ib);
    const int* ch = reinterpret_cast<const int*>(base + W.wsch);
    const double* dx = reinterpret_cast<const double*>(base + W.wsdx);
    const double* wsx = reinterpret_cast<const double*>(base + W.xb);
    const double* wss = reinterpret_cast<const double*>(base + W.sb);
    const double* wsl = reinterpret_cast<const double*>(base + W.lb);
    const int64_t nb = c.nb;
    for (int t0 = 0; t0 < c.nch; t0 += kWsUpdateTile) {
      const int nt = c.nch - t0 < kWsUpdateTile ? c.nch - t0 : kWsUpdateTile;
      __syncthreads();  // (the previous tile is consumed)
      for (int i = threadIdx.x; i < nt; i += kWsUpdateThreads) {
        const int r = ch[t0 + i];
        cj[i] = wsu[r];
        ci[i] = wsi[r];
        cdx[i] = dx[t0 + i];
        csg[i] = wss[r];
        cls[i] = wsl[r];
      }
      if (staged)
        for (int64_t i = threadIdx.x; i < nt * D; i += kWsUpdateThreads) {
          const int col = static_cast<int>(i % nt);
          const int64_t d = i / nt;
          cx[d * kWsUpdateTile + col] = wsx[d * nb + ch[t0 + col]];
        }
      __syncthreads();
      if (!valid) continue;
      // column e of the tile: unit cj[e], source ci[e], features staged at cx + e (stride tile) or
      // in the workspace
      for (int e = w; e < nt; e += kWsUpdateGroups) {
        const double* qv = staged ? cx + e : wsx + ch[t0 + e];
        acc += cdx[e] * s.qentry_at(kk, cj[e], ci[e], qv, staged ? kWsUpdateTile : nb, csg[e], cls[e]);
      }
    }
  }
  part[w * kWsUpdateUnits + lane] = acc;
  __syncthreads();
  if (w == 0 && valid) {
    double t = part[lane];
    for (int v = 1; v < kWsUpdateGroups; ++v) t += part[v * kWsUpdateUnits + lane];
    s.G[k] = c.refresh ? t - s.p[k] : s.G[k] + t;
  }
}

// block-wide exclusive scan of kWsLists counters (deterministic); tot gets the sums
CINA_DEV void ws_scan(int (&v)[kWsLists], int (&tot)[kWsLists], int* wsum, int lane, int warp, int nwarps) {
  int pre[kWsLists], all[kWsLists];
  for (int L = 0; L < kWsLists; ++L) pre[L] = all[L] = v[L];
  for (int o = 1; o < 32; o <<= 1)
    for (int L = 0; L < kWsLists; ++L) {
      const int t = __shfl_xor_sync(0xffffffffu, all[L], o);
      if (lane & o) pre[L] += t;
      all[L] += t;
    }
  if (lane == 0)
    for (int L = 0; L < kWsLists; ++L) wsum[warp * kWsLists + L] = all[L];
  __syncthreads();
  for (int L = 0; L < kWsLists; ++L) {
    int before = 0, sum = 0;
    for (int w = 0; w < nwarps; ++w) {
      const int t = wsum[w * kWsLists + L];
      if (w < warp) before += t;
      sum += t;
    }
    v[L] = before + pre[L] - v[L];
    tot[L] = sum;
  }
  __syncthreads();
}

// The KKT test and stop rules, then the working set and its block of Q.
template <typename T>
CINA_KERNEL(kMaxThreads) ws_select_kernel(WsArgs<T> A) {
  CINA_DYN_SMEM(smem_raw);
  const int64_t g = blockIdx.x;
  const WsCtl c = A.ctl[g];
  if (c.status != 0) return;
  BlockSolver<T> s;
  const WsLayout W = ws_view(s, A, g, smem_raw, c);
  int* hist = reinterpret_cast<int*>(smem_raw + smem_bytes(s.nt));
  int* wsum = hist + kWsLists * 256;
  int* found = wsum + 32 * kWsLists;  // per list: digit, remaining count
  unsigned char* base = A.ws + g * A.pbytes;
  int* wsidx = reinterpret_cast<int*>(base + W.wsidx);
  const int64_t n = s.n, q = s.q;
  WsCtl cn = c;  // the new state (thread 0 writes it)
  cn.refresh = 0;
  const double tol = A.pb.tol[q];
  const int64_t max_iter = A.pb.max_iter[q];
  s.template pass<0>(-1, 0.0, -1, 0.0);
  bool stop = false, conv = false;
  if (!s.has_pair && !s.has_single) {
    stop = conv = true;  // every unit fixed: the start is the solution
    s.kkt = 0.0;
  } else if (s.kkt < tol) {
    stop = conv = true;
  } else if (c.it >= max_iter || c.noprog >= 3 || c.nwin >= 3 || c.nstuck >= kStuckWindows) {
    stop = true;
  } else {
    const int64_t window = n * 5 > 1000 ? n * 5 : 1000;
    if (c.since_window >= window) {
      s.stagnant(cn.best_win, cn.nwin);
      s.stuck(cn.best_stuck, cn.nstuck);
      cn.dec = s.dec;
      cn.since_window = 0;
      stop = cn.nwin >= 3 || cn.nstuck >= kStuckWindows;
    }
  }
  if (stop) {
    s.finish(c.it, conv && (s.kkt < tol || (!s.has_pair && !s.has_single)));
    if (s.tid == 0) {
      cn.status = 1;
      A.ctl[g] = cn;
    }
    return;
  }
  // candidate keys
  const int qws = static_cast<int>(A.qws);
  int quota[kWsLists];
  if (s.has_pair && s.has_single) {
    // both kinds of coordinates: a quarter of the set for each pair list, or, in a set too small
    // to split, the kind that holds the largest violation (the step the block solver would take)
    const int h = qws >= 4 ? qws / 4 : (s.pv >= s.sv ? 1 : 0);
    quota[0] = quota[1] = h;
    quota[2] = qws - 2 * h;
  } else if (s.has_pair) {
    quota[0] = qws / 2;
    quota[1] = qws - qws / 2;
    quota[2] = 0;
  } else {
    quota[0] = quota[1] = 0;
    quota[2] = qws;
  }
  // the keys of the lists with a quota, list after list: in shared memory when they fit (one
  // block per problem cannot hide the latency of the ~10 passes over them in global memory:
  // ~140 us a round at N = 20000 on an H200), else in the workspace
  int64_t koff[kWsLists];
  int64_t nact = 0;
  for (int L = 0; L < kWsLists; ++L) koff[L] = quota[L] > 0 ? (nact++) * n : -1;
  uint32_t* keys = nact * n <= A.keys_smem ? reinterpret_cast<uint32_t*>(found + 2 * kWsLists)
                                           : reinterpret_cast<uint32_t*>(base + W.keys);
  int cnt[kWsLists] = {0, 0, 0};
  for (int64_t k = s.tid; k < n; k += s.nt) {
    const unsigned char f = s.fl[k];
    uint32_t ku = 0, kl = 0, ks = 0;
    if (f & kPair) {
      // keys relative to the extremes of the other side (v - M, m - v): a float then still
      // orders violations of the size of tol, where v itself agrees to 8 digits across units
      const double v = -s.G[k] * s.invc[k];
      if (in_up(f)) ku = order_key(v - s.M);
      if (in_low(f)) kl = order_key(s.m - v);
    } else if (f & kSingle) {
      const double pg = proj_grad(s.G[k], f);
      if (pg != 0.0) ks = order_key(pg < 0 ? -pg : pg);
    }
    if (quota[0] == 0) ku = 0;
    if (quota[1] == 0) kl = 0;
    if (quota[2] == 0) ks = 0;
    if (koff[0] >= 0) keys[koff[0] + k] = ku;
    if (koff[1] >= 0) keys[koff[1] + k] = kl;
    if (koff[2] >= 0) keys[koff[2] + k] = ks;
    cnt[0] += ku != 0;
    cnt[1] += kl != 0;
    cnt[2] += ks != 0;
  }
  int tot[kWsLists];
  ws_scan(cnt, tot, wsum, s.lane, s.warp, s.nwarps);
  // radix select (8-bit digits, most significant first) of the quota-th largest key per list:
  // thr = that key, need = how many of the keys equal to thr are taken (the first by index)
  uint32_t thr[kWsLists];
  int need[kWsLists];
  bool sel[kWsLists];
  for (int L = 0; L < kWsLists; ++L) {
    sel[L] = tot[L] > quota[L];
    thr[L] = 0;
    need[L] = sel[L] ? quota[L] : 0;
  }
  if (sel[0] || sel[1] || sel[2]) {
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 24 - 8 * pass;
      const uint32_t hi = pass == 0 ? 0u : (0xFFFFFFFFu << (shift + 8));
      for (int i = s.tid; i < kWsLists * 256; i += s.nt) hist[i] = 0;
      __syncthreads();
      // whole warps walk the units together (k = base + lane) so that equal digits are counted
      // with one atomic per warp (__match_any_sync): the keys of one pass share a few digits (the
      // exponents of the violations), and lane-by-lane atomics on one bin serialise
      for (int64_t b0 = static_cast<int64_t>(s.warp) * 32; b0 < n; b0 += s.nt) {
        const int64_t k = b0 + s.lane;
        for (int L = 0; L < kWsLists; ++L) {
          if (!sel[L]) continue;
          const uint32_t key = k < n ? keys[koff[L] + k] : 0u;
          const bool in = key != 0u && (key & hi) == (thr[L] & hi);
          const int bin = in ? static_cast<int>((key >> shift) & 255u) : -1;
          const unsigned peers = __match_any_sync(0xffffffffu, bin);
          if (in && s.lane == __ffs(peers) - 1) atomicAdd(&hist[L * 256 + bin], __popc(peers));
        }
      }
      __syncthreads();
      for (int L = s.warp; L < kWsLists; L += s.nwarps) {
        if (!sel[L]) continue;
        const int want = need[L];
        int s8 = 0;
        for (int b = 0; b < 8; ++b) s8 += hist[L * 256 + 8 * s.lane + b];
        int pre = s8, all = s8;
        for (int o = 1; o < 32; o <<= 1) {
          const int t = __shfl_xor_sync(0xffffffffu, all, o);
          if (s.lane & o) pre += t;
          all += t;
        }
        const int above = all - pre;  // keys in the bins of the higher lanes
        if (above < want && want <= above + s8) {
          int acc = above;
          for (int b = 7; b >= 0; --b) {
            const int h = hist[L * 256 + 8 * s.lane + b];
            if (acc + h >= want) {
              found[2 * L] = 8 * s.lane + b;
              found[2 * L + 1] = want - acc;
              break;
            }
            acc += h;
          }
        }
      }
      __syncthreads();
      for (int L = 0; L < kWsLists; ++L) {
        if (!sel[L]) continue;
        thr[L] |= static_cast<uint32_t>(found[2 * L]) << shift;
        need[L] = found[2 * L + 1];
      }
      __syncthreads();
    }
  }
  // the working set, in index order: keys above thr, and the first `need` keys equal to thr
  const int64_t chunk = (n + s.nt - 1) / s.nt;
  const int64_t beg = s.tid * chunk < n ? s.tid * chunk : n;
  const int64_t end = beg + chunk < n ? beg + chunk : n;
  int eq[kWsLists] = {0, 0, 0};
  for (int64_t k = beg; k < end; ++k)
    for (int L = 0; L < kWsLists; ++L)
      if (sel[L] && keys[koff[L] + k] == thr[L]) ++eq[L];
  int etot[kWsLists];
  ws_scan(eq, etot, wsum, s.lane, s.warp, s.nwarps);
  // this thread's chunk, in order: counted first (out == nullptr), then written from `o` on
  auto walk = [&](int* out, int o) {
    int r[kWsLists] = {eq[0], eq[1], eq[2]};  // rank among the ties
    for (int64_t k = beg; k < end; ++k) {
      bool take = false;
      for (int L = 0; L < kWsLists; ++L) {
        if (koff[L] < 0) continue;  // (no quota: no candidates)
        const uint32_t key = keys[koff[L] + k];
        if (key > thr[L]) take = true;
        else if (sel[L] && key == thr[L] && r[L]++ < need[L]) take = true;
      }
      if (take) {
        if (out != nullptr) out[o] = static_cast<int>(k);
        ++o;
      }
    }
    return o;
  };
  int cnt_sel[kWsLists] = {walk(nullptr, 0), 0, 0};
  int nbt[kWsLists];
  ws_scan(cnt_sel, nbt, wsum, s.lane, s.warp, s.nwarps);
  walk(wsidx, cnt_sel[0]);
  const int nb = nbt[0];
  __syncthreads();
  // the working set's data, gathered (Q_BB is computed from it by ws_qbb_kernel, the update
  // kernel's columns too)
  double* xb = reinterpret_cast<double*>(base + W.xb);
  double* sb = reinterpret_cast<double*>(base + W.sb);
  double* lb = reinterpret_cast<double*>(base + W.lb);
  double* db = reinterpret_cast<double*>(base + W.db);
  int* ib = reinterpret_cast<int*>(base + W.ib);
  const int64_t D = s.kind == kQPDense ? 0 : A.S.D;
  for (int r = s.tid; r < nb; r += s.nt) {
    const int k = wsidx[r];
    for (int64_t d = 0; d < D; ++d) xb[d * nb + r] = s.Xt[d * n + k];
    sb[r] = s.sgn[k];
    lb[r] = s.kind == kQPCina ? s.lse[k] : 0.0;
    db[r] = s.diag[k];
    ib[r] = s.idx[k];
  }
  if (s.tid == 0) {
    cn.nb = nb;
    cn.ltol = dmax(tol, A.ltol * s.kkt);
    A.ctl[g] = cn;
    atomicAdd(A.active, 1);
  }
}

// Q_BB, column j at qbb + j nb (the layout of a cached column), from the working set gathered by
// the select kernel: one entry per thread over many blocks (computed inside the one-block select
// kernel it took ~30 us a round at |B| = 256 on an H200).
constexpr int kWsQbbThreads = 256;
template <typename T>
CINA_KERNEL(kWsQbbThreads) ws_qbb_kernel(WsArgs<T> A) {
  const int64_t g = blockIdx.y;
  const WsCtl c = A.ctl[g];
  if (c.status != 0) return;
  const int64_t nb = c.nb;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= nb * nb) return;
  BlockSolver<T> v;
  const WsLayout W = ws_bind(v, A, g);
  ws_load(v, c);
  unsigned char* base = A.ws + g * A.pbytes;
  v.n = nb;
  v.Xt = reinterpret_cast<double*>(base + W.xb);
  v.sgn = reinterpret_cast<double*>(base + W.sb);
  v.lse = reinterpret_cast<double*>(base + W.lb);
  v.diag = reinterpret_cast<double*>(base + W.db);
  v.idx = reinterpret_cast<int*>(base + W.ib);
  const int r = static_cast<int>(e % nb), col = static_cast<int>(e / nb);
  v.cache[e] = static_cast<T>(v.qentry(r, col));
}

// The sub-problem over the working set, in shared memory, by the block solver's own steps.
template <typename T>
CINA_KERNEL(kWsMaxSize) ws_solve_kernel(WsArgs<T> A) {
  CINA_DYN_SMEM(smem_raw);
  const int64_t g = blockIdx.x;
  const WsCtl c = A.ctl[g];
  if (c.status != 0) return;
  BlockSolver<T> s;  // the whole problem (its arrays in the workspace)
  const WsLayout W = ws_view(s, A, g, smem_raw, c);
  unsigned char* base = A.ws + g * A.pbytes;
  const int* wsidx = reinterpret_cast<const int*>(base + W.wsidx);
  double* wsdx = reinterpret_cast<double*>(base + W.wsdx);
  const int nb = c.nb;
  const int64_t qws = A.qws;
  // the sub-problem, by the block solver's steps: arrays in shared memory (smem_bytes is 4 mod 8:
  // the double arrays start at the next 16-byte boundary; the +16 of ws_smem_solve pays for it),
  // Q_BB in the workspace
  unsigned char* sm = smem_raw + ((smem_bytes(s.nt) + 15) & ~static_cast<size_t>(15));
  const size_t arrays = ws_sub_arrays(qws);
  int* wsum = reinterpret_cast<int*>(sm + arrays);
  // (a view of its own, not a copy of s: see ws_view)
  BlockSolver<T> loc;
  ws_view(loc, A, g, smem_raw, c);
  loc.x = reinterpret_cast<double*>(sm);
  loc.G = loc.x + qws;
  loc.lo = loc.G + qws;
  loc.up = loc.lo + qws;
  loc.invc = loc.up + qws;
  loc.diag = loc.invc + qws;
  loc.fl = reinterpret_cast<unsigned char*>(loc.diag + qws);
  loc.n = nb;
  loc.direct = true;  // column j of Q_BB at cache + j nb
  loc.dec = 0.0;
  for (int k = s.tid; k < nb; k += s.nt) {
    const int j = wsidx[k];
    loc.x[k] = s.x[j];
    loc.G[k] = s.G[j];
    loc.lo[k] = s.lo[j];
    loc.up[k] = s.up[j];
    loc.invc[k] = s.invc[j];
    loc.diag[k] = s.diag[j];
    loc.fl[k] = s.fl[j];
  }
  __syncthreads();
  loc.template pass<0>(-1, 0.0, -1, 0.0);
  const int64_t room = A.pb.max_iter[s.q] - c.it;
  int64_t cap = static_cast<int64_t>(nb) * kWsLocalStepsPerUnit;
  if (cap < 200) cap = 200;
  if (cap > room) cap = room;
  int64_t steps = 0;
  bool any = false, failed = false;
  while (steps < cap && !(loc.kkt < c.ltol)) {
    const bool progress = loc.step();
    ++steps;
    if (!progress) {
      failed = true;
      break;
    }
    any = true;
  }
  __syncthreads();
  // write back; the moved units (dx != 0) compacted in working-set order for the update kernel
  // (a sub-problem moves a few dozen of its units: the update then computes only their columns)
  int* wsch = reinterpret_cast<int*>(base + W.wsch);
  const int chunk = (nb + s.nt - 1) / s.nt;
  const int beg = s.tid * chunk < nb ? s.tid * chunk : nb;
  const int end = beg + chunk < nb ? beg + chunk : nb;
  int moved[kWsLists] = {0, 0, 0};
  for (int k = beg; k < end; ++k) moved[0] += (loc.x[k] - s.x[wsidx[k]]) != 0.0 ? 1 : 0;
  int nmoved[kWsLists];
  ws_scan(moved, nmoved, wsum, s.lane, s.warp, s.nwarps);
  for (int k = beg, o = moved[0]; k < end; ++k) {
    const int j = wsidx[k];
    const double d = loc.x[k] - s.x[j];
    if (d != 0.0) {
      wsch[o] = k;
      wsdx[o] = d;
      ++o;
    }
    s.x[j] = loc.x[k];
    s.fl[j] = loc.fl[k];
  }
  if (s.tid == 0) {
    WsCtl cn = c;
    cn.nch = nmoved[0];
    cn.it += steps;
    cn.since_window += steps;
    cn.dec = c.dec + loc.dec;
    cn.noprog = any ? 0 : c.noprog + 1;
    cn.refresh = failed ? 1 : 0;  // a step without representable progress: G from scratch (as
                                  // the block solver does after one)
    A.ctl[g] = cn;
  }
}

// ---- helper kernels: one thread per row ----------------------------------------------------------

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
CINA_KERNEL(kRowThreads) qp_lse_kernel(const T* X, const bool* mask, int64_t N, int64_t D,
                                       int64_t tiles, double scale, double* lse) {
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
CINA_KERNEL(kRowThreads) qp_rowsum_kernel(QPSource<T> src, const bool* rowmask, const bool* colmask,
                                          int64_t tiles, double* out) {
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
    const double g = src.kind == kQPRbf ? src.gamma[s] : 0.0;
    const double li = src.kind == kQPCina ? src.lse[s * N + i] : 0.0;
    for (int64_t j = 0; j < N; ++j) {
      if (!cm[j]) continue;
      const T* xj = Xs + j * D;
      double v;
      if (src.kind == kQPRbf) v = exp_clamped(sqdist_rows(xj, xi, D) * -g);
      else if (src.kind == kQPCina) v = exp_clamped(src.scale * dot_rows(xj, xi, D) - src.lse[s * N + j] - li);
      else v = dot_rows(xj, xi, D);
      acc += v;
    }
  }
  out[s * N + i] = acc;
}

}  // namespace qp_cuda_detail

// ---- host entry points --------------------------------------------------------------------------

namespace {
int qp_threads(int64_t N) {
  if (const char* e = std::getenv("CINA_QP_THREADS")) {
    const int v = std::atoi(e);
    if (v >= 32 && v <= qp_cuda_detail::kMaxThreads && v % 32 == 0) return v;
    return -1;
  }
  int64_t t = 32 * ((N + 255) / 256);  // about 8 units per thread
  if (t < 64) t = 64;
  if (t > qp_cuda_detail::kMaxThreads) t = qp_cuda_detail::kMaxThreads;
  return static_cast<int>(t);
}
}  // namespace

// Which algorithm: CINA_QP_CUDA_ALGO = "block" (one block per problem) | "ws" (working-set
// decomposition) | unset / "auto": "ws" from kWsMinUnits padded units.  Returns 0, 1 or -1 (bad).
constexpr int64_t kWsMinUnits = 4096;
static int qp_algo(int64_t N) {
  if (const char* e = std::getenv("CINA_QP_CUDA_ALGO")) {
    if (std::strcmp(e, "block") == 0) return 0;
    if (std::strcmp(e, "ws") == 0) return 1;
    if (std::strcmp(e, "auto") != 0 && e[0] != '\0') return -1;
  }
  return N >= kWsMinUnits ? 1 : 0;
}
// Working-set size: CINA_QP_WS_SIZE (2 .. 512); by default 512 for up to one problem per SM and
// 256 for more.  Measured on an H200 (benchmarks/solver_breakdown.py, bench_solver.py, one run,
// sub-problem tolerance 0.3): overlap 1 x 20000: 0.29 s at 512 against 0.48 s at 256 (half the
// rounds, each ~260 us); ate 1 x 100000 (2 problems): 0.33 s at both; 1024 x 1000 (forced): 0.074 s
// at 256 against 0.121 s at 512 (many problems: throughput, not latency, bounds a round).
static int64_t qp_ws_size(int64_t P) {
  if (const char* e = std::getenv("CINA_QP_WS_SIZE")) {
    const long v = std::atol(e);
    return (v >= 2 && v <= qp_cuda_detail::kWsMaxSize) ? v : -1;
  }
  return P <= cina::cuda_rt::rt_sm_count() ? 512 : 256;
}

// Threads of the sub-problem kernel (ws_solve_kernel): CINA_QP_WS_THREADS, a multiple of 32 in
// [32, 512]; default (0) one thread per working-set unit.  Each sub-problem step is a few block
// reductions over the working set: fewer threads, fewer warps to synchronise per step.
static int qp_ws_threads() {
  if (const char* e = std::getenv("CINA_QP_WS_THREADS")) {
    const long v = std::atol(e);
    return (v >= 32 && v <= qp_cuda_detail::kWsMaxSize && v % 32 == 0) ? static_cast<int>(v) : -1;
  }
  return 0;
}

// Sub-problem tolerance, relative to the KKT violation of the round: CINA_QP_WS_LTOL in (0, 1),
// default 0.3.  Measured on an H200 (one run): overlap 1 x 20000, working set 256: 0.48 s at 0.3,
// 0.55 s at 0.1 (ThunderSVM's), 1.51 s at 0.01 (4x the steps for 8% fewer rounds); at 512: 0.29
// against 0.46 s; ate 1 x 100000 and 1024 x 1000 (256): the same or faster at 0.3.
static double qp_ws_ltol() {
  if (const char* e = std::getenv("CINA_QP_WS_LTOL")) {
    char* end = nullptr;
    const double v = std::strtod(e, &end);
    return (end != e && *end == '\0' && v > 0.0 && v < 1.0) ? v : -1.0;
  }
  return 0.3;
}

static bool ws_stats() {
  const char* e = std::getenv("CINA_QP_WS_STATS");
  return e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
}

// The working-set solver (see ws_select_kernel): problems in groups that fit a quarter of the
// free memory; per group a host loop of (select, solve, update) launches that reads the number of
// active problems every few iterations.
template <typename T>
const char* qp_solve_cuda_ws(const QPSource<T>& source, const QPProblems<T>& problems,
                             const QPOutputs<T>& out, void* stream, int nt, int64_t m2) {
  using namespace qp_cuda_detail;
  const int64_t P = problems.P, N = problems.N;
  const int64_t qws = qp_ws_size(P);
  if (qws < 0) return fail("cina qp_solve (CUDA): CINA_QP_WS_SIZE must be an integer in [2, 512]");
  const double ltol = qp_ws_ltol();
  if (ltol < 0) return fail("cina qp_solve (CUDA): CINA_QP_WS_LTOL must be a number in (0, 1)");
  const int wst = qp_ws_threads();
  if (wst < 0) return fail("cina qp_solve (CUDA): CINA_QP_WS_THREADS must be a multiple of 32 in [32, 512]");
  const bool feats = source.kind != kQPDense;
  const WsLayout W = make_ws_layout(N, source.D, feats, m2, qws, static_cast<int64_t>(sizeof(T)));
  const int64_t pbytes = W.total;
  int64_t group = static_cast<int64_t>(0.25 * static_cast<double>(rt_free_memory()) / static_cast<double>(pbytes));
  if (group > P) group = P;
  if (group > 65535) group = 65535;  // (grid.y of the update kernel)
  if (group < 1) group = 1;
  const size_t total = static_cast<size_t>(group * pbytes) + static_cast<size_t>(group) * sizeof(WsCtl) + 256;
  void* ws = nullptr;
  if (const char* e = rt_malloc(&ws, total, stream, "QP working-set solver workspace")) return e;
  unsigned char* wsb = static_cast<unsigned char*>(ws);
  WsCtl* ctl = reinterpret_cast<WsCtl*>(wsb + group * pbytes);
  int* active = reinterpret_cast<int*>(wsb + group * pbytes + group * static_cast<int64_t>(sizeof(WsCtl)));
  int nts = static_cast<int>((qws + 31) / 32 * 32);
  if (wst > 0 && wst < nts) nts = wst;
  const size_t sm_upd = ws_smem_update(feats ? source.D : 0);
  // the select kernel's keys in shared memory, up to what a block may have (CINA_QP_WS_SMEM_KEYS:
  // at most that many; 0 keeps them in global memory)
  const size_t optin = rt_smem_optin(), sel_base = ws_smem_select_base(nt) + 64;
  int64_t keys_smem = optin > sel_base ? static_cast<int64_t>((optin - sel_base) / sizeof(uint32_t)) : 0;
  if (keys_smem > kWsLists * N) keys_smem = kWsLists * N;
  if (const char* e = std::getenv("CINA_QP_WS_SMEM_KEYS")) {
    const long long v = std::atoll(e);
    if (v >= 0 && v < keys_smem) keys_smem = v;
  }
  const size_t sm_setup = smem_bytes(nt), sm_sel = ws_smem_select(nt, keys_smem), sm_solve = ws_smem_solve(nts, qws);
  if (sm_sel > 48 * 1024) {
    if (const char* e = rt_set_max_dyn_smem(ws_select_kernel<T>, sm_sel)) {
      rt_free(ws, stream);
      return e;
    }
  }
  const char* err = nullptr;
  // CINA_QP_WS_STATS=1: per group, the rounds, sub-problem steps and the GPU time of each kernel
  // on stderr (a sync per round: diagnostics only), to split a run's time into per-round and
  // per-step costs (benchmarks/solver_breakdown.py)
  const bool stats = ws_stats();
  RtMark mk[4];
  for (int64_t p0 = 0; p0 < P && err == nullptr; p0 += group) {
    const int64_t gP = P - p0 < group ? P - p0 : group;
    WsArgs<T> args{source, problems, out, wsb, pbytes, m2, qws, p0, ctl, active, ltol, keys_smem};
    const dim3 upd(static_cast<unsigned>((N + kWsUpdateUnits - 1) / kWsUpdateUnits), static_cast<unsigned>(gP));
    const dim3 qbbg(static_cast<unsigned>((qws * qws + kWsQbbThreads - 1) / kWsQbbThreads), static_cast<unsigned>(gP));
    CINA_LAUNCH(ws_setup_kernel<T>, dim3(static_cast<unsigned>(gP)), dim3(nt), sm_setup, stream, args);
    CINA_LAUNCH(ws_update_kernel<T>, upd, dim3(kWsUpdateThreads), sm_upd, stream, args);
    if ((err = rt_check_launch("cina qp_solve (CUDA): working-set set-up launch"))) break;
    int64_t outer = 0;
    double ms_sel = 0.0, ms_solve = 0.0, ms_upd = 0.0;
    for (;; ++outer) {
      const bool check = outer < 4 || outer % 8 == 0;
      if (check && (err = rt_memset(active, sizeof(int), stream))) break;
      if (stats && (err = rt_mark(mk[0], stream))) break;
      CINA_LAUNCH(ws_select_kernel<T>, dim3(static_cast<unsigned>(gP)), dim3(nt), sm_sel, stream, args);
      CINA_LAUNCH(ws_qbb_kernel<T>, qbbg, dim3(kWsQbbThreads), 0, stream, args);
      if (stats && (err = rt_mark(mk[1], stream))) break;
      CINA_LAUNCH(ws_solve_kernel<T>, dim3(static_cast<unsigned>(gP)), dim3(nts), sm_solve, stream, args);
      if (stats && (err = rt_mark(mk[2], stream))) break;
      CINA_LAUNCH(ws_update_kernel<T>, upd, dim3(kWsUpdateThreads), sm_upd, stream, args);
      if (stats) {
        if ((err = rt_mark(mk[3], stream))) break;
        ms_sel += rt_ms(mk[0], mk[1]);
        ms_solve += rt_ms(mk[1], mk[2]);
        ms_upd += rt_ms(mk[2], mk[3]);
      }
      if (!check) continue;
      if ((err = rt_check_launch("cina qp_solve (CUDA): working-set solver launch"))) break;
      int left = 0;
      if ((err = rt_read(&left, active, sizeof(int), stream))) break;
      if (left == 0) break;
    }
    if (err == nullptr && stats) {
      std::vector<WsCtl> hc(static_cast<size_t>(gP));
      long long steps = 0;
      if ((err = rt_read(hc.data(), ctl, sizeof(WsCtl) * hc.size(), stream))) break;
      for (const WsCtl& c : hc) steps += static_cast<long long>(c.it);
      const double r = static_cast<double>(outer + 1);
      std::fprintf(stderr,
                   "cina qp_solve (CUDA, working set): problems %lld..%lld of %lld: %lld rounds, %lld steps "
                   "(working set %lld, %d sub-problem threads); GPU ms: select %.3f, solve %.3f, update %.3f; "
                   "per round us: select %.2f, solve %.2f, update %.2f; solve us per step %.3f\n",
                   static_cast<long long>(p0), static_cast<long long>(p0 + gP - 1), static_cast<long long>(P),
                   static_cast<long long>(outer + 1), steps, static_cast<long long>(qws), nts, ms_sel, ms_solve,
                   ms_upd, 1e3 * ms_sel / r, 1e3 * ms_solve / r, 1e3 * ms_upd / r,
                   steps > 0 ? 1e3 * ms_solve / static_cast<double>(steps) : 0.0);
    }
  }
  for (RtMark& m : mk) rt_mark_free(m);
  rt_free(ws, stream);
  return err;
}

template <typename T>
const char* qp_solve_cuda(const QPSource<T>& source, const QPProblems<T>& problems,
                          const QPOptions& opt, const QPOutputs<T>& out, void* stream) {
  using namespace qp_cuda_detail;
  const int64_t P = problems.P, N = problems.N;
  if (P <= 0) return nullptr;
  if (source.N != N) return fail("cina qp_solve (CUDA): source and problems disagree on N");
  if (N >= (int64_t(1) << 31) / 2) return fail("cina qp_solve (CUDA): N too large");
  const int nt = qp_threads(N);
  if (nt < 0) return fail("cina qp_solve (CUDA): CINA_QP_THREADS must be a multiple of 32 in [32, 1024]");
  const int algo = qp_algo(N);
  if (algo < 0) return fail("cina qp_solve (CUDA): CINA_QP_CUDA_ALGO must be block, ws or auto");
  const bool feats = source.kind != kQPDense;
  int64_t m2 = 0;
  if (problems.c != nullptr) {
    m2 = 2;
    while (m2 < 2 * N) m2 <<= 1;
  }
  if (algo == 1) return qp_solve_cuda_ws(source, problems, out, stream, nt, m2);
  const size_t smem = smem_bytes(nt);
  const int64_t per_sm = rt_blocks_per_sm(qp_solve_kernel<T>, nt, smem);
  int64_t grid = static_cast<int64_t>(rt_sm_count()) * per_sm;
  if (grid > P) grid = P;
  if (grid < 1) grid = 1;
  // column cache: the per-problem budget for each resident block, within a quarter of the free
  // device memory and 4 GiB in all; at least two slots (the two columns of an SMO step)
  int64_t cap = 2;
  if (feats && N > 0) {
    const double col = static_cast<double>(N) * sizeof(T);
    double budget = static_cast<double>(opt.cache_bytes) * static_cast<double>(grid);
    const double free_q = 0.25 * static_cast<double>(rt_free_memory());
    if (budget > free_q) budget = free_q;
    if (budget > 4.0 * (int64_t(1) << 30)) budget = 4.0 * (int64_t(1) << 30);
    const double per_block = budget / static_cast<double>(grid) / col;
    cap = per_block >= static_cast<double>(N) ? N : static_cast<int64_t>(per_block);
    if (cap < 2) cap = 2;
  }
  const Layout L = make_layout(N, source.D, feats, cap, m2, static_cast<int64_t>(sizeof(T)));
  const int64_t block_bytes = L.total;
  const size_t total = static_cast<size_t>(grid * block_bytes) + 256;
  void* ws = nullptr;
  if (const char* e = rt_malloc(&ws, total, stream, "QP solver workspace")) return e;
  int* counter = reinterpret_cast<int*>(static_cast<unsigned char*>(ws) + grid * block_bytes);
  if (const char* e = rt_memset(counter, sizeof(int), stream)) {
    rt_free(ws, stream);
    return e;
  }
  QPArgs<T> args{source, problems, out, static_cast<unsigned char*>(ws), block_bytes, cap, m2, counter};
  CINA_LAUNCH(qp_solve_kernel<T>, dim3(static_cast<unsigned>(grid)), dim3(nt), smem, stream, args);
  const char* err = rt_check_launch("cina qp_solve (CUDA): solver kernel launch");
  rt_free(ws, stream);
  return err;
}

template <typename T>
const char* qp_kernel_lse_cuda(const T* X, const bool* mask, int64_t S, int64_t N, int64_t D,
                               double scale, double* lse, void* stream) {
  using namespace qp_cuda_detail;
  if (S <= 0 || N <= 0) return nullptr;
  const int64_t tiles = (N + kRowThreads - 1) / kRowThreads;
  CINA_LAUNCH(qp_lse_kernel<T>, dim3(static_cast<unsigned>(S * tiles)), dim3(kRowThreads), 0, stream,
              X, mask, N, D, tiles, scale, lse);
  return rt_check_launch("cina qp_kernel_lse (CUDA): kernel launch");
}

template <typename T>
const char* qp_kernel_rowsum_cuda(const QPSource<T>& source, const bool* rowmask,
                                  const bool* colmask, double* out, void* stream) {
  using namespace qp_cuda_detail;
  const int64_t S = source.S, N = source.N;
  if (S <= 0 || N <= 0) return nullptr;
  const int64_t tiles = (N + kRowThreads - 1) / kRowThreads;
  CINA_LAUNCH(qp_rowsum_kernel<T>, dim3(static_cast<unsigned>(S * tiles)), dim3(kRowThreads), 0, stream,
              source, rowmask, colmask, tiles, out);
  return rt_check_launch("cina qp_kernel_rowsum (CUDA): kernel launch");
}

#define CINA_QP_CUDA_INSTANTIATE(T)                                                             \
  template const char* qp_solve_cuda<T>(const QPSource<T>&, const QPProblems<T>&,               \
                                        const QPOptions&, const QPOutputs<T>&, void*);          \
  template const char* qp_kernel_lse_cuda<T>(const T*, const bool*, int64_t, int64_t, int64_t,  \
                                             double, double*, void*);                           \
  template const char* qp_kernel_rowsum_cuda<T>(const QPSource<T>&, const bool*, const bool*,   \
                                                double*, void*);
CINA_QP_CUDA_INSTANTIATE(float)
CINA_QP_CUDA_INSTANTIATE(double)
#undef CINA_QP_CUDA_INSTANTIATE

}  // namespace cina
