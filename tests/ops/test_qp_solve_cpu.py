"""The compiled CPU batched box-QP / balancing dual solver (cina_ext.ops.qp_solve, backend="fused").

Expected values come from sklearn.svm.SVC, a generic interior-point QP solver (clarabel through
qpsolvers) and the pure-PyTorch reference (cina_ext.reference.qp_solve), never from the solver under test.
"""

from __future__ import annotations

import importlib
import math
from functools import partial

import numpy as np
import pytest
import torch

from cina_ext._core.extension import extension_error, has_extension

import _solver_cases
from _solver_cases import kkt_pair

R = importlib.import_module("cina_ext.reference.qp_solve")
solver = importlib.import_module("cina_ext.ops.qp_solve")

pytestmark = pytest.mark.skipif(not has_extension(), reason=f"compiled extension missing: {extension_error()}")

F64, F32 = torch.float64, torch.float32
INF = math.inf


# ----------------------------------------------------------------------------------------------
# helpers (independent of the solver under test)
# ----------------------------------------------------------------------------------------------


make_data = partial(_solver_cases.make_data, p=4)


def clarabel_qp(Q, p, lo, up, c=None, d=None):
    """min 1/2 x'Qx - p'x, lo <= x <= up (+-inf allowed), [c'x = d], by clarabel (float64)."""
    import scipy.sparse as sp
    from qpsolvers import solve_qp

    Q = np.asarray(Q, dtype=float)
    p = np.asarray(p, dtype=float)
    n = len(p)
    lo = np.broadcast_to(np.asarray(lo, dtype=float), (n,))
    up = np.broadcast_to(np.asarray(up, dtype=float), (n,))
    rows, h = [], []
    for i in range(n):
        if np.isfinite(up[i]):
            e = np.zeros(n)
            e[i] = 1
            rows.append(e)
            h.append(up[i])
        if np.isfinite(lo[i]):
            e = np.zeros(n)
            e[i] = -1
            rows.append(e)
            h.append(-lo[i])
    G = sp.csc_matrix(np.array(rows)) if rows else None
    hh = np.array(h) if rows else None
    A = sp.csc_matrix(np.asarray(c, dtype=float)[None, :]) if c is not None else None
    b = np.array([float(d)]) if c is not None else None
    x = solve_qp(
        sp.csc_matrix(0.5 * (Q + Q.T)),
        -p,
        G,
        hh,
        A,
        b,
        solver="clarabel",
        tol_gap_abs=1e-13,
        tol_gap_rel=1e-13,
        tol_feas=1e-13,
        max_iter=500,
    )
    assert x is not None
    return x


def objective(Q, p, x):
    Q, p, x = (np.asarray(a, dtype=float) for a in (Q, p, x))
    return 0.5 * x @ Q @ x - p @ x


def svc_alpha(K, W, lam, tol=1e-10):
    """SVM-balancing dual from sklearn: alpha = lam * |dual_coef_| (docs/method.md §2)."""
    from sklearn.svm import SVC

    K = np.asarray(K, dtype=float)
    y = (np.asarray(W) > 0).astype(int)
    svc = SVC(kernel="precomputed", C=1.0 / lam, tol=tol, max_iter=-1).fit(K, y)
    a = np.zeros(len(y))
    a[svc.support_] = lam * np.abs(svc.dual_coef_[0])
    return a, float(svc.intercept_[0])


def per_arm(a, W):
    a = np.asarray(a, dtype=float)
    W = np.asarray(W)
    w = np.zeros_like(a)
    for s in (1, -1):
        m = W == s
        w[m] = a[m] / a[m].sum()
    return w


def laplace_gram(X, gamma=None):
    """exp(-gamma ||x_i - x_j||_2) by scipy's cdist (float64), per dataset (gamma a float or one
    per dataset); default gamma 1 / sqrt(p * mean per-feature population variance)."""
    from scipy.spatial.distance import cdist

    out = []
    for b, Xb in enumerate(np.asarray(X.double())):
        if gamma is None:
            g = 1.0 / math.sqrt(Xb.shape[1] * Xb.var(0).mean())
        else:
            g = float(np.broadcast_to(np.asarray(gamma, dtype=float), (X.shape[0],))[b])
        out.append(np.exp(-g * cdist(Xb, Xb)))
    return torch.as_tensor(np.stack(out))


def random_psd(n, rank=None, *, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, rank or n, generator=g, dtype=F64)
    Q = A @ A.T / (rank or n) + (1e-3 * torch.eye(n, dtype=F64) if rank is None else 0)
    return Q.to(dtype)


# ----------------------------------------------------------------------------------------------
# overlap (SVM dual) against sklearn
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["rbf", "linear", "laplace", "precomputed", "cina"])
def test_overlap_matches_sklearn(kernel):
    B, N, lam = 3, 80, 0.3
    X, W = make_data(B, N, seed=1)
    if kernel == "precomputed":
        Xin = R.gram(X, "rbf", gamma=0.2)
        K = Xin
    else:
        Xin = X
        K = laplace_gram(X) if kernel == "laplace" else R.gram(X, kernel)
    res = solver.dual_solve(Xin, W, lam, kernel=kernel, tol=1e-9, backend="fused")
    assert bool(res.converged.all()) and float(res.kkt.max()) <= 1e-9
    for b in range(B):
        Q = (W[b, :, None] * W[b, None, :]) * K[b] / lam
        a_sk, b_sk = svc_alpha(K[b], W[b], lam)
        f_ours = float(res.objective[b])
        f_sk = objective(Q, np.ones(N), a_sk)
        assert abs(f_ours - f_sk) <= 1e-6 * abs(f_sk)
        assert abs(f_ours - objective(Q, np.ones(N), res.alpha[b])) <= 1e-9 * abs(f_sk)
        if kernel == "linear":
            # rank-deficient Gram: alpha is not unique, the primal beta is
            beta_ours = (res.alpha[b] * W[b]) @ X[b] / lam
            beta_sk = torch.as_tensor(a_sk * W[b].numpy()) @ X[b] / lam
            assert torch.allclose(beta_ours, beta_sk, atol=1e-4, rtol=1e-4)
        else:
            np.testing.assert_allclose(res.weights[b].numpy(), per_arm(a_sk, W[b]), atol=1e-4)
            assert abs(float(res.intercept[b]) - b_sk) <= 1e-4 * (1 + abs(b_sk))
        assert abs(float((res.alpha[b] * W[b]).sum())) <= 1e-12 * N  # W'alpha = 0 to rounding


