"""Benchmarks of the batched balancing dual solver (docs/benchmarks.md).

Methods, on the same synthetic data (float64, p = 10 standard-normal covariates, treatment
probability sigmoid(x_0 - x_1 / 2), RBF kernel with the reference's default gamma):

* ``sklearn``        — sklearn.svm.SVC(kernel="rbf", gamma, C=1/lam), one fit per dataset (the
                        classical SVM-balancing baseline; LIBSVM is single-threaded); "overlap" only;
* ``reference``      — cina_ext.reference.qp_solve.dual_solve (pure PyTorch, materialises Q);
* ``cpu[T threads]`` — cina_ext.ops.qp_solve.dual_solve(backend="fused") on the CPU, with all of torch's
                        threads and, up to --max-n-sklearn units, with one thread (the per-core
                        comparison with sklearn);
* ``cuda[block]``, ``cuda[ws]`` — the same on the GPU when a CUDA build of the solver exists
                        (skipped cleanly otherwise), with each algorithm forced: one block per
                        problem, or the working-set decomposition (the default from 4096 units;
                        default working set 512 units for up to one dataset-problem per SM, 256
                        for more, sub-problem tolerance 0.3; ``cuda[ws/512]``: 512, ``cuda[ws/S/tT]``:
                        S units solved by T threads, ``cuda[ws/S/lF]``: sub-problems solved to F
                        times the round's KKT violation; --cuda-configs); the reference on the GPU.

Cases: one dataset of N in {1e3, 1e4, 2e4, 1e5} units, and batches of {64, 1024} datasets x 1000
units; problems "overlap" (the SVM dual, lam = 1 i.e. C = 1) and "ate" (per-arm simplex problems,
lam = 0.01).  Every method runs at the same tolerance --tol on the same KKT measure (LIBSVM's
stopping rule m - M < tol is the same quantity for the SVM dual); the solvers of this package get
max_iter = max(1e5, 50 N) (SMO needs O(N) steps), sklearn runs without an iteration limit.  Reported per row: median wall
time over --reps runs, median iterations per dataset, the worst final KKT violation, the fraction
of converged datasets, and the largest relative objective gap to sklearn (where run).

Skips: sklearn above --max-n-sklearn units, the reference above --max-n-reference units or when
its dense Q would need more than 25% of the memory, and any run whose time extrapolated from the
same method at a smaller size exceeds --max-seconds.  Everything above --max-n is skipped.

Writes solver.json, solver.md and solver.png (matplotlib, if installed) to --out (default
benchmarks/out), with the machine (CPU model, cores, torch threads, load average, GPU).
``--quick`` runs a small set (CI / the GPU check script).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cina_ext._core.backend import _has_solver_kernel

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import importlib

reference_qp = importlib.import_module("cina_ext.reference.qp_solve")  # noqa: E402
solver = importlib.import_module("cina_ext.ops.qp_solve")  # noqa: E402
from cina_ext._core.extension import extension_error, has_extension  # noqa: E402

LAM = {"overlap": 1.0, "ate": 0.01}
P_FEATURES = 10


# ---------------------------------------------------------------------------------------------
# machine and data


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def machine() -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import sklearn

        info["sklearn"] = sklearn.__version__
    except ImportError:
        info["sklearn"] = None
    return info


def make_data(B: int, N: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, N, P_FEATURES, generator=g, dtype=torch.float64)
    logit = X[..., 0] - 0.5 * X[..., 1]
    T = torch.rand(B, N, generator=g, dtype=torch.float64) < torch.sigmoid(logit)
    T[:, 0], T[:, 1] = True, False
    W = T.to(torch.float64) * 2 - 1
    return X, W


# ---------------------------------------------------------------------------------------------
# methods


def run_sklearn(X, W, lam, tol, gamma, cache_mb):
    from sklearn.svm import SVC

    B, N = W.shape
    alphas, iters = [], []
    t0 = time.perf_counter()
    for b in range(B):
        svc = SVC(kernel="rbf", gamma=float(gamma[b]), C=1.0 / lam, tol=tol, cache_size=cache_mb)
        svc.fit(X[b].numpy(), (W[b] > 0).numpy().astype(int))
        a = np.zeros(N)
        a[svc.support_] = lam * np.abs(svc.dual_coef_[0])
        alphas.append(a)
        iters.append(int(np.atleast_1d(svc.n_iter_)[0]))
    dt = time.perf_counter() - t0
    return dt, {"alpha": torch.tensor(np.stack(alphas)), "iterations": iters, "kkt": None, "converged": None}


def overlap_objective(X, W, alpha, lam, gamma, chunk=2048):
    """1/2 a'Qa - 1'a with Q = (W W') * K / lam, K computed in row chunks (no N x N matrix)."""
    out = []
    for b in range(X.shape[0]):
        x, aw = X[b], alpha[b] * W[b]
        quad = 0.0
        for s in range(0, x.shape[0], chunk):
            d2 = torch.cdist(x[s : s + chunk], x).pow(2)
            quad += float(aw[s : s + chunk] @ (torch.exp(-float(gamma[b]) * d2) @ aw))
        out.append(0.5 * quad / lam - float(alpha[b].sum()))
    return torch.tensor(out, dtype=torch.float64)


def run_solver(fn, X, W, lam, tol, estimand, **kw):
    # SMO needs O(N) steps: the signature's default max_iter (1e5) is too small at N = 1e5
    max_iter = max(100_000, 50 * X.shape[1])
    t0 = time.perf_counter()
    r = fn(X, W, lam, kernel="rbf", estimand=estimand, tol=tol, max_iter=max_iter, **kw)
    if X.is_cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return dt, {
        "alpha": r.alpha.cpu(),
        "iterations": r.iterations.cpu().tolist(),
        "kkt": float(r.kkt.max()),
        "converged": float(r.converged.float().mean()),
        "objective": r.objective.cpu(),
    }


# ---------------------------------------------------------------------------------------------


def with_env(var, value, fn):
    """fn() with the environment variable var set to value, or unset for None (restored afterwards)."""
    old = os.environ.get(var)
    if value is None:
        os.environ.pop(var, None)
    else:
        os.environ[var] = value
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old


def parse_cuda_config(spec: str):
    """ "block" | "ws" | "ws/SIZE" with optional "/tT" (sub-problem threads) and "/lF" (sub-problem
    tolerance factor) -> (name, the environment variables that select it; None = unset)."""
    parts = spec.split("/")
    if parts[0] == "block" and len(parts) == 1:
        return spec, {"CINA_QP_CUDA_ALGO": "block"}
    env = {"CINA_QP_CUDA_ALGO": "ws", "CINA_QP_WS_SIZE": None, "CINA_QP_WS_THREADS": None, "CINA_QP_WS_LTOL": None}
    if parts[0] != "ws" or len(parts) > 4:
        raise SystemExit(f"--cuda-configs: bad entry {spec!r} (block, ws, ws/SIZE, ws/SIZE/tT, ws/SIZE/lF)")
    if len(parts) > 1:
        if not parts[1].isdigit():
            raise SystemExit(f"--cuda-configs: bad entry {spec!r}")
        env["CINA_QP_WS_SIZE"] = parts[1]
    for opt in parts[2:]:
        key = {"t": "CINA_QP_WS_THREADS", "l": "CINA_QP_WS_LTOL"}.get(opt[:1])
        val = opt[1:]
        ok = val.isdigit() if opt[:1] == "t" else val.replace(".", "", 1).isdigit()
        if key is None or not ok or env[key] is not None:
            raise SystemExit(f"--cuda-configs: bad entry {spec!r}")
        env[key] = val
    return spec, env


def with_envs(env: dict, fn):
    """fn() with every variable of env set (or unset for None), restored afterwards."""
    for var, value in env.items():
        fn = (lambda f, var=var, value=value: lambda: with_env(var, value, f))(fn)
    return fn()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Benchmarks of the batched balancing dual solver")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output directory")
    ap.add_argument("--quick", action="store_true", help="small set of cases, one repetition")
    ap.add_argument(
        "--max-n", type=int, default=None, help="skip cases with more units per dataset (default 1e5; quick 1e4)"
    )
    ap.add_argument("--max-n-sklearn", type=int, default=20000, help="largest N run with sklearn")
    ap.add_argument("--max-n-reference", type=int, default=10000, help="largest N run with the reference")
    ap.add_argument(
        "--max-seconds", type=float, default=None, help="skip runs extrapolated to take longer (default 600; quick 60)"
    )
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions (default 3, quick 1; 1 above 10 s)")
    ap.add_argument("--tol", type=float, default=1e-3, help="KKT tolerance for every method (sklearn's default 1e-3)")
    ap.add_argument("--cache-mb", type=float, default=1024, help="kernel cache of sklearn and of the compiled solver")
    ap.add_argument("--problems", default="overlap,ate")
    ap.add_argument("--cases", default="", help="override the cases, e.g. 1x10000,64x1000 (datasets x units)")
    ap.add_argument("--methods", default="sklearn,reference,cpu,cpu1,cuda")
    ap.add_argument(
        "--cuda-configs",
        default="block,ws,ws/256",
        help="CUDA algorithm settings timed side by side: block, ws (default settings), ws/SIZE, "
        "ws/SIZE/tT (T threads in the sub-problem kernel, CINA_QP_WS_THREADS), ws/SIZE/lF "
        "(sub-problem tolerance factor, CINA_QP_WS_LTOL)",
    )
    args = ap.parse_args(argv)
    cuda_configs = [parse_cuda_config(c) for c in args.cuda_configs.split(",") if c]

    max_n = args.max_n or (10_000 if args.quick else 100_000)
    max_s = args.max_seconds or (60.0 if args.quick else 600.0)
    reps = args.reps or (1 if args.quick else 3)
    problems = [p for p in args.problems.split(",") if p]
    methods = [m for m in args.methods.split(",") if m]
    if args.quick:
        cases = [(1, 1000), (1, 10_000), (64, 1000)]
    else:
        cases = [(1, 1000), (1, 10_000), (1, 20_000), (1, 100_000), (64, 1000), (1024, 1000)]
    if args.cases:
        cases = [tuple(int(v) for v in c.lower().split("x")) for c in args.cases.split(",") if c]
    cases = [(B, N) for B, N in cases if N <= max_n]

    info = machine()
    nthreads = torch.get_num_threads()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch threads {nthreads}, load {info['load_average_start']}, "
        f"gpu {info['gpu']}",
        flush=True,
    )
    if not has_extension():
        print(f"compiled extension missing ({extension_error()}): cpu/cuda rows skipped", flush=True)
    cuda_ok = torch.cuda.is_available() and has_extension() and _has_solver_kernel(torch.device("cuda"))
    notes = []
    if "cuda" in methods and not cuda_ok:
        notes.append(
            "cuda: skipped ("
            + ("no GPU" if not torch.cuda.is_available() else "this build has no CUDA kernel for the solver")
            + ")"
        )

    if cuda_ok and "cuda" in methods:  # warm-up: CUDA context, module load, allocator pools
        Xw, Ww = make_data(2, 64)
        solver.dual_solve(Xw.cuda(), Ww.cuda(), 1.0, kernel="rbf", backend="fused")
        torch.cuda.synchronize()

    rows = []
    history = {}  # (method, problem, B) -> list of (N, time) for extrapolation

    def too_slow(key, B, N):
        h = history.get(key)
        if not h:
            return False
        n0, t0 = h[-1]
        return t0 * (N / n0) ** 2 > max_s

    for problem in problems:
        lam = LAM[problem]
        for B, N in cases:
            X, W = make_data(B, N)
            gamma = solver._rbf_gamma(X, torch.ones(B, N, dtype=torch.bool))
            plan = []
            if "sklearn" in methods and problem == "overlap" and N <= args.max_n_sklearn:
                plan.append(
                    (
                        "sklearn",
                        lambda X=X, W=W, lam=lam, gamma=gamma: run_sklearn(X, W, lam, args.tol, gamma, args.cache_mb),
                    )
                )
            ref_bytes = 4 * B * N * N * 8
            if "reference" in methods and N <= args.max_n_reference and ref_bytes < 0.25 * mem_bytes():
                plan.append(
                    (
                        "reference",
                        lambda X=X, W=W, lam=lam, problem=problem: run_solver(
                            reference_qp.dual_solve, X, W, lam, args.tol, problem
                        ),
                    )
                )
            if has_extension():
                fused = lambda X=X, W=W, lam=lam, problem=problem: run_solver(  # noqa: E731
                    solver.dual_solve, X, W, lam, args.tol, problem, backend="fused", cache_mb=args.cache_mb
                )
                if "cpu" in methods:
                    plan.append((f"cpu[{nthreads} threads]", fused))
                if "cpu1" in methods and nthreads > 1 and N <= args.max_n_sklearn:  # the per-core comparison
                    plan.append(("cpu[1 thread]", ("threads1", fused)))
            if cuda_ok and "cuda" in methods:
                Xc, Wc = X.cuda(), W.cuda()
                # each algorithm forced (CINA_QP_CUDA_ALGO), side by side; the default ("auto") is
                # the working-set decomposition from 4096 units, one block per problem below
                # (and the other settings asked for with --cuda-configs)
                for name, env in cuda_configs:
                    plan.append(
                        (
                            f"cuda[{name}]",
                            lambda env=env: with_envs(
                                env,
                                lambda: run_solver(solver.dual_solve, Xc, Wc, lam, args.tol, problem, backend="fused"),
                            ),
                        )
                    )
            if (
                torch.cuda.is_available()
                and "cuda" in methods
                and 4 * B * N * N * 8 < 0.25 * torch.cuda.get_device_properties(0).total_memory
                and N <= args.max_n_reference
            ):
                Xc, Wc = X.cuda(), W.cuda()
                plan.append(
                    ("reference-cuda", lambda: run_solver(reference_qp.dual_solve, Xc, Wc, lam, args.tol, problem))
                )

            sk_obj = None
            for name, fn in plan:
                key = (name, problem, B)
                if too_slow(key, B, N):
                    rows.append(
                        dict(problem=problem, B=B, N=N, method=name, skipped="extrapolated time > --max-seconds")
                    )
                    print(
                        f"  {problem:8s} {B:5d} x {N:6d} {name:18s} skipped (extrapolated > {max_s:.0f} s)", flush=True
                    )
                    continue
                one_thread = isinstance(fn, tuple)
                call = fn[1] if one_thread else fn
                times, res = [], None
                for r in range(reps):
                    old = torch.get_num_threads()
                    if one_thread:
                        torch.set_num_threads(1)
                    try:
                        dt, res = call()
                    finally:
                        torch.set_num_threads(old)
                    times.append(dt)
                    if dt > 10.0:
                        break
                t = statistics.median(times)
                history.setdefault(key, []).append((N, t))
                row = dict(
                    problem=problem,
                    B=B,
                    N=N,
                    method=name,
                    time_s=t,
                    reps=len(times),
                    iterations_median=float(statistics.median(res["iterations"])),
                    kkt_max=res["kkt"],
                    converged_frac=res["converged"],
                )
                if name == "sklearn":
                    sk_obj = overlap_objective(X, W, res["alpha"], lam, gamma)
                    row["objective_gap_vs_sklearn"] = 0.0
                elif sk_obj is not None and "objective" in res:
                    row["objective_gap_vs_sklearn"] = float(((res["objective"] - sk_obj).abs() / sk_obj.abs()).max())
                rows.append(row)
                gap = row.get("objective_gap_vs_sklearn")
                print(
                    f"  {problem:8s} {B:5d} x {N:6d} {name:18s} {t:9.3f} s  it {row['iterations_median']:9.0f}  "
                    f"kkt {row['kkt_max'] if row['kkt_max'] is not None else float('nan'):.2e}  "
                    f"gap {gap if gap is not None else float('nan'):.1e}",
                    flush=True,
                )
            del X, W

    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_outputs(Path(args.out), info, rows, notes, args, nthreads)


