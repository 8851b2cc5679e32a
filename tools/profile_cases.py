"""One call of each hot kernel, bracketed for Nsight Compute (ncu --profile-from-start off).

The GPU script (tools/gpu_check.sh, step "profile") runs this under ncu to record why the
kernels run as fast as they do (speed of light, occupancy, warp stalls), the input for the next
round of kernel work:

* ``attention``: cina_ext.ops.attention_hinge forward + backward at 1 x 32768 x 16, float32, with
  a CUDA kernel variant (CINA_ATTENTION_KERNEL, --variant);
* ``solver``: cina_ext.ops.qp_solve.dual_solve, overlap problem, RBF, one dataset of 20000 units (the
  working-set algorithm: its select / solve / update kernels, a few rounds of them); before the
  profiled solve, one whole solve is timed and prints its steps and (CINA_QP_WS_STATS) rounds.

Each case runs once unprofiled (warm-up: module load, allocator), then once between
torch.cuda.profiler.start() and stop().
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def attention(variant: str) -> None:
    from cina_ext import ops

    os.environ["CINA_ATTENTION_KERNEL"] = variant
    g = torch.Generator(device="cuda").manual_seed(0)
    B, N, D = 1, 32768, 16
    K = torch.randn(B, N, D, device="cuda", generator=g).requires_grad_()
    V = torch.randn(B, N, device="cuda", generator=g).requires_grad_()
    W = torch.where(torch.rand(B, N, device="cuda", generator=g) < 0.5, -1.0, 1.0)
    b = torch.zeros(B, device="cuda")

    def once():
        loss, out, lse = ops.attention_hinge(K, V, W, b, 0.1)
        loss.sum().backward()
        torch.cuda.synchronize()

    once()
    torch.cuda.profiler.start()
    once()
    torch.cuda.profiler.stop()


def solver_case() -> None:
    import importlib

    solver = importlib.import_module("cina_ext.ops.qp_solve")
    import bench_solver

    X, W = bench_solver.make_data(1, 20000)
    X, W = X.cuda(), W.cuda()
    solver.dual_solve(X[:, :2000], W[:, :2000], 1.0, kernel="rbf", tol=1e-3, backend="fused")
    torch.cuda.synchronize()
    # one whole solve outside the profiled range, timed, with the number of rounds on stderr
    # (CINA_QP_WS_STATS): with the profiled kernels' durations, time per round against per step
    os.environ["CINA_QP_WS_STATS"] = "1"
    t0 = time.perf_counter()
    res = solver.dual_solve(X, W, 1.0, kernel="rbf", tol=1e-3, backend="fused")
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(
        f"solver 1 x 20000 overlap: {dt:.3f} s, {int(res.iterations[0])} sub-problem steps, "
        f"converged {bool(res.converged[0])}",
        flush=True,
    )
    os.environ.pop("CINA_QP_WS_STATS")
    torch.cuda.profiler.start()
    solver.dual_solve(X, W, 1.0, kernel="rbf", tol=1e-3, backend="fused")
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=("attention", "solver"))
    ap.add_argument("--variant", default="tf32", help="attention kernel variant")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    if a.case == "attention":
        attention(a.variant)
    else:
        solver_case()
    return 0


if __name__ == "__main__":
    sys.exit(main())