# ----------------------------------------------------------------------------------------------
# parity with the pure-PyTorch reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimand", ["overlap", "ate", "att"])
@pytest.mark.parametrize("kernel", ["rbf", "laplace", "cina", "precomputed"])
def test_dual_parity_with_reference(estimand, kernel):
    B, N, lam = 3, 60, 0.2
    X, W = make_data(B, N, seed=2)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(B, N, generator=g) > 0.2
    mask[:, :2] = True
    Xin = R.gram(X, "rbf", mask=mask) if kernel == "precomputed" else X
    kw = dict(kernel=kernel, estimand=estimand, mask=mask, tol=1e-8)
    ours = solver.dual_solve(Xin, W, lam, backend="fused", **kw)
    ref = R.dual_solve(Xin, W, lam, **kw)
    assert bool(ours.converged.all()) and bool(ref.converged.all())
    assert torch.allclose(ours.objective, ref.objective, rtol=1e-6, atol=0)
    assert torch.allclose(ours.weights, ref.weights, atol=1e-4, rtol=0)
    assert float(ours.kkt.max()) <= 1e-8
    assert (ours.weights[~mask] == 0).all() and (ours.alpha[~mask] == 0).all()
    if estimand == "overlap":
        assert torch.allclose(ours.intercept, ref.intercept, atol=1e-4)
    assert ours.estimand == estimand
    assert isinstance(ours, R.BalanceResult)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("estimand", ["overlap", "ate", "att"])
def test_laplace_parity_dtypes_odd_sizes_and_one_unit_arms(estimand, dtype):
    """laplace on the compiled solver against the reference: odd sizes (N = 1 mod 4, p = 5 so the
    feature loop has a remainder), per-dataset gamma, a mask, a dataset whose treated arm is one
    unit and one with duplicated rows (distance 0); float64 and float32."""
    B, N, p = 3, 37, 5
    X, W = _solver_cases.make_data(B, N, p, seed=23)
    g = torch.Generator().manual_seed(24)
    mask = torch.rand(B, N, generator=g) > 0.15
    mask[:, :2] = True
    W[1] = -1.0
    W[1, 0] = 1.0  # dataset 1: one treated unit
    X[2, 5:9] = X[2, 9:13]  # dataset 2: duplicated rows
    gamma = torch.tensor([0.3, 0.7, 1.1], dtype=F64)
    X, W = X.to(dtype), W.to(dtype)
    kw = dict(kernel="laplace", gamma=gamma, estimand=estimand, mask=mask)
    tol = 1e-8 if dtype == F64 else 1e-4
    ours = solver.dual_solve(X, W, 0.3, backend="fused", tol=tol, **kw)
    ref = R.dual_solve(X, W, 0.3, tol=tol, **kw)
    # the same problem solved from an independently computed Gram matrix
    Kd = laplace_gram(torch.where(mask.unsqueeze(-1), X, 0).double(), gamma=gamma.numpy())
    dense = R.dual_solve(Kd, W.double(), 0.3, kernel="precomputed", estimand=estimand, mask=mask, tol=1e-10)
    assert bool(ours.converged.all()) and bool(ref.converged.all())
    # float32: a KKT tolerance of 1e-4 leaves objectives ~1e-3 apart (the float32 reference keeps
    # its gradient in float32)
    rtol, atol = (1e-6, 1e-4) if dtype == F64 else (1e-3, 5e-3)
    assert torch.allclose(ours.objective.double(), ref.objective.double(), rtol=rtol, atol=0)
    assert torch.allclose(ours.objective.double(), dense.objective, rtol=rtol, atol=0)
    # overlap with duplicated rows (dataset 2): alpha is not unique there, the primal
    # f = K (alpha * W) is
    uniq = [0, 1] if estimand == "overlap" else [0, 1, 2]
    assert torch.allclose(ours.weights[uniq].double(), ref.weights[uniq].double(), atol=atol, rtol=0)
    assert torch.allclose(ours.weights[uniq].double(), dense.weights[uniq], atol=atol, rtol=0)
    if estimand == "overlap":
        f_ours = Kd[2] @ (ours.alpha[2].double() * W[2].double())
        f_dense = Kd[2] @ (dense.alpha[2] * W[2].double())
        assert torch.allclose(f_ours, f_dense, atol=10 * atol, rtol=0)
    assert (ours.weights[~mask] == 0).all()
    assert ours.weights.dtype == dtype
    if estimand != "att":
        assert float(ours.weights[1, 0]) == pytest.approx(1.0)  # the one treated unit takes all


