"""Where the time of the CUDA working-set solver goes: rounds, sub-problem steps, GPU time per kernel.

For each case (problem, datasets x units; the data of bench_solver.py) and each working-set
configuration ("ws", "ws/SIZE", "ws/SIZE/tT", "ws/SIZE/lF" as in bench_solver --cuda-configs), the solve is
timed twice: once plainly (wall clock, as the benchmark times it) and once with
CINA_QP_WS_STATS=1, which synchronises after every round and reports the number of rounds, the
sub-problem steps and the GPU milliseconds of the select, solve and update kernels.  From them:
time per round in select and update, time per sub-problem step, and what is left (launch gaps
and host round trips).

    python benchmarks/solver_breakdown.py [--cases overlap:1x20000,ate:1x100000] [--configs ws,ws/128]

Prints a markdown table; writes OUT/breakdown.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_solver  # noqa: E402

STATS = re.compile(r"(\d+) rounds, (\d+) steps .*GPU ms: select ([0-9.]+), solve ([0-9.]+), update ([0-9.]+);")


def capture_stderr(fn):
    """fn() with the process's file descriptor 2 sent to a temporary file; (result, text)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            res = fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return res, tmp.read().decode(errors="replace")


def parse_case(spec: str):
    problem, shape = spec.split(":")
    B, N = (int(v) for v in shape.lower().split("x"))
    if problem not in bench_solver.LAM:
        raise SystemExit(f"--cases: unknown problem {problem!r}")
    return problem, B, N


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="overlap:1x20000,ate:1x100000,overlap:1024x1000")
    ap.add_argument("--configs", default="ws")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 2
    import importlib

    solver = importlib.import_module("cina_ext.ops.qp_solve")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in a.cases.split(","):
        problem, B, N = parse_case(spec)
        X, W = bench_solver.make_data(B, N)
        X, W = X.cuda(), W.cuda()
        lam = bench_solver.LAM[problem]
        for cfg in a.configs.split(","):
            name, env = bench_solver.parse_cuda_config(cfg)

            def solve():
                return bench_solver.run_solver(solver.dual_solve, X, W, lam, a.tol, problem, backend="fused")

            def with_all(fn, extra=None):
                return bench_solver.with_envs({**env, **(extra or {})}, fn)

            with_all(
                lambda: bench_solver.run_solver(
                    solver.dual_solve, X[:, : min(N, 2000)], W[:, : min(N, 2000)], lam, a.tol, problem, backend="fused"
                )
            )
            wall, res = with_all(solve)
            (wall_s, res_s), text = capture_stderr(lambda: with_all(solve, {"CINA_QP_WS_STATS": "1"}))
            found = [STATS.search(ln) for ln in text.splitlines()]
            found = [m for m in found if m]
            if not found:
                print(f"{problem} {B}x{N} {name}: no statistics printed (not the working-set algorithm?)\n{text}")
                continue
            rounds = sum(int(m.group(1)) for m in found)
            steps = sum(int(m.group(2)) for m in found)
            sel, sol, upd = (sum(float(m.group(i)) for m in found) for i in (3, 4, 5))
            row = {
                "problem": problem,
                "B": B,
                "N": N,
                "config": name,
                "wall_s": wall,
                "wall_stats_s": wall_s,
                "rounds": rounds,
                "steps": steps,
                "select_ms": sel,
                "solve_ms": sol,
                "update_ms": upd,
                "select_us_per_round": 1e3 * sel / rounds,
                "update_us_per_round": 1e3 * upd / rounds,
                "solve_us_per_step": 1e3 * sol / max(steps, 1),
                "steps_per_round": steps / rounds,
                "converged": float(res["converged"]),
                "kkt": res["kkt"],
            }
            rows.append(row)
            print(
                f"{problem} {B}x{N} {name}: wall {wall:.3f} s (with stats {wall_s:.3f} s); {rounds} rounds, "
                f"{steps} steps; GPU select {sel:.1f} ms, solve {sol:.1f} ms, update {upd:.1f} ms",
                flush=True,
            )
    lines = [
        "| problem | B x N | config | wall (s) | rounds | steps | steps/round | select ms (us/round) | "
        "solve ms (us/step) | update ms (us/round) | kernels / wall |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        gpu = (r["select_ms"] + r["solve_ms"] + r["update_ms"]) / 1e3
        lines.append(
            f"| {r['problem']} | {r['B']}x{r['N']} | {r['config']} | {r['wall_s']:.3f} | {r['rounds']} | "
            f"{r['steps']} | {r['steps_per_round']:.0f} | {r['select_ms']:.1f} ({r['select_us_per_round']:.1f}) | "
            f"{r['solve_ms']:.1f} ({r['solve_us_per_step']:.2f}) | {r['update_ms']:.1f} "
            f"({r['update_us_per_round']:.1f}) | {gpu / r['wall_s']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    dev = torch.cuda.get_device_name()
    (out / "breakdown.md").write_text(f"# Working-set solver: time breakdown ({dev})\n\n{table}\n")
    (out / "breakdown.json").write_text(json.dumps({"device": dev, "tol": a.tol, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
