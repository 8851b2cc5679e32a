// Torch glue of the batched QP solver: checks, allocation, dtype dispatch and the run-time choice
// between the instruction-set variants of csrc/qp_solve/cpu.cpp (AVX2+FMA on x86-64 processors
// that have it, the baseline elsewhere; CINA_CPU_BASELINE=1 forces the baseline).
#include "qp_solve/glue.h"

#include <cstdlib>

#include "qp_solve/qp_solve.h"

namespace cina {

#define CINA_QP_DECLARE_VARIANT(NS)                                                             \
  namespace NS {                                                                                \
  template <typename T>                                                                         \
  void qp_solve_cpu(const QPSource<T>&, const QPProblems<T>&, const QPOptions&,                 \
                    const QPOutputs<T>&);                                                       \
  template <typename T>                                                                         \
  void qp_kernel_lse_cpu(const T*, const bool*, int64_t, int64_t, int64_t, double, double*);    \
  template <typename T>                                                                         \
  void qp_kernel_rowsum_cpu(const QPSource<T>&, const bool*, const bool*, double*);             \
  template <typename T>                                                                         \
  void qp_check_dense_cpu(const T*, const bool*, int64_t, int64_t, double*, bool*);             \
  }
CINA_QP_DECLARE_VARIANT(base)
#ifdef CINA_HAVE_AVX2_VARIANT
CINA_QP_DECLARE_VARIANT(avx2)
#endif
#undef CINA_QP_DECLARE_VARIANT

namespace {

bool qp_use_avx2() {
#ifdef CINA_HAVE_AVX2_VARIANT
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         std::getenv("CINA_CPU_BASELINE") == nullptr;
  return ok;
#else
  return false;
#endif
}

#ifdef CINA_HAVE_AVX2_VARIANT
#define CINA_QP_CALL(fn, ...) \
  (qp_use_avx2() ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))
#else
#define CINA_QP_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "cina::", op, ": ", name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "cina::", op, ": ", name, " must be contiguous");
}

