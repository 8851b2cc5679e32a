// Batched box-QP / balancing dual solver (docs/ops/qp_solve.md).  Raw-pointer kernel API; the
// torch glue is in csrc/qp_solve/glue.cpp.  All arrays are contiguous, row-major, batch-first.
//
// One *problem* per row of the problem batch (P problems, padded to N units):
//
//     min_x 1/2 x'Qx - p'x    s.t.  lo <= x <= up   [and c'x = d]
//
// with Q given implicitly through a *source* dataset (one of S, padded to N units):
//
//     Q_ij = qscale * s_i * s_j * k(i, j) + diag_add * [i == j]          (i, j valid units)
//
// where k is the source's kernel:
//   kQPDense   : X (S, N, N) holds k (or Q itself) explicitly; row j is read as column j;
//   kQPLinear  : k(i, j) = x_i . x_j                        X (S, N, D) features;
//   kQPRbf     : k(i, j) = exp(-gamma_s ||x_i - x_j||^2)    X (S, N, D), gamma (S);
//   kQPCina    : k(i, j) = exp(scale x_i.x_j - lse_i - lse_j), X (S, N, D) attention keys and
//                lse (S, N) the row log-sum-exp over the source's valid units (qp_kernel_lse_cpu);
//   kQPLaplace : k(i, j) = exp(-gamma_s ||x_i - x_j||_2)    X (S, N, D), gamma (S); the distance
//                is sqrt(max(0, sum_d (x_id - x_jd)^2)), from the same squared distance as kQPRbf.
// A problem uses the units where its own mask is true (a subset of its source's units: the two
// arm problems of the "ate" estimand share one source).  Padded units return x = 0.
//
// Algorithm (per problem, sequential steps, gradient G = Qx - p kept in double):
//   * coordinates with c_i = 0 (all of them without the equality) take greedy coordinate-descent
//     steps on the largest projected-gradient violation, x_k <- clip(x_k - G_k / Q_kk);
//   * coordinates with c_i != 0 take SMO steps along e_i/c_i - e_j/c_j (keeps c'x exact): i the
//     maximal violator, j by the second-order rule (largest b_ij^2 / a_ij, LIBSVM's WSS2);
//   * curvatures are floored at tau = 1e-12 max Q_ii; kernel columns come from an LRU cache
//     bounded by cache_bytes per problem being solved (computed on the fly otherwise);
//   * the gradient is updated in double after every step (rebuilt from scratch after a step that
//     makes no representable progress); with shrinking, the gradients of the shrunk units are
//     rebuilt and the KKT test runs on all units before a problem is declared converged; a
//     problem that reaches max_iter steps or stalls is reported not converged.
// KKT violation, multiplier nu and iteration counting follow cina_ext/reference_qp.py exactly.
//
// Threads: at::parallel_for across problems (each thread pulls problems from a shared counter);
// a problem with many units and fewer problems than threads is parallelised inside (kernel
// columns, gradient rebuilds and the per-step passes over the units), in fixed blocks combined in
// a fixed order, so results do not depend on the thread count.  Inside a problem the threads are
// used only while timing shows that they pay (see Solver::probe in cpu.cpp).
#pragma once
#include <cstdint>