def test_laplace_default_gamma_and_rowsum():
    """The default laplace gamma is the square root of the default rbf gamma (1 / sqrt(p v)), and
    the compiled kernel row sums equal the independent Gram's."""
    X, W = make_data(2, 41, seed=25)
    mask = torch.ones(2, 41, dtype=torch.bool)
    mask[1, 30:] = False
    ours = solver.dual_solve(X, W, 0.2, kernel="laplace", estimand="ate", mask=mask, tol=1e-9, backend="fused")
    g = [1.0 / math.sqrt(X.shape[2] * X[b][mask[b]].var(0, unbiased=False).mean().item()) for b in range(2)]
    dense = []
    for b in range(2):
        Kb = laplace_gram(X[b : b + 1, mask[b]], gamma=g[b])
        Wb = W[b : b + 1, mask[b]]
        dense.append(R.dual_solve(Kb, Wb, 0.2, kernel="precomputed", estimand="ate", tol=1e-10))
    for b in range(2):
        assert float(ours.objective[b]) == pytest.approx(float(dense[b].objective[0]), rel=1e-6)
        np.testing.assert_allclose(ours.weights[b, mask[b]].numpy(), dense[b].weights[0].numpy(), atol=1e-5)
    gam = torch.tensor(g, dtype=F64)
    rows = torch.ops.cina.qp_kernel_rowsum(X, 4, gam, 1.0, torch.empty(0, 0, dtype=F64), mask, mask)
    Kfull = laplace_gram(X[:1], gamma=g[0])[0]
    np.testing.assert_allclose(rows[0].numpy(), Kfull.sum(1).numpy(), rtol=1e-12)
    Km = laplace_gram(X[1:2, :30], gamma=g[1])[0]
    np.testing.assert_allclose(rows[1, :30].numpy(), Km.sum(1).numpy(), rtol=1e-12)


@pytest.mark.parametrize("loss,intercept", [("squared_hinge", True), ("hinge", False), ("squared_hinge", False)])
def test_overlap_variants_parity(loss, intercept):
    X, W = make_data(2, 50, seed=3)
    kw = dict(loss=loss, intercept=intercept, tol=1e-9)
    ours = solver.dual_solve(X, W, 0.5, backend="fused", **kw)
    ref = R.dual_solve(X, W, 0.5, **kw)
    assert bool(ours.converged.all())
    assert torch.allclose(ours.objective, ref.objective, rtol=1e-7)
    assert torch.allclose(ours.alpha, ref.alpha, atol=1e-5)
    if loss == "squared_hinge":
        assert float(ours.alpha.max()) > 1.0 or True  # unbounded above: no clip at 1
    if not intercept:
        assert (ours.intercept == 0).all()


# ----------------------------------------------------------------------------------------------
# ate / att and generic QPs against clarabel
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_arm_problems_match_clarabel(estimand):
    B, N, lam = 2, 40, 0.05
    X, W = make_data(B, N, seed=4)
    res = solver.dual_solve(X, W, lam, estimand=estimand, tol=1e-10, backend="fused")
    assert bool(res.converged.all())
    K = R.gram(X, "rbf")
    for b in range(B):
        t = (W[b] > 0).numpy()
        arms = [(t, np.ones(N, bool)), (~t, np.ones(N, bool))] if estimand == "ate" else [(~t, t)]
        total = 0.0
        for arm, target in arms:
            Ka = K[b].numpy()[np.ix_(arm, arm)]
            kbar = K[b].numpy()[np.ix_(arm, target)].mean(1)
            Q = 2 * (Ka + lam * np.eye(arm.sum()))
            x = clarabel_qp(Q, 2 * kbar, 0.0, INF, np.ones(arm.sum()), 1.0)
            np.testing.assert_allclose(res.weights[b].numpy()[arm], x, atol=1e-5)
            total += objective(Q, 2 * kbar, x)
        assert abs(float(res.objective[b]) - total) <= 1e-6 * abs(total)
        if estimand == "att":
            np.testing.assert_allclose(res.weights[b].numpy()[t], 1.0 / t.sum())
        for s in (1, -1):
            assert abs(float(res.weights[b][W[b] == s].sum()) - 1) < 1e-12


@pytest.mark.parametrize("dtype", [F64, F32])
def test_generic_qp_with_general_equality(dtype):
    """Box with finite and infinite bounds, equality with c of mixed signs and some c_i = 0."""
    n = 30
    Q = random_psd(n, seed=1, dtype=dtype)
    g = torch.Generator().manual_seed(2)
    p = torch.randn(n, generator=g, dtype=F64).to(dtype)
    lo = torch.where(torch.rand(n, generator=g) < 0.3, torch.tensor(-INF), -torch.rand(n, generator=g, dtype=F64))
    up = torch.where(torch.rand(n, generator=g) < 0.3, torch.tensor(INF), torch.rand(n, generator=g, dtype=F64) + 0.1)
    c = torch.randn(n, generator=g, dtype=F64) * (torch.rand(n, generator=g) > 0.2)
    d = torch.tensor([0.3], dtype=F64)
    tol = 1e-9 if dtype == F64 else 1e-4
    res = solver.qp_solve(
        Q[None],
        p[None],
        lo[None].to(dtype),
        up[None].to(dtype),
        c[None].to(dtype),
        d.to(dtype),
        tol=tol,
        backend="fused",
    )
    assert bool(res.converged.all()) and float(res.kkt[0]) <= tol
    x_ref = clarabel_qp(Q.double(), p.double(), lo, up, c, 0.3)
    f_ref = objective(Q.double(), p.double(), x_ref)
    rel = 1e-7 if dtype == F64 else 1e-4
    assert abs(float(res.objective[0]) - f_ref) <= rel * (1 + abs(f_ref))
    np.testing.assert_allclose(res.x[0].double().numpy(), x_ref, atol=1e-4 if dtype == F64 else 3e-2)
    x = res.x[0].double()
    assert abs(float((c * x).sum()) - 0.3) <= (1e-12 if dtype == F64 else 1e-5)
    lo_t, up_t = lo.to(dtype).double(), up.to(dtype).double()  # the bounds as the solver saw them
    assert bool((x >= lo_t).all() and (x <= up_t).all())
    # the multiplier: gradient + nu c vanishes at free coordinates with c != 0
    G = Q.double() @ x - p.double()
    free = (x > lo_t) & (x < up_t) & (c != 0)
    if bool(free.any()):
        assert float((G + float(res.nu[0]) * c)[free].abs().max()) <= (1e-7 if dtype == F64 else 1e-2)


