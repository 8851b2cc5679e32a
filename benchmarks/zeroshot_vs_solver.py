"""The zero-shot model against the exact solver of its own objective, same datasets, same run.

    python benchmarks/zeroshot_vs_solver.py [--sizes 500 2000 5000] [--counts 16 6 3]
                                           [--family setoguchi] [--out benchmarks/out]

The shipped zero-shot model is trained on one balancing objective (RBF kernel, median bandwidth,
lam 0.01).  ``KernelBalancing(lam=0.01)`` solves exactly that objective per dataset (its
default, ``lam="auto"``, solves a grid of nine penalties and picks one).  For every size this
prints and writes (zeroshot_vs_solver.json / .md) the mean seconds per dataset and the mean
absolute error of the ATE of four rows on the same held-out datasets of the training family:
KernelBalancing (defaults), KernelBalancing(lam=0.01), both one dataset at a time, and CInA-ZS
(defaults) and CInA-ZS with ``descent_steps=0`` (the network alone), both batched with
``estimate_many`` (batch 32, after a warm-up call on the same datasets).  Times: the fastest of
``--repeats`` passes.
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


def _per_dataset(make, datasets, repeats):
    times = []
    for _ in range(repeats):
        vals, t = [], 0.0
        for i, d in enumerate(datasets):
            t0 = time.perf_counter()
            est = make(i).fit(d.X, d.T)
            vals.append(float(est.ate(d.Y)))
            t += time.perf_counter() - t0
        times.append(t / len(datasets))
    return np.asarray(vals), min(times)


def _batched(est, datasets, repeats):
    est.estimate_many(datasets)  # warm-up on the same batch shapes
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        vals = est.estimate_many(datasets)
        times.append((time.perf_counter() - t0) / len(datasets))
    return np.asarray(vals), min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000])
    ap.add_argument("--counts", type=int, nargs="+", default=[32, 8, 4], help="datasets per size")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per row; the fastest is reported")
    ap.add_argument("--family", default="setoguchi")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    if len(args.counts) != len(args.sizes):
        ap.error("--counts needs one count per size")
    warnings.simplefilter("ignore")  # the overlap warnings of individual fits
    rows = []
    for n, count in zip(args.sizes, args.counts):
        ds = list(sample_datasets(args.family, count, (n, n), seed=EVAL_SEED + n, setting="id"))
        truth = np.asarray([d.truth("ate") for d in ds])
        runs = {
            "KernelBalancing": _per_dataset(lambda i: KernelBalancing(random_state=i), ds, args.repeats),
            "KernelBalancing, lam 0.01": _per_dataset(
                lambda i: KernelBalancing(lam=0.01, random_state=i), ds, args.repeats
            ),
            "CInA-ZS": _batched(CInAZeroShot.from_pretrained(batch_size=32), ds, args.repeats),
            "CInA-ZS, network only": _batched(
                CInAZeroShot.from_pretrained(batch_size=32, descent_steps=0), ds, args.repeats
            ),
        }
        base = runs["KernelBalancing"][1]
        for label, (vals, sec) in runs.items():
            row = {
                "n": n,
                "count": count,
                "method": label,
                "mae": float(np.mean(np.abs(vals - truth))),
                "s_per_dataset": sec,
                "speedup_vs_kernel_balancing": base / sec,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{torch.__version__}, {torch.get_num_threads()} threads"
    (out / "zeroshot_vs_solver.json").write_text(json.dumps({"torch": machine, "rows": rows}, indent=1))
    lines = [
        f"torch {machine}; family {args.family} (held-out seeds); ATE",
        "",
        "| n | datasets | method | MAE | s / dataset | speed-up vs KernelBalancing |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['count']} | {r['method']} | {r['mae']:.3f} | {r['s_per_dataset']:.4f} | "
            f"{r['speedup_vs_kernel_balancing']:.1f}x |"
        )
    (out / "zeroshot_vs_solver.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
