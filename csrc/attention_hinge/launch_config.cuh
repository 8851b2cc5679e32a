// Host-side launch configuration: the kernel variant (CINA_ATTENTION_KERNEL), the column splits
// (CINA_ATTENTION_SPLITS and the heuristic) and the shape checks.
#pragma once
#include "attention_hinge/device.cuh"
#include "common/config.h"

#include <string>

namespace cina {
namespace cuda_detail {

// Kernel variant, from CINA_ATTENTION_KERNEL (common/config.h; read at every call):
//   auto (or unset): kDefaultVariant = tf32x3p: 3xTF32 (meets the fp32 parity rule for D <= 64)
//   with the streamed tiles double-buffered by cp.async, the same bits as tf32x3 and faster on
//   an H200 at 6 of 7 benchmark shapes (fwd+bwd 1 x 32768 x 16: 4.63 vs 4.99 ms; 4096 x 256 x 16:
//   1.94 vs 2.22 ms; forward 1 x 1e6 x 16: 0.87 vs 1.57 s);
//   simt: the SIMT kernels;
//   tf32x3: tensor cores, 3xTF32 split (about fp32 accuracy);  tf32: tensor cores, plain TF32;
//   tf32x3p, tf32p: the same with cp.async double buffering.
// The tensor-core variants apply to float32; float64 always runs the SIMT kernels.
enum Variant : int { kSimt = 0, kTf32 = 1, kTf32x3 = 3, kTf32p = 11, kTf32x3p = 13 };
constexpr int kDefaultVariant = kTf32x3p;

inline const char* read_variant(const Config& cfg, int* variant) {
  switch (cfg.attention_kernel) {
    case Config::kAuto: *variant = kDefaultVariant; break;
    case Config::kSimt: *variant = kSimt; break;
    case Config::kTf32x3: *variant = kTf32x3; break;
    case Config::kTf32: *variant = kTf32; break;
    case Config::kTf32x3p: *variant = kTf32x3p; break;
    case Config::kTf32p: *variant = kTf32p; break;
    default:
      return fail(
          std::string(
              "cina attention_hinge (CUDA): CINA_ATTENTION_KERNEL must be one of auto, simt, "
              "tf32x3, tf32, tf32x3p, tf32p; got '") +
          cfg.attention_kernel_text + "'");
  }
  return nullptr;
}

// Column splits (CINA_ATTENTION_SPLITS: unset / 0 / auto = heuristic, n >= 1 = at most n).
// Heuristic: a grid of fewer than 2 blocks per SM leaves the GPU idle (e.g. B = 1, N = 4096 has
// 64 row tiles), so the columns of each row tile are split until about 4 blocks per SM exist,
// keeping at least 4 streamed tiles per split.
inline const char* choose_splits(const Config& cfg, int64_t row_blocks, int64_t col_tiles,
                                 int* nsplit, int64_t* tiles_per_split) {
  if (cfg.attention_splits < 0)
    return fail(
        std::string("cina attention_hinge (CUDA): CINA_ATTENTION_SPLITS must be auto or an integer "
                    "in [0, 1024]; got '") +
        cfg.attention_splits_text + "'");
  int64_t want = cfg.attention_splits;
  if (want == 0) {
    const int64_t sms = rt_sm_count();
    if (row_blocks >= 2 * sms) {
      want = 1;
    } else {
      want = (4 * sms + row_blocks - 1) / row_blocks;
      const int64_t cap = col_tiles / 4 > 1 ? col_tiles / 4 : 1;
      if (want > cap) want = cap;
      if (want > 32) want = 32;
    }
  }
  if (want < 1) want = 1;
  if (want > col_tiles) want = col_tiles;
  *tiles_per_split = (col_tiles + want - 1) / want;
  *nsplit =
      static_cast<int>((col_tiles + *tiles_per_split - 1) / *tiles_per_split);  // no empty split
  return nullptr;
}

inline const char* check_shape(AttentionHingeShape s, int64_t loss_kind) {
  if (s.D < 1 || s.D > 128)
    return fail(
        "cina attention_hinge (CUDA): the CUDA kernels support 1 <= D <= 128 features, got D = " +
        std::to_string(s.D) + " (reduce the key dimension or use the CPU / reference backend)");
  if (s.B < 0 || s.N < 0) return fail("cina attention_hinge (CUDA): negative size");
  if (s.B > 2147483647LL) return fail("cina attention_hinge (CUDA): B exceeds 2^31 - 1");
  if (loss_kind != kHinge && loss_kind != kSquaredHinge)
    return fail("cina attention_hinge (CUDA): loss_kind must be 0 (hinge) or 1 (squared hinge)");
  return nullptr;
}

}  // namespace cuda_detail
}  // namespace cina
