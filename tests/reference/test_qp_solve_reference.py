"""Tests of the pure-PyTorch batched box-QP solver (cina_ext.reference.qp_solve).

Expected values come from hand-derived closed forms, sklearn.svm.SVC and a generic interior-point
QP solver (clarabel through qpsolvers), never from this solver's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cina_ext.reference.qp_solve import BalanceResult, QPResult, dual_solve, gram, qp_solve

F64 = torch.float64
INF = math.inf


# ----------------------------------------------------------------------------------------------
# helpers (independent of the solver under test)
# ----------------------------------------------------------------------------------------------


def clarabel_qp(Q, p, lo, up, c=None, d=None):
    """min 1/2 x'Qx - p'x, lo <= x <= up (entries may be +-inf), [c'x = d], by clarabel."""
    from qpsolvers import solve_qp

    Q = np.asarray(Q, dtype=float)
    p = np.asarray(p, dtype=float)
    n = len(p)
    lo = np.broadcast_to(np.asarray(lo, dtype=float), (n,))
    up = np.broadcast_to(np.asarray(up, dtype=float), (n,))
    rows, h = [], []
    eye = np.eye(n)
    for i in range(n):
        if np.isfinite(up[i]):
            rows.append(eye[i])
            h.append(up[i])
        if np.isfinite(lo[i]):
            rows.append(-eye[i])
            h.append(-lo[i])
    G = sp.csc_matrix(np.array(rows)) if rows else None
    h = np.array(h) if rows else None
    A = sp.csc_matrix(np.asarray(c, dtype=float)[None, :]) if c is not None else None
    b = np.array([float(d)]) if c is not None else None
    x = solve_qp(
        sp.csc_matrix(0.5 * (Q + Q.T)),
        -p,
        G,
        h,
        A,
        b,
        solver="clarabel",
        tol_gap_abs=1e-12,
        tol_gap_rel=1e-12,
        tol_feas=1e-12,
        max_iter=500,
    )
    assert x is not None
    return x


def kkt_violation(Q, p, x, lo, up, c=None, nu=0.0):
    """max_i of the violation of the KKT conditions of coordinate i, at the multiplier nu."""
    Q, p, x = (np.asarray(a, dtype=float) for a in (Q, p, x))
    g = Q @ x - p
    if c is not None:
        g = g + nu * np.asarray(c, dtype=float)
    lo = np.broadcast_to(np.asarray(lo, dtype=float), x.shape)
    up = np.broadcast_to(np.asarray(up, dtype=float), x.shape)
    at_lo = x <= lo
    at_up = x >= up
    v = np.abs(g)
    v = np.where(at_lo & ~at_up, np.maximum(-g, 0), v)
    v = np.where(at_up & ~at_lo, np.maximum(g, 0), v)
    v = np.where(at_lo & at_up, 0.0, v)
    return float(v.max()) if v.size else 0.0


def rbf_np(X, gamma):
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    return np.exp(-gamma * d2)


def make_data(N, p=3, shift=0.6, frac=0.4, seed=0):
    rng = np.random.default_rng(seed)
    W = np.where(rng.random(N) < frac, 1.0, -1.0)
    W[0], W[1] = 1.0, -1.0
    X = rng.standard_normal((N, p)) + shift * (W > 0)[:, None]
    return X, W


def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=F64)


# ----------------------------------------------------------------------------------------------
# 1. closed forms
# ----------------------------------------------------------------------------------------------


def test_box_1d_closed_form():
    # min 1/2 q x^2 - p x on [l, u]: x = clip(p/q, l, u)
    q = [2.0, 2.0, 2.0, 0.5, 4.0]
    p = [1.0, 5.0, -3.0, 3.0, -1.0]
    lo = [0.0, 0.0, 0.0, 0.0, -1.0]
    up = [1.0, 1.0, 1.0, INF, 2.0]
    expect = [0.5, 1.0, 0.0, 6.0, -0.25]
    r = qp_solve(t64(q).view(5, 1, 1), t64(p).view(5, 1), t64(lo).view(5, 1), t64(up).view(5, 1))
    assert isinstance(r, QPResult)
    assert torch.allclose(r.x[:, 0], t64(expect), atol=1e-14)
    obj = [0.5 * qq * e * e - pp * e for qq, pp, e in zip(q, p, expect)]
    assert torch.allclose(r.objective, t64(obj), atol=1e-14)
    assert bool(r.converged.all())
    assert r.iterations.dtype == torch.int64
    assert torch.equal(r.nu, torch.zeros(5, dtype=F64))


def test_zero_curvature_coordinate_goes_to_bound():
    # Q_00 = 0: coordinate 0 is linear with slope -1 -> upper bound; coordinate 1 interior 1/2
    Q = t64([[0.0, 0.0], [0.0, 2.0]])[None]
    p = t64([1.0, 1.0])[None]
    r = qp_solve(Q, p, 0.0, 1.0)
    assert torch.allclose(r.x, t64([[1.0, 0.5]]), atol=1e-14)
    assert bool(r.converged.all())


