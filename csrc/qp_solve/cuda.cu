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
// Files (this folder): device.cuh (constants, scalar helpers), block_layout.cuh (workspace and
// shared-memory layout), block_solver.cuh (BlockSolver, qp_solve_kernel), ws_layout.cuh and
// ws_kernels.cuh (working-set decomposition), row_kernels.cuh (helper operators),
// launch_config.cuh (block size, algorithm, working-set parameters); the host launchers are
// below.
//
// The files are pure CUDA (no torch headers).  Compiled on the host with CINA_EMULATE defined by
// tests/emulator/cuda_emulator/qp_emulator.cpp (one std::thread per CUDA thread), so that the very
// kernels are tested without a GPU (tests/emulator/test_qp_cuda_emulator.py).
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

// (under CINA_EMULATE the emulator defines CINA_DEV, CINA_KERNEL, CINA_DYN_SMEM, dim3,
//  threadIdx/blockIdx/..., __syncthreads, __shfl_xor_sync, atomicAdd, CINA_LAUNCH and the
//  cina::cuda_rt::rt_* functions before including this file; see common/cuda_rt.h)

// the kernels and their launch configuration, one concern per file (see "Files" above)
#include "qp_solve/device.cuh"
#include "qp_solve/block_layout.cuh"
#include "qp_solve/block_solver.cuh"
#include "qp_solve/ws_layout.cuh"
#include "qp_solve/ws_kernels.cuh"
#include "qp_solve/row_kernels.cuh"
#include "qp_solve/launch_config.cuh"

