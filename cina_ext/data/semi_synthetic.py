"""Semi-synthetic data: real covariates, simulated treatment and outcomes with known truth.

:func:`make_semi_synthetic` keeps a real covariate table as it is (the units, the columns and
their joint distribution) and simulates on top of it a treatment with poor overlap and
nonlinear, heterogeneous outcomes, so the effect of every unit is known. With the ACIC 2016
covariates (:func:`cina_ext.data.acic2016_covariates`, 82 columns) it is the "acic-semi" dataset
of :func:`cina_ext.data.load_dataset`.

:func:`make_semi_from_table` does the same on the small covariate tables that ship with
scikit-learn (:data:`SEMI_TABLES`; no network), with a random subset of their columns: the
"semi" family of :func:`cina_ext.data.sample_datasets`, a training prior for the zero-shot model
that keeps the evaluation tables (ACIC 2016, IHDP, LaLonde, NHEFS) out.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .._core.covariates import normal_scores
from .synthetic import CausalDataset, SeedLike

__all__ = ["make_semi_synthetic", "make_semi_from_table", "load_semi_table", "SEMI_SYNTHETIC_TRANSFORMS", "SEMI_TABLES"]

#: the covariate tables of the "semi" family: scikit-learn loaders (files inside the package)
SEMI_TABLES = ("breast_cancer", "diabetes", "wine", "digits")

#: the nonlinear transforms a selected (standardised, clipped) covariate goes through
SEMI_SYNTHETIC_TRANSFORMS = ("linear", "square", "step", "tanh", "abs")
_CLIP = 3.0
_RICH = 10  # distinct values that make a column eligible for the propensity score


def _transform(kind: str, z: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return z
    if kind == "square":
        return z * z - 1.0
    if kind == "step":
        return np.where(z > 0.0, 1.0, -1.0)
    if kind == "tanh":
        return np.tanh(2.0 * z)
    if kind == "abs":
        return np.abs(z) - 0.8
    raise ValueError(f"unknown transform {kind!r}")  # pragma: no cover - internal


def _standardise(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def _expit(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _intercept_for_share(score: np.ndarray, share: float) -> float:
    """b such that mean(expit(score + b)) = share (bisection: the mean is increasing in b)."""
    lo, hi = -50.0 - score.max(), 50.0 - score.min()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _expit(score + mid).mean() < share:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _random_score(rng, Z, cols, names):
    """A standardised sum of random transforms of ``cols`` plus one pairwise interaction."""
    kinds = [str(k) for k in rng.choice(SEMI_SYNTHETIC_TRANSFORMS, size=len(cols))]
    coefs = rng.uniform(0.5, 1.0, size=len(cols)) * rng.choice([-1.0, 1.0], size=len(cols))
    v = np.zeros(Z.shape[0])
    for j, k, c in zip(cols, kinds, coefs):
        v += c * _standardise(_transform(k, Z[:, j]))
    terms = [f"{c:+.3f} * {k}({names[j]})" for j, k, c in zip(cols, kinds, coefs)]
    if len(cols) >= 2:
        a, b = (int(i) for i in rng.choice(cols, size=2, replace=False))
        v += 0.5 * _standardise(Z[:, a] * Z[:, b])
        terms.append(f"+0.500 * {names[a]} * {names[b]}")
    return _standardise(v), terms


def make_semi_synthetic(
    X,
    seed: SeedLike = 0,
    *,
    n: Optional[int] = None,
    treated_share: float = 0.25,
    overlap: float = 3.0,
    confounding: float = 1.0,
    effect: float = 1.0,
    heterogeneity: float = 0.5,
    noise: float = 0.5,
    n_propensity: int = 4,
    n_outcome: int = 6,
    n_modifiers: int = 3,
    feature_names: Optional[Sequence[str]] = None,
    drop_constant: bool = True,
    name: str = "semi-synthetic",
) -> CausalDataset:
    """Simulate a treatment with poor overlap and heterogeneous outcomes on real covariates.

    The covariates are returned unchanged (less the columns constant over the drawn units, with
    ``drop_constant``: the estimators reject constant columns, and a rare one-hot level can
    vanish from a subsample); the simulation works on their standardised copy
    ``z`` (mean 0, sd 1 per column, clipped to [-3, 3]; constant columns are never selected).
    With a generator ``rng = numpy.random.default_rng(seed)``:

    1. (optional) ``n`` units drawn without replacement;
    2. **propensity**: a sum of random nonlinear transforms (linear, square, step, tanh, abs;
       random signed weights) of ``n_propensity`` random covariates with at least 10 distinct
       values (any non-constant ones if fewer than 2 have), plus one pairwise interaction, turned
       into normal scores ``s`` (``Phi^-1`` of the ranks: ``s`` is about N(0, 1) whatever the
       covariates); ``e = expit(overlap * s + b)`` with ``b`` solved so that
       ``mean(e) = treated_share``; ``T ~ Bernoulli(e)``. ``overlap`` is the slope: 0 gives a
       randomised trial; 3 (the default) puts about 45% of the units at e < 0.05 or e > 0.95
       with ``treated_share=0.25`` (``meta["extreme_share"]``);
    3. **outcomes**: ``mu0 = confounding * s + g(x)`` with ``g`` a standardised random score of
       the propensity covariates and ``n_outcome`` further ones (so the confounding is nonlinear
       too); ``tau(x) = effect + heterogeneity * h(x)`` with ``h`` a standardised random score of
       ``n_modifiers`` covariates, the first of them a propensity covariate (the ATT then differs
       from the ATE); ``mu1 = mu0 + tau``; ``Y = mu_T + noise * N(0, 1)``.

    Truth: ``ate`` = mean(mu1 - mu0) and ``att`` = its mean over the treated, both over the
    sample; ``propensity`` is ``e``. Deterministic given ``seed``.

    Parameters
    ----------
    X : array-like or pandas.DataFrame of shape (N, d)
        Numeric covariates (one-hot encode categorical ones first), at least 2 non-constant
        columns, no NaN.
    seed : int, SeedSequence or None, default 0
        The replication.
    n : int, optional
        Number of units to draw (default: all N).
    treated_share : float, default 0.25
        Expected share of treated units, in (0, 1).
    overlap : float, default 3.0
        Slope of the logit on the standardised score, >= 0 (larger: poorer overlap).
    confounding : float, default 1.0
        Weight of the propensity score in ``mu0``.
    effect, heterogeneity : float, default 1.0 and 0.5
        Mean and standard deviation (over the sample) of the unit effects.
    noise : float, default 0.5
        Standard deviation of the outcome noise, >= 0.
    n_propensity, n_outcome, n_modifiers : int, default 4, 6 and 3
        Covariates in the propensity score, further ones in the outcome, and effect modifiers
        (each capped by the number of non-constant columns).
    feature_names : sequence of str, optional
        Column names (default: the DataFrame's columns, else ``X1 .. Xd``).
    drop_constant : bool, default True
        Leave out the columns that are constant over the drawn units (``meta["dropped"]`` names
        them).
    name : str, default "semi-synthetic"
        The dataset's name.

    Returns
    -------
    CausalDataset
        With ``mu0``, ``mu1``, ``propensity`` and ``meta`` (seed, rows, dropped columns, the
        formulas as text, intercept, extreme_share).

    Raises
    ------
    ValueError
        X not 2-D, not finite or with fewer than 2 non-constant columns; an argument out of range;
        a draw that leaves fewer than 2 units in an arm.

    Examples
    --------
    >>> import numpy as np
    >>> from cina_ext.data import make_semi_synthetic
    >>> X = np.random.default_rng(0).normal(size=(300, 8))
    >>> ds = make_semi_synthetic(X, seed=1, treated_share=0.2)
    >>> ds.X.shape, ds.truth("ate") is not None
    ((300, 8), True)
    """
    if feature_names is None and hasattr(X, "columns"):
        feature_names = [str(c) for c in X.columns]
    Xa = np.asarray(X, dtype=np.float64)
    if Xa.ndim != 2:
        raise ValueError(f"X must be 2-D (N x d), got shape {Xa.shape}")
    if not np.isfinite(Xa).all():
        raise ValueError("X must be finite (no NaN or inf); impute or drop missing values first")
    N, d = Xa.shape
    names: List[str] = [str(c) for c in feature_names] if feature_names is not None else []
    if names and len(names) != d:
        raise ValueError(f"feature_names has {len(names)} names for {d} columns")
    if not names:
        names = [f"X{j + 1}" for j in range(d)]
    if not 0.0 < float(treated_share) < 1.0:
        raise ValueError(f"treated_share must be in (0, 1), got {treated_share!r}")
    if float(overlap) < 0 or float(noise) < 0 or float(heterogeneity) < 0:
        raise ValueError("overlap, noise and heterogeneity must be >= 0")
    for arg, val, lo in (
        ("n_propensity", n_propensity, 1),
        ("n_outcome", n_outcome, 0),
        ("n_modifiers", n_modifiers, 1),
    ):
        if int(val) != val or val < lo:
            raise ValueError(f"{arg} must be an integer >= {lo}, got {val!r}")
    rng = np.random.default_rng(seed)
    rows = np.arange(N)
    if n is not None:
        if int(n) != n or not 10 <= n <= N:
            raise ValueError(f"n must be an integer from 10 to {N}, got {n!r}")
        rows = np.sort(rng.choice(N, size=int(n), replace=False))
    Xs = Xa[rows]
    sd = Xs.std(axis=0)
    usable = np.flatnonzero(sd > 0)
    if usable.size < 2:
        raise ValueError("X needs at least 2 non-constant columns")
    Z = np.zeros_like(Xs)
    Z[:, usable] = np.clip((Xs[:, usable] - Xs[:, usable].mean(axis=0)) / sd[usable], -_CLIP, _CLIP)

    # the propensity covariates come from the columns with many distinct values (so the score is
    # spread out, not a few steps of rare indicators), the others from every non-constant column
    rich = np.asarray([j for j in usable if np.unique(Xs[:, j]).size >= _RICH], dtype=np.int64)
    pool = rich if rich.size >= min(int(n_propensity), 2) else usable
    k_p = min(int(n_propensity), pool.size)
    prop_cols = [int(j) for j in rng.choice(pool, size=k_p, replace=False)]
    rest = np.setdiff1d(usable, prop_cols)
    k_o = min(int(n_outcome), rest.size)
    out_cols = prop_cols + [int(j) for j in rng.choice(rest, size=k_o, replace=False)]
    k_m = min(int(n_modifiers), usable.size)
    others = np.setdiff1d(usable, [prop_cols[0]])
    mod_cols = [prop_cols[0]] + [int(j) for j in rng.choice(others, size=min(k_m - 1, others.size), replace=False)]

    s, s_terms = _random_score(rng, Z, prop_cols, names)
    # N(0, 1) margins: the overlap depends on ``overlap``, not on the draw
    s = normal_scores(s[:, None], min_distinct=1)[:, 0]
    g, g_terms = _random_score(rng, Z, out_cols, names)
    h, h_terms = _random_score(rng, Z, mod_cols, names)
    logit = float(overlap) * s
    b = _intercept_for_share(logit, float(treated_share))
    e = _expit(logit + b)
    T = (rng.random(Xs.shape[0]) < e).astype(np.int64)
    if T.sum() < 2 or (1 - T).sum() < 2:
        raise ValueError(
            f"the draw left {int(T.sum())} treated and {int((1 - T).sum())} control units "
            "(fewer than 2 in an arm); use more units or a treated_share closer to 0.5"
        )
    mu0 = float(confounding) * s + g
    tau = float(effect) + float(heterogeneity) * h
    mu1 = mu0 + tau
    Y = np.where(T == 1, mu1, mu0) + float(noise) * rng.standard_normal(Xs.shape[0])
    keep = usable if drop_constant else np.arange(d)
    return CausalDataset(
        X=Xs[:, keep],
        T=T,
        Y=Y,
        ate=float(tau.mean()),
        att=float(tau[T == 1].mean()),
        feature_names=[names[j] for j in keep],
        name=name,
        mu0=mu0,
        mu1=mu1,
        propensity=e,
        meta={
            "seed": None if seed is None else str(seed),
            "rows": None if n is None else rows.tolist(),
            "dropped": [names[j] for j in np.setdiff1d(np.arange(d), keep)],
            "treated_share": float(treated_share),
            "overlap": float(overlap),
            "intercept": b,
            "propensity_score": " ".join(s_terms),
            "outcome_score": " ".join(g_terms),
            "effect_modifiers": " ".join(h_terms),
            "extreme_share": float(np.mean((e < 0.05) | (e > 0.95))),
        },
    )


@lru_cache(maxsize=None)
def load_semi_table(table: str) -> Tuple[np.ndarray, Tuple[str, ...]]:
    """One covariate table of :data:`SEMI_TABLES`, its constant columns left out (cached).

    The tables are scikit-learn's bundled data sets (``load_breast_cancer`` 569 x 30,
    ``load_diabetes`` 442 x 10, ``load_wine`` 178 x 13, ``load_digits`` 1797 x 64 of which 61
    columns are not constant); only the covariates are used, never their targets.

    Parameters
    ----------
    table : str
        A name of :data:`SEMI_TABLES`.

    Returns
    -------
    X : ndarray of shape (N, d), float64, read-only
        The covariates.
    names : tuple of str
        The column names.

    Raises
    ------
    ValueError
        An unknown table.
    ImportError
        scikit-learn is not installed.
    """
    if table not in SEMI_TABLES:
        raise ValueError(f"table must be one of {SEMI_TABLES}, got {table!r}")
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover - scikit-learn comes with the test / data extras
        raise ImportError("the semi family needs scikit-learn (pip install scikit-learn)") from exc
    bunch = getattr(datasets, f"load_{table}")()
    X = np.asarray(bunch.data, dtype=np.float64)
    given = getattr(bunch, "feature_names", None)
    names = [str(c) for c in given] if given is not None else [f"x{j}" for j in range(X.shape[1])]
    keep = np.flatnonzero(X.std(axis=0) > 0)
    X = np.ascontiguousarray(X[:, keep])
    X.setflags(write=False)
    return X, tuple(f"{table}:{names[j]}" for j in keep)


def make_semi_from_table(
    n: int,
    table: str = "wine",
    *,
    seed: SeedLike = 0,
    min_covariates: int = 2,
    max_covariates: Optional[int] = None,
    treated_share: float = 0.25,
    overlap: float = 1.5,
    confounding: float = 1.0,
    effect: float = 1.0,
    heterogeneity: float = 0.5,
    noise: float = 0.5,
    max_attempts: int = 20,
) -> CausalDataset:
    """A semi-synthetic dataset on a random subset of the columns and rows of a bundled table.

    With a generator from ``seed``: the number of covariates p is drawn uniformly from
    ``min_covariates`` to ``min(max_covariates, width)`` (width: the table's non-constant
    columns), then p columns without replacement; then :func:`make_semi_synthetic` draws
    ``min(n, N)`` rows without replacement (**n is capped at the table's N rows**: no resampling,
    so every unit is a real row) and simulates the treatment and outcomes on them. A draw that
    leaves fewer than 2 units in an arm (or fewer than 2 non-constant columns) is redrawn, up to
    ``max_attempts`` times, each attempt from the next child of ``seed`` (deterministic).

    Parameters
    ----------
    n : int
        Units wanted, >= 10 (capped at the table's rows).
    table : str, default "wine"
        A name of :data:`SEMI_TABLES`.
    seed : int, SeedSequence or None, default 0
        Seed.
    min_covariates : int, default 2
        Fewest covariates, >= 2.
    max_covariates : int, optional
        Most covariates (None: the table's width).
    treated_share, overlap, confounding, effect, heterogeneity, noise : float
        As for :func:`make_semi_synthetic`.
    max_attempts : int, default 20
        Draws tried before giving up, >= 1.

    Returns
    -------
    CausalDataset
        As :func:`make_semi_synthetic`; ``meta`` adds ``family`` ("semi"), ``table``, ``columns``
        (the chosen names) and ``attempt``. The columns constant over the drawn rows are
        dropped, so ``d`` may be below the drawn p.

    Raises
    ------
    ValueError
        An unknown table; ``n < 10``; ``min_covariates < 2`` or above ``max_covariates``; every
        attempt failed.
    """
    X_all, names_all = load_semi_table(table)
    width = X_all.shape[1]
    hi = width if max_covariates is None else min(int(max_covariates), width)
    lo = int(min_covariates)
    if lo < 2 or hi < lo:
        raise ValueError(f"need 2 <= min_covariates <= min(max_covariates, {width}), got {lo} and {hi}")
    if int(n) < 10:
        raise ValueError(f"n must be >= 10, got {n!r}")
    n_rows = min(int(n), X_all.shape[0])
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    last_error: Optional[ValueError] = None
    for attempt, child in enumerate(ss.spawn(int(max_attempts))):
        ss_cols, ss_sim = child.spawn(2)
        rng = np.random.default_rng(ss_cols)
        p = int(rng.integers(lo, hi + 1))
        cols = np.sort(rng.choice(width, size=p, replace=False))
        try:
            ds = make_semi_synthetic(
                X_all[:, cols],
                seed=ss_sim,
                n=n_rows,
                treated_share=treated_share,
                overlap=overlap,
                confounding=confounding,
                effect=effect,
                heterogeneity=heterogeneity,
                noise=noise,
                feature_names=[names_all[j] for j in cols],
                name=f"semi-{table}",
            )
        except ValueError as exc:  # an arm with < 2 units, or < 2 non-constant columns
            last_error = exc
            continue
        ds.meta.update({"family": "semi", "table": table, "columns": [names_all[j] for j in cols], "attempt": attempt})
        return ds
    raise ValueError(f"no valid draw from table {table!r} in {max_attempts} attempts: {last_error}")
