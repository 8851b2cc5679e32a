// Sanitizer driver for the QP solver kernels (csrc/qp_solve/cuda.cu) on the CPU emulator: the
// CPU stand-in for compute-sanitizer (see san_attention.cpp for what each sanitizer sees).
//
// Cases (tools/sanitizer_cases.py's, plus the helper kernels): the "overlap" SVM dual (RBF,
// equality c = W) in float64, and in float32 with the linear kernel and a 2-slot column cache; the
// "ate" arm problems (simplex, cina kernel: the lse and row-sum kernels run first); a generic box
// QP from an explicit matrix without and with a general equality.  Each runs with both CUDA
// algorithms: one block per problem ("block", also with 96-thread blocks) and the working-set
// decomposition ("ws", working sets of 8 and 5, so that these small problems take many
// select / solve / update rounds).  Checked: converged, the reported KKT violation <= tol, the
// bounds and the equality, the reported objective against 1/2 x'Qx - p'x evaluated here in
// float64, the cina lse and row sums against float64 sums, and the two algorithms' objectives
// against each other.  Exit status 0 when every check passed, 1 otherwise.
//
//   usage: san_qp [--quick]
#include "emulator.h"

#include "qp_solve/qp_solve.h"

#include "qp_solve/cuda.cu"

#include <cstdio>
#include <random>

namespace {

using cina::QPOptions;
using cina::QPOutputs;
using cina::QPProblems;
using cina::QPSource;

template <typename T>
struct Problem {  // one batch: a source and its problems, all arrays exactly sized
  int64_t kind = cina::kQPDense, S = 0, N = 0, D = 0, P = 0;
  double scale = 0.0;
  std::vector<T> X;
  std::vector<double> gamma, lse;
  std::vector<int64_t> src;
  std::unique_ptr<bool[]> mask;
  std::vector<T> sign, p, lo, up, c, d;
  std::vector<double> qscale, diag_add, tol;
  std::vector<int64_t> max_iter;
  bool has_sign = false, has_eq = false;