def test_simplex_identity_is_uniform():
    n = 7
    Q = torch.eye(n, dtype=F64)[None].repeat(2, 1, 1)
    p = torch.zeros(2, n, dtype=F64)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 4:] = False  # second dataset: 4 real units
    r = qp_solve(Q, p, 0.0, INF, c=torch.ones(2, n, dtype=F64), d=torch.ones(2, dtype=F64), mask=mask)
    assert torch.allclose(r.x[0], torch.full((n,), 1 / n, dtype=F64), atol=1e-15)
    assert torch.allclose(r.x[1, :4], torch.full((4,), 0.25, dtype=F64), atol=1e-15)
    assert torch.equal(r.x[1, 4:], torch.zeros(3, dtype=F64))
    # gradient x_i + nu = 0 at the (free) coordinates
    assert torch.allclose(r.nu, t64([-1 / n, -0.25]), atol=1e-15)
    assert torch.allclose(r.objective, t64([0.5 / n, 0.5 / 4]), atol=1e-15)


def test_simplex_closed_form_two_coordinates():
    # min 1/2 x'Qx - p'x, x1 + x2 = 1, x >= 0, Q = [[a, e], [e, b]]:
    # x1 = (b - e + p1 - p2) / (a + b - 2e), clipped to [0, 1]
    a, b, e = 3.0, 1.0, 0.5
    cases = [(0.2, 0.1), (4.0, 0.0), (-5.0, 0.0)]
    Q = t64([[a, e], [e, b]])[None].repeat(len(cases), 1, 1)
    p = t64(cases)
    r = qp_solve(Q, p, 0.0, INF, c=torch.ones(len(cases), 2, dtype=F64), d=torch.ones(len(cases), dtype=F64))
    for k, (p1, p2) in enumerate(cases):
        x1 = min(max((b - e + p1 - p2) / (a + b - 2 * e), 0.0), 1.0)
        assert r.x[k, 0].item() == pytest.approx(x1, abs=1e-12)
        assert r.x[k, 1].item() == pytest.approx(1 - x1, abs=1e-12)


def test_overlap_two_units_linear_closed_form():
    # x1 = 1 treated, x2 = 3 control, linear kernel: alpha1 = alpha2 = a, minimise
    # 1/2 a^2 (K11 + K22 - 2 K12) / lam - 2 a  ->  a = 2 lam / 4 = lam / 2 (if <= 1).
    # Decision f(x) = sum_j alpha_j W_j x_j x / lam + b = -x + b; margins f(1) = 1, f(3) = -1 -> b = 2.
    X = t64([[[1.0], [3.0]]])
    W = t64([[1.0, -1.0]])
    r = dual_solve(X, W, 1.0, kernel="linear", tol=1e-12)
    assert isinstance(r, BalanceResult) and r.estimand == "overlap"
    assert torch.allclose(r.alpha, t64([[0.5, 0.5]]), atol=1e-12)
    assert r.intercept.item() == pytest.approx(2.0, abs=1e-10)
    assert torch.allclose(r.weights, t64([[1.0, 1.0]]), atol=1e-12)
    # dual value: 1/2 a^2 * 4 / lam - 2a = 0.5 - 1
    assert r.objective.item() == pytest.approx(-0.5, abs=1e-12)
    # lam = 4: a = 2 is clipped to the upper bound 1
    r4 = dual_solve(X, W, 4.0, kernel="linear", tol=1e-12)
    assert torch.allclose(r4.alpha, t64([[1.0, 1.0]]), atol=1e-14)
    # then b is any value in [6/lam - 1, 1 + 2/lam] = [0.5, 1.5]; the solver returns the midpoint
    assert r4.intercept.item() == pytest.approx(1.0, abs=1e-12)


def test_overlap_two_units_rbf_closed_form():
    # K11 = K22 = 1, K12 = exp(-gamma d^2): a = min(1, lam / (1 - K12)), b = 0 by symmetry
    gamma, dist = 0.5, 1.3
    k12 = math.exp(-gamma * dist**2)
    X = t64([[[0.0, 0.0], [dist, 0.0]]])
    W = t64([[-1.0, 1.0]])
    for lam in (0.1, 0.3, 2.0):
        r = dual_solve(X, W, lam, kernel="rbf", gamma=gamma, tol=1e-12)
        a = min(1.0, lam / (1 - k12))
        assert torch.allclose(r.alpha, t64([[a, a]]), atol=1e-12)
        if a < 1:
            assert abs(r.intercept.item()) < 1e-10


