// Sanitizer driver for the attention kernels (csrc/attention_hinge/cuda.cu) on the CPU emulator:
// the CPU stand-in for compute-sanitizer, for sessions and CI machines without a GPU.
//
// Built as an executable by tests/emulator/test_emulator_sanitizers.py, once with -fsanitize=thread
// and once with -fsanitize=address,undefined.  Every CUDA thread of the emulator is a std::thread
// and every barrier a std::barrier, so ThreadSanitizer sees a shared-memory (or global-memory)
// access pair of two threads with no barrier between them as a data race: the hazards that
// racecheck reports on a GPU.  AddressSanitizer sees reads and writes past the dynamic shared
// memory (its guard bytes are poisoned, emulator.h), past every input, output and workspace (all
// exactly sized heap blocks) and leaked workspaces; UndefinedBehaviorSanitizer sees misaligned
// vector and double accesses (the emulator's float4 / double2 carry the GPU's alignment), which
// fault on a GPU.
//
// The cases are sanitizer_cases.py's (tools/): every kernel variant (simt in float64 and
// float32; tf32x3, tf32, tf32x3p, tf32p), with and without column splits, forward without and
// with the auxiliaries, backward; masks with an empty dataset, a length-1 dataset and a fully
// padded tile.  Results are checked against a plain float64 evaluation of the formulas of
// attention_hinge.h, so a run also says whether the numbers were right.  Exit status: 0 when
// every case matched, 1 otherwise (the sanitizers exit with their own codes).
//
//   usage: san_attention [--quick]
#include "emulator.h"

#include "attention_hinge/cuda.cu"

#include <cstdio>
#include <random>

