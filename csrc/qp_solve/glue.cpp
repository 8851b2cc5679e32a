// Torch glue of the batched QP solver: checks, allocation, dtype dispatch and the run-time choice
// between the instruction-set variants of csrc/qp_solve/cpu.cpp (AVX2+FMA on x86-64 processors
// that have it, the baseline elsewhere; CINA_CPU_BASELINE=1 forces the baseline).  CUDA tensors go
// to csrc/qp_solve/cuda.cu (device guard, current stream); every tensor must then be on X's device.
#include "qp_solve/glue.h"

#include <torch/library.h>

#include <limits>
#include <optional>

#ifdef CINA_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "common/config.h"
#include "common/cpu_variant.h"
#include "qp_solve/qp_solve.h"

namespace cina {

#define CINA_QP_DECLARE_VARIANT(NS)                                                          \
  namespace NS {                                                                             \
  template <typename T>                                                                      \
  void qp_solve_cpu(const QPSource<T>&, const QPProblems<T>&, const QPOptions&,              \
                    const QPOutputs<T>&);                                                    \
  template <typename T>                                                                      \
  void qp_kernel_lse_cpu(const T*, const bool*, int64_t, int64_t, int64_t, double, double*); \
  template <typename T>                                                                      \
  void qp_kernel_rowsum_cpu(const QPSource<T>&, const bool*, const bool*, double*);          \
  template <typename T>                                                                      \
  void qp_check_dense_cpu(const T*, const bool*, int64_t, int64_t, double*, bool*);          \
  }
CINA_QP_DECLARE_VARIANT(base)
#ifdef CINA_HAVE_AVX2_VARIANT
CINA_QP_DECLARE_VARIANT(avx2)
#endif
#undef CINA_QP_DECLARE_VARIANT

namespace {

#ifdef CINA_HAVE_AVX2_VARIANT
#define CINA_QP_CALL(fn, ...) (cpu_uses_avx2() ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))
#else
#define CINA_QP_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif

// The device of the call: X's.  CPU, or CUDA in a build with the CUDA kernels.
void check_device(const at::Tensor& X, const char* op) {
  if (X.device().is_cpu()) return;
#ifdef CINA_WITH_CUDA
  if (X.is_cuda()) return;
#endif
  TORCH_CHECK(false, "cina::", op, ": no kernel for device ", X.device(),
              X.is_cuda() ? " (this build of cina_ext has no CUDA kernels)" : "");
}

void check_cpu(const at::Tensor& t, const char* op, const char* name, const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, "cina::", op, ": ", name, " is on ", t.device(), " but X is on ",
              dev, " (all tensors of one call must be on the same device)");
  TORCH_CHECK(t.is_contiguous(), "cina::", op, ": ", name, " must be contiguous");
}

void check_t(const at::Tensor& t, const char* op, const char* name, at::ScalarType dt,
             at::IntArrayRef shape, const at::Device& dev) {
  check_cpu(t, op, name, dev);
  TORCH_CHECK(t.scalar_type() == dt, "cina::", op, ": ", name, " must have dtype ", dt, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "cina::", op, ": ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

void check_kind(int64_t kind, const char* op) {
  TORCH_CHECK(kind >= kQPDense && kind <= kQPLaplace, "cina::", op,
              ": kind must be 0 (dense), 1 (linear), 2 (rbf), 3 (cina) or 4 (laplace), got ", kind);
}

void check_source(const at::Tensor& X, int64_t kind, const at::Tensor& gamma, const at::Tensor& lse,
                  const char* op) {
  check_kind(kind, op);
  check_device(X, op);
  check_cpu(X, op, "X", X.device());
  TORCH_CHECK(X.dim() == 3, "cina::", op, ": X must be 3-dimensional, got ", X.sizes());
  TORCH_CHECK(X.scalar_type() == at::kFloat || X.scalar_type() == at::kDouble, "cina::", op,
              ": X must be float32 or float64, got ", X.scalar_type());
  const int64_t S = X.size(0), N = X.size(1);
  if (kind == kQPDense)
    TORCH_CHECK(X.size(2) == N, "cina::", op, ": a dense source must be (S, N, N), got ",
                X.sizes());
  if (kind == kQPRbf || kind == kQPLaplace)
    check_t(gamma, op, "gamma", at::kDouble, {S}, X.device());
  if (kind == kQPCina) check_t(lse, op, "lse", at::kDouble, {S, N}, X.device());
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
  s.gamma = (kind == kQPRbf || kind == kQPLaplace) ? gamma.data_ptr<double>() : nullptr;
  s.scale = scale;
  s.lse = kind == kQPCina ? lse.data_ptr<double>() : nullptr;
  return s;
}

#ifdef CINA_WITH_CUDA
void* cuda_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
#endif

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
  const at::Device dev = X.device();
  const int64_t S = X.size(0), N = X.size(1);
  TORCH_CHECK(mask.dim() == 2, "cina::qp_solve_batch: mask must be (P, N), got ", mask.sizes());
  const int64_t P = mask.size(0);
  check_t(mask, op, "mask", at::kBool, {P, N}, dev);
  check_t(src, op, "src", at::kLong, {P}, dev);
  if (P > 0) {
    TORCH_CHECK(src.min().item<int64_t>() >= 0 && src.max().item<int64_t>() < S,
                "cina::qp_solve_batch: src indices must lie in [0, ", S, ")");
  }
  if (sign.has_value()) check_t(*sign, op, "sign", dt, {P, N}, dev);
  check_t(qscale, op, "qscale", at::kDouble, {P}, dev);
  check_t(diag_add, op, "diag_add", at::kDouble, {P}, dev);
  check_t(p, op, "p", dt, {P, N}, dev);
  check_t(lo, op, "lo", dt, {P, N}, dev);
  check_t(up, op, "up", dt, {P, N}, dev);
  TORCH_CHECK(c.has_value() == d.has_value(), "cina::qp_solve_batch: c and d go together");
  if (c.has_value()) {
    check_t(*c, op, "c", dt, {P, N}, dev);
    check_t(*d, op, "d", dt, {P}, dev);
  }
  if (x0.has_value()) check_t(*x0, op, "x0", dt, {P, N}, dev);
  check_t(tol, op, "tol", at::kDouble, {P}, dev);
  check_t(max_iter, op, "max_iter", at::kLong, {P}, dev);
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
  opt.debug = read_config().qp_debug;
#ifdef CINA_WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;
  if (dev.is_cuda()) guard.emplace(dev);
#endif
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
    if (dev.is_cpu()) {
      CINA_QP_CALL(qp_solve_cpu<scalar_t>, s, pb, opt, o);
    } else {
#ifdef CINA_WITH_CUDA
      const char* err = qp_solve_cuda<scalar_t>(s, pb, opt, o, cuda_stream());
      TORCH_CHECK(err == nullptr, "cina::qp_solve_batch (CUDA): ", err ? err : "");
#endif
    }
  });
  return {x, nu, obj, kkt, iters, conv};
}

