// The run-time knobs of the extension: every CINA_* environment variable that csrc/ reads, parsed
// by one function into one struct (docs/configuration.md has the table of them).
//
// read_config() reads the environment afresh at each call, and the ops call it once per operator
// call: a knob changed between two calls takes effect at the next (the emulator tests rely on
// that).  Parsing never fails: an invalid value is recorded (kInvalid / -1) together with its text,
// and the op that uses the knob reports it, at the same point and with the same message as when
// each op parsed its own variables; an invalid knob of one op never affects another op.
//
// Header-only so that the CUDA emulator (tests/emulator/), which compiles cuda.cu alone, sees it.
// Not for the per-instruction-set kernel files (cpu.cpp, built also with -mavx2): the linker could
// keep their AVX2 copy of these inline functions for the whole library.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

namespace cina {

// Limits that the parser checks; the kernels' own constants are static_assert-ed equal to them
// (csrc/qp_solve/launch_config.cuh).
constexpr int kConfigQpMaxThreads = 1024;  // CINA_QP_THREADS: block size of the solver kernel
constexpr int kConfigQpWsMaxSize = 512;  // CINA_QP_WS_SIZE / CINA_QP_WS_THREADS

struct Config {
  // ---- attention_hinge (CUDA) ----
  // CINA_ATTENTION_KERNEL: unset, empty or "auto" -> kAuto.
  enum AttentionKernel : int { kAuto, kSimt, kTf32, kTf32x3, kTf32p, kTf32x3p, kInvalid };
  AttentionKernel attention_kernel = kAuto;
  std::string attention_kernel_text;  // the value as given (for the error message)
  // CINA_ATTENTION_SPLITS: 0 = heuristic (unset, empty or "auto"), n in [1, 1024] = at most n,
  // -1 = invalid.
  long attention_splits = 0;
  std::string attention_splits_text;

  // ---- qp_solve (CUDA) ----
  // CINA_QP_THREADS: 0 = unset (chosen from N), a multiple of 32 in [32, 1024], -1 = invalid
  // (set but not such a number, the empty string included).
  int qp_threads = 0;
  // CINA_QP_CUDA_ALGO: unset, empty or "auto" -> kAlgoAuto.
  enum QpAlgo : int { kAlgoAuto, kAlgoBlock, kAlgoWs, kAlgoInvalid };
  QpAlgo qp_algo = kAlgoAuto;
  // CINA_QP_WS_SIZE: 0 = unset (chosen from P), 2 .. 512, -1 = invalid.
  int64_t qp_ws_size = 0;
  // CINA_QP_WS_THREADS: 0 = unset (one thread per working-set unit), a multiple of 32 in
  // [32, 512], -1 = invalid.
  int qp_ws_threads = 0;
  // CINA_QP_WS_LTOL: in (0, 1); 0.3 when unset; -1 = invalid.
  double qp_ws_ltol = 0.3;
  // CINA_QP_WS_STATS: set, non-empty and not "0".
  bool qp_ws_stats = false;
  // CINA_QP_WS_SMEM_KEYS: a cap >= 0 on the select kernel's keys in shared memory; -1 = no cap
  // (unset, or a negative value: ignored, as is a cap above what fits).
  long long qp_ws_smem_keys = -1;

  // ---- CPU ----
  bool qp_debug = false;  // CINA_QP_DEBUG set (any value): per-problem summary on stderr
  bool cpu_baseline = false;  // CINA_CPU_BASELINE set (any value): no AVX2+FMA kernels
};

inline Config read_config() {
  Config c;
  if (const char* s = std::getenv("CINA_ATTENTION_KERNEL")) {
    c.attention_kernel_text = s;
    if (*s == '\0' || std::strcmp(s, "auto") == 0) c.attention_kernel = Config::kAuto;
    else if (std::strcmp(s, "simt") == 0) c.attention_kernel = Config::kSimt;
    else if (std::strcmp(s, "tf32x3") == 0) c.attention_kernel = Config::kTf32x3;
    else if (std::strcmp(s, "tf32") == 0) c.attention_kernel = Config::kTf32;
    else if (std::strcmp(s, "tf32x3p") == 0) c.attention_kernel = Config::kTf32x3p;
    else if (std::strcmp(s, "tf32p") == 0) c.attention_kernel = Config::kTf32p;
    else c.attention_kernel = Config::kInvalid;
  }
  if (const char* s = std::getenv("CINA_ATTENTION_SPLITS")) {
    c.attention_splits_text = s;
    if (*s != '\0' && std::strcmp(s, "auto") != 0) {
      char* end = nullptr;
      const long v = std::strtol(s, &end, 10);
      c.attention_splits = (end == s || *end != '\0' || v < 0 || v > 1024) ? -1 : v;
    }
  }
  if (const char* e = std::getenv("CINA_QP_THREADS")) {
    const int v = std::atoi(e);
    c.qp_threads = (v >= 32 && v <= kConfigQpMaxThreads && v % 32 == 0) ? v : -1;
  }
  if (const char* e = std::getenv("CINA_QP_CUDA_ALGO")) {
    if (std::strcmp(e, "block") == 0) c.qp_algo = Config::kAlgoBlock;
    else if (std::strcmp(e, "ws") == 0) c.qp_algo = Config::kAlgoWs;
    else if (std::strcmp(e, "auto") != 0 && e[0] != '\0') c.qp_algo = Config::kAlgoInvalid;
  }
  if (const char* e = std::getenv("CINA_QP_WS_SIZE")) {
    const long v = std::atol(e);
    c.qp_ws_size = (v >= 2 && v <= kConfigQpWsMaxSize) ? v : -1;
  }
  if (const char* e = std::getenv("CINA_QP_WS_THREADS")) {
    const long v = std::atol(e);
    c.qp_ws_threads =
        (v >= 32 && v <= kConfigQpWsMaxSize && v % 32 == 0) ? static_cast<int>(v) : -1;
  }
  if (const char* e = std::getenv("CINA_QP_WS_LTOL")) {
    char* end = nullptr;
    const double v = std::strtod(e, &end);
    c.qp_ws_ltol = (end != e && *end == '\0' && v > 0.0 && v < 1.0) ? v : -1.0;
  }
  {
    const char* e = std::getenv("CINA_QP_WS_STATS");
    c.qp_ws_stats = e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
  }
  if (const char* e = std::getenv("CINA_QP_WS_SMEM_KEYS")) {
    const long long v = std::atoll(e);
    if (v >= 0) c.qp_ws_smem_keys = v;
  }
  c.qp_debug = std::getenv("CINA_QP_DEBUG") != nullptr;
  c.cpu_baseline = std::getenv("CINA_CPU_BASELINE") != nullptr;
  return c;
}

}  // namespace cina
