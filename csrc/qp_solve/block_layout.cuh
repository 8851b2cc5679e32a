// The block solver's per-block workspace layout, kernel argument (QPArgs) and shared-memory
// layout (reduction scratch, step control), identical on host and device.
#pragma once
#include "qp_solve/device.cuh"

namespace cina {
namespace qp_cuda_detail {

// Per-block workspace layout (byte offsets), identical on host and device.
struct Layout {
  int64_t x, G, p, lo, up, c, invc, diag, sgn, lse, Xt, bp, idx, slot, owner, flags, cache, total;
};
CINA_QP_HD int64_t align256(int64_t v) { return (v + 255) & ~int64_t(255); }
CINA_QP_HD Layout make_layout(int64_t N, int64_t D, bool feats, int64_t cap, int64_t m2,
                              int64_t tsize) {
  Layout L{};
  int64_t o = 0;
  const int64_t nd = align256(N * 8);
  L.x = o;
  o += nd;
  L.G = o;
  o += nd;
  L.p = o;
  o += nd;
  L.lo = o;
  o += nd;
  L.up = o;
  o += nd;
  L.c = o;
  o += nd;
  L.invc = o;
  o += nd;
  L.diag = o;
  o += nd;
  L.sgn = o;
  o += nd;
  L.lse = o;
  o += nd;
  L.Xt = o;
  o += feats ? align256(N * D * 8) : 0;
  L.bp = o;
  o += align256(m2 * 8);
  L.idx = o;
  o += align256(N * 4);
  L.slot = o;
  o += align256(N * 4);
  L.owner = o;
  o += align256(cap * 4);
  L.flags = o;
  o += align256(N);
  L.cache = o;
  o += align256(cap * N * tsize);
  L.total = o > 0 ? o : 256;
  return L;
}

template <typename T>
struct QPArgs {
  QPSource<T> S;
  QPProblems<T> pb;
  QPOutputs<T> out;
  unsigned char* ws;    // gridDim.x blocks of block_bytes
  int64_t block_bytes;
  int64_t cap;          // cache slots per block (>= 2)
  int64_t m2;  // sort buffer length (power of two >= 2N) when there is an equality, else 0
  int* counter;  // next problem
};

// Shared memory: reduction scratch (one entry per warp), step control, scan scratch.
struct Red {
  double m, M, s;
  int im, is;
};
struct Ctl {
  int q, n, used, victim;
  int slot_a, need_a, slot_b, need_b, progress;
  double dxa, dxb, df;
};
CINA_QP_HD size_t smem_bytes(int nt) {
  return 32 * sizeof(Red) + sizeof(Ctl) + sizeof(int) * (nt + 1);
}

}  // namespace qp_cuda_detail
}  // namespace cina