def test_ate_two_unit_arm_closed_form():
    # arm {0, 1} (treated) of a 4-unit dataset with a precomputed kernel:
    # w0 = (K11 + lam - K01 + kb0 - kb1) / (K00 + K11 - 2 K01 + 2 lam), kb = row means over all units
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 6))
    K = A @ A.T / 6
    lam = 0.2
    W = t64([[1.0, 1.0, -1.0, -1.0]])
    r = dual_solve(t64(K)[None], W, lam, kernel="precomputed", estimand="ate", tol=1e-12)
    kb = K.mean(1)
    w0 = (K[1, 1] + lam - K[0, 1] + kb[0] - kb[1]) / (K[0, 0] + K[1, 1] - 2 * K[0, 1] + 2 * lam)
    w0 = min(max(w0, 0.0), 1.0)
    assert r.weights[0, 0].item() == pytest.approx(w0, abs=1e-10)
    assert r.weights[0, 1].item() == pytest.approx(1 - w0, abs=1e-10)
    w2 = (K[3, 3] + lam - K[2, 3] + kb[2] - kb[3]) / (K[2, 2] + K[3, 3] - 2 * K[2, 3] + 2 * lam)
    w2 = min(max(w2, 0.0), 1.0)
    assert r.weights[0, 2].item() == pytest.approx(w2, abs=1e-10)
    # att: controls against the treated mean; treated weights 1/2
    r = dual_solve(t64(K)[None], W, lam, kernel="precomputed", estimand="att", tol=1e-12)
    kt = K[:, :2].mean(1)
    w2 = (K[3, 3] + lam - K[2, 3] + kt[2] - kt[3]) / (K[2, 2] + K[3, 3] - 2 * K[2, 3] + 2 * lam)
    w2 = min(max(w2, 0.0), 1.0)
    assert torch.allclose(r.weights[0], t64([0.5, 0.5, w2, 1 - w2]), atol=1e-10)
    assert torch.allclose(r.alpha[0, :2], t64([0.5, 0.5]), atol=1e-15)
    assert torch.equal(r.intercept, torch.zeros(1, dtype=F64))


def test_feasible_start_general_c():
    # Q = 0, p = 0: every feasible point is optimal, so the solver returns its own start; it must
    # be feasible for general c (mixed signs, magnitudes, zeros) and mixed finite/infinite bounds
    rng = np.random.default_rng(5)
    B, n = 6, 9
    c = rng.choice([-2.0, -1.0, -0.3, 0.0, 0.7, 1.0, 3.0], size=(B, n))
    c[:, 0], c[:, 1] = 1.0, -1.0
    lo = rng.choice([0.0, -1.0, -INF], size=(B, n))
    up = np.where(np.isfinite(lo), lo, -1.5) + rng.choice([0.5, 2.0, INF], size=(B, n))
    d = rng.normal(size=B) * 2
    r = qp_solve(torch.zeros(B, n, n, dtype=F64), torch.zeros(B, n, dtype=F64), t64(lo), t64(up), c=t64(c), d=t64(d))
    x = r.x.numpy()
    assert np.all(x >= lo - 1e-15) and np.all(x <= up + 1e-15)
    assert np.allclose((c * x).sum(1), d, atol=1e-12)
    assert bool(r.converged.all())
    # infeasible equality -> ValueError
    with pytest.raises(ValueError, match="equality"):
        qp_solve(
            torch.zeros(1, 3, 3, dtype=F64),
            torch.zeros(1, 3, dtype=F64),
            0.0,
            1.0,
            c=torch.ones(1, 3, dtype=F64),
            d=t64([4.0]),
        )


# ----------------------------------------------------------------------------------------------
# generic box QP against clarabel
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eq", ["none", "general_c", "c_with_zeros"])
def test_qp_matches_clarabel(eq):
    rng = np.random.default_rng(11)
    B, n = 4, 25
    A = rng.standard_normal((B, n, n))
    Q = A @ A.transpose(0, 2, 1) / n + 0.05 * np.eye(n)
    p = rng.standard_normal((B, n)) * 2
    lo = np.where(rng.random((B, n)) < 0.8, 0.0, -0.5)
    up = np.where(rng.random((B, n)) < 0.5, 1.0, INF)
    c = d = None
    if eq != "none":
        c = rng.choice([-1.5, -1.0, 0.5, 1.0, 2.0], size=(B, n))
        if eq == "c_with_zeros":
            c[:, ::4] = 0.0
        d = np.full(B, 0.3)
    r = qp_solve(
        t64(Q), t64(p), t64(lo), t64(up), None if c is None else t64(c), None if d is None else t64(d), tol=1e-10
    )
    assert bool(r.converged.all())
    for k in range(B):
        xr = clarabel_qp(Q[k], p[k], lo[k], up[k], None if c is None else c[k], None if d is None else d[k])
        assert np.abs(r.x[k].numpy() - xr).max() < 1e-6
        obj = 0.5 * xr @ Q[k] @ xr - p[k] @ xr
        assert r.objective[k].item() == pytest.approx(obj, rel=1e-8, abs=1e-9)
        # independent KKT check at the returned multiplier (|c| <= 2 scales the measure)
        viol = kkt_violation(Q[k], p[k], r.x[k].numpy(), lo[k], up[k], None if c is None else c[k], r.nu[k].item())
        assert viol <= 2e-10
        assert r.kkt[k].item() <= 1e-10
        if c is not None:
            assert abs(c[k] @ r.x[k].numpy() - d[k]) < 1e-12


