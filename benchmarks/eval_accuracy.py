"""Paper-style accuracy table: every estimator, including zero-shot CInA, against known answers.

    python benchmarks/eval_accuracy.py [--n 500] [--count 20] [--ihdp 10] [--zs PATH] [--zs-s PATH]
                                       [--quick] [--out benchmarks/out]

Columns (mean absolute error of the estimate against the truth of its estimand):
  * Setoguchi / ER, "ID": ``count`` held-out datasets drawn from the zero-shot training prior
    (``sample_datasets(..., setting="id")``, seeds the training stream never uses);
  * Setoguchi / ER, "OOD": the held-out settings (``setting="ood"``: shifted coefficients and
    heterogeneous effects; denser graphs, unseen mechanisms and noise laws);
  * IHDP-A / IHDP-B: ``ihdp`` replications of each response surface (econml covariates);
  * LaLonde-CPS / -PSID: |estimate - 1794| on the full data (an ATT benchmark).
The estimand is the ATE on synthetic data and IHDP and the ATT on LaLonde, for every method.
Rows: naive, IPW, SN-IPW, DoubleML, KernelBalancing, CInA (Algorithm 1, exact bilevel), CInA-ZS
(the shipped zero-shot model unless ``--zs``), CInA-ZS refined by 50 solver iterations, and
CInA-ZS-S (the shipped supervised model unless ``--zs-s``).  Time: mean wall seconds per dataset on
the synthetic sets (fit + estimate; the zero-shot rows run batched with ``estimate_many`` and
report the batch time divided by the number of datasets).  Writes eval_accuracy.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cina_ext.data import LALONDE_BENCHMARK_ATT, sample_datasets  # noqa: E402
from cina_ext.estimators import make_estimator  # noqa: E402

EVAL_SEED = 424242  # the training stream seeds with SeedSequence([seed, step, index]): disjoint
PER_DATASET = [
    ("naive", "naive"),
    ("IPW", "ipw"),
    ("SN-IPW", "snipw"),
    ("DoubleML", "dml"),
    ("KernelBalancing", "kernel"),
    ("CInA (Alg. 1)", "cina"),
]
COLUMNS = ["setoguchi-id", "er-id", "setoguchi-ood", "er-ood", "ihdp-a", "ihdp-b", "lalonde-cps", "lalonde-psid"]
SYNTHETIC = COLUMNS[:4]


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


def build_sets(count: int, n: int, ihdp: int, with_real: bool):
    sets, estimands = {}, {}
    for j, col in enumerate(SYNTHETIC):
        fam, setting = col.split("-")
        sets[col] = list(sample_datasets(fam, count, (n, n), seed=EVAL_SEED + j, setting=setting))
        estimands[col] = "ate"
    if with_real:
        try:
            from cina_ext.data import load_ihdp, load_lalonde

            for s in ("a", "b"):
                sets[f"ihdp-{s}"] = [load_ihdp(s.upper(), seed=r) for r in range(ihdp)]
                estimands[f"ihdp-{s}"] = "ate"
            for c in ("cps", "psid"):
                sets[f"lalonde-{c}"] = [load_lalonde(controls=c)]
                estimands[f"lalonde-{c}"] = "att"
        except ImportError as exc:
            print(f"IHDP/LaLonde skipped: {exc}")
    return sets, estimands


def truth(col, ds, estimand):
    """The known answer: the NSW experimental ATT on LaLonde, else the dataset's own truth."""
    return LALONDE_BENCHMARK_ATT if col.startswith("lalonde") else ds.truth(estimand)


def run_per_dataset(method, estimand, datasets):
    vals, times = [], []
    for i, ds in enumerate(datasets):
        est = make_estimator(method, estimand=estimand, random_state=i)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(ds.X, ds.T)
            vals.append(float(est.ate(ds.Y)))
        times.append(time.perf_counter() - t0)
    return np.asarray(vals), times


