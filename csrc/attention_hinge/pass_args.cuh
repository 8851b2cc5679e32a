// PassArgs: the by-value argument of every pass kernel (SIMT, tensor-core, combine) -- inputs,
// outputs, column-split partial buffers and the tensor-core column data.
#pragma once
#include "attention_hinge/device.cuh"

namespace cina {
namespace cuda_detail {

struct ColTc;  // column data of the tensor-core passes (below)

template <typename T>
struct PassArgs {
  const T* K;
  const T* V;
  const bool* mask;
  const UnitBwd<T>* unit;  // backward only
  const T* A_in;           // backward only: forward auxiliaries
  const T* Bk_in;
  T* out;  // forward outputs
  T* lse;
  T* A;
  T* Bk;
  T* dK;  // backward outputs
  T* dV;
  int64_t N;
  int64_t row_tiles;
  int D;
  T sl2;    // scale * log2(e)
  T scale;  // backward: the factor of dK
  // column splits: with nsplit > 1 the columns of a row tile are shared by nsplit blocks that
  // write partial results (relative to their own running max) for combine_kernel to merge
  int nsplit;
  int64_t tiles_per_split;  // streamed tiles per split
  int64_t total;            // B * N
  T* part_m;                // [nsplit][B*N]  running max (log2 units; forward)
  double* part_l;           // [nsplit][B*N]  sum P (forward)
  double* part_o;           // [nsplit][B*N]  sum P v (forward) or sum_i P_ij g_i (backward)
  T* part_a1;               // [nsplit][B*N][D]
  T* part_a2;               // [nsplit][B*N][D]
  // tensor-core passes: split keys and column data of every unit, datasets padded to
  // row_tiles * 64 units (tc_prep_kernel)
  float* ksplit;
  ColTc* cols;
};

}  // namespace cuda_detail
}  // namespace cina
