// Building blocks of the tensor-core passes: TF32 conversion and splitting, mma.sync.m16n8k8,
// quad butterflies, ex2.approx and 16-byte (cp.async) copies; each with its emulator twin.
#pragma once
#include "attention_hinge/device.cuh"

namespace cina {
namespace cuda_detail {

CINA_DEV uint32_t to_tf32(float x) {
#ifdef CINA_EMULATE
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // round half away from 0
  return u;
#else
  uint32_t u;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(u) : "f"(x));
  return u;
#endif
}
CINA_DEV float tf32_value(uint32_t u) {
#ifdef CINA_EMULATE
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#else
  return __uint_as_float(u);
#endif
}
// d += a b  (A 16x8 row, B 8x8 col, fp32 accumulate)
CINA_DEV void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef CINA_EMULATE
  const float c[4] = {d[0], d[1], d[2], d[3]};
  CINA_EMU_MMA_TF32(d, a, b, c);
#else
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
// the bits of a float that already is a TF32 value (an mma operand as is)
CINA_DEV uint32_t f32_bits(float x) {
#ifdef CINA_EMULATE
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#else
  return __float_as_uint(x);
#endif
}
// a staged key element: hi = tf32(v) at hi[o], and lo = tf32(v - hi) at lo[o] for 3xTF32
template <int NSPLIT>
CINA_DEV void stage_tf32(float* hi, float* lo, int o, float v) {
  const float h = tf32_value(to_tf32(v));
  hi[o] = h;
  if constexpr (NSPLIT == 3) lo[o] = tf32_value(to_tf32(v - h));
}
template <int NSPLIT>
CINA_DEV void mma_split(float (&d)[4], const uint32_t (&ahi)[4], const uint32_t (&alo)[4],
                        const uint32_t (&bhi)[2], const uint32_t (&blo)[2]) {
  if constexpr (NSPLIT == 3) {
    mma_tf32(d, alo, bhi);  // small terms first
    mma_tf32(d, ahi, blo);
  }
  mma_tf32(d, ahi, bhi);
}

// butterfly over the 4 lanes of a quad (lanes 4g .. 4g+3 hold one row in the mma layouts)
template <typename T>
CINA_DEV T quad_max(T v) {
  v = dmax(v, __shfl_xor_sync(0xffffffffu, v, 1));
  v = dmax(v, __shfl_xor_sync(0xffffffffu, v, 2));
  return v;
}
template <typename T>
CINA_DEV T quad_sum(T v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// fast operand rounding for the mma: the bits of x plus half a TF32 unit in the last place.  The
// tensor cores ignore the 13 low bits of a .tf32 operand, so this is x rounded to nearest, ties
// away from zero -- cvt.rna.tf32.f32 for every finite x, without its inf / NaN test (2 of the 3
// instructions of cvt.rna on sm_90; the operands here are finite: probabilities, their products
// with finite values, and finite keys)
CINA_DEV uint32_t tf32_bits_rna(float x) { return f32_bits(x) + 0x1000u; }
// the value of such an operand (its low bits cleared)
CINA_DEV float tf32_bits_value(uint32_t u) { return tf32_value(u & 0xffffe000u); }
// split of fragment values: hi = tf32(x) and, for 3xTF32, lo = tf32(x - hi), both as mma operands
// (the operand values of cvt.rna.tf32.f32)
template <int NSPLIT, int NV>
CINA_DEV void split_tf32(const float (&x)[NV], uint32_t (&hi)[NV], uint32_t (&lo)[NV]) {
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    hi[i] = tf32_bits_rna(x[i]);
    if constexpr (NSPLIT == 3) lo[i] = tf32_bits_rna(x[i] - tf32_bits_value(hi[i]));
  }
}

// 2^x with flush of subnormal results to zero (ex2.approx.ftz.f32: one MUFU instruction; exp2f
// adds a range test and two scalings so that results below 2^-126 keep their subnormal value,
// which a probability relative to a row maximum of 1 never needs)
CINA_DEV float fexp2(float x) {
#ifdef CINA_EMULATE
  const float r = std::exp2(x);
  return r < 1.17549435e-38f ? 0.f : r;
#else
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
  return r;
#endif
}

// 16-byte copies from global to shared memory: a plain load / store, or cp.async (the copy
// proceeds while the thread goes on; async_commit closes a group of copies, async_wait<n> waits
// until at most n groups are pending).  The emulator writes an async copy's destination both at
// the copy and at the wait that retires it (emulator.h), so that its race detection sees both ends.
template <bool ASYNC>
CINA_DEV void copy16(void* dst_smem, const void* src) {
#ifdef CINA_EMULATE
  if constexpr (ASYNC) {
    CINA_EMU_CP_ASYNC16(dst_smem, src);
  } else {
    *static_cast<float4*>(dst_smem) = *static_cast<const float4*>(src);
  }
#else
  if constexpr (ASYNC) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst_smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
  } else {
    *static_cast<float4*>(dst_smem) = __ldg(static_cast<const float4*>(src));
  }
#endif
}
CINA_DEV void async_commit() {
#ifdef CINA_EMULATE
  CINA_EMU_CP_ASYNC_COMMIT();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
CINA_DEV void async_wait() {
#ifdef CINA_EMULATE
  CINA_EMU_CP_ASYNC_WAIT(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace cuda_detail
}  // namespace cina