def write_outputs(out: Path, info, rows, notes, args, nthreads):
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": info,
        "tol": args.tol,
        "lam": LAM,
        "features": P_FEATURES,
        "cache_mb": args.cache_mb,
        "notes": notes,
        "rows": rows,
    }
    (out / "solver.json").write_text(json.dumps(payload, indent=2))

    # speedups against sklearn (same problem and case)
    sk = {(r["problem"], r["B"], r["N"]): r["time_s"] for r in rows if r["method"] == "sklearn" and "time_s" in r}
    lines = [
        "# Balancing dual solver benchmark",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['cores_available']} available), torch {info['torch']} "
        f"with {nthreads} threads, sklearn {info['sklearn']}; load average at start {info['load_average_start']}, "
        f"at end {info['load_average_end']}; GPU: {info['gpu']}.",
        "",
        f"float64, p = {P_FEATURES} covariates, RBF kernel (default gamma), tol = {args.tol} on the KKT violation for "
        f"every method, lam: overlap {LAM['overlap']} (C = 1), ate {LAM['ate']}; cache {args.cache_mb} MB.",
        "",
        "| problem | datasets x units | method | time (s) | vs sklearn | iterations (median) | max KKT | converged | "
        "objective gap vs sklearn |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        case = f"{r['B']} x {r['N']}"
        if "skipped" in r:
            lines.append(f"| {r['problem']} | {case} | {r['method']} | skipped: {r['skipped']} | | | | | |")
            continue
        s = sk.get((r["problem"], r["B"], r["N"]))
        speed = f"{s / r['time_s']:.1f}x" if s else ""
        kkt = f"{r['kkt_max']:.1e}" if r["kkt_max"] is not None else "(LIBSVM)"
        conv = f"{r['converged_frac']:.0%}" if r["converged_frac"] is not None else ""
        gap = r.get("objective_gap_vs_sklearn")
        gap = f"{gap:.1e}" if gap is not None else ""
        lines.append(
            f"| {r['problem']} | {case} | {r['method']} | {r['time_s']:.3f} | {speed} | "
            f"{r['iterations_median']:.0f} | {kkt} | {conv} | {gap} |"
        )
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    (out / "solver.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    done = [r for r in rows if "time_s" in r]
    if not done:
        return
    cases = sorted({(r["problem"], r["B"], r["N"]) for r in done}, key=lambda c: (c[0], c[1], c[2]))
    methods = sorted({r["method"] for r in done})
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(cases)), 4))
    width = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        xs, ys = [], []
        for i, c in enumerate(cases):
            t = [r["time_s"] for r in done if (r["problem"], r["B"], r["N"]) == c and r["method"] == m]
            if t:
                xs.append(i + k * width)
                ys.append(t[0])
        ax.bar(xs, ys, width=width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([f"{p}\n{b}x{n}" for p, b, n in cases], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("time (s)")
    ax.set_title(f"balancing dual solver, tol {args.tol} ({info['cpu'][:40]}, {nthreads} threads)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "solver.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
