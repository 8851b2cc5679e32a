// Host-side launch configuration: block size, algorithm (block / working set) and the
// working-set parameters, from the environment or chosen from the problem sizes.
#pragma once
#include "common/config.h"
#include "qp_solve/ws_layout.cuh"

namespace cina {

// the parser's limits (common/config.h) are the kernels'
static_assert(kConfigQpMaxThreads == qp_cuda_detail::kMaxThreads, "CINA_QP_THREADS limit");
static_assert(kConfigQpWsMaxSize == qp_cuda_detail::kWsMaxSize, "CINA_QP_WS_SIZE / _THREADS limit");

namespace {
int qp_threads(const Config& cfg, int64_t N) {
  if (cfg.qp_threads != 0) return cfg.qp_threads;  // (-1: invalid)
  int64_t t = 32 * ((N + 255) / 256);  // about 8 units per thread
  if (t < 64) t = 64;
  if (t > qp_cuda_detail::kMaxThreads) t = qp_cuda_detail::kMaxThreads;
  return static_cast<int>(t);
}
}  // namespace

// Which algorithm: CINA_QP_CUDA_ALGO = "block" (one block per problem) | "ws" (working-set
// decomposition) | unset / "auto": "ws" from kWsMinUnits padded units.  Returns 0, 1 or -1 (bad).
constexpr int64_t kWsMinUnits = 4096;
static int qp_algo(const Config& cfg, int64_t N) {
  if (cfg.qp_algo == Config::kAlgoBlock) return 0;
  if (cfg.qp_algo == Config::kAlgoWs) return 1;
  if (cfg.qp_algo == Config::kAlgoInvalid) return -1;
  return N >= kWsMinUnits ? 1 : 0;
}
// Working-set size: CINA_QP_WS_SIZE (2 .. 512); by default 512 for up to one problem per SM and
// 256 for more.  Measured on an H200 (benchmarks/solver_breakdown.py, bench_solver.py, one run,
// sub-problem tolerance 0.3): overlap 1 x 20000: 0.29 s at 512 against 0.48 s at 256 (half the
// rounds, each ~260 us); ate 1 x 100000 (2 problems): 0.33 s at both; 1024 x 1000 (forced): 0.074 s
// at 256 against 0.121 s at 512 (many problems: throughput, not latency, bounds a round).
static int64_t qp_ws_size(const Config& cfg, int64_t P) {
  if (cfg.qp_ws_size != 0) return cfg.qp_ws_size;  // (-1: invalid)
  return P <= cina::cuda_rt::rt_sm_count() ? 512 : 256;
}

// Threads of the sub-problem kernel (ws_solve_kernel): CINA_QP_WS_THREADS, a multiple of 32 in
// [32, 512]; default (0) one thread per working-set unit.  Each sub-problem step is a few block
// reductions over the working set: fewer threads, fewer warps to synchronise per step.
static int qp_ws_threads(const Config& cfg) { return cfg.qp_ws_threads; }

// Sub-problem tolerance, relative to the KKT violation of the round: CINA_QP_WS_LTOL in (0, 1),
// default 0.3.  Measured on an H200 (one run): overlap 1 x 20000, working set 256: 0.48 s at 0.3,
// 0.55 s at 0.1 (ThunderSVM's), 1.51 s at 0.01 (4x the steps for 8% fewer rounds); at 512: 0.29
// against 0.46 s; ate 1 x 100000 and 1024 x 1000 (256): the same or faster at 0.3.
static double qp_ws_ltol(const Config& cfg) { return cfg.qp_ws_ltol; }

static bool ws_stats(const Config& cfg) { return cfg.qp_ws_stats; }

}  // namespace cina
