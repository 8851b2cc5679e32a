"""Kernel balancing: the balancing problem of each estimand solved exactly by the batched dual
solver, or, for large datasets, on a low-rank feature map (:mod:`.low_rank`)."""

from __future__ import annotations

import math
import warnings
from typing import List, Optional

import numpy as np
import torch

from .._core.checks import check_estimand, check_positive, resolve_device, resolve_dtype
from .._core.covariates import SCALINGS, normal_scores
from ..ops import qp_solve
from .base import (
    _arm_normalise,
    _dual_solve,
    _lam_abs,
    _max_iter_arg,
    _standardize,
    _WeightingEstimator,
)
from .low_rank import DEFAULT_RANK, EXACT_LIMIT, RandomFourierFeatures, exact_cost, rank_for, simplex_balance
from .tuning import LAM_GRID, median_gamma, select_lam

__all__ = ["KernelBalancing"]


_KB_KERNELS = ("rbf", "linear", "laplace")
#: The bandwidth rules (``gamma=`` as a string); "auto" is "median".
_GAMMA_RULES = ("median", "auto", "scale")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


#: Weighted fits (``sample_weight``) solve the arm problems exactly with a dense per-arm QP up to
#: this many units in the larger arm (its N_arm x N_arm matrix: 200 MB at 5,000); beyond, and with
#: approximation="rff", on the low-rank path.
WEIGHTED_DENSE_LIMIT = 5_000


def _kernel_block(A: np.ndarray, B: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    """The kernel matrix between the rows of A and B (standardised; "linear": already / sqrt(p))."""
    G = A @ B.T
    if kernel == "linear":
        return G
    d2 = np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * G, 0.0)
    if kernel == "laplace":
        return np.exp(-gamma * np.sqrt(d2))
    return np.exp(-gamma * d2)


def _kernel_mean(A: np.ndarray, B: np.ndarray, wb: np.ndarray, kernel: str, gamma: float, chunk: int = 2048):
    """``K(A, B) wb`` in chunks of rows of A (memory O(chunk x len(B)))."""
    out = np.empty(A.shape[0])
    for a in range(0, A.shape[0], chunk):
        out[a : a + chunk] = _kernel_block(A[a : a + chunk], B, kernel, gamma) @ wb
    return out


# Relative lam defaults (see the module docstring for the scaling); chosen by measurement,
# see the class docstrings.
_DEFAULT_LAM = {"overlap": 3e-4, "ate": 0.01, "att": 0.01}
# The bandwidth rule of gamma=None, and the estimands whose lam=None means "auto" on the exact
# path; chosen by measurement (docs/method.md §8, benchmarks/eval_tuning.py).
_DEFAULT_GAMMA = {"overlap": "scale", "ate": "median", "att": "median"}
# The covariate representation of scaling=None (docs/method.md §8).
_DEFAULT_SCALING = {"overlap": "standard", "ate": "normal-scores", "att": "normal-scores"}
_AUTO_LAM_BY_DEFAULT = ("ate", "att")


def _choose_lam(X, T, sts, lam_rels, estimand, sample_weight=None):
    """The ``lam="auto"`` rule on the solves ``sts`` of the grid ``lam_rels`` (exact, low-rank or
    weighted fits alike)."""
    return select_lam(
        X,
        T,
        [st["weights"] for st in sts],
        lam_rels,
        estimand=estimand,
        converged=[st["converged"] for st in sts],
        sample_weight=sample_weight,
    )


def _is_rule(v, rules) -> bool:
    return isinstance(v, str) and v in rules