at::Tensor qp_kernel_lse(const at::Tensor& X, const at::Tensor& mask, double scale) {
  const char* op = "qp_kernel_lse";
  check_source(X, kQPLinear, at::Tensor(), at::Tensor(), op);
  const at::Device dev = X.device();
  const int64_t S = X.size(0), N = X.size(1), D = X.size(2);
  check_t(mask, op, "mask", at::kBool, {S, N}, dev);
  auto lse = at::zeros({S, N}, X.options().dtype(at::kDouble));
  if (!dev.is_cpu()) {
#ifdef CINA_WITH_CUDA
    const c10::cuda::CUDAGuard guard(dev);
    AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "qp_kernel_lse_cuda", [&] {
      const char* err =
          qp_kernel_lse_cuda<scalar_t>(X.data_ptr<scalar_t>(), mask.data_ptr<bool>(), S, N, D,
                                       scale, lse.data_ptr<double>(), cuda_stream());
      TORCH_CHECK(err == nullptr, "cina::qp_kernel_lse (CUDA): ", err ? err : "");
    });
#endif
    return lse;
  }
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
  const at::Device dev = X.device();
  const int64_t S = X.size(0), N = X.size(1);
  check_t(rowmask, op, "rowmask", at::kBool, {S, N}, dev);
  check_t(colmask, op, "colmask", at::kBool, {S, N}, dev);
  auto out = at::zeros({S, N}, X.options().dtype(at::kDouble));
  if (!dev.is_cpu()) {
#ifdef CINA_WITH_CUDA
    const c10::cuda::CUDAGuard guard(dev);
    AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "qp_kernel_rowsum_cuda", [&] {
      const QPSource<scalar_t> s = make_source<scalar_t>(X, kind, gamma, scale, lse);
      const char* err =
          qp_kernel_rowsum_cuda<scalar_t>(s, rowmask.data_ptr<bool>(), colmask.data_ptr<bool>(),
                                          out.data_ptr<double>(), cuda_stream());
      TORCH_CHECK(err == nullptr, "cina::qp_kernel_rowsum (CUDA): ", err ? err : "");
    });
