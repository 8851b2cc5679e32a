"""Kernel balancing at scale: a low-rank feature map and the balancing problem solved in its dual.

The exact balancing problem of an arm (docs/method.md §6),

    min_{w in simplex}  ||sum_i w_i phi(x_i) - mu||^2 + lam ||w||^2,

needs the N x N kernel: its cost grows as N^2 (:func:`exact_cost`).  With an explicit feature map
``Phi`` (N x r) whose inner products approximate the kernel, ``Phi Phi' ~ K``, the same problem has
a dual in only r variables,

    D(theta) = -||theta||^2 - 2 theta'mu + min_{w in simplex} (2 theta'Phi'w + lam ||w||^2),

whose inner minimiser is the Euclidean projection ``w(theta) = proj_simplex(-Phi theta / lam)``
(Danskin: ``grad D = 2 (Phi'w(theta) - theta - mu)``).  D is concave and smooth, so L-BFGS finds
its maximum in O(N r) work per evaluation; the duality gap ``P(w) - D(theta)`` certifies the
answer.  The weights never look at the outcome.

Feature maps: for the RBF kernel ``exp(-gamma ||x - x'||^2)``, random Fourier features
``sqrt(2/r) cos(x Omega + b)`` with ``Omega ~ N(0, 2 gamma)``, ``b ~ U[0, 2 pi)`` (Rahimi & Recht);
their kernel error is O(1/sqrt(r)).  For the linear kernel the map is exact (the standardised
covariates over sqrt(p)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_RANK",
    "EXACT_LIMIT",
    "exact_cost",
    "rff_features",
    "simplex_balance",
    "SimplexBalanceResult",
    "rank_for",
    "RandomFourierFeatures",
]

#: Random Fourier features used by default (the kernel error is about 1/sqrt(rank)).
DEFAULT_RANK = 512
#: Above this many units ``approximation="auto"`` switches from the exact solver to the low-rank one.
EXACT_LIMIT = 20_000
#: Seconds per unit^2 of the exact CPU solver (measured: one 10,000-unit overlap problem in 1.08 s on
#: one core of the 2-core development Xeon, docs/benchmarks.md); the estimate is for one core.
EXACT_SECONDS_PER_UNIT2 = 1.1e-8
#: The feature matrix is float64 up to this size, float32 beyond (half the memory, ~1e-7 precision).
FEATURE_BYTES_FLOAT64 = 4 * 2**30
#: The feature matrix never exceeds this size: a larger rank is cut to fit (with a warning).
FEATURE_BYTES_MAX = 8 * 2**30
#: Float64 values the exact CPU solver keeps per unit (features, gradient, state) besides its cache.
_EXACT_BYTES_PER_UNIT = 64


def exact_cost(n: int, p: int, cache_mb: float = 1024.0) -> dict:
    """A rough estimate of the exact solver's time (seconds, one CPU core) and memory (bytes) for
    one dataset of ``n`` units and ``p`` covariates: its work grows as ``n**2``."""
    seconds = EXACT_SECONDS_PER_UNIT2 * float(n) ** 2 * max(1.0, p / 10.0)
    memory = n * (8 * p + _EXACT_BYTES_PER_UNIT) + cache_mb * 2**20
    return {"seconds": seconds, "bytes": memory}


def rank_for(n: int, rank: int) -> int:
    """``rank``, cut so that the float32 feature matrix of ``n`` units fits in :data:`FEATURE_BYTES_MAX`."""
    return int(max(32, min(rank, FEATURE_BYTES_MAX // max(1, 4 * n))))


class RandomFourierFeatures:
    """The random Fourier feature map of ``exp(-gamma ||z - z'||^2)`` (``kernel="rbf"``) or
    ``exp(-gamma ||z - z'||)`` (``kernel="laplace"``) with ``rank`` features.

    The frequencies are draws from the kernel's spectral density (Bochner): Gaussian with
    variance ``2 gamma`` for rbf; for laplace the multivariate Cauchy with scale ``gamma``
    (a Gaussian vector divided by the absolute value of one further standard normal per feature).

    ``transform(Z)`` gives the (n, rank) features, built in chunks of rows (temporary memory
    O(chunk x rank) beyond the result); ``mean(Z)`` their column means without storing them.
    ``dtype`` None: float64 while the result fits in :data:`FEATURE_BYTES_FLOAT64`, float32 beyond.
    """

    def __init__(self, p: int, gamma: float, rank: int, seed: int, chunk: int = 65536, kernel: str = "rbf"):
        if kernel not in ("rbf", "laplace"):
            raise ValueError(f"random Fourier features exist here for the rbf and laplace kernels, not {kernel!r}")
        rng = np.random.default_rng(seed)
        if kernel == "rbf":
            self.omega = rng.normal(0.0, math.sqrt(2.0 * gamma), size=(p, rank))
        else:
            z = rng.normal(0.0, 1.0, size=(p, rank))
            self.omega = float(gamma) * z / np.abs(rng.normal(0.0, 1.0, size=rank))
        self.phase = rng.uniform(0.0, 2.0 * math.pi, size=rank)
        self.kernel = kernel
        self.rank = int(rank)
        self.chunk = int(chunk)
        self._scale = math.sqrt(2.0 / rank)

    def _block(self, Z):
        return self._scale * np.cos(Z @ self.omega + self.phase)

    def transform(self, Z: np.ndarray, dtype=None) -> np.ndarray:
        n = Z.shape[0]
        if dtype is None:
            dtype = np.float64 if n * self.rank * 8 <= FEATURE_BYTES_FLOAT64 else np.float32
        out = np.empty((n, self.rank), dtype=dtype)
        for s in range(0, n, self.chunk):
            out[s : s + self.chunk] = self._block(Z[s : s + self.chunk])
        return out

    def transform_tensor(self, Z):
        """The (n, rank) features of a torch tensor ``Z``, in its dtype and on its device (the
        same map as :meth:`transform`; float32 is about ten times faster than numpy's float64)."""
        import torch

        omega = torch.as_tensor(self.omega, dtype=Z.dtype, device=Z.device)
        phase = torch.as_tensor(self.phase, dtype=Z.dtype, device=Z.device)
        out = torch.empty(Z.shape[0], self.rank, dtype=Z.dtype, device=Z.device)
        for s in range(0, Z.shape[0], self.chunk):
            torch.addmm(phase, Z[s : s + self.chunk], omega, out=out[s : s + self.chunk])
        return out.cos_().mul_(self._scale)

    def mean(self, Z: np.ndarray, weights=None) -> np.ndarray:
        """Column means of the features of ``Z`` (``weights``-weighted when given)."""
        tot = np.zeros(self.rank)
        for s in range(0, Z.shape[0], self.chunk):
            blk = self._block(Z[s : s + self.chunk])
            tot += blk.sum(axis=0) if weights is None else weights[s : s + self.chunk] @ blk
        return tot / (max(1, Z.shape[0]) if weights is None else float(np.sum(weights)))


def rff_features(
    Z: np.ndarray, gamma: float, rank: int, seed: int, *, dtype=None, chunk: int = 65536, kernel: str = "rbf"
) -> np.ndarray:
    """Random Fourier features (n, rank) of the rows of ``Z`` (:class:`RandomFourierFeatures`)."""
    return RandomFourierFeatures(Z.shape[1], gamma, rank, seed, chunk, kernel).transform(Z, dtype)


def _project_simplex(v: np.ndarray, c=None) -> np.ndarray:
    """Euclidean projection of ``v`` onto the probability simplex (sort-based, O(n log n)).

    With ``c > 0`` (per-unit weights) the weighted projection ``argmin_{w in simplex}
    sum_i (w_i - c_i v_i)^2 / c_i``, i.e. ``w_i = c_i max(0, v_i - tau)`` with ``tau`` such that
    the weights sum to one.
    """
    if c is None:
        u = np.sort(v)[::-1]
        css = np.cumsum(u) - 1.0
        k = np.arange(1, v.size + 1)
        cond = u - css / k > 0
        rho = int(np.nonzero(cond)[0][-1])
        tau = css[rho] / (rho + 1)
        return np.maximum(v - tau, 0.0)
    order = np.argsort(-v, kind="stable")
    u, cu = v[order], c[order]
    ccs = np.cumsum(cu)
    tau_k = (np.cumsum(cu * u) - 1.0) / ccs
    rho = int(np.nonzero(u - tau_k > 0)[0][-1])
    return c * np.maximum(v - tau_k[rho], 0.0)


@dataclass
class SimplexBalanceResult:
    """Weights of one arm (on the simplex), the primal objective, the duality gap and the solver's account."""

    weights: np.ndarray
    objective: float
    gap: float
    iterations: int
    converged: bool


def simplex_balance(
    Phi: np.ndarray,
    mu: np.ndarray,
    lam: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 500,
    c=None,
    theta0=None,
) -> SimplexBalanceResult:
    """``argmin_{w in simplex} ||Phi'w - mu||^2 + lam ||w||^2`` through its r-dimensional dual.

    ``Phi`` (n, r) the features of the arm's units, ``mu`` (r,) the target mean, ``lam > 0``.
    ``c`` (n,), > 0, optional: a per-unit ridge, ``lam sum_i w_i^2 / c_i`` instead of
    ``lam ||w||^2`` (frequency weights: a unit of weight k is k copies sharing its weight ``w_i``);
    the inner minimiser is then the weighted projection ``w_i = c_i max(0, -(Phi theta)_i / lam - tau)``
    and the starting Hessian ``2 I + (2 / lam) Phi'(C - c c'/sum c) Phi``.
    The dual is maximised by L-BFGS in preconditioned coordinates: ``theta = L^-T u`` with ``L L'``
    the dual's Hessian at the start (all units in the support), ``2 I + (2 / lam) Phi'(I - 11'/n) Phi``,
    which makes the problem well conditioned whatever n and lam are (without it L-BFGS needs
    thousands of steps at large n / lam).  ``converged`` when the duality gap is below ``tol``
    times the objective.  ``theta0`` (r,), optional: the starting dual point (default 0).  At the
    optimum ``theta = Phi'w - mu``, the imbalance of the weights, so the imbalance of good
    starting weights is a warm start.
    """
    from scipy.linalg import cho_factor, solve_triangular
    from scipy.optimize import minimize

    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a positive finite number, got {lam!r}")
    n, r = Phi.shape
    if n == 0:
        raise ValueError("an arm has no units")
    mu = np.asarray(mu, dtype=np.float64)
    if c is not None:
        c = np.asarray(c, dtype=np.float64)
        if c.shape != (n,) or not np.all(np.isfinite(c)) or np.any(c <= 0):
            raise ValueError("c must be a finite, positive vector with one entry per unit")
    work = Phi.dtype
    # the starting Hessian, accumulated in float64 over chunks of rows
    G = np.zeros((r, r))
    s1 = np.zeros(r)
    for a in range(0, n, 65536):
        blk = Phi[a : a + 65536].astype(np.float64, copy=False)
        cb = None if c is None else c[a : a + 65536]
        G += blk.T @ blk if cb is None else (blk * cb[:, None]).T @ blk
        s1 += blk.sum(axis=0) if cb is None else cb @ blk
    H = 2.0 * np.eye(r) + (2.0 / lam) * (G - np.outer(s1, s1) / (n if c is None else float(c.sum())))
    L, _ = cho_factor(H, lower=True)
    L = np.tril(L)

    def theta_of(u):
        return solve_triangular(L, u, lower=True, trans="T")

    def ridge(w):
        return float(w @ w) if c is None else float(w @ (w / c))

    def weights_of(theta):
        g = (Phi @ theta.astype(work, copy=False)).astype(np.float64)
        return _project_simplex(-g / lam, c)

    def neg_dual(u):
        theta = theta_of(u)
        w = weights_of(theta)
        pw = (Phi.T @ w.astype(work, copy=False)).astype(np.float64)
        value = -theta @ theta - 2.0 * theta @ mu + 2.0 * theta @ pw + lam * ridge(w)
        grad_theta = 2.0 * (pw - theta - mu)
        return -value, -solve_triangular(L, grad_theta, lower=True)

    if theta0 is None:
        u0 = np.zeros(r)
    else:
        theta0 = np.asarray(theta0, dtype=np.float64)
        if theta0.shape != (r,) or not np.all(np.isfinite(theta0)):
            raise ValueError(f"theta0 must be a finite vector of length {r}")
        u0 = L.T @ theta0  # theta = L^-T u
    res = minimize(
        neg_dual,
        u0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": int(max_iter), "ftol": 1e-16, "gtol": 1e-12, "maxcor": 20},
    )
    w = weights_of(theta_of(res.x))
    diff = (Phi.T @ w.astype(work, copy=False)).astype(np.float64) - mu
    primal = float(diff @ diff + lam * ridge(w))
    dual = float(-res.fun)
    gap = max(0.0, primal - dual)
    return SimplexBalanceResult(
        weights=w, objective=primal, gap=gap, iterations=int(res.nit), converged=bool(gap <= tol * abs(primal))
    )
