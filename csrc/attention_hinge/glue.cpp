// Torch glue of the fused attention + hinge operator: schemas, tensor checks, output allocation,
// dtype dispatch and the device branch (CPU: csrc/attention_hinge/cpu_dispatch.cpp, CUDA:
// csrc/attention_hinge/cuda.cu on the current stream).
#include "attention_hinge/glue.h"

#include <torch/library.h>

#include <optional>

#ifdef CINA_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "attention_hinge/attention_hinge.h"

namespace cina {
namespace {

void check_attention_args(const at::Tensor& K, const at::Tensor& V, const at::Tensor& W,
                          const at::Tensor& b, const at::Tensor& lam, const at::Tensor& mask) {
  // mask is the resolved one (resolve_mask): an absent mask became all-true before this
  TORCH_CHECK(K.dim() == 3, "cina::attention_hinge: K must be (B, N, D), got ", K.sizes());
  const int64_t B = K.size(0), N = K.size(1);
  TORCH_CHECK(K.size(2) >= 1, "cina::attention_hinge: K needs at least one feature (D >= 1)");
  TORCH_CHECK(K.scalar_type() == at::kFloat || K.scalar_type() == at::kDouble,
              "cina::attention_hinge: K must be float32 or float64, got ", K.scalar_type());
  auto same = [&](const at::Tensor& t, const char* name, at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, "cina::attention_hinge: ", name, " must have shape ", shape,
                ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == K.scalar_type(), "cina::attention_hinge: ", name,
                " must have dtype ", K.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == K.device(), "cina::attention_hinge: ", name, " is on ", t.device(),
                " but K is on ", K.device());
  };
  same(V, "V", {B, N});
  same(W, "W", {B, N});
  same(b, "b", {B});
  same(lam, "lam", {B});
  TORCH_CHECK(mask.sizes() == at::IntArrayRef({B, N}) && mask.scalar_type() == at::kBool,
              "cina::attention_hinge: mask must be a bool tensor of shape (B, N)");
  TORCH_CHECK(mask.device() == K.device(), "cina::attention_hinge: mask is on ", mask.device(),
              " but K is on ", K.device());
  TORCH_CHECK(K.is_contiguous() && V.is_contiguous() && W.is_contiguous() && b.is_contiguous() &&
                  lam.is_contiguous() && mask.is_contiguous(),
              "cina::attention_hinge: inputs must be contiguous");
}

// An absent mask (None) means every unit is real; the kernels always read one.
at::Tensor resolve_mask(const at::Tensor& K, const std::optional<at::Tensor>& mask) {
  if (mask.has_value()) return *mask;
  TORCH_CHECK(K.dim() == 3, "cina::attention_hinge: K must be (B, N, D), got ", K.sizes());
  return at::ones({K.size(0), K.size(1)}, K.options().dtype(at::kBool));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_hinge_fwd(
    const at::Tensor& K, const at::Tensor& V, const at::Tensor& W, const at::Tensor& b,
    const at::Tensor& lam, const std::optional<at::Tensor>& mask_opt, double scale,
    int64_t loss_kind, bool need_aux) {
  const at::Tensor mask = resolve_mask(K, mask_opt);
  check_attention_args(K, V, W, b, lam, mask);
  TORCH_CHECK(loss_kind == kHinge || loss_kind == kSquaredHinge,
              "cina::attention_hinge: loss_kind must be 0 (hinge) or 1 (squared hinge)");
  const AttentionHingeShape shape{K.size(0), K.size(1), K.size(2)};
  auto loss = at::empty({shape.B}, K.options());
  auto out = at::empty({shape.B, shape.N}, K.options());
  auto lse = at::empty({shape.B, shape.N}, K.options());
  auto A =
      need_aux ? at::empty({shape.B, shape.N, shape.D}, K.options()) : at::empty({0}, K.options());
  auto Bk =
      need_aux ? at::empty({shape.B, shape.N, shape.D}, K.options()) : at::empty({0}, K.options());
  if (K.is_cuda()) {
#ifdef CINA_WITH_CUDA
    const c10::cuda::CUDAGuard guard(K.device());
    void* stream = at::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(K.scalar_type(), "attention_hinge_fwd_cuda", [&] {
      const char* err = attention_hinge_fwd_cuda<scalar_t>(
          K.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(),
          b.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(), mask.data_ptr<bool>(), shape, scale,
          loss_kind, need_aux, loss.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          lse.data_ptr<scalar_t>(), need_aux ? A.data_ptr<scalar_t>() : nullptr,
          need_aux ? Bk.data_ptr<scalar_t>() : nullptr, stream);
      TORCH_CHECK(err == nullptr, "cina::attention_hinge (CUDA): ", err ? err : "");
    });
    return {loss, out, lse, A, Bk};
#else
    TORCH_CHECK(false, "cina::attention_hinge: this build of cina_ext has no CUDA kernels");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES(K.scalar_type(), "attention_hinge_fwd_cpu", [&] {
    attention_hinge_fwd_cpu<scalar_t>(
        K.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(),
        b.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(), mask.data_ptr<bool>(), shape, scale,
        loss_kind, need_aux, loss.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        lse.data_ptr<scalar_t>(), need_aux ? A.data_ptr<scalar_t>() : nullptr,
        need_aux ? Bk.data_ptr<scalar_t>() : nullptr);
  });
  return {loss, out, lse, A, Bk};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_hinge_bwd(
    const at::Tensor& K, const at::Tensor& V, const at::Tensor& W, const at::Tensor& b,
    const at::Tensor& lam, const std::optional<at::Tensor>& mask_opt, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& A, const at::Tensor& Bk, const at::Tensor& g_loss,
    const at::Tensor& g_out, const at::Tensor& g_lse, double scale, int64_t loss_kind) {
  const at::Tensor mask = resolve_mask(K, mask_opt);
  check_attention_args(K, V, W, b, lam, mask);
  const AttentionHingeShape shape{K.size(0), K.size(1), K.size(2)};
  for (const auto* t : {&out, &lse, &g_out, &g_lse})
    TORCH_CHECK(
        t->sizes() == V.sizes() && t->scalar_type() == K.scalar_type() && t->is_contiguous(),
        "cina::attention_hinge_bwd: per-unit tensors must match V");
  for (const auto* t : {&A, &Bk})
    TORCH_CHECK(
        t->sizes() == K.sizes() && t->scalar_type() == K.scalar_type() && t->is_contiguous(),
        "cina::attention_hinge_bwd: A and Bk must match K (run the forward with need_aux)");
  TORCH_CHECK(g_loss.sizes() == b.sizes() && g_loss.scalar_type() == K.scalar_type() &&
                  g_loss.is_contiguous(),
              "cina::attention_hinge_bwd: g_loss must match b");
  auto dK = at::empty_like(K);
  auto dV = at::empty_like(V);
  auto db = at::empty_like(b);
  if (K.is_cuda()) {
#ifdef CINA_WITH_CUDA
    const c10::cuda::CUDAGuard guard(K.device());
    void* stream = at::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(K.scalar_type(), "attention_hinge_bwd_cuda", [&] {
      const char* err = attention_hinge_bwd_cuda<scalar_t>(
          K.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(),
          b.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(), mask.data_ptr<bool>(),
          out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
          Bk.data_ptr<scalar_t>(), g_loss.data_ptr<scalar_t>(), g_out.data_ptr<scalar_t>(),
          g_lse.data_ptr<scalar_t>(), shape, scale, loss_kind, dK.data_ptr<scalar_t>(),
          dV.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), stream);
      TORCH_CHECK(err == nullptr, "cina::attention_hinge_bwd (CUDA): ", err ? err : "");
    });
    return {dK, dV, db};
#else
    TORCH_CHECK(false, "cina::attention_hinge_bwd: this build of cina_ext has no CUDA kernels");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES(K.scalar_type(), "attention_hinge_bwd_cpu", [&] {
    attention_hinge_bwd_cpu<scalar_t>(
        K.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(),
        b.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(), mask.data_ptr<bool>(),
        out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
        Bk.data_ptr<scalar_t>(), g_loss.data_ptr<scalar_t>(), g_out.data_ptr<scalar_t>(),
        g_lse.data_ptr<scalar_t>(), shape, scale, loss_kind, dK.data_ptr<scalar_t>(),
        dV.data_ptr<scalar_t>(), db.data_ptr<scalar_t>());
  });
  return {dK, dV, db};
}

// (the namespace itself is declared in csrc/module.cpp)
TORCH_LIBRARY_FRAGMENT(cina, m) {
  m.def(
      "attention_hinge_fwd(Tensor K, Tensor V, Tensor W, Tensor b, Tensor lam, Tensor? mask, "
      "float scale, int loss_kind, bool need_aux) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "attention_hinge_bwd(Tensor K, Tensor V, Tensor W, Tensor b, Tensor lam, Tensor? mask, "
      "Tensor out, Tensor lse, Tensor A, Tensor Bk, Tensor g_loss, Tensor g_out, Tensor g_lse, "
      "float scale, int loss_kind) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cina, CPU, m) {
  m.impl("attention_hinge_fwd", &attention_hinge_fwd);
  m.impl("attention_hinge_bwd", &attention_hinge_bwd);
}

#ifdef CINA_WITH_CUDA
TORCH_LIBRARY_IMPL(cina, CUDA, m) {
  m.impl("attention_hinge_fwd", &attention_hinge_fwd);
  m.impl("attention_hinge_bwd", &attention_hinge_bwd);
}
#endif

}  // namespace cina
