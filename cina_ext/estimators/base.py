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

Inputs are numpy arrays, torch tensors or pandas objects (see :mod:`cina_ext._core.checks`).

Scaling of ``lam`` (the balancing penalty) -- **choice**
-------------------------------------------------------
The user-facing ``lam`` is *relative*; the absolute penalty handed to the solver is

* estimand ``"overlap"`` (SVM dual, docs/method.md §2): ``lam_abs = lam * N * s_k``;
* estimands ``"ate"`` / ``"att"`` (arm problems, docs/method.md §6): ``lam_abs = lam * s_k``;

with ``s_k`` the scale of the kernel: 1 for ``rbf`` and for ``linear`` (computed on standardised
covariates divided by ``sqrt(p)``, so the mean diagonal is 1) and ``1 / N**2`` for the ``cina``
kernel ``E_ij / (h_i h_j)`` (docs/method.md §7.1).  For "overlap", writing ``alpha = m a`` (``a`` the
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

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from sklearn.base import BaseEstimator

from .._core.checks import (
    check_design,
    check_estimand,
    check_outcome,
    check_sample_weight,
    seed_from,
    standardize_columns,
)
from .._core.constants import ESTIMAND_LABEL, ESTIMANDS
from ..diagnostics import balance_table, kish_ess, overlap_plot
from ..ops import default_max_iter, dual_solve
from .augment import augmented_scores, cross_fit_outcomes, influence_se, outcome_model

__all__ = ["EstimatorSummary", "Inference"]


# helpers shared by the estimators


def _standardize(X: np.ndarray, mean=None, sd=None, sample_weight=None):
    """Column-standardise, scale-robust (:func:`cina_ext._core.checks.standardize_columns`).

    With ``sample_weight`` (frequency weights ``s``): the s-weighted mean and population SD, i.e.
    the standardisation of the data with every row replicated ``s_i`` times.
    """
    if sample_weight is None or mean is not None:
        return standardize_columns(X, mean, sd)
    s = np.asarray(sample_weight, dtype=np.float64)
    _, m0, sd0 = standardize_columns(X)  # the unweighted scale first: no overflow in the moments below
    Z0 = (X - m0) / sd0
    mz = s @ Z0 / s.sum()
    vz = s @ (Z0 - mz) ** 2 / s.sum()
    sdz = np.where(vz > 0, np.sqrt(vz), 1.0)
    mean = m0 + mz * sd0
    sd = sdz * sd0
    return (Z0 - mz) / sdz, mean, sd


def _check_repeats(r, name: str) -> int:
    """A count of averaged fold splits (repeated cross-fitting), checked: an integer >= 1."""
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise ValueError(f"{name} must be an integer >= 1 (fold splits averaged), got {r!r}")
    return int(r)


def _arm_normalise(w: np.ndarray, T: np.ndarray) -> np.ndarray:
    """``w`` scaled to sum to one within each arm (ValueError for an arm with no weight)."""
    w = np.asarray(w, dtype=np.float64)
    out = np.zeros_like(w)
    for code, label in ((1, "treated"), (0, "control")):
        sel = T == code
        tot = w[sel].sum()
        if not (tot > 0) or not np.isfinite(tot):
            raise ValueError(f"the weights of the {label} arm sum to {tot}; the estimate would be undefined")
        out[sel] = w[sel] / tot
    return out


#: An arm whose weights' effective sample size falls below this fraction of its units (and below
#: ESS_FLOOR units) is reported as poor overlap.
ESS_FRACTION = 0.01
ESS_FLOOR = 5.0
#: A weighted standardised mean difference above this is reported (0.1 is the usual "balanced").
IMBALANCE_SMD = 0.25
#: The share of propensity scores at the clipping bounds (or within 1e-6 of 0 / 1) that is reported.
CLIPPED_SHARE = 0.05


def _overlap_problems(w: np.ndarray, T: np.ndarray, propensity=None, clip=None, sample_weight=None) -> list:
    """Plain-language overlap problems of fitted weights (and propensity scores, where there are);
    with ``sample_weight`` the ESS and the shares are those of the rows replicated ``s_i`` times."""
    out = []
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    for code, label in ((1, "treated"), (0, "control")):
        sel = T == code
        a = np.asarray(w[sel], dtype=np.float64)
        n = a.size
        if sw is None:
            ess, size, what = kish_ess(a), n, "units"
        else:
            q = float(np.sum(np.divide(a * a, sw[sel], out=np.zeros_like(a), where=sw[sel] > 0)))
            ess, size, what = (float(a.sum()) ** 2 / q if q > 0 else 0.0), float(sw[sel].sum()), "weighted units"
        if n >= 10 and ess < max(ESS_FLOOR, ESS_FRACTION * size):
            out.append(f"the {label} arm's weights have an effective sample size of {ess:.1f} from {size:.6g} {what}")
    if propensity is not None:
        e = np.asarray(propensity, dtype=np.float64)
        c = float(clip) if clip else 0.0
        edge = max(c, 1e-6) * (1 + 1e-9)
        at_edge = (e <= edge) | (e >= 1 - edge)
        share = float(np.mean(at_edge)) if sw is None else float(sw @ at_edge / sw.sum())
        if share > CLIPPED_SHARE:
            out.append(
                f"{share:.0%} of the propensity scores are at 0 / 1 or at the clipping bounds "
                f"(near-separation of the arms by the covariates)"
            )
    return out


def _lam_abs(lam_rel: float, estimand: str, n: int, kernel: str) -> float:
    """Absolute solver penalty from the relative ``lam`` (see the module docstring)."""
    s_k = 1.0 / (n * n) if kernel == "cina" else 1.0
    if estimand == "overlap":
        return float(lam_rel) * n * s_k
    return float(lam_rel) * s_k


def _max_iter_arg(max_iter):
    """An estimator's ``max_iter`` for the solver: None (the solver's default, max(1e5, 50 N)) or an int."""
    return None if max_iter is None else int(max_iter)


def _dual_solve(X: torch.Tensor, W: torch.Tensor, lam: float, *, backend: str = "auto", init=None, **kw):
    """A balancing solve through :func:`cina_ext.ops.dual_solve` (compiled where built; the
    reference twin for ``backend="reference"``); ``init`` (B, N) is the warm start ``x0``."""
    if kw.get("max_iter") is None:  # the solver's default, resolved once here
        kw["max_iter"] = default_max_iter(X.shape[1])
    return dual_solve(X, W, lam, backend=backend, x0=init, **kw)


@dataclass
class Inference:
    """An estimate with its uncertainty (:meth:`_WeightingEstimator.ate_inference`)."""

    estimate: float
    se: float
    ci: Tuple[float, float]
    z: float
    pvalue: float
    method: str
    alpha: float
    estimand: str

    def to_dict(self) -> Dict[str, Any]:
        return {
            "estimate": self.estimate,
            "se": self.se,
            "ci": list(self.ci),
            "level": 1.0 - self.alpha,
            "z": self.z,
            "pvalue": self.pvalue,
            "method": self.method,
            "estimand": self.estimand,
        }

    def __str__(self) -> str:
        lo, hi = self.ci
        return (
            f"{ESTIMAND_LABEL.get(self.estimand, self.estimand)}: {self.estimate:.6g} (SE {self.se:.4g}; "
            f"{100 * (1 - self.alpha):.0f}% CI {lo:.6g} to {hi:.6g}; z {self.z:.3g}, p {self.pvalue:.3g}; "
            f"{self.method})"
        )


class EstimatorSummary(dict):
    """A dict (JSON-able values) that prints as a short human-readable report."""

    def __str__(self) -> str:  # pragma: no cover - formatting only
        lines = [f"{self.get('method')} (estimand {self.get('estimand_label')})"]
        if self.get("effect") is not None:
            lines.append(f"  estimate: {self['effect']:.6g}")
        for key in ("n_treated", "n_control"):
            lines.append(f"  {key}: {self.get(key)}")
        ess = self.get("ess", {})
        lines.append(
            f"  ESS treated {ess.get('treated', float('nan')):.1f}, control {ess.get('control', float('nan')):.1f}"
        )
        lines.append(
            f"  max |SMD| before {self.get('max_abs_smd_before'):.4f}, after {self.get('max_abs_smd_after'):.4f} "
            f"({self.get('n_flagged')} above 0.1)"
        )
        if self.get("encoded_columns"):
            enc = "; ".join(f"{k} -> {', '.join(v)}" for k, v in self["encoded_columns"].items())
            lines.append(f"  one-hot encoded (every level kept): {enc}")
        if self.get("sample_weight") is not None:
            sw = self["sample_weight"]
            lines.append(f"  sample_weight: frequency weights, total {sw['total']:.6g} over {sw['n']} units")
        for k, v in self.get("details", {}).items():
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)