# ----------------------------------------------------------------------------------------------
# 2. "overlap" against sklearn.svm.SVC
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
@pytest.mark.parametrize("shift", [0.5, 6.0], ids=["overlapping", "separable"])
def test_overlap_matches_svc(kernel, shift):
    from sklearn.svm import SVC

    N, lam = 90, 0.5
    X, W = make_data(N, p=3, shift=shift, seed=1)
    if kernel == "rbf":
        gamma = 0.4
        K = rbf_np(X, gamma)
        r = dual_solve(t64(X)[None], t64(W)[None], lam, kernel="rbf", gamma=gamma, tol=1e-10)
    else:
        K = X @ X.T
        r = dual_solve(t64(X)[None], t64(W)[None], lam, kernel="linear", tol=1e-10)
    svc = SVC(kernel="precomputed", C=1 / lam, tol=1e-10, shrinking=False).fit(K, W)
    assert np.array_equal(np.sign(svc.dual_coef_[0]), W[svc.support_])  # dual_coef_ = W * alpha / lam
    a_svc = np.zeros(N)
    a_svc[svc.support_] = lam * np.abs(svc.dual_coef_[0])
    Qd = np.outer(W, W) * K / lam
    obj_svc = 0.5 * a_svc @ Qd @ a_svc - a_svc.sum()
    assert r.objective.item() == pytest.approx(obj_svc, rel=1e-6)
    assert bool(r.converged.item()) and r.kkt.item() < 1e-10
    w_svc = np.where(W > 0, a_svc / a_svc[W > 0].sum(), a_svc / a_svc[W < 0].sum())
    assert np.abs(r.weights[0].numpy() - w_svc).max() < 1e-4
    assert np.abs(r.alpha[0].numpy() - a_svc).max() < 1e-4
    # intercept: f(x) = sum_j alpha_j W_j k(x_j, x) / lam + b equals SVC's decision function,
    # so b = +intercept_
    assert r.intercept.item() == pytest.approx(svc.intercept_[0], abs=1e-6)
    f = K @ (r.alpha[0].numpy() * W) / lam + r.intercept.item()
    assert np.abs(f - svc.decision_function(K)).max() < 1e-5
    if shift > 3:  # separable: most units are not support vectors
        assert (r.alpha[0].numpy() == 0).sum() > N // 2


# ----------------------------------------------------------------------------------------------
# 3. the other problems against a generic QP solver
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_arm_balancing_matches_clarabel(estimand):
    N, lam, gamma = 70, 0.05, 0.3
    X, W = make_data(N, p=4, shift=0.8, seed=2)
    K = rbf_np(X, gamma)
    r = dual_solve(t64(X)[None], t64(W)[None], lam, kernel="rbf", gamma=gamma, estimand=estimand, tol=1e-10)
    assert bool(r.converged.item())
    w = r.weights[0].numpy()
    t, ctl = W > 0, W < 0
    # || sum_{i in a} w_i phi_i - target mean phi ||^2 + lam ||w||^2 on the simplex of the arm
    target = K.mean(1) if estimand == "ate" else K[:, t].mean(1)
    arms = [t, ctl] if estimand == "ate" else [ctl]
    for arm in arms:
        Ka = K[np.ix_(arm, arm)]
        xr = clarabel_qp(2 * (Ka + lam * np.eye(arm.sum())), 2 * target[arm], 0.0, INF, np.ones(arm.sum()), 1.0)
        assert np.abs(w[arm] - xr).max() < 1e-5
    if estimand == "att":
        assert np.allclose(w[t], 1 / t.sum(), atol=1e-15)
    assert np.allclose(w[t].sum(), 1.0, atol=1e-12) and np.allclose(w[ctl].sum(), 1.0, atol=1e-12)
    assert np.all(w >= 0)


@pytest.mark.parametrize("intercept", [False, True])
@pytest.mark.parametrize("loss", ["hinge", "squared_hinge"])
def test_overlap_variants_match_clarabel(intercept, loss):
    N, lam, gamma = 60, 0.3, 0.5
    X, W = make_data(N, p=3, shift=0.7, seed=4)
    K = rbf_np(X, gamma)
    r = dual_solve(
        t64(X)[None], t64(W)[None], lam, kernel="rbf", gamma=gamma, intercept=intercept, loss=loss, tol=1e-10
    )
    assert bool(r.converged.item())
    # docs/method.md §2: max 1'a - a'(Q_K [+ lam I]) a / (2 lam), Q_K = W W' * K
    QK = np.outer(W, W) * K + (lam * np.eye(N) if loss == "squared_hinge" else 0.0)
    up = 1.0 if loss == "hinge" else INF
    xr = clarabel_qp(QK / lam, np.ones(N), 0.0, up, W if intercept else None, 0.0 if intercept else None)
    wr = np.where(W > 0, xr / xr[W > 0].sum(), xr / xr[W < 0].sum())
    assert np.abs(r.weights[0].numpy() - wr).max() < 1e-5
    assert np.abs(r.alpha[0].numpy() - xr).max() < 1e-5
    if not intercept:
        assert r.intercept.item() == 0.0


