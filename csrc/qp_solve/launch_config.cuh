// Host-side launch configuration: block size, algorithm (block / working set) and the
// working-set parameters, from the environment or chosen from the problem sizes.
#pragma once
#include "qp_solve/ws_layout.cuh"

#include <cstdlib>
#include <cstring>

namespace cina {

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

}  // namespace cina
