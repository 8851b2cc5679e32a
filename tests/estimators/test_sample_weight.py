"""fit(X, T, sample_weight=s): frequency weights.  An integer weight k must give the same estimate
(and balance table) as the row replicated k times; invalid weights and estimators without a
weighted form raise clear errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from cina_ext.data import make_setoguchi
from cina_ext.diagnostics import balance_table
from cina_ext.estimators import (
    IPW,
    CInA,
    DifferenceInMeans,
    DoubleML,
    KernelBalancing,
    SelfNormalizedIPW,
)
from cina_ext.estimators.low_rank import _project_simplex, simplex_balance


class _FixedOutcome(RegressorMixin, BaseEstimator):
    """An outcome "model" that ignores its training data: cross-fitting folds then cannot matter,
    so the weighted and the replicated fits must agree exactly (the score algebra is tested)."""

    def fit(self, X, y, sample_weight=None):
        return self

    def predict(self, X):
        return X[:, 0] - 0.5 * X[:, 1]


class _FixedPropensity(ClassifierMixin, BaseEstimator):
    def fit(self, X, y, sample_weight=None):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        e = 1.0 / (1.0 + np.exp(-0.5 * X[:, 0]))
        return np.c_[1.0 - e, e]


class _Recorder(RegressorMixin, BaseEstimator):
    """Records the sample weights it was fitted with (class-level, clones share it)."""

    seen: list = []

    def fit(self, X, y, sample_weight=None):
        _Recorder.seen.append(None if sample_weight is None else np.asarray(sample_weight).copy())
        self.m_ = float(np.average(y, weights=sample_weight))
        return self

    def predict(self, X):
        return np.full(X.shape[0], self.m_)


@pytest.fixture(scope="module")
def data():
    ds = make_setoguchi(120, "A", seed=0)
    X, T, Y = np.asarray(ds.X), np.asarray(ds.T), np.asarray(ds.Y)
    k = np.random.default_rng(1).integers(1, 4, size=T.size)  # integer weights 1..3
    idx = np.repeat(np.arange(T.size), k)
    return X, T, Y, k, idx


# (name, factory, tolerance on the estimate)
CASES = [
    ("naive", lambda: DifferenceInMeans(), 1e-12),
    ("ipw-ate", lambda: IPW(), 1e-6),
    ("ipw-att", lambda: IPW(estimand="att"), 1e-6),
    ("ipw-overlap", lambda: IPW(estimand="overlap"), 1e-6),
    ("snipw-att", lambda: SelfNormalizedIPW(estimand="att"), 1e-6),
    # fixed gamma and lam: the data-driven defaults (median heuristic, lam="auto") are rules on
    # the distinct rows, which replication changes
    ("kernel-ate", lambda: KernelBalancing(tol=1e-9, gamma="scale", lam=0.01), 1e-5),
    ("kernel-att", lambda: KernelBalancing(estimand="att", tol=1e-9, gamma="scale", lam=0.01), 1e-5),
    ("kernel-laplace", lambda: KernelBalancing(kernel="laplace", tol=1e-9, gamma="scale", lam=0.01), 1e-5),
    ("kernel-linear", lambda: KernelBalancing(kernel="linear", tol=1e-10, lam=0.01), 1e-4),
    ("kernel-rff", lambda: KernelBalancing(approximation="rff", gamma="scale", random_state=0), 1e-6),
    (
        "kernel-rff-att",
        lambda: KernelBalancing(estimand="att", approximation="rff", gamma="scale", random_state=0),
        1e-6,
    ),
    (
        "kernel-augmented",
        lambda: KernelBalancing(augment=_FixedOutcome(), tol=1e-9, gamma="scale", lam=0.01, random_state=0),
        1e-5,
    ),
    ("ipw-augmented-att", lambda: IPW(estimand="att", augment=_FixedOutcome()), 1e-6),
    ("dml-ate", lambda: DoubleML(outcome_model=_FixedOutcome(), propensity_model=_FixedPropensity()), 1e-10),
    (
        "dml-att",
        lambda: DoubleML(estimand="att", outcome_model=_FixedOutcome(), propensity_model=_FixedPropensity()),
        1e-10,
    ),
]


@pytest.mark.parametrize("name,make,tol", CASES, ids=[c[0] for c in CASES])
def test_integer_weights_equal_replicated_rows(data, name, make, tol):
    X, T, Y, k, idx = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weighted = make().fit(X, T, sample_weight=k)
        replicated = make().fit(X[idx], T[idx])
        a, b = weighted.ate(Y), replicated.ate(Y[idx])
    assert a == pytest.approx(b, abs=tol), name
    # the weights do matter: ignoring them gives a visibly different answer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = make().fit(X, T).ate(Y)
    assert abs(plain - b) > 100 * tol
    ra, rb = weighted.balance(), replicated.balance()
    np.testing.assert_allclose(ra.smd_before, rb.smd_before, atol=1e-10)
    np.testing.assert_allclose(ra.smd_after, rb.smd_after, atol=max(1e-8, 100 * tol))
    for arm in ("treated", "control"):
        assert ra.ess[arm] == pytest.approx(rb.ess[arm], rel=max(1e-8, 100 * tol))
    if weighted.has_analytic_se():
        ia = weighted.ate_inference(Y, method="influence")
        ib = replicated.ate_inference(Y[idx], method="influence")
        assert ia.se == pytest.approx(ib.se, rel=1e-4)


def test_weights_include_the_sample_weight(data):
    X, T, Y, k, _ = data
    est = DifferenceInMeans().fit(X, T, sample_weight=k)
    for code in (0, 1):
        sel = T == code
        np.testing.assert_allclose(est.weights_[sel], k[sel] / k[sel].sum())
    assert est.sample_weight_ is not None and np.array_equal(est.sample_weight_, k)
    s = est.summary(Y)
    assert s["sample_weight"] == {"n": T.size, "total": float(k.sum())}
    assert "sample_weight: frequency weights" in str(s)
    assert DifferenceInMeans().fit(X, T).summary()["sample_weight"] is None


def test_zero_weight_units_take_no_part(data):
    X, T, Y, _, _ = data
    s = np.ones(T.size)
    drop = np.zeros(T.size, dtype=bool)
    drop[[0, 5, 9]] = True
    s[drop] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = KernelBalancing(tol=1e-9, lam=0.01).fit(X, T, sample_weight=s)
        ref = KernelBalancing(tol=1e-9, lam=0.01).fit(X[~drop], T[~drop])
    assert np.all(est.weights_[drop] == 0)
    assert est.ate(Y) == pytest.approx(ref.ate(Y[~drop]), abs=1e-5)


def test_unit_weights_reproduce_the_exact_solver(data):
    X, T, _, _, _ = data
    dense = KernelBalancing(tol=1e-9, lam=0.01).fit(X, T, sample_weight=np.ones(T.size))
    exact = KernelBalancing(tol=1e-9, lam=0.01).fit(X, T)
    assert dense.low_rank_ is False
    np.testing.assert_allclose(dense.weights_, exact.weights_, atol=1e-6)


def test_learners_receive_the_weights(data):
    X, T, Y, k, _ = data
    _Recorder.seen.clear()
    DoubleML(outcome_model=_Recorder(), n_folds=2, random_state=0).fit(X, T, sample_weight=k).ate(Y)
    assert len(_Recorder.seen) == 4 and all(w is not None for w in _Recorder.seen)
    assert sum(w.sum() for w in _Recorder.seen) == pytest.approx(k.sum())  # 2 folds: each unit trains once
    _Recorder.seen.clear()
    IPW(augment=_Recorder(), random_state=0).fit(X, T, sample_weight=k).ate(Y)
    assert _Recorder.seen and all(w is not None for w in _Recorder.seen)


@pytest.mark.parametrize(
    "bad,match",
    [
        ("neg", "non-negative"),
        ("nan", "NaN"),
        ("inf", "Inf"),
        ("zero", "zero for every unit"),
        ("short", "mismatched lengths"),
    ],
)
def test_invalid_weights_are_value_errors(data, bad, match):
    X, T, _, _, _ = data
    s = np.ones(T.size)
    if bad == "neg":
        s[2] = -1.0
    elif bad == "nan":
        s[2] = np.nan
    elif bad == "inf":
        s[2] = np.inf
    elif bad == "zero":
        s[:] = 0.0
    else:
        s = s[:-1]
    with pytest.raises(ValueError, match=match):
        IPW().fit(X, T, sample_weight=s)


def test_an_arm_without_weight_is_an_error(data):
    X, T, _, _, _ = data
    s = np.where(T == 1, 0.0, 1.0)
    with pytest.raises(ValueError, match="treated"):
        DifferenceInMeans().fit(X, T, sample_weight=s)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: KernelBalancing(estimand="overlap"), "estimand='overlap'.*'ate' or 'att'"),
        (lambda: CInA(n_steps=1), "CInA does not support sample_weight.*KernelBalancing"),
    ],
)
def test_unsupported_estimators_refuse_weights(data, make, match):
    X, T, _, k, _ = data
    with pytest.raises(NotImplementedError, match=match):
        make().fit(X, T, sample_weight=k)


def test_zero_shot_refuses_weights(data):
    pytest.importorskip("cina_ext.models")
    from cina_ext.estimators import make_estimator

    X, T, _, k, _ = data
    with pytest.raises(NotImplementedError, match="CInAZeroShot does not support sample_weight"):
        make_estimator("zero-shot").fit(X, T, sample_weight=k)


def test_weighted_projection_and_ridge():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(9)
    c = rng.integers(1, 4, size=9).astype(float)
    w = _project_simplex(v, c)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
    # KKT of argmin sum (w - c v)^2 / c on the simplex: w_i = c_i max(0, v_i - tau)
    tau = np.mean((v - w / c)[w > 0])
    np.testing.assert_allclose(w, c * np.maximum(v - tau, 0.0), atol=1e-12)
    # the per-unit ridge equals replicating the rows (copies share the weight)
    Phi = rng.standard_normal((9, 4))
    mu = Phi.mean(axis=0) + 0.1
    a = simplex_balance(Phi, mu, 0.05, c=c, tol=1e-10)
    rep = np.repeat(np.arange(9), c.astype(int))
    b = simplex_balance(Phi[rep], mu, 0.05, tol=1e-10)
    tot = np.bincount(rep, weights=b.weights, minlength=9)
    np.testing.assert_allclose(a.weights, tot, atol=1e-5)
    assert a.objective == pytest.approx(b.objective, rel=1e-6)


def test_balance_table_sample_weight_matches_replication(data):
    X, T, _, k, idx = data
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=T.size)
    a = balance_table(X, T, w * k, sample_weight=k)
    b = balance_table(X[idx], T[idx], w[idx])
    np.testing.assert_allclose(a.smd_before, b.smd_before, atol=1e-12)
    np.testing.assert_allclose(a.smd_after, b.smd_after, atol=1e-12)
    np.testing.assert_allclose(a.vr_after, b.vr_after, rtol=1e-10)
    assert a.ess["control"] == pytest.approx(b.ess["control"], rel=1e-10)


def test_pandas_weights_are_aligned_by_label(data):
    import pandas as pd

    X, T, Y, k, _ = data
    df = pd.DataFrame(X, index=np.arange(T.size) + 100)
    s = pd.Series(k, index=df.index).sample(frac=1.0, random_state=0)  # same labels, shuffled
    a = IPW(random_state=0).fit(df, pd.Series(T, index=df.index), sample_weight=s).ate(Y)
    b = IPW(random_state=0).fit(X, T, sample_weight=k).ate(Y)
    assert a == pytest.approx(b, abs=1e-12)
    with pytest.raises(ValueError, match="different pandas indexes"):
        IPW().fit(df, pd.Series(T, index=df.index), sample_weight=pd.Series(k))


def test_large_weighted_arms_switch_to_the_low_rank_dual(data, monkeypatch):
    from cina_ext.estimators import kernel_balancing

    X, T, Y, k, idx = data
    monkeypatch.setattr(kernel_balancing, "WEIGHTED_DENSE_LIMIT", 20)
    with pytest.warns(UserWarning, match="random Fourier features"):
        est = KernelBalancing(random_state=0).fit(X, T, sample_weight=k)
    assert est.low_rank_ and "per-unit ridge" in est.summary()["details"]["solver"]
    exact = KernelBalancing(approximation="exact", tol=1e-9).fit(X, T, sample_weight=k)
    assert not exact.low_rank_
    # the low-rank answer approximates the exact weighted one (kernel error ~ 1/sqrt(rank))
    assert abs(est.ate(Y) - exact.ate(Y)) < 0.05


def test_overlap_check_counts_replicated_units():
    from cina_ext.estimators.base import _overlap_problems

    T = np.r_[np.ones(30), np.zeros(30)].astype(np.int8)
    w = np.where(T == 1, 1.0, 1e-9)
    w[30] = 1.0  # the control weight sits on one row
    s = np.full(60, 2.0)
    rep = np.repeat(np.arange(60), 2)
    a = _overlap_problems(w * s, T, sample_weight=s)
    b = _overlap_problems((w * s)[rep] / 2.0, T[rep])
    assert len(a) == len(b) == 1 and "control" in a[0]
    assert a[0].replace("weighted units", "units") == b[0]
    # evenly replicated rows are no overlap problem, whatever the weights' scale
    assert _overlap_problems(np.ones(60) * 3.0, T, sample_weight=np.full(60, 3.0)) == []


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_weighted_lam_auto_equals_the_replicated_fit(estimand):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 3))
    X[:, 0] += 0.8 * (rng.random(80) < 0.4)
    T = (rng.random(80) < 0.4).astype(int)
    s = rng.integers(1, 4, size=80).astype(float)
    rep = np.repeat(np.arange(80), s.astype(int))
    kw = dict(estimand=estimand, gamma=0.2, tol=1e-10)
    est = KernelBalancing(**kw).fit(X, T, sample_weight=s)  # lam=None: "auto" on the dense path
    ref = KernelBalancing(lam="auto", **kw).fit(X[rep], T[rep])
    assert est.lam_grid_ is not None and est.lam_ == ref.lam_
    np.testing.assert_allclose(est.lam_grid_["imbalance"], ref.lam_grid_["imbalance"], atol=1e-4)
    total = np.bincount(rep, weights=ref.weights_, minlength=80)
    np.testing.assert_allclose(est.weights_, total, atol=2e-5)
    # a number is used as given, with no grid
    fixed = KernelBalancing(lam=0.01, **kw).fit(X, T, sample_weight=s)
    assert fixed.lam_ == 0.01 and fixed.lam_grid_ is None