def test_generic_qp_box_only_matches_clarabel_and_reference():
    n = 25
    Q = torch.stack([random_psd(n, seed=s) for s in range(3)])
    g = torch.Generator().manual_seed(9)
    p = torch.randn(3, n, generator=g, dtype=F64)
    res = solver.qp_solve(Q, p, -0.5, 0.8, tol=1e-10, backend="fused")
    ref = R.qp_solve(Q, p, -0.5, 0.8, tol=1e-10)
    assert bool(res.converged.all())
    assert torch.allclose(res.objective, ref.objective, rtol=1e-9)
    for b in range(3):
        x = clarabel_qp(Q[b], p[b], -0.5, 0.8)
        np.testing.assert_allclose(res.x[b].numpy(), x, atol=1e-6)
    assert (res.nu == 0).all()


# ----------------------------------------------------------------------------------------------
# degenerate and edge cases
# ----------------------------------------------------------------------------------------------


def test_separable_groups_and_duplicated_rows():
    N = 40
    X, W = make_data(2, N, shift=6.0, seed=6)  # separable arms
    X[1, 10:20] = X[1, 0:10]  # duplicated units (singular Gram)
    W[1, 10:20] = W[1, 0:10]
    for est in ("overlap", "ate", "att"):
        res = solver.dual_solve(X, W, 0.1, estimand=est, tol=1e-8, backend="fused")
        ref = R.dual_solve(X, W, 0.1, estimand=est, tol=1e-8)
        assert bool(res.converged.all())
        assert torch.allclose(res.objective, ref.objective, rtol=1e-6)
        assert float(res.kkt.max()) <= 1e-8


def test_tiny_groups_and_n2():
    # one treated unit; and a dataset of two units
    X, W = make_data(1, 20, seed=7)
    W[0] = -1
    W[0, 0] = 1
    for est in ("overlap", "ate", "att"):
        res = solver.dual_solve(X, W, 0.5, estimand=est, backend="fused")
        ref = R.dual_solve(X, W, 0.5, estimand=est)
        assert bool(res.converged.all())
        assert torch.allclose(res.objective, ref.objective, rtol=1e-6)
        assert float(res.weights[0, 0]) == pytest.approx(1.0)
    X2 = torch.tensor([[[0.0, 1.0], [1.0, 0.5]]], dtype=F64)
    W2 = torch.tensor([[1.0, -1.0]], dtype=F64)
    for est in ("overlap", "ate", "att"):
        res = solver.dual_solve(X2, W2, 0.5, estimand=est, backend="fused")
        assert bool(res.converged.all())
        assert torch.allclose(res.weights, torch.ones(1, 2, dtype=F64))
    res = solver.dual_solve(X2, W2, 0.5, estimand="overlap", backend="fused")
    ref = R.dual_solve(X2, W2, 0.5, estimand="overlap")
    assert torch.allclose(res.alpha, ref.alpha, atol=1e-12) and torch.allclose(res.intercept, ref.intercept, atol=1e-9)


def test_max_iter_reports_not_converged():
    X, W = make_data(3, 60, seed=8)
    res = solver.dual_solve(X, W, 0.1, max_iter=3, backend="fused")
    assert not bool(res.converged.any())
    assert (res.iterations == 3).all()
    assert bool((res.kkt > 1e-6).all())
    res0 = solver.dual_solve(X, W, 0.1, max_iter=0, backend="fused")  # x = 0: no weights, flagged
    assert (res0.iterations == 0).all() and not bool(res0.converged.any()) and (res0.weights == 0).all()
    # per-dataset limits
    res2 = solver.dual_solve(
        X, W, 0.1, max_iter=torch.tensor([2, 100_000, 5]), tol=torch.tensor([1e-6, 1e-7, 1e-6]), backend="fused"
    )
    assert res2.converged.tolist() == [False, True, False]
    assert res2.iterations[0] == 2 and res2.iterations[2] == 5 and float(res2.kkt[1]) <= 1e-7


def test_default_max_iter_grows_with_n(monkeypatch):
    """No max_iter: the operator gets max(1e5, 50 N) per dataset (large problems are not stopped
    at a fixed 1e5 steps); an explicit one is passed as given; the reference path accepts None."""
    seen = []
    real = solver._run

    def spy(*args):
        seen.append(args[17].clone())  # (the max_iter vector)
        return real(*args)

    monkeypatch.setattr(solver, "_run", spy)
    X, W = make_data(2, 40, seed=3)
    solver.dual_solve(X, W, 0.1, backend="fused")
    assert seen[-1].tolist() == [100_000, 100_000]
    Xl, Wl = make_data(1, 3000, seed=4)
    res = solver.dual_solve(Xl, Wl, 1.0, tol=1e-2, backend="fused")
    assert seen[-1].tolist() == [150_000] and bool(res.converged.all())
    solver.dual_solve(X, W, 0.1, max_iter=7, backend="fused")
    assert seen[-1].tolist() == [7, 7]
    ref = solver.dual_solve(X, W, 0.1, backend="reference", max_iter=None)
    assert bool(ref.converged.all())