def run_zero_shot(path, estimand, datasets, refine=0):
    from cina_ext.estimators import CInAZeroShot

    est = CInAZeroShot.from_pretrained(path, estimand=estimand, refine=refine, batch_size=32)
    est.estimate_many(datasets[:1])  # warm-up (first call builds kernels / allocations)
    t0 = time.perf_counter()
    vals = est.estimate_many(datasets)
    dt = time.perf_counter() - t0
    return np.asarray(vals), [dt / len(datasets)] * len(datasets)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="units per synthetic dataset (default: 500)")
    ap.add_argument("--count", type=int, default=20, help="datasets per synthetic column (default: 20)")
    ap.add_argument("--ihdp", type=int, default=10, help="IHDP replications per surface (default: 10)")
    ap.add_argument("--zs", default=None, help="zero-shot checkpoint (default: the shipped model)")
    ap.add_argument("--zs-s", default=None, help="ZS-S checkpoint (default: the shipped ZS-S model; 'none': no row)")
    ap.add_argument("--refine", type=int, default=50, help="solver iterations of the refined ZS row (0: no row)")
    ap.add_argument("--skip", nargs="*", default=[], help="row labels to leave out (e.g. DoubleML)")
    ap.add_argument("--quick", action="store_true", help="4 datasets per column, n=200, no real data")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    if args.quick:
        args.count, args.n = 4, 200
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets, estimands = build_sets(args.count, args.n, args.ihdp, not args.quick)

    from cina_ext.models.checkpoint import pretrained_path

    zs_path = args.zs or pretrained_path()
    if args.zs_s is None:
        args.zs_s = pretrained_path("zs-s")
    elif args.zs_s == "none":
        args.zs_s = None
    rows = [(label, "per", method) for label, method in PER_DATASET]
    rows.append(("CInA-ZS", "zs", (zs_path, 0)))
    if args.refine:
        rows.append((f"CInA-ZS + {args.refine} solver iterations", "zs", (zs_path, args.refine)))
    if args.zs_s:
        rows.append(("CInA-ZS-S", "zs", (args.zs_s, 0)))
    rows = [r for r in rows if r[0] not in set(args.skip)]

    results = []
    for label, kind, spec in rows:
        row = {"method": label}
        syn_times = []
        for col, dss in sets.items():
            est = estimands[col]
            try:
                if kind == "per":
                    vals, times = run_per_dataset(spec, est, dss)
                else:
                    vals, times = run_zero_shot(spec[0], est, dss, refine=spec[1])
            except Exception as exc:  # a failing method is reported, not hidden
                print(f"{label} on {col} failed: {type(exc).__name__}: {exc}")
                row[col] = None
                continue
            tr = np.asarray([truth(col, d, est) for d in dss])
            row[col] = float(np.mean(np.abs(vals - tr)))
            row[f"{col}_estimates"] = vals.tolist()
            if col in SYNTHETIC:
                syn_times += times
            else:
                row[f"{col}_time_s"] = float(np.mean(times))
        row["time_per_dataset_s"] = float(np.mean(syn_times)) if syn_times else None
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_estimates")}), flush=True)

    meta = {
        "machine": machine(),
        "n": args.n,
        "count": args.count,
        "ihdp_replications": args.ihdp,
        "zs": zs_path,
        "zs_s": args.zs_s,
        "eval_seed": EVAL_SEED,
        "sizes": {c: [d.n for d in v][:1] for c, v in sets.items()},
    }
    (out / "eval_accuracy.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))

    def fmt(x):
        if x is None:
            return "-"
        return f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}"

    cols = [c for c in COLUMNS if c in sets]
    lines = [
        f"Machine: {meta['machine']}",
        "",
        f"MAE of the ATE ({args.count} held-out datasets of n = {args.n} per synthetic column, "
        f"{args.ihdp} IHDP replications per surface); LaLonde: |ATT estimate - 1794|.",
        "",
        "| method | " + " | ".join(cols) + " | time / dataset (s) |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for r in results:
        t = r["time_per_dataset_s"]
        lines.append(
            f"| {r['method']} | " + " | ".join(fmt(r.get(c)) for c in cols) + f" | {'-' if t is None else f'{t:.4f}'} |"
        )
    (out / "eval_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
