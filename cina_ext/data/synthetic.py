"""Synthetic data-generating processes with known treatment effects.

Two families, both deterministic given ``seed`` (NumPy ``default_rng`` / ``SeedSequence``):

* :func:`make_setoguchi` -- the Setoguchi et al. (2008) / Lee, Lessler & Stuart (2010) design
  (ten covariates, seven propensity scenarios A-G, a linear outcome model), with optional
  per-dataset resampling of the coefficients ("varying mechanisms"), a shift of their
  distribution (out-of-distribution) and heterogeneous effects.
* :func:`make_er_dataset` / :class:`ERSCM` -- random Erdos-Renyi DAGs with nonlinear
  additive-noise structural equations, a binary treatment node and an outcome node; the truth
  comes from intervening on the structural causal model.

:func:`cina_ext.data.families.sample_datasets` draws many datasets from either family,
in-distribution or out-of-distribution. Everything returns a :class:`CausalDataset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "CausalDataset",
    "SETOGUCHI_SCENARIOS",
    "SETOGUCHI_BETA",
    "SETOGUCHI_ALPHA",
    "SETOGUCHI_GAMMA",
    "SETOGUCHI_ETA",
    "setoguchi_scenario_terms",
    "make_setoguchi",
    "ERSCM",
    "make_er_scm",
    "make_er_dataset",
    "MECHANISMS_ID",
    "MECHANISMS_OOD",
]

SeedLike = Union[int, np.integer, np.random.SeedSequence, None]


# ---------------------------------------------------------------------------------------------
# The dataset container
# ---------------------------------------------------------------------------------------------
@dataclass
class CausalDataset:
    """One observational dataset, with its truth when known.

    Parameters are the fields below (``X``, ``T``, ``Y`` required); they are converted and checked
    on construction.

    Attributes
    ----------
    X : ndarray of shape (N, d)
        float64 covariates.
    T : ndarray of shape (N,)
        int64 treatment in {0, 1}.
    Y : ndarray of shape (N,)
        float64 outcome.
    ate : float or None
        Sample ATE ``mean(mu1 - mu0)`` when known, else ``None``.
    att : float or None
        Sample ATT ``mean(mu1 - mu0 | T = 1)`` (or a benchmark value, e.g. LaLonde), else ``None``.
    feature_names : list of str
        The covariate names (length d); default ``X1, ..., Xd``.
    name : str
        A short identifier.
    mu0, mu1 : ndarray of shape (N,) or None
        Noiseless potential-outcome means when known (``mu1 - mu0`` is the unit's effect).
    propensity : ndarray of shape (N,) or None
        True propensity score when known.
    meta : dict
        Free-form provenance (seed, coefficients, graph, source files, ...).
    n, d, n_treated, n_control : int
        Sizes (properties).
    ite : ndarray of shape (N,) or None
        Unit-level effects ``mu1 - mu0`` (property; None when unknown).

    Raises
    ------
    ValueError
        X not 2-D; X, T, Y (or mu0, mu1, propensity) of different lengths; T not binary 0/1;
        ``feature_names`` not one per column.
    """

    X: np.ndarray
    T: np.ndarray
    Y: np.ndarray
    ate: Optional[float] = None
    att: Optional[float] = None
    feature_names: List[str] = field(default_factory=list)
    name: str = "dataset"
    mu0: Optional[np.ndarray] = None
    mu1: Optional[np.ndarray] = None
    propensity: Optional[np.ndarray] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.X = np.ascontiguousarray(np.asarray(self.X, dtype=np.float64))
        if self.X.ndim != 2:
            raise ValueError(f"X must be 2-D (N x d), got shape {self.X.shape}")
        n = self.X.shape[0]
        self.T = np.asarray(self.T).astype(np.int64).reshape(-1)
        self.Y = np.asarray(self.Y, dtype=np.float64).reshape(-1)
        if self.T.shape[0] != n or self.Y.shape[0] != n:
            raise ValueError(f"X, T, Y lengths differ: {n}, {self.T.shape[0]}, {self.Y.shape[0]}")
        if not np.isin(self.T, (0, 1)).all():
            raise ValueError("T must be binary 0/1")
        for key in ("mu0", "mu1", "propensity"):
            val = getattr(self, key)
            if val is not None:
                val = np.asarray(val, dtype=np.float64).reshape(-1)
                if val.shape[0] != n:
                    raise ValueError(f"{key} has length {val.shape[0]}, expected {n}")
                setattr(self, key, val)
        if not self.feature_names:
            self.feature_names = [f"X{j + 1}" for j in range(self.X.shape[1])]
        self.feature_names = [str(c) for c in self.feature_names]
        if len(self.feature_names) != self.X.shape[1]:
            raise ValueError("feature_names must have one name per column of X")
        if self.ate is not None:
            self.ate = float(self.ate)
        if self.att is not None:
            self.att = float(self.att)

    # -- convenience -------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_treated(self) -> int:
        return int(self.T.sum())

    @property
    def n_control(self) -> int:
        return self.n - self.n_treated

    @property
    def ite(self) -> Optional[np.ndarray]:
        """Unit-level effects ``mu1 - mu0`` (None when unknown)."""
        if self.mu0 is None or self.mu1 is None:
            return None
        return self.mu1 - self.mu0

    def __len__(self) -> int:
        return self.n

    def truth(self, estimand: str = "ate") -> Optional[float]:
        """The known answer for ``estimand`` ("ate", "att", "atc" or "overlap"), or None.

        "overlap" (or "ato") is the overlap-weighted effect sum e(1-e) tau / sum e(1-e) over the
        sample, available when the true propensity ``e`` and the unit effects are known.

        Parameters
        ----------
        estimand : str, default "ate"
            "ate", "att", "atc", "overlap" or "ato" (case-insensitive).

        Returns
        -------
        float or None
            The truth, None when unknown.

        Raises
        ------
        ValueError
            An unknown estimand.
        """
        est = estimand.lower()
        if est == "ate":
            return self.ate
        if est == "att":
            return self.att
        ite = self.ite
        if est == "atc":
            return None if ite is None or self.n_control == 0 else float(ite[self.T == 0].mean())
        if est in ("overlap", "ato"):
            if ite is None or self.propensity is None:
                return None
            w = self.propensity * (1.0 - self.propensity)
            return float(np.sum(w * ite) / np.sum(w))
        raise ValueError(f"unknown estimand {estimand!r}; expected 'ate', 'att', 'atc' or 'overlap'")

    def to_frame(self):
        """A pandas DataFrame: the covariates (by feature name), then "treatment" and "outcome".

        Returns
        -------
        pandas.DataFrame
            One row per unit.
        """
        import pandas as pd

        df = pd.DataFrame(self.X, columns=list(self.feature_names))
        df["treatment"] = self.T
        df["outcome"] = self.Y
        return df

    def subsample(self, n: int, seed: SeedLike = 0, *, keep_treated: bool = False) -> "CausalDataset":
        """A random subset of ``n`` units (without replacement), deterministic given ``seed``.

        The truth is recomputed from ``mu0``/``mu1`` when they are known; otherwise a benchmark
        ATT is kept only with ``keep_treated=True`` (all treated kept, controls subsampled: the
        treated population, hence the ATT, is unchanged) and the ATE is dropped.

        Parameters
        ----------
        n : int
            Size of the subset; ``n >= N`` returns the dataset itself.
        seed : int, SeedSequence or None, default 0
            Seed of the draw.
        keep_treated : bool, default False
            Keep every treated unit and subsample the controls.

        Returns
        -------
        CausalDataset
            The subset (``meta["subsample"]`` records the draw).

        Raises
        ------
        ValueError
            ``keep_treated`` with ``n`` leaving fewer than 2 controls.
        """
        n = int(n)
        if n >= self.n:
            return self
        rng = np.random.default_rng(seed)
        if keep_treated:
            treated = np.flatnonzero(self.T == 1)
            controls = np.flatnonzero(self.T == 0)
            n_ctrl = n - treated.size
            if n_ctrl < 2:
                raise ValueError(f"n={n} leaves fewer than 2 controls next to {treated.size} treated units")
            idx = np.sort(np.concatenate([treated, rng.choice(controls, size=n_ctrl, replace=False)]))
        else:
            idx = np.sort(rng.choice(self.n, size=n, replace=False))
        sub = replace(
            self,
            X=self.X[idx],
            T=self.T[idx],
            Y=self.Y[idx],
            mu0=None if self.mu0 is None else self.mu0[idx],
            mu1=None if self.mu1 is None else self.mu1[idx],
            propensity=None if self.propensity is None else self.propensity[idx],
            meta={
                **self.meta,
                "subsample": {
                    "n": n,
                    "seed": None if seed is None else str(seed),
                    "keep_treated": keep_treated,
                    "parent_n": self.n,
                },
            },
        )
        ite = sub.ite
        if ite is not None:
            sub.ate = float(ite.mean())
            sub.att = float(ite[sub.T == 1].mean()) if sub.n_treated else None
        elif not keep_treated:
            sub.ate = None
            sub.att = None
        else:
            sub.ate = None
        return sub

    def __repr__(self) -> str:
        def _f(v):
            return "None" if v is None else f"{v:.4g}"

        return (
            f"CausalDataset(name={self.name!r}, n={self.n}, d={self.d}, treated={self.n_treated}, "
            f"ate={_f(self.ate)}, att={_f(self.att)})"
        )


def _truth(mu0: np.ndarray, mu1: np.ndarray, T: np.ndarray) -> Tuple[float, Optional[float]]:
    ite = mu1 - mu0
    ate = float(ite.mean())
    att = float(ite[T == 1].mean()) if np.any(T == 1) else None
    return ate, att


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _intercept_for_mean(score: np.ndarray, share: float, clip: float = 0.0) -> float:
    """c with mean(clip(sigmoid(c + score), clip, 1 - clip)) = share (bisection: increasing in c)."""
    lo, hi = -50.0 - float(score.max()), 50.0 - float(score.min())
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.clip(_sigmoid(mid + score), clip, 1.0 - clip).mean() < share:
            lo = mid
        else:
            hi = mid
    return float(0.5 * (lo + hi))


# ---------------------------------------------------------------------------------------------
# Setoguchi / Lee-Lessler-Stuart
# ---------------------------------------------------------------------------------------------
SETOGUCHI_SCENARIOS = ("A", "B", "C", "D", "E", "F", "G")
#: propensity coefficients b0..b7 (intercept, W1..W7)
SETOGUCHI_BETA = np.array([0.0, 0.8, -0.25, 0.6, -0.4, -0.8, -0.5, 0.7])
#: outcome coefficients a0..a7 (intercept, W1, W2, W3, W4, W8, W9, W10)
SETOGUCHI_ALPHA = np.array([-3.85, 0.3, -0.36, -0.73, -0.2, 0.71, -0.19, 0.26])
#: the constant effect of Lee, Lessler & Stuart (2010)
SETOGUCHI_GAMMA = -0.4
#: effect-modification coefficients for ``heterogeneous=True`` on (W1 - 1/2, W2, W4, W2^2 - 1)
SETOGUCHI_ETA = np.array([0.5, -0.4, -0.3, -0.2])

_SETO_BINARY = (0, 2, 4, 5, 7, 8)  # W1, W3, W5, W6, W8, W9 (0-based)
_SETO_CORR = ((4, 0, 0.2), (5, 1, 0.9), (7, 2, 0.2), (8, 3, 0.9))  # (child, parent, rho) on latents

# Scenario terms: (multiplier, coefficient index k of b_k, covariate indices 1-based).
# A quadratic term is a pair (j, j); an interaction (j, l).
_NONLIN_MILD = ((1.0, 2, (2, 2)),)
_NONLIN_MOD = ((1.0, 2, (2, 2)), (1.0, 4, (4, 4)), (1.0, 7, (7, 7)))
_NONADD_MILD = ((0.5, 1, (1, 3)), (0.7, 2, (2, 4)), (0.5, 4, (4, 5)), (0.5, 5, (5, 6)))
_NONADD_MOD = (
    (0.5, 1, (1, 3)),
    (0.7, 2, (2, 4)),
    (0.5, 3, (3, 5)),
    (0.7, 4, (4, 6)),
    (0.5, 5, (5, 7)),
    (0.5, 1, (1, 6)),
    (0.7, 2, (2, 3)),
    (0.5, 3, (3, 4)),
    (0.5, 4, (4, 5)),
    (0.5, 5, (5, 6)),
)
_SETO_TERMS = {
    "A": (),
    "B": _NONLIN_MILD,
    "C": _NONLIN_MOD,
    "D": _NONADD_MILD,
    "E": _NONLIN_MILD + _NONADD_MILD,
    "F": _NONADD_MOD,
    "G": _NONLIN_MOD + _NONADD_MOD,
}


def setoguchi_scenario_terms(scenario: str) -> List[Tuple[float, int, Tuple[int, int]]]:
    """The extra logit terms of a scenario as ``(multiplier, k, (j, l))`` meaning
    ``multiplier * b_k * W_j * W_l`` (1-based covariate indices).

    Parameters
    ----------
    scenario : str
        One of "A".."G" (case-insensitive).

    Returns
    -------
    list of tuple
        ``(multiplier, k, (j, l))`` per term.

    Raises
    ------
    ValueError
        An unknown scenario.
    """
    s = str(scenario).upper()
    if s not in _SETO_TERMS:
        raise ValueError(f"scenario must be one of {SETOGUCHI_SCENARIOS}, got {scenario!r}")
    return list(_SETO_TERMS[s])


def make_setoguchi(
    n: int,
    scenario: str = "A",
    *,
    seed: SeedLike = 0,
    gamma: float = SETOGUCHI_GAMMA,
    varying: bool = False,
    shift: float = 0.0,
    heterogeneous: bool = False,
    noise_sd: float = 1.0,
    coef_sd: float = 0.3,
    treated_share: Optional[float] = None,
) -> CausalDataset:
    """One dataset of the Setoguchi et al. (2008) / Lee, Lessler & Stuart (2010) design.

    Covariates: latent W1..W10 ~ N(0, 1), independent except corr(W5, W1) = 0.2,
    corr(W6, W2) = 0.9, corr(W8, W3) = 0.2, corr(W9, W4) = 0.9; then W1, W3, W5, W6, W8, W9 are
    dichotomised as 1[W > 0] (at the population mean 0, so units stay i.i.d.; the original code
    cuts at the sample mean, which is the same up to O(1/sqrt(N))).

    Propensity: logit e(W) = b0 + b1 W1 + ... + b7 W7 + scenario terms, b = SETOGUCHI_BETA
    = (0, 0.8, -0.25, 0.6, -0.4, -0.8, -0.5, 0.7); T ~ Bernoulli(e(W)). Scenario terms:

    * A additivity and linearity: none
    * B mild non-linearity: + b2 W2^2
    * C moderate non-linearity: + b2 W2^2 + b4 W4^2 + b7 W7^2
    * D mild non-additivity: + 0.5 b1 W1W3 + 0.7 b2 W2W4 + 0.5 b4 W4W5 + 0.5 b5 W5W6
    * E mild non-additivity and non-linearity: D's terms + b2 W2^2
    * F moderate non-additivity: + 0.5 b1 W1W3 + 0.7 b2 W2W4 + 0.5 b3 W3W5 + 0.7 b4 W4W6
      + 0.5 b5 W5W7 + 0.5 b1 W1W6 + 0.7 b2 W2W3 + 0.5 b3 W3W4 + 0.5 b4 W4W5 + 0.5 b5 W5W6
    * G moderate non-additivity and non-linearity: F's terms + b2 W2^2 + b4 W4^2 + b7 W7^2

    Outcome: mu0 = a0 + a1 W1 + a2 W2 + a3 W3 + a4 W4 + a5 W8 + a6 W9 + a7 W10 with
    a = SETOGUCHI_ALPHA = (-3.85, 0.3, -0.36, -0.73, -0.2, 0.71, -0.19, 0.26); mu1 = mu0 + tau(W);
    Y = mu_T + noise_sd * N(0, 1). tau(W) = gamma (default -0.4, Lee et al.), or with
    ``heterogeneous=True`` tau(W) = gamma + 0.5 (W1 - 1/2) - 0.4 W2 - 0.3 W4 - 0.2 (W2^2 - 1)
    (population mean gamma; the signs follow the propensity coefficients, so the effect is larger
    where treatment is likelier and the ATT exceeds the ATE).

    Varying mechanisms: with ``varying=True`` every coefficient c (b0..b7, a0..a7, gamma and the
    effect modifiers) is redrawn per dataset as c + coef_sd * (z + shift * sign(c)), z ~ N(0, 1)
    from the dataset's seed (sign(b0) = sign(a0) := 0: the intercepts are not shifted); with
    ``varying=False`` z = 0, so ``shift`` alone moves the mechanism deterministically. ``shift > 0``
    pushes every coefficient away from zero (stronger confounding, weaker overlap, larger
    effect): the out-of-distribution setting.

    Everything is deterministic given ``seed``.

    Parameters
    ----------
    n : int
        Number of units, >= 2.
    scenario : str, default "A"
        Propensity scenario "A".."G".
    seed : int, SeedSequence or None, default 0
        Seed (deterministic given it).
    gamma : float, default SETOGUCHI_GAMMA (-0.4)
        The constant effect (population mean of the effect with ``heterogeneous``).
    varying : bool, default False
        Redraw every coefficient per dataset.
    shift : float, default 0.0
        Push every coefficient away from zero (out-of-distribution).
    heterogeneous : bool, default False
        Effect modification on (W1 - 1/2, W2, W4, W2^2 - 1).
    noise_sd : float, default 1.0
        Outcome noise standard deviation.
    coef_sd : float, default 0.3
        Scale of the coefficient draws and of ``shift``.
    treated_share : float, optional
        Target share of treated units in (0, 1): the intercept b0 is replaced by the value, found
        by bisection, at which the sample mean of the propensity equals it (None: b0 as above).

    Returns
    -------
    CausalDataset
        X = (W1..W10), the sample truth ate = mean(mu1 - mu0) and att, mu0/mu1, the true
        propensity, and ``meta`` holding the coefficients used.

    Raises
    ------
    ValueError
        ``n < 2``, an unknown scenario or ``treated_share`` outside (0, 1).

    Examples
    --------
    >>> from cina_ext.data import make_setoguchi
    >>> ds = make_setoguchi(100, "G", seed=1)
    >>> ds.X.shape, round(ds.ate, 6)
    ((100, 10), -0.4)
    """
    scenario = str(scenario).upper()
    terms = setoguchi_scenario_terms(scenario)
    n = int(n)
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if treated_share is not None and not 0.0 < float(treated_share) < 1.0:
        raise ValueError(f"treated_share must be in (0, 1), got {treated_share!r}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    ss_cov, ss_coef, ss_treat, ss_noise = ss.spawn(4)

    # covariates (latent normals, correlations, dichotomisation)
    rng = np.random.default_rng(ss_cov)
    Z = rng.standard_normal((n, 10))
    for child, parent, rho in _SETO_CORR:
        Z[:, child] = rho * Z[:, parent] + np.sqrt(1.0 - rho * rho) * Z[:, child]
    W = Z.copy()
    for j in _SETO_BINARY:
        W[:, j] = (Z[:, j] > 0.0).astype(np.float64)

    # coefficients (fixed, or redrawn per dataset)
    base = np.concatenate([SETOGUCHI_BETA, SETOGUCHI_ALPHA, [float(gamma)], SETOGUCHI_ETA])
    if varying:
        z = np.random.default_rng(ss_coef).standard_normal(base.size)
    else:
        z = np.zeros(base.size)
    # shift pushes every coefficient away from zero (stronger confounding, weaker overlap); the
    # intercepts b0 = 0 (and a0, which only moves the outcome level) keep their sign convention.
    direction = np.sign(base)
    direction[[0, 8]] = 0.0  # b0, a0
    coef = base + float(coef_sd) * (z + float(shift) * direction)
    b, a, g, eta = coef[:8], coef[8:16], float(coef[16]), coef[17:21]

    def Wc(j: int) -> np.ndarray:  # 1-based access
        return W[:, j - 1]

    logit = b[0] + W[:, :7] @ b[1:8]
    for mult, k, (j, l) in terms:
        logit = logit + mult * b[k] * Wc(j) * Wc(l)
    if treated_share is not None:
        b0 = _intercept_for_mean(logit - b[0], float(treated_share))
        logit = logit - b[0] + b0
        b[0] = b0
    e = _sigmoid(logit)
    T = (np.random.default_rng(ss_treat).random(n) < e).astype(np.int64)

    mu0 = a[0] + a[1] * Wc(1) + a[2] * Wc(2) + a[3] * Wc(3) + a[4] * Wc(4) + a[5] * Wc(8) + a[6] * Wc(9) + a[7] * Wc(10)
    if heterogeneous:
        tau = g + eta[0] * (Wc(1) - 0.5) + eta[1] * Wc(2) + eta[2] * Wc(4) + eta[3] * (Wc(2) ** 2 - 1.0)
    else:
        tau = np.full(n, g)
    mu1 = mu0 + tau
    Y = np.where(T == 1, mu1, mu0) + float(noise_sd) * np.random.default_rng(ss_noise).standard_normal(n)

    ate, att = _truth(mu0, mu1, T)
    meta = {
        "family": "setoguchi",
        "scenario": scenario,
        "seed": _seed_repr(seed),
        "varying": bool(varying),
        "shift": float(shift),
        "heterogeneous": bool(heterogeneous),
        "noise_sd": float(noise_sd),
        "coef_sd": float(coef_sd),
        "treated_share": None if treated_share is None else float(treated_share),
        "coefficients": {
            "beta": b.tolist(),
            "alpha": a.tolist(),
            "gamma": g,
            "eta": eta.tolist() if heterogeneous else None,
        },
    }
    return CausalDataset(
        X=W,
        T=T,
        Y=Y,
        ate=ate,
        att=att,
        feature_names=[f"W{j}" for j in range(1, 11)],
        name=f"setoguchi-{scenario}",
        mu0=mu0,
        mu1=mu1,
        propensity=e,
        meta=meta,
    )


def _seed_repr(seed: SeedLike):
    if isinstance(seed, np.random.SeedSequence):
        return {"entropy": str(seed.entropy), "spawn_key": list(seed.spawn_key)}
    return None if seed is None else int(seed)


# ---------------------------------------------------------------------------------------------
# Random Erdos-Renyi structural causal models
# ---------------------------------------------------------------------------------------------
#: mechanisms of the training prior (in-distribution)
MECHANISMS_ID = ("linear", "tanh", "sin", "quadratic")
#: mechanisms held out for out-of-distribution tests
MECHANISMS_OOD = ("cubic", "abs", "softplus", "gauss")
_NOISES = ("gaussian", "laplace", "uniform", "student_t")
#: degrees of freedom of the "student_t" noise (heavy tails; finite variance needs df > 2)
STUDENT_T_DF = 3.0


def _mech(name: str, z: np.ndarray) -> np.ndarray:
    if name == "linear":
        return z
    if name == "tanh":
        return np.tanh(1.5 * z)
    if name == "sin":
        return np.sin(2.0 * z)
    if name == "quadratic":
        return z * z
    if name == "cubic":
        zc = np.clip(z, -3.0, 3.0)  # bounded: unclipped cubes of heavy-tailed inputs explode
        return zc**3
    if name == "abs":
        return np.abs(z)
    if name == "softplus":
        return np.logaddexp(0.0, 2.0 * z)
    if name == "gauss":
        return np.exp(-z * z)
    raise ValueError(f"unknown mechanism {name!r}")


def _resolve_mechanisms(mechanism) -> Tuple[str, ...]:
    if isinstance(mechanism, str):
        if mechanism in ("mixed", "id"):
            return MECHANISMS_ID
        if mechanism == "ood":
            return MECHANISMS_OOD
        if mechanism == "all":
            return MECHANISMS_ID + MECHANISMS_OOD
        mechanism = (mechanism,)
    names = tuple(str(m) for m in mechanism)
    known = MECHANISMS_ID + MECHANISMS_OOD
    bad = [m for m in names if m not in known]
    if bad or not names:
        raise ValueError(f"unknown mechanism(s) {bad}; choose from {known} or 'mixed', 'ood', 'all'")
    return names


def _draw_noise(rng: np.random.Generator, kind: str, size) -> np.ndarray:
    """Unit-variance, zero-mean noise of the given kind ("student_t": t with STUDENT_T_DF degrees
    of freedom, rescaled to unit variance: heavy tails)."""
    if kind == "gaussian":
        return rng.standard_normal(size)
    if kind == "laplace":
        return rng.laplace(0.0, 1.0 / np.sqrt(2.0), size)
    if kind == "uniform":
        return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), size)
    if kind == "student_t":
        return rng.standard_t(STUDENT_T_DF, size) * np.sqrt((STUDENT_T_DF - 2.0) / STUDENT_T_DF)
    raise ValueError(f"unknown noise {kind!r}; choose from {_NOISES}")


_NODE_CLIP = 10.0


class _MechanismColumns:
    """``_mech(m, X[:, j])`` for the columns of ``X`` the additive mechanisms read, each computed
    once per mechanism and column, when first asked for.  A column's value must be final by then:
    in :meth:`ERSCM.propagate` a node is computed (and dichotomised) before any child reads it.
    Every edge of a graph reads a parent's column, so this does one evaluation per column and
    mechanism instead of one per edge (a 256-covariate graph has thousands of edges)."""

    def __init__(self, X: np.ndarray):
        self.X = X
        self._values: Dict[str, np.ndarray] = {}
        self._done: Dict[str, np.ndarray] = {}

    def columns(self, m: str, cols: np.ndarray) -> np.ndarray:
        if m not in self._values:
            self._values[m] = np.empty(self.X.shape, order="F")
            self._done[m] = np.zeros(self.X.shape[1], dtype=bool)
        values, done = self._values[m], self._done[m]
        todo = cols[~done[cols]]  # distinct: a node's parents are
        if todo.size:
            values[:, todo] = _mech(m, self.X[:, todo])
            done[todo] = True
        return values[:, cols]


class _AdditiveFn:
    """f(x) = (sum_k w_k g_k(x[:, k]) - loc) / scale over parent columns (constants frozen)."""

    def __init__(self, parents: Sequence[int], weights: np.ndarray, mechs: Sequence[str]):
        self.parents = [int(p) for p in parents]
        self.weights = np.asarray(weights, dtype=np.float64)
        self.mechs = list(mechs)
        self.loc = 0.0
        self.scale = 1.0
        # the parents grouped by mechanism: one call of each mechanism on its parents' columns and
        # one product with their weights, instead of a call per parent (a node of a 256-covariate
        # graph has dozens of parents, and the reference sample of the construction 4096 units)
        self._groups = [
            (
                m,
                np.asarray([p for p, mm in zip(self.parents, self.mechs) if mm == m], dtype=np.intp),
                np.asarray([w for w, mm in zip(self.weights, self.mechs) if mm == m]),
            )
            for m in dict.fromkeys(self.mechs)
        ]

    def raw(self, mech: _MechanismColumns) -> np.ndarray:
        """``sum_k w_k g_k(x[:, k])`` on the columns of ``mech.X`` (zeros without parents)."""
        out = np.zeros(mech.X.shape[0])
        for m, cols, w in self._groups:
            out += mech.columns(m, cols) @ w
        return out

    def freeze_on(self, r: np.ndarray) -> None:
        """Freeze the standardisation on ``r = self.raw(...)`` of the reference sample."""
        self.loc = float(r.mean())
        sd = float(r.std())
        self.scale = sd if sd > 1e-8 else 1.0

    def standardised(self, r: np.ndarray) -> np.ndarray:
        """f(x) from ``r = self.raw(...)``."""
        # bounded at _NODE_CLIP reference sds: in deep graphs (dozens of covariates) the quadratic
        # and exponential-type mechanisms otherwise compound a rare outlier into an overflow
        return np.clip((r - self.loc) / self.scale, -_NODE_CLIP, _NODE_CLIP)

    def describe(self) -> Dict[str, Any]:
        return {"parents": list(self.parents), "weights": self.weights.tolist(), "mechanisms": list(self.mechs)}


class ERSCM:
    """A random Erdos-Renyi structural causal model with a binary treatment and an outcome.

    Construction (all from ``seed``):

    * A random topological order of the d covariate nodes; the treatment node T is inserted at a
      random position p in [max(1, d // 2), d]; the outcome node Y is last.
    * Edges i -> j between covariates (i before j) with probability ``density``. T gets each
      covariate before it as a parent with probability ``density`` (at least one). Y gets each
      covariate as a parent with probability ``density``, always at least one parent of T (so
      there is confounding), and always T itself. T has no child other than Y.
    * Covariate j: x_j = (f_j(parents) + noise * eps_j) / sqrt(1 + noise^2), where f_j is an
      additive random mechanism sum_k w_jk g_jk(x_k) (g from ``mechanism``; |w| ~ U(0.5, 2) + shift,
      random sign) standardised with constants frozen on an internal reference sample; roots are
      pure noise. eps_j has unit variance (gaussian / laplace / uniform).
    * Treatment: e(x) = clip(sigmoid(c + s * f_T(parents)), clip, 1 - clip) with c ~ U(-0.5, 0.5),
      s ~ U(0.5, 1.5) * (1 + shift / 2) * ``assignment_strength``; T = 1[u_T < e(x)] with the
      unit's own u_T ~ U(0, 1); ``clip`` is ``propensity_clip`` (default 0.05). With
      ``treated_share`` set, c is instead solved by bisection so that the mean propensity over the
      reference sample equals it (up to the clipping).
    * Binary covariates (``binary_share > 0``): round(binary_share * d) random covariate nodes
      are dichotomised, x_j = 1[x_j > q_j] with q_j ~ U(-1, 1), before their children, T and Y
      see them (the adjustment set stays sufficient: the binary value is the node).
    * Outcome: Y = m(x) + T * tau(x) + noise * eps_Y, m a standardised additive mechanism of Y's
      covariate parents, tau(x) = tau0 + h * f_tau(x) with tau0 = +-U(0.5, 1.5) + shift,
      h ~ U(0, 0.5) * (1 + shift), f_tau a standardised mechanism of a random non-empty subset
      of Y's covariate parents (effect modifiers).

    Why no descendants of T among the covariates: a post-treatment variable (mediator, collider
    or any descendant of T) in the adjustment set biases the total effect. By construction the
    only child of T is Y and Y is a sink, so every covariate is a non-descendant of T and all
    parents of T are covariates: the full covariate set satisfies the back-door criterion, and
    the total effect of T on Y is identified by adjusting for X.

    Truth: :meth:`propagate` recomputes every node from the units' own noise, optionally under
    do(T = t). Covariates are unaffected by do(T) and the noise is additive, so
    Y_i(1) - Y_i(0) = tau(x_i) = mu1_i - mu0_i exactly, and the sample ATE is exact.

    Parameters
    ----------
    d : int, default 10
        Number of covariates, >= 1.
    seed : int, SeedSequence or None, default 0
        Seed of the structure and the mechanisms.
    density : float, default 0.3
        Edge probability, in [0, 1].
    mechanism : str or sequence of str, default "mixed"
        "mixed" (= "id", MECHANISMS_ID), "ood" (MECHANISMS_OOD), "all", one name or a list.
    noise : float, default 0.5
        Noise-to-signal standard-deviation ratio of every structural equation, >= 0.
    noise_dist : {"gaussian", "laplace", "uniform", "student_t"}, default "gaussian"
        Distribution of the (unit-variance) noise; "student_t" has heavy tails (df STUDENT_T_DF).
    shift : float, default 0.0
        Shift of the mechanism parameters (out-of-distribution).
    treated_share : float, optional
        Target mean propensity in (0, 1) (None: the random intercept c of the prior).
    binary_share : float, default 0.0
        Share of the covariates that are binary, in [0, 1].
    assignment_strength : float, default 1.0
        Multiplier of the treatment-assignment slope s, > 0 (larger: poorer overlap).
    propensity_clip : float, default 0.05
        The propensity is clipped to [clip, 1 - clip], with 0 <= clip < 0.5.
    n_reference : int, default 4096
        Size of the internal reference sample on which the standardisation constants are frozen.

    Attributes
    ----------
    feature_names : list of str
        ``X1, ..., Xd`` (property).
    t_pos : int
        Position of T in the topological order.
    tau0, tau_het : float
        Effect intercept and heterogeneity scale.
    column_order : ndarray
        The permutation from topological order to user columns.

    Raises
    ------
    ValueError
        ``d < 1``; ``density`` outside [0, 1]; ``noise < 0``; an unknown ``noise_dist`` or
        mechanism; ``treated_share`` outside (0, 1); ``binary_share`` outside [0, 1];
        ``assignment_strength <= 0``; ``propensity_clip`` outside [0, 0.5).

    Notes
    -----
    The options ``treated_share``, ``binary_share``, ``assignment_strength`` and
    ``propensity_clip`` at their defaults leave every draw as it was without them (the extra
    randomness of ``binary_share`` comes from a further child of ``seed``).
    """

    def __init__(
        self,
        d: int = 10,
        *,
        seed: SeedLike = 0,
        density: float = 0.3,
        mechanism: Union[str, Sequence[str]] = "mixed",
        noise: float = 0.5,
        noise_dist: str = "gaussian",
        shift: float = 0.0,
        treated_share: Optional[float] = None,
        binary_share: float = 0.0,
        assignment_strength: float = 1.0,
        propensity_clip: float = 0.05,
        n_reference: int = 4096,
    ):
        d = int(d)
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        if not 0.0 <= float(density) <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {density}")
        if float(noise) < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if noise_dist not in _NOISES:
            raise ValueError(f"noise_dist must be one of {_NOISES}, got {noise_dist!r}")
        if treated_share is not None and not 0.0 < float(treated_share) < 1.0:
            raise ValueError(f"treated_share must be in (0, 1), got {treated_share!r}")
        if not 0.0 <= float(binary_share) <= 1.0:
            raise ValueError(f"binary_share must be in [0, 1], got {binary_share!r}")
        if not float(assignment_strength) > 0.0:
            raise ValueError(f"assignment_strength must be > 0, got {assignment_strength!r}")
        if not 0.0 <= float(propensity_clip) < 0.5:
            raise ValueError(f"propensity_clip must be in [0, 0.5), got {propensity_clip!r}")
        self.d = d
        self.treated_share = None if treated_share is None else float(treated_share)
        self.binary_share = float(binary_share)
        self.assignment_strength = float(assignment_strength)
        self.propensity_clip = float(propensity_clip)
        self.density = float(density)
        self.mechanisms = _resolve_mechanisms(mechanism)
        self.noise = float(noise)
        self.noise_dist = noise_dist
        self.shift = float(shift)
        self.seed = _seed_repr(seed)
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        ss_struct, ss_ref = ss.spawn(2)
        rng = np.random.default_rng(ss_struct)
        shift_ = self.shift

        # Nodes are covariates 0..d-1 in topological order; T sits after the first `t_pos`.
        self.t_pos = int(rng.integers(max(1, d // 2), d + 1))

        def weights(k: int) -> np.ndarray:
            mag = rng.uniform(0.5, 2.0, size=k) + shift_
            return mag * rng.choice((-1.0, 1.0), size=k)

        def mechs(k: int) -> List[str]:
            return [str(m) for m in rng.choice(self.mechanisms, size=k)]

        self.cov_fns: List[_AdditiveFn] = []
        for j in range(d):
            pa = [i for i in range(j) if rng.random() < self.density]
            self.cov_fns.append(_AdditiveFn(pa, weights(len(pa)), mechs(len(pa))))
        t_pa = [i for i in range(self.t_pos) if rng.random() < self.density]
        if not t_pa:
            t_pa = [int(rng.integers(0, self.t_pos))]
        self.t_fn = _AdditiveFn(t_pa, weights(len(t_pa)), mechs(len(t_pa)))
        self.t_intercept = float(rng.uniform(-0.5, 0.5))
        self.t_scale = float(rng.uniform(0.5, 1.5) * (1.0 + shift_ / 2.0)) * self.assignment_strength
        y_pa = [i for i in range(d) if rng.random() < self.density]
        conf = int(rng.choice(t_pa))
        if conf not in y_pa:
            y_pa = sorted(y_pa + [conf])
        self.y_fn = _AdditiveFn(y_pa, weights(len(y_pa)), mechs(len(y_pa)))
        mods = [p for p in y_pa if rng.random() < 0.5] or [int(rng.choice(y_pa))]
        self.tau_fn = _AdditiveFn(mods, weights(len(mods)), mechs(len(mods)))
        self.tau0 = float(rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.5) + shift_)
        self.tau_het = float(rng.uniform(0.0, 0.5) * (1.0 + shift_))
        self.noise_kinds = [noise_dist] * (d + 1)  # covariates then Y

        # Column order shown to users: a random permutation (the topological order is hidden).
        self.column_order = rng.permutation(d)
        # Binary covariate nodes and their thresholds, from a further child of the seed.
        self.binary_nodes: List[int] = []
        self.binary_thresholds: List[float] = []
        n_binary = int(round(self.binary_share * d))
        if n_binary:
            rng_binary = np.random.default_rng(ss.spawn(1)[0])
            self.binary_nodes = sorted(int(j) for j in rng_binary.choice(d, size=n_binary, replace=False))
            self.binary_thresholds = [float(q) for q in rng_binary.uniform(-1.0, 1.0, size=n_binary)]
        # Freeze the standardisation constants on a reference sample of the model itself.
        self._frozen = False
        ref = self._draw_exogenous(int(n_reference), np.random.default_rng(ss_ref))
        self.propagate(ref, freeze=True)
        self._frozen = True

    # -- graph ---------------------------------------------------------------------------------
    @property
    def feature_names(self) -> List[str]:
        return [f"X{j + 1}" for j in range(self.d)]

    def adjacency(self) -> Tuple[List[str], np.ndarray]:
        """The graph as node names and adjacency matrix.

        Names are the user-facing covariate names X1..Xd, then "T", then "Y".

        Returns
        -------
        names : list of str
            The d + 2 node names.
        A : ndarray of shape (d + 2, d + 2), int64
            ``A[i, j] = 1`` for an edge i -> j.
        """
        names = self.feature_names + ["T", "Y"]
        # node index (topological) -> column index
        col_of = np.empty(self.d, dtype=int)
        col_of[self.column_order] = np.arange(self.d)
        A = np.zeros((self.d + 2, self.d + 2), dtype=np.int64)
        for j, fn in enumerate(self.cov_fns):
            for p in fn.parents:
                A[col_of[p], col_of[j]] = 1
        for p in self.t_fn.parents:
            A[col_of[p], self.d] = 1
        for p in self.y_fn.parents:
            A[col_of[p], self.d + 1] = 1
        A[self.d, self.d + 1] = 1
        return names, A

    def describe(self) -> Dict[str, Any]:
        """The SCM as a JSON-able dict.

        Returns
        -------
        dict
            ``d``, ``density``, ``mechanisms``, ``noise``, ``noise_dist``, ``shift``, ``seed``,
            ``nodes``, ``edges`` (pairs of names), ``treatment_intercept``, ``treatment_scale``,
            ``tau0``, ``tau_het``, ``treated_share``, ``binary_nodes`` (names), ``assignment_strength``,
            ``propensity_clip``.
        """
        names, A = self.adjacency()
        return {
            "d": self.d,
            "density": self.density,
            "mechanisms": list(self.mechanisms),
            "noise": self.noise,
            "noise_dist": self.noise_dist,
            "shift": self.shift,
            "seed": self.seed,
            "nodes": names,
            "edges": [[names[i], names[j]] for i, j in zip(*np.nonzero(A))],
            "treatment_intercept": self.t_intercept,
            "treatment_scale": self.t_scale,
            "tau0": self.tau0,
            "tau_het": self.tau_het,
            "treated_share": self.treated_share,
            "binary_nodes": [names[int(np.flatnonzero(self.column_order == j)[0])] for j in self.binary_nodes],
            "assignment_strength": self.assignment_strength,
            "propensity_clip": self.propensity_clip,
        }

    # -- simulation ----------------------------------------------------------------------------
    def _draw_exogenous(self, n: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        eps = np.empty((n, self.d))
        for j in range(self.d):
            eps[:, j] = _draw_noise(rng, self.noise_kinds[j], n)
        u_t = rng.random(n)
        eps_y = _draw_noise(rng, self.noise_kinds[self.d], n)
        return {"eps": eps, "u_t": u_t, "eps_y": eps_y}

    def draw_exogenous(self, n: int, seed: SeedLike = 0) -> Dict[str, np.ndarray]:
        """The units' exogenous noise.

        Parameters
        ----------
        n : int
            Number of units.
        seed : int, SeedSequence or None, default 0
            Seed of the draw.

        Returns
        -------
        dict
            ``eps`` (n, d), ``u_t`` (n,) and ``eps_y`` (n,).
        """
        return self._draw_exogenous(int(n), np.random.default_rng(seed))

    def propagate(
        self, exo: Dict[str, np.ndarray], do: Optional[int] = None, *, freeze: bool = False
    ) -> Dict[str, np.ndarray]:
        """Evaluate the SCM on given exogenous noise, optionally under do(T = ``do``).

        Parameters
        ----------
        exo : dict
            Exogenous noise as returned by :meth:`draw_exogenous`.
        do : {0, 1}, optional
            Intervene on T; None: T drawn from the propensity.
        freeze : bool, default False
            Freeze the standardisation constants on this sample (construction only).

        Returns
        -------
        dict
            ``X`` (n, d, user column order), ``propensity``, ``T``, ``Y``, ``mu0``, ``mu1``
            (``mu_t = E[Y | do(T=t), x]``).

        Raises
        ------
        ValueError
            ``do`` not 0, 1 or None.
        RuntimeError
            ``freeze`` when the constants are already frozen.
        """
        if freeze and self._frozen:
            raise RuntimeError("constants are already frozen")
        eps, u_t, eps_y = exo["eps"], exo["u_t"], exo["eps_y"]
        n = eps.shape[0]
        Xt = np.zeros((n, self.d))  # topological order
        threshold_of = dict(zip(self.binary_nodes, self.binary_thresholds))
        c = 1.0 / np.sqrt(1.0 + self.noise**2)
        mech = _MechanismColumns(Xt)  # filled as the nodes become final
        for j, fn in enumerate(self.cov_fns):
            if fn.parents:
                r = fn.raw(mech)
                if freeze:
                    fn.freeze_on(r)
                Xt[:, j] = c * (fn.standardised(r) + self.noise * eps[:, j])
            else:
                Xt[:, j] = eps[:, j]
            if j in threshold_of:
                Xt[:, j] = (Xt[:, j] > threshold_of[j]).astype(np.float64)
        outputs = (self.t_fn, self.y_fn, self.tau_fn)  # each has parents
        raws = [fn.raw(mech) for fn in outputs]
        if freeze:
            for fn, r in zip(outputs, raws):
                fn.freeze_on(r)
        f_t, f_y, f_tau = (fn.standardised(r) for fn, r in zip(outputs, raws))
        if freeze and self.treated_share is not None:
            self.t_intercept = _intercept_for_mean(self.t_scale * f_t, self.treated_share, self.propensity_clip)
        lo_e, hi_e = self.propensity_clip, 1.0 - self.propensity_clip
        e = np.clip(_sigmoid(self.t_intercept + self.t_scale * f_t), lo_e, hi_e)
        if do is None:
            T = (u_t < e).astype(np.int64)
        else:
            if do not in (0, 1):
                raise ValueError(f"do must be 0 or 1, got {do!r}")
            T = np.full(n, int(do), dtype=np.int64)
        mu0 = f_y
        tau = self.tau0 + self.tau_het * f_tau
        mu1 = mu0 + tau
        Y = np.where(T == 1, mu1, mu0) + self.noise * eps_y
        return {"X": Xt[:, self.column_order], "propensity": e, "T": T, "Y": Y, "mu0": mu0, "mu1": mu1}

    def sample(self, n: int, seed: SeedLike = 0, do: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Draw n units (their own noise from ``seed``) and propagate, optionally under do(T).

        Parameters
        ----------
        n : int
            Number of units.
        seed : int, SeedSequence or None, default 0
            Seed of the units' noise.
        do : {0, 1}, optional
            Intervene on T.

        Returns
        -------
        dict
            As :meth:`propagate`.

        Raises
        ------
        ValueError
            ``do`` not 0, 1 or None.
        """
        return self.propagate(self.draw_exogenous(n, seed), do=do)

    def monte_carlo_ate(self, n: int = 200_000, seed: SeedLike = 12345) -> float:
        """Population ATE by simulation: mean of Y under do(T=1) minus Y under do(T=0), each
        with fresh, independent units and noise (a check independent of mu0/mu1).

        Parameters
        ----------
        n : int, default 200000
            Units per arm of the simulation.
        seed : int, SeedSequence or None, default 12345
            Seed.

        Returns
        -------
        float
            The Monte-Carlo population ATE.
        """
        ss = np.random.SeedSequence(seed)
        s1, s0 = ss.spawn(2)
        return float(self.sample(n, s1, do=1)["Y"].mean() - self.sample(n, s0, do=0)["Y"].mean())

    def dataset(self, n: int, seed: SeedLike = 0, name: str = "er") -> CausalDataset:
        """n units of this SCM as a :class:`CausalDataset` with the sample truth.

        Parameters
        ----------
        n : int
            Number of units.
        seed : int, SeedSequence or None, default 0
            Seed of the units.
        name : str, default "er"
            Dataset name.

        Returns
        -------
        CausalDataset
            With ate/att (exact), mu0, mu1, the propensity and ``meta["scm"]`` (:meth:`describe`).
        """
        out = self.sample(int(n), seed)
        ate, att = _truth(out["mu0"], out["mu1"], out["T"])
        return CausalDataset(
            X=out["X"],
            T=out["T"],
            Y=out["Y"],
            ate=ate,
            att=att,
            feature_names=self.feature_names,
            name=name,
            mu0=out["mu0"],
            mu1=out["mu1"],
            propensity=out["propensity"],
            meta={"family": "er", "scm": self.describe(), "sample_seed": _seed_repr(seed)},
        )


def make_er_scm(
    d: int = 10,
    *,
    seed: SeedLike = 0,
    density: float = 0.3,
    mechanism: Union[str, Sequence[str]] = "mixed",
    noise: float = 0.5,
    noise_dist: str = "gaussian",
    shift: float = 0.0,
    treated_share: Optional[float] = None,
    binary_share: float = 0.0,
    assignment_strength: float = 1.0,
    propensity_clip: float = 0.05,
) -> ERSCM:
    """A random Erdos-Renyi SCM (see :class:`ERSCM`), deterministic given ``seed``.

    Parameters
    ----------
    d : int, default 10
        Number of covariates.
    seed : int, SeedSequence or None, default 0
        Seed.
    density, mechanism, noise, noise_dist, shift
        As for :class:`ERSCM`.
    treated_share, binary_share, assignment_strength, propensity_clip
        As for :class:`ERSCM` (the defaults leave the model unchanged).

    Returns
    -------
    ERSCM
        The model.

    Raises
    ------
    ValueError
        Invalid parameters (see :class:`ERSCM`).
    """
    return ERSCM(
        d,
        seed=seed,
        density=density,
        mechanism=mechanism,
        noise=noise,
        noise_dist=noise_dist,
        shift=shift,
        treated_share=treated_share,
        binary_share=binary_share,
        assignment_strength=assignment_strength,
        propensity_clip=propensity_clip,
    )


def make_er_dataset(
    n: int,
    d: int = 10,
    *,
    seed: SeedLike = 0,
    density: float = 0.3,
    mechanism: Union[str, Sequence[str]] = "mixed",
    noise: float = 0.5,
    noise_dist: str = "gaussian",
    shift: float = 0.0,
    treated_share: Optional[float] = None,
    binary_share: float = 0.0,
    assignment_strength: float = 1.0,
    propensity_clip: float = 0.05,
) -> CausalDataset:
    """n units from a random Erdos-Renyi SCM over d covariates + treatment + outcome.

    ``density``: edge probability; ``mechanism``: "mixed" (= MECHANISMS_ID: linear, tanh, sin,
    quadratic), "ood" (= MECHANISMS_OOD: cubic, abs, softplus, gauss), "all", one name or a list;
    ``noise``: noise-to-signal standard-deviation ratio of every structural equation;
    ``noise_dist``: "gaussian", "laplace" or "uniform"; ``shift``: moves the distribution of the
    mechanism parameters (edge-weight magnitudes, treatment-assignment strength, effect size and
    heterogeneity) away from the training prior. The graph and mechanisms come from one child of
    ``seed``, the units from another: the same seed with another n gives the same SCM.
    Truth: ate = mean(mu1 - mu0) exactly (see :class:`ERSCM`); ``meta["scm"]`` holds the graph.

    Parameters
    ----------
    n : int
        Number of units.
    d : int, default 10
        Number of covariates.
    seed : int, SeedSequence or None, default 0
        Seed.
    density : float, default 0.3
        Edge probability.
    mechanism : str or sequence of str, default "mixed"
        See above.
    noise : float, default 0.5
        Noise-to-signal ratio.
    noise_dist : {"gaussian", "laplace", "uniform", "student_t"}, default "gaussian"
        Noise distribution ("student_t": heavy tails).
    shift : float, default 0.0
        Parameter shift.
    treated_share : float, optional
        Target mean propensity in (0, 1) (None: the prior's random intercept).
    binary_share : float, default 0.0
        Share of binary covariates, in [0, 1].
    assignment_strength : float, default 1.0
        Multiplier of the treatment-assignment slope (larger: poorer overlap).
    propensity_clip : float, default 0.05
        The propensity is clipped to [clip, 1 - clip].

    Returns
    -------
    CausalDataset
        The dataset (``meta["scm"]`` holds the graph, ``meta["seed"]`` the seed).

    Raises
    ------
    ValueError
        Invalid parameters (see :class:`ERSCM`).

    Examples
    --------
    >>> from cina_ext.data import make_er_dataset
    >>> ds = make_er_dataset(50, 5, seed=0)
    >>> ds.X.shape, ds.feature_names[:2]
    ((50, 5), ['X1', 'X2'])
    """
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    ss_scm, ss_units = ss.spawn(2)
    scm = make_er_scm(
        d,
        seed=ss_scm,
        density=density,
        mechanism=mechanism,
        noise=noise,
        noise_dist=noise_dist,
        shift=shift,
        treated_share=treated_share,
        binary_share=binary_share,
        assignment_strength=assignment_strength,
        propensity_clip=propensity_clip,
    )
    ds = scm.dataset(int(n), ss_units, name="er")
    ds.meta["seed"] = _seed_repr(seed)
    return ds
