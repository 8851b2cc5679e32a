// Torch glue of the batched QP solver (csrc/qp_solve/glue.cpp): tensor checks, output allocation,
// dtype and instruction-set dispatch; glue.cpp also registers these ops.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace cina {

// Schema (registered in glue.cpp):
//   qp_solve_batch(Tensor X, int kind, Tensor gamma, float scale, Tensor lse, Tensor src,
//       Tensor mask, Tensor? sign, Tensor qscale, Tensor diag_add, Tensor p, Tensor lo, Tensor up,
//       Tensor? c, Tensor? d, Tensor? x0, Tensor tol, Tensor max_iter, int cache_bytes,
//       bool shrinking, int inner_min_units) -> (x, nu, objective, kkt, iterations, converged)
// X (S,N,D) features or (S,N,N) matrices (float32/float64); gamma (S) and lse (S,N) float64 (may
// be empty when the kernel does not use them); src (P) int64; mask (P,N) bool; sign, p, lo, up,
// c, x0 (P,N) and d (P) in X's dtype; qscale, diag_add, tol (P) float64; max_iter (P) int64.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_solve_batch(
    const at::Tensor& X, int64_t kind, const at::Tensor& gamma, double scale, const at::Tensor& lse,
    const at::Tensor& src, const at::Tensor& mask, const std::optional<at::Tensor>& sign,
    const at::Tensor& qscale, const at::Tensor& diag_add, const at::Tensor& p, const at::Tensor& lo,
    const at::Tensor& up, const std::optional<at::Tensor>& c, const std::optional<at::Tensor>& d,
    const std::optional<at::Tensor>& x0, const at::Tensor& tol, const at::Tensor& max_iter,
    int64_t cache_bytes, bool shrinking, int64_t inner_min_units);

// qp_kernel_lse(Tensor X, Tensor mask, float scale) -> Tensor lse (S,N) float64
at::Tensor qp_kernel_lse(const at::Tensor& X, const at::Tensor& mask, double scale);

// qp_kernel_rowsum(Tensor X, int kind, Tensor gamma, float scale, Tensor lse, Tensor rowmask,
//     Tensor colmask) -> Tensor (S,N) float64: sum over colmask units j of k(i, j), at rowmask i.
at::Tensor qp_kernel_rowsum(const at::Tensor& X, int64_t kind, const at::Tensor& gamma,
                            double scale, const at::Tensor& lse, const at::Tensor& rowmask,
                            const at::Tensor& colmask);

// qp_check_dense(Tensor A, Tensor mask) -> (Tensor asym (S) float64, Tensor finite (S) bool)
std::tuple<at::Tensor, at::Tensor> qp_check_dense(const at::Tensor& A, const at::Tensor& mask);

}  // namespace cina
