// Branch-free exp() for the CPU hot loops (std::exp is a scalar library call and dominated the
// run time of both CPU kernels).  Range reduction x = n ln2 + r with |r| <= ln2/2 (ln2 split into
// a high and a low part), a Taylor polynomial for e^r (degree 13 for double: relative error
// < 2e-16; degree 7 for float: < 2e-7), then 2^n through the exponent bits.
//
// The functions live in cina::CINA_CPU_VARIANT::(anonymous): each instruction-set variant of a
// kernel file compiles its own copy with internal linkage, never shared between the baseline and
// the AVX2 build.  Include it after CINA_CPU_VARIANT is defined.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#ifndef CINA_CPU_VARIANT
#error "define CINA_CPU_VARIANT before including common/fast_exp.h"
#endif

namespace cina {
namespace CINA_CPU_VARIANT {
namespace {

// e^x for x already clamped to [-708, 709].  n comes from the 1.5 * 2^52 rounding trick.  No
// clamp or select in here: GCC keeps a branch around one (the polynomial "could trap" under
// -ftrapping-math) and gives up vectorising, so callers that need the clamp do it in a separate
// loop (see qp_solve/cpu.cpp) or accept a scalar select (exp_or_zero below).
inline double exp_core(double x) {
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * 1.4426950408889634074 + shifter;
  const double nd = t - shifter;
  const double r = (x - nd * 6.93147180369123816490e-01) - nd * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t ni = std::bit_cast<int64_t>(t) - std::bit_cast<int64_t>(shifter);
  return p * std::bit_cast<double>((ni + 1023) << 52);
}

// e^x for x already clamped to [-87, 88].
inline float exp_core(float x) {
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

// e^x for any x: arguments below the underflow limit give exactly 0 (masked or far-off scores),
// above the overflow limit the largest finite power.
inline double exp_or_zero(double x) {
  const bool under = x < -708.0;
  const double e = exp_core(std::min(std::max(x, -708.0), 709.0));
  return under ? 0.0 : e;
}

inline float exp_or_zero(float x) {
  const bool under = x < -87.0f;
  const float e = exp_core(std::min(std::max(x, -87.0f), 88.0f));
  return under ? 0.0f : e;
}

}  // namespace
}  // namespace CINA_CPU_VARIANT
}  // namespace cina