def test_masks_equal_unpadded_solves():
    B, N = 3, 50
    X, W = make_data(B, N, seed=10)
    g = torch.Generator().manual_seed(11)
    mask = torch.rand(B, N, generator=g) > 0.35  # scattered padding, not a prefix
    mask[:, :2] = True
    Xp = torch.where(mask.unsqueeze(-1), X, torch.full_like(X, 1e6))  # garbage at padded units
    Wp = torch.where(mask, W, torch.full_like(W, 7.0))
    for est in ("overlap", "ate", "att"):
        res = solver.dual_solve(Xp, Wp, 0.2, estimand=est, mask=mask, tol=1e-9, backend="fused")
        for b in range(B):
            m = mask[b]
            one = solver.dual_solve(X[b : b + 1, m], W[b : b + 1, m], 0.2, estimand=est, tol=1e-9, backend="fused")
            assert torch.allclose(res.weights[b, m], one.weights[0], atol=1e-12)
            assert (res.weights[b, ~m] == 0).all()
            assert torch.allclose(res.objective[b], one.objective[0], rtol=1e-12)
    # generic QP: padded rows of Q ignored, x = 0 there
    Q = torch.stack([random_psd(N, seed=s) for s in range(B)])
    Q = torch.where(mask.unsqueeze(-1) & mask.unsqueeze(-2), Q, torch.full_like(Q, 5.0))
    p = torch.ones(B, N, dtype=F64)
    res = solver.qp_solve(Q, p, 0.0, 1.0, c=W, d=0.0, mask=mask, tol=1e-10, backend="fused")
    ref = R.qp_solve(Q, p, 0.0, 1.0, c=W, d=0.0, mask=mask, tol=1e-10)
    assert torch.allclose(res.objective, ref.objective, rtol=1e-9)
    assert (res.x[~mask] == 0).all()


def test_fully_padded_and_empty_problem():
    Q = torch.eye(3, dtype=F64).expand(2, 3, 3).contiguous()
    p = torch.ones(2, 3, dtype=F64)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    res = solver.qp_solve(Q, p, 0.0, INF, mask=mask, backend="fused")
    assert res.converged.tolist() == [True, True]
    assert torch.allclose(res.x[0], torch.ones(3, dtype=F64)) and (res.x[1] == 0).all()
    empty = solver.qp_solve(torch.zeros(2, 0, 0, dtype=F64), torch.zeros(2, 0, dtype=F64), backend="fused")
    assert empty.x.shape == (2, 0) and bool(empty.converged.all())


@pytest.mark.parametrize("kernel", ["rbf", "laplace", "cina"])
def test_thread_count_invariance(kernel):
    """Bitwise identical results for 1 and 2 threads: across datasets, and inside one dataset
    (forced with a low threshold).  With 2 threads the inner path synchronises several times per
    step: slow on an oversubscribed machine, hence a small problem."""
    Xb, Wb = make_data(5, 300, seed=12)
    X1, W1 = make_data(1, 1100, seed=12)  # 3 blocks of 512 units
    old = torch.get_num_threads()
    runs = {}
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            cases = [
                ("batch", Xb, Wb, 10**9, "overlap"),
                ("batch", Xb, Wb, 10**9, "ate"),
                ("inner", X1, W1, 64, "overlap"),
            ]
            for name, X, W, inner, est in cases:
                r = solver.dual_solve(
                    X, W, 0.5, kernel=kernel, estimand=est, tol=1e-4, backend="fused", _inner_min_units=inner
                )
                runs.setdefault((name, est), []).append(r)
    finally:
        torch.set_num_threads(old)
    for a, b in runs.values():
        assert bool(a.converged.all())
        assert torch.equal(a.alpha, b.alpha) and torch.equal(a.objective, b.objective)
        assert torch.equal(a.iterations, b.iterations) and torch.equal(a.intercept, b.intercept)


def test_cache_budget_shrinking_and_precision():
    X, W = make_data(2, 400, seed=13)
    big = solver.dual_solve(X, W, 0.05, backend="fused", tol=1e-8)
    tiny = solver.dual_solve(X, W, 0.05, backend="fused", tol=1e-8, cache_mb=0.01)  # 2-3 columns: evictions
    assert torch.equal(big.alpha, tiny.alpha) and torch.equal(big.iterations, tiny.iterations)
    # the reported certificate is the KKT violation of the returned point (shrunk gradients rebuilt)
    K = R.gram(X, "rbf")
    for b in range(2):
        Q = (W[b, :, None] * W[b, None, :]) * K[b] / 0.05
        ref_kkt = kkt_pair(Q, np.ones(400), big.alpha[b], np.zeros(400), np.ones(400), W[b])
        assert abs(ref_kkt - float(big.kkt[b])) <= 1e-9 and ref_kkt < 1e-8
    noshr = solver.dual_solve(X, W, 0.05, backend="fused", tol=1e-8, shrinking=False)
    assert torch.allclose(big.objective, noshr.objective, rtol=1e-9)
    assert float(noshr.kkt.max()) <= 1e-8
    # float32: same problem, looser tolerance; KKT of the returned float32 point
    r32 = solver.dual_solve(X.float(), W.float(), 0.05, backend="fused", tol=1e-4)
    assert r32.alpha.dtype == F32 and bool(r32.converged.all())
    assert torch.allclose(r32.objective.double(), big.objective, rtol=1e-4)


def test_float32_tight_tol_stops_unconverged():
    """A tol below what float32 can certify: reported not converged, long before max_iter."""
    X, W = make_data(2, 60, seed=18, dtype=F32)
    res = solver.dual_solve(X, W, 1e-3, tol=1e-12, backend="fused")
    assert not bool(res.converged.any())
    assert bool((res.iterations < 100_000).all())
    ok = solver.dual_solve(X, W, 1e-3, tol=1e-3, backend="fused")
    assert bool(ok.converged.all()) and torch.allclose(ok.objective, res.objective, rtol=1e-3)