#endif
    return out;
  }
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
  const at::Device dev = A.device();
  const int64_t S = A.size(0), N = A.size(1);
  check_t(mask, op, "mask", at::kBool, {S, N}, dev);
  if (!dev.is_cpu()) {
    // CUDA: plain torch ops (one pass over the matrices the caller already holds)
    if (N == 0)
      return {at::zeros({S}, A.options().dtype(at::kDouble)),
              at::ones({S}, A.options().dtype(at::kBool))};
    const auto pair = mask.unsqueeze(2) & mask.unsqueeze(1);
    const auto fin_entry = at::isfinite(A) | pair.logical_not();
    const auto finite = fin_entry.flatten(1).all(1);
    const auto Am =
        at::where(pair & at::isfinite(A), A, at::zeros({}, A.options())).to(at::kDouble);
    const auto amax = Am.abs().amax({1, 2});
    const auto dmax = (Am - Am.transpose(1, 2)).abs().amax({1, 2});
    const auto ratio = at::where(amax > 0, dmax / amax.clamp_min(1e-300), at::zeros_like(amax));
    const auto asym =
        at::where(finite, ratio, at::full_like(ratio, std::numeric_limits<double>::infinity()));
    return {asym.contiguous(), finite.contiguous()};
  }
  auto asym = at::zeros({S}, A.options().dtype(at::kDouble));
  auto finite = at::zeros({S}, A.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "qp_check_dense", [&] {
    CINA_QP_CALL(qp_check_dense_cpu<scalar_t>, A.data_ptr<scalar_t>(), mask.data_ptr<bool>(), S, N,
                 asym.data_ptr<double>(), finite.data_ptr<bool>());
  });
  return {asym, finite};
}

// (the namespace itself is declared in csrc/module.cpp)
TORCH_LIBRARY_FRAGMENT(cina, m) {
  m.def(
      "qp_solve_batch(Tensor X, int kind, Tensor gamma, float scale, Tensor lse, Tensor src, "
      "Tensor mask, Tensor? sign, Tensor qscale, Tensor diag_add, Tensor p, Tensor lo, Tensor up, "
      "Tensor? c, Tensor? d, Tensor? x0, Tensor tol, Tensor max_iter, int cache_bytes, "
      "bool shrinking, int inner_min_units) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("qp_kernel_lse(Tensor X, Tensor mask, float scale) -> Tensor");
  m.def(
      "qp_kernel_rowsum(Tensor X, int kind, Tensor gamma, float scale, Tensor lse, "
      "Tensor rowmask, Tensor colmask) -> Tensor");
  m.def("qp_check_dense(Tensor A, Tensor mask) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cina, CPU, m) {
  m.impl("qp_solve_batch", &qp_solve_batch);
  m.impl("qp_kernel_lse", &qp_kernel_lse);
  m.impl("qp_kernel_rowsum", &qp_kernel_rowsum);
  m.impl("qp_check_dense", &qp_check_dense);
}

#ifdef CINA_WITH_CUDA
// the same functions: they branch on the device themselves
TORCH_LIBRARY_IMPL(cina, CUDA, m) {
  m.impl("qp_solve_batch", &qp_solve_batch);
  m.impl("qp_kernel_lse", &qp_kernel_lse);
  m.impl("qp_kernel_rowsum", &qp_kernel_rowsum);
  m.impl("qp_check_dense", &qp_check_dense);
}
#endif

}  // namespace cina