namespace cina {

// ---- host entry points --------------------------------------------------------------------------

// The working-set solver (see ws_select_kernel): problems in groups that fit a quarter of the
// free memory; per group a host loop of (select, solve, update) launches that reads the number of
// active problems every few iterations.
template <typename T>
const char* qp_solve_cuda_ws(const QPSource<T>& source, const QPProblems<T>& problems,
                             const QPOutputs<T>& out, void* stream, const Config& cfg, int nt,
                             int64_t m2) {
  using namespace qp_cuda_detail;
  const int64_t P = problems.P, N = problems.N;
  const int64_t qws = qp_ws_size(cfg, P);
  if (qws < 0) return fail("cina qp_solve (CUDA): CINA_QP_WS_SIZE must be an integer in [2, 512]");
  const double ltol = qp_ws_ltol(cfg);
  if (ltol < 0) return fail("cina qp_solve (CUDA): CINA_QP_WS_LTOL must be a number in (0, 1)");
  const int wst = qp_ws_threads(cfg);
  if (wst < 0)
    return fail("cina qp_solve (CUDA): CINA_QP_WS_THREADS must be a multiple of 32 in [32, 512]");
  const bool feats = source.kind != kQPDense;
  const WsLayout W = make_ws_layout(N, source.D, feats, m2, qws, static_cast<int64_t>(sizeof(T)));
  const int64_t pbytes = W.total;
  int64_t group = static_cast<int64_t>(0.25 * static_cast<double>(rt_free_memory()) /
                                       static_cast<double>(pbytes));
  if (group > P) group = P;
  if (group > 65535) group = 65535;  // (grid.y of the update kernel)
  if (group < 1) group = 1;
  const size_t total =
      static_cast<size_t>(group * pbytes) + static_cast<size_t>(group) * sizeof(WsCtl) + 256;
  void* ws = nullptr;
  if (const char* e = rt_malloc(&ws, total, stream, "QP working-set solver workspace")) return e;
  unsigned char* wsb = static_cast<unsigned char*>(ws);
  WsCtl* ctl = reinterpret_cast<WsCtl*>(wsb + group * pbytes);
  int* active =
      reinterpret_cast<int*>(wsb + group * pbytes + group * static_cast<int64_t>(sizeof(WsCtl)));
  int nts = static_cast<int>((qws + 31) / 32 * 32);
  if (wst > 0 && wst < nts) nts = wst;
  const size_t sm_upd = ws_smem_update(feats ? source.D : 0);
  // the select kernel's keys in shared memory, up to what a block may have (CINA_QP_WS_SMEM_KEYS:
  // at most that many; 0 keeps them in global memory)
  const size_t optin = rt_smem_optin(), sel_base = ws_smem_select_base(nt) + 64;
  int64_t keys_smem =
      optin > sel_base ? static_cast<int64_t>((optin - sel_base) / sizeof(uint32_t)) : 0;
  if (keys_smem > kWsLists * N) keys_smem = kWsLists * N;
  if (cfg.qp_ws_smem_keys >= 0 && cfg.qp_ws_smem_keys < keys_smem) keys_smem = cfg.qp_ws_smem_keys;
  const size_t sm_setup = smem_bytes(nt), sm_sel = ws_smem_select(nt, keys_smem),
               sm_solve = ws_smem_solve(nts, qws);
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
  const bool stats = ws_stats(cfg);
  RtMark mk[4];
  for (int64_t p0 = 0; p0 < P && err == nullptr; p0 += group) {
    const int64_t gP = P - p0 < group ? P - p0 : group;
    WsArgs<T> args{source, problems, out, wsb, pbytes, m2, qws, p0, ctl, active, ltol, keys_smem};
    const dim3 upd(static_cast<unsigned>((N + kWsUpdateUnits - 1) / kWsUpdateUnits),
                   static_cast<unsigned>(gP));
    const dim3 qbbg(static_cast<unsigned>((qws * qws + kWsQbbThreads - 1) / kWsQbbThreads),
                    static_cast<unsigned>(gP));
    CINA_LAUNCH(ws_setup_kernel<T>, dim3(static_cast<unsigned>(gP)), dim3(nt), sm_setup, stream,
                args);
    CINA_LAUNCH(ws_update_kernel<T>, upd, dim3(kWsUpdateThreads), sm_upd, stream, args);
    if ((err = rt_check_launch("cina qp_solve (CUDA): working-set set-up launch"))) break;
    int64_t outer = 0;
    double ms_sel = 0.0, ms_solve = 0.0, ms_upd = 0.0;
    for (;; ++outer) {
      const bool check = outer < 4 || outer % 8 == 0;
      if (check && (err = rt_memset(active, sizeof(int), stream))) break;
      if (stats && (err = rt_mark(mk[0], stream))) break;
      CINA_LAUNCH(ws_select_kernel<T>, dim3(static_cast<unsigned>(gP)), dim3(nt), sm_sel, stream,
                  args);
      CINA_LAUNCH(ws_qbb_kernel<T>, qbbg, dim3(kWsQbbThreads), 0, stream, args);
      if (stats && (err = rt_mark(mk[1], stream))) break;
      CINA_LAUNCH(ws_solve_kernel<T>, dim3(static_cast<unsigned>(gP)), dim3(nts), sm_solve, stream,
                  args);
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
      std::fprintf(
          stderr,
          "cina qp_solve (CUDA, working set): problems %lld..%lld of %lld: %lld rounds, %lld steps "
          "(working set %lld, %d sub-problem threads); GPU ms: select %.3f, solve %.3f, update "
          "%.3f; "
          "per round us: select %.2f, solve %.2f, update %.2f; solve us per step %.3f\n",
          static_cast<long long>(p0), static_cast<long long>(p0 + gP - 1),
          static_cast<long long>(P), static_cast<long long>(outer + 1), steps,
          static_cast<long long>(qws), nts, ms_sel, ms_solve, ms_upd, 1e3 * ms_sel / r,
          1e3 * ms_solve / r, 1e3 * ms_upd / r,
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
  const Config cfg = read_config();  // the environment, once per call
  const int nt = qp_threads(cfg, N);
  if (nt < 0)
    return fail("cina qp_solve (CUDA): CINA_QP_THREADS must be a multiple of 32 in [32, 1024]");
  const int algo = qp_algo(cfg, N);
  if (algo < 0) return fail("cina qp_solve (CUDA): CINA_QP_CUDA_ALGO must be block, ws or auto");
  const bool feats = source.kind != kQPDense;
  int64_t m2 = 0;
  if (problems.c != nullptr) {
    m2 = 2;
    while (m2 < 2 * N) m2 <<= 1;
  }
  if (algo == 1) return qp_solve_cuda_ws(source, problems, out, stream, cfg, nt, m2);
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
  QPArgs<T> args{source,      problems, out, static_cast<unsigned char*>(ws),
                 block_bytes, cap,      m2,  counter};
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
  CINA_LAUNCH(qp_lse_kernel<T>, dim3(static_cast<unsigned>(S * tiles)), dim3(kRowThreads), 0,
              stream, X, mask, N, D, tiles, scale, lse);
  return rt_check_launch("cina qp_kernel_lse (CUDA): kernel launch");
}

template <typename T>
const char* qp_kernel_rowsum_cuda(const QPSource<T>& source, const bool* rowmask,
                                  const bool* colmask, double* out, void* stream) {
  using namespace qp_cuda_detail;
  const int64_t S = source.S, N = source.N;
  if (S <= 0 || N <= 0) return nullptr;
  const int64_t tiles = (N + kRowThreads - 1) / kRowThreads;
  CINA_LAUNCH(qp_rowsum_kernel<T>, dim3(static_cast<unsigned>(S * tiles)), dim3(kRowThreads), 0,
              stream, source, rowmask, colmask, tiles, out);
  return rt_check_launch("cina qp_kernel_rowsum (CUDA): kernel launch");
}

#define CINA_QP_CUDA_INSTANTIATE(T)                                                            \
  template const char* qp_solve_cuda<T>(const QPSource<T>&, const QPProblems<T>&,              \
                                        const QPOptions&, const QPOutputs<T>&, void*);         \
  template const char* qp_kernel_lse_cuda<T>(const T*, const bool*, int64_t, int64_t, int64_t, \
                                             double, double*, void*);                          \
  template const char* qp_kernel_rowsum_cuda<T>(const QPSource<T>&, const bool*, const bool*,  \
                                                double*, void*);
CINA_QP_CUDA_INSTANTIATE(float)
CINA_QP_CUDA_INSTANTIATE(double)
#undef CINA_QP_CUDA_INSTANTIATE

}  // namespace cina
