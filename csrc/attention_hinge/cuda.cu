// CUDA implementation of the fused attention + hinge operator (contract in attention_hinge.h).
//
// Design (docs/ops/attention_hinge.md; the CPU twin is csrc/attention_hinge/cpu.cpp, same
// semantics):
//
// * One "pass" kernel per variant, templated on the element type T (float: fp32 accumulation;
//   double: fp64), on the padded feature width DP (16, 32, 64 or 128: D is zero-padded to DP in
//   shared memory) and on the mode (forward without auxiliaries, forward with A/Bk, backward
//   column pass).
// * Grid: one thread block per (dataset, tile of kBM = 64 rows[, column split]), flattened into
//   blockIdx.x.  The block's 64 own rows are staged in shared memory once; the other units of
//   the dataset are streamed in tiles of kBN = 64 (keys staged in shared memory).
// * SIMT variant (float and double): 256 threads = 16 row groups (ty) x 16 lanes (tx); thread
//   (ty, tx) computes the 4 x 4 scores of rows ty*4 .. ty*4+3 and columns tx, tx+16, tx+32,
//   tx+48, so each row lives in the 16 lanes of one half-warp: row maxima and sums are half-warp
//   shuffles.  With auxiliaries / in the backward, the tile probabilities go through a
//   warp-private shared buffer and the same threads accumulate P @ [a K, b K] for their rows.
// * Tensor-core variants (float only, attn_pass_tc_kernel): 4 warps x 16 rows, scores and
//   P @ [a K, b K] on mma.sync.m16n8k8 TF32 (fp32 accumulate), probabilities kept in registers
//   as the A operand (k index permuted, no shuffles).  "tf32x3" splits each operand into two
//   TF32 parts (3 mma per product: about fp32 accuracy, the parity rule); "tf32" is plain TF32.
//   A prep kernel (tc_prep_kernel) writes every unit's key, already split into TF32 parts and
//   padded to DP features, and its column scalars (bias, values, validity) to a workspace, so
//   that staging a tile is a run of 16-byte copies; probabilities are rounded to TF32 by an
//   integer add (the tensor cores ignore the low bits) and exponentials are ex2.approx.ftz.
//   Per 64-column tile and thread (D = 16, sm_90a SASS) this took the forward-with-auxiliaries
//   loop from 1136 to about 570 instructions (tf32) and from 1606 to about 980 (tf32x3), the
//   backward from 1078 to about 460 and from 1491 to about 860, with the same bits in the
//   emulator; the D = 16 kernels are held to 128 registers (4 resident blocks per SM).
// * Forward: online softmax in the log2 domain (scores pre-multiplied by scale*log2(e), one FMA
//   per score), per-lane partial sums l, o in double, merged at the end by a fixed butterfly ->
//   deterministic.  Nothing of size N x N exists anywhere.
// * Backward: a prep kernel turns the per-unit inputs into (g, delta, -lse*log2(e), gL c o)
//   (a B*N workspace from the stream-ordered allocator), then the column pass: the block's 64
//   units play j, streamed units play i, P_ij = exp2(s_ij*scale*log2e - lse_i*log2e) <= 1 (no
//   running max needed), C1_j = sum_i P_ij g_i k_i, C2_j = sum_i P_ij delta_i k_i,
//   sum_i P_ij g_i; dK, dV are written once per unit (no atomics).
// * Column splits: when B * ceil(N / 64) blocks would leave SMs idle (e.g. B = 1, N = 4096),
//   the streamed tiles of each row tile are shared by up to 32 blocks, which write partial
//   results (max, sums, accumulators) to a workspace; combine_kernel merges them in a fixed
//   order (deterministic, no atomics).  CINA_ATTENTION_SPLITS = n forces at most n splits.
// * Masks: arbitrary bool masks.  Masked columns get a -inf score (zero key, zero value; what
//   the padding holds never matters), and a column tile with no valid unit is skipped after
//   reading its 64 column flags (so prefix masks / variable lengths cost little past each
//   dataset's last unit); a row tile with no valid unit only writes zeros.  Padded rows get
//   out = lse = 0, A = Bk = 0, dK = dV = 0.
// * Loss and db: one block per dataset, fixed-order tree reductions in double.
// * Any N (grid of B * ceil(N / 64) * splits blocks), 1 <= D <= 128 (D > 128 is refused).
// * Variant choice: CINA_ATTENTION_KERNEL = auto (default: tf32x3p) | simt | tf32x3 | tf32 |
//   tf32x3p | tf32p, read at every call; float64, and tf32x3 with D > 64, run the SIMT kernels.
//   The "p" variants double-buffer the streamed tiles: the next tile is copied with cp.async
//   while the current one is computed (same bits as without; faster at most shapes on an H200).
// * Every launch is checked (cudaGetLastError); errors come back as strings, never crashes.
//
// Files (this folder): device.cuh (constants, small helpers), reductions.cuh, pass_args.cuh,
// simt_pass.cuh (SIMT kernels), tc_primitives.cuh + tc_pass.cuh (tensor-core kernels, their
// prep kernel), combine.cuh (column splits), loss_kernels.cuh (loss, backward prep, db),
// launch_config.cuh (variant, splits, shape checks); the host launchers are below.
//
// The files are pure CUDA (no torch headers).  They are also compiled on the host, with
// CINA_EMULATE defined, by tests/emulator/cuda_emulator/emulator.cpp, which runs these very
// kernels with one std::thread per CUDA thread (and an emulated mma.sync), so that the index logic
// is tested without a GPU (tests/emulator/test_cuda_emulator.py).
#ifndef CINA_WITH_CUDA
#define CINA_WITH_CUDA 1
#endif
#include "attention_hinge/attention_hinge.h"