class _WeightingEstimator(BaseEstimator):
    """Shared machinery; subclasses implement ``_fit_core`` (and maybe ``_effect_core``)."""

    _allowed_estimands: Tuple[str, ...] = ESTIMANDS
    _method_name = "base"
    _warns_on_imbalance = True  # the naive estimate does not try to balance

    # -- to implement ----------------------------------------------------------------------
    def _fit_core(self, X: np.ndarray, T: np.ndarray, seed: int, *, bootstrap: bool = False) -> Dict[str, Any]:
        """Return a state dict with at least ``"weights"`` (normalised per arm)."""
        raise NotImplementedError

    def _effect_core(self, state: Dict[str, Any], X: np.ndarray, T: np.ndarray, Y: np.ndarray, seed: int) -> float:
        w = state["weights"]
        return float(np.sum(w[T == 1] * Y[T == 1]) - np.sum(w[T == 0] * Y[T == 0]))

    def _details(self) -> Dict[str, Any]:
        return {}

    # -- augmentation and inference ---------------------------------------------------------------
    def _augment_model(self):
        return outcome_model(getattr(self, "augment", False))

    def _augment_repeats(self) -> int:
        """``augment_repeats``, checked: the fold splits of the cross-fitted outcome model."""
        return _check_repeats(getattr(self, "augment_repeats", 1), "augment_repeats")

    def _estimate(self, state: Dict[str, Any], X: np.ndarray, T: np.ndarray, Y: np.ndarray, seed: int):
        """``(estimate, influence values or None)``: plain or augmented (doubly robust)."""
        model = self._augment_model()
        if model is None:
            return self._effect_core(state, X, T, Y, seed), None
        est = self._resolve_estimand() if not hasattr(self, "estimand_") else self.estimand_
        if est not in ("ate", "att"):
            raise ValueError(
                "augment=... needs estimand='ate' or 'att' (the overlap population has no outcome-model form here)"
            )
        sw = state.get("sample_weight")
        Xs, _, _ = _standardize(X, sample_weight=sw)
        mu1, mu0 = cross_fit_outcomes(model, Xs, T, Y, seed, sample_weight=sw, n_repeats=self._augment_repeats())
        return augmented_scores(np.asarray(state["weights"], dtype=np.float64), T, Y, mu1, mu0, est, sample_weight=sw)

    def has_analytic_se(self) -> bool:
        """Whether :meth:`ate_inference` has an analytic (influence-function) standard error.

        Returns
        -------
        bool
            True for augmented estimators (and DoubleML); the others use the bootstrap.
        """
        return self._augment_model() is not None

    def _analytic_inference(self, Ya: np.ndarray):
        """``(estimate, se, method)`` where an analytic standard error is valid, else None."""
        if self._augment_model() is None:
            return None
        est, infl = self._estimate(self._state, self.X_, self.T_, Ya, self.seed_)
        return est, influence_se(infl, self._state.get("sample_weight")), "influence function (augmented, cross-fitted)"

    def ate_inference(
        self,
        Y,
        alpha: float = 0.05,
        *,
        method: str = "auto",
        n_bootstrap: int = 200,
        random_state=None,
        verbose: Optional[bool] = None,
    ) -> "Inference":
        """The estimate with a standard error, a ``1 - alpha`` interval, z and a two-sided p-value.

        Parameters
        ----------
        Y : array-like of shape (N,)
            Outcomes of the fitted units.
        alpha : float, default 0.05
            1 - the interval's level, in (0, 1).
        method : {"auto", "influence", "bootstrap"}, default "auto"
            "influence": the normal interval from the influence function (DoubleML and augmented
            estimators); "bootstrap": the percentile interval of refits on resamples (every
            estimator; the SE is the replicates' standard deviation); "auto": "influence" where it is
            valid, else "bootstrap".
        n_bootstrap : int, default 200
            Resamples of the bootstrap.
        random_state : None, int or numpy Generator, optional
            Seed of the bootstrap.
        verbose : bool, optional
            Progress bar of the bootstrap.

        Returns
        -------
        Inference
            ``estimate``, ``se``, ``ci``, ``z``, ``pvalue``, ``method``, ``alpha``, ``estimand``.

        Raises
        ------
        RuntimeError
            The estimator is not fitted, or too many bootstrap refits failed.
        ValueError
            Bad ``Y``, ``alpha`` or ``method``; ``method="influence"`` where no analytic standard
            error is valid.
        """
        from scipy.stats import norm

        self._check_fitted()
        if not (0 < float(alpha) < 1):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if method not in ("auto", "influence", "bootstrap"):
            raise ValueError(f"method must be 'auto', 'influence' or 'bootstrap', got {method!r}")
        Ya = check_outcome(Y, self.X_.shape[0], device=self._data.device, index=self._data.index)
        z_crit = float(norm.ppf(1 - float(alpha) / 2))
        analytic = self._analytic_inference(Ya) if method in ("auto", "influence") else None
        if method == "influence" and analytic is None:
            raise ValueError(
                f"{type(self).__name__} without augmentation has no analytic standard error here; "
                "use method='bootstrap' (or augment=True)"
            )
        if analytic is not None:
            est, se, how = analytic
            ci = (est - z_crit * se, est + z_crit * se)
        else:
            est = self.ate(Ya)
            lo, hi = self.ate_interval(
                Ya, alpha=alpha, n_bootstrap=n_bootstrap, random_state=random_state, verbose=verbose
            )
            se = float(np.std(self.bootstrap_estimates_, ddof=1))
            ci, how = (lo, hi), f"percentile bootstrap ({len(self.bootstrap_estimates_)} refits of the weights)"
        if not (np.isfinite(est) and np.isfinite(se)):
            raise ValueError(f"the estimate ({est}) or its standard error ({se}) is not finite")
        zval = est / se if se > 0 else math.copysign(math.inf, est) if est else 0.0
        pval = float(2.0 * norm.sf(abs(zval)))
        self.inference_ = Inference(
            estimate=float(est),
            se=float(se),
            ci=(float(ci[0]), float(ci[1])),
            z=float(zval),
            pvalue=pval,
            method=how,
            alpha=float(alpha),
            estimand=self.estimand_,
        )
        return self.inference_

    def _resolve_estimand(self):
        return getattr(self, "estimand", "ate")

    # -- public API ------------------------------------------------------------------------
    def _sample_weight_refusal(self, estimand: str) -> Optional[str]:
        """None when the estimator takes ``sample_weight`` for ``estimand``, else why not."""
        return (
            f"{type(self).__name__} does not support sample_weight (its weights come from a trained attention "
            "network, which has no frequency-weighted form); "
            "use KernelBalancing(estimand='ate' or 'att'), IPW, SelfNormalizedIPW or DoubleML for weighted data"
        )

    def fit(self, X, T, sample_weight=None):
        """Validate ``(X, T)`` and compute the balancing weights ``weights_`` (no outcome used).

        Parameters
        ----------
        X : array-like of shape (N, p)
            Covariates: a numpy array, torch tensor (any device), pandas DataFrame (column names are
            kept; string, ``category`` and boolean-object columns are one-hot encoded, every level
            kept, see :mod:`cina_ext._core.checks`) or list; finite, no constant column.
        T : array-like of shape (N,) or (N, 1)
            Binary treatment: bool, 0/1 or -1/+1 (+1 = treated); at least 2 units per arm.
        sample_weight : array-like of shape (N,), optional
            Survey / frequency weights ``s_i >= 0`` (finite, not all zero): a unit of integer weight k
            counts as k copies of the row.  The target population and the arm means are s-weighted
            and ``weights_`` (the total weight on each unit) include ``s``.  Supported by
            DifferenceInMeans, IPW, SelfNormalizedIPW, DoubleML, KernelBalancing ("ate", "att") and
            the augmentation; the others raise ``NotImplementedError``.

        Returns
        -------
        self
            The fitted estimator (``weights_`` and the other fitted attributes set).

        Raises
        ------
        ValueError
            An invalid estimand or parameter; NaN or Inf in X or T; wrong dimensions; mismatched
            lengths; a non-binary treatment; an arm with fewer than 2 units; no covariate columns; a
            constant covariate column; tensors on different devices (see :mod:`cina_ext._core.checks`);
            method-specific failures (e.g. propensity scores reaching 0 or 1, a DoubleML arm smaller
            than ``n_folds``, a balancing problem that gives an arm no weight).
            Also: a missing value in a categorical column, a categorical column with more than 50
            levels; invalid ``sample_weight`` (negative, non-finite, all zero, wrong length).
        TypeError
            Non-numeric columns that cannot be encoded (datetime, complex, strings outside a
            DataFrame) or an unsupported container; a parameter of the wrong type.
        NotImplementedError
            ``sample_weight`` for an estimator (or estimand) that does not support it.

        Warns
        -----
        RuntimeWarning
            KernelBalancing and CInA: a balancing solve that did not converge (``converged_ = False``);
            CInA: more than 95% of the dual variables at the upper bound (lam too large).
        """
        estimand = check_estimand(self._resolve_estimand(), self._allowed_estimands)
        data = check_design(X, T)
        self._check_params()
        self._augment_repeats()
        sw = None
        if sample_weight is not None:
            sw = check_sample_weight(sample_weight, data.n, device=data.device, index=data.index)
            refusal = self._sample_weight_refusal(estimand)
            if refusal:
                raise NotImplementedError(refusal)
        seed = seed_from(getattr(self, "random_state", None))
        self._data = data
        self.X_ = data.X
        self.T_ = data.T
        self.n_features_in_ = data.X.shape[1]
        self.feature_names_ = list(data.feature_names)
        self.encoded_columns_ = {k: list(v) for k, v in data.encoded.items()}
        if data.has_names:
            self.feature_names_in_ = np.asarray(data.feature_names, dtype=object)
        self.estimand_ = estimand
        self.seed_ = seed
        self.sample_weight_ = sw
        state = self._fit_core(data.X, data.T, seed, **({} if sw is None else {"sample_weight": sw}))
        state["sample_weight"] = sw
        self._state = state
        self.weights_ = np.asarray(state["weights"], dtype=np.float64)
        self.n_treated_ = int(np.sum(data.T == 1))
        self.n_control_ = int(np.sum(data.T == 0))
        self.overlap_warnings_ = _overlap_problems(
            self.weights_, data.T, state.get("propensity"), getattr(self, "clip", None), sw
        )
        if self._warns_on_imbalance:
            rep = self.balance()
            if rep.max_abs_smd_after > IMBALANCE_SMD:
                worst = rep.feature_names[int(np.argmax(np.abs(rep.smd_after)))]
                self.overlap_warnings_.append(
                    f"a covariate is still imbalanced after weighting (max |SMD| "
                    f"{rep.max_abs_smd_after:.2f}, '{worst}')"
                )
        for msg in self.overlap_warnings_:
            warnings.warn(
                f"{type(self).__name__}: poor overlap: {msg}; the estimate may be biased or rest on "
                "few units, and its interval may not cover (see balance())",
                RuntimeWarning,
                stacklevel=2,
            )
        return self

    def _check_params(self) -> None:
        pass

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit(X, T) first")

    def ate(self, Y) -> float:
        """The effect for ``self.estimand`` (ATE, ATT or overlap effect) from outcome ``Y``.

        The method is called ``ate`` for every estimand; ``estimand_`` says which one is estimated.

        Parameters
        ----------
        Y : array-like of shape (N,) or (N, 1)
            Outcomes of the fitted units: numeric, finite, on the device of the design (tensors).

        Returns
        -------
        float
            The estimate (for the weighting estimators ``sum_T w Y - sum_C w Y``; IPW uses the
            unnormalised contrast, DoubleML the cross-fitted AIPW score mean).

        Raises
        ------
        RuntimeError
            The estimator is not fitted.
        ValueError
            Y of the wrong length or dimensions, with NaN or Inf, or on another device than the
            design; a non-finite estimate.
        TypeError
            Non-numeric Y.
        """
        self._check_fitted()
        Ya = check_outcome(Y, self.X_.shape[0], device=self._data.device, index=self._data.index)
        est, _ = self._estimate(self._state, self.X_, self.T_, Ya, self.seed_)
        if not np.isfinite(est):
            raise ValueError("the estimate is not finite (check the weights and the outcome)")
        return float(est)

    def ate_interval(
        self, Y, alpha: float = 0.05, n_bootstrap: int = 200, random_state=None, *, verbose: Optional[bool] = None
    ) -> Tuple[float, float]:
        """Percentile bootstrap interval ``(lo, hi)`` at level ``1 - alpha``.

        Each of the ``n_bootstrap`` resamples draws units with replacement *within each arm* (so arm
        sizes are kept and no resample can lose an arm) and **refits the weights** on the resample
        (with the cheaper ``bootstrap`` solver settings of the estimator, if it has any).  With
        ``sample_weight`` a unit is drawn together with its weight (the rows, not the replicates
        they stand for, are resampled).

        Parameters
        ----------
        Y : array-like of shape (N,)
            Outcomes of the fitted units.
        alpha : float, default 0.05
            One minus the confidence level, in (0, 1).
        n_bootstrap : int, default 200
            Number of resamples, at least 2.
        random_state : None, int or numpy Generator, optional
            Seeds the whole procedure; falls back to the estimator's ``random_state``.
        verbose : bool, optional
            Show a tqdm bar; default the estimator's ``verbose``.

        Returns
        -------
        lo, hi : float
            The ``alpha / 2`` and ``1 - alpha / 2`` quantiles of the replicate estimates, which are
            kept in ``bootstrap_estimates_``.

        Raises
        ------
        RuntimeError
            The estimator is not fitted; more than 10% of the refits failed.
        ValueError
            ``alpha`` not in (0, 1); ``n_bootstrap < 2``; an invalid Y.

        Warns
        -----
        RuntimeWarning
            Some (at most 10%) refits failed and were skipped.
        """
        self._check_fitted()
        if not (0 < float(alpha) < 1):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        n_bootstrap = int(n_bootstrap)
        if n_bootstrap < 2:
            raise ValueError(f"n_bootstrap must be at least 2, got {n_bootstrap}")
        Ya = check_outcome(Y, self.X_.shape[0], device=self._data.device, index=self._data.index)
        if random_state is None:
            random_state = getattr(self, "random_state", None)
        rng = np.random.default_rng(
            random_state if not isinstance(random_state, np.random.RandomState) else random_state.randint(0, 2**31 - 1)
        )
        if verbose is None:
            verbose = bool(getattr(self, "verbose", False))
        from tqdm.auto import tqdm

        X, T = self.X_, self.T_
        idx1 = np.nonzero(T == 1)[0]
        idx0 = np.nonzero(T == 0)[0]
        ests = []
        failures = []
        for _ in tqdm(range(n_bootstrap), desc=f"bootstrap {type(self).__name__}", disable=not verbose, leave=False):
            idx = np.concatenate([rng.choice(idx1, idx1.size, replace=True), rng.choice(idx0, idx0.size, replace=True)])
            seed = int(rng.integers(0, 2**31 - 1))
            Xb, Tb, Yb = X[idx], T[idx], Ya[idx]
            swb = None if self.sample_weight_ is None else self.sample_weight_[idx]
            try:
                state = self._fit_core(Xb, Tb, seed, bootstrap=True, **({} if swb is None else {"sample_weight": swb}))
                state["sample_weight"] = swb
                est, _ = self._estimate(state, Xb, Tb, Yb, seed)
            except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
                failures.append(str(exc))
                continue
            if np.isfinite(est):
                ests.append(est)
            else:
                failures.append("non-finite estimate")
        if failures:
            if len(failures) > 0.1 * n_bootstrap:
                raise RuntimeError(f"{len(failures)} of {n_bootstrap} bootstrap refits failed (first: {failures[0]})")
            warnings.warn(
                f"{len(failures)} of {n_bootstrap} bootstrap refits failed and were skipped (first: {failures[0]})",
                RuntimeWarning,
                stacklevel=2,
            )
        ests = np.asarray(ests)
        self.bootstrap_estimates_ = ests
        lo, hi = np.quantile(ests, [alpha / 2.0, 1.0 - alpha / 2.0])
        return float(lo), float(hi)

    def balance(self, *, threshold: float = 0.1):
        """Balance table of the fitted weights (:func:`cina_ext.diagnostics.balance_table`).

        Parameters
        ----------
        threshold : float, default 0.1
            |SMD| above which a covariate is flagged.

        Returns
        -------
        BalanceReport
            SMD and variance ratios before and after weighting, ESS and weight summaries per arm,
            for the estimator's estimand.

        Raises
        ------
        RuntimeError
            The estimator is not fitted.
        """
        self._check_fitted()
        est = self.estimand_ if self.estimand_ in ("ate", "att", "overlap") else "ate"
        return balance_table(
            self.X_,
            self.T_,
            self.weights_,
            self.feature_names_,
            estimand=est,
            threshold=threshold,
            sample_weight=self.sample_weight_,
        )

    def plot_overlap(self, ax=None, *, kind: str = "propensity", bins: int = 30):
        """Overlap of the arms: the distribution of the propensity score (or of the weights) per arm.

        ``kind="propensity"``: the estimator's own propensity scores where it has them (IPW,
        SelfNormalizedIPW, DoubleML: ``propensity_``), otherwise those of a logistic regression
        (``C=1``) on the standardised covariates, fitted here for the plot only (s-weighted with
        ``sample_weight``); little mass near 0 or 1 and overlapping histograms mean good overlap.
        ``kind="weights"``: the balancing weights times the arm size (mean 1 in an unweighted arm).
        Densities, s-weighted when the fit had ``sample_weight``.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Draws on ``ax``; a new figure if None.
        kind : {"propensity", "weights"}, default "propensity"
            What to draw.
        bins : int, default 30
            Shared histogram bins.

        Returns
        -------
        matplotlib Axes
            The axes: one histogram per arm (:func:`cina_ext.diagnostics.overlap_plot`).

        Raises
        ------
        RuntimeError
            The estimator is not fitted.
        ValueError
            An unknown ``kind``.
        ImportError
            matplotlib is not installed (the ``[plot]`` extra).
        """
        self._check_fitted()
        sw = getattr(self, "sample_weight_", None)
        if kind == "propensity":
            e = getattr(self, "propensity_", None)
            source = "the estimator's model"
            if e is None:
                from sklearn.linear_model import LogisticRegression

                Xs, _, _ = _standardize(self.X_, sample_weight=sw)
                m = LogisticRegression(C=1.0, max_iter=2000)
                m.fit(Xs, self.T_, sample_weight=sw)
                e = m.predict_proba(Xs)[:, list(m.classes_).index(1)]
                source = "logistic regression on the standardised covariates"
            values, xlabel = e, f"estimated propensity score ({source})"
        elif kind == "weights":
            n_arm = np.where(self.T_ == 1, np.sum(self.T_ == 1), np.sum(self.T_ == 0))
            values, xlabel = self.weights_ * n_arm, "weight x arm size"
        else:
            raise ValueError(f"kind must be 'propensity' or 'weights', got {kind!r}")
        title = f"Overlap: {type(self).__name__} ({ESTIMAND_LABEL.get(self.estimand_, self.estimand_)})"
        return overlap_plot(values, self.T_, sample_weight=sw, ax=ax, xlabel=xlabel, title=title, bins=bins)

    def summary(self, Y=None) -> EstimatorSummary:
        """Estimate (if ``Y`` is given), arm sizes, ESS, balance and method-specific diagnostics.

        Parameters
        ----------
        Y : array-like of shape (N,), optional
            Outcomes; without them ``effect`` is None.

        Returns
        -------
        EstimatorSummary
            A dict with ``method``, ``estimand``, ``estimand_label``, ``effect``, ``n_treated``,
            ``n_control``, ``ess``, ``max_abs_smd_before``, ``max_abs_smd_after``, ``n_flagged``,
            ``weights`` (the per-arm weight summaries), ``encoded_columns`` (the one-hot encoded
            DataFrame columns and their new names), ``sample_weight`` (None or its ``n`` and
            ``total``) and ``details``; it prints as a short report.

        Raises
        ------
        RuntimeError
            The estimator is not fitted.
        ValueError
            An invalid Y (see :meth:`ate`).
        """
        self._check_fitted()
        rep = self.balance()
        out = EstimatorSummary(
            method=type(self).__name__,
            estimand=self.estimand_,
            estimand_label=ESTIMAND_LABEL[self.estimand_],
            effect=self.ate(Y) if Y is not None else None,
            n_treated=self.n_treated_,
            n_control=self.n_control_,
            ess=dict(rep.ess),
            max_abs_smd_before=rep.max_abs_smd_before,
            max_abs_smd_after=rep.max_abs_smd_after,
            n_flagged=rep.n_flagged,
            weights=rep.to_dict()["weights"],
            encoded_columns={k: list(v) for k, v in getattr(self, "encoded_columns_", {}).items()},
            sample_weight=None
            if getattr(self, "sample_weight_", None) is None
            else {"n": int(self.sample_weight_.size), "total": float(self.sample_weight_.sum())},
            details=self._details(),
        )
        return out