  // Q_ij of problem q, in float64 (qp_solve.h)
  double q(int64_t pr, int64_t i, int64_t j) const {
    const int64_t s = src[pr];
    double k;
    if (kind == cina::kQPDense) {
      k = X[(s * N + i) * N + j];
    } else {
      const T* xi = X.data() + (s * N + i) * D;
      const T* xj = X.data() + (s * N + j) * D;
      double dot = 0.0, sq = 0.0;
      for (int64_t f = 0; f < D; ++f) {
        dot += static_cast<double>(xi[f]) * xj[f];
        const double df = static_cast<double>(xi[f]) - xj[f];
        sq += df * df;
      }
      if (kind == cina::kQPLinear) k = dot;
      else if (kind == cina::kQPRbf) k = std::exp(-gamma[s] * sq);
      else if (kind == cina::kQPLaplace) k = std::exp(-gamma[s] * std::sqrt(sq));
      else k = std::exp(scale * dot - lse[s * N + i] - lse[s * N + j]);
    }
    const double si = has_sign ? static_cast<double>(sign[pr * N + i]) : 1.0;
    const double sj = has_sign ? static_cast<double>(sign[pr * N + j]) : 1.0;
    return qscale[pr] * si * sj * k + (i == j ? diag_add[pr] : 0.0);
  }
};

template <typename T>
struct Result {
  std::vector<T> x, nu, obj, kkt;
  std::vector<int64_t> iters;
  std::unique_ptr<bool[]> conv;
};

template <typename T>
const char* solve(const Problem<T>& pb, int64_t cache_bytes, Result<T>& r) {
  const int64_t P = pb.P, N = pb.N;
  r.x.assign(P * N, T(0));
  r.nu.assign(P, T(0));
  r.obj.assign(P, T(0));
  r.kkt.assign(P, T(0));
  r.iters.assign(P, 0);
  r.conv.reset(new bool[P]);
  QPSource<T> s{pb.kind,     pb.S,
                N,           pb.D,
                pb.X.data(), pb.gamma.empty() ? nullptr : pb.gamma.data(),
                pb.scale,    pb.lse.empty() ? nullptr : pb.lse.data()};
  QPProblems<T> q{P,
                  N,
                  pb.src.data(),
                  pb.mask.get(),
                  pb.has_sign ? pb.sign.data() : nullptr,
                  pb.qscale.data(),
                  pb.diag_add.data(),
                  pb.p.data(),
                  pb.lo.data(),
                  pb.up.data(),
                  pb.has_eq ? pb.c.data() : nullptr,
                  pb.has_eq ? pb.d.data() : nullptr,
                  nullptr,
                  pb.tol.data(),
                  pb.max_iter.data()};
  QPOptions opt;
  opt.cache_bytes = cache_bytes;
  QPOutputs<T> o{r.x.data(), r.nu.data(), r.obj.data(), r.kkt.data(), r.iters.data(), r.conv.get()};
  emu::launch_error.clear();
  if (const char* e = cina::qp_solve_cuda<T>(s, q, opt, o, nullptr)) return e;
  return emu::launch_error.empty() ? nullptr : emu::launch_error.c_str();
}

int failures = 0;

void fail(const std::string& tag, const std::string& msg) {
  std::printf("FAIL %s: %s\n", tag.c_str(), msg.c_str());
  ++failures;
}

// run one algorithm setting; checks of the result against the problem; returns the objectives
template <typename T>
std::vector<double> run(const std::string& name, const Problem<T>& pb, const char* algo,
                        const char* ws, const char* threads, int64_t cache_bytes) {
  setenv("CINA_QP_CUDA_ALGO", algo, 1);
  if (ws) setenv("CINA_QP_WS_SIZE", ws, 1);
  else unsetenv("CINA_QP_WS_SIZE");
  if (threads) setenv("CINA_QP_THREADS", threads, 1);
  else unsetenv("CINA_QP_THREADS");
  const std::string tag = name + " [" + algo + (ws ? std::string(" ws=") + ws : "") +
                          (threads ? std::string(" threads=") + threads : "") + "]";
  Result<T> r;
  std::vector<double> objs(pb.P, NAN);
  if (const char* e = solve(pb, cache_bytes, r)) {
    fail(tag, e);
    return objs;
  }
  const int64_t N = pb.N;
  const double feas = sizeof(T) == 8 ? 1e-9 : 1e-4;
  int64_t steps = 0;
  for (int64_t pr = 0; pr < pb.P; ++pr) {
    const bool* m = pb.mask.get() + pr * N;
    const T* x = r.x.data() + pr * N;
    steps += r.iters[pr];
    if (!r.conv[pr]) fail(tag, "problem " + std::to_string(pr) + " not converged");
    if (!(static_cast<double>(r.kkt[pr]) <= pb.tol[pr]))
      fail(tag, "problem " + std::to_string(pr) + ": reported KKT violation " +
                    std::to_string(r.kkt[pr]) + " > tol");
    double qx = 0.0, px = 0.0, cx = 0.0, xmax = 1.0;
    for (int64_t i = 0; i < N; ++i) {
      const double xi = x[i];
      if (!m[i]) {
        if (xi != 0.0) fail(tag, "a padded unit has x != 0");
        continue;
      }
      if (!std::isfinite(xi)) fail(tag, "x not finite");
      xmax = std::max(xmax, std::fabs(xi));
      if (xi < static_cast<double>(pb.lo[pr * N + i]) - feas ||
          xi > static_cast<double>(pb.up[pr * N + i]) + feas)
        fail(tag, "x outside its bounds");
      px += static_cast<double>(pb.p[pr * N + i]) * xi;
      if (pb.has_eq) cx += static_cast<double>(pb.c[pr * N + i]) * xi;
      for (int64_t j = 0; j < N; ++j)
        if (m[j]) qx += xi * pb.q(pr, i, j) * static_cast<double>(x[j]);
    }
    if (pb.has_eq && std::fabs(cx - static_cast<double>(pb.d[pr])) > feas * xmax * N)
      fail(tag, "equality off by " + std::to_string(cx - static_cast<double>(pb.d[pr])));
    const double obj = 0.5 * qx - px;
    objs[pr] = obj;
    const double rtol = sizeof(T) == 8 ? 1e-9 : 1e-4;
    if (std::fabs(obj - static_cast<double>(r.obj[pr])) > rtol * (1.0 + std::fabs(obj)))
      fail(tag, "problem " + std::to_string(pr) + ": reported objective " +
                    std::to_string(r.obj[pr]) + " against " + std::to_string(obj));
  }
  std::printf("%s: %lld problems, %lld steps\n", tag.c_str(), static_cast<long long>(pb.P),
              static_cast<long long>(steps));
  return objs;
}

template <typename T>
void run_all(const std::string& name, const Problem<T>& pb, bool quick,
             int64_t cache_bytes = int64_t(1) << 30) {
  const std::vector<double> ref = run(name, pb, "block", nullptr, nullptr, cache_bytes);
  std::vector<std::vector<double>> others;
  if (!quick) others.push_back(run(name, pb, "block", nullptr, "96", cache_bytes));
  others.push_back(run(name, pb, "ws", "8", nullptr, cache_bytes));
  if (!quick) others.push_back(run(name, pb, "ws", "5", nullptr, cache_bytes));
  // both algorithms converge to tol: the objectives agree to about tol * |x| (and rounding)
  const double rtol = sizeof(T) == 8 ? 1e-7 : 2e-3;
  for (const auto& o : others)
    for (int64_t pr = 0; pr < pb.P; ++pr)
      if (!(std::fabs(o[pr] - ref[pr]) <= rtol * (1.0 + std::fabs(ref[pr]))))
        fail(name, "the algorithms disagree on the optimum of problem " + std::to_string(pr));
}

// a source of S datasets of N units and D features, with a mask (unit 0 and 1 always valid)
template <typename T>
void make_source(Problem<T>& pb, int64_t kind, int64_t S, int64_t N, int64_t D, uint64_t seed,
                 std::unique_ptr<bool[]>& smask, std::vector<T>& W) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> unif;
  pb.kind = kind;
  pb.S = S;
  pb.N = N;
  pb.D = D;
  pb.X.resize(S * N * D);
  for (auto& v : pb.X) v = static_cast<T>(normal(rng));
  smask.reset(new bool[S * N]);
  W.resize(S * N);
  for (int64_t i = 0; i < S * N; ++i) {
    smask[i] = unif(rng) > 0.2;
    W[i] = unif(rng) < 0.4 ? T(1) : T(-1);
  }
  for (int64_t s = 0; s < S; ++s) {
    smask[s * N] = smask[s * N + 1] = true;
    W[s * N] = T(1);
    W[s * N + 1] = T(-1);
  }
  if (S > 2)
    for (int64_t j = 20; j < N; ++j) smask[2 * N + j] = false;
}

