// The working-set solver's constants, per-problem control block (WsCtl), workspace layout,
// kernel argument (WsArgs) and shared-memory sizes.
#pragma once
#include "qp_solve/block_layout.cuh"

namespace cina {
namespace qp_cuda_detail {

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
CINA_QP_HD WsLayout make_ws_layout(int64_t N, int64_t D, bool feats, int64_t m2, int64_t qws,
                                   int64_t tsize) {
  WsLayout W{};
  W.base = make_layout(N, D, feats, 0, m2, tsize);
  int64_t o = W.base.total;
  W.keys = o;
  o += align256(kWsLists * N * 4);
  W.wsidx = o;
  o += align256(qws * 4);
  W.wsdx = o;
  o += align256(qws * 8);   // the moves of the last sub-problem, compacted
  W.wsch = o;
  o += align256(qws * 4);   // and their positions in the working set
  W.qbb = o;
  o += align256(qws * qws * tsize);
  // the working set's features (D x qws), signs, lse, diagonal and source indices, gathered so
  // that Q_BB is computed from a few contiguous kilobytes instead of scattered columns of Xt
  W.xb = o;
  o += feats ? align256(qws * D * 8) : 0;
  W.sb = o;
  o += align256(qws * 8);
  W.lb = o;
  o += align256(qws * 8);
  W.db = o;
  o += align256(qws * 8);
  W.ib = o;
  o += align256(qws * 4);
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
  int64_t keys_smem;  // the select kernel's keys live in shared memory when they fit in this many
};

// shared memory: Red[32], Ctl, scan (nt + 1 ints), then the kernel's own arrays: histograms, scan
// and radix scratch, and room for keys_smem keys
inline size_t ws_smem_select_base(int nt) {
  return smem_bytes(nt) + sizeof(int) * (kWsLists * 256 + 32 * kWsLists + 2 * kWsLists);
}
inline size_t ws_smem_select(int nt, int64_t keys_smem) {
  return ws_smem_select_base(nt) + sizeof(uint32_t) * static_cast<size_t>(keys_smem);
}
// the solve kernel: then the sub-problem's arrays (x, G, lo, up, 1/c, diag: doubles; flags),
// 16-byte aligned, and the scan scratch
CINA_QP_HD size_t ws_sub_arrays(int64_t qws) {
  return (static_cast<size_t>(qws) * (6 * sizeof(double) + 1) + 15) & ~static_cast<size_t>(15);
}
inline size_t ws_smem_solve(int nt, int64_t qws) {
  return smem_bytes(nt) + 16 + ws_sub_arrays(qws) + sizeof(int) * 32 * kWsLists;
}

}  // namespace qp_cuda_detail
}  // namespace cina
