"""The PyTorch twin of the balancing descent against independent computations: the objective by
its definition, and the constrained optimum found by scipy's SLSQP."""

from __future__ import annotations

import importlib

import numpy as np
import torch
from scipy.optimize import minimize

ref = importlib.import_module("cina_ext.reference.balance_descent")
F64 = torch.float64


def _problem(N, att, seed):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(1, N, 3, generator=g, dtype=F64)
    K = torch.exp(-(torch.cdist(Z, Z) ** 2) / 3)
    arm = torch.tensor([[1, 0] * (N // 2) + [1] * (N % 2)], dtype=torch.int8)
    t1, t0 = (arm == 1).to(F64), (arm == 0).to(F64)
    target = t1 / t1.sum() if att else torch.full((1, N), 1.0 / N, dtype=F64)
    moving = arm == 0 if att else torch.ones(1, N, dtype=torch.bool)
    w = torch.where(arm == 1, t1 / t1.sum(), t0 / t0.sum())
    return K, w, arm, target, moving, torch.tensor([0.05], dtype=F64)


def _objective(K, w, arm, target, moving, lam):
    out = lam * (w * w * moving).sum(-1)
    for a in (1, 0):
        d = w * (arm == a) - target
        out = out + torch.einsum("ri,rij,rj->r", d, K, d)
    return out


def test_the_returned_objective_is_that_of_the_returned_weights_and_never_rises():
    args = _problem(15, False, 0)
    prev = float("inf")
    for k in range(0, 12):
        w, obj = ref.balance_descent(*args, k, 32.0, 0.9)
        torch.testing.assert_close(obj, _objective(args[0], w, *args[2:]), rtol=1e-10, atol=1e-14)
        assert float(obj) <= prev * (1 + 1e-12)
        prev = float(obj)


def test_many_steps_reach_the_constrained_optimum():
    for att in (False, True):
        K, w, arm, target, moving, lam = _problem(12, att, 1)
        wd, od = ref.balance_descent(K, w, arm, target, moving, lam, 3000, 8.0, 0.9)
        Kn, a, c, mv = K[0].numpy(), arm[0].numpy(), target[0].numpy(), moving[0].numpy()

        def f(x):
            x = np.where(mv, x, w[0].numpy())
            return sum((np.where(a == s, x, 0) - c) @ Kn @ (np.where(a == s, x, 0) - c) for s in (1, 0)) + float(
                lam
            ) * np.sum(np.where(mv, x, 0) ** 2)

        cons = [
            {"type": "eq", "fun": (lambda x, s=s: np.sum(np.where((a == s) & mv, x, 0)) - 1.0)}
            for s in (1, 0)
            if ((a == s) & mv).any()
        ]
        sol = minimize(f, w[0].numpy(), bounds=[(0, None)] * 12, constraints=cons, method="SLSQP", tol=1e-14)
        assert sol.success
        assert abs(float(od[0]) - sol.fun) <= 1e-6 * abs(sol.fun)
        np.testing.assert_allclose(wd[0].numpy(), np.where(mv, sol.x, w[0].numpy()), atol=2e-3)
