"""Large datasets: the low-rank kernel-balancing path against the exact solver, its time at 1e5-1e7
units, and `cina estimate` on a CSV of millions of rows (time and peak memory).

    python benchmarks/bench_large.py [--quick] [--sizes 100000 1000000] [--csv-rows 2000000]
                                     [--out benchmarks/out]

Three tables (markdown on stdout, JSON + markdown in --out):

1. accuracy: KernelBalancing(approximation="rff") against the exact solver on the same data
   (Setoguchi scenario A, 10 covariates, ATE and ATT), |difference of the estimates| and each one's
   error against the truth, and both times, at sizes where the exact solver runs;
2. scale: the low-rank fit + estimate at large N (time, peak resident memory of a fresh process);
3. csv: `cina estimate --method kernel --n-bootstrap 0 --json` on a generated CSV (wall time and peak
   resident memory of the CLI process, the file size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cina_ext.data import make_setoguchi  # noqa: E402
from cina_ext.estimators import KernelBalancing  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def accuracy(sizes, seeds, rank):
    rows = []
    for n in sizes:
        for estimand in ("ate", "att"):
            diffs, err_ex, err_lr, t_ex, t_lr = [], [], [], [], []
            for seed in range(seeds):
                d = make_setoguchi(n, seed=100 + seed)
                truth = d.truth(estimand)
                t0 = time.perf_counter()
                ex = KernelBalancing(estimand=estimand, approximation="exact").fit(d.X, d.T).ate(d.Y)
                t1 = time.perf_counter()
                lr = KernelBalancing(estimand=estimand, approximation="rff", rank=rank, random_state=seed)
                lr = lr.fit(d.X, d.T).ate(d.Y)
                t2 = time.perf_counter()
                diffs.append(abs(lr - ex))
                err_ex.append(abs(ex - truth))
                err_lr.append(abs(lr - truth))
                t_ex.append(t1 - t0)
                t_lr.append(t2 - t1)
            rows.append(
                {
                    "n": n,
                    "estimand": estimand,
                    "rank": rank,
                    "seeds": seeds,
                    "mean_abs_diff": float(np.mean(diffs)),
                    "max_abs_diff": float(np.max(diffs)),
                    "mae_exact": float(np.mean(err_ex)),
                    "mae_low_rank": float(np.mean(err_lr)),
                    "time_exact_s": float(np.mean(t_ex)),
                    "time_low_rank_s": float(np.mean(t_lr)),
                }
            )
            print(rows[-1], flush=True)
    return rows


_SCALE_CHILD = """
import json, resource, sys, time, warnings
sys.path.insert(0, {root!r})
from cina_ext.data import make_setoguchi
from cina_ext.estimators import KernelBalancing
d = make_setoguchi({n}, seed=7)
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    est = KernelBalancing(estimand={estimand!r}, rank={rank}, random_state=0).fit(d.X, d.T)
    tau = est.ate(d.Y)
t1 = time.perf_counter()
print(json.dumps({{"estimate": tau, "truth": d.truth({estimand!r}), "seconds": t1 - t0,
                  "low_rank": est.low_rank_, "iterations": est.iterations_, "gap": est.kkt_,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def scale(sizes, rank):
    rows = []
    for n in sizes:
        for estimand in ("ate",):
            code = _SCALE_CHILD.format(root=ROOT, n=n, estimand=estimand, rank=rank)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(n=n, estimand=estimand, rank=rank)
            rows.append(r)
            print(r, flush=True)
    return rows


def csv_run(n_rows, p=10):
    import pandas as pd

    d = make_setoguchi(n_rows, seed=11)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.csv")
        df = pd.DataFrame(d.X, columns=[f"x{j}" for j in range(d.X.shape[1])])
        df["treat"], df["y"] = d.T, d.Y
        df.to_csv(path, index=False, float_format="%.6g")
        size = os.path.getsize(path)
        del df
        cmd = [
            sys.executable,
            "-c",
            "import resource, sys; from cina_ext.cli import main; code = main(sys.argv[1:]); "
            "print('PEAK_RSS_MIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr); "
            "sys.exit(code)",
            "estimate",
            path,
            "--treatment",
            "treat",
            "--outcome",
            "y",
            "--method",
            "kernel",
            "--estimand",
            "ate",
            "--n-bootstrap",
            "0",
            "--json",
            "--quiet",
        ]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"cina estimate failed: {out.stderr[-2000:]}")
    payload = json.loads(out.stdout)
    peak = [float(line.split()[1]) for line in out.stderr.splitlines() if line.startswith("PEAK_RSS_MIB")][0]
    row = {
        "rows": n_rows,
        "covariates": p,
        "file_mib": size / 2**20,
        "wall_s": wall,
        "peak_rss_mib": peak,
        "estimate": payload["estimate"],
        "truth": d.truth("ate"),
        "warnings": payload.get("warnings", []),
    }
    print(row, flush=True)
    return row


def markdown(res) -> str:
    out = [
        f"# Large datasets ({res['date']}, {res['machine']})",
        "",
        "## Low-rank (random Fourier features) against the exact solver",
        "",
        "| N | estimand | rank | seeds | mean abs diff | max abs diff | MAE exact | MAE low-rank | exact s | "
        "low-rank s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["accuracy"]:
        out.append(
            f"| {r['n']} | {r['estimand']} | {r['rank']} | {r['seeds']} | {r['mean_abs_diff']:.4f} | "
            f"{r['max_abs_diff']:.4f} | {r['mae_exact']:.4f} | {r['mae_low_rank']:.4f} | "
            f"{r['time_exact_s']:.2f} | {r['time_low_rank_s']:.2f} |"
        )
    out += [
        "",
        "## Low-rank path at scale (fresh process per size)",
        "",
        "| N | estimand | rank | fit + estimate s | peak RSS MiB | estimate | truth | L-BFGS iterations |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["scale"]:
        out.append(
            f"| {r['n']} | {r['estimand']} | {r['rank']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['estimate']:.4f} | {r['truth']:.4f} | {r['iterations']} |"
        )
    if res.get("csv"):
        c = res["csv"]
        out += [
            "",
            "## `cina estimate --method kernel` on a CSV",
            "",
            "| rows | covariates | file MiB | wall s | peak RSS MiB | estimate | truth |",
            "|---|---|---|---|---|---|---|",
            f"| {c['rows']} | {c['covariates']} | {c['file_mib']:.0f} | {c['wall_s']:.1f} | {c['peak_rss_mib']:.0f} | "
            f"{c['estimate']:.4f} | {c['truth']:.4f} |",
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--accuracy-sizes", type=int, nargs="*", default=[2000, 5000, 20000])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--csv-rows", type=int, default=2_000_000)
    ap.add_argument("--rank", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args()
    if args.quick:
        args.accuracy_sizes, args.seeds, args.sizes, args.csv_rows = [1000], 2, [30_000], 50_000
    res = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "argv": sys.argv[1:]}
    res["accuracy"] = accuracy(args.accuracy_sizes, args.seeds, args.rank)
    res["scale"] = scale(args.sizes, args.rank)
    res["csv"] = csv_run(args.csv_rows) if args.csv_rows else None
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "large.json"), "w") as fh:
        json.dump(res, fh, indent=2)
    md = markdown(res)
    with open(os.path.join(args.out, "large.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
