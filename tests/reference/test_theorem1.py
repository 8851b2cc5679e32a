"""Theorem 1 (docs/method.md §3): minimising eq. L over the values (keys fixed) and reading out eq. R
gives the exact balancing dual with the attention kernel k_ij = E_ij / (h_i h_j).

Eq. L for fixed keys is a convex QP in (V, b).  With u = h * V (elementwise) the attention output is
o = softmax(S) V = K u and the penalty is V'EV = u'Ku, with K the cina kernel.  Writing K = L L'
(Cholesky) and beta = L'u turns eq. L into the well-conditioned QP

    hinge:          min (lam/2)||beta||^2 + sum_i xi_i,        xi >= 0, xi_i >= 1 - W_i((L beta)_i + b)
    squared hinge:  min (lam/2)||beta||^2 + sum_i xi_i^2 / 2,  xi_i >= 1 - W_i((L beta)_i + b)

(identity Hessian in beta; the map V -> beta is a bijection when K is positive definite).  It is
solved by clarabel at high precision; V = (L')^{-1} beta / h is read back, the loss is re-evaluated
with the attention operator itself, and eq. R is compared with the exact dual solver.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
import torch

from cina_ext import reference
from cina_ext.reference.qp_solve import dual_solve, gram

F64 = torch.float64


def _keys(N, D, norm, seed):
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(1, N, D, dtype=F64, generator=g)
    K = norm * K / K.norm(dim=-1, keepdim=True)
    W = torch.where(torch.rand(1, N, generator=g) < 0.45, 1.0, -1.0).to(F64)
    W[0, 0], W[0, 1] = 1.0, -1.0
    return K, W


def _solve_eq_L(Kmat, W, lam, loss):
    """Exact minimiser of eq. L in the variables (beta, b, xi); returns (u, b, objective)."""
    from qpsolvers import solve_qp

    N = len(W)
    L = np.linalg.cholesky(Kmat)
    n = 2 * N + 1  # z = [beta (N), b, xi (N)]
    P = np.zeros((n, n))
    P[:N, :N] = lam * np.eye(N)
    q = np.zeros(n)
    # margin constraints: -W_i (L beta)_i - W_i b - xi_i <= -1
    G = np.zeros((N, n))
    G[:, :N] = -W[:, None] * L
    G[:, N] = -W
    G[:, N + 1 :] = -np.eye(N)
    h = -np.ones(N)
    if loss == "hinge":
        q[N + 1 :] = 1.0
        Gpos = np.zeros((N, n))
        Gpos[:, N + 1 :] = -np.eye(N)  # xi >= 0
        G = np.vstack([G, Gpos])
        h = np.concatenate([h, np.zeros(N)])
    else:
        P[N + 1 :, N + 1 :] = np.eye(N)
    z = solve_qp(
        sp.csc_matrix(P),
        q,
        sp.csc_matrix(G),
        h,
        solver="clarabel",
        tol_gap_abs=1e-13,
        tol_gap_rel=1e-13,
        tol_feas=1e-13,
        max_iter=500,
    )
    assert z is not None
    beta, b = z[:N], z[N]
    u = sla.solve_triangular(L.T, beta, lower=False)  # L'u = beta
    return u, b, 0.5 * z @ P @ z + q @ z


@pytest.mark.parametrize(
    "N,D,norm,lam_N,seed",
    [(40, 16, 1.5, 0.01, 1), (60, 8, 3.0, 0.03, 2)],
)
def test_theorem1_hinge(N, D, norm, lam_N, seed):
    keys, W = _keys(N, D, norm, seed)
    lam = lam_N / N  # the cina kernel is O(1/N^2)
    Kmat = gram(keys, "cina")[0].numpy()
    ev = np.linalg.eigvalsh(Kmat)
    assert ev[0] > 0 and ev[-1] / ev[0] < 1e6  # well-posed: eq. L has a unique minimiser in V

    u, b, obj = _solve_eq_L(Kmat, W[0].numpy(), lam, "hinge")
    _, _, lse = reference.attention_hinge(keys, torch.zeros_like(W), W, torch.zeros(1, dtype=F64), lam)
    V = torch.as_tensor(u, dtype=F64)[None] * torch.exp(-lse)  # u = h V
    loss, out, lse2 = reference.attention_hinge(keys, V, W, torch.tensor([b], dtype=F64), lam)
    # the loss we minimised is eq. L as computed by the attention operator
    assert loss.item() == pytest.approx(obj, rel=1e-9)
    assert torch.allclose(out[0], torch.as_tensor(Kmat @ u), rtol=1e-9, atol=1e-12)

    alpha_R = reference.readout_alpha(V, W, lse2, lam)
    res = dual_solve(keys, W, lam, kernel="cina", tol=1e-12)
    assert bool(res.converged.item())
    a = res.alpha[0]
    free = (a > 1e-6) & (a < 1 - 1e-6)
    assert int(free.sum()) >= 3 and int((a < 1e-9).sum()) >= 2 and int((a > 1 - 1e-9).sum()) >= 2
    assert (alpha_R - res.alpha).abs().max().item() < 1e-4
    # strong duality, and the intercept is the SVM intercept
    assert loss.item() == pytest.approx(-res.objective.item(), rel=1e-7)
    assert b == pytest.approx(res.intercept.item(), abs=1e-4)
    # balancing weights read out through attention agree as well
    wR = reference.readout_weights(alpha_R, W)
    assert (wR - res.weights).abs().max().item() < 1e-4


def test_theorem1_squared_hinge():
    N, D, norm = 40, 16, 1.5
    keys, _ = _keys(N, D, norm, 3)
    # treatment related to the keys, so that some units lie beyond the margin (alpha = 0)
    W = torch.where(keys[..., 0] > 0, 1.0, -1.0).to(F64)
    lam = 0.003 / N
    Kmat = gram(keys, "cina")[0].numpy()
    u, b, obj = _solve_eq_L(Kmat, W[0].numpy(), lam, "squared_hinge")
    _, _, lse = reference.attention_hinge(keys, torch.zeros_like(W), W, torch.zeros(1, dtype=F64), lam)
    V = torch.as_tensor(u, dtype=F64)[None] * torch.exp(-lse)
    loss, _, lse2 = reference.attention_hinge(keys, V, W, torch.tensor([b], dtype=F64), lam, loss="squared_hinge")
    assert loss.item() == pytest.approx(obj, rel=1e-9)
    alpha_R = reference.readout_alpha(V, W, lse2, lam, loss="squared_hinge")
    res = dual_solve(keys, W, lam, kernel="cina", loss="squared_hinge", tol=1e-12)
    assert bool(res.converged.item())
    a = res.alpha[0]
    assert int((a > 1e-6).sum()) >= 3 and int((a < 1e-9).sum()) >= 2
    # alpha is on the scale of eq. R: no rescaling between the two
    assert (alpha_R - res.alpha).abs().max().item() < 1e-4 * max(1.0, a.max().item())
    assert loss.item() == pytest.approx(-res.objective.item(), rel=1e-7)
