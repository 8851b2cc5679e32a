"""Seconds per dataset of the two estimators that solve the nine-penalty grid exactly.

    python benchmarks/bench_lam_grid.py [--sizes 500 2000 5000] [--psid] [--out benchmarks/out]

``KernelBalancing()`` (its default ``lam="auto"``: nine exact solves and the rule) and
``CInAZeroShot.from_pretrained(lam="auto", refine=100000)`` (the steps on the grid, then the
nine solves refined to convergence), fitted one dataset at a time on held-out setoguchi datasets
(6 per size, 3 from 5,000 units; ``--psid`` adds LaLonde-PSID, ATT).  Prints a table and writes
bench_lam_grid.json.  To compare two versions of the code, run it from each checkout in turn on
the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cina_ext.data import sample_datasets  # noqa: E402
from cina_ext.estimators import CInAZeroShot, KernelBalancing  # noqa: E402

EVAL_SEED = 424242  # as benchmarks/eval_accuracy.py: seeds the training stream never uses


def mean_fit_seconds(make, datasets) -> float:
    times = []
    for d in datasets:
        est = make()
        t0 = time.perf_counter()
        est.fit(d.X, d.T)
        times.append(time.perf_counter() - t0)
    return float(np.mean(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000])
    ap.add_argument("--psid", action="store_true", help="add LaLonde-PSID (ATT)")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    cases = []
    for n in args.sizes:
        ds = list(sample_datasets("setoguchi", 3 if n >= 5000 else 6, (n, n), seed=EVAL_SEED + n))
        cases.append((f"setoguchi {n}", "ate", ds))
    if args.psid:
        from cina_ext.data import load_lalonde

        cases.append(("lalonde-psid", "att", [load_lalonde(controls="psid")]))
    rows = []
    for name, est, ds in cases:
        kb = mean_fit_seconds(lambda: KernelBalancing(estimand=est), ds)
        zs = mean_fit_seconds(lambda: CInAZeroShot.from_pretrained(lam="auto", refine=100000, estimand=est), ds)
        rows.append({"data": name, "datasets": len(ds), "kernel_balancing_s": kb, "zero_shot_refined_s": zs})
        print(f"{name:16s} KernelBalancing {kb:8.3f} s   CInA-ZS lam=auto refined {zs:8.3f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    (out / "bench_lam_grid.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
