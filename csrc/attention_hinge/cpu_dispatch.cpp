// Run-time choice between the instruction-set variants of cpu.cpp: the AVX2+FMA build on x86-64
// processors that have it (about 2x the throughput of the SSE2 baseline), the baseline elsewhere.
#include "attention_hinge/attention_hinge.h"

#include "common/config.h"
#include "common/cpu_variant.h"

namespace cina {

#define CINA_DECLARE_VARIANT(NS)                                                                \
  namespace NS {                                                                                \
  template <typename T>                                                                         \
  void attention_hinge_fwd_cpu(const T*, const T*, const T*, const T*, const T*, const bool*,   \
                               AttentionHingeShape, double, int64_t, bool, T*, T*, T*, T*, T*); \
  template <typename T>                                                                         \
  void attention_hinge_bwd_cpu(const T*, const T*, const T*, const T*, const T*, const bool*,   \
                               const T*, const T*, const T*, const T*, const T*, const T*,      \
                               const T*, AttentionHingeShape, double, int64_t, T*, T*, T*);     \
  }
CINA_DECLARE_VARIANT(base)
#ifdef CINA_HAVE_AVX2_VARIANT
CINA_DECLARE_VARIANT(avx2)
#endif
#undef CINA_DECLARE_VARIANT

bool cpu_uses_avx2() {
#ifdef CINA_HAVE_AVX2_VARIANT
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         !read_config().cpu_baseline;
  return ok;
#else
  return false;
#endif
}

template <typename T>
void attention_hinge_fwd_cpu(const T* K, const T* V, const T* W, const T* b, const T* lam,
                             const bool* mask, AttentionHingeShape shape, double scale,
                             int64_t loss_kind, bool need_aux, T* loss, T* out, T* lse, T* A,
                             T* Bk) {
#ifdef CINA_HAVE_AVX2_VARIANT
  if (cpu_uses_avx2())
    return avx2::attention_hinge_fwd_cpu<T>(K, V, W, b, lam, mask, shape, scale, loss_kind,
                                            need_aux, loss, out, lse, A, Bk);
#endif
  base::attention_hinge_fwd_cpu<T>(K, V, W, b, lam, mask, shape, scale, loss_kind, need_aux, loss,
                                   out, lse, A, Bk);
}

template <typename T>
void attention_hinge_bwd_cpu(const T* K, const T* V, const T* W, const T* b, const T* lam,
                             const bool* mask, const T* out, const T* lse, const T* A, const T* Bk,
                             const T* g_loss, const T* g_out, const T* g_lse,
                             AttentionHingeShape shape, double scale, int64_t loss_kind, T* dK,
                             T* dV, T* db) {
#ifdef CINA_HAVE_AVX2_VARIANT
  if (cpu_uses_avx2())
    return avx2::attention_hinge_bwd_cpu<T>(K, V, W, b, lam, mask, out, lse, A, Bk, g_loss, g_out,
                                            g_lse, shape, scale, loss_kind, dK, dV, db);
#endif
  base::attention_hinge_bwd_cpu<T>(K, V, W, b, lam, mask, out, lse, A, Bk, g_loss, g_out, g_lse,
                                   shape, scale, loss_kind, dK, dV, db);
}

template void attention_hinge_fwd_cpu<float>(const float*, const float*, const float*, const float*,
                                             const float*, const bool*, AttentionHingeShape, double,
                                             int64_t, bool, float*, float*, float*, float*, float*);
template void attention_hinge_fwd_cpu<double>(const double*, const double*, const double*,
                                              const double*, const double*, const bool*,
                                              AttentionHingeShape, double, int64_t, bool, double*,
                                              double*, double*, double*, double*);
template void attention_hinge_bwd_cpu<float>(const float*, const float*, const float*, const float*,
                                             const float*, const bool*, const float*, const float*,
                                             const float*, const float*, const float*, const float*,
                                             const float*, AttentionHingeShape, double, int64_t,
                                             float*, float*, float*);
template void attention_hinge_bwd_cpu<double>(const double*, const double*, const double*,
                                              const double*, const double*, const bool*,
                                              const double*, const double*, const double*,
                                              const double*, const double*, const double*,
                                              const double*, AttentionHingeShape, double, int64_t,
                                              double*, double*, double*);

}  // namespace cina
