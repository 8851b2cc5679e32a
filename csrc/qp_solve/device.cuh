// Constants, unit flags and the scalar helpers (std::min / max semantics, first-index argmax) of
// the QP solver kernels, usable on host and device (CINA_QP_HD).
#pragma once
#include "qp_solve/qp_solve.h"
#include "common/cuda_rt.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#ifndef CINA_EMULATE
#define CINA_QP_HD __host__ __device__ __forceinline__
#else
#define CINA_QP_HD inline
#endif

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

// first-index argmax / argmin combination (symmetric: both orders give the same result)
CINA_QP_HD void take_max(double& v, int& i, double v2, int i2) {
  if (i2 >= 0 && (i < 0 || v2 > v || (v2 == v && i2 < i))) {
    v = v2;
    i = i2;
  }
}

}  // namespace qp_cuda_detail
}  // namespace cina
