// Run-time choice of the CPU kernels' instruction-set variant, shared by every op that is built
// twice (base, and avx2 with -mavx2 -mfma when CINA_HAVE_AVX2_VARIANT): true when the AVX2+FMA
// build is compiled in, the processor has AVX2 and FMA, and CINA_CPU_BASELINE is unset (tests set
// it to compare both variants).  Defined in csrc/attention_hinge/cpu_dispatch.cpp.
#pragma once

namespace cina {

bool cpu_uses_avx2();

}  // namespace cina
