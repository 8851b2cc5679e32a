// Torch glue of the fused attention + hinge operator (csrc/attention_hinge/glue.cpp), which also
// registers the two ops below.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace cina {

// attention_hinge_fwd(Tensor K, Tensor V, Tensor W, Tensor b, Tensor lam, Tensor? mask,
//     float scale, int loss_kind, bool need_aux) -> (loss, out, lse, A, Bk)
// Contract in attention_hinge.h; A and Bk are empty without need_aux; mask None = all units real.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_hinge_fwd(
    const at::Tensor& K, const at::Tensor& V, const at::Tensor& W, const at::Tensor& b,
    const at::Tensor& lam, const std::optional<at::Tensor>& mask, double scale, int64_t loss_kind,
    bool need_aux);

// attention_hinge_bwd(Tensor K, Tensor V, Tensor W, Tensor b, Tensor lam, Tensor? mask,
//     Tensor out, Tensor lse, Tensor A, Tensor Bk, Tensor g_loss, Tensor g_out, Tensor g_lse,
//     float scale, int loss_kind) -> (dK, dV, db)
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_hinge_bwd(
    const at::Tensor& K, const at::Tensor& V, const at::Tensor& W, const at::Tensor& b,
    const at::Tensor& lam, const std::optional<at::Tensor>& mask, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& A, const at::Tensor& Bk, const at::Tensor& g_loss,
    const at::Tensor& g_out, const at::Tensor& g_lse, double scale, int64_t loss_kind);

}  // namespace cina
