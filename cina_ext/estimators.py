"""Treatment-effect estimators: CInA (Algorithm 1), exact kernel balancing and the usual baselines.

Every estimator follows the balancing-weights convention (design first, outcome second) and
scikit-learn ``BaseEstimator`` semantics (the constructor stores parameters only; ``get_params``,
``set_params`` and ``sklearn.base.clone`` work; fitted attributes end with ``_``):

* ``fit(X, T)`` -- no outcome -- computes ``weights_``: non-negative, normalised to sum to one
  within each treatment arm;
* ``ate(Y) -> float`` -- the effect for the estimator's ``estimand`` ("ate", "att" or "overlap";
  the method is called ``ate`` for every estimand, the attribute ``estimand`` says which);
* ``ate_interval(Y, alpha=0.05, n_bootstrap=200, random_state=None) -> (lo, hi)`` -- percentile
  bootstrap that **refits the weights** on every resample (resampling within each arm, so arm
  sizes are kept and no resample can lose an arm);
* ``balance()`` -> :class:`cina_ext.diagnostics.BalanceReport`; ``summary(Y=None)`` ->
  :class:`EstimatorSummary` (a dict that prints as a short report).

Inputs are numpy arrays, torch tensors or pandas objects (see :mod:`cina_ext._validation`).

Scaling of ``lam`` (the balancing penalty) -- **choice**
-------------------------------------------------------
The user-facing ``lam`` is *relative*; the absolute penalty handed to the solver is

* estimand ``"overlap"`` (SVM dual, method.md §2): ``lam_abs = lam * N * s_k``;
* estimands ``"ate"`` / ``"att"`` (arm problems, method.md §6): ``lam_abs = lam * s_k``;

with ``s_k`` the scale of the kernel: 1 for ``rbf`` and for ``linear`` (computed on standardised
covariates divided by ``sqrt(p)``, so the mean diagonal is 1) and ``1 / N**2`` for the ``cina``
kernel ``E_ij / (h_i h_j)`` (method.md §7.1).  For "overlap", writing ``alpha = m a`` (``a`` the
per-arm normalised weights, ``m = f N`` the size of the balanced subset), the dual objective
divided by N is ``2 f - f^2 MMD^2(a) / (2 lam)`` on the unit kernel scale: the same ``lam`` trades
the same *fraction* of units against the same MMD at every N (up to the O(1/N) sampling noise of
the MMD, which is why the fraction of alpha at the bound still drifts with N at very small lam:
rbf, Setoguchi scenario A, lam 3e-4: 15% at N=250, 36% at N=500, 50% at N=1000).  For the arm
problems ``lam`` is the noise-to-signal ratio ``sigma^2 / ||f||^2`` of the bias^2 + variance bound
(Kallus), which carries no N.  For the cina kernel the solver tolerance of the arm problems is
scaled by ``s_k`` too (their gradients are O(1/N^2): an absolute 1e-6 accepts the uniform start).

Defaults were measured on a Setoguchi-type design (10 covariates, 6 dichotomised, scenario A =
main effects, G = quadratic + interaction terms in the propensity; constant effect -0.4 unless
"het"), mean absolute error of the estimate over replications, see the class docstrings.
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone

from ._validation import (
    ESTIMANDS,
    check_design,
    check_estimand,
    check_outcome,
)

__all__ = [
    "DifferenceInMeans",
    "IPW",
    "SelfNormalizedIPW",
    "DoubleML",
    "KernelBalancing",
    "CInA",
    "EstimatorSummary",
    "make_estimator",
    "METHODS",
]

METHODS = ("cina", "kernel", "naive", "ipw", "snipw", "dml", "zero-shot")

_ESTIMAND_LABEL = {"ate": "ATE", "att": "ATT", "overlap": "ATO (overlap)"}


# ==============================================================================================
# helpers

def _seed_from(random_state) -> int:
    """An int seed from None / int / numpy Generator / RandomState."""
    if random_state is None:
        return int(np.random.default_rng().integers(0, 2**31 - 1))
    if isinstance(random_state, (int, np.integer)):
        return int(random_state) % (2**31 - 1)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    raise TypeError(f"random_state must be None, an int or a numpy Generator, got {type(random_state).__name__}")


def _standardize(X: np.ndarray, mean=None, sd=None):
    """Column-standardise (population SD); constant columns (possible in a bootstrap resample) get sd 1."""
    if mean is None:
        mean = X.mean(axis=0)
        sd = X.std(axis=0)
        sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mean)), sd, 1.0)
    return (X - mean) / sd, mean, sd


def _arm_normalise(w: np.ndarray, T: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    out = np.zeros_like(w)
    for code, label in ((1, "treated"), (0, "control")):
        sel = T == code
        tot = w[sel].sum()
        if not (tot > 0) or not np.isfinite(tot):
            raise ValueError(f"the weights of the {label} arm sum to {tot}; the estimate would be undefined")
        out[sel] = w[sel] / tot
    return out


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    table = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}
    if isinstance(dtype, str) and dtype in table:
        return table[dtype]
    raise ValueError(f"dtype must be 'float64' or 'float32' (or the torch dtype), got {dtype!r}")


def _resolve_device(device, data_device) -> torch.device:
    if device is None or device == "auto":
        if data_device is not None and str(data_device) != "meta":
            return torch.device(data_device)
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def _lam_abs(lam_rel: float, estimand: str, n: int, kernel: str) -> float:
    """Absolute solver penalty from the relative ``lam`` (see the module docstring)."""
    s_k = 1.0 / (n * n) if kernel == "cina" else 1.0
    if estimand == "overlap":
        return float(lam_rel) * n * s_k
    return float(lam_rel) * s_k


def _check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


# ---- solver routing: one small function, so the compiled solver can be swapped in -------------

def _resolve_solver(backend: str = "auto"):
    """The ``dual_solve`` implementation to use and whether it takes ``backend=``.

    ``backend="reference"``: the PyTorch reference (:mod:`cina_ext.reference`).  Otherwise the
    backend-aware front end (:mod:`cina_ext.solver`, or ``cina_ext.ops.dual_solve``), which runs the
    compiled solver when it is built for the device ("auto" falls back to the reference with a
    warning, "fused" raises)."""
    if backend != "reference":
        try:
            from . import solver as _solver_mod
        except ImportError:  # pragma: no cover - module absent in a stripped install
            _solver_mod = None
        fn = getattr(_solver_mod, "dual_solve", None)
        if fn is None:
            from . import ops

            fn = getattr(ops, "dual_solve", None)
        if fn is not None:
            return fn, ("backend" in inspect.signature(fn).parameters)
    from .reference import dual_solve

    return dual_solve, False


def _dual_solve(X: torch.Tensor, W: torch.Tensor, lam: float, *, backend: str = "auto", init=None, **kw):
    """Route a balancing solve to the solver (see :func:`_resolve_solver`).

    ``init`` (B, N) is a warm start used when the solver accepts one (``alpha0`` / ``init``).
    """
    fn, takes_backend = _resolve_solver(backend)
    params = inspect.signature(fn).parameters
    if kw.get("max_iter") is None:  # the solver's default, resolved here: the reference needs a number
        from .solver import default_max_iter

        kw["max_iter"] = default_max_iter(X.shape[1])
    if takes_backend:
        kw["backend"] = backend
    if init is not None:
        for name in ("alpha0", "init", "warm_start", "x0"):
            if name in params:
                kw[name] = init
                return fn(X, W, lam, **kw)
        if (getattr(fn, "__module__", "") == "cina_ext.reference_qp" and kw.get("estimand") == "overlap"
                and kw.get("intercept", True) and kw.get("loss", "hinge") == "hinge"):
            return _warm_overlap_reference(X, W, lam, init, **kw)
    return fn(X, W, lam, **kw)


def _max_iter_arg(max_iter):
    """An estimator's ``max_iter`` for the solver: None (the solver's default, max(1e5, 50 N)) or an int."""
    return None if max_iter is None else int(max_iter)


def _warm_overlap_reference(X, W, lam, init, *, kernel, max_iter, gamma=None, scale=None, tol=1e-6, **_):
    """Warm-started "overlap" SVM dual through the reference box-QP (its ``dual_solve`` has no warm
    start): the same problem as ``dual_solve(..., estimand="overlap")`` with a feasible start
    ``init`` (a previous solution: the constraints do not depend on the kernel)."""
    from .reference import readout_weights
    from .reference_qp import BalanceResult, gram, qp_solve

    K = gram(X, kernel, gamma=gamma, scale=scale)
    Wf = W.to(X.dtype)
    Q = (Wf.unsqueeze(-1) * Wf.unsqueeze(-2)) * K / float(lam)
    zeros = torch.zeros(W.shape[0], dtype=X.dtype, device=X.device)
    res = qp_solve(Q, torch.ones_like(Wf), 0.0, 1.0, c=Wf, d=zeros, tol=tol, max_iter=max_iter,
                   x0=init.to(X.dtype).clamp(0.0, 1.0))
    return BalanceResult(weights=readout_weights(res.x, Wf), alpha=res.x, intercept=res.nu,
                         objective=res.objective, kkt=res.kkt, iterations=res.iterations,
                         converged=res.converged, estimand="overlap")


# ==============================================================================================
# summary object

class EstimatorSummary(dict):
    """A dict (JSON-able values) that prints as a short human-readable report."""

    def __str__(self) -> str:  # pragma: no cover - formatting only
        lines = [f"{self.get('method')} (estimand {self.get('estimand_label')})"]
        if self.get("effect") is not None:
            lines.append(f"  estimate: {self['effect']:.6g}")
        for key in ("n_treated", "n_control"):
            lines.append(f"  {key}: {self.get(key)}")
        ess = self.get("ess", {})
        lines.append(f"  ESS treated {ess.get('treated', float('nan')):.1f}, control {ess.get('control', float('nan')):.1f}")
        lines.append(f"  max |SMD| before {self.get('max_abs_smd_before'):.4f}, after {self.get('max_abs_smd_after'):.4f} "
                     f"({self.get('n_flagged')} above 0.1)")
        for k, v in self.get("details", {}).items():
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)


# ==============================================================================================
# base class

class _WeightingEstimator(BaseEstimator):
    """Shared machinery; subclasses implement ``_fit_core`` (and maybe ``_effect_core``)."""

    _allowed_estimands: Tuple[str, ...] = ESTIMANDS
    _method_name = "base"

    # -- to implement ----------------------------------------------------------------------
    def _fit_core(self, X: np.ndarray, T: np.ndarray, seed: int, *, bootstrap: bool = False) -> Dict[str, Any]:
        """Return a state dict with at least ``"weights"`` (normalised per arm)."""
        raise NotImplementedError

    def _effect_core(self, state: Dict[str, Any], X: np.ndarray, T: np.ndarray, Y: np.ndarray, seed: int) -> float:
        w = state["weights"]
        return float(np.sum(w[T == 1] * Y[T == 1]) - np.sum(w[T == 0] * Y[T == 0]))

    def _details(self) -> Dict[str, Any]:
        return {}

    def _resolve_estimand(self):
        return getattr(self, "estimand", "ate")

    # -- public API ------------------------------------------------------------------------
    def fit(self, X, T):
        """Validate ``(X, T)`` and compute the balancing weights ``weights_`` (no outcome used)."""
        estimand = check_estimand(self._resolve_estimand(), self._allowed_estimands)
        data = check_design(X, T)
        self._check_params()
        seed = _seed_from(getattr(self, "random_state", None))
        self._data = data
        self.X_ = data.X
        self.T_ = data.T
        self.n_features_in_ = data.X.shape[1]
        self.feature_names_ = list(data.feature_names)
        if data.has_names:
            self.feature_names_in_ = np.asarray(data.feature_names, dtype=object)
        self.estimand_ = estimand
        self.seed_ = seed
        state = self._fit_core(data.X, data.T, seed)
        self._state = state
        self.weights_ = np.asarray(state["weights"], dtype=np.float64)
        self.n_treated_ = int(np.sum(data.T == 1))
        self.n_control_ = int(np.sum(data.T == 0))
        return self

    def _check_params(self) -> None:
        pass

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit(X, T) first")

    def ate(self, Y) -> float:
        """The effect for ``self.estimand`` (ATE, ATT or overlap effect) from outcome ``Y``."""
        self._check_fitted()
        Ya = check_outcome(Y, self.X_.shape[0], device=self._data.device)
        est = self._effect_core(self._state, self.X_, self.T_, Ya, self.seed_)
        if not np.isfinite(est):
            raise ValueError("the estimate is not finite (check the weights and the outcome)")
        return float(est)

    def ate_interval(self, Y, alpha: float = 0.05, n_bootstrap: int = 200, random_state=None, *,
                     verbose: Optional[bool] = None) -> Tuple[float, float]:
        """Percentile bootstrap interval ``(lo, hi)`` at level ``1 - alpha``.

        Each of the ``n_bootstrap`` resamples draws units with replacement *within each arm* and
        **refits the weights** on the resample (with the cheaper ``bootstrap`` solver settings of
        the estimator, if it has any); the whole procedure is seeded by ``random_state`` (falls back
        to the estimator's ``random_state``).  The replicate estimates are kept in
        ``bootstrap_estimates_``.  A tqdm bar is shown when ``verbose`` (default: the estimator's
        ``verbose``) is true.
        """
        self._check_fitted()
        if not (0 < float(alpha) < 1):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        n_bootstrap = int(n_bootstrap)
        if n_bootstrap < 2:
            raise ValueError(f"n_bootstrap must be at least 2, got {n_bootstrap}")
        Ya = check_outcome(Y, self.X_.shape[0], device=self._data.device)
        if random_state is None:
            random_state = getattr(self, "random_state", None)
        rng = np.random.default_rng(random_state if not isinstance(random_state, np.random.RandomState)
                                    else random_state.randint(0, 2**31 - 1))
        if verbose is None:
            verbose = bool(getattr(self, "verbose", False))
        from tqdm.auto import tqdm

        X, T = self.X_, self.T_
        idx1 = np.nonzero(T == 1)[0]
        idx0 = np.nonzero(T == 0)[0]
        ests = []
        failures = []
        for _ in tqdm(range(n_bootstrap), desc=f"bootstrap {type(self).__name__}", disable=not verbose,
                      leave=False):
            idx = np.concatenate([rng.choice(idx1, idx1.size, replace=True),
                                  rng.choice(idx0, idx0.size, replace=True)])
            seed = int(rng.integers(0, 2**31 - 1))
            Xb, Tb, Yb = X[idx], T[idx], Ya[idx]
            try:
                state = self._fit_core(Xb, Tb, seed, bootstrap=True)
                est = self._effect_core(state, Xb, Tb, Yb, seed)
            except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
                failures.append(str(exc))
                continue
            if np.isfinite(est):
                ests.append(est)
            else:
                failures.append("non-finite estimate")
        if failures:
            if len(failures) > 0.1 * n_bootstrap:
                raise RuntimeError(
                    f"{len(failures)} of {n_bootstrap} bootstrap refits failed (first: {failures[0]})"
                )
            warnings.warn(f"{len(failures)} of {n_bootstrap} bootstrap refits failed and were skipped "
                          f"(first: {failures[0]})", RuntimeWarning, stacklevel=2)
        ests = np.asarray(ests)
        self.bootstrap_estimates_ = ests
        lo, hi = np.quantile(ests, [alpha / 2.0, 1.0 - alpha / 2.0])
        return float(lo), float(hi)

    def balance(self, *, threshold: float = 0.1):
        """Balance table of the fitted weights (:func:`cina_ext.diagnostics.balance_table`)."""
        self._check_fitted()
        from .diagnostics import balance_table

        est = self.estimand_ if self.estimand_ in ("ate", "att", "overlap") else "ate"
        return balance_table(self.X_, self.T_, self.weights_, self.feature_names_, estimand=est,
                             threshold=threshold)

    def summary(self, Y=None) -> EstimatorSummary:
        """Estimate (if ``Y`` is given), arm sizes, ESS, balance and method-specific diagnostics."""
        self._check_fitted()
        rep = self.balance()
        out = EstimatorSummary(
            method=type(self).__name__,
            estimand=self.estimand_,
            estimand_label=_ESTIMAND_LABEL[self.estimand_],
            effect=self.ate(Y) if Y is not None else None,
            n_treated=self.n_treated_,
            n_control=self.n_control_,
            ess=dict(rep.ess),
            max_abs_smd_before=rep.max_abs_smd_before,
            max_abs_smd_after=rep.max_abs_smd_after,
            n_flagged=rep.n_flagged,
            weights=rep.to_dict()["weights"],
            details=self._details(),
        )
        return out


# ==============================================================================================
# baselines

class DifferenceInMeans(_WeightingEstimator):
    """Naive difference in means: every unit of an arm gets weight ``1 / n_arm``.

    ``estimand`` is only a label here (the estimate is unadjusted whatever it says); it lets the
    naive estimate be reported next to the other methods for the same target.
    """

    def __init__(self, estimand: str = "ate", random_state=None, verbose: bool = False):
        self.estimand = estimand
        self.random_state = random_state
        self.verbose = verbose

    def _fit_core(self, X, T, seed, *, bootstrap=False):
        w = np.where(T == 1, 1.0 / max(1, np.sum(T == 1)), 1.0 / max(1, np.sum(T == 0)))
        return {"weights": w}


def _single_openmp_thread():
    """Run scikit-learn's OpenMP learners on one thread.

    Beside torch's own OpenMP runtime, HistGradientBoosting's threads spin-wait against torch's on
    a small machine: measured 0.96 s -> 0.24 s for one DoubleML fit at n = 200 on 2 cores, and far
    worse under load.  Per-fold fits are small, so one thread loses nothing.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _default_propensity_model():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000)


