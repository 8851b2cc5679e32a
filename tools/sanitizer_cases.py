"""Tiny driver for compute-sanitizer (memcheck, racecheck, synccheck): run by tools/gpu_check.sh.

Runs the CUDA kernels of cina::attention_hinge on small masked cases — forward with and without
the auxiliaries, backward — for float32 (every kernel variant: simt, tf32x3, tf32) and float64,
and checks the results against the compiled CPU operator (so a sanitizer run also says whether
the numbers were right).  Then the batched QP solver (csrc/qp_solve/cuda.cu) on a few tiny
masked problems (overlap with the equality, ate arm problems with the cina kernel's helper
kernels, a box-only and a general-equality generic QP; float32 and float64; a 2-slot column
cache), checked against the compiled CPU solver.  ``--part attention|solver|all`` selects the
cases.  Inputs are made on the CPU and copied, so that the only kernels launched are ours plus a
few of torch's fills.  Exit status 0 when every case matched, 1 otherwise.

    compute-sanitizer --tool memcheck python3 tools/sanitizer_cases.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def make_case(B, N, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(B, N, D, generator=g, dtype=torch.float64).to(dtype)
    V = (torch.randn(B, N, generator=g, dtype=torch.float64) / N).to(dtype)
    W = (torch.randint(0, 2, (B, N), generator=g) * 2 - 1).to(dtype)
    b = (torch.randn(B, generator=g, dtype=torch.float64) * 0.1).to(dtype)
    lam = (torch.rand(B, generator=g, dtype=torch.float64) * 0.5 + 0.01).to(dtype)
    mask = torch.rand(B, N, generator=g) > 0.25
    mask[0, :] = False  # an empty dataset
    if B > 1:
        mask[1, :] = False
        mask[1, N // 2] = True  # a length-1 dataset
    if B > 2 and N > 64:
        mask[2, 1:65] = False  # a whole padded tile (when aligned) and more
    return K, V, W, b, lam, mask


def run_case(K, V, W, b, lam, mask, device, scale, loss_kind):
    args = [t.to(device) for t in (K, V, W, b, lam, mask)]
    op_f = torch.ops.cina.attention_hinge_fwd
    op_b = torch.ops.cina.attention_hinge_bwd
    plain = op_f(*args, scale, loss_kind, False)
    loss, out, lse, A, Bk = op_f(*args, scale, loss_kind, True)
    g = torch.Generator().manual_seed(99)
    B, N = V.shape
    gL = torch.randn(B, generator=g, dtype=torch.float64).to(K.dtype).to(device)
    gO = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype).to(device)
    gLse = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype).to(device)
    dK, dV, db = op_b(*args, out, lse, A, Bk, gL, gO, gLse, scale, loss_kind)
    res = [loss, out, lse, A, Bk, dK, dV, db, plain[0], plain[1], plain[2]]
    if device != "cpu":
        torch.cuda.synchronize()
    return [r.cpu() for r in res]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases (for racecheck)")
    ap.add_argument("--part", choices=("attention", "solver", "all"), default="all", help="which operators")
    opts = ap.parse_args()
    from cina_ext import ops  # noqa: F401  (registers the operators)

    if not (torch.cuda.is_available() and ops.has_cuda_kernels()):
        print("sanitizer_cases: no CUDA device or no CUDA kernels in this build", file=sys.stderr)
        return 1
    failures = 0
    if opts.part in ("solver", "all"):
        failures += solver_cases(opts.quick)
    if opts.part == "solver":
        print("sanitizer_cases:", "OK" if failures == 0 else f"{failures} FAILURES")
        return 0 if failures == 0 else 1
    shapes = [(3, 70, 5), (3, 33, 40), (2, 130, 128)]
    if opts.quick:
        shapes = [(3, 70, 5), (2, 65, 128)]
    names = ("loss", "out", "lse", "A", "Bk", "dK", "dV", "db", "loss(plain)", "out(plain)", "lse(plain)")
    runs = [(torch.float64, "simt")] + [(torch.float32, v) for v in ("simt", "tf32x3", "tf32", "tf32x3p", "tf32p")]
    # splits 1: the unsplit column pass; 3: split pass + combine kernel
    plan = [(dt, v, sp, i, shape) for dt, v in runs for sp in ("1", "3") for i, shape in enumerate(shapes)]
    for dtype, variant, splits, i, (B, N, D) in plan:
        os.environ["CINA_ATTENTION_KERNEL"] = variant
        os.environ["CINA_ATTENTION_SPLITS"] = splits
        case = make_case(B, N, D, dtype, seed=i)
        scale = D**-0.5
        loss_kind = i % 2
        gpu = run_case(*case, "cuda", scale, loss_kind)
        cpu = run_case(*case, "cpu", scale, loss_kind)
        tol = {torch.float64: 1e-9, torch.float32: 2e-3 if variant in ("tf32", "tf32p") else 1e-4}[dtype]
        tag = f"{str(dtype):14s} {variant:7s} splits<={splits} {B}x{N}x{D} loss_kind={loss_kind}"
        worst = 0.0
        for name, x, y in zip(names, gpu, cpu):
            if not torch.isfinite(x).all():
                print(f"FAIL {tag}: {name} not finite")
                failures += 1
                continue
            err = (x.double() - y.double()).abs().max().item() / max(1.0, y.abs().max().item()) if x.numel() else 0.0
            worst = max(worst, err)
            if err > tol:
                print(f"FAIL {tag}: {name} relative error {err:.3g} > {tol:g}")
                failures += 1
        print(f"case {tag}: worst relative error {worst:.3g}")
    print("sanitizer_cases:", "OK" if failures == 0 else f"{failures} FAILURES")
    return 0 if failures == 0 else 1


def solver_cases(quick: bool) -> int:
    """Tiny solves on the GPU against the compiled CPU solver (no shrinking: the same algorithm)."""
    import importlib

    solver = importlib.import_module("cina_ext.ops.qp_solve")

    from cina_ext._core.backend import _has_solver_kernel

    if not _has_solver_kernel(torch.device("cuda")):
        print("FAIL solver: this build has no CUDA kernel for the QP solver")
        return 1
    failures = 0
    g = torch.Generator().manual_seed(3)
    B, N = 3, 45
    X = torch.randn(B, N, 5, generator=g, dtype=torch.float64)
    W = (torch.rand(B, N, generator=g) < 0.4).to(torch.float64) * 2 - 1
    W[:, 0], W[:, 1] = 1.0, -1.0
    mask = torch.rand(B, N, generator=g) > 0.2
    mask[:, :2] = True
    mask[2, 20:] = False
    plan = [
        ("overlap", "rbf", torch.float64, 1024),
        ("ate", "cina", torch.float64, 1024),
        ("overlap", "linear", torch.float32, 0.0002),  # 2 cache slots
        ("att", "laplace", torch.float64, 1024),
    ]
    if quick:
        plan = plan[:1]
    # both algorithms: one block per problem, and the working-set decomposition (forced, with a
    # working set of 8 so that these small problems take many select / solve / update rounds, and
    # of 64: a sub-problem over two warps, whose reductions pass the chosen units between warps)
    algos = [("block", None), ("ws", "8"), ("ws", "64")]
    plan = [(algo, ws) + case for algo, ws in algos for case in plan]
    for algo, ws, est, kernel, dtype, cache_mb in plan:
        os.environ["CINA_QP_CUDA_ALGO"] = algo
        if ws is None:
            os.environ.pop("CINA_QP_WS_SIZE", None)
        else:
            os.environ["CINA_QP_WS_SIZE"] = ws
        tol = 1e-8 if dtype == torch.float64 else 1e-4
        args = dict(kernel=kernel, estimand=est, tol=tol, backend="fused", cache_mb=cache_mb)
        gpu = solver.dual_solve(X.to(dtype).cuda(), W.to(dtype).cuda(), 0.3, mask=mask.cuda(), **args)
        torch.cuda.synchronize()
        cpu = solver.dual_solve(X.to(dtype), W.to(dtype), 0.3, mask=mask, shrinking=False, **args)
        err = ((gpu.objective.cpu() - cpu.objective).abs() / cpu.objective.abs().clamp_min(1e-12)).max().item()
        ok = bool(gpu.converged.all()) and err <= (1e-8 if dtype == torch.float64 else 1e-4)
        print(
            f"solver[{algo}] {est} {kernel} {dtype} cache_mb={cache_mb}: objective rel. error {err:.3g}, "
            f"iterations {gpu.iterations.tolist()} (cpu {cpu.iterations.tolist()})"
        )
        if not ok:
            print(f"FAIL solver[{algo}] {est} {kernel} {dtype}")
            failures += 1
    os.environ.pop("CINA_QP_CUDA_ALGO", None)
    os.environ.pop("CINA_QP_WS_SIZE", None)
    if not quick:  # box-only generic QP (coordinate descent) and a general equality
        A = torch.randn(2, 20, 20, generator=g, dtype=torch.float64)
        Q = A @ A.transpose(1, 2) / 20 + 0.05 * torch.eye(20, dtype=torch.float64)
        p = torch.randn(2, 20, generator=g, dtype=torch.float64)
        c = torch.randn(2, 20, generator=g, dtype=torch.float64)
        d = torch.tensor([0.2, -0.1], dtype=torch.float64)
        for cc, dd in ((None, None), (c, d)):
            gpu = solver.qp_solve(
                Q.cuda(),
                p.cuda(),
                -1.0,
                1.0,
                None if cc is None else cc.cuda(),
                None if dd is None else dd.cuda(),
                tol=1e-9,
                backend="fused",
            )
            cpu = solver.qp_solve(Q, p, -1.0, 1.0, cc, dd, tol=1e-9, backend="fused", shrinking=False)
            err = (gpu.objective.cpu() - cpu.objective).abs().max().item()
            print(f"solver generic qp equality={cc is not None}: objective error {err:.3g}")
            if err > 1e-9 or not bool(gpu.converged.all()):
                print("FAIL solver generic qp")
                failures += 1
    return failures


if __name__ == "__main__":
    sys.exit(main())