def test_squared_hinge_scaling_against_primal():
    # primal: min (lam/2)||beta||^2 + sum_i 1/2 [1 - W_i(<beta, phi_i> + b)]_+^2 with phi from a
    # Cholesky factor of K; at the optimum the slack xi_i = [.]_+ equals the dual alpha_i
    from qpsolvers import solve_qp

    N, lam, gamma = 40, 0.2, 0.5
    X, W = make_data(N, p=3, shift=0.7, seed=6)
    K = rbf_np(X, gamma) + 1e-10 * np.eye(N)
    L = np.linalg.cholesky(K)
    # z = [beta (N), b, xi (N)]
    P = np.zeros((2 * N + 1, 2 * N + 1))
    P[:N, :N] = lam * np.eye(N)
    P[N + 1 :, N + 1 :] = np.eye(N)
    G = np.zeros((N, 2 * N + 1))
    G[:, :N] = -W[:, None] * L
    G[:, N] = -W
    G[:, N + 1 :] = -np.eye(N)
    z = solve_qp(
        sp.csc_matrix(P),
        np.zeros(2 * N + 1),
        sp.csc_matrix(G),
        -np.ones(N),
        solver="clarabel",
        tol_gap_abs=1e-12,
        tol_gap_rel=1e-12,
        tol_feas=1e-12,
    )
    xi, b = z[N + 1 :], z[N]
    r = dual_solve(t64(K)[None], t64(W)[None], lam, kernel="precomputed", loss="squared_hinge", tol=1e-11)
    assert np.abs(r.alpha[0].numpy() - xi).max() < 1e-6
    assert r.intercept.item() == pytest.approx(b, abs=1e-6)
    # strong duality: primal optimum = -(our minimisation objective)
    primal = 0.5 * z @ P @ z
    assert -r.objective.item() == pytest.approx(primal, rel=1e-7)


# ----------------------------------------------------------------------------------------------
# 4. certificates, masks, dtypes, degenerate data
# ----------------------------------------------------------------------------------------------


def test_kkt_certificate_and_equality():
    N, lam = 80, 0.2
    X, W = make_data(N, p=3, shift=0.5, seed=7)
    tol = 1e-7
    r = dual_solve(t64(X)[None], t64(W)[None], lam, kernel="rbf", gamma=0.5, tol=tol)
    K = rbf_np(X, 0.5)
    a = r.alpha[0].numpy()
    assert r.kkt.item() <= tol and bool(r.converged.item())
    assert kkt_violation(np.outer(W, W) * K / lam, np.ones(N), a, 0.0, 1.0, W, r.intercept.item()) <= tol
    assert abs(W @ a) < 1e-12
    assert np.all((a >= 0) & (a <= 1))


def test_tiny_max_iter_is_not_converged():
    N = 80
    X, W = make_data(N, p=3, shift=0.5, seed=8)
    for kw in (dict(), dict(intercept=False), dict(estimand="ate")):
        r = dual_solve(t64(X)[None], t64(W)[None], 0.05, kernel="rbf", max_iter=3, **kw)
        assert not bool(r.converged.any())
        assert r.kkt.item() > 1e-6
        assert r.iterations.max().item() == 3
    r = qp_solve(torch.eye(3, dtype=F64)[None] * 2, torch.ones(1, 3, dtype=F64), max_iter=0)
    assert not bool(r.converged.item()) and r.iterations.item() == 0


@pytest.mark.parametrize("estimand,intercept", [("overlap", True), ("overlap", False), ("ate", True), ("att", True)])
def test_padded_batch_equals_separate_solves(estimand, intercept):
    rng = np.random.default_rng(9)
    sizes, Nmax, lams = [30, 17, 24], 36, [0.1, 0.25, 0.05]
    Xb = torch.full((3, Nmax, 3), float("nan"), dtype=F64)  # padded entries are garbage
    Wb = torch.zeros(3, Nmax, dtype=F64)
    mask = torch.zeros(3, Nmax, dtype=torch.bool)
    singles = []
    for k, n in enumerate(sizes):
        X, W = make_data(n, p=3, shift=0.5, seed=20 + k)
        pos = np.sort(rng.choice(Nmax, size=n, replace=False))
        Xb[k, pos] = t64(X)
        Wb[k, pos] = t64(W)
        mask[k, pos] = True
        singles.append(
            (
                pos,
                dual_solve(
                    t64(X)[None], t64(W)[None], lams[k], kernel="rbf", estimand=estimand, intercept=intercept, tol=1e-9
                ),
            )
        )
    # lam per dataset as a (B,) tensor
    rb = dual_solve(Xb, Wb, t64(lams), kernel="rbf", estimand=estimand, intercept=intercept, mask=mask, tol=1e-9)
    for k, (pos, rs) in enumerate(singles):
        assert torch.allclose(rb.weights[k, pos], rs.weights[0], atol=1e-8)
        assert torch.allclose(rb.alpha[k, pos], rs.alpha[0], atol=1e-8)
        assert rb.intercept[k].item() == pytest.approx(rs.intercept.item(), abs=1e-8)
        assert rb.objective[k].item() == pytest.approx(rs.objective.item(), rel=1e-9, abs=1e-12)
        assert torch.equal(rb.weights[k][~mask[k]], torch.zeros(Nmax - len(pos), dtype=F64))
    assert bool(rb.converged.all())