void check_t(const at::Tensor& t, const char* op, const char* name, at::ScalarType dt,
             at::IntArrayRef shape) {
  check_cpu(t, op, name);
  TORCH_CHECK(t.scalar_type() == dt, "cina::", op, ": ", name, " must have dtype ", dt, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "cina::", op, ": ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

void check_kind(int64_t kind, const char* op) {
  TORCH_CHECK(kind >= kQPDense && kind <= kQPCina, "cina::", op,
              ": kind must be 0 (dense), 1 (linear), 2 (rbf) or 3 (cina), got ", kind);
}

void check_source(const at::Tensor& X, int64_t kind, const at::Tensor& gamma,
                  const at::Tensor& lse, const char* op) {
  check_kind(kind, op);
  check_cpu(X, op, "X");
  TORCH_CHECK(X.dim() == 3, "cina::", op, ": X must be 3-dimensional, got ", X.sizes());
  TORCH_CHECK(X.scalar_type() == at::kFloat || X.scalar_type() == at::kDouble, "cina::", op,
              ": X must be float32 or float64, got ", X.scalar_type());
  const int64_t S = X.size(0), N = X.size(1);
  if (kind == kQPDense)
    TORCH_CHECK(X.size(2) == N, "cina::", op, ": a dense source must be (S, N, N), got ", X.sizes());
  if (kind == kQPRbf) check_t(gamma, op, "gamma", at::kDouble, {S});
  if (kind == kQPCina) check_t(lse, op, "lse", at::kDouble, {S, N});
}

template <typename T>
QPSource<T> make_source(const at::Tensor& X, int64_t kind, const at::Tensor& gamma, double scale,
                        const at::Tensor& lse) {
  QPSource<T> s;
  s.kind = kind;
  s.S = X.size(0);
  s.N = X.size(1);
  s.D = X.size(2);
  s.X = X.data_ptr<T>();
  s.gamma = kind == kQPRbf ? gamma.data_ptr<double>() : nullptr;
  s.scale = scale;
  s.lse = kind == kQPCina ? lse.data_ptr<double>() : nullptr;
  return s;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_solve_batch(
    const at::Tensor& X, int64_t kind, const at::Tensor& gamma, double scale, const at::Tensor& lse,
    const at::Tensor& src, const at::Tensor& mask, const std::optional<at::Tensor>& sign,
    const at::Tensor& qscale, const at::Tensor& diag_add, const at::Tensor& p, const at::Tensor& lo,
    const at::Tensor& up, const std::optional<at::Tensor>& c, const std::optional<at::Tensor>& d,
    const std::optional<at::Tensor>& x0, const at::Tensor& tol, const at::Tensor& max_iter,
    int64_t cache_bytes, bool shrinking, int64_t inner_min_units) {
  const char* op = "qp_solve_batch";
  check_source(X, kind, gamma, lse, op);
  const auto dt = X.scalar_type();
  const int64_t S = X.size(0), N = X.size(1);
  TORCH_CHECK(mask.dim() == 2, "cina::qp_solve_batch: mask must be (P, N), got ", mask.sizes());
  const int64_t P = mask.size(0);
  check_t(mask, op, "mask", at::kBool, {P, N});
  check_t(src, op, "src", at::kLong, {P});
  if (P > 0) {
    TORCH_CHECK(src.min().item<int64_t>() >= 0 && src.max().item<int64_t>() < S,
                "cina::qp_solve_batch: src indices must lie in [0, ", S, ")");
  }
  if (sign.has_value()) check_t(*sign, op, "sign", dt, {P, N});
  check_t(qscale, op, "qscale", at::kDouble, {P});
  check_t(diag_add, op, "diag_add", at::kDouble, {P});
  check_t(p, op, "p", dt, {P, N});
  check_t(lo, op, "lo", dt, {P, N});
  check_t(up, op, "up", dt, {P, N});
  TORCH_CHECK(c.has_value() == d.has_value(), "cina::qp_solve_batch: c and d go together");
  if (c.has_value()) {
    check_t(*c, op, "c", dt, {P, N});
    check_t(*d, op, "d", dt, {P});
  }
  if (x0.has_value()) check_t(*x0, op, "x0", dt, {P, N});
  check_t(tol, op, "tol", at::kDouble, {P});
  check_t(max_iter, op, "max_iter", at::kLong, {P});
  TORCH_CHECK(cache_bytes > 0, "cina::qp_solve_batch: cache_bytes must be positive");

  auto x = at::zeros({P, N}, X.options());
  auto nu = at::zeros({P}, X.options());
  auto obj = at::zeros({P}, X.options());
  auto kkt = at::zeros({P}, X.options());
  auto iters = at::zeros({P}, X.options().dtype(at::kLong));
  auto conv = at::zeros({P}, X.options().dtype(at::kBool));
  QPOptions opt;
  opt.cache_bytes = cache_bytes;
  opt.shrinking = shrinking;
  opt.inner_min_units = std::max<int64_t>(inner_min_units, 1);
  AT_DISPATCH_FLOATING_TYPES(dt, "qp_solve_batch", [&] {
    const QPSource<scalar_t> s = make_source<scalar_t>(X, kind, gamma, scale, lse);
    QPProblems<scalar_t> pb;
    pb.P = P;
    pb.N = N;
    pb.src = src.data_ptr<int64_t>();
    pb.mask = mask.data_ptr<bool>();
    pb.sign = sign.has_value() ? sign->data_ptr<scalar_t>() : nullptr;
    pb.qscale = qscale.data_ptr<double>();
    pb.diag_add = diag_add.data_ptr<double>();
    pb.p = p.data_ptr<scalar_t>();
    pb.lo = lo.data_ptr<scalar_t>();
    pb.up = up.data_ptr<scalar_t>();
    pb.c = c.has_value() ? c->data_ptr<scalar_t>() : nullptr;
    pb.d = d.has_value() ? d->data_ptr<scalar_t>() : nullptr;
    pb.x0 = x0.has_value() ? x0->data_ptr<scalar_t>() : nullptr;
    pb.tol = tol.data_ptr<double>();
    pb.max_iter = max_iter.data_ptr<int64_t>();
    QPOutputs<scalar_t> o;
    o.x = x.data_ptr<scalar_t>();
    o.nu = nu.data_ptr<scalar_t>();
    o.objective = obj.data_ptr<scalar_t>();
    o.kkt = kkt.data_ptr<scalar_t>();
    o.iterations = iters.data_ptr<int64_t>();
    o.converged = conv.data_ptr<bool>();
    CINA_QP_CALL(qp_solve_cpu<scalar_t>, s, pb, opt, o);
  });
  return {x, nu, obj, kkt, iters, conv};
}

at::Tensor qp_kernel_lse(const at::Tensor& X, const at::Tensor& mask, double scale) {
  const char* op = "qp_kernel_lse";
  check_source(X, kQPLinear, at::Tensor(), at::Tensor(), op);
  const int64_t S = X.size(0), N = X.size(1), D = X.size(2);
  check_t(mask, op, "mask", at::kBool, {S, N});
  auto lse = at::zeros({S, N}, X.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "qp_kernel_lse", [&] {
    CINA_QP_CALL(qp_kernel_lse_cpu<scalar_t>, X.data_ptr<scalar_t>(), mask.data_ptr<bool>(), S, N,
                 D, scale, lse.data_ptr<double>());
  });
  return lse;
}

at::Tensor qp_kernel_rowsum(const at::Tensor& X, int64_t kind, const at::Tensor& gamma,
                            double scale, const at::Tensor& lse, const at::Tensor& rowmask,
                            const at::Tensor& colmask) {
  const char* op = "qp_kernel_rowsum";
  check_source(X, kind, gamma, lse, op);
  const int64_t S = X.size(0), N = X.size(1);
  check_t(rowmask, op, "rowmask", at::kBool, {S, N});
  check_t(colmask, op, "colmask", at::kBool, {S, N});
  auto out = at::zeros({S, N}, X.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "qp_kernel_rowsum", [&] {
    const QPSource<scalar_t> s = make_source<scalar_t>(X, kind, gamma, scale, lse);
    CINA_QP_CALL(qp_kernel_rowsum_cpu<scalar_t>, s, rowmask.data_ptr<bool>(),
                 colmask.data_ptr<bool>(), out.data_ptr<double>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> qp_check_dense(const at::Tensor& A, const at::Tensor& mask) {
  const char* op = "qp_check_dense";
  check_source(A, kQPDense, at::Tensor(), at::Tensor(), op);
  const int64_t S = A.size(0), N = A.size(1);
  check_t(mask, op, "mask", at::kBool, {S, N});
  auto asym = at::zeros({S}, A.options().dtype(at::kDouble));
  auto finite = at::zeros({S}, A.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "qp_check_dense", [&] {
    CINA_QP_CALL(qp_check_dense_cpu<scalar_t>, A.data_ptr<scalar_t>(), mask.data_ptr<bool>(), S, N,
                 asym.data_ptr<double>(), finite.data_ptr<bool>());
  });
  return {asym, finite};
}

}  // namespace cina
