"""The balancing descent: the compiled CPU kernel against its PyTorch twin, same problems, same run.

    python benchmarks/bench_balance_descent.py [--sizes 500 2000 5000] [--counts 32 8 2]
                                               [--steps 32] [--grid 1] [--out benchmarks/out]

For each size: ``count`` RBF Gram matrices of random covariates (float32, as the zero-shot model
forms them), ATE problems with 40% treated, the model's step size and momentum; prints and writes
(bench_balance_descent.json / .md) the milliseconds per problem of ``ops.balance_descent`` with
``backend="fused"`` and ``backend="reference"`` (the fastest of ``--repeats`` calls), their ratio,
and the largest weight difference relative to the float64 twin.  ``--grid L``: L penalties per
matrix sharing its arms (the ``lam="auto"`` grid is 9), which the kernel steps together.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cina_ext import ops  # noqa: E402
from cina_ext.models.zero_shot import DESCENT_MOMENTUM, DESCENT_STEP_SIZE  # noqa: E402

F64 = torch.float64


def problems(B, L, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(B, N, 8, generator=g)
    K = torch.exp(-(torch.cdist(Z, Z) ** 2) / 8)
    R = B * L
    # a grid's rows share their dataset's arms (as lam="auto" passes them): the kernel steps them together
    arm = (torch.rand(B, N, generator=g) < 0.4).to(torch.int8).repeat_interleave(L, 0)
    t1, t0 = (arm == 1).to(F64), (arm == 0).to(F64)
    target = torch.full((R, N), 1.0 / N, dtype=F64)
    w = torch.where(arm == 1, t1 / t1.sum(-1, keepdim=True), t0 / t0.sum(-1, keepdim=True))
    lam = torch.full((R,), 0.01, dtype=F64) * torch.logspace(-1, 1, L, dtype=F64).repeat(B)
    return K, w, arm, target, torch.ones(R, N, dtype=torch.bool), lam


def best_of(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000])
    ap.add_argument("--counts", type=int, nargs="+", default=[32, 8, 2])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--grid", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    rows = []
    for N, B in zip(args.sizes, args.counts):
        pr = problems(B, args.grid, N)
        kw = dict(steps=args.steps, step_size=DESCENT_STEP_SIZE, momentum=DESCENT_MOMENTUM)
        t = {}
        res = {}
        for backend in ("fused", "reference"):
            t[backend] = best_of(
                lambda: res.__setitem__(backend, ops.balance_descent(*pr, **kw, backend=backend)), args.repeats
            )
        w64, _ = ops.balance_descent(pr[0].double(), *pr[1:], **kw, backend="reference")
        scale = w64.abs().amax(-1, keepdim=True)
        row = {
            "n": N,
            "matrices": B,
            "rows": B * args.grid,
            "steps": args.steps,
            "ms_per_problem_fused": 1e3 * t["fused"] / (B * args.grid),
            "ms_per_problem_reference": 1e3 * t["reference"] / (B * args.grid),
            "speedup": t["reference"] / t["fused"],
            "max_rel_diff_fused_vs_f64": float(((res["fused"][0] - w64).abs() / scale).max()),
            "max_rel_diff_reference_vs_f64": float(((res["reference"][0] - w64).abs() / scale).max()),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_balance_descent.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    lines = [
        f"{machine}; {args.steps} steps, {args.grid} penalties per matrix",
        "",
        "| n | problems | fused ms / problem | reference ms / problem | speed-up | max rel. diff vs float64 (fused / reference) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['rows']} | {r['ms_per_problem_fused']:.3f} | {r['ms_per_problem_reference']:.3f} | "
            f"{r['speedup']:.1f}x | {r['max_rel_diff_fused_vs_f64']:.1e} / {r['max_rel_diff_reference_vs_f64']:.1e} |"
        )
    (out / "bench_balance_descent.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
