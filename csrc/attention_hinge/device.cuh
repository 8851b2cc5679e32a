// Tile constants, the per-unit scalars of the backward and the small device helpers (exp2, fma,
// vector loads / stores) shared by every attention kernel.
#pragma once
#include "attention_hinge/attention_hinge.h"
#include "common/cuda_rt.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace cina {
namespace cuda_detail {

// error strings (fail) and runtime wrappers (rt_*): common/cuda_rt.h
using namespace ::cina::cuda_rt;

constexpr int kBM = 64;        // own rows per block
constexpr int kBN = 64;        // streamed units per tile
constexpr int kThreads = 256;  // 16 row groups x 16 lanes
constexpr int kRedThreads = 256;
constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;

enum PassMode : int { kFwdPlain = 0, kFwdAux = 1, kBwd = 2 };

// Per-unit scalars of the backward (masked units: g = dl = co = 0, bias = -inf).
template <typename T>
struct alignas(4 * sizeof(T)) UnitBwd {
  T g;     // gL (u + c v) + gO
  T dl;    // delta = g o - e
  T bias;  // -lse * log2(e): the column term of P_ij = exp2(s_ij * scale * log2e + bias_i)
  T co;    // gL c o  (the explicit term of dV)
};

// ---------------------------------------------------------------------------------------------
// small device helpers

CINA_DEV float dexp2(float x) { return exp2f(x); }
CINA_DEV double dexp2(double x) { return exp2(x); }
CINA_DEV float dmax(float a, float b) { return fmaxf(a, b); }
CINA_DEV double dmax(double a, double b) { return fmax(a, b); }
CINA_DEV float dfma(float a, float b, float c) { return fmaf(a, b, c); }
CINA_DEV double dfma(double a, double b, double c) { return fma(a, b, c); }

template <typename T>
CINA_DEV T neg_inf() {
  return -static_cast<T>(INFINITY);
}

// sign(x) exp(log_c + log|x|): c * x with c = exp(log_c), never inf * 0 (cpu.cpp's twin).
CINA_DEV double scaled_product(double log_c, double x) {
  if (x == 0.0) return 0.0;
  return copysign(exp(log_c + log(fabs(x))), x);
}

// 4 contiguous T from 16-byte aligned shared memory.
CINA_DEV void ld4(const float* p, float (&v)[4]) {
  const float4 x = *reinterpret_cast<const float4*>(p);
  v[0] = x.x;
  v[1] = x.y;
  v[2] = x.z;
  v[3] = x.w;
}
CINA_DEV void ld4(const double* p, double (&v)[4]) {
  const double2 x = *reinterpret_cast<const double2*>(p);
  const double2 y = *reinterpret_cast<const double2*>(p + 2);
  v[0] = x.x;
  v[1] = x.y;
  v[2] = y.x;
  v[3] = y.y;
}
CINA_DEV void st4(float* p, float a, float b, float c, float d) {
  float4 x;
  x.x = a;
  x.y = b;
  x.z = c;
  x.w = d;
  *reinterpret_cast<float4*>(p) = x;
}
CINA_DEV void st4(double* p, double a, double b, double c, double d) {
  double2 x;
  x.x = a;
  x.y = b;
  double2 y;
  y.x = c;
  y.y = d;
  *reinterpret_cast<double2*>(p) = x;
  *reinterpret_cast<double2*>(p + 2) = y;
}
// W contiguous T (W = 1, 2 or 4), aligned to W * sizeof(T).
template <int W, typename T>
CINA_DEV void ldw(const T* p, T* v) {
  if constexpr (W == 4) {
    T t[4];
    ld4(p, t);
    v[0] = t[0];
    v[1] = t[1];
    v[2] = t[2];
    v[3] = t[3];
  } else if constexpr (W == 2) {
    v[0] = p[0];
    v[1] = p[1];
  } else {
    v[0] = p[0];
  }
}

}  // namespace cuda_detail
}  // namespace cina
