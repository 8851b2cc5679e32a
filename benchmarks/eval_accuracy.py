"""Accuracy of every estimator against known answers: synthetic families and LaLonde.

    python benchmarks/eval_accuracy.py [--n 500] [--count 10] [--quick] [--out benchmarks/results]

Rows: each method with the estimand it targets.  Columns: mean absolute error of the estimate
against the truth *for that estimand* on ``count`` seeded Setoguchi datasets (scenarios A-G,
heterogeneous effect) and ``count`` random-ER-graph datasets; |estimate - 1794| on LaLonde-CPS and
LaLonde-PSID (an ATT benchmark: every method is run with estimand "att" there, where it applies);
and the mean wall time per dataset.  Writes eval_accuracy.json and eval_accuracy.md.
A separate table times CInA (Algorithm 1) against KernelBalancing at N = 500 and 2000.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cina_ext.data import make_er_dataset, make_setoguchi  # noqa: E402
from cina_ext.estimators import make_estimator  # noqa: E402

# (row label, method name, estimand on synthetic data, estimand on LaLonde)
ROWS = [
    ("naive", "naive", "ate", "att"),
    ("IPW", "ipw", "ate", "att"),
    ("SN-IPW", "snipw", "ate", "att"),
    ("DoubleML", "dml", "ate", "att"),
    ("KernelBalancing", "kernel", "ate", "att"),
    ("KernelBalancing (overlap)", "kernel", "overlap", "overlap"),
    ("CInA (Alg. 1)", "cina", "ate", "att"),
    ("CInA (Alg. 1, overlap)", "cina", "overlap", "overlap"),
]


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def run_one(method, estimand, ds, seed):
    est = make_estimator(method, estimand=estimand, random_state=seed)
    X = ds.X
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, ds.T)
        value = float(est.ate(ds.Y))
    return value, time.perf_counter() - t0


def synthetic(count, n, quick):
    sets = {"setoguchi": [], "er": []}
    for s in range(count):
        sets["setoguchi"].append(make_setoguchi(n, scenario="ABCDEFG"[s % 7], seed=1000 + s, heterogeneous=True))
        sets["er"].append(make_er_dataset(n, d=8, seed=2000 + s))
    return sets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="units per synthetic dataset")
    ap.add_argument("--count", type=int, default=10, help="datasets per synthetic family")
    ap.add_argument("--lalonde-n", type=int, default=0,
                    help="subsample LaLonde to this many units (all 185 treated kept); 0 = full data")
    ap.add_argument("--timing-n", type=int, nargs="*", default=[500, 2000])
    ap.add_argument("--quick", action="store_true", help="3 datasets per family, n=200, no LaLonde")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.quick:
        args.count, args.n, args.timing_n = 3, 200, [200]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    sets = synthetic(args.count, args.n, args.quick)
    lalonde = {}
    if not args.quick:
        try:
            from cina_ext.data import load_lalonde

            for c in ("cps", "psid"):
                ds = load_lalonde(controls=c)
                if args.lalonde_n and ds.n > args.lalonde_n:
                    ds = ds.subsample(args.lalonde_n, seed=0, keep_treated=True)
                lalonde[f"lalonde-{c}"] = ds
        except ImportError as exc:
            print(f"LaLonde skipped: {exc}")

    results = []
    for label, method, est_syn, est_lal in ROWS:
        row = {"method": label, "estimand": est_syn, "estimand_lalonde": est_lal}
        times = []
        for fam, dss in sets.items():
            errs = []
            for i, ds in enumerate(dss):
                truth = ds.truth(est_syn)
                try:
                    val, dt = run_one(method, est_syn, ds, i)
                except Exception as exc:  # a failing method is reported, not hidden
                    print(f"{label} on {fam}[{i}] failed: {exc}")
                    continue
                times.append(dt)
                if truth is not None:
                    errs.append(abs(val - truth))
            row[f"mae_{fam}"] = float(np.mean(errs)) if errs else None
        for name, ds in lalonde.items():
            try:
                val, dt = run_one(method, est_lal, ds, 0)
                row[f"abs_err_{name}"] = abs(val - 1794.34)
                row[f"estimate_{name}"] = val
                row[f"time_{name}"] = dt
            except Exception as exc:
                print(f"{label} on {name} failed: {exc}")
                row[f"abs_err_{name}"] = None
        row["mean_time_s"] = float(np.mean(times)) if times else None
        results.append(row)
        print(json.dumps(row))

    timing = []
    for n in args.timing_n:
        ds = make_setoguchi(n, scenario="G", seed=7, heterogeneous=True)
        for label, method in (("CInA (Alg. 1)", "cina"), ("KernelBalancing", "kernel")):
            for estimand in ("overlap", "ate"):
                _, dt = run_one(method, estimand, ds, 0)
                timing.append({"method": label, "estimand": estimand, "n": n, "seconds": dt})
                print(json.dumps(timing[-1]))

    meta = {"machine": machine(), "n": args.n, "count": args.count,
            "lalonde_sizes": {k: v.n for k, v in lalonde.items()}}
    (out / "eval_accuracy.json").write_text(json.dumps({"meta": meta, "accuracy": results, "timing": timing}, indent=2))

    def fmt(x, digits=3):
        return "-" if x is None else (f"{x:.{digits}f}" if abs(x) < 100 else f"{x:.0f}")

    lines = [f"Machine: {meta['machine']}", "",
             f"MAE over {args.count} datasets per family (n = {args.n}), truth for the row's estimand; "
             f"LaLonde: |estimate - 1794| (sizes {meta['lalonde_sizes']})", "",
             "| method | estimand (synthetic / LaLonde) | Setoguchi MAE | ER MAE | LaLonde-CPS | LaLonde-PSID | time / dataset (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['estimand']} / {r['estimand_lalonde']} | {fmt(r['mae_setoguchi'])} | "
                     f"{fmt(r['mae_er'])} | {fmt(r.get('abs_err_lalonde-cps'))} | {fmt(r.get('abs_err_lalonde-psid'))} | "
                     f"{fmt(r['mean_time_s'], 2)} |")
    lines += ["", "Wall time of one fit + estimate (Setoguchi G):", "",
              "| method | estimand | N | seconds |", "|---|---|---|---|"]
    for t in timing:
        lines.append(f"| {t['method']} | {t['estimand']} | {t['n']} | {t['seconds']:.2f} |")
    (out / "eval_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
