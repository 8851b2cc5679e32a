"""The CUDA batched box-QP / balancing dual solver (csrc/qp_solve/cuda.cu) on a real GPU.

Compared with the compiled CPU solver (same algorithm; run without shrinking for the closest
iterates), the pure-PyTorch reference and exact facts (KKT violation recomputed from scratch).
Skipped cleanly without a CUDA device or a build with the CUDA solver.  Run on the GPU machine by
tools/gpu_check.sh.
"""

from __future__ import annotations

import importlib
import math
from functools import partial

import numpy as np
import pytest
import torch

from cina_ext._core.backend import _has_solver_kernel
from cina_ext._core.extension import has_extension

import _solver_cases
from _solver_cases import kkt_pair

R = importlib.import_module("cina_ext.reference.qp_solve")
solver = importlib.import_module("cina_ext.ops.qp_solve")

CUDA_OK = torch.cuda.is_available() and has_extension() and _has_solver_kernel(torch.device("cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA device and a cina_ext build with the CUDA solver"),
]
F64, F32 = torch.float64, torch.float32
INF = math.inf
DEV = "cuda"


make_data = partial(_solver_cases.make_data, p=6)


def cuda_and_cpu(fn, X, W, *args, **kw):
    # tensor keyword arguments (mask, ...) go to the device with the data
    kw_dev = {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    gpu = fn(X.to(DEV), W.to(DEV), *args, backend="fused", **kw_dev)
    cpu = fn(X, W, *args, backend="fused", shrinking=False, **kw)
    return gpu, cpu


def check_same(gpu, cpu, *, rtol=1e-9, atol_w=1e-6, weights=True):
    assert gpu.alpha.device.type == "cuda"
    assert bool(gpu.converged.all()) and bool(cpu.converged.all())
    assert torch.allclose(gpu.objective.cpu(), cpu.objective, rtol=rtol, atol=1e-12)
    if weights:
        assert torch.allclose(gpu.weights.cpu(), cpu.weights, atol=atol_w)
    lim = 0.25 * torch.maximum(gpu.iterations.cpu(), cpu.iterations).double() + 3
    assert bool(((gpu.iterations.cpu() - cpu.iterations).abs().double() <= lim).all())


@pytest.mark.parametrize("kernel", ["rbf", "linear", "laplace", "cina", "precomputed"])
@pytest.mark.parametrize("estimand", ["overlap", "ate", "att"])
def test_dual_parity_with_cpu_and_reference(kernel, estimand):
    B, N, lam = 4, 150, 0.2
    X, W = make_data(B, N, seed=2)
    Xin = R.gram(X, "rbf", gamma=0.3) if kernel == "precomputed" else X
    gpu, cpu = cuda_and_cpu(solver.dual_solve, Xin, W, lam, kernel=kernel, estimand=estimand, tol=1e-9)
    check_same(gpu, cpu, weights=kernel != "linear")
    ref = R.dual_solve(Xin, W, lam, kernel=kernel, estimand=estimand, tol=1e-9)
    assert torch.allclose(gpu.objective.cpu(), ref.objective, rtol=1e-7)
    if estimand == "overlap":
        assert float((gpu.alpha * W.to(DEV)).sum(-1).abs().max()) <= 1e-12 * N
        assert torch.allclose(gpu.intercept.cpu(), ref.intercept, atol=1e-5)


@pytest.mark.parametrize("loss,intercept", [("hinge", False), ("squared_hinge", True)])
def test_overlap_variants(loss, intercept):
    X, W = make_data(3, 200, seed=4)
    gpu, cpu = cuda_and_cpu(solver.dual_solve, X, W, 0.1, loss=loss, intercept=intercept, tol=1e-9)
    check_same(gpu, cpu)


def test_masks_garbage_padding_and_block_sizes(monkeypatch):
    B, N = 5, 300
    X, W = make_data(B, N, seed=10)
    g = torch.Generator().manual_seed(11)
    mask = torch.rand(B, N, generator=g) > 0.35
    mask[:, :2] = True
    mask[4, 40:] = False
    Xp = torch.where(mask.unsqueeze(-1), X, torch.full_like(X, float("nan")))
    Wp = torch.where(mask, W, torch.full_like(W, 7.0))
    for threads in ("32", "256", "1024"):
        monkeypatch.setenv("CINA_QP_THREADS", threads)
        for est in ("overlap", "ate", "att"):
            res = solver.dual_solve(
                Xp.to(DEV), Wp.to(DEV), 0.2, estimand=est, mask=mask.to(DEV), tol=1e-9, backend="fused"
            )
            ref = solver.dual_solve(Xp, Wp, 0.2, estimand=est, mask=mask, tol=1e-9, backend="fused")
            assert bool(res.converged.all())
            assert (res.weights.cpu()[~mask] == 0).all()
            assert torch.allclose(res.objective.cpu(), ref.objective, rtol=1e-9)
            assert torch.allclose(res.weights.cpu(), ref.weights, atol=1e-6)


def test_deterministic_and_cache_independent():
    X, W = make_data(3, 400, seed=13)
    Xd, Wd = X.to(DEV), W.to(DEV)
    a = solver.dual_solve(Xd, Wd, 0.05, tol=1e-8, backend="fused")
    b = solver.dual_solve(Xd, Wd, 0.05, tol=1e-8, backend="fused")
    tiny = solver.dual_solve(Xd, Wd, 0.05, tol=1e-8, backend="fused", cache_mb=0.01)
    for r in (b, tiny):
        assert torch.equal(a.alpha, r.alpha) and torch.equal(a.iterations, r.iterations)
    K = R.gram(X, "rbf")
    for i in range(3):
        Q = (W[i, :, None] * W[i, None, :]) * K[i] / 0.05
        k = kkt_pair(Q, np.ones(400), a.alpha[i].cpu(), np.zeros(400), np.ones(400), W[i])
        assert abs(k - float(a.kkt[i])) <= 1e-9 and k < 1e-8


@pytest.mark.parametrize("dtype", [F32, F64])
def test_generic_qp(dtype):
    g = torch.Generator().manual_seed(21)
    B, N = 3, 60
    A = torch.randn(B, N, N, generator=g, dtype=F64)
    Q = (A @ A.transpose(1, 2) / N + 0.05 * torch.eye(N, dtype=F64)).to(dtype)
    p = torch.randn(B, N, generator=g, dtype=F64).to(dtype)
    c = torch.randn(B, N, generator=g, dtype=F64).to(dtype)
    c[:, :5] = 0.0
    d = torch.tensor([0.3, -0.2, 0.0], dtype=dtype)
    lo = torch.full((B, N), -1.0, dtype=dtype)
    up = torch.full((B, N), 1.0, dtype=dtype)
    up[:, 7] = INF
    tol = 1e-9 if dtype == F64 else 1e-4
    for cc, dd in ((None, None), (c, d)):
        gpu = solver.qp_solve(
            Q.to(DEV),
            p.to(DEV),
            lo.to(DEV),
            up.to(DEV),
            None if cc is None else cc.to(DEV),
            None if dd is None else dd.to(DEV),
            tol=tol,
            backend="fused",
        )
        cpu = solver.qp_solve(Q, p, lo, up, cc, dd, tol=tol, backend="fused", shrinking=False)
        assert bool(gpu.converged.all()) and bool(cpu.converged.all())
        assert torch.allclose(gpu.objective.cpu().double(), cpu.objective.double(), rtol=1e-9 if dtype == F64 else 1e-4)


def test_max_iter_not_converged_and_empty():
    X, W = make_data(3, 60, seed=8)
    res = solver.dual_solve(X.to(DEV), W.to(DEV), 0.1, max_iter=3, backend="fused")
    assert not bool(res.converged.any()) and (res.iterations == 3).all()
    res2 = solver.dual_solve(
        X.to(DEV),
        W.to(DEV),
        0.1,
        max_iter=torch.tensor([2, 100_000, 5]),
        tol=torch.tensor([1e-6, 1e-7, 1e-6]),
        backend="fused",
    )
    assert res2.converged.tolist() == [False, True, False]
    Q = torch.eye(3, dtype=F64).expand(2, 3, 3).contiguous().to(DEV)
    p = torch.ones(2, 3, dtype=F64, device=DEV)
    mask = torch.tensor([[True, True, True], [False, False, False]], device=DEV)
    r = solver.qp_solve(Q, p, 0.0, INF, mask=mask, backend="fused")
    assert r.converged.tolist() == [True, True] and (r.x[1] == 0).all()


def test_float32_tight_tol_stops_unconverged():
    X, W = make_data(2, 60, seed=18, dtype=F32)
    res = solver.dual_solve(X.to(DEV), W.to(DEV), 1e-3, tol=1e-12, backend="fused")
    assert not bool(res.converged.any()) and bool((res.iterations < 100_000).all())


def test_larger_problems_match_cpu():
    X, W = make_data(1, 3000, p=10, seed=30)
    gpu, cpu = cuda_and_cpu(solver.dual_solve, X, W, 1.0, tol=1e-3)
    check_same(gpu, cpu, rtol=1e-6, atol_w=1e-3)
    Xb, Wb = make_data(64, 300, p=10, seed=31)
    gpu, cpu = cuda_and_cpu(solver.dual_solve, Xb, Wb, 1.0, estimand="ate", tol=1e-4)
    check_same(gpu, cpu, rtol=1e-7, atol_w=1e-4)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_helper_operators_match_cpu(dtype):
    X, _ = make_data(3, 500, p=7, seed=2, dtype=dtype)
    mask = torch.rand(3, 500, generator=torch.Generator().manual_seed(1)) > 0.2
    lse = torch.ops.cina.qp_kernel_lse(X, mask, 0.4)
    lse_d = torch.ops.cina.qp_kernel_lse(X.to(DEV), mask.to(DEV), 0.4)
    assert torch.allclose(lse_d.cpu(), lse, rtol=1e-12, atol=1e-12)
    e = torch.zeros(0, dtype=F64)
    for kind, gamma, lse_arg in (
        (1, e, e.reshape(0, 0)),
        (2, torch.tensor([0.2, 0.5, 1.0], dtype=F64), e.reshape(0, 0)),
        (3, e, lse),
    ):
        ref = torch.ops.cina.qp_kernel_rowsum(X, kind, gamma, 0.4, lse_arg, mask, mask)
        got = torch.ops.cina.qp_kernel_rowsum(
            X.to(DEV), kind, gamma.to(DEV), 0.4, lse_arg.to(DEV), mask.to(DEV), mask.to(DEV)
        )
        assert torch.allclose(got.cpu(), ref, rtol=1e-11, atol=1e-11)
    A = R.gram(X, "rbf", mask=mask)
    A[1, 3, 4] += 0.5
    A[2, 5, 6] = float("nan")
    asym, fin = torch.ops.cina.qp_check_dense(A, mask)
    asym_d, fin_d = torch.ops.cina.qp_check_dense(A.to(DEV), mask.to(DEV))
    assert torch.equal(fin_d.cpu(), fin) and fin.tolist() == [True, True, bool(not mask[2, 5] or not mask[2, 6])]
    assert torch.allclose(asym_d.cpu()[fin], asym[fin], rtol=1e-12)


def test_device_mismatch_errors():
    X, W = make_data(1, 20, seed=1)
    with pytest.raises(ValueError, match="W is on cpu"):
        solver.dual_solve(X.to(DEV), W, 0.5, backend="fused")
    with pytest.raises(ValueError, match="mask is on"):
        solver.dual_solve(X.to(DEV), W.to(DEV), 0.5, mask=torch.ones(1, 20, dtype=torch.bool), backend="fused")
    Q = torch.eye(4, dtype=F64)[None].to(DEV)
    with pytest.raises(ValueError, match="p is on"):
        solver.qp_solve(Q, torch.ones(1, 4, dtype=F64), backend="fused")
    with pytest.raises(ValueError, match="c is on"):
        solver.qp_solve(
            Q,
            torch.ones(1, 4, dtype=F64, device=DEV),
            0.0,
            1.0,
            c=torch.ones(1, 4, dtype=F64),
            d=torch.ones(1, dtype=F64, device=DEV),
            backend="fused",
        )
    with pytest.raises(RuntimeError, match="same device"):
        e = torch.zeros(0, dtype=F64, device=DEV)
        torch.ops.cina.qp_kernel_rowsum(
            X.to(DEV),
            1,
            e,
            1.0,
            e.reshape(0, 0),
            torch.ones(1, 20, dtype=torch.bool),
            torch.ones(1, 20, dtype=torch.bool, device=DEV),
        )


# ---- the working-set algorithm (default from 4096 units; forced here at smaller sizes) ---------


def check_optimum(gpu, cpu, *, rtol, atol_w, weights=True):
    """Same optimum as the CPU solver (the iterates differ: no iteration comparison)."""
    assert gpu.alpha.device.type == "cuda"
    assert bool(gpu.converged.all()) and bool(cpu.converged.all())
    assert torch.allclose(gpu.objective.cpu(), cpu.objective, rtol=rtol, atol=1e-12)
    if weights:
        assert torch.allclose(gpu.weights.cpu(), cpu.weights, atol=atol_w)


@pytest.mark.parametrize("size", ["8", "256", "256/t64", "512"])  # (/tT: T threads in the sub-problem kernel)
@pytest.mark.parametrize("kernel", ["rbf", "laplace", "cina", "precomputed"])
@pytest.mark.parametrize("estimand", ["overlap", "ate", "att"])
def test_working_set_matches_cpu(monkeypatch, size, kernel, estimand):
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    size, _, threads = size.partition("/t")
    monkeypatch.setenv("CINA_QP_WS_SIZE", size)
    if threads:
        monkeypatch.setenv("CINA_QP_WS_THREADS", threads)
    B, N = 3, 700
    X, W = make_data(B, N, seed=40)
    g = torch.Generator().manual_seed(41)
    mask = torch.rand(B, N, generator=g) > 0.2
    mask[:, :2] = True
    mask[2, 300:] = False
    Xin = R.gram(X, "rbf", gamma=0.3, mask=mask) if kernel == "precomputed" else X
    gpu, cpu = cuda_and_cpu(solver.dual_solve, Xin, W, 0.2, kernel=kernel, estimand=estimand, tol=1e-8, mask=mask)
    check_optimum(gpu, cpu, rtol=1e-8, atol_w=1e-4 if kernel == "cina" else 1e-5)
    assert (gpu.alpha.cpu()[~mask] == 0).all()
    assert bool((gpu.kkt.cpu() < 1e-8).all())


def test_working_set_is_the_default_for_large_problems(monkeypatch):
    monkeypatch.delenv("CINA_QP_CUDA_ALGO", raising=False)
    X, W = make_data(1, 6000, p=10, seed=42)
    gpu, cpu = cuda_and_cpu(solver.dual_solve, X, W, 1.0, tol=1e-3)
    check_optimum(gpu, cpu, rtol=1e-5, atol_w=1e-3)
    # the default at 6000 units is the working set (deterministic: forced, the same bits), and
    # the block algorithm reaches the same optimum
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    ws = solver.dual_solve(X.to(DEV), W.to(DEV), 1.0, tol=1e-3, backend="fused")
    assert torch.equal(ws.alpha, gpu.alpha) and torch.equal(ws.iterations, gpu.iterations)
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "block")
    blk = solver.dual_solve(X.to(DEV), W.to(DEV), 1.0, tol=1e-3, backend="fused")
    assert torch.allclose(blk.objective, gpu.objective, rtol=1e-5)
    monkeypatch.delenv("CINA_QP_CUDA_ALGO")
    ate = solver.dual_solve(X.to(DEV), W.to(DEV), 0.01, estimand="ate", tol=1e-6, backend="fused")
    ate_cpu = solver.dual_solve(X, W, 0.01, estimand="ate", tol=1e-6, backend="fused")
    assert bool(ate.converged.all()) and torch.allclose(ate.objective.cpu(), ate_cpu.objective, rtol=1e-7)