def _with_seed(model, seed: int):
    m = clone(model)
    try:
        if "random_state" in m.get_params() and m.get_params()["random_state"] is None:
            m.set_params(random_state=seed)
    except Exception:  # noqa: BLE001 - non-sklearn models
        pass
    return m


def _fit_propensity(model, Xs: np.ndarray, T: np.ndarray, seed: int) -> np.ndarray:
    m = _with_seed(model, seed)
    m.fit(Xs, T)
    classes = list(getattr(m, "classes_", [0, 1]))
    return m.predict_proba(Xs)[:, classes.index(1)] if hasattr(m, "predict_proba") else m.predict(Xs)


class IPW(_WeightingEstimator):
    """Inverse propensity weighting (Horvitz-Thompson form).

    The propensity ``e(x)`` is a logistic regression on standardised covariates (``C=1``, i.e. a
    mild ridge; pass ``propensity_model`` -- any classifier with ``predict_proba`` -- to change it),
    clipped to ``[clip, 1 - clip]`` (``clip=None`` or 0: no clipping).

    Raw weights ``r``: "ate" treated 1/e, control 1/(1-e); "att" treated 1, control e/(1-e);
    "overlap" treated 1-e, control e.  The estimate is the *unnormalised* HT contrast
    ``(sum_T r Y - sum_C r Y) / D`` with D = N (ate), n_treated (att), sum e(1-e) (overlap).
    ``weights_`` holds the per-arm normalised weights (for the diagnostics), ``raw_weights_`` the
    raw ones and ``propensity_`` the fitted (clipped) scores.
    """

    _normalised = False

    def __init__(self, estimand: str = "ate", propensity_model=None, clip: Optional[float] = 0.01,
                 random_state=None, verbose: bool = False):
        self.estimand = estimand
        self.propensity_model = propensity_model
        self.clip = clip
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        if self.clip is not None and not (0 <= float(self.clip) < 0.5):
            raise ValueError(f"clip must be in [0, 0.5) or None, got {self.clip!r}")

    def _fit_core(self, X, T, seed, *, bootstrap=False):
        Xs, _, _ = _standardize(X)
        model = self.propensity_model if self.propensity_model is not None else _default_propensity_model()
        e = np.asarray(_fit_propensity(model, Xs, T, seed), dtype=np.float64)
        c = float(self.clip) if self.clip else 0.0
        if c > 0:
            e = np.clip(e, c, 1 - c)
        if np.any((e <= 0) | (e >= 1)):
            raise ValueError("estimated propensity scores reach 0 or 1 (perfect separation); set clip > 0")
        est = check_estimand(self.estimand, self._allowed_estimands)
        if est == "ate":
            r = np.where(T == 1, 1.0 / e, 1.0 / (1.0 - e))
            denom = float(T.shape[0])
        elif est == "att":
            r = np.where(T == 1, 1.0, e / (1.0 - e))
            denom = float(np.sum(T == 1))
        else:
            r = np.where(T == 1, 1.0 - e, e)
            denom = float(np.sum(e * (1 - e)))
        return {"weights": _arm_normalise(r, T), "raw": r, "denom": denom, "propensity": e}

    def _effect_core(self, state, X, T, Y, seed):
        if self._normalised:
            return super()._effect_core(state, X, T, Y, seed)
        r = state["raw"]
        return float((np.sum(r[T == 1] * Y[T == 1]) - np.sum(r[T == 0] * Y[T == 0])) / state["denom"])

    def fit(self, X, T):
        super().fit(X, T)
        self.propensity_ = self._state["propensity"]
        self.raw_weights_ = self._state["raw"]
        return self

    def _details(self):
        e = self.propensity_
        return {"propensity_range": [float(e.min()), float(e.max())], "clip": self.clip}


