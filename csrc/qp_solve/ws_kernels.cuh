// The working-set decomposition kernels (large problems): set-up, select, Q_BB, sub-problem
// solve and gradient update.
#pragma once
#include "qp_solve/block_solver.cuh"
#include "qp_solve/ws_layout.cuh"

namespace cina {
namespace qp_cuda_detail {

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
// with shared scratch then call bind_block); the problem's scalars come from ws_load after the
// set-up.
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
  const WsLayout W =
      make_ws_layout(A.pb.N, A.S.D, feats, A.m2, A.qws, static_cast<int64_t>(sizeof(T)));
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
  s.gamma = (s.kind == kQPRbf || s.kind == kQPLaplace) ? s.S.gamma[s.src] : 0.0;
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
// address on the H200; tests/emulator/test_ptx.py checks the PTX for such loads).
template <typename T>
CINA_DEV WsLayout ws_view(BlockSolver<T>& s, const WsArgs<T>& A, int64_t g, unsigned char* smem,
                          const WsCtl& c) {
  const WsLayout W = ws_bind(s, A, g);
  s.bind_block(smem);
  ws_load(s, c);
  return W;
}

// Set-up of every problem of the group: the block solver's set-up (compaction, gathered
// features, bounds, feasible start), G = -p; the first update adds Qx.
template <typename T>
CINA_KERNEL(kMaxThreads)
ws_setup_kernel(WsArgs<T> A) {
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
         kWsUpdateTile *
             (3 * sizeof(double) + 2 * sizeof(int) + (D <= kWsUpdateMaxD ? D : 0) * sizeof(double));
}
template <typename T>
CINA_KERNEL(kWsUpdateThreads)
ws_update_kernel(WsArgs<T> A) {
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
        acc +=
            cdx[e] * s.qentry_at(kk, cj[e], ci[e], qv, staged ? kWsUpdateTile : nb, csg[e], cls[e]);
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
CINA_DEV void ws_scan(int (&v)[kWsLists], int (&tot)[kWsLists], int* wsum, int lane, int warp,
                      int nwarps) {
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
CINA_KERNEL(kMaxThreads)
ws_select_kernel(WsArgs<T> A) {
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
CINA_KERNEL(kWsQbbThreads)
ws_qbb_kernel(WsArgs<T> A) {
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
CINA_KERNEL(kWsMaxSize)
ws_solve_kernel(WsArgs<T> A) {
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

}  // namespace qp_cuda_detail
}  // namespace cina