namespace {

struct Case {
  int64_t B, N, D;
};

template <typename T>
struct Inputs {
  std::vector<T> K, V, W, b, lam;
  std::unique_ptr<bool[]> mask;
};

template <typename T>
Inputs<T> make_inputs(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> unif;
  const int64_t B = c.B, N = c.N, D = c.D;
  Inputs<T> in;
  in.K.resize(B * N * D);
  in.V.resize(B * N);
  in.W.resize(B * N);
  in.b.resize(B);
  in.lam.resize(B);
  in.mask.reset(new bool[B * N]);
  for (auto& k : in.K) k = static_cast<T>(normal(rng));
  for (int64_t i = 0; i < B * N; ++i) {
    in.V[i] = static_cast<T>(normal(rng) / static_cast<double>(N));
    in.W[i] = unif(rng) < 0.5 ? T(1) : T(-1);
    in.mask[i] = unif(rng) > 0.25;
  }
  for (int64_t i = 0; i < B; ++i) {
    in.b[i] = static_cast<T>(0.1 * normal(rng));
    in.lam[i] = static_cast<T>(0.01 + 0.5 * unif(rng));
  }
  for (int64_t j = 0; j < N; ++j) in.mask[j] = false;  // an empty dataset
  if (B > 1) {  // a length-1 dataset
    for (int64_t j = 0; j < N; ++j) in.mask[N + j] = false;
    in.mask[N + N / 2] = true;
  }
  if (B > 2 && N > 65)  // a whole padded tile (when aligned) and more
    for (int64_t j = 1; j < 65; ++j) in.mask[2 * N + j] = false;
  return in;
}

// Plain float64 evaluation of the contract (attention_hinge.h), for one case.
struct Expected {
  std::vector<double> loss, out, lse, A, Bk, dK, dV, db;
};

template <typename T>
Expected evaluate(const Case& c, const Inputs<T>& in, double scale, int loss_kind,
                  const std::vector<T>& gL, const std::vector<T>& gO, const std::vector<T>& gLse) {
  const int64_t B = c.B, N = c.N, D = c.D;
  Expected e;
  e.loss.assign(B, 0.0);
  e.out.assign(B * N, 0.0);
  e.lse.assign(B * N, 0.0);
  e.A.assign(B * N * D, 0.0);
  e.Bk.assign(B * N * D, 0.0);
  e.dK.assign(B * N * D, 0.0);
  e.dV.assign(B * N, 0.0);
  e.db.assign(B, 0.0);
  std::vector<double> P(N * N), g(N), dl(N), cc(N);
  auto k = [&](int64_t bi, int64_t i, int64_t d) {
    return static_cast<double>(in.K[(bi * N + i) * D + d]);
  };
  for (int64_t bi = 0; bi < B; ++bi) {
    const bool* m = in.mask.get() + bi * N;
    const double bb = in.b[bi], lam = in.lam[bi], gl = gL[bi];
    for (int64_t i = 0; i < N; ++i) {
      if (!m[i]) continue;
      double mx = -INFINITY;
      for (int64_t j = 0; j < N; ++j) {
        if (!m[j]) continue;
        double s = 0.0;
        for (int64_t d = 0; d < D; ++d) s += k(bi, i, d) * k(bi, j, d);
        P[i * N + j] = s * scale;
        mx = std::max(mx, s * scale);
      }
      double l = 0.0;
      for (int64_t j = 0; j < N; ++j)
        if (m[j]) l += std::exp(P[i * N + j] - mx);
      const double lse = mx + std::log(l);
      double o = 0.0;
      for (int64_t j = 0; j < N; ++j) {
        if (!m[j]) continue;
        const double p = std::exp(P[i * N + j] - lse);
        P[i * N + j] = p;
        const double vj = in.V[bi * N + j];
        o += p * vj;
        for (int64_t d = 0; d < D; ++d) {
          e.A[(bi * N + i) * D + d] += p * vj * k(bi, j, d);
          e.Bk[(bi * N + i) * D + d] += p * k(bi, j, d);
        }
      }
      const int64_t ii = bi * N + i;
      e.out[ii] = o;
      e.lse[ii] = lse;
      const double wi = in.W[ii], vi = in.V[ii];
      const double r = 1.0 - wi * (o + bb);
      const double hinge =
          loss_kind == cina::kHinge ? std::max(r, 0.0) : 0.5 * std::max(r, 0.0) * std::max(r, 0.0);
      cc[i] = 0.5 * lam * std::exp(lse);
      e.loss[bi] += hinge + cc[i] * vi * o;
      const double u = loss_kind == cina::kHinge ? (r > 0.0 ? -wi : 0.0) : -wi * std::max(r, 0.0);
      g[i] = gl * (u + cc[i] * vi) + static_cast<double>(gO[ii]);
      dl[i] = g[i] * o - (gl * cc[i] * vi * o + static_cast<double>(gLse[ii]));
      e.db[bi] += gl * u;
    }
    for (int64_t j = 0; j < N; ++j) {
      if (!m[j]) continue;
      const int64_t jj = bi * N + j;
      double dv = gl * cc[j] * e.out[jj];
      for (int64_t d = 0; d < D; ++d)
        e.dK[jj * D + d] = scale * (g[j] * e.A[jj * D + d] - dl[j] * e.Bk[jj * D + d]);
      for (int64_t i = 0; i < N; ++i) {
        if (!m[i]) continue;
        const double p = P[i * N + j];
        dv += p * g[i];
        for (int64_t d = 0; d < D; ++d)
          e.dK[jj * D + d] +=
              scale * p * (static_cast<double>(in.V[jj]) * g[i] - dl[i]) * k(bi, i, d);
      }
      e.dV[jj] = dv;
    }
  }
  return e;
}

template <typename T>
double rel_err(const std::vector<T>& x, const std::vector<double>& y, bool* finite) {
  double worst = 0.0, ymax = 1.0;
  for (double v : y) ymax = std::max(ymax, std::fabs(v));
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(static_cast<double>(x[i]))) *finite = false;
    worst = std::max(worst, std::fabs(static_cast<double>(x[i]) - y[i]));
  }
  return worst / ymax;
}