def test_float32_runs_and_is_close_to_float64():
    N, lam = 80, 0.2
    X, W = make_data(N, p=3, shift=0.5, seed=10)
    r64 = dual_solve(t64(X)[None], t64(W)[None], lam, kernel="rbf", tol=1e-9)
    for est in ("overlap", "ate"):
        r64 = dual_solve(
            t64(X)[None], t64(W)[None], lam if est == "overlap" else 0.02, kernel="rbf", estimand=est, tol=1e-9
        )
        r32 = dual_solve(
            t64(X)[None].float(),
            t64(W)[None].float(),
            lam if est == "overlap" else 0.02,
            kernel="rbf",
            estimand=est,
            tol=1e-4,
        )
        assert r32.weights.dtype == torch.float32 and r32.objective.dtype == torch.float32
        assert bool(r32.converged.item())
        assert (r32.weights.double() - r64.weights).abs().max().item() < 2e-3
        assert r32.objective.item() == pytest.approx(r64.objective.item(), rel=1e-4)
    Q = torch.eye(4, dtype=torch.float32)[None]
    r = qp_solve(Q, torch.ones(1, 4), 0.0, 0.5)
    assert r.x.dtype == torch.float32 and torch.allclose(r.x, torch.full((1, 4), 0.5))


def test_duplicated_rows():
    from sklearn.svm import SVC

    X, W = make_data(40, p=2, shift=0.5, seed=12)
    X = np.concatenate([X, X[:10], X[5:8]])  # exact duplicates, same treatment
    W = np.concatenate([W, W[:10], W[5:8]])
    X[-1], W[-1] = X[0], -W[0]  # the same covariates in both arms
    N, lam = len(W), 0.3
    K = rbf_np(X, 0.5)
    r = dual_solve(t64(X)[None], t64(W)[None], lam, kernel="rbf", gamma=0.5, tol=1e-9)
    assert bool(r.converged.item())
    svc = SVC(kernel="precomputed", C=1 / lam, tol=1e-10).fit(K, W)
    a_svc = np.zeros(N)
    a_svc[svc.support_] = lam * np.abs(svc.dual_coef_[0])
    Qd = np.outer(W, W) * K / lam
    assert r.objective.item() == pytest.approx(0.5 * a_svc @ Qd @ a_svc - a_svc.sum(), rel=1e-6)
    assert kkt_violation(Qd, np.ones(N), r.alpha[0].numpy(), 0.0, 1.0, W, r.intercept.item()) <= 1e-9
    ra = dual_solve(t64(X)[None], t64(W)[None], 0.05, kernel="rbf", gamma=0.5, estimand="ate", tol=1e-9)
    assert bool(ra.converged.item())


def test_group_of_size_one():
    X, W = make_data(30, p=2, shift=0.5, seed=13)
    W[:] = -1.0
    W[4] = 1.0
    for est in ("overlap", "ate", "att"):
        r = dual_solve(t64(X)[None], t64(W)[None], 0.1, kernel="rbf", estimand=est, tol=1e-10)
        assert bool(r.converged.item())
        assert r.weights[0, 4].item() == pytest.approx(1.0, abs=1e-12)
        assert r.weights[0, W < 0].sum().item() == pytest.approx(1.0, abs=1e-12)
    # overlap: W'alpha = 0 with one treated unit: controls' alpha sum to alpha_treated
    r = dual_solve(t64(X)[None], t64(W)[None], 0.1, kernel="rbf", tol=1e-10)
    assert r.alpha[0, W < 0].sum().item() == pytest.approx(r.alpha[0, 4].item(), abs=1e-12)