def test_working_set_generic_qp_and_float32(monkeypatch):
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    monkeypatch.setenv("CINA_QP_WS_SIZE", "16")
    Q, p, lo, up, c, d = _solver_cases.small_c_equality_case()
    res = solver.qp_solve(Q.to(DEV), p.to(DEV), lo.to(DEV), up.to(DEV), c.to(DEV), d.to(DEV), tol=1e-9, backend="fused")
    ref = R.qp_solve(Q, p, lo, up, c=c, d=d, tol=1e-10)
    assert bool(res.converged.all()) and bool((res.kkt < 1e-9).all())
    assert torch.allclose(res.objective.cpu(), ref.objective, rtol=1e-10)
    assert torch.allclose((c * res.x.cpu()).sum(-1), d, atol=1e-12)
    X, W = make_data(2, 400, seed=43, dtype=F32)
    res = solver.dual_solve(X.to(DEV), W.to(DEV), 0.1, tol=1e-4, backend="fused")
    ref = R.dual_solve(X.double(), W.double(), 0.1, tol=1e-10)
    assert res.alpha.dtype == F32 and bool(res.converged.all())
    assert torch.allclose(res.objective.double().cpu(), ref.objective, rtol=1e-4)


@pytest.mark.parametrize("estimand", ["ate", "att", "overlap"])
def test_a_penalty_grid_on_cuda_is_the_repeated_datasets(estimand):
    # lam of shape (B, L): the problems read their dataset's X through the problem -> dataset map
    # (as the two arms of "ate" do), so the grid equals the datasets repeated L times, and the CPU
    X, W = make_data(3, 90, seed=41)
    L = 4
    lam = torch.tensor([0.01, 0.03, 0.3, 1.0], dtype=F64).expand(3, -1) * torch.tensor([[1.0], [2.0], [0.5]], dtype=F64)
    kw = dict(estimand=estimand, tol=1e-9)
    grid = solver.dual_solve(X.to(DEV), W.to(DEV), lam, backend="fused", **kw)
    stacked = solver.dual_solve(
        X.repeat_interleave(L, 0).to(DEV), W.repeat_interleave(L, 0).to(DEV), lam.reshape(-1), backend="fused", **kw
    )
    assert grid.weights.shape == (3 * L, 90)
    assert torch.equal(grid.weights, stacked.weights) and torch.equal(grid.iterations, stacked.iterations)
    cpu = solver.dual_solve(X, W, lam, backend="fused", shrinking=False, **kw)
    check_same(grid, cpu)
