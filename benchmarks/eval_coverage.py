"""Coverage of the 95% intervals: the share of datasets whose interval holds the truth, the mean
width and the mean absolute error, per estimator and data family.

    python benchmarks/eval_coverage.py [--datasets 200] [--quick] [--methods ...] [--out benchmarks/out]

Columns: Setoguchi scenarios A and G (500 units, ATE), Erdos-Renyi SCMs (500 units, ATE) and the
IHDP response surfaces A and B (747 units; the truth is each replication's sample ATE).  Methods
use ``ate_inference`` with its default: the influence function for DoubleML and the augmented
estimators; ``kb-boot`` (kernel balancing without augmentation) uses the refitting bootstrap and
is costly (``--boot 100`` refits per dataset).  Writes coverage.json and coverage.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cina_ext.data import data_available, load_ihdp, make_setoguchi, sample_datasets  # noqa: E402
from cina_ext.estimators import IPW, CInAZeroShot, DoubleML, KernelBalancing  # noqa: E402

METHODS = {
    "dml": lambda s, b: DoubleML(random_state=s),
    "kb+aug": lambda s, b: KernelBalancing(augment=True, random_state=s),
    "kb+aug5": lambda s, b: KernelBalancing(augment=True, augment_repeats=5, random_state=s),
    "ipw+aug": lambda s, b: IPW(augment=True, random_state=s),
    "zs+aug": lambda s, b: CInAZeroShot.from_pretrained(estimand="ate", augment=True, random_state=s),
    "kb-boot": lambda s, b: KernelBalancing(random_state=s),
}


def datasets(family: str, count: int):
    if family in ("setoguchi-A", "setoguchi-G"):
        scen = family[-1]
        for i in range(count):
            d = make_setoguchi(500, seed=5000 + i, scenario=scen)
            yield d.X, d.T, d.Y, d.truth("ate")
    elif family == "er":
        for d in sample_datasets("er", count, (500, 500), seed=77):
            yield d.X, d.T, d.Y, d.truth("ate")
    elif family in ("ihdp-a", "ihdp-b"):
        for i in range(count):
            d = load_ihdp(family[-1].upper(), seed=i)
            yield d.X, d.T, d.Y, d.truth("ate")
    else:
        raise ValueError(family)


def run(families, methods, count, boot):
    rows = []
    for fam in families:
        if fam.startswith("ihdp") and not data_available(fam):
            print(f"skipping {fam}: the data extra is not installed", flush=True)
            continue
        data = list(datasets(fam, count))
        for m in methods:
            hits, widths, errs, t0, fails = [], [], [], time.perf_counter(), 0
            for i, (X, T, Y, truth) in enumerate(data):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        est = METHODS[m](i, boot).fit(X, T)
                        inf = est.ate_inference(Y, n_bootstrap=boot, random_state=i)
                except (ValueError, RuntimeError) as exc:
                    fails += 1
                    print(f"{fam} {m} dataset {i}: {exc}", flush=True)
                    continue
                hits.append(inf.ci[0] <= truth <= inf.ci[1])
                widths.append(inf.ci[1] - inf.ci[0])
                errs.append(abs(inf.estimate - truth))
            row = {
                "family": fam,
                "method": m,
                "datasets": len(hits),
                "failed": fails,
                "coverage": float(np.mean(hits)) if hits else None,
                "mean_width": float(np.mean(widths)) if widths else None,
                "mae": float(np.mean(errs)) if errs else None,
                "seconds_per_dataset": (time.perf_counter() - t0) / max(1, len(data)),
            }
            rows.append(row)
            print(row, flush=True)
    return rows


def markdown(res) -> str:
    out = [
        f"# Coverage of the 95% intervals ({res['date']}, {res['machine']})",
        "",
        "| family | method | datasets | coverage | mean width | MAE | s / dataset |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if r["coverage"] is None:
            continue
        out.append(
            f"| {r['family']} | {r['method']} | {r['datasets']} | {r['coverage']:.3f} | {r['mean_width']:.4f} | "
            f"{r['mae']:.4f} | {r['seconds_per_dataset']:.2f} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=200)
    ap.add_argument("--families", nargs="+", default=["setoguchi-A", "setoguchi-G", "er", "ihdp-a", "ihdp-b"])
    ap.add_argument("--methods", nargs="+", default=["dml", "kb+aug", "ipw+aug", "zs+aug"], choices=sorted(METHODS))
    ap.add_argument("--boot", type=int, default=100, help="bootstrap refits for kb-boot")
    ap.add_argument("--quick", action="store_true", help="20 datasets per column")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args()
    count = 20 if args.quick else args.datasets
    from bench_large import machine  # noqa: E402  (same folder)

    res = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "argv": sys.argv[1:]}
    res["rows"] = run(args.families, args.methods, count, args.boot)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "coverage.json"), "w") as fh:
        json.dump(res, fh, indent=2)
    md = markdown(res)
    with open(os.path.join(args.out, "coverage.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
