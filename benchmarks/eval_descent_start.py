"""What the zero-shot network contributes once the descent steps run: an ablation.

For every evaluation column of ``eval_accuracy.py`` (the same datasets, the same seeds) the
descent steps of ``CInAZeroShotModel.objective_descent`` start from the shipped network's exact
pass ("network"), from its pass against ``warm_start_landmarks(N)`` landmarks seeded 0 (what
``CInAZeroShot`` does by default: "landmarks"), or from uniform weights per arm (no network:
"uniform"), for several step counts, in the exact kernel (as ``CInAZeroShot`` up to 16,384
units). The table gives the MAE of each, and the seconds per dataset of the pass and the
steps, batched as ``estimate_many`` batches them.

    python benchmarks/eval_descent_start.py [--columns ...] [--steps 0 8 16 32 64] [--out PREFIX]

Writes ``PREFIX.json`` and ``PREFIX.md`` (default: benchmarks/results/<date>-dev-cpu/eval_descent_start).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_accuracy import ALL_COLUMNS, build_sets, machine, truth  # noqa: E402

from cina_ext._core.covariates import network_inputs  # noqa: E402
from cina_ext.estimators.zero_shot import _dataset_landmarks, warm_start_landmarks  # noqa: E402
from cina_ext.models.checkpoint import model_from_checkpoint, pretrained_path  # noqa: E402
from cina_ext.models.zero_shot import collate_datasets  # noqa: E402

DEFAULT_COLUMNS = [c for c in ALL_COLUMNS if c != "nhefs"]


def _batches(datasets, size):
    order = sorted(range(len(datasets)), key=lambda i: datasets[i].X.shape[0])
    for s in range(0, len(order), size):
        yield order[s : s + size]


def run_column(model, datasets, estimand, steps_list, batch_size=32):
    """MAE-ready estimates {(start, steps): array} and seconds {"network": s, (start, steps): s}."""
    starts = ("network", "landmarks", "uniform")
    est = {(s, k): np.empty(len(datasets)) for s in starts for k in steps_list}
    secs = {key: 0.0 for key in est}
    secs["network"] = secs["landmarks"] = 0.0
    for ids in _batches(datasets, batch_size):
        inputs = [network_inputs(datasets[i].X, "normal-scores", model.max_features) for i in ids]
        T = [datasets[i].T for i in ids]
        X, W, mask, fm = collate_datasets([(net, t) for (net, _), t in zip(inputs, T)], dtype=torch.float32)
        Xf, _, _, fmf = collate_datasets([(full, t) for (_, full), t in zip(inputs, T)], dtype=torch.float32)
        idx = model.estimand_index(estimand, len(ids), X.device)
        with torch.no_grad():
            t0 = time.perf_counter()
            w_net = model.weights(X, W, mask, fm, estimand=estimand)
            secs["network"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            counts = [warm_start_landmarks(datasets[i].n) for i in ids]
            lm = _dataset_landmarks(W, mask, counts, 0)
            w_lm = model.weights_landmarks(X, W, lm, mask, fm, estimand=estimand)
            secs["landmarks"] += time.perf_counter() - t0
            t1 = (mask & (W > 0)).to(w_net.dtype)
            t0_ = (mask & (W < 0)).to(w_net.dtype)
            w_uni = t1 / t1.sum(-1, keepdim=True) + t0_ / t0_.sum(-1, keepdim=True)
            for start, w0 in (("network", w_net), ("landmarks", w_lm), ("uniform", w_uni)):
                for k in steps_list:
                    t0 = time.perf_counter()
                    w, _ = model.objective_descent(Xf, W, mask, fmf, w0, idx, k)
                    secs[(start, k)] += time.perf_counter() - t0
                    for j, i in enumerate(ids):
                        d = datasets[i]
                        est[(start, k)][i] = float(np.sum(w[j, : d.n].numpy() * (2.0 * d.T - 1.0) * d.Y))
    n = len(datasets)
    return est, {k: v / n for k, v in secs.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--columns", nargs="+", default=DEFAULT_COLUMNS, choices=DEFAULT_COLUMNS)
    ap.add_argument("--steps", nargs="+", type=int, default=[0, 8, 16, 32, 64])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--ihdp", type=int, default=10)
    ap.add_argument("--zs", default=None, help="checkpoint (default: the shipped CInA-ZS)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    model = model_from_checkpoint(args.zs or pretrained_path()).eval()
    sets, estimands = build_sets(args.count, args.n, args.ihdp, args.columns, lalonde_seeds=1)
    steps = sorted(set(args.steps))
    rows, cols = {}, []
    for col in args.columns:
        if col not in sets:
            continue
        cols.append(col)
        ds, e = sets[col], estimands[col]
        tr = np.array([truth(col, d, e) for d in ds])
        est, secs = run_column(model, ds, e, steps)
        for key, v in est.items():
            label = f"{key[0]} start, {key[1]} steps"
            r = rows.setdefault(label, {"mae": {}, "seconds": {}})
            r["mae"][col] = float(np.mean(np.abs(v - tr)))
            r["seconds"][col] = secs[key] + secs.get(key[0], 0.0)  # the pass, if any, and the steps
        print(json.dumps({"column": col, "network_s": secs["network"]}), flush=True)
    stamp = datetime.date.today().isoformat()
    prefix = args.out or os.path.join(os.path.dirname(__file__), "results", f"{stamp}-dev-cpu", "eval_descent_start")
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    out = {"machine": machine(), "date": stamp, "columns": cols, "steps": steps, "rows": rows}
    with open(prefix + ".json", "w") as f:
        json.dump(out, f, indent=1)

    def fmt(v):
        return f"{v:.0f}" if v >= 10 else f"{v:.3f}"

    lines = [
        f"Descent steps from the network's weights or from uniform weights ({out['machine']}, {stamp}).",
        "MAE per column (LaLonde: |ATT - 1794| dollars); seconds per dataset (network pass + steps), batched.",
        "",
        "| start, steps | " + " | ".join(cols) + " | s / dataset, first column |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for label, r in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt(r["mae"][c]) for c in cols) + f" | {r['seconds'][cols[0]]:.4f} |")
    text = "\n".join(lines) + "\n"
    with open(prefix + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
