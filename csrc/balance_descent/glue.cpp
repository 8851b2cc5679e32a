// Torch glue of the balancing descent: checks, allocation and the run-time choice between the
// instruction-set variants of csrc/balance_descent/cpu.cpp (AVX2+FMA where the processor has it;
// CINA_CPU_BASELINE=1 forces the baseline).  CPU only: on CUDA the PyTorch twin runs
// (cina_ext/ops/balance_descent.py), whose batched products already suit the device.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "balance_descent/balance_descent.h"
#include "common/cpu_variant.h"

namespace cina {

#define CINA_DESCENT_DECLARE_VARIANT(NS)                                                          \
  namespace NS {                                                                                  \
  void balance_descent_cpu(const DescentProblems&, const DescentOptions&, const DescentOutputs&); \
  }
CINA_DESCENT_DECLARE_VARIANT(base)
#ifdef CINA_HAVE_AVX2_VARIANT
CINA_DESCENT_DECLARE_VARIANT(avx2)
#endif
#undef CINA_DESCENT_DECLARE_VARIANT

namespace {

void check_arg(const at::Tensor& t, const char* name, at::ScalarType dt, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "cina::balance_descent: ", name, " is on ", t.device(),
              "; the compiled kernel is CPU only");
  TORCH_CHECK(t.scalar_type() == dt, "cina::balance_descent: ", name, " must have dtype ", dt,
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "cina::balance_descent: ", name, " must have shape ", shape,
              ", got ", t.sizes());
}

std::tuple<at::Tensor, at::Tensor> balance_descent(const at::Tensor& K, const at::Tensor& w,
                                                   const at::Tensor& arm, const at::Tensor& target,
                                                   const at::Tensor& moving, const at::Tensor& lam,
                                                   int64_t steps, double step_size,
                                                   double momentum) {
  TORCH_CHECK(K.dim() == 3 && K.size(1) == K.size(2),
              "cina::balance_descent: K must have shape (B, N, N), got ", K.sizes());
  TORCH_CHECK(w.dim() == 2, "cina::balance_descent: w must have shape (R, N), got ", w.sizes());
  const int64_t B = K.size(0), N = K.size(1), R = w.size(0);
  TORCH_CHECK(w.size(1) == N, "cina::balance_descent: w has ", w.size(1), " units, K ", N);
  TORCH_CHECK(B > 0 ? R % B == 0 : R == 0, "cina::balance_descent: the ", R,
              " rows of w are not a whole number of rows per each of the ", B, " matrices of K");
  TORCH_CHECK(steps >= 0, "cina::balance_descent: steps must be >= 0, got ", steps);
  check_arg(K, "K", at::kFloat, {B, N, N});
  check_arg(w, "w", at::kDouble, {R, N});
  check_arg(arm, "arm", at::kChar, {R, N});
  check_arg(target, "target", at::kDouble, {R, N});
  check_arg(moving, "moving", at::kBool, {R, N});
  check_arg(lam, "lam", at::kDouble, {R});
  const auto Kc = K.contiguous();
  const auto wc = w.contiguous();
  const auto ac = arm.contiguous();
  const auto tc = target.contiguous();
  const auto mc = moving.contiguous();
  const auto lc = lam.contiguous();
  auto out_w = at::empty({R, N}, w.options());
  auto out_obj = at::empty({R}, w.options());
  auto finite = at::empty({R}, w.options().dtype(at::kBool));
  DescentProblems pr;
  pr.K = Kc.data_ptr<float>();
  pr.w0 = wc.data_ptr<double>();
  pr.arm = ac.data_ptr<int8_t>();
  pr.target = tc.data_ptr<double>();
  pr.moving = mc.data_ptr<bool>();
  pr.lam = lc.data_ptr<double>();
  pr.B = B;
  pr.R = R;
  pr.N = N;
  pr.rows_per_kernel = B > 0 ? R / B : 1;
  DescentOptions opt{steps, step_size, momentum};
  DescentOutputs out{out_w.data_ptr<double>(), out_obj.data_ptr<double>(), finite.data_ptr<bool>()};
#ifdef CINA_HAVE_AVX2_VARIANT
  if (cpu_uses_avx2()) {
    avx2::balance_descent_cpu(pr, opt, out);
  } else {
    base::balance_descent_cpu(pr, opt, out);
  }
#else
  base::balance_descent_cpu(pr, opt, out);
#endif
  TORCH_CHECK(finite.all().item<bool>(),
              "cina::balance_descent: the starting objective is not finite (a NaN or Inf entry of "
              "K on the valid units)");
  return {out_w, out_obj};
}

}  // namespace

// (the namespace itself is declared in csrc/module.cpp)
TORCH_LIBRARY_FRAGMENT(cina, m) {
  m.def(
      "balance_descent(Tensor K, Tensor w, Tensor arm, Tensor target, Tensor moving, Tensor lam, "
      "int steps, float step_size, float momentum) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cina, CPU, m) { m.impl("balance_descent", &balance_descent); }

}  // namespace cina
