"""Data-driven tuning of the kernel balancing problems (docs/method.md §8).

* :func:`median_gamma` (defined in :mod:`cina_ext._core.bandwidth`, which the zero-shot model
  shares): the median heuristic for the bandwidth of the rbf and laplace kernels, on a seeded
  subsample of at most :data:`MEDIAN_UNITS` units (all pairs among them), so its cost does not
  grow with N.
* :func:`select_lam`: the rule of ``lam="auto"``: among the penalties of a grid, the largest one
  whose weighted imbalance (the largest absolute standardised mean difference of the covariates,
  as :func:`cina_ext.diagnostics.balance_table` reports it) stays within a stated tolerance of the
  smallest imbalance on the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from .._core.bandwidth import MEDIAN_UNITS, median_gamma
from ..diagnostics import balance_table, kish_ess, max_abs_smd_after_many

__all__ = [
    "MEDIAN_UNITS",
    "LAM_GRID",
    "LAM_FACTOR",
    "LAM_SLACK",
    "median_gamma",
    "LamSelection",
    "select_lam",
]

#: The relative penalties ``lam="auto"`` chooses from ("ate"/"att"): 1e-4 to 1, half a decade apart.
LAM_GRID = tuple(float(10.0**e) for e in np.arange(-4.0, 0.01, 0.5))
#: ``lam="auto"`` accepts an imbalance up to ``max(LAM_FACTOR * best, best + LAM_SLACK)``.
LAM_FACTOR = 1.1
LAM_SLACK = 0.005


@dataclass
class LamSelection:
    """The outcome of :func:`select_lam`: the chosen ``lam`` and the grid's diagnostics."""

    lam: float
    index: int
    grid: List[float]
    imbalance: List[float]
    ess_treated: List[float]
    ess_control: List[float]
    converged: List[bool]
    threshold: float
    rule: str = field(default="")

    def to_dict(self) -> dict:
        return {
            "lam": self.lam,
            "grid": list(self.grid),
            "imbalance": list(self.imbalance),
            "ess_treated": list(self.ess_treated),
            "ess_control": list(self.ess_control),
            "converged": list(self.converged),
            "threshold": self.threshold,
            "rule": self.rule,
        }


def select_lam(
    X: np.ndarray,
    T: np.ndarray,
    weights: Sequence[np.ndarray],
    grid: Sequence[float],
    *,
    estimand: str,
    converged: Sequence[bool],
    factor: Optional[float] = None,
    slack: Optional[float] = None,
    sample_weight=None,
) -> LamSelection:
    """The ``lam="auto"`` rule on the solutions of a grid of penalties.

    For every ``lam`` of ``grid`` (increasing), ``weights[k]`` are the balancing weights solved
    with it.  The imbalance of each is the largest absolute weighted standardised mean difference
    of the columns of ``X`` (``balance_table(...).max_abs_smd_after``, the SMD denominators of the
    estimand).  With ``best`` the smallest imbalance among the converged solutions, the rule picks
    the largest ``lam`` whose solution converged and has an imbalance of at most
    ``max(factor * best, best + slack)`` (defaults :data:`LAM_FACTOR`, :data:`LAM_SLACK`): the least-penalised-variance point that keeps the
    balance of the best one, up to that tolerance.  A larger ``lam`` spreads the weights (a larger
    effective sample size) at the cost of balance.  ``sample_weight``: the frequency weights of a
    weighted fit (the SMD denominators are then s-weighted; ``weights`` are the total weights).
    """
    factor = LAM_FACTOR if factor is None else float(factor)
    slack = LAM_SLACK if slack is None else float(slack)
    grid = [float(g) for g in grid]
    if len(grid) != len(weights) or len(grid) != len(converged) or not grid:
        raise ValueError("grid, weights and converged must have the same non-zero length")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError("the lam grid must be increasing")
    if sample_weight is None:  # one pass for the whole grid
        imb = [
            float(v)
            for v in max_abs_smd_after_many(X, T, np.stack([np.asarray(w) for w in weights]), estimand=estimand)
        ]
    else:
        imb = [
            float(balance_table(X, T, w, estimand=estimand, sample_weight=sample_weight).max_abs_smd_after)
            for w in weights
        ]
    e1 = [float(kish_ess(w[T == 1])) for w in weights]
    e0 = [float(kish_ess(w[T == 0])) for w in weights]
    conv = [bool(c) for c in converged]
    ok = [k for k in range(len(grid)) if conv[k] and math.isfinite(imb[k])]
    if not ok:  # nothing converged: the smallest imbalance regardless
        ok = list(range(len(grid)))
    best = min(imb[k] for k in ok)
    thr = max(factor * best, best + slack)
    k = max(k for k in ok if imb[k] <= thr)
    return LamSelection(
        lam=grid[k],
        index=k,
        grid=grid,
        imbalance=imb,
        ess_treated=e1,
        ess_control=e0,
        converged=conv,
        threshold=thr,
        rule=f"largest lam with max|SMD| <= max({factor:g} * best, best + {slack:g})",
    )