class SelfNormalizedIPW(IPW):
    """Self-normalised (Hajek) IPW: the IPW weights normalised within each arm; the estimate is
    ``sum_T w Y - sum_C w Y``.  Same parameters as :class:`IPW`."""

    _normalised = True


class DoubleML(_WeightingEstimator):
    """Cross-fitted augmented IPW (double/debiased machine learning), for "ate" or "att".

    This is the one estimator that needs the outcome to do its work: ``fit(X, T)`` validates and
    stores the design and fits the propensity on the full sample (so ``weights_`` -- the per-arm
    normalised IPW weights -- and ``balance()`` are available as for every estimator); ``ate(Y)``
    runs the cross-fitting: ``n_folds`` folds stratified on T (seeded by ``random_state``); on each
    held-out fold the propensity ``e`` (clipped to ``[clip, 1-clip]``) and the arm outcome models
    ``mu1``, ``mu0`` are predicted from models fitted on the other folds.  Scores:

    * ATE: ``psi = mu1 - mu0 + T (Y - mu1) / e - (1 - T) (Y - mu0) / (1 - e)``, estimate mean(psi);
    * ATT: ``[T (Y - mu0) - (1 - T) e (Y - mu0) / (1 - e)] / mean(T)``.

    Defaults: outcome ``HistGradientBoostingRegressor`` (``max_iter=100``), propensity
    ``LogisticRegression(C=1)`` on standardised covariates.  ``ate_interval`` is the generic
    bootstrap (which refits everything, so it costs ``n_bootstrap`` cross-fits); pass
    ``method="influence"`` for the usual normal interval from the influence function.
    """

    _allowed_estimands = ("ate", "att")

    def __init__(self, estimand: str = "ate", outcome_model=None, propensity_model=None, n_folds: int = 5,
                 clip: Optional[float] = 0.01, random_state=None, verbose: bool = False):
        self.estimand = estimand
        self.outcome_model = outcome_model
        self.propensity_model = propensity_model
        self.n_folds = n_folds
        self.clip = clip
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        if int(self.n_folds) < 2:
            raise ValueError(f"n_folds must be at least 2, got {self.n_folds!r}")
        if self.clip is not None and not (0 <= float(self.clip) < 0.5):
            raise ValueError(f"clip must be in [0, 0.5) or None, got {self.clip!r}")

    def fit(self, X, T):
        super().fit(X, T)
        k = int(self.n_folds)
        if min(self.n_treated_, self.n_control_) < k:
            raise ValueError(
                f"DoubleML with n_folds={k} needs at least {k} units per arm "
                f"(got {self.n_treated_} treated, {self.n_control_} control)"
            )
        self.propensity_ = self._state["propensity"]
        return self

    def _models(self):
        from sklearn.ensemble import HistGradientBoostingRegressor

        om = self.outcome_model if self.outcome_model is not None else HistGradientBoostingRegressor(max_iter=100)
        pm = self.propensity_model if self.propensity_model is not None else _default_propensity_model()
        return om, pm

    def _clip(self, e):
        c = float(self.clip) if self.clip else 0.0
        return np.clip(e, c, 1 - c) if c > 0 else e

    def _fit_core(self, X, T, seed, *, bootstrap=False):
        Xs, _, _ = _standardize(X)
        _, pm = self._models()
        e = self._clip(np.asarray(_fit_propensity(pm, Xs, T, seed), dtype=np.float64))
        est = check_estimand(self.estimand, self._allowed_estimands)
        r = np.where(T == 1, 1.0 / e, 1.0 / (1.0 - e)) if est == "ate" else np.where(T == 1, 1.0, e / (1.0 - e))
        return {"weights": _arm_normalise(r, T), "propensity": e}

    @staticmethod
    def _cross_fit(folds, Xs, T, Y, seed, om, pm, e, mu1, mu0):
        for f, (tr, te) in enumerate(folds.split(Xs, T)):
            s = seed + 7919 * (f + 1)
            e[te] = _predict_proba(pm, Xs[tr], T[tr], Xs[te], s)
            t1 = tr[T[tr] == 1]
            t0 = tr[T[tr] == 0]
            m1 = _with_seed(om, s).fit(Xs[t1], Y[t1])
            m0 = _with_seed(om, s + 1).fit(Xs[t0], Y[t0])
            mu1[te] = m1.predict(Xs[te])
            mu0[te] = m0.predict(Xs[te])

    def _scores(self, X, T, Y, seed):
        from sklearn.model_selection import StratifiedKFold

        om, pm = self._models()
        Xs, _, _ = _standardize(X)
        n = X.shape[0]
        e = np.empty(n)
        mu1 = np.empty(n)
        mu0 = np.empty(n)
        k = int(self.n_folds)
        if min(np.sum(T == 1), np.sum(T == 0)) < k:
            raise ValueError(f"an arm has fewer than n_folds={k} units: cannot cross-fit")
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % (2**31 - 1))
        with _single_openmp_thread():
            self._cross_fit(folds, Xs, T, Y, seed, om, pm, e, mu1, mu0)
        e = self._clip(e)
        if np.any((e <= 0) | (e >= 1)):
            raise ValueError("cross-fitted propensity scores reach 0 or 1 (perfect separation); set clip > 0")
        Tf = T.astype(np.float64)
        if check_estimand(self.estimand, self._allowed_estimands) == "ate":
            psi = mu1 - mu0 + Tf * (Y - mu1) / e - (1 - Tf) * (Y - mu0) / (1 - e)
        else:
            p1 = Tf.mean()
            psi = (Tf * (Y - mu0) - (1 - Tf) * e * (Y - mu0) / (1 - e)) / p1
        return psi

    def _effect_core(self, state, X, T, Y, seed):
        psi = self._scores(X, T, Y, seed)
        return float(np.mean(psi))

    def ate(self, Y) -> float:
        self._check_fitted()
        Ya = check_outcome(Y, self.X_.shape[0], device=self._data.device)
        psi = self._scores(self.X_, self.T_, Ya, self.seed_)
        est = float(np.mean(psi))
        if self.estimand_ == "att":
            # influence function of the ratio estimator: subtract the estimate on the treated
            infl = psi - est * self.T_ / np.mean(self.T_)
        else:
            infl = psi - est
        self.influence_ = infl
        self.se_ = float(np.std(infl, ddof=1) / math.sqrt(len(infl)))
        return est

    def ate_interval(self, Y, alpha: float = 0.05, n_bootstrap: int = 200, random_state=None, *,
                     verbose: Optional[bool] = None, method: str = "bootstrap") -> Tuple[float, float]:
        """``method="bootstrap"`` (default, the shared interface: refits everything on each
        resample) or ``"influence"`` (normal interval from the cross-fitted influence function)."""
        if method == "influence":
            from scipy.stats import norm

            est = self.ate(Y)
            z = float(norm.ppf(1 - alpha / 2))
            return est - z * self.se_, est + z * self.se_
        if method != "bootstrap":
            raise ValueError(f"method must be 'bootstrap' or 'influence', got {method!r}")
        return super().ate_interval(Y, alpha=alpha, n_bootstrap=n_bootstrap, random_state=random_state,
                                    verbose=verbose)

    def _details(self):
        return {"n_folds": int(self.n_folds), "clip": self.clip}