@pytest.mark.parametrize("shrinking", [False, True])
def test_general_equality_small_c_converges(shrinking):
    """Regression (found on an H200, reproduced by the CPU solver): a coordinate with a small c_i
    (~0.004) was chosen as its own WSS2 partner (the fused b_i = m - val(i) left a rounding residual
    instead of 0), a null step repeated until max_iter with the KKT violation stuck at 4e-9.  Every
    problem converges at tol=1e-9 to the reference's objective, well before max_iter."""
    Q, p, lo, up, c, d = _solver_cases.small_c_equality_case()
    ref = R.qp_solve(Q, p, lo, up, c=c, d=d, tol=1e-9)
    assert bool(ref.converged.all())
    res = solver.qp_solve(Q, p, lo, up, c, d, tol=1e-9, backend="fused", shrinking=shrinking)
    assert bool(res.converged.all()), (res.iterations, res.kkt)
    assert bool((res.kkt < 1e-9).all())
    assert bool((res.iterations < 5000).all()), res.iterations
    assert torch.allclose(res.objective, ref.objective, rtol=1e-12, atol=0.0)
    assert torch.allclose((c * res.x).sum(-1), d, atol=1e-12)
    for b in range(3):  # the problem that cycled, alone
        one = solver.qp_solve(
            Q[b : b + 1],
            p[b : b + 1],
            lo[b : b + 1],
            up[b : b + 1],
            c[b : b + 1],
            d[b : b + 1],
            tol=1e-9,
            backend="fused",
            shrinking=shrinking,
        )
        assert bool(one.converged.all())
        assert torch.allclose(one.objective, ref.objective[b : b + 1], rtol=1e-12, atol=0.0)


def test_warm_start_x0():
    X, W = make_data(2, 120, seed=14)
    cold = solver.dual_solve(X, W, 0.1, tol=1e-8, backend="fused")
    warm = solver.dual_solve(X, W, 0.1, tol=1e-8, x0=cold.alpha, backend="fused")
    assert (warm.iterations <= 1).all() and torch.allclose(warm.objective, cold.objective, rtol=1e-12)
    # an infeasible start is repaired (W'x != 0 here) and the same optimum is reached
    rough = solver.dual_solve(X, W, 0.1, tol=1e-8, x0=torch.full_like(W, 0.5), backend="fused")
    assert torch.allclose(rough.objective, cold.objective, rtol=1e-9)
    for est in ("ate", "att"):
        c = solver.dual_solve(X, W, 0.1, estimand=est, tol=1e-9, backend="fused")
        w = solver.dual_solve(X, W, 0.1, estimand=est, tol=1e-9, x0=c.alpha * 3.0, backend="fused")
        assert torch.allclose(w.objective, c.objective, rtol=1e-12) and (w.iterations <= c.iterations).all()
    # qp_solve: warm start must be feasible
    Q = random_psd(10)[None]
    p = torch.ones(1, 10, dtype=F64)
    r = solver.qp_solve(Q, p, 0.0, 1.0, x0=torch.full((1, 10), 0.5, dtype=F64), tol=1e-10, backend="fused")
    ref = R.qp_solve(Q, p, 0.0, 1.0, tol=1e-10)
    assert torch.allclose(r.objective, ref.objective, rtol=1e-10)
    with pytest.raises(ValueError, match="outside the bounds"):
        solver.qp_solve(Q, p, 0.0, 1.0, x0=torch.full((1, 10), 2.0, dtype=F64), backend="fused")
    with pytest.raises(ValueError, match="equality"):
        solver.qp_solve(
            Q,
            p,
            0.0,
            1.0,
            c=torch.ones(1, 10, dtype=F64),
            d=1.0,
            x0=torch.full((1, 10), 0.5, dtype=F64),
            backend="fused",
        )


def test_backends_and_result_types():
    X, W = make_data(2, 30, seed=15)
    a = solver.dual_solve(X, W, 0.3, backend="auto")
    b = solver.dual_solve(X, W, 0.3, backend="reference")
    assert torch.allclose(a.objective, b.objective, rtol=1e-6)
    Q = random_psd(8)[None]
    r = solver.qp_solve(Q, torch.ones(1, 8, dtype=F64), backend="reference")
    assert isinstance(r, R.QPResult) and r.iterations.dtype == torch.int64 and r.converged.dtype == torch.bool
    assert solver.solver_backend("auto", torch.device("cpu")) == "fused"


def test_fake_impl_and_schema():
    X, W = make_data(1, 12, seed=16)
    mask = torch.ones(1, 12, dtype=torch.bool)
    torch.library.opcheck(
        torch.ops.cina.qp_kernel_lse.default, (X, mask, 0.5), test_utils=("test_schema", "test_faketensor")
    )
    e = torch.zeros(0, dtype=F64)
    args = (
        X,
        2,
        torch.tensor([0.3], dtype=F64),
        1.0,
        e.reshape(0, 0),
        torch.zeros(1, dtype=torch.long),
        mask,
        W,
        torch.ones(1, dtype=F64),
        torch.zeros(1, dtype=F64),
        torch.ones(1, 12, dtype=F64),
        torch.zeros(1, 12, dtype=F64),
        torch.ones(1, 12, dtype=F64),
        W.clone(),
        torch.zeros(1, dtype=F64),
        None,
        torch.full((1,), 1e-6, dtype=F64),
        torch.full((1,), 1000, dtype=torch.long),
        2**20,
        True,
        8192,
    )
    torch.library.opcheck(torch.ops.cina.qp_solve_batch.default, args, test_utils=("test_schema", "test_faketensor"))


