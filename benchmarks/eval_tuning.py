"""Data-driven tuning of KernelBalancing (docs/method.md §8): the old defaults (gamma = 1/p,
fixed lam) against the median heuristic and lam="auto", and the laplace kernel.

    python benchmarks/eval_tuning.py [--seeds 5] [--ihdp 10] [--n 2000] [--p 50 200] [--lognormal 50] [--quick]
                                     [--lalonde psid cps] [--no-sim] [--configs ...]
                                     [--factor F] [--slack S] [--out benchmarks/out]

Designs (mean absolute error of the estimate against the truth of its estimand):
  * "sim p=P": N units, P standard-normal covariates (pairwise correlation 0.3), the propensity
    and the outcome depending non-linearly on the first 5, a heterogeneous effect 1 + x1 / 2;
    estimand "ate", truth the sample mean of the unit effects; ``seeds`` replications;
  * "sim-lognormal p=P" (``--lognormal P``): the same with the first five covariates observed as
    exp(x) (skewed, heavy right tail) and the outcome linear in the first observed one;
  * IHDP-A / IHDP-B: ``ihdp`` replications, estimand "ate" (truth mean(mu1 - mu0));
  * LaLonde-PSID / -CPS: |ATT estimate - 1794| on the full data (one dataset each; CPS has
    15,992 controls, solved exactly).
Writes eval_tuning.json and eval_tuning.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cina_ext.data import LALONDE_BENCHMARK_ATT, load_ihdp, load_lalonde  # noqa: E402
from cina_ext.estimators import KernelBalancing, tuning  # noqa: E402

# "old": the defaults before the tuning rules (gamma 1/p, lam 0.01 for ate/att, the standardised
# covariates); the defaults now are "median + lam auto" on the normal scores for ate/att
# (KernelBalancing() with no tuning arguments, the row "defaults").
_STD = {"scaling": "standard"}
CONFIGS = {
    "old (1/p, fixed lam)": dict(gamma="scale", lam=0.01, **_STD),
    "median gamma": dict(gamma="median", lam=0.01, **_STD),
    "lam auto": dict(gamma="scale", lam="auto", **_STD),
    "median + lam auto": dict(gamma="median", lam="auto", **_STD),
    "median + lam auto, normal scores": dict(gamma="median", lam="auto", scaling="normal-scores"),
    "defaults": dict(),
    "laplace median": dict(kernel="laplace", gamma="median", lam=0.01, **_STD),
    "laplace median + auto": dict(kernel="laplace", gamma="median", lam="auto", **_STD),
}


def simulate(n: int, p: int, seed: int, lognormal: bool = False):
    """The "sim" design; ``lognormal``: the first five covariates are observed as ``exp(x)`` (skewed,
    heavy-tailed, like earnings) and the outcome is linear in the first observed one."""
    rng = np.random.default_rng([seed, p, 7])
    rho = 0.3
    z = rng.standard_normal((n, p))
    X = np.sqrt(1 - rho) * z + np.sqrt(rho) * rng.standard_normal((n, 1))
    x1, x2, x3, x4, x5 = (X[:, j] for j in range(5))
    logit = 0.6 * x1 - 0.5 * x2 + 0.4 * x3 * x4 + 0.3 * (x5**2 - 1)
    T = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    mu0 = x1 + 0.5 * x2**2 + np.sin(2 * x3) + 0.5 * x4 * x5
    tau = 1.0 + 0.5 * x1
    if lognormal:
        X = X.copy()
        X[:, :5] = np.exp(X[:, :5])
        mu0 = mu0 - x1 + 0.5 * X[:, 0]
    Y = mu0 + T * tau + rng.standard_normal(n)
    return X, T, Y, float(tau.mean())


def run(est_kw, X, T, Y, estimand, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est = KernelBalancing(estimand=estimand, random_state=seed, **est_kw).fit(X, T)
        val = est.ate(Y)
        dt = time.perf_counter() - t0
    return float(val), dt, est.gamma_, est.lam_


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ihdp", type=int, default=10)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--lognormal", type=int, nargs="*", default=[], help="covariate counts of the lognormal sim")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--lalonde", nargs="*", default=["psid", "cps"], help="LaLonde control groups")
    ap.add_argument("--no-sim", action="store_true", help="skip the simulated designs")
    ap.add_argument("--factor", type=float, default=None, help="override tuning.LAM_FACTOR")
    ap.add_argument("--slack", type=float, default=None, help="override tuning.LAM_SLACK")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/out")
    a = ap.parse_args(argv)
    if a.factor is not None:
        tuning.LAM_FACTOR = a.factor
    if a.slack is not None:
        tuning.LAM_SLACK = a.slack
    if a.quick:
        a.seeds, a.ihdp, a.n = 2, 3, 600
    designs = []
    for p in [] if a.no_sim else a.p:
        designs.append((f"sim p={p} N={a.n}", "ate", [simulate(a.n, p, s) for s in range(a.seeds)]))
    for p in [] if a.no_sim else a.lognormal:
        reps = [simulate(a.n, p, s, lognormal=True) for s in range(a.seeds)]
        designs.append((f"sim-lognormal p={p} N={a.n}", "ate", reps))
    for surf in ("A", "B"):
        reps = []
        for s in range(a.ihdp):
            ds = load_ihdp(surf, seed=s)
            reps.append((ds.X, ds.T, ds.Y, float(ds.ate)))
        designs.append((f"IHDP-{surf}", "ate", reps))
    for controls in a.lalonde:
        ds = load_lalonde(controls)
        designs.append((f"LaLonde-{controls.upper()} (att)", "att", [(ds.X, ds.T, ds.Y, LALONDE_BENCHMARK_ATT)]))
    rows = {}
    for name, estimand, reps in designs:
        for cfg in a.configs:
            errs, times, gammas, lams = [], [], [], []
            for s, (X, T, Y, truth) in enumerate(reps):
                val, dt, g, lam = run(CONFIGS[cfg], X, T, Y, estimand, s)
                errs.append(abs(val - truth))
                times.append(dt)
                gammas.append(g)
                lams.append(lam)
            rows.setdefault(name, {})[cfg] = dict(
                mae=float(np.mean(errs)),
                se=float(np.std(errs, ddof=1) / np.sqrt(len(errs))) if len(errs) > 1 else None,
                seconds=float(np.mean(times)),
                gamma=[None if g is None else float(g) for g in gammas],
                lam=[float(v) for v in lams],
                errors=[float(e) for e in errs],
            )
            print(f"{name:24s} {cfg:24s} MAE {np.mean(errs):10.4f}  {np.mean(times):6.2f} s  lam {lams}", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        lam_factor=tuning.LAM_FACTOR,
        lam_slack=tuning.LAM_SLACK,
        argv=sys.argv[1:],
        machine=platform.machine(),
        python=platform.python_version(),
        n=a.n,
        seeds=a.seeds,
    )
    (out / "eval_tuning.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = ["| design | " + " | ".join(a.configs) + " |", "|---|" + "---|" * len(a.configs)]
    for name, r in rows.items():
        cells = []
        for cfg in a.configs:
            v = r[cfg]
            cells.append(f"{v['mae']:.4g}" + (f" ± {v['se']:.2g}" if v["se"] is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "eval_tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