def _predict_proba(model, Xtr, Ttr, Xte, seed):
    m = _with_seed(model, seed)
    m.fit(Xtr, Ttr)
    classes = list(getattr(m, "classes_", [0, 1]))
    return m.predict_proba(Xte)[:, classes.index(1)]


# ==============================================================================================
# exact kernel balancing

_KB_KERNELS = ("rbf", "linear")
# Relative lam defaults (see the module docstring for the scaling); chosen by measurement,
# see the class docstrings.
_DEFAULT_LAM = {"overlap": 3e-4, "ate": 0.01, "att": 0.01}


class KernelBalancing(_WeightingEstimator):
    """Exact kernel balancing with the batched dual solver (kernels.md §2).

    * ``estimand="overlap"``: SVM balancing (Tarr & Imai; method.md §2): the hinge-loss SVM dual
      with intercept; weights ``alpha / sum_arm alpha``.
    * ``estimand="ate"``: each arm balanced to the full sample, ``min ||sum_{arm} w phi -
      mean_all phi||^2 + lam_abs ||w||^2`` on the simplex (method.md §6).
    * ``estimand="att"``: the control arm balanced to the treated mean; treated weights ``1/n1``.

    Covariates are standardised (population SD) first.  ``kernel="rbf"``: ``exp(-gamma ||x-x'||^2)``
    with ``gamma`` on the standardised scale (default ``1/p``, sklearn's ``gamma="scale"`` there);
    ``kernel="linear"``: ``x.x' / p`` on the standardised scale (mean diagonal 1).  ``lam`` is
    relative (module docstring): the solver gets ``lam_abs = lam * N`` ("overlap") or
    ``lam_abs = lam`` ("ate"/"att"), stored in ``lam_abs_``.  Defaults (``lam=None``): 3e-4 for
    "overlap", 0.01 for "ate"/"att".  Measured (rbf, gamma 1/p, MAE; naive / SNIPW for reference):

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
    1e-3), so 3e-4 is the default.  ``tol`` / ``max_iter`` go to the
    solver; ``bootstrap_tol`` is the (looser) tolerance used for the refits of ``ate_interval``.
    Fitted: ``weights_``, ``alpha_`` (raw solver solution), ``intercept_`` ("overlap"),
    ``converged_``, ``kkt_``, ``iterations_``, ``objective_``, and for "overlap" the fractions of
    alpha at the bounds ``alpha_at_zero_`` / ``alpha_at_one_``.  A solve that does not converge
    gives a ``RuntimeWarning`` and ``converged_ = False`` (never silently).
    """

    def __init__(self, estimand: str = "ate", kernel: str = "rbf", lam: Optional[float] = None,
                 gamma: Optional[float] = None, intercept: bool = True, loss: str = "hinge",
                 tol: float = 1e-6, max_iter: Optional[int] = None, bootstrap_tol: float = 1e-4,
                 backend: str = "auto", device: str = "auto", dtype: str = "float64",
                 random_state=None, verbose: bool = False):
        self.estimand = estimand
        self.kernel = kernel
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

    def _check_params(self):
        if self.kernel not in _KB_KERNELS:
            raise ValueError(f"kernel must be one of {_KB_KERNELS}, got {self.kernel!r}")
        if self.lam is not None:
            _check_positive("lam", self.lam)
        if self.gamma is not None:
            _check_positive("gamma", self.gamma)
        if self.loss not in ("hinge", "squared_hinge"):
            raise ValueError(f"loss must be 'hinge' or 'squared_hinge', got {self.loss!r}")
        _check_positive("tol", self.tol)
        _resolve_dtype(self.dtype)

    def _lam_rel(self, estimand):
        return float(self.lam) if self.lam is not None else _DEFAULT_LAM[estimand]

    def _fit_core(self, X, T, seed, *, bootstrap=False):
        estimand = check_estimand(self.estimand)
        n, p = X.shape
        Xs, _, _ = _standardize(X)
        if self.kernel == "linear":
            Xs = Xs / math.sqrt(p)
        dtype = _resolve_dtype(self.dtype)
        device = _resolve_device(self.device, getattr(getattr(self, "_data", None), "device", None))
        Xt = torch.as_tensor(Xs, dtype=dtype, device=device).unsqueeze(0)
        Wt = torch.as_tensor(2.0 * T - 1.0, dtype=dtype, device=device).unsqueeze(0)
        lam_abs = _lam_abs(self._lam_rel(estimand), estimand, n, self.kernel)
        gamma = float(self.gamma) if self.gamma is not None else 1.0 / p
        kw = dict(kernel=self.kernel, estimand=estimand, loss=self.loss,
                  tol=float(self.bootstrap_tol if bootstrap else self.tol),
                  max_iter=_max_iter_arg(self.max_iter))
        if self.kernel == "rbf":
            kw["gamma"] = gamma
        if estimand == "overlap":
            kw["intercept"] = bool(self.intercept)
        with torch.no_grad():
            res = _dual_solve(Xt, Wt, lam_abs, backend=self.backend, **kw)
        converged = bool(res.converged.reshape(-1)[0])
        if not converged and not bootstrap:
            warnings.warn(
                f"KernelBalancing: the dual solver did not converge to tol={kw['tol']:g} in {int(res.iterations.max())} "
                f"iterations (KKT violation {float(res.kkt.reshape(-1)[0]):.3g}); raise max_iter or tol",
                RuntimeWarning, stacklevel=3)
        w = res.weights[0].detach().cpu().double().numpy()
        alpha = res.alpha[0].detach().cpu().double().numpy()
        return {
            "weights": _arm_normalise(w, T),
            "alpha": alpha,
            "intercept": float(res.intercept.reshape(-1)[0]) if getattr(res, "intercept", None) is not None else 0.0,
            "converged": converged,
            "kkt": float(res.kkt.reshape(-1)[0]),
            "iterations": int(res.iterations.reshape(-1)[0]),
            "objective": float(res.objective.reshape(-1)[0]),
            "lam_abs": lam_abs,
            "gamma": gamma if self.kernel == "rbf" else None,
        }

    def fit(self, X, T):
        super().fit(X, T)
        st = self._state
        self.alpha_ = st["alpha"]
        self.intercept_ = st["intercept"]
        self.converged_ = st["converged"]
        self.kkt_ = st["kkt"]
        self.iterations_ = st["iterations"]
        self.objective_ = st["objective"]
        self.lam_abs_ = st["lam_abs"]
        self.gamma_ = st["gamma"]
        if self.estimand_ == "overlap":
            a = self.alpha_
            upper = 1.0 if self.loss == "hinge" else np.inf
            self.alpha_at_zero_ = float(np.mean(a <= 1e-8))
            self.alpha_at_one_ = float(np.mean(a >= upper - 1e-8))
        return self

    def _details(self):
        d = {"kernel": self.kernel, "lam": self._lam_rel(self.estimand_), "lam_abs": self.lam_abs_,
             "converged": self.converged_, "kkt": self.kkt_, "iterations": self.iterations_}
        if self.kernel == "rbf":
            d["gamma"] = self.gamma_
        if self.estimand_ == "overlap":
            d["alpha_at_zero"] = self.alpha_at_zero_
            d["alpha_at_one"] = self.alpha_at_one_
        return d


