"""Balance diagnostics in the style of R's cobalt / WeightIt.

:func:`balance_table` compares the covariate distributions of the treated and control arms
before weighting (every unit of an arm weighted equally) and after (the balancing weights), and
summarises the weights themselves.  :func:`love_plot` draws |SMD| before vs after.

Formulas (``w`` are the weights of one arm, normalised to sum to one within the arm)
--------------------------------------------------------------------------------------
* weighted mean ``m = sum_i w_i x_i``.
* weighted variance ``v = sum_i w_i (x_i - m)^2 / (1 - sum_i w_i^2)`` (the unbiased
  "reliability weights" estimator; with equal weights it is the usual ``ddof=1`` variance, which is
  what "before" uses).  Undefined (NaN) when one unit holds all the weight.
* standardised mean difference ``SMD = (m_1 - m_0) / sd``, the **same denominator before and
  after**, computed from the *unweighted* arms (as cobalt does):

  - estimand ``"ate"`` or ``"overlap"``: pooled ``sd = sqrt((s_1^2 + s_0^2) / 2)``;
  - estimand ``"att"``: the treated standard deviation ``sd = s_1``;

  ``s_a^2`` the ``ddof=1`` sample variance of arm ``a``.  All covariates are standardised,
  binary ones included (cobalt reports raw differences for binary covariates by default).
  A zero denominator gives SMD 0 when the means agree and +-inf otherwise.
* variance ratio ``VR = v_1 / v_0`` (treated over control), before and after.
* flags: ``|SMD after| > threshold`` (default 0.1); ``VR after`` outside
  ``[1 / vr_threshold, vr_threshold]`` (default 2).
* Kish effective sample size per arm ``ESS = (sum w)^2 / sum w^2``.
* weight summary per arm: min, max, mean, coefficient of variation ``sd(w) / mean(w)`` (population
  ``sd``, ``ddof=0``, so that ``ESS = n / (1 + CV^2)``), number of zero weights, and the share of
  the arm's total weight held by its largest ``ceil(1% of n)`` and ``ceil(5% of n)`` units.

Frequency weights ``s`` (``sample_weight``, e.g. of an estimator fitted with them): "before" is
then the s-weighted arm (``w = s`` normalised) and every moment and ESS is that of the data with
each row replicated ``s_i`` times (the copies sharing the row's weight): ``1 - sum w^2`` becomes
``1 - sum w^2 / s`` in the variance and ``ESS = (sum w)^2 / sum (w^2 / s)``.  The weight summaries
stay per row.  :meth:`BalanceReport.plot` draws the love plot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "BalanceReport",
    "balance_table",
    "max_abs_smd_after_many",
    "love_plot",
    "overlap_plot",
    "kish_ess",
    "weight_summary",
]

_ARMS = (("treated", 1), ("control", 0))


def _clean(x: Any) -> Any:
    """Make a value JSON-able: numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_clean(v) for v in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def kish_ess(w: np.ndarray) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2``.

    Parameters
    ----------
    w : array-like of shape (n,)
        Weights of one arm.

    Returns
    -------
    float
        The ESS (0 if all weights are zero).

    Examples
    --------
    >>> from cina_ext.diagnostics import kish_ess
    >>> kish_ess([1.0, 1.0, 2.0])
    2.6666666666666665
    """
    w = np.asarray(w, dtype=np.float64)
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def _ess(w: np.ndarray, s: Optional[np.ndarray]) -> float:
    """Kish ESS; with frequency weights ``s`` that of the replicated rows, ``(sum w)^2 / sum w^2/s``."""
    if s is None:
        return kish_ess(w)
    q = _sq_over(np.asarray(w, dtype=np.float64), s)
    return float(np.sum(w)) ** 2 / q if q > 0 else 0.0


def weight_summary(w: np.ndarray) -> Dict[str, float]:
    """Summary of the weights of one arm (see the module docstring).

    Parameters
    ----------
    w : array-like of shape (n,)
        Weights of one arm.

    Returns
    -------
    dict
        ``n``, ``min``, ``max``, ``mean``, ``cv`` (population ``sd(w) / mean(w)``, so that
        ``ESS = n / (1 + CV^2)``), ``n_zero``, ``top1_share`` and ``top5_share`` (share of the total
        weight held by the largest ``ceil(1% of n)`` / ``ceil(5% of n)`` units) and ``ess``; NaN
        where undefined (no units, zero total weight).
    """
    w = np.asarray(w, dtype=np.float64)
    n = w.shape[0]
    total = float(w.sum())
    mean = total / n if n else float("nan")
    sd = float(np.std(w)) if n else float("nan")
    srt = np.sort(w)[::-1]
    k1 = max(1, int(math.ceil(0.01 * n)))
    k5 = max(1, int(math.ceil(0.05 * n)))
    return {
        "n": int(n),
        "min": float(w.min()) if n else float("nan"),
        "max": float(w.max()) if n else float("nan"),
        "mean": mean,
        "cv": sd / mean if mean > 0 else float("nan"),
        "n_zero": int(np.sum(w == 0)),
        "top1_share": float(srt[:k1].sum() / total) if total > 0 else float("nan"),
        "top5_share": float(srt[:k5].sum() / total) if total > 0 else float("nan"),
        "ess": kish_ess(w),
    }


def _sq_over(w: np.ndarray, s: Optional[np.ndarray]) -> float:
    """``sum w^2`` (``s`` None) or ``sum w^2 / s`` (0 where s = 0)."""
    if s is None:
        return float(np.sum(w * w))
    return float(np.sum(np.divide(w * w, s, out=np.zeros_like(w), where=s > 0)))


def _wmean_var(x: np.ndarray, w: np.ndarray, s: Optional[np.ndarray] = None):
    """Weighted mean and reliability-weighted variance of the columns of x (w sums to 1); with
    frequency weights ``s`` those of the rows replicated ``s_i`` times."""
    m = w @ x
    denom = 1.0 - _sq_over(w, s)
    if denom <= 1e-12:
        v = np.full(x.shape[1], np.nan)
    else:
        v = (w @ (x - m) ** 2) / denom
    return m, v


def _scaled_columns(X: np.ndarray):
    """``X`` with each column divided by its largest magnitude, and those scales: SMDs and
    variance ratios do not depend on them, and the moments neither overflow for huge covariates
    nor underflow for tiny ones."""
    col_scale = np.max(np.abs(X), axis=0) if X.shape[0] else np.ones(X.shape[1])
    col_scale = np.where(col_scale > 0, col_scale, 1.0)
    return X / col_scale, col_scale


def _smd_denominator(var_treated: np.ndarray, var_control: np.ndarray, estimand: str):
    """The SMD denominator of ``estimand`` from the unweighted arm variances, and its formula."""
    if estimand == "att":
        return np.sqrt(var_treated), "treated SD s1 (unweighted)"
    return np.sqrt((var_treated + var_control) / 2.0), "pooled sqrt((s1^2 + s0^2)/2) (unweighted)"


def _constant_columns(X: np.ndarray) -> np.ndarray:
    """The columns of ``X`` with one value (bool, shape (p,))."""
    if X.shape[0] == 0:
        return np.ones(X.shape[1], dtype=bool)
    return np.all(X == X[:1], axis=0)


def _smd(diff: np.ndarray, sd: np.ndarray) -> np.ndarray:
    out = np.empty_like(diff)
    pos = sd > 0
    out[pos] = diff[pos] / sd[pos]
    out[~pos] = np.where(diff[~pos] == 0, 0.0, np.sign(diff[~pos]) * np.inf)
    return out


@dataclass
class BalanceReport:
    """Balance before/after weighting; see :func:`balance_table` and the module docstring.

    Attributes
    ----------
    feature_names : list of str
        Covariate names.
    estimand : str
        The estimand of the SMD denominator.
    sd_formula : str
        A description of the SMD denominator.
    threshold, vr_threshold : float
        The flag thresholds of |SMD after| and of the variance ratio after.
    mean_treated_before, mean_control_before : ndarray of shape (p,)
        Unweighted arm means.
    mean_treated_after, mean_control_after : ndarray of shape (p,)
        Weighted arm means.
    sd_denominator : ndarray of shape (p,)
        The SMD denominator (the same before and after).
    smd_before, smd_after : ndarray of shape (p,)
        Standardised mean differences.
    vr_before, vr_after : ndarray of shape (p,)
        Variance ratios treated / control.
    n : dict
        Arm sizes (``"treated"``, ``"control"``).
    ess : dict
        Kish ESS per arm.
    weights : dict
        :func:`weight_summary` per arm.
    extra : dict
        Free-form additions (exported by :meth:`to_dict` when not empty).
    flags, vr_flags : ndarray of bool
        Per covariate: |SMD after| > threshold; VR after outside the band (properties).
    n_flagged : int
        Number of SMD flags (property).
    max_abs_smd_before, max_abs_smd_after : float
        Largest |SMD| (properties).
    balanced : bool
        No SMD flag (property).
    """

    feature_names: List[str]
    estimand: str
    sd_formula: str
    threshold: float
    vr_threshold: float
    mean_treated_before: np.ndarray
    mean_control_before: np.ndarray
    mean_treated_after: np.ndarray
    mean_control_after: np.ndarray
    sd_denominator: np.ndarray
    smd_before: np.ndarray
    smd_after: np.ndarray
    vr_before: np.ndarray
    vr_after: np.ndarray
    n: Dict[str, int]
    ess: Dict[str, float]
    weights: Dict[str, Dict[str, float]]
    extra: Dict[str, Any] = field(default_factory=dict)

    # -- derived ---------------------------------------------------------------------------
    @property
    def flags(self) -> np.ndarray:
        """Boolean per covariate: |SMD after| > threshold."""
        return np.abs(self.smd_after) > self.threshold

    @property
    def vr_flags(self) -> np.ndarray:
        vr = self.vr_after
        with np.errstate(invalid="ignore", divide="ignore"):
            return (vr > self.vr_threshold) | (vr < 1.0 / self.vr_threshold)

    @property
    def n_flagged(self) -> int:
        return int(self.flags.sum())

    @property
    def max_abs_smd_before(self) -> float:
        return float(np.max(np.abs(self.smd_before)))

    @property
    def max_abs_smd_after(self) -> float:
        return float(np.max(np.abs(self.smd_after)))

    @property
    def balanced(self) -> bool:
        return self.n_flagged == 0

    def plot(self, ax=None, *, threshold: Optional[float] = None, title: Optional[str] = None):
        """Love plot of this report (:func:`love_plot`): |SMD| per covariate before and after.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Draws on ``ax``; a new figure if None.
        threshold : float, optional
            The vertical reference line; default the report's threshold (0.1 unless set).
        title : str, optional
            Default ``"Covariate balance (<estimand>)"``.

        Returns
        -------
        matplotlib Axes
            The axes drawn on: two scatter collections (before, after) of one point per covariate,
            the covariates as y tick labels.

        Raises
        ------
        ImportError
            matplotlib is not installed (the ``[plot]`` extra).
        """
        return love_plot(self, ax=ax, threshold=threshold, title=title)

    # -- exports ---------------------------------------------------------------------------
    def rows(self) -> List[Dict[str, Any]]:
        """One dict per covariate: the means, SMD and VR before and after, and the two flags.

        Returns
        -------
        list of dict
            Keys ``covariate``, ``mean_treated_before``, ``mean_control_before``,
            ``mean_treated_after``, ``mean_control_after``, ``smd_before``, ``smd_after``,
            ``vr_before``, ``vr_after``, ``flag_smd``, ``flag_vr``.
        """
        out = []
        for j, name in enumerate(self.feature_names):
            out.append(
                {
                    "covariate": name,
                    "mean_treated_before": float(self.mean_treated_before[j]),
                    "mean_control_before": float(self.mean_control_before[j]),
                    "mean_treated_after": float(self.mean_treated_after[j]),
                    "mean_control_after": float(self.mean_control_after[j]),
                    "smd_before": float(self.smd_before[j]),
                    "smd_after": float(self.smd_after[j]),
                    "vr_before": float(self.vr_before[j]),
                    "vr_after": float(self.vr_after[j]),
                    "flag_smd": bool(self.flags[j]),
                    "flag_vr": bool(self.vr_flags[j]),
                }
            )
        return out

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able dictionary (numpy converted, non-finite numbers as ``None``).

        Returns
        -------
        dict
            ``estimand``, ``sd_formula``, ``threshold``, ``vr_threshold``, ``n``, ``ess``, ``weights``,
            ``max_abs_smd_before``, ``max_abs_smd_after``, ``n_flagged``, ``covariates`` (the
            :meth:`rows`) and ``extra`` when not empty.
        """
        d = {
            "estimand": self.estimand,
            "sd_formula": self.sd_formula,
            "threshold": self.threshold,
            "vr_threshold": self.vr_threshold,
            "n": dict(self.n),
            "ess": dict(self.ess),
            "weights": {k: dict(v) for k, v in self.weights.items()},
            "max_abs_smd_before": self.max_abs_smd_before,
            "max_abs_smd_after": self.max_abs_smd_after,
            "n_flagged": self.n_flagged,
            "covariates": self.rows(),
        }
        if self.extra:
            d["extra"] = dict(self.extra)
        return _clean(d)

    def to_json(self, **kwargs) -> str:
        """:meth:`to_dict` as a JSON string.

        Parameters
        ----------
        **kwargs
            Passed to :func:`json.dumps` (e.g. ``indent=2``).

        Returns
        -------
        str
            The JSON text.
        """
        return json.dumps(self.to_dict(), **kwargs)

    def summary_frame(self):
        """pandas DataFrame, one row per covariate (index = covariate name).

        Returns
        -------
        pandas.DataFrame
            The :meth:`rows` as a frame.
        """
        import pandas as pd

        df = pd.DataFrame(self.rows()).set_index("covariate")
        return df

    def __str__(self) -> str:
        name_w = max([9] + [len(n) for n in self.feature_names])
        head = (
            f"{'covariate':<{name_w}}  {'SMD before':>10}  {'SMD after':>10}  {'VR before':>9}  {'VR after':>9}  flag"
        )
        lines = [
            f"Balance (estimand {self.estimand}; SMD denominator: {self.sd_formula}; flag |SMD| > {self.threshold:g})",
            head,
            "-" * len(head),
        ]
        for r in self.rows():
            flag = "*" if r["flag_smd"] else ""
            if r["flag_vr"]:
                flag += "v"
            lines.append(
                f"{r['covariate']:<{name_w}}  {r['smd_before']:>10.4f}  {r['smd_after']:>10.4f}  "
                f"{r['vr_before']:>9.3f}  {r['vr_after']:>9.3f}  {flag}"
            )
        lines.append("")
        lines.append(
            f"max |SMD|: before {self.max_abs_smd_before:.4f}, after {self.max_abs_smd_after:.4f}; "
            f"{self.n_flagged} covariate(s) above {self.threshold:g}"
        )
        for arm, _ in _ARMS:
            ws = self.weights[arm]
            lines.append(
                f"{arm:>7}: n {self.n[arm]}, ESS {self.ess[arm]:.1f}; weights min {ws['min']:.3g} "
                f"max {ws['max']:.3g} CV {ws['cv']:.3f}, zero {ws['n_zero']}, top 1% share "
                f"{ws['top1_share']:.3f}, top 5% share {ws['top5_share']:.3f}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"BalanceReport(estimand={self.estimand!r}, covariates={len(self.feature_names)}, "
            f"max|SMD| {self.max_abs_smd_before:.3f} -> {self.max_abs_smd_after:.3f}, "
            f"ESS treated {self.ess['treated']:.1f}, control {self.ess['control']:.1f})"
        )


def max_abs_smd_after_many(X, T, weights, *, estimand: str = "ate") -> np.ndarray:
    """``balance_table(X, T, w, estimand=estimand).max_abs_smd_after`` for every row ``w`` of
    ``weights`` (L, N) at once, without frequency weights: the column scaling and the SMD
    denominators (unweighted) are computed once, the weighted means as one product.

    Parameters
    ----------
    X : array-like of shape (N, p)
        Covariates (validated as :func:`balance_table` does).
    T : array-like of shape (N,)
        Binary treatment.
    weights : array-like of shape (L, N)
        Non-negative weights, one set per row, normalised per arm here.
    estimand : {"ate", "att", "overlap"}, default "ate"
        Chooses the SMD denominator.

    Returns
    -------
    ndarray of shape (L,)
        The largest absolute SMD after weighting, per row.

    Raises
    ------
    ValueError
        An invalid design; ``weights`` not (L, N), non-finite or negative; an unknown estimand;
        a row whose weights of an arm sum to zero.
    """
    from ._core.checks import check_design

    data = check_design(X, T, allow_constant=True)
    Wm = np.asarray(weights, dtype=np.float64)
    if Wm.ndim != 2 or Wm.shape[1] != data.n:
        raise ValueError(f"weights must have shape (L, {data.n}), got {Wm.shape}")
    if not np.all(np.isfinite(Wm)) or np.any(Wm < 0):
        raise ValueError("weights must be finite and non-negative")
    if estimand not in ("ate", "att", "overlap"):
        raise ValueError(f"estimand must be 'ate', 'att' or 'overlap', got {estimand!r}")
    Xa, _ = _scaled_columns(data.X)  # as balance_table: moments of the scaled columns
    Ta = data.T
    after, var_before = {}, {}
    for arm, code in _ARMS:
        sel = Ta == code
        x = Xa[sel]
        _, var_before[arm] = _wmean_var(x, np.full(x.shape[0], 1.0 / max(1, x.shape[0])))
        tot = Wm[:, sel].sum(1, keepdims=True)
        if np.any(tot <= 0):
            raise ValueError(f"the weights of the {arm} arm sum to zero")
        after[arm] = (Wm[:, sel] / tot) @ x
    sd, _ = _smd_denominator(var_before["treated"], var_before["control"], estimand)
    const = _constant_columns(Xa)
    sd = np.where(const, 0.0, sd)
    diff = np.where(const, 0.0, after["treated"] - after["control"])
    return np.array([float(np.max(np.abs(_smd(d, sd)))) for d in diff])


def balance_table(
    X,
    T,
    weights,
    feature_names: Optional[Sequence[str]] = None,
    *,
    estimand: str = "ate",
    threshold: float = 0.1,
    vr_threshold: float = 2.0,
    sample_weight=None,
) -> BalanceReport:
    """Balance of ``X`` between the arms of ``T`` before and after ``weights``.

    See the module docstring for every formula.

    Parameters
    ----------
    X : array-like of shape (N, p)
        Covariates (numpy, torch, pandas or lists; constant columns are allowed here).
    T : array-like of shape (N,)
        Binary treatment (bool, 0/1 or -1/+1).
    weights : array-like of shape (N,)
        Non-negative weights, normalised per arm here (so any positive scaling per arm gives the
        same report).
    feature_names : sequence of str, optional
        Default: the DataFrame columns or ``x0, x1, ...``.
    estimand : {"ate", "att", "overlap"}, default "ate"
        Chooses the SMD denominator (pooled SD for ate/overlap, treated SD for att).
    threshold : float, default 0.1
        |SMD after| above which a covariate is flagged.
    vr_threshold : float, default 2.0
        Variance ratios after weighting outside ``[1 / vr_threshold, vr_threshold]`` are flagged.
    sample_weight : array-like of shape (N,), optional
        Frequency weights ``s`` of the units: "before" is the s-weighted arm, and the moments and
        ESS are those of the rows replicated ``s_i`` times (module docstring); ``weights`` should
        then include ``s`` (as an estimator's ``weights_`` fitted with them do).

    Returns
    -------
    BalanceReport
        The report.

    Raises
    ------
    ValueError
        An invalid design (see :func:`cina_ext._core.checks.check_design`); ``feature_names`` of
        the wrong length; ``weights`` or ``sample_weight`` of the wrong length, non-finite or
        negative; an unknown estimand; an arm whose weights sum to zero.
    TypeError
        Non-numeric inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from cina_ext.diagnostics import balance_table
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> rep = balance_table(X, [1, 1, 0, 0], np.ones(4))
    >>> rep.n, round(rep.max_abs_smd_before, 4)
    ({'treated': 2, 'control': 2}, 2.8284)
    """
    from ._core.checks import _as_1d, _check_finite, check_design, check_sample_weight

    data = check_design(X, T, allow_constant=True)
    if feature_names is None:
        feature_names = data.feature_names
    feature_names = [str(f) for f in feature_names]
    if len(feature_names) != data.X.shape[1]:
        raise ValueError(f"feature_names has {len(feature_names)} names but X has {data.X.shape[1]} columns")
    w = _as_1d(weights, "weights").astype(np.float64)
    if w.shape[0] != data.n:
        raise ValueError(f"weights has length {w.shape[0]} but X has {data.n} rows (mismatched lengths)")
    _check_finite(w, "weights")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    if estimand not in ("ate", "att", "overlap"):
        raise ValueError(f"estimand must be 'ate', 'att' or 'overlap', got {estimand!r}")
    sw = None if sample_weight is None else check_sample_weight(sample_weight, data.n, index=data.index)

    # moments of the scaled columns; means and SDs are reported back in the original units
    Xa, col_scale = _scaled_columns(data.X)
    Ta = data.T
    stats = {}
    for arm, code in _ARMS:
        sel = Ta == code
        x = Xa[sel]
        n_a = x.shape[0]
        sa = None if sw is None else sw[sel]
        if sa is not None and not sa.sum() > 0:
            raise ValueError(f"the sample weights of the {arm} arm sum to zero")
        u = np.full(n_a, 1.0 / n_a) if sa is None else sa / sa.sum()
        wa = w[sel]
        tot = wa.sum()
        if tot <= 0:
            raise ValueError(f"the weights of the {arm} arm sum to zero")
        wn = wa / tot
        m0, v0 = _wmean_var(x, u, sa)
        m1, v1 = _wmean_var(x, wn, sa)
        stats[arm] = dict(mb=m0, vb=v0, ma=m1, va=v1, w=wa, n=n_a, s=sa)

    sd, sd_formula = _smd_denominator(stats["treated"]["vb"], stats["control"]["vb"], estimand)
    diff_b = stats["treated"]["mb"] - stats["control"]["mb"]
    diff_a = stats["treated"]["ma"] - stats["control"]["ma"]
    # a constant column is balanced by any weights: its moments are rounding noise, not an SMD
    const = _constant_columns(Xa)
    sd, diff_b, diff_a = (np.where(const, 0.0, a) for a in (sd, diff_b, diff_a))
    with np.errstate(divide="ignore", invalid="ignore"):
        vr_b = stats["treated"]["vb"] / stats["control"]["vb"]
        vr_a = stats["treated"]["va"] / stats["control"]["va"]

    return BalanceReport(
        feature_names=feature_names,
        estimand=estimand,
        sd_formula=sd_formula,
        threshold=float(threshold),
        vr_threshold=float(vr_threshold),
        mean_treated_before=stats["treated"]["mb"] * col_scale,
        mean_control_before=stats["control"]["mb"] * col_scale,
        mean_treated_after=stats["treated"]["ma"] * col_scale,
        mean_control_after=stats["control"]["ma"] * col_scale,
        sd_denominator=sd * col_scale,
        smd_before=_smd(diff_b, sd),
        smd_after=_smd(diff_a, sd),
        vr_before=vr_b,
        vr_after=vr_a,
        n={arm: int(stats[arm]["n"]) for arm, _ in _ARMS},
        ess={arm: _ess(stats[arm]["w"], stats[arm]["s"]) for arm, _ in _ARMS},
        weights={arm: weight_summary(stats[arm]["w"]) for arm, _ in _ARMS},
    )


def _pyplot(what: str):
    """``matplotlib.pyplot``, imported lazily, or an ImportError naming the ``[plot]`` extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            f"{what} needs matplotlib, an optional extra: pip install 'cina-ext[plot]' (or pip install matplotlib)"
        ) from exc
    return plt


def overlap_plot(
    values, T, *, sample_weight=None, ax=None, xlabel: str = "value", title: Optional[str] = None, bins=30
):
    """Overlap plot: the distribution of ``values`` (propensity scores or weights) in each arm.

    Two step histograms on shared bins, normalised to densities (s-weighted with
    ``sample_weight``); matplotlib is imported lazily (``pip install 'cina-ext[plot]'``).

    Parameters
    ----------
    values : array-like of shape (N,)
        Per-unit values (e.g. estimated propensity scores), finite.
    T : array-like of shape (N,)
        Binary treatment (bool, 0/1 or -1/+1).
    sample_weight : array-like of shape (N,), optional
        Frequency weights of the units.
    ax : matplotlib Axes, optional
        Draws on ``ax``; a new figure if None.
    xlabel : str, default "value"
        Label of the x axis.
    title : str, optional
        Title; default ``"Overlap"``.
    bins : int, default 30
        Number of shared bins.

    Returns
    -------
    matplotlib Axes
        The axes drawn on: one histogram (a patch container) per arm, labelled
        ``"treated (n=...)"`` and ``"control (n=...)"``.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    ValueError
        ``values`` of the wrong length or not finite; an invalid ``T``.
    """
    from ._core.checks import _as_1d, _binary_treatment, _check_finite

    plt = _pyplot("overlap_plot")
    v = _as_1d(values, "values").astype(np.float64)
    t = _binary_treatment(_as_1d(T, "T"))
    if v.shape != t.shape:
        raise ValueError(f"values has length {v.shape[0]} but T has {t.shape[0]} (mismatched lengths)")
    _check_finite(v, "values")
    s = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.5))
    edges = np.histogram_bin_edges(v, bins=bins)
    for arm, code, color in (("treated", 1, "tab:blue"), ("control", 0, "tab:red")):
        sel = t == code
        ax.hist(
            v[sel],
            bins=edges,
            weights=None if s is None else s[sel],
            density=True,
            histtype="step",
            lw=1.5,
            color=color,
            label=f"{arm} (n={int(sel.sum())})",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title or "Overlap")
    ax.legend(loc="upper center", fontsize="small")
    return ax


def love_plot(
    report: BalanceReport, ax=None, path=None, *, threshold: Optional[float] = None, title: Optional[str] = None
):
    """Love plot: |SMD| per covariate before (hollow) and after (filled) weighting.

    One row per covariate (largest imbalance before weighting at the top), a dashed vertical
    reference line at ``threshold`` (0.1 by default).  matplotlib is imported lazily; install it
    with ``pip install 'cina-ext[plot]'``.

    Parameters
    ----------
    report : BalanceReport
        The balance to draw.
    ax : matplotlib Axes, optional
        Draws on ``ax``; a new figure if None.
    path : str or path-like, optional
        Saves the figure there if given (a figure created here is then closed).
    threshold : float, optional
        The vertical reference line; default the report's threshold.
    title : str, optional
        Default ``"Covariate balance (<estimand>)"``.

    Returns
    -------
    matplotlib Axes
        The axes drawn on.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    """
    plt = _pyplot("love_plot")
    thr = report.threshold if threshold is None else float(threshold)
    names = list(report.feature_names)
    before = np.abs(report.smd_before)
    after = np.abs(report.smd_after)
    order = np.argsort(before)  # largest imbalance at the top
    ypos = np.arange(len(names))
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.0, max(2.5, 0.32 * len(names) + 1.2)))
    else:
        fig = ax.figure
    ax.scatter(before[order], ypos, facecolors="none", edgecolors="tab:red", label="before", zorder=3)
    ax.scatter(after[order], ypos, color="tab:blue", label="after", zorder=3)
    for y, b, a in zip(ypos, before[order], after[order]):
        ax.plot([b, a], [y, y], color="0.7", lw=0.8, zorder=1)
    ax.axvline(thr, color="0.3", ls="--", lw=1, label=f"|SMD| = {thr:g}")
    ax.set_yticks(ypos)
    ax.set_yticklabels([names[i] for i in order])
    ax.set_xlabel(f"|standardised mean difference| ({report.sd_formula})")
    ax.set_xlim(left=0)
    ax.set_title(title or f"Covariate balance ({report.estimand})")
    ax.legend(loc="lower right", fontsize="small")
    if path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        if own:
            plt.close(fig)
    return ax
