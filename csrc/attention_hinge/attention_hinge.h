// Fused masked tied-key attention + penalised hinge loss (docs/ops/attention_hinge.md).
//
// Kernels take raw pointers and sizes; the torch glue is glue.cpp (same folder).  All arrays are
// contiguous, row-major, batch-first:
//   K (B,N,D)  V, W, mask (B,N)  b, lam (B)   outputs loss (B), out, lse (B,N), A, Bk (B,N,D).
// Rows/columns with mask == false take no part; padded rows get out = lse = 0 and zero gradients.
//
// Forward, per valid row i:   lse_i = log sum_j exp(s_ij),  P_ij = exp(s_ij - lse_i),
//   o_i = sum_j P_ij v_j,  r_i = 1 - W_i (o_i + b),  loss = sum_i hinge(r_i) + c_i v_i o_i,
//   c_i = (lam/2) exp(lse_i)   (formed in log-space, never as exp(lse) alone).
// With need_aux the forward also returns A_i = sum_j P_ij v_j k_j and Bk_i = sum_j P_ij k_j, which
// the backward needs for the query-side gradient (they do not depend on the upstream gradient).
//
// Backward for upstream gradients gL (B), gO (B,N), gLse (B,N):
//   u_i = -W_i [r_i > 0] (hinge) | -W_i max(r_i, 0) (squared),
//   g_i = gL (u_i + c_i v_i) + gO_i,   e_i = gL c_i v_i o_i + gLse_i,   delta_i = g_i o_i - e_i,
//   dS_ij = P_ij (g_i v_j - delta_i),
//   dK_i = scale (g_i A_i - delta_i Bk_i) + scale (v_i C1_i - C2_i),
//     C1_j = sum_i P_ij g_i k_i,  C2_j = sum_i P_ij delta_i k_i          (one column pass)
//   dV_j = sum_i P_ij g_i + gL c_j o_j,   db = gL sum_i u_i.
#pragma once
#include <cstdint>

namespace cina {

enum LossKind : int64_t { kHinge = 0, kSquaredHinge = 1 };

struct AttentionHingeShape {
  int64_t B, N, D;
};

template <typename T>
void attention_hinge_fwd_cpu(const T* K, const T* V, const T* W, const T* b, const T* lam,
                             const bool* mask, AttentionHingeShape shape, double scale,
                             int64_t loss_kind, bool need_aux, T* loss, T* out, T* lse, T* A,
                             T* Bk);

template <typename T>
void attention_hinge_bwd_cpu(const T* K, const T* V, const T* W, const T* b, const T* lam,
                             const bool* mask, const T* out, const T* lse, const T* A, const T* Bk,
                             const T* g_loss, const T* g_out, const T* g_lse,
                             AttentionHingeShape shape, double scale, int64_t loss_kind, T* dK,
                             T* dV, T* db);

#ifdef CINA_WITH_CUDA
// CUDA twins (csrc/attention_hinge/cuda.cu): same contract, device pointers, launched on `stream`
// (a cudaStream_t passed as void* so that this header needs no CUDA include).  Supported T:
// float, double.  Return a non-empty message on a launch/configuration error.
template <typename T>
const char* attention_hinge_fwd_cuda(const T* K, const T* V, const T* W, const T* b, const T* lam,
                                     const bool* mask, AttentionHingeShape shape, double scale,
                                     int64_t loss_kind, bool need_aux, T* loss, T* out, T* lse,
                                     T* A, T* Bk, void* stream);

template <typename T>
const char* attention_hinge_bwd_cuda(const T* K, const T* V, const T* W, const T* b, const T* lam,
                                     const bool* mask, const T* out, const T* lse, const T* A,
                                     const T* Bk, const T* g_loss, const T* g_out, const T* g_lse,
                                     AttentionHingeShape shape, double scale, int64_t loss_kind,
                                     T* dK, T* dV, T* db, void* stream);
#endif

}  // namespace cina