# ==============================================================================================
# CInA, Algorithm 1 (bilevel exact path)

_CINA_DEFAULT_LAM = 0.01         # relative, "overlap" training problem: lam_abs = lam / N
_CINA_DEFAULT_READOUT_LAM = 0.01  # relative, "ate"/"att" read-out: lam_abs = readout_lam / N^2


class _KeyNet(torch.nn.Module):
    """Key network: MLP on standardised covariates, centred across the units of the dataset, then
    LayerNorm without affine, so every key has mean 0 and norm sqrt(key_dim) and the scores
    ``scale * k_i.k_j`` lie in ``[-key_scale * sqrt(D), key_scale * sqrt(D)]`` (default
    ``scale = key_scale / sqrt(D)``): bounded key norms, no overflow (method.md §7.2-7.3)."""

    def __init__(self, d_in: int, hidden: int, key_dim: int):
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d_in, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, key_dim),
        )
        self.norm = torch.nn.LayerNorm(key_dim, elementwise_affine=False)

    def forward(self, x):
        h = self.mlp(x)
        # centre across the units of the dataset: without it the component shared by every unit
        # (biases, the positive mean of GELU) dominates after the normalisation, all keys point the
        # same way and the cina kernel is nearly constant (measured: score std 0.55 around a mean
        # of 3.0 at initialisation, vs std 1.65 centred)
        h = h - h.mean(dim=0, keepdim=True)
        return self.norm(h)


