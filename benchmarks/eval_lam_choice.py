"""How often the zero-shot estimator's lam="auto" picks the penalty KernelBalancing picks.

    python benchmarks/eval_lam_choice.py [--count 12] [--ihdp 8] [--out benchmarks/out]

Both apply the same rule (``cina_ext.estimators.tuning.select_lam``) to the same grid: the
zero-shot estimator to the solutions of its descent steps, KernelBalancing to exact solutions.
Per column (held-out Setoguchi-ID and ER-OOD datasets of 500 units, IHDP-A/B replications,
LaLonde-PSID / CPS for the ATT) this prints and writes (eval_lam_choice.json / .md) how many
datasets get the same penalty, and the mean absolute error of both estimators.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cina_ext.data import LALONDE_BENCHMARK_ATT, load_ihdp, load_lalonde, sample_datasets  # noqa: E402
from cina_ext.estimators import CInAZeroShot, KernelBalancing  # noqa: E402

EVAL_SEED = 424242  # as benchmarks/eval_accuracy.py: seeds the training stream never uses


def columns(count: int, ihdp: int):
    yield "setoguchi-id", "ate", list(sample_datasets("setoguchi", count, (500, 500), seed=EVAL_SEED, setting="id"))
    yield "er-ood", "ate", list(sample_datasets("er", count, (500, 500), seed=EVAL_SEED + 1, setting="ood"))
    for s in "AB":
        yield f"ihdp-{s.lower()}", "ate", [load_ihdp(s, seed=r) for r in range(ihdp)]
    for c in ("psid", "cps"):
        yield f"lalonde-{c}", "att", [load_lalonde(c)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=12, help="synthetic datasets per column")
    ap.add_argument("--ihdp", type=int, default=8, help="IHDP replications per surface")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    rows = []
    for col, estimand, ds in columns(args.count, args.ihdp):
        same, err_kb, err_zs = 0, [], []
        for d in ds:
            truth = LALONDE_BENCHMARK_ATT if col.startswith("lalonde") else d.truth(estimand)
            kb = KernelBalancing(estimand=estimand, random_state=0).fit(d.X, d.T)
            zs = CInAZeroShot.from_pretrained(estimand=estimand, lam="auto", random_state=0).fit(d.X, d.T)
            same += int(np.isclose(kb.lam_, zs.lam_))
            err_kb.append(abs(kb.ate(d.Y) - truth))
            err_zs.append(abs(zs.ate(d.Y) - truth))
        row = {
            "column": col,
            "datasets": len(ds),
            "same_lam": same,
            "mae_kernel_balancing": float(np.mean(err_kb)),
            "mae_zero_shot_lam_auto": float(np.mean(err_zs)),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_lam_choice.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| column | datasets | same penalty | MAE KernelBalancing | MAE CInA-ZS, lam auto |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['column']} | {r['datasets']} | {r['same_lam']} | {r['mae_kernel_balancing']:.4g} | "
        f"{r['mae_zero_shot_lam_auto']:.4g} |"
        for r in rows
    ]
    (out / "eval_lam_choice.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
