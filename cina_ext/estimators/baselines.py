"""Baseline estimators: difference in means, IPW, self-normalised IPW, cross-fitted AIPW (DoubleML)."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy.stats import norm
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression

from .._core.checks import check_estimand, check_outcome
from .augment import cross_fit_outcomes, fit_weighted, fold_splits, influence_se, repeat_seed, with_seed
from .augment import single_openmp_thread as _single_openmp_thread
from .base import _arm_normalise, _check_repeats, _standardize, _WeightingEstimator

__all__ = ["DifferenceInMeans", "IPW", "SelfNormalizedIPW", "DoubleML"]


class DifferenceInMeans(_WeightingEstimator):
    """Naive difference in means: every unit of an arm gets weight ``1 / n_arm``.

    Parameters
    ----------
    estimand : {"ate", "att", "overlap"}, default "ate"
        Only a label here (the estimate is unadjusted whatever it says); it lets the naive
        estimate be reported next to the other methods for the same target.
    random_state : None, int or numpy Generator, optional
        Seed (used by :meth:`ate_interval`).
    verbose : bool, default False
        Progress bars.

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

    Examples
    --------
    >>> import numpy as np
    >>> from cina_ext.estimators import DifferenceInMeans
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> est = DifferenceInMeans().fit(X, [1, 1, 0, 0])
    >>> est.ate([3.0, 5.0, 1.0, 2.0])
    2.5
    """

    _warns_on_imbalance = False

    def __init__(self, estimand: str = "ate", random_state=None, verbose: bool = False):
        self.estimand = estimand
        self.random_state = random_state
        self.verbose = verbose

    def _sample_weight_refusal(self, estimand):
        return None

    def _fit_core(self, X, T, seed, *, bootstrap=False, sample_weight=None):
        if sample_weight is not None:  # the s-weighted arm means
            return {"weights": _arm_normalise(sample_weight, T)}
        w = np.where(T == 1, 1.0 / max(1, np.sum(T == 1)), 1.0 / max(1, np.sum(T == 0)))
        return {"weights": w}


def _default_propensity_model():
    return LogisticRegression(C=1.0, max_iter=2000)


def _fit_propensity(model, Xs: np.ndarray, T: np.ndarray, seed: int, sample_weight=None) -> np.ndarray:
    m = with_seed(model, seed)
    fit_weighted(m, Xs, T, sample_weight)
    classes = list(getattr(m, "classes_", [0, 1]))
    return m.predict_proba(Xs)[:, classes.index(1)] if hasattr(m, "predict_proba") else m.predict(Xs)


class IPW(_WeightingEstimator):
    """Inverse propensity weighting (Horvitz-Thompson form).

    The propensity ``e(x)`` is a logistic regression on standardised covariates (``C=1``, i.e. a
    mild ridge), clipped to ``[clip, 1 - clip]``.  Raw weights ``r``: "ate" treated 1/e, control
    1/(1-e); "att" treated 1, control e/(1-e); "overlap" treated 1-e, control e.  The estimate is
    the *unnormalised* HT contrast ``(sum_T r Y - sum_C r Y) / D`` with D = N (ate), n_treated
    (att), sum e(1-e) (overlap).  With ``fit(X, T, sample_weight=s)`` (frequency weights) the
    propensity model is fitted with ``sample_weight``, ``r`` is multiplied by ``s`` and every sum in
    D is s-weighted.

    Parameters
    ----------
    estimand : {"ate", "att", "overlap"}, default "ate"
        The target.
    propensity_model : classifier, optional
        Any classifier with ``predict_proba`` (cloned and seeded); default
        ``LogisticRegression(C=1.0, max_iter=2000)``.
    clip : float or None, default 0.01
        Clipping of the propensity, in [0, 0.5); None or 0: no clipping.
    random_state : None, int or numpy Generator, optional
        Seed.
    verbose : bool, default False
        Progress bars.
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
    propensity_ : ndarray of shape (N,)
        The fitted (clipped) scores.
    raw_weights_ : ndarray of shape (N,)
        The raw weights ``r``; ``weights_`` holds the per-arm normalised ones (for the
        diagnostics).
    """

    _normalised = False

    def __init__(
        self,
        estimand: str = "ate",
        propensity_model=None,
        clip: Optional[float] = 0.01,
        random_state=None,
        verbose: bool = False,
        augment=False,
        augment_repeats: int = 1,
    ):
        self.estimand = estimand
        self.propensity_model = propensity_model
        self.clip = clip
        self.random_state = random_state
        self.verbose = verbose
        self.augment = augment
        self.augment_repeats = augment_repeats

    def _check_params(self):
        if self.clip is not None and not (0 <= float(self.clip) < 0.5):
            raise ValueError(f"clip must be in [0, 0.5) or None, got {self.clip!r}")

    def _sample_weight_refusal(self, estimand):
        return None

    def _fit_core(self, X, T, seed, *, bootstrap=False, sample_weight=None):
        Xs, _, _ = _standardize(X, sample_weight=sample_weight)
        model = self.propensity_model if self.propensity_model is not None else _default_propensity_model()
        e = np.asarray(_fit_propensity(model, Xs, T, seed, sample_weight), dtype=np.float64)
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
        if sample_weight is not None:  # frequency weights: every sum over units is s-weighted
            s = np.asarray(sample_weight, dtype=np.float64)
            r = s * r
            denom = {"ate": float(s.sum()), "att": float(s[T == 1].sum())}.get(est, float(s @ (e * (1 - e))))
        return {"weights": _arm_normalise(r, T), "raw": r, "denom": denom, "propensity": e}

    def _effect_core(self, state, X, T, Y, seed):
        if self._normalised:
            return super()._effect_core(state, X, T, Y, seed)
        r = state["raw"]
        return float((np.sum(r[T == 1] * Y[T == 1]) - np.sum(r[T == 0] * Y[T == 0])) / state["denom"])

    def fit(self, X, T, sample_weight=None):
        super().fit(X, T, sample_weight=sample_weight)
        self.propensity_ = self._state["propensity"]
        self.raw_weights_ = self._state["raw"]
        return self

    def _details(self):
        e = self.propensity_
        return {"propensity_range": [float(e.min()), float(e.max())], "clip": self.clip}


class SelfNormalizedIPW(IPW):
    """Self-normalised (Hajek) IPW: the IPW weights normalised within each arm.

    The estimate is ``sum_T w Y - sum_C w Y``.  Same parameters and attributes as :class:`IPW`.

    Parameters
    ----------
    estimand : {"ate", "att", "overlap"}, default "ate"
        The target.
    propensity_model : classifier, optional
        Any classifier with ``predict_proba``; default a logistic regression (``C=1``).
    clip : float or None, default 0.01
        Clipping of the propensity, in [0, 0.5); None or 0: no clipping.
    random_state : None, int or numpy Generator, optional
        Seed.
    verbose : bool, default False
        Progress bars.
    augment : bool or scikit-learn regressor, default False
        Augmented (doubly robust) estimate, as for :class:`IPW`.
    augment_repeats : int, default 1
        Fold splits of the augmentation's outcome model, as for :class:`IPW`.

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
    propensity_ : ndarray of shape (N,)
        The fitted (clipped) scores.
    raw_weights_ : ndarray of shape (N,)
        The raw (unnormalised) IPW weights.
    """

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

    With ``fit(X, T, sample_weight=s)`` (frequency weights) every learner is fitted with
    ``sample_weight`` and every mean above (the estimate, ``mean(T)``, the standard error) is
    s-weighted.

    ``ate_interval`` is the generic bootstrap (which refits everything, so it costs
    ``n_bootstrap`` cross-fits); pass ``method="influence"`` for the usual normal interval from
    the influence function.

    Parameters
    ----------
    estimand : {"ate", "att"}, default "ate"
        The target.
    outcome_model : regressor, optional
        Arm outcome model (cloned and seeded per fold); default
        ``HistGradientBoostingRegressor(max_iter=100)``.
    propensity_model : classifier, optional
        Default ``LogisticRegression(C=1)`` on standardised covariates.
    n_folds : int, default 5
        Cross-fitting folds, at least 2 (and at most the smaller arm size).
    n_repeats : int, default 1
        Fold splits whose out-of-fold propensities and outcome predictions are averaged
        (repeated cross-fitting, as ``augment_repeats`` of the weighting estimators); ``n_repeats``
        times the fits.
    clip : float or None, default 0.01
        Propensity clipping, in [0, 0.5); None or 0: none.
    random_state : None, int or numpy Generator, optional
        Seeds the folds and the models.
    verbose : bool, default False
        Progress bars.

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
    propensity_ : ndarray of shape (N,)
        The full-sample (clipped) propensity behind ``weights_``.
    influence_ : ndarray of shape (N,)
        The cross-fitted influence function (set by :meth:`ate`).
    se_ : float
        Its standard error (set by :meth:`ate`).
    """

    _allowed_estimands = ("ate", "att")

    def __init__(
        self,
        estimand: str = "ate",
        outcome_model=None,
        propensity_model=None,
        n_folds: int = 5,
        clip: Optional[float] = 0.01,
        random_state=None,
        verbose: bool = False,
        n_repeats: int = 1,
    ):
        self.estimand = estimand
        self.outcome_model = outcome_model
        self.propensity_model = propensity_model
        self.n_folds = n_folds
        self.n_repeats = n_repeats
        self.clip = clip
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        if int(self.n_folds) < 2:
            raise ValueError(f"n_folds must be at least 2, got {self.n_folds!r}")
        _check_repeats(self.n_repeats, "n_repeats")
        if self.clip is not None and not (0 <= float(self.clip) < 0.5):
            raise ValueError(f"clip must be in [0, 0.5) or None, got {self.clip!r}")

    def _sample_weight_refusal(self, estimand):
        return None

    def fit(self, X, T, sample_weight=None):
        super().fit(X, T, sample_weight=sample_weight)
        k = int(self.n_folds)
        if min(self.n_treated_, self.n_control_) < k:
            raise ValueError(
                f"DoubleML with n_folds={k} needs at least {k} units per arm "
                f"(got {self.n_treated_} treated, {self.n_control_} control)"
            )
        self.propensity_ = self._state["propensity"]
        return self

    def _models(self):
        om = self.outcome_model if self.outcome_model is not None else HistGradientBoostingRegressor(max_iter=100)
        pm = self.propensity_model if self.propensity_model is not None else _default_propensity_model()
        return om, pm

    def _clip(self, e):
        c = float(self.clip) if self.clip else 0.0
        return np.clip(e, c, 1 - c) if c > 0 else e

    def _fit_core(self, X, T, seed, *, bootstrap=False, sample_weight=None):
        Xs, _, _ = _standardize(X, sample_weight=sample_weight)
        _, pm = self._models()
        e = self._clip(np.asarray(_fit_propensity(pm, Xs, T, seed, sample_weight), dtype=np.float64))
        est = check_estimand(self.estimand, self._allowed_estimands)
        r = np.where(T == 1, 1.0 / e, 1.0 / (1.0 - e)) if est == "ate" else np.where(T == 1, 1.0, e / (1.0 - e))
        if sample_weight is not None:
            r = r * sample_weight
        return {"weights": _arm_normalise(r, T), "propensity": e}

    def _cross_fit_propensity(self, Xs, T, seed, pm, k, sw=None):
        """Out-of-fold propensities, averaged over ``n_repeats`` splits; split ``r``, fold ``f`` are
        those of :func:`cross_fit_outcomes` (the same folds and seeds as the outcome models)."""
        e = np.zeros(Xs.shape[0])
        for r in range(int(self.n_repeats)):
            base = repeat_seed(seed, r)
            for s, tr, te in fold_splits(Xs, T, k, base):
                e[te] += _predict_proba(pm, Xs[tr], T[tr], Xs[te], s, None if sw is None else sw[tr])
        return e / int(self.n_repeats)

    def _scores(self, X, T, Y, seed, sw=None):
        """Per-unit AIPW scores ``psi`` (with ``sw``: their s-weighted mean is the estimate)."""
        om, pm = self._models()
        Xs, _, _ = _standardize(X, sample_weight=sw)
        k = int(self.n_folds)
        if min(np.sum(T == 1), np.sum(T == 0)) < k:
            raise ValueError(f"an arm has fewer than n_folds={k} units: cannot cross-fit")
        with _single_openmp_thread():
            e = self._cross_fit_propensity(Xs, T, seed, pm, k, sw)
        mu1, mu0 = cross_fit_outcomes(om, Xs, T, Y, seed, n_folds=k, sample_weight=sw, n_repeats=int(self.n_repeats))
        e = self._clip(e)
        if np.any((e <= 0) | (e >= 1)):
            raise ValueError("cross-fitted propensity scores reach 0 or 1 (perfect separation); set clip > 0")
        Tf = T.astype(np.float64)
        if check_estimand(self.estimand, self._allowed_estimands) == "ate":
            psi = mu1 - mu0 + Tf * (Y - mu1) / e - (1 - Tf) * (Y - mu0) / (1 - e)
        else:
            p1 = Tf.mean() if sw is None else float(sw @ Tf / sw.sum())
            psi = (Tf * (Y - mu0) - (1 - Tf) * e * (Y - mu0) / (1 - e)) / p1
        return psi

    @staticmethod
    def _mean(psi, sw):
        return float(np.mean(psi)) if sw is None else float(sw @ psi / sw.sum())

    def _effect_core(self, state, X, T, Y, seed):
        sw = state.get("sample_weight")
        return self._mean(self._scores(X, T, Y, seed, sw), sw)

    def ate(self, Y) -> float:
        self._check_fitted()
        Ya = check_outcome(Y, self.X_.shape[0], device=self._data.device, index=self._data.index)
        sw = self.sample_weight_
        psi = self._scores(self.X_, self.T_, Ya, self.seed_, sw)
        est = self._mean(psi, sw)
        if self.estimand_ == "att":
            # influence function of the ratio estimator: subtract the estimate on the treated
            infl = psi - est * self.T_ / self._mean(self.T_.astype(np.float64), sw)
        else:
            infl = psi - est
        with np.errstate(over="ignore", invalid="ignore"):
            se = influence_se(infl, sw)
        if not (np.isfinite(est) and np.isfinite(se)):
            raise ValueError(
                f"DoubleML: the estimate ({est}) or its standard error ({se}) is not finite; the "
                f"outcome is too extreme for float64 arithmetic (max |Y| = {np.max(np.abs(Ya)):.3g}): "
                "rescale Y (e.g. to thousands) and the estimate with it"
            )
        self.influence_ = infl
        self.se_ = se
        return est

    def ate_interval(
        self,
        Y,
        alpha: float = 0.05,
        n_bootstrap: int = 200,
        random_state=None,
        *,
        verbose: Optional[bool] = None,
        method: str = "bootstrap",
    ) -> Tuple[float, float]:
        """Interval for the effect: the shared bootstrap or the influence-function normal interval.

        Parameters
        ----------
        Y : array-like of shape (N,)
            Outcomes of the fitted units.
        alpha : float, default 0.05
            One minus the confidence level.
        n_bootstrap : int, default 200
            Resamples of the bootstrap (each one a full cross-fit).
        random_state : None, int or numpy Generator, optional
            Seeds the bootstrap.
        verbose : bool, optional
            Progress bar of the bootstrap.
        method : {"bootstrap", "influence"}, default "bootstrap"
            "bootstrap": the shared interface (refits everything on each resample); "influence":
            ``estimate -/+ z_{1 - alpha/2} se_`` from the cross-fitted influence function.

        Returns
        -------
        lo, hi : float
            The interval.

        Raises
        ------
        ValueError
            ``method`` not "bootstrap" or "influence"; the errors of the shared bootstrap and of
            :meth:`ate`.
        RuntimeError
            The estimator is not fitted; too many failed bootstrap refits.
        """
        if method == "influence":
            est = self.ate(Y)
            z = float(norm.ppf(1 - alpha / 2))
            return est - z * self.se_, est + z * self.se_
        if method != "bootstrap":
            raise ValueError(f"method must be 'bootstrap' or 'influence', got {method!r}")
        return super().ate_interval(Y, alpha=alpha, n_bootstrap=n_bootstrap, random_state=random_state, verbose=verbose)

    def has_analytic_se(self) -> bool:
        """DoubleML always has its influence-function standard error.

        Returns
        -------
        bool
            True.
        """
        return True

    def _analytic_inference(self, Ya):
        est = self.ate(Ya)
        return est, self.se_, "influence function (cross-fitted AIPW)"

    def _details(self):
        return {"n_folds": int(self.n_folds), "clip": self.clip}


def _predict_proba(model, Xtr, Ttr, Xte, seed, sample_weight=None):
    m = with_seed(model, seed)
    fit_weighted(m, Xtr, Ttr, sample_weight)
    classes = list(getattr(m, "classes_", [0, 1]))
    return m.predict_proba(Xte)[:, classes.index(1)]