class CInA(_WeightingEstimator):
    """Causal Inference with Attention on one dataset (Algorithm 1), trained on the exact bilevel path.

    Why not plain gradient descent on eq. L: method.md §7.2 measured that it reaches the optimal
    loss but not the optimal weights.  Here, per outer step:

    1. keys ``K = net(X_std)`` (a seeded MLP, bounded key norms, ``key_dim`` wide; float64 by default);
    2. the "overlap" balancing dual (method.md §2) is solved **exactly** for these keys with the
       ``cina`` kernel ``E_ij / (h_i h_j)`` (no gradient), giving ``alpha`` and the intercept ``b``;
    3. values ``V_j = alpha_j W_j / (lam h_j)`` (log-space in ``h``) and ``b`` are fixed at that
       optimum and eq. L is evaluated with :func:`cina_ext.ops.attention_hinge` (``backend``);
       its gradient in the keys is the gradient of the optimal value (envelope / Danskin theorem),
       back-propagated into the key network only; Adam step with a cosine learning-rate decay.

    After the last step the weights are read out *exactly* for the final keys: for "overlap" the
    SVM dual itself (what eq. R gives at the optimum of eq. L, Theorem 1); for "ate"/"att"
    (**choice**) the arm problems of method.md §6 are solved with the learned ``cina`` kernel
    (the attention form of these problems is also in §6), with penalty ``readout_lam``.

    Scaling (method.md §7.1): the cina kernel is O(1/N^2), so the training penalty is
    ``lam_abs = lam / N`` (relative ``lam``, default 0.01) and the ate/att read-out uses
    ``lam_abs = readout_lam / N^2`` (default 0.01); both stored as ``lam_abs_`` /
    ``readout_lam_abs_``.  See the module docstring for why these are N-invariant.

    Defaults measured (Setoguchi-type design, N=250, 20 replications, MAE; naive 0.186 / 0.112,
    SNIPW 0.053 / 0.087 in scenarios A / G):

    ================  =========  =========  =========
    overlap read-out  0 steps    20 steps   50 steps
    ================  =========  =========  =========
    A, lam 0.001      0.067      0.062      0.061
    A, lam 0.01       0.076      0.052      0.066
    A, lam 0.1        0.161      0.094      0.117
    G, lam 0.001      0.058      0.070      0.069
    G, lam 0.01       0.061      0.066      0.071
    G, lam 0.1        0.062      0.059      0.097
    ================  =========  =========  =========

    At N=1000 (10 replications; naive 0.192 / 0.069, SNIPW 0.019 / 0.043) lam 0.001 / 0.01 / 0.1
    give A 0.035 / 0.081 / 0.171 untrained and 0.023 / 0.020 / 0.130 after 20 steps, G 0.030 /
    0.035 / 0.035 untrained and 0.023 / 0.018 / 0.030 after 20 steps (0.016 / 0.018 / 0.039 after
    50).  The fraction of alpha at the bound grows with N at fixed lam (lam 0.01 untrained, A: 35% at
    N=250, 66% at N=1000; the sampling noise of the MMD shrinks as 1/N), so lam 0.01 is not N-free
    in that sense, but it is the best of the grid at both sizes after training.

    At lam 0.1 (and above) most alpha sit at the upper bound (A: 88% before training): the weights
    approach the naive ones.  The "ate" read-out is flat in ``readout_lam`` over 1e-3..1e-1 (8
    replications); with lam 0.01, readout_lam 0.01 it gives A 0.080 / 0.078 / 0.095, G 0.069 /
    0.093 / 0.092 and G with heterogeneous effects 0.067 / 0.090 / 0.093 after 0 / 20 / 50 steps:
    training the keys on the overlap objective (which makes the arms *more* separable) helps the
    overlap read-out in A but not in G at N=250, and does not help the ate/att read-out (N=1000:
    A 0.024 / 0.023 / 0.038, G 0.033 / 0.044 / 0.063, G heterogeneous 0.032 / 0.043 / 0.063);
    more steps overfit.
    Defaults: ``lam=0.01``, ``readout_lam=0.01``, ``n_steps=20``.  One fit at N=250 takes about
    0.2-0.5 s with the compiled solver and fused attention, 5-10 s on the PyTorch reference.

    ``ate_interval`` refits on each resample: ``bootstrap_refit="solver"`` (default) keeps the trained
    key network and re-solves the balancing problem exactly on the resample (tolerance
    ``bootstrap_tol``); ``"full"`` retrains the network too (``n_steps`` outer steps per resample).

    Fitted diagnostics: ``loss_history_`` (eq. L per unit at each step, at the exact optimum of the
    inner problem), ``final_loss_``, ``duality_gap_`` (relative gap between eq. L evaluated by the
    attention operator at the read-out ``(V, b)`` and the exact dual value -- the Theorem-1
    consistency check of attention vs solver), ``alpha_`` / ``intercept_`` (overlap dual at the final
    keys), ``alpha_at_zero_`` / ``alpha_at_one_`` (fractions at the bounds; all at one means lam
    is too large and the weights are uniform), ``converged_`` (final solves), ``n_unconverged_steps_``,
    ``keys_`` (N, key_dim), ``key_net_``, ``diagnostics_`` (all of these as a dict).
    """

    def __init__(self, estimand: str = "overlap", lam: Optional[float] = None, key_dim: int = 16,
                 hidden_dim: int = 64, n_steps: int = 20, lr: float = 0.01, readout_lam: Optional[float] = None,
                 key_scale: float = 1.0, loss: str = "hinge", tol: float = 1e-6, max_iter: Optional[int] = None,
                 bootstrap_tol: float = 1e-4, bootstrap_refit: str = "solver", backend: str = "auto",
                 device: str = "auto", dtype: str = "float64", random_state=None, verbose: bool = False):
        self.estimand = estimand
        self.lam = lam
        self.key_dim = key_dim
        self.hidden_dim = hidden_dim
        self.n_steps = n_steps
        self.lr = lr
        self.readout_lam = readout_lam
        self.key_scale = key_scale
        self.loss = loss
        self.tol = tol
        self.max_iter = max_iter
        self.bootstrap_tol = bootstrap_tol
        self.bootstrap_refit = bootstrap_refit
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # -- parameters --------------------------------------------------------------------------
    def _check_params(self):
        if self.lam is not None:
            _check_positive("lam", self.lam)
        if self.readout_lam is not None:
            _check_positive("readout_lam", self.readout_lam)
        for name in ("key_dim", "hidden_dim"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.n_steps, (int, np.integer)) or self.n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative int, got {self.n_steps!r}")
        _check_positive("lr", self.lr)
        _check_positive("key_scale", self.key_scale)
        _check_positive("tol", self.tol)
        if self.loss not in ("hinge", "squared_hinge"):
            raise ValueError(f"loss must be 'hinge' or 'squared_hinge', got {self.loss!r}")
        if self.bootstrap_refit not in ("solver", "full"):
            raise ValueError(f"bootstrap_refit must be 'solver' or 'full', got {self.bootstrap_refit!r}")
        if self.backend not in ("auto", "fused", "reference"):
            raise ValueError(f"backend must be 'auto', 'fused' or 'reference', got {self.backend!r}")
        _resolve_dtype(self.dtype)

    def _lam_rel(self):
        return float(self.lam) if self.lam is not None else _CINA_DEFAULT_LAM

    def _readout_lam_rel(self):
        return float(self.readout_lam) if self.readout_lam is not None else _CINA_DEFAULT_READOUT_LAM

    @property
    def _scale(self) -> float:
        return float(self.key_scale) / math.sqrt(int(self.key_dim))

    # -- pieces ------------------------------------------------------------------------------
    def _solve(self, K, Wt, lam_abs, estimand, tol, init=None):
        n = int(Wt.shape[-1])
        if estimand != "overlap":
            # the arm problems' gradients live on the kernel's O(1/N^2) scale: an absolute tolerance
            # of 1e-6 would accept the uniform starting point (measured: 0 iterations); make it
            # relative to the kernel scale.  ("overlap" is O(1) already: p = 1.)
            tol = tol / (n * n)
        kw = dict(kernel="cina", scale=self._scale, estimand=estimand, tol=float(tol),
                  max_iter=_max_iter_arg(self.max_iter))
        if estimand == "overlap":
            kw["loss"] = self.loss
        with torch.no_grad():
            return _dual_solve(K.detach(), Wt, lam_abs, backend=self.backend, init=init, **kw)

    def _lse(self, K, Wt, lam_abs):
        """Row log-normalisers of the tied-key scores, through the attention operator (O(N) memory
        on the fused path)."""
        from . import ops

        zeros_v = torch.zeros_like(Wt)
        zeros_b = torch.zeros(Wt.shape[0], dtype=Wt.dtype, device=Wt.device)
        with torch.no_grad():
            _, _, lse = ops.attention_hinge(K.detach(), zeros_v, Wt, zeros_b, lam_abs, scale=self._scale,
                                            loss=self.loss, backend=self.backend)
        return lse

    def _values(self, alpha, Wt, lse, lam_abs):
        """``V_j = alpha_j W_j / (lam h_j)`` computed as ``W_j exp(log alpha_j - log lam - lse_j)``."""
        pos = alpha > 0
        log_a = torch.log(torch.where(pos, alpha, torch.ones_like(alpha)))
        mag = torch.exp(log_a - math.log(lam_abs) - lse)
        return torch.where(pos, Wt * mag, torch.zeros_like(mag))

    def _envelope_objective(self, K, V, b, alpha, Wt, lam_abs):
        """Objective whose gradient in the keys is the envelope (Danskin) gradient of the optimal
        value of eq. L, with ``(V, b, alpha)`` fixed at the exact optimum of the inner problem.

        Returns ``(objective, eq_L)``; both equal the optimal value at the optimum.  For the hinge the
        objective is the Lagrangian ``sum_i c_i V_i o_i + sum_i alpha_i (1 - W_i (o_i + b))``
        (``c_i = (lam/2) h_i``): autograd of the hinge itself would use ``[r_i > 0]`` in place of
        ``alpha_i`` at the margin support vectors (``r_i = 0`` at the optimum, fractional
        ``alpha_i``), which is not the envelope gradient.  The squared hinge is differentiable, so
        eq. L itself is used.  Both go through :func:`cina_ext.ops.attention_hinge` (its ``out``
        and ``lse`` outputs are differentiable), so the fused kernel keeps memory O(N).
        """
        from . import ops

        loss, out, lse = ops.attention_hinge(K, V, Wt, b, lam_abs, scale=self._scale, loss=self.loss,
                                             backend=self.backend)
        if self.loss != "hinge":
            return loss.sum(), loss
        c = torch.exp(lse + math.log(lam_abs / 2.0))
        lagrangian = (c * V * out).sum() + (alpha * (1.0 - Wt * (out + b.unsqueeze(-1)))).sum()
        return lagrangian, loss

    def _train(self, Xs: np.ndarray, T: np.ndarray, seed: int, tol: float, progress: bool):
        dtype = _resolve_dtype(self.dtype)
        device = self.device_
        n, p = Xs.shape
        lam_abs = _lam_abs(self._lam_rel(), "overlap", n, "cina")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _KeyNet(p, int(self.hidden_dim), int(self.key_dim)).to(device=device, dtype=dtype)
        Xt = torch.as_tensor(Xs, dtype=dtype, device=device)
        Wt = torch.as_tensor(2.0 * T - 1.0, dtype=dtype, device=device).unsqueeze(0)
        n_steps = int(self.n_steps)
        history = []
        unconverged = 0
        alpha_prev = None
        if n_steps > 0:
            opt = torch.optim.Adam(net.parameters(), lr=float(self.lr))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps)
            from tqdm.auto import tqdm

            for _ in tqdm(range(n_steps), desc="CInA training", disable=not progress, leave=False):
                K = net(Xt).unsqueeze(0)
                res = self._solve(K, Wt, lam_abs, "overlap", tol, init=alpha_prev)
                unconverged += int(not bool(res.converged.reshape(-1)[0]))
                alpha = res.alpha.to(dtype).detach()
                alpha_prev = alpha
                b = res.intercept.to(dtype).reshape(1).detach()
                lse = self._lse(K, Wt, lam_abs)
                V = self._values(alpha, Wt, lse, lam_abs).detach()
                objective, loss = self._envelope_objective(K, V, b, alpha, Wt, lam_abs)
                opt.zero_grad(set_to_none=True)
                objective.backward()
                opt.step()
                sched.step()
                history.append(float(loss.detach().sum()) / n)
        return net, lam_abs, history, unconverged

    def _readout(self, net, Xs, T, tol, *, full_diagnostics: bool):
        dtype = _resolve_dtype(self.dtype)
        device = self.device_
        n = Xs.shape[0]
        estimand = check_estimand(self.estimand)
        lam_abs = _lam_abs(self._lam_rel(), "overlap", n, "cina")
        Xt = torch.as_tensor(Xs, dtype=dtype, device=device)
        Wt = torch.as_tensor(2.0 * T - 1.0, dtype=dtype, device=device).unsqueeze(0)
        with torch.no_grad():
            K = net(Xt).unsqueeze(0)
        out: Dict[str, Any] = {"lam_abs": lam_abs}
        if estimand == "overlap" or full_diagnostics:
            res = self._solve(K, Wt, lam_abs, "overlap", tol)
            alpha = res.alpha.to(dtype)
            out.update(alpha=alpha[0].cpu().double().numpy(), intercept=float(res.intercept.reshape(-1)[0]),
                       converged_overlap=bool(res.converged.reshape(-1)[0]),
                       objective_overlap=float(res.objective.reshape(-1)[0]))
            if estimand == "overlap":
                out["weights"] = _arm_normalise(res.weights[0].cpu().double().numpy(), T)
                out["converged"] = out["converged_overlap"]
            if full_diagnostics:
                from . import ops

                lse = self._lse(K, Wt, lam_abs)
                V = self._values(alpha, Wt, lse, lam_abs)
                b = res.intercept.to(dtype).reshape(1)
                with torch.no_grad():
                    loss, _, _ = ops.attention_hinge(K, V, Wt, b, lam_abs, scale=self._scale, loss=self.loss,
                                                     backend=self.backend)
                primal = float(loss.sum())
                # exact dual value 1'a - (1/(2 lam)) a'Qa = -objective (the solver minimises)
                dual = -out["objective_overlap"]
                out["final_loss"] = primal / n
                out["duality_gap"] = abs(primal - dual) / max(1.0, abs(dual))
        if estimand in ("ate", "att"):
            r_lam = _lam_abs(self._readout_lam_rel(), estimand, n, "cina")
            res = self._solve(K, Wt, r_lam, estimand, tol)
            out["weights"] = _arm_normalise(res.weights[0].cpu().double().numpy(), T)
            out["converged"] = bool(res.converged.reshape(-1)[0])
            out["readout_lam_abs"] = r_lam
        out["keys"] = K[0]
        return out

    def _fit_core(self, X, T, seed, *, bootstrap=False):
        tol = float(self.bootstrap_tol if bootstrap else self.tol)
        if bootstrap and self.bootstrap_refit == "solver":
            Xs, _, _ = _standardize(X, self._x_mean, self._x_sd)
            net = self.key_net_
            ro = self._readout(net, Xs, T, tol, full_diagnostics=False)
            return {"weights": ro["weights"]}
        Xs, mean, sd = _standardize(X)
        net, lam_abs, history, unconverged = self._train(Xs, T, seed, tol, progress=bool(self.verbose) and not bootstrap)
        ro = self._readout(net, Xs, T, tol, full_diagnostics=not bootstrap)
        if not bootstrap and not ro["converged"]:
            warnings.warn("CInA: the final balancing solve did not converge (see converged_); raise max_iter "
                          "or loosen tol", RuntimeWarning, stacklevel=3)
        return {"weights": ro["weights"], "readout": ro, "net": net, "history": history,
                "unconverged": unconverged, "mean": mean, "sd": sd}

    def fit(self, X, T):
        # resolve the device before the core runs (it needs the data's device)
        data_device = None
        from ._validation import _tensor_devices

        try:
            data_device = _tensor_devices(X=X, T=T)
        except ValueError:
            pass  # check_design (in super().fit) raises the proper error
        self.device_ = _resolve_device(self.device, data_device)
        super().fit(X, T)
        st = self._state
        ro = st["readout"]
        self.key_net_ = st["net"]
        self._x_mean, self._x_sd = st["mean"], st["sd"]
        self.keys_ = ro["keys"].detach().cpu().numpy()
        self.loss_history_ = np.asarray(st["history"], dtype=np.float64)
        self.final_loss_ = ro["final_loss"]
        self.duality_gap_ = ro["duality_gap"]
        self.alpha_ = ro["alpha"]
        self.intercept_ = ro["intercept"]
        upper = 1.0 if self.loss == "hinge" else np.inf
        self.alpha_at_zero_ = float(np.mean(self.alpha_ <= 1e-8))
        self.alpha_at_one_ = float(np.mean(self.alpha_ >= upper - 1e-8))
        self.converged_ = bool(ro["converged"]) and bool(ro["converged_overlap"])
        self.n_unconverged_steps_ = int(st["unconverged"])
        self.lam_abs_ = ro["lam_abs"]
        self.readout_lam_abs_ = ro.get("readout_lam_abs")
        if self.alpha_at_one_ > 0.95:
            warnings.warn(
                f"CInA: {self.alpha_at_one_:.0%} of the dual variables sit at the upper bound: lam is too "
                "large for this kernel and the overlap weights are nearly uniform (method.md §7.1)",
                RuntimeWarning, stacklevel=2)
        self.diagnostics_ = {
            "final_loss": self.final_loss_, "duality_gap": self.duality_gap_,
            "alpha_at_zero": self.alpha_at_zero_, "alpha_at_one": self.alpha_at_one_,
            "converged": self.converged_, "n_unconverged_steps": self.n_unconverged_steps_,
            "lam": self._lam_rel(), "lam_abs": self.lam_abs_,
            "readout_lam": self._readout_lam_rel() if self.estimand_ != "overlap" else None,
            "readout_lam_abs": self.readout_lam_abs_, "n_steps": int(self.n_steps),
            "device": str(self.device_), "dtype": str(_resolve_dtype(self.dtype)).replace("torch.", ""),
        }
        return self

    def _details(self):
        return dict(self.diagnostics_)