template <typename T>
int run_case(const Case& c, uint64_t seed, const char* variant, const char* splits, double tol) {
  setenv("CINA_ATTENTION_KERNEL", variant, 1);
  setenv("CINA_ATTENTION_SPLITS", splits, 1);
  const Inputs<T> in = make_inputs<T>(c, seed);
  const int64_t B = c.B, N = c.N, D = c.D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int loss_kind = static_cast<int>(seed % 2);
  std::mt19937_64 rng(seed + 99);
  std::normal_distribution<double> normal;
  std::vector<T> gL(B), gO(B * N), gLse(B * N);
  for (auto& v : gL) v = static_cast<T>(normal(rng));
  for (auto& v : gO) v = static_cast<T>(normal(rng));
  for (auto& v : gLse) v = static_cast<T>(normal(rng));
  const cina::AttentionHingeShape shape{B, N, D};
  std::vector<T> loss(B), out(B * N), lse(B * N), A(B * N * D), Bk(B * N * D);
  std::vector<T> loss_p(B), out_p(B * N), lse_p(B * N);
  std::vector<T> dK(B * N * D), dV(B * N), db(B);
  const T *K = in.K.data(), *V = in.V.data(), *W = in.W.data(), *b = in.b.data(),
          *lam = in.lam.data();
  const bool* mask = in.mask.get();
  char tag[160];
  std::snprintf(tag, sizeof tag, "%s %-7s splits<=%s %lldx%lldx%lld loss_kind=%d",
                sizeof(T) == 8 ? "float64" : "float32", variant, splits, static_cast<long long>(B),
                static_cast<long long>(N), static_cast<long long>(D), loss_kind);
  auto failed = [&](const char* what, const char* msg) {
    std::printf("FAIL %s: %s: %s\n", tag, what, msg);
    return 1;
  };
  emu::launch_error.clear();
  if (const char* e = cina::attention_hinge_fwd_cuda<T>(
          K, V, W, b, lam, mask, shape, scale, loss_kind, false, loss_p.data(), out_p.data(),
          lse_p.data(), nullptr, nullptr, nullptr))
    return failed("forward (plain)", e);
  if (const char* e = cina::attention_hinge_fwd_cuda<T>(K, V, W, b, lam, mask, shape, scale,
                                                        loss_kind, true, loss.data(), out.data(),
                                                        lse.data(), A.data(), Bk.data(), nullptr))
    return failed("forward (aux)", e);
  if (const char* e = cina::attention_hinge_bwd_cuda<T>(
          K, V, W, b, lam, mask, out.data(), lse.data(), A.data(), Bk.data(), gL.data(), gO.data(),
          gLse.data(), shape, scale, loss_kind, dK.data(), dV.data(), db.data(), nullptr))
    return failed("backward", e);
  if (!emu::launch_error.empty()) return failed("launch", emu::launch_error.c_str());
  const Expected ex = evaluate(c, in, scale, loss_kind, gL, gO, gLse);
  struct Item {
    const char* name;
    const std::vector<T>* got;
    const std::vector<double>* want;
  };
  const Item items[] = {{"loss", &loss, &ex.loss},
                        {"out", &out, &ex.out},
                        {"lse", &lse, &ex.lse},
                        {"A", &A, &ex.A},
                        {"Bk", &Bk, &ex.Bk},
                        {"dK", &dK, &ex.dK},
                        {"dV", &dV, &ex.dV},
                        {"db", &db, &ex.db},
                        {"loss(plain)", &loss_p, &ex.loss},
                        {"out(plain)", &out_p, &ex.out},
                        {"lse(plain)", &lse_p, &ex.lse}};
  int failures = 0;
  double worst = 0.0;
  for (const Item& it : items) {
    bool finite = true;
    const double err = rel_err(*it.got, *it.want, &finite);
    worst = std::max(worst, err);
    if (!finite) {
      failures += failed(it.name, "not finite");
    } else if (err > tol) {
      char msg[64];
      std::snprintf(msg, sizeof msg, "relative error %.3g > %g", err, tol);
      failures += failed(it.name, msg);
    }
  }
  std::printf("case %s: worst relative error %.3g\n", tag, worst);
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  // D = 5 and 16: the DP = 16 kernels (and the prefetch variants); 40: DP = 64; 128 (quick: the
  // widest keys, SIMT and plain TF32 only, which are the variants that take them)
  std::vector<Case> shapes = {{3, 70, 5}, {3, 130, 16}, {2, 67, 40}};
  if (quick) shapes = {{3, 70, 5}, {3, 130, 16}};
  struct Run {
    bool f64;
    const char* variant;
  };
  const Run runs[] = {{true, "simt"},  {false, "simt"},    {false, "tf32x3"},
                      {false, "tf32"}, {false, "tf32x3p"}, {false, "tf32p"}};
  int failures = 0, cases = 0;
  for (const Run& r : runs)
    for (const char* splits : {"1", "3"})
      for (size_t i = 0; i < shapes.size(); ++i) {
        const Case& c = shapes[i];
        const uint64_t seed = 17 + i;
        const double tol =
            r.f64                                                                           ? 1e-9
            : (std::strcmp(r.variant, "tf32") == 0 || std::strcmp(r.variant, "tf32p") == 0) ? 3e-3
                                                                                            : 1e-4;
        failures += r.f64 ? run_case<double>(c, seed, r.variant, splits, tol)
                          : run_case<float>(c, seed, r.variant, splits, tol);
        ++cases;
      }
  if (!quick) {  // wide keys: D = 128 (SIMT kernels; tf32x3 falls back to them above D = 64)
    failures += run_case<float>({2, 65, 128}, 5, "tf32", "1", 3e-3);
    failures += run_case<float>({2, 65, 128}, 6, "tf32x3", "3", 1e-4);
    cases += 2;
  }
  std::printf("san_attention: %d cases, %s\n", cases, failures == 0 ? "OK" : "FAILURES");
  return failures == 0 ? 0 : 1;
}