class KernelBalancing(_WeightingEstimator):
    """Exact kernel balancing with the batched dual solver (docs/ops/qp_solve.md).

    * ``estimand="overlap"``: SVM balancing (Tarr & Imai; docs/method.md §2): the hinge-loss SVM dual
      with intercept; weights ``alpha / sum_arm alpha``.
    * ``estimand="ate"``: each arm balanced to the full sample, ``min ||sum_{arm} w phi -
      mean_all phi||^2 + lam_abs ||w||^2`` on the simplex (docs/method.md §6).
    * ``estimand="att"``: the control arm balanced to the treated mean; treated weights ``1/n1``.

    Covariates are standardised (population SD) first; by default ("ate"/"att", rbf and laplace)
    each continuous covariate is first replaced by its normal scores (``scaling``).

    ``fit(X, T, sample_weight=c)`` ("ate" / "att"; frequency weights): the target is the
    c-weighted mean embedding (all units, or the treated) and each arm solves
    ``min ||sum_arm w_i phi_i - target_c||^2 + lam_abs sum_i w_i^2 / c_i`` on the simplex, ``w_i``
    the total weight on unit i: exactly the problem of the data with every row replicated ``c_i``
    times (the copies of a row share its weight).  The batched dual solver has no per-unit ridge,
    so a weighted fit solves each arm's QP with :func:`cina_ext.ops.qp_solve` on its dense
    ``N_arm x N_arm`` matrix while the larger arm has at most :data:`WEIGHTED_DENSE_LIMIT` units
    (exact), beyond that (or with ``approximation="rff"``) the low-rank dual with the same per-unit
    ridge (:func:`~cina_ext.estimators.low_rank.simplex_balance`).  Units of weight 0 get weight 0.
    "att" treated weights are ``c_i / sum_T c``.  "overlap" refuses ``sample_weight`` (the SVM dual
    has no frequency-weight form here): use "ate" or "att".

    Parameters
    ----------
    estimand : {"ate", "att", "overlap"}, default "ate"
        The balancing problem.
    kernel : {"rbf", "linear", "laplace"}, default "rbf"
        "rbf": ``exp(-gamma ||x-x'||^2)`` on the standardised scale; "laplace":
        ``exp(-gamma ||x-x'||_2)`` there; "linear": ``x.x' / p`` on the
        standardised scale (mean diagonal 1).
    lam : float or "auto", optional
        Relative penalty, > 0 (see the module docstring of :mod:`cina_ext.estimators.base`): the
        solver gets ``lam_abs = lam * N`` ("overlap") or ``lam_abs = lam`` ("ate"/"att").
        Default (None): 3e-4 for "overlap"; "auto" for "ate"/"att" on the exact solver (and on
        the dense per-arm QPs of a weighted fit, where the imbalances are s-weighted), 0.01 on
        the low-rank one (``approximation="rff"``, or "auto" above ``EXACT_LIMIT`` units).
        ``"auto"`` ("ate"/"att"): the
        data-driven rule of docs/method.md §8: every relative lam of
        :data:`~cina_ext.estimators.tuning.LAM_GRID` (1e-4 to 1, half a decade apart) is solved
        (on the CPU along the path, largest first, each solve warm-started near the last
        solution; on CUDA one batched solve), and the largest one whose weighted imbalance (the largest absolute
        standardised mean difference of the covariates, as :meth:`balance` reports it) is at most
        ``max(1.1 * best, best + 0.005)``, ``best`` the smallest on the grid, is kept
        (:func:`~cina_ext.estimators.tuning.select_lam`).  Bootstrap refits reuse the chosen value.
    gamma : float, "median", "auto" or "scale", optional
        Bandwidth of "rbf" / "laplace" on the standardised scale.  A number (> 0) is used as
        given.  "median" (or "auto"): the median heuristic, ``1 / median ||x_i - x_j||^2`` for
        "rbf" and ``1 / median ||x_i - x_j||`` for "laplace", over the pairs of a seeded subsample
        of at most 2000 units (:func:`~cina_ext.estimators.tuning.median_gamma`; deterministic
        given ``random_state``).  "scale": ``1/p`` for "rbf" (sklearn's ``gamma="scale"`` on
        standardised data) and ``1/sqrt(p)`` for "laplace".  Default (None): "median" for
        "ate"/"att", "scale" for "overlap" (chosen by measurement, docs/method.md §8).
        Bootstrap refits reuse the fitted ``gamma_``.
    scaling : {"standard", "normal-scores"}, optional
        The covariates the kernel sees.  "standard": each column standardised.  "normal-scores":
        each column with at least 10 distinct values replaced by ``Phi^-1`` of its mid-rank (ties
        share a score; frequency weights count as copies) before the standardisation, binary and
        small ordinal columns kept: a monotone map per column that pulls in heavy tails and keeps a
        point mass (earnings that are often exactly 0) apart from the rest, and leaves Gaussian
        covariates nearly unchanged.  Default (None): "normal-scores" for "ate"/"att" with the
        rbf and laplace kernels (chosen by measurement, docs/method.md §8); "standard" for
        "overlap" and for the linear kernel (whose balance is then that of the covariate means).  Balance diagnostics and the
        ``lam="auto"`` rule always judge the original covariates.
    intercept : bool, default True
        "overlap": the SVM intercept (``W'alpha = 0``).
    loss : {"hinge", "squared_hinge"}, default "hinge"
        "overlap": the SVM loss.
    tol : float, default 1e-6
        Solver tolerance, > 0.
    max_iter : int, optional
        Solver iteration limit; None: the solver's default ``max(1e5, 50 N)``.
    bootstrap_tol : float, default 1e-4
        The (looser) tolerance of the refits of ``ate_interval``.
    backend : {"auto", "fused", "reference"}, default "auto"
        Solver backend (:func:`cina_ext.ops.dual_solve`).
    device : str, default "auto"
        "auto": the device of tensor inputs, else CUDA when available, else the CPU.
    dtype : {"float64", "float32"}, default "float64"
        Solver dtype.
    random_state : None, int or numpy Generator, optional
        Seed.
    verbose : bool, default False
        Progress bars.
    approximation : {"auto", "exact", "rff"}, default "auto"
        "exact": the exact solver at any size (its work grows as N^2; above
        :data:`~cina_ext.estimators.low_rank.EXACT_LIMIT` units a warning states the estimated
        time and memory).  "rff": the "ate"/"att" problems on ``rank`` random Fourier features of
        the rbf or laplace kernel (the exact feature map for "linear"), solved in their r-dimensional dual
        (:mod:`cina_ext.estimators.low_rank`; O(N rank) memory and work per iteration).  "auto":
        exact up to ``EXACT_LIMIT`` units, "rff" beyond for "ate"/"att" (with a warning saying so).
    rank : int, optional
        Number of random Fourier features (default
        :data:`~cina_ext.estimators.low_rank.DEFAULT_RANK`).
    augment : bool or scikit-learn regressor, default False
        Augmented (doubly robust) estimate: ``True`` fits a cross-fitted
        HistGradientBoostingRegressor per arm (folds seeded by ``random_state``), or pass any
        regressor; the estimate is the outcome model's prediction for the estimand's population plus
        the balancing-weighted residuals (:mod:`cina_ext.estimators.augment`).  The weights never
        see the outcome; only the augmentation does.  ``ate_inference`` then uses the influence
        function.  Needs estimand "ate" or "att".
    augment_repeats : int, default 1
        Fold splits of the augmentation's cross-fitted outcome model whose out-of-fold predictions
        are averaged (repeated cross-fitting): more splits, less dependence on the luck of one
        split, ``augment_repeats`` times the outcome-model fits.

    Attributes
    ----------
    weights_ : ndarray of shape (N,)
        Balancing weights, non-negative, summing to one within each arm.
    estimand_ : str
        The estimand that was fitted.
    X_ : ndarray of shape (N, p)
        The validated covariates (float64).
    T_ : ndarray of shape (N,)
        The validated treatment (int8 in {0, 1}).
    n_features_in_ : int
        Number of covariates.
    feature_names_ : list of str
        Covariate names (the DataFrame columns, else ``x0, x1, ...``).
    feature_names_in_ : ndarray of str
        The DataFrame column names (only for pandas input).
    encoded_columns_ : dict
        The one-hot encoded DataFrame columns: original name -> the names of its ``col=level``
        columns (empty when none was encoded).
    sample_weight_ : ndarray of shape (N,) or None
        The frequency weights of the fit (None without).
    n_treated_, n_control_ : int
        Arm sizes.
    seed_ : int
        The seed the fit used (from ``random_state``).
    bootstrap_estimates_ : ndarray
        The replicate estimates of the last :meth:`ate_interval`.
    alpha_ : ndarray of shape (N,)
        Raw solver solution.
    intercept_ : float
        SVM intercept ("overlap"; 0 otherwise).
    converged_ : bool
        Whether the solve converged (a solve that does not converge gives a ``RuntimeWarning``
        and ``converged_ = False``, never silently).
    kkt_, iterations_, objective_ : float, int, float
        KKT violation, iterations and objective of the solve.
    lam_abs_ : float
        The absolute penalty handed to the solver.
    gamma_ : float or None
        The bandwidth used (None for "linear").
    scaling_ : str
        The covariate representation used ("standard" or "normal-scores").
    lam_ : float
        The relative penalty used (the chosen one for ``lam="auto"``).
    lam_grid_ : dict or None
        ``lam="auto"``: the grid (``grid``), the imbalance (``imbalance``), the Kish effective
        sample sizes per arm (``ess_treated``, ``ess_control``) and convergence of every grid
        solve, the ``threshold`` and the ``rule``; None otherwise.
    low_rank_ : bool
        Whether the low-rank solver was used (then ``kkt_`` holds its duality gap).
    alpha_at_zero_, alpha_at_one_ : float
        "overlap": the fractions of alpha at the bounds.

    Notes
    -----
    The data-driven defaults of "ate"/"att" (median-heuristic gamma and ``lam="auto"``) were
    chosen on the simulations with 50 and 200 covariates, IHDP and LaLonde of docs/method.md §8
    (``benchmarks/eval_tuning.py``), where they beat or match ``gamma=1/p, lam=0.01``; pass
    ``gamma="scale", lam=0.01, scaling="standard"`` for the former defaults, which the table below
    used.

    Measured (rbf, gamma 1/p, MAE; naive / SNIPW for reference):

    =========  ==========  ==========  ==========  ==========  ============  =============
    design     naive       SNIPW       overlap     overlap     overlap       ate lam 0.01
                                       lam 1e-4    lam 3e-4    lam 1e-3
    =========  ==========  ==========  ==========  ==========  ============  =============
    A, N=250   0.144       0.040       0.033       0.041       0.050         0.049
    G, N=250   0.107       0.076       0.054       0.041       0.054         0.059
    A, N=500   0.202       0.032       0.041       0.045       0.045         0.048
    G, N=500   0.043       0.038       0.024       0.025       0.024         0.018
    A, N=1000  0.212       0.018       0.018       0.014       0.019         0.023
    G, N=1000  0.086       0.047       0.022       0.022       0.024         0.027
    =========  ==========  ==========  ==========  ==========  ============  =============

    (10, 10, 6, 6, 4, 4 replications.)  "ate" and "att" are flat in lam over 1e-3..3e-2 (N=250, A:
    0.047-0.049 ate, 0.056-0.057 att); lam 0.1 / 1 degrade slowly (0.056 / 0.067).  The overlap
    solve gets slower as lam shrinks (reference solver, N=1000: 9 s at 1e-4, 4 s at 3e-4, 1.5 s at
    1e-3), so 3e-4 is the default.

    Examples
    --------
    >>> from cina_ext.data import make_setoguchi
    >>> from cina_ext.estimators import KernelBalancing
    >>> ds = make_setoguchi(200, "A", seed=0)
    >>> est = KernelBalancing(estimand="ate").fit(ds.X, ds.T)
    >>> est.converged_, round(float(est.weights_[ds.T == 1].sum()), 6)
    (True, 1.0)
    """

    def __init__(
        self,
        estimand: str = "ate",
        kernel: str = "rbf",
        lam: Optional[float] = None,
        gamma: Optional[float] = None,
        intercept: bool = True,
        loss: str = "hinge",
        tol: float = 1e-6,
        max_iter: Optional[int] = None,
        bootstrap_tol: float = 1e-4,
        backend: str = "auto",
        device: str = "auto",
        dtype: str = "float64",
        random_state=None,
        verbose: bool = False,
        approximation: str = "auto",
        rank: Optional[int] = None,
        augment=False,
        augment_repeats: int = 1,
        scaling: Optional[str] = None,
    ):
        self.estimand = estimand
        self.kernel = kernel
        self.scaling = scaling
        self.approximation = approximation
        self.rank = rank
        self.lam = lam
        self.gamma = gamma
        self.intercept = intercept
        self.loss = loss
        self.tol = tol
        self.max_iter = max_iter
        self.bootstrap_tol = bootstrap_tol
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.augment = augment
        self.augment_repeats = augment_repeats

    def _check_params(self):
        if self.approximation not in ("auto", "exact", "rff"):
            raise ValueError(f"approximation must be 'auto', 'exact' or 'rff', got {self.approximation!r}")
        if self.rank is not None and (
            not isinstance(self.rank, (int, np.integer)) or isinstance(self.rank, bool) or self.rank < 1
        ):
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if self.kernel not in _KB_KERNELS:
            raise ValueError(f"kernel must be one of {_KB_KERNELS}, got {self.kernel!r}")
        if isinstance(self.lam, str):
            if self.lam != "auto":
                raise ValueError(f"lam must be a positive number, None or 'auto', got {self.lam!r}")
            if self.estimand == "overlap":
                raise ValueError(
                    "lam='auto' chooses the penalty of the ate/att problems; give estimand='overlap' a number"
                )
        elif self.lam is not None:
            check_positive("lam", self.lam)
        if isinstance(self.gamma, str):
            if self.gamma not in _GAMMA_RULES:
                raise ValueError(f"gamma must be a positive number, None or one of {_GAMMA_RULES}, got {self.gamma!r}")
        elif self.gamma is not None:
            check_positive("gamma", self.gamma)
        if self.loss not in ("hinge", "squared_hinge"):
            raise ValueError(f"loss must be 'hinge' or 'squared_hinge', got {self.loss!r}")
        if self.scaling is not None and self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be None or one of {SCALINGS}, got {self.scaling!r}")
        check_positive("tol", self.tol)
        resolve_dtype(self.dtype)

    def _scaling(self, estimand) -> str:
        if self.scaling is not None:
            return str(self.scaling)
        # the linear kernel balances the covariate means themselves, as a user of it expects
        return "standard" if self.kernel == "linear" else _DEFAULT_SCALING[estimand]

    def _kernel_inputs(self, X, estimand, sample_weight=None):
        """The standardised covariates the kernel sees (after the normal scores, if chosen)."""
        if self._scaling(estimand) == "normal-scores":
            X = normal_scores(X, sample_weight)
        Xs, _, _ = _standardize(X, sample_weight=sample_weight)
        return Xs

    def _lam_rel(self, estimand, bootstrap=False):
        if self.lam is not None and not isinstance(self.lam, str):
            return float(self.lam)
        if bootstrap and getattr(self, "lam_", None) is not None:
            return float(self.lam_)  # the value chosen by the fit ("auto")
        return _DEFAULT_LAM[estimand]

    def _lam_auto(self, estimand, low_rank) -> bool:
        """Whether the fit chooses lam: ``lam="auto"``, or the default for "ate"/"att" on the exact path."""
        if self.lam == "auto":
            return True
        return self.lam is None and estimand in _AUTO_LAM_BY_DEFAULT and not low_rank

    def _gamma_rule(self, estimand=None) -> str:
        if self.gamma is None:
            return _DEFAULT_GAMMA[check_estimand(estimand if estimand is not None else self.estimand)]
        if isinstance(self.gamma, str):
            return "median" if self.gamma == "auto" else self.gamma
        return "fixed"

    def _resolve_gamma(self, Xs, seed, bootstrap):
        """The bandwidth on the standardised scale (None for "linear"); bootstrap refits reuse
        the fitted ``gamma_``."""
        if self.kernel == "linear":
            return None
        rule = self._gamma_rule(self.estimand)
        if rule == "fixed":
            return float(self.gamma)
        if bootstrap and getattr(self, "gamma_", None) is not None:
            return float(self.gamma_)
        p = Xs.shape[1]
        if rule == "scale":  # 1/p (sklearn's gamma="scale" on standardised data); its root for laplace
            return 1.0 / p if self.kernel == "rbf" else 1.0 / math.sqrt(p)
        return median_gamma(Xs, self.kernel, seed)

    def _use_low_rank(self, estimand: str, n: int, p: int, bootstrap: bool) -> bool:
        mode = self.approximation

        def warn_quadratic(what: str, hint: str, memory: bool = False) -> None:
            # refits of a bootstrap repeat the fit's choice silently; the stack level is the
            # caller of fit (fit -> _WeightingEstimator.fit -> _fit_core -> here)
            if bootstrap or n <= EXACT_LIMIT:
                return
            c = exact_cost(n, p)
            mem = f" and {c['bytes'] / 2**30:.1f} GiB" if memory else ""
            warnings.warn(
                f"KernelBalancing: the exact {what}solve of {n:,} units is quadratic in N: about "
                f"{_duration(c['seconds'])} on one CPU core{mem}; {hint}",
                UserWarning,
                stacklevel=6,
            )

        if mode == "exact":
            warn_quadratic("", "approximation='rff' solves a low-rank version in O(N rank)", memory=True)
            return False
        if mode == "rff":
            if estimand == "overlap":
                raise ValueError(
                    "approximation='rff' solves the ate/att problems; estimand='overlap' needs the "
                    "exact solver (approximation='exact')"
                )
            return True
        if n <= EXACT_LIMIT:
            return False
        if estimand == "overlap":
            warn_quadratic("overlap ", "only estimand='ate'/'att' have the low-rank path")
            return False
        if not bootstrap:
            c = exact_cost(n, p)
            warnings.warn(
                f"KernelBalancing: {n:,} units: the exact solve would take about {_duration(c['seconds'])} "
                f"(quadratic in N); solving on {self._rank()} random Fourier features instead "
                "(approximation='exact' forces the exact solver)",
                UserWarning,
                stacklevel=5,
            )
        return True

    def _rank(self) -> int:
        return int(self.rank) if self.rank is not None else DEFAULT_RANK

    def _fit_low_rank(self, Xs, T, estimand, gamma, lam_abs, seed, tol):
        """The low-rank solve: one arm's features at a time (the target mean streamed), so the peak
        memory is the largest arm's feature matrix."""
        n, p = Xs.shape
        treated = T == 1
        if self.kernel in ("rbf", "laplace"):
            rank = rank_for(n, self._rank())
            if rank < self._rank():
                warnings.warn(
                    f"KernelBalancing: {n:,} units: {rank} random Fourier features instead of {self._rank()} "
                    "(the feature matrix would not fit in memory)",
                    UserWarning,
                    stacklevel=5,
                )
            fmap = RandomFourierFeatures(p, gamma, rank, seed, kernel=self.kernel)
            target = fmap.mean(Xs[treated] if estimand == "att" else Xs)
            features = fmap.transform
        else:  # Xs is already divided by sqrt(p): the exact linear feature map
            target = (Xs[treated] if estimand == "att" else Xs).mean(axis=0)

            def features(Z):
                return Z

        w = np.zeros(n)
        arms = [0] if estimand == "att" else [1, 0]
        gaps, iters, conv, obj = [], [], True, 0.0
        for code in arms:
            sel = T == code
            r = simplex_balance(features(Xs[sel]), target, lam_abs, tol=tol)
            w[sel] = r.weights
            gaps.append(r.gap)
            iters.append(r.iterations)
            conv &= r.converged
            obj += r.objective
        if estimand == "att":
            w[treated] = 1.0 / max(1, int(treated.sum()))
        return {
            "weights": w,
            "alpha": w.copy(),
            "intercept": 0.0,
            "converged": bool(conv),
            "kkt": float(max(gaps)),
            "iterations": int(max(iters)),
            "objective": float(obj),
        }

    def _sample_weight_refusal(self, estimand):
        if estimand == "overlap":
            return (
                "KernelBalancing(estimand='overlap') does not support sample_weight (the SVM dual has no "
                "frequency-weight form here); use estimand='ate' or 'att' for weighted data"
            )
        return None

    def _fit_weighted(self, X, T, sw, estimand, seed, bootstrap):
        """The weighted arm problems (see the class docstring): dense QPs or the low-rank dual."""
        n, p = X.shape
        Xs = self._kernel_inputs(X, estimand, sw)
        if self.kernel == "linear":
            Xs = Xs / math.sqrt(p)
        gamma = self._resolve_gamma(Xs[sw > 0], seed, bootstrap)  # units of weight 0 take no part
        tol = float(self.bootstrap_tol if bootstrap else self.tol)
        treated = T == 1
        tgt = (treated if estimand == "att" else np.ones(n, dtype=bool)) & (sw > 0)
        arms = [0] if estimand == "att" else [1, 0]
        largest = max(int(np.sum((T == a) & (sw > 0))) for a in arms)
        low_rank = self.approximation == "rff" or (self.approximation == "auto" and largest > WEIGHTED_DENSE_LIMIT)
        if low_rank and self.approximation == "auto" and not bootstrap:
            warnings.warn(
                f"KernelBalancing: a weighted fit with {largest:,} units in an arm (more than "
                f"{WEIGHTED_DENSE_LIMIT:,}) is solved on {self._rank()} random Fourier features "
                "(approximation='exact' forces the dense QP)",
                UserWarning,
                stacklevel=5,
            )
        wt = sw[tgt] / sw[tgt].sum()
        if low_rank and self.kernel in ("rbf", "laplace"):
            fmap = RandomFourierFeatures(p, gamma, rank_for(n, self._rank()), seed, kernel=self.kernel)
            features = fmap.transform
            target = fmap.mean(Xs[tgt], wt)
        elif low_rank:

            def features(Z):
                return Z

            target = wt @ Xs[tgt]
        dtype = resolve_dtype(self.dtype)
        auto = self._lam_auto(estimand, low_rank) and not bootstrap
        lam_rels = list(LAM_GRID) if auto else [self._lam_rel(estimand, bootstrap)]
        sts, cache = [], {}
        for lam_rel in lam_rels:
            lam_abs = _lam_abs(lam_rel, estimand, n, self.kernel)
            st = self._solve_weighted_arms(
                Xs,
                T,
                sw,
                estimand,
                arms,
                tgt,
                wt,
                gamma,
                lam_abs,
                tol,
                dtype,
                low_rank,
                bootstrap,
                features if low_rank else None,
                target if low_rank else None,
                cache,
            )
            st.update(lam_abs=lam_abs, gamma=gamma, lam=lam_rel, low_rank=bool(low_rank))
            sts.append(st)
        sel = _choose_lam(X, T, sts, lam_rels, estimand, sw) if auto else None
        st = sts[sel.index if sel is not None else 0]
        st["lam_selection"] = sel
        if not st["converged"] and not bootstrap:
            warnings.warn(
                f"KernelBalancing: a weighted balancing solve did not converge (KKT / gap {st['kkt']:.3g})",
                RuntimeWarning,
                stacklevel=5,
            )
        return st

    def _solve_weighted_arms(
        self,
        Xs,
        T,
        sw,
        estimand,
        arms,
        tgt,
        wt,
        gamma,
        lam_abs,
        tol,
        dtype,
        low_rank,
        bootstrap,
        features,
        target,
        cache,
    ):
        """One penalty's weighted arm problems (dense per-arm QPs or the low-rank dual); ``cache``
        keeps the dense kernel blocks across the penalties of one fit."""
        n = Xs.shape[0]
        treated = T == 1
        w = np.zeros(n)
        gaps, iters, conv, obj = [], [], True, 0.0
        for code in arms:
            idx = np.nonzero((T == code) & (sw > 0))[0]
            c = sw[idx]
            if low_rank:
                r = simplex_balance(features(Xs[idx]), target, lam_abs, tol=1e-6 if not bootstrap else 1e-4, c=c)
                w[idx] = r.weights
                gaps.append(r.gap)
                iters.append(r.iterations)
                conv &= r.converged
                obj += r.objective
                continue
            if code not in cache:  # the kernel blocks do not depend on the penalty: once per fit
                Za = Xs[idx]
                cache[code] = (
                    _kernel_block(Za, Za, self.kernel, gamma),
                    2.0 * _kernel_mean(Za, Xs[tgt], wt, self.kernel, gamma),
                )
            K, lin = cache[code]
            Q = 2.0 * (K + np.diag(lam_abs / c))
            with torch.no_grad():
                res = qp_solve(
                    torch.as_tensor(Q, dtype=dtype).unsqueeze(0),
                    torch.as_tensor(lin, dtype=dtype).unsqueeze(0),
                    0.0,
                    float("inf"),
                    torch.ones(1, idx.size, dtype=dtype),
                    1.0,
                    tol=tol,
                    max_iter=_max_iter_arg(self.max_iter),
                    backend=self.backend,
                )
            w[idx] = res.x[0].double().numpy()
            if "const" not in cache:
                cache["const"] = float(wt @ _kernel_mean(Xs[tgt], Xs[tgt], wt, self.kernel, gamma))
            const = cache["const"]
            gaps.append(float(res.kkt[0]))
            iters.append(int(res.iterations[0]))
            conv &= bool(res.converged[0])
            obj += float(res.objective[0]) + const
        if estimand == "att":
            w[treated] = sw[treated]
        return {
            "weights": _arm_normalise(w, T),
            "alpha": w.copy(),
            "intercept": 0.0,
            "converged": bool(conv),
            "kkt": float(max(gaps)),
            "iterations": int(max(iters)),
            "objective": float(obj),
        }

    def _fit_core(self, X, T, seed, *, bootstrap=False, sample_weight=None):
        estimand = check_estimand(self.estimand)
        if sample_weight is not None:
            return self._fit_weighted(X, T, np.asarray(sample_weight, dtype=np.float64), estimand, seed, bootstrap)
        n, p = X.shape
        Xs = self._kernel_inputs(X, estimand)
        gamma = self._resolve_gamma(Xs, seed, bootstrap)
        if self.kernel == "linear":
            Xs = Xs / math.sqrt(p)
        low_rank = self._use_low_rank(estimand, n, p, bootstrap)
        auto = self._lam_auto(estimand, low_rank) and not bootstrap
        lam_rels = list(LAM_GRID) if auto else [self._lam_rel(estimand, bootstrap)]
        lam_abs = [_lam_abs(lr, estimand, n, self.kernel) for lr in lam_rels]
        tol = float(self.bootstrap_tol if bootstrap else self.tol)
        if low_rank:
            sts = []
            for la in lam_abs:
                st = self._fit_low_rank(Xs, T, estimand, gamma, la, seed, 1e-6 if not bootstrap else 1e-4)
                st.update(weights=_arm_normalise(st["weights"], T), lam_abs=la, low_rank=True)
                sts.append(st)
            what = "the low-rank dual did not reach its duality-gap tolerance (gap {kkt:.3g})"
        else:
            sts = self._fit_exact(Xs, T, estimand, gamma, lam_abs, tol)
            what = (
                f"the dual solver did not converge to tol={tol:g} in {{iterations}} iterations "
                "(KKT violation {kkt:.3g}); raise max_iter or tol"
            )
        sel = _choose_lam(X, T, sts, lam_rels, estimand) if auto else None
        k = sel.index if sel is not None else 0
        st = sts[k]
        if not st["converged"] and not bootstrap:
            warnings.warn(
                "KernelBalancing: " + what.format(kkt=st["kkt"], iterations=st["iterations"]),
                RuntimeWarning,
                stacklevel=4,
            )
        st.update(gamma=gamma, lam=lam_rels[k], lam_selection=sel)
        return st

    def _fit_exact(self, Xs, T, estimand, gamma, lam_abs, tol):
        """The exact solves, one per penalty of ``lam_abs``, as a grid on the one dataset (its
        covariates held once, its kernel mean computed once per call).

        A grid of ate/att penalties on the CPU is solved along the path, largest penalty first,
        as many penalties per call as the solver has threads (it solves one problem per thread),
        each call warm-started at the solution of the smallest penalty solved so far: the
        solution moves little from one penalty to the next, and the solves of the small,
        ill-conditioned penalties start near their optimum (about half the iterations on the
        benchmark datasets; docs/benchmarks.md).  On CUDA, whose solver runs every problem of
        a call side by side, the grid is one call from the solver's own start."""
        G = len(lam_abs)
        dtype = resolve_dtype(self.dtype)
        device = resolve_device(self.device, getattr(getattr(self, "_data", None), "device", None))
        Xt = torch.as_tensor(Xs, dtype=dtype, device=device).unsqueeze(0)
        Wt = torch.as_tensor(2.0 * T - 1.0, dtype=dtype, device=device).unsqueeze(0)
        kw = dict(kernel=self.kernel, estimand=estimand, loss=self.loss, tol=tol, max_iter=_max_iter_arg(self.max_iter))
        if self.kernel in ("rbf", "laplace"):
            kw["gamma"] = gamma
        if estimand == "overlap":
            kw["intercept"] = bool(self.intercept)
        path = G > 1 and estimand in ("ate", "att") and Xt.device.type == "cpu"
        order = sorted(range(G), key=lambda k: -lam_abs[k]) if path else list(range(G))
        per_call = max(1, torch.get_num_threads()) if path else G
        out: List[Optional[dict]] = [None] * G
        start = None
        for s in range(0, G, per_call):
            ks = order[s : s + per_call]
            lam_t = torch.tensor([[lam_abs[k] for k in ks]], dtype=torch.float64) if G > 1 else lam_abs[0]
            init = None if start is None else start.expand(len(ks), -1).contiguous()
            with torch.no_grad():
                res = _dual_solve(Xt, Wt, lam_t, backend=self.backend, init=init, **kw)
            for j, k in enumerate(ks):
                out[k] = {
                    "weights": _arm_normalise(res.weights[j].detach().cpu().double().numpy(), T),
                    "alpha": res.alpha[j].detach().cpu().double().numpy(),
                    "intercept": float(res.intercept[j]) if getattr(res, "intercept", None) is not None else 0.0,
                    "converged": bool(res.converged[j]),
                    "kkt": float(res.kkt[j]),
                    "iterations": int(res.iterations[j]),
                    "objective": float(res.objective[j]),
                    "lam_abs": lam_abs[k],
                    "low_rank": False,
                }
            start = res.alpha[-1:].detach()  # the smallest penalty of this call (order is decreasing)
        return out

    def fit(self, X, T, sample_weight=None):
        super().fit(X, T, sample_weight=sample_weight)
        st = self._state
        self.alpha_ = st["alpha"]
        self.intercept_ = st["intercept"]
        self.converged_ = st["converged"]
        self.kkt_ = st["kkt"]
        self.iterations_ = st["iterations"]
        self.objective_ = st["objective"]
        self.lam_abs_ = st["lam_abs"]
        self.gamma_ = st["gamma"]
        self.scaling_ = self._scaling(self.estimand_)
        self.lam_ = st["lam"]
        sel = st.get("lam_selection")
        self.lam_grid_ = sel.to_dict() if sel is not None else None
        self.low_rank_ = bool(st.get("low_rank", False))
        if self.estimand_ == "overlap":
            a = self.alpha_
            upper = 1.0 if self.loss == "hinge" else np.inf
            self.alpha_at_zero_ = float(np.mean(a <= 1e-8))
            self.alpha_at_one_ = float(np.mean(a >= upper - 1e-8))
        return self

    def _details(self):
        d = {
            "kernel": self.kernel,
            "scaling": self.scaling_,
            "lam": self.lam_,
            "lam_abs": self.lam_abs_,
            "converged": self.converged_,
            "kkt": self.kkt_,
            "iterations": self.iterations_,
            "solver": f"low-rank ({self._rank()} random Fourier features)" if self.low_rank_ else "exact",
        }
        if self.sample_weight_ is not None:
            d["solver"] += (
                " (low-rank dual, per-unit ridge)" if self.low_rank_ else " (dense per-arm QP, per-unit ridge)"
            )
        if self.lam_grid_ is not None:
            g = self.lam_grid_
            d["lam_rule"] = "auto: " + g["rule"]
            d["lam_grid"] = ", ".join(f"{lv:g}: {m:.3f}" for lv, m in zip(g["grid"], g["imbalance"]))
        if self.kernel in ("rbf", "laplace"):
            d["gamma"] = self.gamma_
            d["gamma_rule"] = self._gamma_rule(self.estimand_)
        if self.estimand_ == "overlap":
            d["alpha_at_zero"] = self.alpha_at_zero_
            d["alpha_at_one"] = self.alpha_at_one_
        return d