def test_warm_start():
    N, lam = 50, 0.3
    X, W = make_data(N, p=3, shift=0.5, seed=14)
    K = gram(t64(X)[None], "rbf", gamma=0.5)
    Wt = t64(W)[None]
    Q = Wt.unsqueeze(-1) * Wt.unsqueeze(-2) * K / lam
    p = torch.ones(1, N, dtype=F64)
    r = qp_solve(Q, p, 0.0, 1.0, c=Wt, d=torch.zeros(1, dtype=F64), tol=1e-10)
    r2 = qp_solve(Q, p, 0.0, 1.0, c=Wt, d=torch.zeros(1, dtype=F64), tol=1e-10, x0=r.x)
    assert r2.iterations.item() == 0 and bool(r2.converged.item())
    assert torch.allclose(r2.x, r.x, atol=0)
    x0 = torch.zeros(1, N, dtype=F64)
    x0[0, 0] = 0.5  # W'x0 != 0
    with pytest.raises(ValueError, match="equality"):
        qp_solve(Q, p, 0.0, 1.0, c=Wt, d=torch.zeros(1, dtype=F64), x0=x0)
    with pytest.raises(ValueError, match="bounds"):
        qp_solve(Q, p, 0.0, 1.0, x0=torch.full((1, N), 2.0, dtype=F64))


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


def test_gram_kernels():
    from sklearn.metrics.pairwise import rbf_kernel

    rng = np.random.default_rng(15)
    X = rng.standard_normal((12, 3)) * np.array([1.0, 3.0, 0.5]) + np.array([2.0, -1.0, 0.0])
    Xt = t64(X)[None]
    assert np.allclose(gram(Xt, "linear")[0].numpy(), X @ X.T, atol=1e-12)
    assert np.allclose(gram(Xt, "rbf", gamma=0.3)[0].numpy(), rbf_kernel(X, gamma=0.3), atol=1e-12)
    # default gamma: 1 / (p * mean per-feature variance)
    g = 1.0 / (3 * X.var(0).mean())
    assert np.allclose(gram(Xt, "rbf")[0].numpy(), rbf_kernel(X, gamma=g), atol=1e-12)
    # on standardised data it is sklearn's gamma="scale" = 1 / (p * X.var())
    Z = (X - X.mean(0)) / X.std(0)
    assert np.allclose(gram(t64(Z)[None], "rbf")[0].numpy(), rbf_kernel(Z, gamma=1 / (3 * Z.var())), atol=1e-12)
    # cina: E_ij / (h_i h_j) with E = exp(scale k_i.k_j), h = row sums of E
    S = X @ X.T / math.sqrt(3)
    E = np.exp(S)
    h = E.sum(1)
    assert np.allclose(gram(Xt, "cina")[0].numpy(), E / np.outer(h, h), rtol=1e-12, atol=0)
    S2 = 0.7 * X @ X.T
    E2 = np.exp(S2)
    assert np.allclose(gram(Xt, "cina", scale=0.7)[0].numpy(), E2 / np.outer(E2.sum(1), E2.sum(1)), rtol=1e-12)
    # large scores do not overflow (log-space)
    assert bool(torch.isfinite(gram(Xt * 40, "cina")).all())
    # mask: the padded gram equals the gram of the real units, zeros elsewhere
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, [2, 7]] = False
    keep = mask[0].numpy()
    Xn = Xt.clone()
    Xn[0, [2, 7]] = float("nan")
    for kern in ("linear", "rbf", "laplace", "cina"):
        Kp = gram(Xn, kern, mask=mask)[0]
        Ks = gram(Xt[:, keep], kern)[0]
        assert torch.allclose(Kp[keep][:, keep], Ks, rtol=1e-12, atol=1e-15)
        assert float(Kp[~keep].abs().sum()) == 0.0 and float(Kp[:, ~keep].abs().sum()) == 0.0
    Kpre = gram(gram(Xt, "rbf"), "precomputed", mask=mask)
    assert float(Kpre[0, 2].abs().sum()) == 0.0


