"""Covariate representations shared by the kernel estimators, the zero-shot model and its training.

* :func:`normal_scores`: each continuous column replaced by its normal scores (``scaling=
  "normal-scores"`` of :class:`~cina_ext.estimators.KernelBalancing` and
  :class:`~cina_ext.estimators.CInAZeroShot`, docs/method.md §8).
* :func:`principal_projection`: fewer columns for a fixed-width network, the leading principal
  directions rotated to equal variances (:func:`equal_diagonal_rotation`).
* :func:`network_inputs`: both, as the zero-shot network reads a dataset.

Projection: a zero-shot model reads at most ``max_features`` covariates and standardises each
input column per dataset before its RBF kernel ``exp(-||z - z'||^2 / p)``.
:func:`principal_projection` maps a wider standardised table onto ``m`` columns so that this
kernel still approximates the kernel of all the covariates:

1. the ``m`` leading principal directions keep the largest share of every squared distance
   (the best rank-``m`` approximation of the centred table);
2. an orthogonal rotation of those ``m`` scores gives every column the same variance, so the
   network's per-column standardisation is one common factor and leaves the projected distances
   as they were, relative to their mean.  Without it the standardisation would whiten the scores
   and blow the minor directions up to the size of the major ones.

Both steps are deterministic (the signs of the directions are fixed), so one table always gives
the same inputs.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .checks import standardize_columns

__all__ = [
    "NORMAL_SCORES_MIN_DISTINCT",
    "SCALINGS",
    "normal_scores",
    "equal_diagonal_rotation",
    "principal_projection",
    "network_inputs",
]

#: Columns with at least this many distinct values are continuous for ``scaling="normal-scores"``;
#: the others (binary, small ordinal codes) keep their values.
NORMAL_SCORES_MIN_DISTINCT = 10
#: The covariate representations of ``scaling=``.
SCALINGS = ("standard", "normal-scores")


def normal_scores(X: np.ndarray, sample_weight=None, min_distinct: int = NORMAL_SCORES_MIN_DISTINCT):
    """Each continuous column replaced by its normal scores ``Phi^-1(u)`` (the others unchanged).

    ``u`` is the mid-rank of the value: the share of the (frequency-weighted) units below it plus
    half the share equal to it, so ties share one score and a frequency weight acts as that many
    copies of the row.  Monotone per column: heavy tails are pulled in and a point mass (a
    covariate that is often exactly 0, such as earnings) becomes one well-separated value, while
    Gaussian covariates are left nearly as they were.  ``u`` is clipped to ``[eps, 1 - eps]``,
    ``eps`` half the smallest positive weight's share (``1/(2N)`` unweighted): only units of
    frequency weight 0 reach the clip.
    """
    from scipy.special import ndtri

    X = np.array(X, dtype=np.float64, copy=True)
    n = X.shape[0]
    if n == 0:
        return X
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    total = s.sum()
    positive = s[s > 0]
    if positive.size == 0:
        return X
    lo = 0.5 * positive.min() / total
    hi = 1.0 - lo
    for j in range(X.shape[1]):
        v = X[:, j]
        values, inverse = np.unique(v, return_inverse=True)
        if values.size < min_distinct:
            continue
        mass = np.bincount(inverse, weights=s, minlength=values.size)
        below = np.cumsum(mass) - mass
        u = (below + 0.5 * mass) / total
        X[:, j] = ndtri(np.clip(u, lo, hi))[inverse]
    return X


#: relative tolerance below which a diagonal entry counts as already at the target
_EQUAL_RTOL = 1e-12


def equal_diagonal_rotation(variances: np.ndarray) -> np.ndarray:
    """An orthogonal ``R`` (m, m) with ``diag(R' diag(variances) R)`` constant, equal to their mean.

    Plane rotations, each of which sets one diagonal entry exactly to the mean (one entry above
    the mean, one below: the rotated entry sweeps continuously between the two, so the mean is
    reached); at most ``m - 1`` of them.  Such a rotation exists for any variances because the
    constant vector is majorised by every spectrum with the same sum (Schur-Horn).

    Parameters
    ----------
    variances : ndarray of shape (m,)
        Non-negative variances (e.g. principal-component variances).

    Returns
    -------
    ndarray of shape (m, m)
        The rotation (orthogonal).
    """
    lam = np.asarray(variances, dtype=np.float64).reshape(-1)
    m = lam.size
    A = np.diag(lam)
    R = np.eye(m)
    target = float(lam.mean()) if m else 0.0
    tol = _EQUAL_RTOL * max(abs(target), 1e-300)
    for _ in range(max(m - 1, 0)):
        d = np.diag(A) - target
        i, j = int(np.argmax(d)), int(np.argmin(d))
        if d[i] <= tol or d[j] >= -tol:
            break
        a, b, c = A[i, i], A[j, j], A[i, j]
        # A'_ii(theta) = (a + b)/2 + r cos(2 theta - phi) with r >= (a - b)/2 > |target - (a + b)/2|
        half = 0.5 * (a - b)
        r = float(np.hypot(half, c))
        phi = float(np.arctan2(c, half))
        theta = 0.5 * (phi + np.arccos(np.clip((target - 0.5 * (a + b)) / r, -1.0, 1.0)))
        cos, sin = np.cos(theta), np.sin(theta)
        G = np.eye(m)
        G[i, i], G[j, i], G[i, j], G[j, j] = cos, sin, -sin, cos
        A = G.T @ A @ G
        R = R @ G
    return R


def principal_projection(Z: np.ndarray, m: int) -> np.ndarray:
    """``Z`` (N, p) projected onto ``min(m, N, p)`` columns: leading principal scores, equal variances.

    The scores of the centred ``Z`` on its leading right singular vectors (each signed so that its
    largest loading is positive), rotated by :func:`equal_diagonal_rotation` of their variances.
    Pairwise distances are those of the rank-``m`` approximation of ``Z``; every column has the
    mean of the kept variances.  Fewer than ``m`` columns come back when ``N`` or ``p`` is smaller.

    Parameters
    ----------
    Z : ndarray of shape (N, p)
        Covariates (standardised by the caller).
    m : int
        Most columns to return, >= 1.

    Returns
    -------
    ndarray of shape (N, min(m, N, p))
        The projected covariates, centred.
    """
    Z = np.asarray(Z, dtype=np.float64)
    n, p = Z.shape
    k = max(0, min(int(m), n, p))
    Zc = Z - Z.mean(axis=0) if n else Z
    if k == 0:
        return np.zeros((n, k))
    _, s, vt = np.linalg.svd(Zc, full_matrices=False)
    V = vt[:k].T
    signs = np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(k)])
    V = V * np.where(signs == 0, 1.0, signs)
    scores = Zc @ V
    return scores @ equal_diagonal_rotation(s[:k] ** 2 / n)


def network_inputs(X: np.ndarray, scaling: str, width: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    """What a zero-shot network reads of one design, and the full covariates behind it.

    The covariates are scaled (``scaling``: "standard", or "normal-scores" first), standardised in
    float64 (so that no column is too small or too large for the model's own standardisation in
    its dtype), then projected by :func:`principal_projection` when they have more than ``width``
    columns.

    Parameters
    ----------
    X : ndarray of shape (N, p)
        Raw covariates (finite).
    scaling : {"standard", "normal-scores"}
        The representation.
    width : int or None
        Most columns the network reads (its ``max_features`` or fewer); None: no projection.

    Returns
    -------
    inputs : ndarray of shape (N, min(p, width))
        The network's input (fewer columns only when N < width < p: at most N principal directions).
    full : ndarray of shape (N, p)
        The scaled, standardised covariates (those of the refinement and the objective).
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    X = np.asarray(X, dtype=np.float64)
    if scaling == "normal-scores":
        X = normal_scores(X)
    Z = standardize_columns(X)[0]
    if width is None or Z.shape[1] <= int(width):
        return Z, Z
    return principal_projection(Z, int(width)), Z
