"""Zero-shot checkpoints side by side, by dataset size, on held-out synthetic settings.

For each size (default 500, 2,000 and 5,000 units) and each held-out family (the ``setting="ood"``
priors of Setoguchi and ER, never drawn in training; ER with 10, 50 and 200 covariates), every
checkpoint fits ``CInAZeroShot`` one dataset at a time, as a user would, and reports:

* ``net obj``: the training objective of the network's weights (the pass the estimator runs,
  against landmarks above 64 units), divided by that of uniform weights per arm (lower is better;
  1 = no better than no weighting);
* ``obj``: the same after the default 32 descent steps;
* ``MAE``: of the ATE estimate against the truth, with the descent steps, and ``net MAE`` without.

    python benchmarks/eval_zeroshot_sizes.py --zs shipped NEW=path/to/new.pt [--sizes ...] [--count 6]

Writes ``PREFIX.json`` and ``PREFIX.md`` (default: benchmarks/results/<date>-dev-cpu/eval_zeroshot_sizes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cina_ext.data import sample_datasets  # noqa: E402
from cina_ext.estimators import CInAZeroShot  # noqa: E402
from cina_ext.models.checkpoint import pretrained_path  # noqa: E402

#: (label, family, sample_datasets overrides) of the held-out columns
COLUMNS = [
    ("setoguchi-ood", "setoguchi", {}),
    ("er-ood p=10", "er", {}),
    ("er-ood p=50", "er", {"d": 50}),
    ("er-ood p=200", "er", {"d": 200}),
]


def _uniform(T: np.ndarray) -> np.ndarray:
    w = np.where(T == 1, 1.0 / max(1, int(T.sum())), 1.0 / max(1, int((1 - T).sum())))
    return w


def _objective(est: CInAZeroShot, weights: np.ndarray) -> float:
    """The fitted model's training objective of ``weights``: the covariates, bandwidth and penalty
    of the fit (``balance_objective_`` of the same weights)."""
    model = est._get_model()
    _, full = est._inputs(est.X_)
    X = torch.as_tensor(full, dtype=torch.float64).unsqueeze(0)
    W = torch.as_tensor(2.0 * est.T_ - 1.0, dtype=torch.float64).unsqueeze(0)
    mask = torch.ones_like(W, dtype=torch.bool)
    fm = torch.ones(1, X.shape[-1], dtype=torch.bool)
    idx = model.estimand_index(est.estimand_, 1, X.device)
    w = torch.as_tensor(weights, dtype=torch.float64).unsqueeze(0)
    gamma = torch.tensor([est.gamma_], dtype=torch.float64)
    with torch.no_grad():
        return float(model.balance_objective(X, W, mask, fm, w, idx, gamma=gamma, lam=float(est.lam_))[0])


def run(checkpoints, sizes, count, seed):
    rows = []
    for col, family, over in COLUMNS:
        for n in sizes:
            datasets = list(sample_datasets(family, count, (n, n), seed=[seed, n], setting="ood", **over))
            for label, path in checkpoints.items():
                errs, net_errs, objs, net_objs, secs = [], [], [], [], []
                for d in datasets:
                    truth = d.truth("ate")
                    t0 = time.perf_counter()
                    est = CInAZeroShot.from_pretrained(path, random_state=0).fit(d.X, d.T)
                    tau = est.ate(d.Y)
                    secs.append(time.perf_counter() - t0)
                    net_tau = float(np.sum(est.raw_weights_ * (2 * est.T_ - 1) * d.Y))
                    errs.append(abs(tau - truth))
                    net_errs.append(abs(net_tau - truth))
                    base = _objective(est, _uniform(est.T_))
                    objs.append(float(est.balance_objective_) / base)
                    net_objs.append(float(est.raw_balance_objective_) / base)
                rows.append(
                    {
                        "column": col,
                        "n": n,
                        "model": label,
                        "mae": float(np.mean(errs)),
                        "mae_se": float(np.std(errs, ddof=1) / np.sqrt(len(errs))) if len(errs) > 1 else 0.0,
                        "net_mae": float(np.mean(net_errs)),
                        "obj": float(np.mean(objs)),
                        "net_obj": float(np.mean(net_objs)),
                        "seconds": float(np.mean(secs)),
                    }
                )
                r = rows[-1]
                print(
                    f"{col:14s} n={n:5d} {label:10s} net obj {r['net_obj']:.3f}  obj {r['obj']:.4f}  "
                    f"MAE {r['mae']:.3f} ± {r['mae_se']:.3f}  net MAE {r['net_mae']:.3f}  {r['seconds']:.2f} s",
                    flush=True,
                )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zs", nargs="+", default=["shipped"], metavar="LABEL=PATH", help="checkpoints ('shipped')")
    ap.add_argument("--sizes", nargs="+", type=int, default=[500, 2000, 5000])
    ap.add_argument("--count", type=int, default=6, help="datasets per column and size (default: 6)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    # the estimator's poor-overlap warnings are expected on the held-out priors
    warnings.simplefilter("ignore", RuntimeWarning)
    checkpoints = {}
    for item in args.zs:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = item, item
        checkpoints[label] = pretrained_path() if path == "shipped" else path
    rows = run(checkpoints, args.sizes, args.count, args.seed)
    out = args.out or os.path.join(
        "benchmarks", "results", f"{datetime.date.today().isoformat()}-dev-cpu", "eval_zeroshot_sizes"
    )
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    meta = {"sizes": args.sizes, "count": args.count, "seed": args.seed, "checkpoints": checkpoints}
    meta["threads"] = torch.get_num_threads()
    with open(out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [
        "| column | units | model | net obj / uniform | obj / uniform | MAE | net MAE | s / dataset |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['column']} | {r['n']} | {r['model']} | {r['net_obj']:.3f} | {r['obj']:.4f} | "
            f"{r['mae']:.3f} ± {r['mae_se']:.3f} | {r['net_mae']:.3f} | {r['seconds']:.2f} |"
        )
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