template <typename T>
Problem<T> overlap(int64_t kind, uint64_t seed, double tol) {
  Problem<T> pb;
  std::unique_ptr<bool[]> smask;
  std::vector<T> W;
  make_source(pb, kind, 3, 45, 5, seed, smask, W);
  const int64_t S = pb.S, N = pb.N;
  pb.gamma.assign(S, 0.2);
  pb.P = S;
  pb.src.resize(S);
  for (int64_t s = 0; s < S; ++s) pb.src[s] = s;
  pb.mask = std::move(smask);
  pb.has_sign = pb.has_eq = true;
  pb.sign.resize(S * N);
  pb.c.resize(S * N);
  pb.p.resize(S * N);
  pb.lo.assign(S * N, T(0));
  pb.up.resize(S * N);
  for (int64_t i = 0; i < S * N; ++i) {
    const bool v = pb.mask[i];
    pb.sign[i] = v ? W[i] : T(0);
    pb.c[i] = v ? W[i] : T(0);
    pb.p[i] = v ? T(1) : T(0);
    pb.up[i] = v ? T(1) : T(0);
  }
  pb.d.assign(S, T(0));
  pb.qscale.assign(S, 1.0 / 0.3);
  pb.diag_add.assign(S, 0.0);
  pb.tol.assign(S, tol);
  pb.max_iter.assign(S, 100000);
  return pb;
}

