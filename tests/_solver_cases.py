"""Test data and exact checks shared by the solver tests (tests/ops/test_qp_solve_cpu.py,
tests/ops/test_qp_solve_cuda.py, tests/emulator/test_qp_cuda_emulator.py); independent of the solver under test."""

from __future__ import annotations

import math

import numpy as np
import torch

F64 = torch.float64


def make_data(B, N, p, *, seed=0, shift=0.7, frac=0.4, dtype=F64):
    """B datasets of N units with p features; treated units (W = +1, a fraction `frac`, units 0 and
    1 forced treated / control so both arms are present) shifted by `shift` in every feature."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, N, p, generator=g, dtype=F64)
    T = torch.rand(B, N, generator=g) < frac
    T[:, 0], T[:, 1] = True, False  # both arms present
    X = X + shift * T.unsqueeze(-1).to(F64)
    W = T.to(F64) * 2 - 1
    return X.to(dtype), W.to(dtype)


def kkt_pair(Q, p, x, lo, up, c):
    """max(0, m - M) of the equality-constrained box QP, from scratch (numpy, float64)."""
    Q, p, x, lo, up, c = (np.asarray(a, dtype=float) for a in (Q, p, x, lo, up, c))
    v = -(Q @ x - p) / c
    inc, dec = x < up, x > lo
    I_up = np.where(c > 0, inc, dec)
    I_low = np.where(c > 0, dec, inc)
    return max(0.0, v[I_up].max(initial=-np.inf) - v[I_low].min(initial=np.inf))


def small_c_equality_case(dtype=F64):
    """A generic QP with a general equality (c of mixed signs, c_i = 0 for the first 5 units, one
    upper bound +inf) on which the compiled solvers once cycled at tol=1e-9: problem 2 has a
    coordinate with c_i ~ 0.004, whose true SMO partners all have curvature ~ Q_ii / c_i^2, and with
    fused multiply-adds WSS2 picked i as its own partner (a null step) until max_iter (found on an
    H200).  Returns Q, p, lo, up, c, d with a batch of 3."""
    g = torch.Generator().manual_seed(21)
    B, N = 3, 60
    A = torch.randn(B, N, N, generator=g, dtype=F64)
    Q = A @ A.transpose(1, 2) / N + 0.05 * torch.eye(N, dtype=F64)
    p = torch.randn(B, N, generator=g, dtype=F64)
    c = torch.randn(B, N, generator=g, dtype=F64)
    c[:, :5] = 0.0
    d = torch.tensor([0.3, -0.2, 0.0], dtype=F64)
    lo = torch.full((B, N), -1.0, dtype=F64)
    up = torch.full((B, N), 1.0, dtype=F64)
    up[:, 7] = math.inf
    return tuple(t.to(dtype) for t in (Q, p, lo, up, c, d))
