"""The zero-shot model against the exact solver of its own objective, same datasets, same run.

    python benchmarks/zeroshot_vs_solver.py [--sizes 500 2000 5000] [--counts 32 8 4]
                                           [--family setoguchi] [--device cpu|cuda]
                                           [--out benchmarks/out]

The shipped zero-shot model is trained on one balancing objective (RBF kernel, median bandwidth,
lam 0.01).  ``KernelBalancing(lam=0.01)`` solves exactly that objective per dataset (its
default, ``lam="auto"``, solves a grid of nine penalties and picks one).  For every size this
prints and writes (zeroshot_vs_solver.json / .md) the mean seconds per dataset and the mean
absolute error of the ATE of six rows on the same held-out datasets of the training family:
KernelBalancing (defaults), KernelBalancing(lam=0.01), both one dataset at a time, and CInA-ZS
(defaults: the network's pass against 64 landmarks, then the exact steps), with the exact pass
(``approximation="exact"``), with ``lam="auto"`` and with ``descent_steps=0`` (the network's
exact pass alone), batched with
``estimate_many`` (batch 32, after a warm-up call on the same datasets).  Times: the fastest of
``--repeats`` passes.  ``--device cuda``: the model and KernelBalancing's solver on the GPU
(KernelBalancing's covariate scaling and lam rule stay on the host, as in a user's fit).
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
from cina_ext.models.checkpoint import model_from_checkpoint, pretrained_path  # noqa: E402

EVAL_SEED = 424242  # as benchmarks/eval_accuracy.py: seeds the training stream never uses


def _per_dataset(make, datasets, repeats, sync):
    make(0).fit(datasets[0].X, datasets[0].T)  # warm-up (kernels, allocations)
    times = []
    for _ in range(repeats):
        vals, t = [], 0.0
        for i, d in enumerate(datasets):
            sync()
            t0 = time.perf_counter()
            est = make(i).fit(d.X, d.T)
            vals.append(float(est.ate(d.Y)))
            sync()
            t += time.perf_counter() - t0
        times.append(t / len(datasets))
    return np.asarray(vals), min(times)


def _batched(est, datasets, repeats, sync):
    est.estimate_many(datasets)  # warm-up on the same batch shapes
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        vals = est.estimate_many(datasets)
        sync()
        times.append((time.perf_counter() - t0) / len(datasets))
    return np.asarray(vals), min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000])
    ap.add_argument("--counts", type=int, nargs="+", default=[32, 8, 4], help="datasets per size")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per row; the fastest is reported")
    ap.add_argument("--family", default="setoguchi")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    if len(args.counts) != len(args.sizes):
        ap.error("--counts needs one count per size")
    warnings.simplefilter("ignore")  # the overlap warnings of individual fits
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = model_from_checkpoint(pretrained_path()).to(dev)
    rows = []
    for n, count in zip(args.sizes, args.counts):
        ds = list(sample_datasets(args.family, count, (n, n), seed=EVAL_SEED + n, setting="id"))
        truth = np.asarray([d.truth("ate") for d in ds])
        runs = {
            "KernelBalancing": _per_dataset(
                lambda i: KernelBalancing(random_state=i, device=args.device), ds, args.repeats, sync
            ),
            "KernelBalancing, lam 0.01": _per_dataset(
                lambda i: KernelBalancing(lam=0.01, random_state=i, device=args.device), ds, args.repeats, sync
            ),
            "CInA-ZS": _batched(CInAZeroShot(model=model, batch_size=32), ds, args.repeats, sync),
            "CInA-ZS, exact pass": _batched(
                CInAZeroShot(model=model, batch_size=32, approximation="exact"), ds, args.repeats, sync
            ),
            "CInA-ZS, lam auto": _batched(CInAZeroShot(model=model, batch_size=32, lam="auto"), ds, args.repeats, sync),
            "CInA-ZS, network only": _batched(
                CInAZeroShot(model=model, batch_size=32, descent_steps=0), ds, args.repeats, sync
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
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    machine = f"{torch.__version__}, {torch.get_num_threads()} threads, {where}"
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