# ----------------------------------------------------------------------------------------------
# clear errors
# ----------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    X, W = make_data(2, 10, seed=17)
    f = solver.dual_solve
    with pytest.raises(ValueError, match="estimand"):
        f(X, W, 0.1, estimand="atc", backend="fused")
    with pytest.raises(ValueError, match="kernel"):
        f(X, W, 0.1, kernel="poly", backend="fused")
    with pytest.raises(ValueError, match="backend"):
        f(X, W, 0.1, backend="gpu")
    with pytest.raises(TypeError, match="float32 or float64"):
        f(X.to(torch.int64), W, 0.1, backend="fused")
    with pytest.raises(ValueError, match="W must have shape"):
        f(X, W[:, :5], 0.1, backend="fused")
    with pytest.raises(ValueError, match=r"-1 \(control\) or \+1"):
        f(X, W * 2, 0.1, backend="fused")
    with pytest.raises(ValueError, match="empty treatment arm"):
        f(X, torch.ones_like(W), 0.1, backend="fused")
    with pytest.raises(ValueError, match="lam"):
        f(X, W, -1.0, backend="fused")
    with pytest.raises(ValueError, match="lam"):
        f(X, W, torch.tensor([0.1, 0.2, 0.3]), backend="fused")
    Xn = X.clone()
    Xn[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        f(Xn, W, 0.1, backend="fused")
    with pytest.raises(ValueError, match="precomputed"):
        f(X, W, 0.1, kernel="precomputed", backend="fused")
    K = R.gram(X, "rbf")
    K[0, 0, 1] += 0.5
    with pytest.raises(ValueError, match="symmetric"):
        f(K, W, 0.1, kernel="precomputed", backend="fused")
    with pytest.raises(TypeError, match="mask"):
        f(X, W, 0.1, mask=torch.ones(2, 10), backend="fused")
    with pytest.raises(ValueError, match="mask"):
        f(X, W, 0.1, mask=torch.ones(2, 9, dtype=torch.bool), backend="fused")
    with pytest.raises(ValueError, match="tol"):
        f(X, W, 0.1, tol=0.0, backend="fused")
    with pytest.raises(ValueError, match="max_iter"):
        f(X, W, 0.1, max_iter=-1, backend="fused")
    with pytest.raises(ValueError, match="cache_mb"):
        f(X, W, 0.1, cache_mb=0, backend="fused")
    q = solver.qp_solve
    Q = random_psd(5)[None]
    p = torch.ones(1, 5, dtype=F64)
    with pytest.raises(TypeError, match="p must have dtype"):
        q(Q, p.float(), backend="fused")
    with pytest.raises(ValueError, match="square"):
        q(torch.zeros(1, 5, 4, dtype=F64), p, backend="fused")
    with pytest.raises(ValueError, match="together"):
        q(Q, p, c=p, backend="fused")
    with pytest.raises(ValueError, match="cannot be met"):
        q(Q, p, 0.0, 1.0, c=p, d=10.0, backend="fused")
    with pytest.raises(ValueError, match="lower must be <= upper"):
        q(Q, p, 1.0, 0.0, backend="fused")
    with pytest.raises(ValueError, match="upper may only contain"):
        q(Q, p, 0.0, -INF, backend="fused")
    Qa = Q.clone()
    Qa[0, 0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        q(Qa, p, backend="fused")
    Qn = Q.clone()
    Qn[0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        q(Qn, p, backend="fused")


@pytest.mark.parametrize("estimand", ["overlap", "ate", "att"])
def test_dual_solve_under_torch_compile_fullgraph(estimand):
    """The solver compiles without a graph break (its front end is one opaque custom op)."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(2, 24, 3, generator=g, dtype=torch.float64)
    W = torch.where(torch.rand(2, 24, generator=g) < 0.5, -1.0, 1.0).double()
    W[:, :2] = torch.tensor([1.0, -1.0], dtype=torch.float64)

    def f(X, W):
        r = solver.dual_solve(X, W, 0.1, kernel="rbf", estimand=estimand, tol=1e-9)
        return r.weights, r.converged

    torch._dynamo.reset()
    w_c, conv_c = torch.compile(f, fullgraph=True)(X, W)
    w_e, conv_e = f(X, W)
    assert bool(conv_c.all()) and torch.equal(conv_c, conv_e)
    torch.testing.assert_close(w_c, w_e, rtol=0, atol=0)


def test_qp_solve_under_torch_compile_fullgraph_and_opcheck():
    Q = (2.0 * torch.eye(5, dtype=torch.float64)).expand(3, 5, 5).contiguous()
    p = torch.arange(15, dtype=torch.float64).reshape(3, 5) / 10
    torch._dynamo.reset()
    x_c = torch.compile(lambda Q, p: solver.qp_solve(Q, p, 0.0, 1.0).x, fullgraph=True)(Q, p)
    torch.testing.assert_close(x_c, solver.qp_solve(Q, p, 0.0, 1.0).x, rtol=0, atol=0)
    lo, up = torch.zeros_like(p), torch.ones_like(p)
    torch.library.opcheck(
        torch.ops.cina.qp_solve_front.default, (Q, p, lo, up, None, None, None, 1e-8, None, None, "auto", None, True)
    )
    X = torch.randn(2, 10, 3, dtype=torch.float64)
    W = torch.tensor([[1.0, -1.0] * 5] * 2, dtype=torch.float64)
    lam = torch.full((2,), 0.1, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.cina.dual_solve_front.default,
        (X, W, lam, "rbf", None, None, "ate", True, "hinge", None, 1e-8, None, None, "auto", None, True),
    )


@pytest.mark.parametrize("with_optionals", [False, True])
def test_opcheck_with_and_without_optional_arguments(with_optionals):
    """Every solver op passes opcheck both when its optional arguments (sign, c, d, x0, mask,
    gamma, scale, max_iter, cache_mb) are None and when they are given."""
    torch.manual_seed(31)
    X = torch.randn(2, 10, 3, dtype=torch.float64)
    W = torch.tensor([[1.0, -1.0] * 5] * 2, dtype=torch.float64)
    lam = torch.full((2,), 0.1, dtype=torch.float64)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, -3:] = False
    x0 = torch.full((2, 10), 0.1, dtype=torch.float64)
    opt = (lambda v: v) if with_optionals else (lambda v: None)
    torch.library.opcheck(
        torch.ops.cina.dual_solve_front.default,
        (
            X,
            W,
            lam,
            "rbf",
            opt(torch.tensor(0.4, dtype=torch.float64)),
            opt(0.7),
            "ate",
            True,
            "hinge",
            opt(mask),
            1e-8,
            opt(5000),
            opt(x0),
            "auto",
            opt(4.0),
            True,
        ),
    )
    Q = (2.0 * torch.eye(5, dtype=torch.float64)).expand(2, 5, 5).contiguous()
    p = torch.arange(10, dtype=torch.float64).reshape(2, 5) / 10
    lo, up = torch.zeros_like(p), torch.ones_like(p)
    c = torch.ones(2, 5, dtype=torch.float64)
    d = torch.full((2,), 2.0, dtype=torch.float64)
    qmask = torch.ones(2, 5, dtype=torch.bool)
    torch.library.opcheck(
        torch.ops.cina.qp_solve_front.default,
        (
            Q,
            p,
            lo,
            up,
            opt(c),
            opt(d),
            opt(qmask),
            1e-8,
            opt(3000),
            opt(torch.full((2, 5), 0.4, dtype=F64)),
            "auto",
            opt(4.0),
            True,
        ),
    )
    Xs, Ws = make_data(1, 12, seed=32)
    smask = torch.ones(1, 12, dtype=torch.bool)
    args = (
        Xs,
        2,
        torch.tensor([0.3], dtype=F64),
        1.0,
        torch.zeros(0, 0, dtype=F64),
        torch.zeros(1, dtype=torch.long),
        smask,
        opt(Ws),
        torch.ones(1, dtype=F64),
        torch.zeros(1, dtype=F64),
        torch.ones(1, 12, dtype=F64),
        torch.zeros(1, 12, dtype=F64),
        torch.ones(1, 12, dtype=F64),
        opt(Ws.clone()),
        opt(torch.zeros(1, dtype=F64)),
        opt(torch.full((1, 12), 0.5, dtype=F64)),
        torch.full((1,), 1e-6, dtype=F64),
        torch.full((1,), 1000, dtype=torch.long),
        2**20,
        True,
        8192,
    )
    torch.library.opcheck(torch.ops.cina.qp_solve_batch.default, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("estimand", ["ate", "att", "overlap"])
@pytest.mark.parametrize("kernel", ["rbf", "laplace", "linear"])
def test_a_penalty_grid_is_the_repeated_datasets_without_the_copies(estimand, kernel):
    # lam of shape (B, L): B * L problems, row b * L + l the dataset b at lam[b, l]; the same
    # arithmetic as the datasets stacked once per penalty, so the same bits (padding, odd sizes,
    # per-dataset gamma, warm start, per-dataset max_iter included)
    g = torch.Generator().manual_seed(21)
    B, N, L = 3, 37, 4
    X = torch.randn(B, N, 3, generator=g, dtype=F64)
    W = torch.where(torch.rand(B, N, generator=g) < 0.4, 1.0, -1.0).to(F64)
    W[:, :2] = torch.tensor([1.0, -1.0], dtype=F64)  # both arms among the real units
    mask = torch.rand(B, N, generator=g) < 0.85
    mask[:, :2] = True
    lam = torch.tensor([0.01, 0.03, 0.3, 1.0], dtype=F64) * torch.tensor([[1.0], [2.0], [0.5]], dtype=F64)
    kw = dict(kernel=kernel, estimand=estimand, backend="fused", tol=1e-9)
    if kernel != "linear":
        kw["gamma"] = torch.tensor([0.2, 0.35, 0.25], dtype=F64)
    rep = dict(kw)
    if kernel != "linear":
        rep["gamma"] = kw["gamma"].repeat_interleave(L)
    grid = solver.dual_solve(X, W, lam, mask=mask, **kw)
    stacked = solver.dual_solve(
        X.repeat_interleave(L, 0), W.repeat_interleave(L, 0), lam.reshape(-1), mask=mask.repeat_interleave(L, 0), **rep
    )
    assert grid.weights.shape == (B * L, N)
    for a, b in zip(
        (grid.weights, grid.alpha, grid.objective, grid.kkt, grid.iterations, grid.converged),
        (stacked.weights, stacked.alpha, stacked.objective, stacked.kkt, stacked.iterations, stacked.converged),
    ):
        assert torch.equal(a, b)
    assert bool(grid.converged.all())
    if kernel == "rbf":  # against the reference twin, which takes the same grid
        ref = R.dual_solve(X, W, lam, mask=mask, **{k: v for k, v in kw.items() if k != "backend"})
        assert bool(ref.converged.all())
        assert torch.allclose(grid.objective, ref.objective, rtol=1e-6, atol=1e-9)
    # a warm start has one row per problem; per-dataset max_iter applies to its L problems
    half = solver.dual_solve(X, W, lam, mask=mask, x0=grid.alpha, max_iter=torch.tensor([0, 5, 0]), **kw)
    assert (half.iterations.reshape(B, L)[[0, 2]] == 0).all() and (half.iterations.reshape(B, L)[1] <= 5).all()
    with pytest.raises(ValueError, match="lam grid must have shape"):
        solver.dual_solve(X, W, lam[:2], mask=mask, **kw)
    with pytest.raises(ValueError, match="x0 must have shape"):
        solver.dual_solve(X, W, lam, mask=mask, x0=grid.alpha[:B], **kw)
    with pytest.raises(ValueError, match="lam must be finite"):
        solver.dual_solve(X, W, -lam, mask=mask, **kw)
