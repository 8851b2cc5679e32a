// Exponentiated-gradient descent on the kernel balancing objective (docs/ops/balance_descent.md).
// Raw-pointer kernel API; the torch glue is in csrc/balance_descent/glue.cpp.  All arrays are
// contiguous, row-major, batch-first.
//
// R problems (rows), each on one of B symmetric Gram matrices K_b (N x N, float32): row r uses
// K[r / rows_per_kernel] (a grid of penalties shares its dataset's matrix).  Row r minimises
//
//     f(w) = sum_{a in {1, 0}} (w t_a - c)' K (w t_a - c) + lam_r sum_{i moving} w_i^2
//
// over the weights w of its units: t_1 / t_0 the indicators of the treated / control units
// (arm = 1 / 0; arm = -1 marks a padded slot, never read as a row, weight 0), c the target
// (a distribution over the units).  Moving units keep each arm's weights on the simplex; the
// others keep their starting weights (the treated of the ATT problem).  Each step, with
// gk = (K (w t_a - c))_i on each unit's own arm and g = gk + lam w (half the gradient):
//
//     v <- (momentum v - step_size g) on the moving units, 0 elsewhere;
//     w' = w exp(v - max_arm v) / (its arm's sum)            on the moving units, w elsewhere;
//     t  = argmin_{[0, 1]} f(w + t (w' - w))                  (f is quadratic along the segment:
//          slope g.dw, curvature dw.(K-part + lam dw), from the one product with w');
//     w <- w + t dw,  v <- t v.
// The best iterate (lowest f, the start included) and its f are returned.  Products run in
// float32 (K and the imbalances; sums in float32 lanes), everything else in double.
#pragma once

#include <cstdint>

namespace cina {

struct DescentProblems {
  const float* K;        // (B, N, N), symmetric
  const double* w0;      // (R, N) starting weights (0 on padded slots)
  const int8_t* arm;     // (R, N): 1 treated, 0 control, -1 padding
  const double* target;  // (R, N)
  const bool* moving;    // (R, N)
  const double* lam;     // (R,)
  int64_t B = 0;
  int64_t R = 0;
  int64_t N = 0;
  int64_t rows_per_kernel = 1;
};

struct DescentOptions {
  int64_t steps = 0;
  double step_size = 1.0;
  double momentum = 0.0;
};

struct DescentOutputs {
  double* w;       // (R, N): the best iterate
  double* obj;     // (R,): its objective
  bool* finite;  // (R,): false when the starting objective is not finite (a non-finite K entry)
};

}  // namespace cina