namespace cina {

enum QPKernelKind : int64_t {
  kQPDense = 0,
  kQPLinear = 1,
  kQPRbf = 2,
  kQPCina = 3,
  kQPLaplace = 4
};

template <typename T>
struct QPSource {
  int64_t kind;   // QPKernelKind
  int64_t S;      // number of source datasets
  int64_t N;      // padded units
  int64_t D;      // features (N for kQPDense)
  const T* X;     // (S, N, D)
  const double* gamma;  // (S) for kQPRbf and kQPLaplace, else unused
  double scale;         // kQPCina score scale
  const double* lse;    // (S, N) for kQPCina, else unused
};

template <typename T>
struct QPProblems {
  int64_t P;               // number of problems
  int64_t N;               // padded units (same N as the source)
  const int64_t* src;      // (P) source index of each problem
  const bool* mask;        // (P, N) units of each problem
  const T* sign;           // (P, N) s_i, or nullptr for s = 1
  const double* qscale;    // (P)
  const double* diag_add;  // (P)
  const T* p;              // (P, N)
  const T* lo;             // (P, N), -inf allowed
  const T* up;             // (P, N), +inf allowed
  const T* c;              // (P, N) or nullptr (no equality)
  const T* d;              // (P) or nullptr; the caller checks that c'x = d can be met inside
                           // the box (the solver clamps d into the reachable range)
  const T* x0;             // (P, N) feasible warm start, or nullptr (feasible start built)
  const double* tol;       // (P)
  const int64_t* max_iter; // (P)
};

struct QPOptions {
  int64_t cache_bytes = int64_t(1) << 30;  // kernel-column cache per problem being solved
  bool shrinking = true;                   // shrinking of the working set (see cpu.cpp)
  int64_t inner_min_units = 8192;          // parallelise inside a problem from this many units
  bool debug = false;                      // per-problem summary on stderr (CPU; CINA_QP_DEBUG)
};

template <typename T>
struct QPOutputs {
  T* x;               // (P, N)
  T* nu;              // (P)
  T* objective;       // (P)
  T* kkt;             // (P)
  int64_t* iterations;  // (P)
  bool* converged;      // (P)
};

// Solve every problem of the batch.
template <typename T>
void qp_solve_cpu(const QPSource<T>& source, const QPProblems<T>& problems, const QPOptions& opt,
                  const QPOutputs<T>& out);

// lse_i = log sum_{j valid} exp(scale x_i . x_j) for every valid unit of every dataset (0 at
// padded units).  X (S, N, D), mask (S, N), lse (S, N).
template <typename T>
void qp_kernel_lse_cpu(const T* X, const bool* mask, int64_t S, int64_t N, int64_t D, double scale,
                       double* lse);

// rowsum_i = sum_{j : colmask_j} k(i, j) for every unit i with rowmask_i (0 elsewhere), with the
// source's kernel (qscale 1, no sign, no diagonal shift).  rowmask, colmask (S, N); out (S, N).
template <typename T>
void qp_kernel_rowsum_cpu(const QPSource<T>& source, const bool* rowmask, const bool* colmask,
                          double* out);

// Check of explicit matrices: per dataset, over valid pairs, asym = max |A_ij - A_ji| / max |A_ij|
// (0 for an all-zero matrix) and finite = all entries finite.  A (S, N, N), mask (S, N).
template <typename T>
void qp_check_dense_cpu(const T* A, const bool* mask, int64_t S, int64_t N, double* asym,
                        bool* finite);

#ifdef CINA_WITH_CUDA
// CUDA twin (csrc/qp_solve/cuda.cu): same contract with device pointers, launched on `stream` (a
// cudaStream_t passed as void*).  Two algorithms (CINA_QP_CUDA_ALGO = block | ws | auto):
// * "block" (the default below 4096 padded units): one thread block per problem (a persistent
//   grid pulling problems from a counter), asynchronous; the algorithm, KKT measure, nu,
//   iteration counting and stop rules are the CPU solver's without shrinking (QPOptions::shrinking
//   and inner_min_units are not used); cache_bytes bounds the column cache of each resident block;
// * "ws" (the default from 4096 units): working-set decomposition (select / solve / update
//   kernels per round, see ws_select_kernel); same KKT measure, nu, objective and flags, other
//   iterates; iterations count the sub-problem steps.  It waits on the stream every few rounds
//   (to stop once every problem is done).
// Returns nullptr, or a message on a launch / allocation error.
template <typename T>
const char* qp_solve_cuda(const QPSource<T>& source, const QPProblems<T>& problems,
                          const QPOptions& opt, const QPOutputs<T>& out, void* stream);

// CUDA twins of qp_kernel_lse_cpu and qp_kernel_rowsum_cpu (device pointers, on `stream`).
template <typename T>
const char* qp_kernel_lse_cuda(const T* X, const bool* mask, int64_t S, int64_t N, int64_t D,
                               double scale, double* lse, void* stream);
template <typename T>
const char* qp_kernel_rowsum_cuda(const QPSource<T>& source, const bool* rowmask,
                                  const bool* colmask, double* out, void* stream);
#endif

}  // namespace cina