#include "common/cuda_rt.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

// (under CINA_EMULATE the emulator defines CINA_DEV, CINA_KERNEL, CINA_DYN_SMEM, dim3, float4,
//  double2, float2, threadIdx/blockIdx/..., __syncthreads, __syncthreads_or, __syncwarp,
//  __shfl_xor_sync, the cina::cuda_rt::rt_* functions and CINA_LAUNCH before including us; see
//  common/cuda_rt.h)

// the kernels and their launch configuration, one concern per file (see "Files" above)
#include "attention_hinge/device.cuh"
#include "attention_hinge/reductions.cuh"
#include "attention_hinge/pass_args.cuh"
#include "attention_hinge/simt_pass.cuh"
#include "attention_hinge/tc_primitives.cuh"
#include "attention_hinge/tc_pass.cuh"
#include "attention_hinge/combine.cuh"
#include "attention_hinge/loss_kernels.cuh"
#include "attention_hinge/launch_config.cuh"

namespace cina {
namespace cuda_detail {
// ---------------------------------------------------------------------------------------------
// host side

template <typename T, int DP, int MODE>
const char* launch_pass(const PassArgs<T>& args, int64_t B, void* stream) {
  auto kern = &attn_pass_kernel<T, DP, MODE>;
  constexpr size_t smem = pass_smem_bytes<T, DP, MODE>();
  if (smem > 48 * 1024) {
    if (const char* e = rt_set_max_dyn_smem(kern, smem)) return e;
  }
  const int64_t blocks = B * args.row_tiles * args.nsplit;
  if (blocks > 2147483647LL)
    return fail("cina attention_hinge (CUDA): B * ceil(N / 64) exceeds 2^31 - 1 blocks");
  CINA_LAUNCH(kern, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem, stream, args);
  return rt_check_launch("cina attention_hinge (CUDA): pass kernel launch");
}

template <int DP, int MODE, int NSPLIT, bool PF>
const char* launch_pass_tc(PassArgs<float> args, int64_t B, void* stream) {
  auto kern = &attn_pass_tc_kernel<DP, MODE, NSPLIT, PF>;
  constexpr size_t smem = tc_smem_bytes<DP, NSPLIT, PF>();
  if (smem > 48 * 1024) {
    if (const char* e = rt_set_max_dyn_smem(kern, smem)) return e;
  }
  const int64_t blocks = B * args.row_tiles * args.nsplit;
  if (blocks > 2147483647LL)
    return fail("cina attention_hinge (CUDA): B * ceil(N / 64) exceeds 2^31 - 1 blocks");
  // the split keys and column data (stream-ordered workspace, released after the pass)
  const int64_t units = B * args.row_tiles * kBM;
  const size_t key_bytes = sizeof(float) * static_cast<size_t>(units) * kTcKeyFloats<DP, NSPLIT>;
  void* ws = nullptr;
  if (const char* e = rt_malloc(&ws, key_bytes + sizeof(ColTc) * static_cast<size_t>(units), stream,
                                "tensor-core key workspace"))
    return e;
  args.ksplit = static_cast<float*>(ws);
  args.cols = reinterpret_cast<ColTc*>(static_cast<char*>(ws) + key_bytes);
  int64_t prep_blocks = (units * DP + 255) / 256;
  if (prep_blocks > 65536) prep_blocks = 65536;
  auto prep = &tc_prep_kernel<DP, MODE, NSPLIT>;
  CINA_LAUNCH(prep, dim3(static_cast<unsigned>(prep_blocks)), dim3(256), 0, stream, args, B);
  const char* err = rt_check_launch("cina attention_hinge (CUDA): tensor-core prep kernel launch");
  if (!err) {
    CINA_LAUNCH(kern, dim3(static_cast<unsigned>(blocks)), dim3(kTcThreads), smem, stream, args);
    err = rt_check_launch("cina attention_hinge (CUDA): tensor-core pass kernel launch");
  }
  rt_free(ws, stream);
  return err;
}

template <int MODE, int NSPLIT, bool PF>
const char* dispatch_pass_tc(const PassArgs<float>& args, int64_t B, void* stream) {
  if (args.D <= 16) return launch_pass_tc<16, MODE, NSPLIT, PF>(args, B, stream);
  if (args.D <= 32) return launch_pass_tc<32, MODE, NSPLIT, PF>(args, B, stream);
  if (args.D <= 64) return launch_pass_tc<64, MODE, NSPLIT, PF>(args, B, stream);
  return launch_pass_tc<128, MODE, NSPLIT, PF>(args, B, stream);
}

template <typename T, int MODE>
const char* dispatch_pass(const PassArgs<T>& args, int64_t B, int variant, void* stream) {
  if constexpr (std::is_same_v<T, float>) {
    // 3xTF32 meets the fp32 parity rule up to D = 64; at D = 128 it measured 10x the fp32
    // reference's error on an H200 (tests/test_ops_cuda.py), so wider keys run the SIMT kernel.
    if (variant == kTf32x3 && args.D <= 64)
      return dispatch_pass_tc<MODE, 3, false>(args, B, stream);
    if (variant == kTf32x3p && args.D <= 64)
      return dispatch_pass_tc<MODE, 3, true>(args, B, stream);
    if (variant == kTf32) return dispatch_pass_tc<MODE, 1, false>(args, B, stream);
    if (variant == kTf32p) return dispatch_pass_tc<MODE, 1, true>(args, B, stream);
  }
  if (args.D <= 16) return launch_pass<T, 16, MODE>(args, B, stream);
  if (args.D <= 32) return launch_pass<T, 32, MODE>(args, B, stream);
  if (args.D <= 64) return launch_pass<T, 64, MODE>(args, B, stream);
  return launch_pass<T, 128, MODE>(args, B, stream);
}

// The pass, split or not; with splits, the partial buffers are carved out of `ws` (sized by
// split_workspace_bytes) and combine_kernel writes the outputs.
template <typename T>
size_t split_workspace_bytes(const PassArgs<T>& args, bool acc) {
  if (args.nsplit <= 1) return 0;
  const size_t n = static_cast<size_t>(args.nsplit) * static_cast<size_t>(args.total);
  const size_t units =
      2 * sizeof(double) + sizeof(T) + (acc ? 2 * sizeof(T) * static_cast<size_t>(args.D) : 0);
  return n * units + 256;
}

template <typename T, int MODE>
const char* run_pass(PassArgs<T>& args, int64_t B, int variant, void* ws, void* stream) {
  constexpr bool kAcc = MODE != kFwdPlain;
  if (args.nsplit > 1) {
    const size_t n = static_cast<size_t>(args.nsplit) * static_cast<size_t>(args.total);
    char* p = static_cast<char*>(ws);
    args.part_l = reinterpret_cast<double*>(p);
    args.part_o = args.part_l + n;
    p = reinterpret_cast<char*>(args.part_o + n);
    args.part_m = reinterpret_cast<T*>(p);
    args.part_a1 = args.part_m + n;
    args.part_a2 = args.part_a1 + (kAcc ? n * static_cast<size_t>(args.D) : 0);
  }
  if (const char* e = dispatch_pass<T, MODE>(args, B, variant, stream)) return e;
  if (args.nsplit <= 1) return nullptr;
  const int64_t work = args.total * (kAcc ? args.D : 1);
  int64_t blocks = (work + 255) / 256;
  if (blocks > 65536) blocks = 65536;
  auto ck = &combine_kernel<T, MODE>;
  CINA_LAUNCH(ck, dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream, args);
  return rt_check_launch("cina attention_hinge (CUDA): combine kernel launch");
}

template <typename T>
void init_args(PassArgs<T>& args, const T* K, const T* V, const bool* mask,
               AttentionHingeShape shape, double scale) {
  args.K = K;
  args.V = V;
  args.mask = mask;
  args.N = shape.N;
  args.row_tiles = (shape.N + kBM - 1) / kBM;
  args.D = static_cast<int>(shape.D);
  args.sl2 = static_cast<T>(scale * kLog2e);
  args.scale = static_cast<T>(scale);
  args.total = shape.B * shape.N;
  args.nsplit = 1;
  args.tiles_per_split = args.row_tiles;  // column tiles = row tiles
}

}  // namespace cuda_detail

template <typename T>
const char* attention_hinge_fwd_cuda(const T* K, const T* V, const T* W, const T* b, const T* lam,
                                     const bool* mask, AttentionHingeShape shape, double scale,
                                     int64_t loss_kind, bool need_aux, T* loss, T* out, T* lse,
                                     T* A, T* Bk, void* stream) {
  using namespace cuda_detail;
  if (const char* e = check_shape(shape, loss_kind)) return e;
  const Config cfg = read_config();  // the environment, once per call
  int variant = kDefaultVariant;
  if (const char* e = read_variant(cfg, &variant)) return e;
  const int64_t B = shape.B, N = shape.N;
  if (B == 0) return nullptr;
  if (N == 0) return rt_memset(loss, sizeof(T) * static_cast<size_t>(B), stream);

  PassArgs<T> args{};
  init_args(args, K, V, mask, shape, scale);
  args.out = out;
  args.lse = lse;
  args.A = A;
  args.Bk = Bk;
  if (const char* e = choose_splits(cfg, B * args.row_tiles, args.row_tiles, &args.nsplit,
                                    &args.tiles_per_split))
    return e;
  void* ws = nullptr;
  if (const size_t bytes = split_workspace_bytes(args, need_aux)) {
    if (const char* e = rt_malloc(&ws, bytes, stream, "backward workspace")) return e;
  }
  const char* err = need_aux ? run_pass<T, kFwdAux>(args, B, variant, ws, stream)
                             : run_pass<T, kFwdPlain>(args, B, variant, ws, stream);
  if (!err) {
    auto lk = &loss_kernel<T>;
    CINA_LAUNCH(lk, dim3(static_cast<unsigned>(B)), dim3(kRedThreads), kRedThreads * sizeof(double),
                stream, V, W, b, lam, mask, out, lse, N, static_cast<int>(loss_kind), loss);
    err = rt_check_launch("cina attention_hinge (CUDA): loss kernel launch");
  }
  rt_free(ws, stream);  // stream-ordered: released after the kernels that use it
  return err;
}

template <typename T>
const char* attention_hinge_bwd_cuda(const T* K, const T* V, const T* W, const T* b, const T* lam,
                                     const bool* mask, const T* out, const T* lse, const T* A,
                                     const T* Bk, const T* g_loss, const T* g_out, const T* g_lse,
                                     AttentionHingeShape shape, double scale, int64_t loss_kind,
                                     T* dK, T* dV, T* db, void* stream) {
  using namespace cuda_detail;
  if (const char* e = check_shape(shape, loss_kind)) return e;
  const Config cfg = read_config();  // the environment, once per call
  int variant = kDefaultVariant;
  if (const char* e = read_variant(cfg, &variant)) return e;
  const int64_t B = shape.B, N = shape.N;
  if (B == 0) return nullptr;
  if (N == 0) return rt_memset(db, sizeof(T) * static_cast<size_t>(B), stream);

  PassArgs<T> args{};
  init_args(args, K, V, mask, shape, scale);
  args.A_in = A;
  args.Bk_in = Bk;
  args.dK = dK;
  args.dV = dV;
  if (const char* e = choose_splits(cfg, B * args.row_tiles, args.row_tiles, &args.nsplit,
                                    &args.tiles_per_split))
    return e;
  // one allocation: per-unit scalars, then (with splits) the partial results
  const int64_t total = B * N;
  const size_t unit_bytes = (sizeof(UnitBwd<T>) * static_cast<size_t>(total) + 255) / 256 * 256;
  void* ws = nullptr;
  if (const char* e = rt_malloc(&ws, unit_bytes + split_workspace_bytes(args, true), stream,
                                "backward workspace"))
    return e;
  UnitBwd<T>* unit = static_cast<UnitBwd<T>*>(ws);
  args.unit = unit;

  const char* err = nullptr;
  {
    int64_t blocks = (total + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    auto pk = &bwd_prep_kernel<T>;
    CINA_LAUNCH(pk, dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream, V, W, b, lam, mask,
                out, lse, g_loss, g_out, g_lse, total, N, static_cast<int>(loss_kind), unit);
    err = rt_check_launch("cina attention_hinge_bwd (CUDA): prep kernel launch");
  }
  if (!err) {
    auto dk = &db_kernel<T>;
    CINA_LAUNCH(dk, dim3(static_cast<unsigned>(B)), dim3(kRedThreads), kRedThreads * sizeof(double),
                stream, W, b, mask, out, g_loss, N, static_cast<int>(loss_kind), db);
    err = rt_check_launch("cina attention_hinge_bwd (CUDA): db kernel launch");
  }
  if (!err) err = run_pass<T, kBwd>(args, B, variant, static_cast<char*>(ws) + unit_bytes, stream);
  rt_free(ws, stream);  // stream-ordered: released after the kernels that use it
  return err;
}

#define CINA_INSTANTIATE_CUDA(T)                                                                   \
  template const char* attention_hinge_fwd_cuda<T>(                                                \
      const T*, const T*, const T*, const T*, const T*, const bool*, AttentionHingeShape, double,  \
      int64_t, bool, T*, T*, T*, T*, T*, void*);                                                   \
  template const char* attention_hinge_bwd_cuda<T>(                                                \
      const T*, const T*, const T*, const T*, const T*, const bool*, const T*, const T*, const T*, \
      const T*, const T*, const T*, const T*, AttentionHingeShape, double, int64_t, T*, T*, T*,    \
      void*);
CINA_INSTANTIATE_CUDA(float)
CINA_INSTANTIATE_CUDA(double)
#undef CINA_INSTANTIATE_CUDA

}  // namespace cina