def test_gram_laplace_against_scipy_distances():
    """laplace: exp(-gamma ||x_i - x_j||_2) against scipy's Euclidean distances, float64 and
    float32; the default gamma is 1 / sqrt(p * mean per-feature variance); exact ones on the
    diagonal and on duplicated rows (distance 0, where the squared distance may round below 0)."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(31)
    X = rng.standard_normal((13, 4)) * np.array([1.0, 2.0, 0.3, 5.0]) + 3.0
    X[5] = X[2]  # a duplicated row
    Dm = cdist(X, X)
    for dt, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        Xt = torch.as_tensor(X, dtype=dt)[None]
        K = gram(Xt, "laplace", gamma=0.45)[0].double().numpy()
        np.testing.assert_allclose(K, np.exp(-0.45 * Dm), rtol=tol, atol=tol)
        assert K[5, 2] == 1.0 and (np.diag(K) == 1.0).all()
        g = 1.0 / math.sqrt(4 * X.var(0).mean())
        np.testing.assert_allclose(gram(Xt, "laplace")[0].double().numpy(), np.exp(-g * Dm), rtol=tol, atol=tol)
    # per-dataset gamma
    Xb = torch.as_tensor(np.stack([X, X[::-1].copy()]), dtype=torch.float64)
    Kb = gram(Xb, "laplace", gamma=torch.tensor([0.2, 0.9], dtype=torch.float64))
    np.testing.assert_allclose(Kb[0].numpy(), np.exp(-0.2 * Dm), rtol=1e-12)
    np.testing.assert_allclose(Kb[1].numpy(), np.exp(-0.9 * cdist(X[::-1], X[::-1])), rtol=1e-12)


def test_overlap_laplace_matches_svc():
    """The overlap dual on the laplace kernel equals SVC on the same (independently computed) Gram."""
    from scipy.spatial.distance import cdist
    from sklearn.svm import SVC

    N, lam, gamma = 70, 0.4, 0.6
    X, W = make_data(N, p=3, shift=0.8, seed=8)
    K = np.exp(-gamma * cdist(X, X))
    r = dual_solve(t64(X)[None], t64(W)[None], lam, kernel="laplace", gamma=gamma, tol=1e-10)
    svc = SVC(kernel="precomputed", C=1 / lam, tol=1e-10, shrinking=False).fit(K, W)
    a_svc = np.zeros(N)
    a_svc[svc.support_] = lam * np.abs(svc.dual_coef_[0])
    Qd = np.outer(W, W) * K / lam
    assert r.objective.item() == pytest.approx(0.5 * a_svc @ Qd @ a_svc - a_svc.sum(), rel=1e-6)
    assert np.abs(r.alpha[0].numpy() - a_svc).max() < 1e-4
    assert r.intercept.item() == pytest.approx(svc.intercept_[0], abs=1e-6)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _ok():
    X, W = make_data(10, p=2, seed=16)
    return t64(X)[None], t64(W)[None]


@pytest.mark.parametrize(
    "case",
    [
        "W_zero",
        "empty_arm",
        "lam_zero",
        "lam_nan",
        "kernel",
        "estimand",
        "loss",
        "X_nan",
        "X_2d",
        "W_shape",
        "mask_dtype",
        "X_int",
        "precomputed_shape",
    ],
)
def test_dual_solve_validation(case):
    X, W = _ok()
    kw = dict(kernel="rbf")
    lam = 0.1
    err = ValueError
    if case == "W_zero":
        W = W.clone()
        W[0, 3] = 0.0
    elif case == "empty_arm":
        W = -torch.ones_like(W)
    elif case == "lam_zero":
        lam = 0.0
    elif case == "lam_nan":
        lam = float("nan")
    elif case == "kernel":
        kw["kernel"] = "poly"
    elif case == "estimand":
        kw["estimand"] = "atc"
    elif case == "loss":
        kw["loss"] = "logistic"
    elif case == "X_nan":
        X = X.clone()
        X[0, 2, 1] = float("inf")
    elif case == "X_2d":
        X = X[0]
    elif case == "W_shape":
        W = W[:, :5]
    elif case == "mask_dtype":
        kw["mask"] = torch.ones(1, 10)
        err = TypeError
    elif case == "X_int":
        X = X.long()
        err = TypeError
    elif case == "precomputed_shape":
        kw["kernel"] = "precomputed"
    with pytest.raises(err):
        dual_solve(X, W, lam, **kw)


@pytest.mark.parametrize(
    "case", ["Q_2d", "Q_int", "p_shape", "p_dtype", "lo_gt_up", "Q_nan", "c_no_d", "asym", "tol", "lower_inf"]
)
def test_qp_solve_validation(case):
    Q = torch.eye(3, dtype=F64)[None]
    p = torch.ones(1, 3, dtype=F64)
    kw = {}
    err = ValueError
    if case == "Q_2d":
        Q = Q[0]
    elif case == "Q_int":
        Q = Q.long()
        err = TypeError
    elif case == "p_shape":
        p = p[:, :2]
    elif case == "p_dtype":
        p = p.float()
        err = TypeError
    elif case == "lo_gt_up":
        kw = dict(lower=1.0, upper=0.0)
    elif case == "Q_nan":
        Q = Q.clone()
        Q[0, 1, 1] = float("nan")
    elif case == "c_no_d":
        kw = dict(c=torch.ones(1, 3, dtype=F64))
    elif case == "asym":
        Q = Q.clone()
        Q[0, 0, 1] = 0.5
    elif case == "tol":
        kw = dict(tol=0.0)
    elif case == "lower_inf":
        kw = dict(lower=INF)
    with pytest.raises(err):
        qp_solve(Q, p, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    X, W = make_data(60, p=3, shift=0.5, seed=17)
    for kw in (dict(), dict(intercept=False), dict(estimand="ate", lam=0.02)):
        lam = kw.pop("lam", 0.2)
        rc = dual_solve(t64(X)[None], t64(W)[None], lam, kernel="rbf", tol=1e-10, **kw)
        rg = dual_solve(t64(X)[None].cuda(), t64(W)[None].cuda(), lam, kernel="rbf", tol=1e-10, **kw)
        assert rg.weights.is_cuda and bool(rg.converged.all())
        assert torch.allclose(rg.weights.cpu(), rc.weights, atol=1e-7)
