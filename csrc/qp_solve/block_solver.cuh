// BlockSolver: one problem solved by one thread block (binding, block-wide reductions, kernel
// columns and their cache, set-up, SMO / coordinate-descent steps), and qp_solve_kernel, the
// persistent-grid kernel that runs it.  The working-set kernels reuse its steps.
#pragma once
#include "qp_solve/block_layout.cuh"

namespace cina {
namespace qp_cuda_detail {

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
    if (kind == kQPRbf || kind == kQPLaplace) {
      for (; d + 4 <= D; d += 4) {
        const double e0 = r[d * n] - qv[d * js], e1 = r[(d + 1) * n] - qv[(d + 1) * js];
        const double e2 = r[(d + 2) * n] - qv[(d + 2) * js], e3 = r[(d + 3) * n] - qv[(d + 3) * js];
        v += (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3);
      }
      for (; d < D; ++d) {
        const double e0 = r[d * n] - qv[d * js];
        v += e0 * e0;
      }
      if (kind == kQPLaplace) return exp_clamped(sqrt(dmax(v, 0.0)) * -gamma);
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
    if (kind == kQPRbf || kind == kQPLaplace) return 1.0;
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
  CINA_DEV double qentry_at(int k, int j, int jsrc, const double* qv, int64_t js, double sgnj,
                            double lsej) const {
    if (k == j) return diag[k];
    return static_cast<double>(static_cast<T>(
        (qscale * sgnj) * sgn[k] * kval_at(k, jsrc, qv, js, kind == kQPCina ? lsej : 0.0)));
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
    gamma = (kind == kQPRbf || kind == kQPLaplace) ? S.gamma[src] : 0.0;
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
      const double dk =
          static_cast<double>(static_cast<T>((qscale * sgn[k]) * sgn[k] * kdiag(k) + diag_add));
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
      for (int k = tid; k < n; k += nt)
        x[k] = clip(static_cast<double>(pb.x0[row + idx[k]]), lo[k], up[k]);
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
        const double qv =
            s >= 0 ? static_cast<double>(cache[static_cast<int64_t>(s) * n + k]) : qentry(k, j);
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
      double ak =
          (qi_term + diag[k] * invc[k] * invc[k]) - static_cast<double>(Qa[k]) * (twoici * invc[k]);
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
      double aa =
          (diag[a] * ici * ici + diag[b] * invc[b] * invc[b]) -
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
    if (b >= 0)
      df += dxb * ((G[b] + 0.5 * dxb * diag[b]) +
                   dxa * static_cast<double>(cache[static_cast<int64_t>(sa) * n + b]));
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
CINA_KERNEL(kMaxThreads)
qp_solve_kernel(QPArgs<T> A) {
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

}  // namespace qp_cuda_detail
}  // namespace cina
