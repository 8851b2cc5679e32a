"""What the zero-shot training stream costs to draw, on the CPU, per step and per dataset.

    python benchmarks/bench_training_data.py [--workers 0 2] [--steps 30] [--unit-budget 40000]
                                             [--out benchmarks/out]

On a GPU a training step takes milliseconds, so the synthetic datasets, drawn on the CPU, can be
the cost of a run.  This prints and writes (bench_training_data.json / .md):

* the seconds to draw one ER dataset (graph, mechanisms, the 4,096-unit reference sample that
  standardises every node, the units) at 10 / 50 / 256 covariates and 500 / 5,000 units, the
  fastest of three;
* the seconds per step of the data stream of ``tools/gpu_check.sh``'s training step (Setoguchi,
  ER with 2-256 log-spaced covariates, the semi-synthetic family; 100-5,000 units drawn per step
  with ``--unit-budget``; normal-score network inputs) for each ``--workers`` count
  (``ZeroShotConfig.data_workers``): steps ``1..steps`` after step 0, which pays the workers'
  start and the first loads of the real tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cina_ext.cli import _family_overrides, build_parser  # noqa: E402
from cina_ext.data import sample_datasets  # noqa: E402
from cina_ext.training import ZeroShotConfig  # noqa: E402
from cina_ext.training.zero_shot import _StepData  # noqa: E402

#: tools/gpu_check.sh's training prior (its `train` step), as `cina train` flags
GPU_PRIOR = (
    "--inputs normal-scores --families setoguchi er semi --er-covariates 2 256 --er-covariates-log "
    "--treated-share 0.05 0.6 --binary-share 0 0.5 --heavy-tails --assignment-strength 1 3 "
    "--propensity-clip 0.01 --n-min 100 --n-max 5000 --n-draw step --batch-size 32 --seed 7"
).split()


def prior_config(unit_budget: int, workers: int) -> ZeroShotConfig:
    args = build_parser().parse_args(["train", "--out", "unused.pt", *GPU_PRIOR, "--unit-budget", str(unit_budget)])
    return ZeroShotConfig(
        families=tuple(args.families),
        n_range=(args.n_min, args.n_max),
        n_draw=args.n_draw,
        unit_budget=args.unit_budget,
        batch_size=args.batch_size,
        seed=args.seed,
        inputs=args.inputs,
        family_overrides=_family_overrides(args, None),
        data_workers=workers,
    )


def er_times():
    rows = []
    for d in (10, 50, 256):
        for n in (500, 5000):
            best = float("inf")
            for r in range(3):
                t0 = time.perf_counter()
                next(iter(sample_datasets("er", 1, (n, n), seed=r, d=d)))
                best = min(best, time.perf_counter() - t0)
            rows.append({"d": d, "n": n, "seconds": best})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def stream_times(unit_budget: int, workers: int, steps: int):
    cfg = prior_config(unit_budget, workers)
    data = _StepData(cfg, 0, 1, 1, 32, end=steps + 1)
    try:
        t0 = time.perf_counter()
        data.get(0)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        datasets = units = 0
        for step in range(1, steps + 1):
            drawn, _ = data.get(step)
            datasets += len(drawn)
            units += sum(d.n for d, _ in drawn)
        per_step = (time.perf_counter() - t0) / steps
    finally:
        data.close()
    row = {
        "workers": workers,
        "steps": steps,
        "first_step_s": first,
        "s_per_step": per_step,
        "datasets_per_step": datasets / steps,
        "units_per_step": units / steps,
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, os.cpu_count() or 1])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--unit-budget", type=int, default=40000)
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    er = er_times()
    stream = [stream_times(args.unit_budget, w, args.steps) for w in args.workers]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "unit_budget": args.unit_budget, "er": er, "stream": stream}
    (out / "bench_training_data.json").write_text(json.dumps(payload, indent=2))
    lines = [
        f"Machine: {machine}.",
        "",
        "| covariates | units | s per ER dataset |",
        "|---:|---:|---:|",
        *[f"| {r['d']} | {r['n']} | {r['seconds']:.3f} |" for r in er],
        "",
        f"Training stream of tools/gpu_check.sh (unit budget {args.unit_budget}), steps 1-{args.steps}:",
        "",
        "| data workers | s per step | datasets per step | units per step | step 0 (start) s |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['workers']} | {r['s_per_step']:.3f} | {r['datasets_per_step']:.1f} | "
            f"{r['units_per_step']:.0f} | {r['first_step_s']:.2f} |"
            for r in stream
        ],
    ]
    (out / "bench_training_data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