// "ate": per source, a treated-arm and a control-arm simplex problem (cina kernel)
template <typename T>
Problem<T> ate_cina(uint64_t seed, double tol) {
  Problem<T> pb;
  std::unique_ptr<bool[]> smask;
  std::vector<T> W;
  make_source(pb, cina::kQPCina, 3, 45, 5, seed, smask, W);
  const int64_t S = pb.S, N = pb.N, D = pb.D;
  pb.scale = 1.0 / std::sqrt(static_cast<double>(D));
  pb.lse.assign(S * N, NAN);
  emu::launch_error.clear();
  if (const char* e = cina::qp_kernel_lse_cuda<T>(pb.X.data(), smask.get(), S, N, D, pb.scale,
                                                  pb.lse.data(), nullptr))
    fail("lse kernel", e);
  for (int64_t s = 0; s < S; ++s)  // lse against float64 sums
    for (int64_t i = 0; i < N; ++i) {
      double want = 0.0;
      if (smask[s * N + i]) {
        double acc = 0.0;
        for (int64_t j = 0; j < N; ++j) {
          if (!smask[s * N + j]) continue;
          double dot = 0.0;
          for (int64_t f = 0; f < D; ++f)
            dot += static_cast<double>(pb.X[(s * N + i) * D + f]) * pb.X[(s * N + j) * D + f];
          acc += std::exp(pb.scale * dot);
        }
        want = std::log(acc);
      }
      if (!(std::fabs(pb.lse[s * N + i] - want) <= 1e-12 * (1.0 + std::fabs(want)))) {
        fail("lse kernel", "wrong lse at unit " + std::to_string(i));
        return pb;
      }
    }
  std::vector<double> rows(S * N, NAN);
  QPSource<T> src{pb.kind, S, N, D, pb.X.data(), nullptr, pb.scale, pb.lse.data()};
  if (const char* e =
          cina::qp_kernel_rowsum_cuda<T>(src, smask.get(), smask.get(), rows.data(), nullptr))
    fail("rowsum kernel", e);
  pb.P = 2 * S;
  pb.src.resize(pb.P);
  pb.mask.reset(new bool[pb.P * N]);
  pb.p.resize(pb.P * N);
  pb.lo.assign(pb.P * N, T(0));
  pb.up.resize(pb.P * N);
  pb.c.resize(pb.P * N);
  pb.has_eq = true;
  for (int64_t pr = 0; pr < pb.P; ++pr) {
    const int64_t s = pr % S;
    pb.src[pr] = s;
    const T arm = pr < S ? T(1) : T(-1);
    int64_t n = 0;
    for (int64_t j = 0; j < N; ++j) n += smask[s * N + j];
    for (int64_t i = 0; i < N; ++i) {
      const bool v = smask[s * N + i] && W[s * N + i] == arm;
      pb.mask[pr * N + i] = v;
      pb.up[pr * N + i] = v ? T(INFINITY) : T(0);
      pb.c[pr * N + i] = v ? T(1) : T(0);
      pb.p[pr * N + i] = v ? static_cast<T>(2.0 * rows[s * N + i] / static_cast<double>(n)) : T(0);
      if (pr < S && smask[s * N + i]) {  // row sums against float64 sums (once per source)
        double want = 0.0;
        for (int64_t j = 0; j < N; ++j) {
          if (!smask[s * N + j]) continue;
          double dot = 0.0;
          for (int64_t f = 0; f < D; ++f)
            dot += static_cast<double>(pb.X[(s * N + i) * D + f]) * pb.X[(s * N + j) * D + f];
          want += std::exp(pb.scale * dot - pb.lse[s * N + i] - pb.lse[s * N + j]);
        }
        if (!(std::fabs(rows[s * N + i] - want) <= 1e-12 * (1.0 + std::fabs(want))))
          fail("rowsum kernel", "wrong row sum at unit " + std::to_string(i));
      }
    }
  }
  pb.d.assign(pb.P, T(1));
  pb.qscale.assign(pb.P, 2.0);
  pb.diag_add.assign(pb.P, 2.0 * 0.3);
  pb.tol.assign(pb.P, tol);
  pb.max_iter.assign(pb.P, 100000);
  return pb;
}

// generic box QP on [-1, 1] from an explicit positive definite matrix, optionally c'x = d
Problem<double> generic(bool equality, uint64_t seed) {
  Problem<double> pb;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  const int64_t S = 2, N = 20;
  pb.kind = cina::kQPDense;
  pb.S = S;
  pb.N = N;
  pb.D = N;
  std::vector<double> A(S * N * N);
  for (auto& v : A) v = normal(rng);
  pb.X.assign(S * N * N, 0.0);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = i == j ? 0.05 : 0.0;
        for (int64_t k = 0; k < N; ++k) acc += A[(s * N + i) * N + k] * A[(s * N + j) * N + k] / N;
        pb.X[(s * N + i) * N + j] = acc;
      }
  pb.P = S;
  pb.src = {0, 1};
  pb.mask.reset(new bool[S * N]);
  for (int64_t i = 0; i < S * N; ++i) pb.mask[i] = true;
  pb.p.resize(S * N);
  for (auto& v : pb.p) v = normal(rng);
  pb.lo.assign(S * N, -1.0);
  pb.up.assign(S * N, 1.0);
  pb.has_eq = equality;
  if (equality) {
    pb.c.resize(S * N);
    for (auto& v : pb.c) v = normal(rng);
    pb.d = {0.2, -0.1};
  }
  pb.qscale.assign(S, 1.0);
  pb.diag_add.assign(S, 0.0);
  pb.tol.assign(S, 1e-9);
  pb.max_iter.assign(S, 100000);
  return pb;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  run_all("overlap rbf float64", overlap<double>(cina::kQPRbf, 3, 1e-8), quick);
  run_all("ate cina float64", ate_cina<double>(4, 1e-8), quick);
  run_all("generic box qp", generic(false, 5), quick);
  run_all("generic qp with equality", generic(true, 6), quick);
  if (!quick) {
    // float32, linear kernel, a column cache of 2 slots (a budget of 200 bytes)
    run_all("overlap linear float32 (2-slot cache)", overlap<float>(cina::kQPLinear, 7, 1e-4),
            quick, 200);
    run_all("ate cina float32", ate_cina<float>(8, 1e-4), quick);
    run_all("overlap laplace float64", overlap<double>(cina::kQPLaplace, 9, 1e-8), quick);
  }
  std::printf("san_qp: %s\n", failures == 0 ? "OK" : "FAILURES");
  return failures == 0 ? 0 : 1;
}