# ==============================================================================================
# factory

_REGISTRY = {
    "cina": CInA,
    "kernel": KernelBalancing,
    "naive": DifferenceInMeans,
    "ipw": IPW,
    "snipw": SelfNormalizedIPW,
    "dml": DoubleML,
}


def make_estimator(name: str, *, estimand: Optional[str] = None, random_state=None, **kwargs):
    """Build an estimator by short name (one of :data:`METHODS`).

    ``estimand=None`` keeps the class default ("ate"); ``kwargs`` go to the constructor (unknown
    ones raise ``TypeError`` naming the estimator).
    """
    key = str(name).lower()
    if key == "zero-shot":  # CInAZeroShot, the shipped model unless model/checkpoint is given
        from .zeroshot import CInAZeroShot, pretrained_path

        cls = CInAZeroShot
        if kwargs.get("model") is None and kwargs.get("checkpoint") is None:
            kwargs["checkpoint"] = pretrained_path()
    elif key not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {METHODS}")
    else:
        cls = _REGISTRY[key]
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    bad = sorted(set(kwargs) - params)
    if bad:
        raise TypeError(f"{cls.__name__} got unexpected parameter(s) {bad}; it accepts {sorted(params)}")
    if estimand is not None:
        kwargs["estimand"] = check_estimand(estimand, cls._allowed_estimands)
    kwargs["random_state"] = random_state
    return cls(**kwargs)
