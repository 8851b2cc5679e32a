// Fixed-order reductions of the SIMT kernels: half-warp butterflies (one row per half-warp) and
// the block sum of the per-dataset kernels.  Fixed order: the results are deterministic.
#pragma once
#include "attention_hinge/device.cuh"

namespace cina {
namespace cuda_detail {

// butterfly over the 16 lanes of a half-warp (all 32 lanes participate; fixed order)
template <typename T>
CINA_DEV T halfwarp_max(T v) {
#pragma unroll
  for (int m = 8; m >= 1; m >>= 1) v = dmax(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}
template <typename T>
CINA_DEV T halfwarp_sum(T v) {
#pragma unroll
  for (int m = 8; m >= 1; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// fixed-order block sum (blockDim.x == kRedThreads); every thread gets the result
CINA_DEV double block_sum(double v, double* red) {
  const int t = threadIdx.x;
  red[t] = v;
  __syncthreads();
#pragma unroll
  for (int s = kRedThreads / 2; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  const double r = red[0];
  __syncthreads();
  return r;
}

}  // namespace cuda_detail
}  // namespace cina
