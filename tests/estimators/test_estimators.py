"""Estimators: correctness against hand formulas / known truths, reproducibility, interface."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone

from cina_ext.estimators import (
    IPW,
    METHODS,
    CInA,
    DifferenceInMeans,
    DoubleML,
    KernelBalancing,
    SelfNormalizedIPW,
    make_estimator,
)

# ---------------------------------------------------------------------------------------------
# data generators (test helpers; independent of cina_ext.data)


def confounded(n, seed, *, tau=1.5, hetero=False, p=4):
    """Linear confounding: e(x) = sigmoid(0.8 x0 - 0.6 x1 + 0.4 x2); Y = 1 + 2 x0 - x1 + x2 + tau(x) T + eps (confounding adds up)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    e = 1.0 / (1.0 + np.exp(-(0.8 * X[:, 0] - 0.6 * X[:, 1] + 0.4 * X[:, 2])))
    T = (rng.random(n) < e).astype(int)
    t = tau + (0.8 * X[:, 0] if hetero else np.zeros(n))
    Y = 1.0 + 2.0 * X[:, 0] - X[:, 1] + X[:, 2] + t * T + 0.5 * rng.standard_normal(n)
    return dict(X=X, T=T, Y=Y, e=e, ate=float(np.mean(t)), att=float(np.mean(t[T == 1])))


def setoguchi_like(n, seed, gamma=-0.4):
    """Setoguchi et al. (2008) scenario-A-like design (10 covariates, 6 dichotomised)."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 10))
    W = Z.copy()
    W[:, 4] = 0.2 * Z[:, 0] + math.sqrt(0.96) * Z[:, 4]
    W[:, 5] = 0.9 * Z[:, 1] + math.sqrt(0.19) * Z[:, 5]
    W[:, 7] = 0.2 * Z[:, 2] + math.sqrt(0.96) * Z[:, 7]
    W[:, 8] = 0.9 * Z[:, 3] + math.sqrt(0.19) * Z[:, 8]
    for j in (0, 2, 4, 5, 7, 8):
        W[:, j] = (W[:, j] > 0).astype(float)
    lin = W[:, :7] @ np.array([0.8, -0.25, 0.6, -0.4, -0.8, -0.5, 0.7])
    T = (rng.random(n) < 1 / (1 + np.exp(-lin))).astype(int)
    mu0 = (
        -3.85
        + 0.3 * W[:, 0]
        - 0.36 * W[:, 1]
        - 0.73 * W[:, 2]
        - 0.2 * W[:, 3]
        + 0.71 * W[:, 7]
        - 0.19 * W[:, 8]
        + 0.26 * W[:, 9]
    )
    Y = mu0 + gamma * T + 0.3 * rng.standard_normal(n)
    return dict(X=W, T=T, Y=Y, ate=gamma)


def strongly_confounded(n, seed, tau=1.0):
    """One dominant confounder: naive is badly biased (bias ~ 1.5)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    e = 1.0 / (1.0 + np.exp(-1.2 * X[:, 0]))
    T = (rng.random(n) < e).astype(int)
    Y = 2.0 * X[:, 0] + 0.5 * X[:, 1] + tau * T + 0.3 * rng.standard_normal(n)
    return dict(X=X, T=T, Y=Y, ate=tau)


def per_arm_sums(w, T):
    return w[T == 1].sum(), w[T == 0].sum()


# ---------------------------------------------------------------------------------------------
# baselines


def test_difference_in_means_hand_formula():
    d = confounded(300, 1)
    est = DifferenceInMeans().fit(d["X"], d["T"])
    hand = d["Y"][d["T"] == 1].mean() - d["Y"][d["T"] == 0].mean()
    assert est.ate(d["Y"]) == pytest.approx(hand, rel=1e-12)
    np.testing.assert_allclose(per_arm_sums(est.weights_, d["T"]), [1.0, 1.0])
    assert abs(hand - d["ate"]) > 0.5  # the DGP is confounded: naive is far off


def test_ipw_snipw_recover_ate_large_sample():
    d = confounded(20000, 2)
    naive = DifferenceInMeans().fit(d["X"], d["T"]).ate(d["Y"])
    ipw = IPW(clip=None).fit(d["X"], d["T"])
    snipw = SelfNormalizedIPW(clip=None).fit(d["X"], d["T"])
    # the logistic propensity model is correctly specified: e is recovered
    assert np.mean(np.abs(ipw.propensity_ - d["e"])) < 0.01
    assert abs(ipw.ate(d["Y"]) - d["ate"]) < 0.12
    assert abs(snipw.ate(d["Y"]) - d["ate"]) < 0.06
    assert abs(naive - d["ate"]) > 1.0
    np.testing.assert_allclose(per_arm_sums(snipw.weights_, d["T"]), [1.0, 1.0])
    # Horvitz-Thompson by hand from the fitted propensity
    e, T, Y = ipw.propensity_, d["T"], d["Y"]
    ht = np.mean(T * Y / e) - np.mean((1 - T) * Y / (1 - e))
    assert ipw.ate(Y) == pytest.approx(ht, rel=1e-10)
    hajek = np.sum(T * Y / e) / np.sum(T / e) - np.sum((1 - T) * Y / (1 - e)) / np.sum((1 - T) / (1 - e))
    assert snipw.ate(Y) == pytest.approx(hajek, rel=1e-10)


def test_ipw_att_and_clipping():
    d = confounded(20000, 3, hetero=True)
    est = SelfNormalizedIPW(estimand="att").fit(d["X"], d["T"])
    assert abs(est.ate(d["Y"]) - d["att"]) < 0.08
    w = est.weights_
    T = d["T"]
    np.testing.assert_allclose(w[T == 1], 1.0 / T.sum())  # ATT: treated weights uniform
    clipped = IPW(clip=0.2).fit(d["X"], d["T"])
    assert clipped.propensity_.min() >= 0.2 - 1e-12 and clipped.propensity_.max() <= 0.8 + 1e-12


def test_doubleml_linear_dgp():
    from sklearn.linear_model import LinearRegression

    d = confounded(3000, 4, hetero=True)
    ate = DoubleML(outcome_model=LinearRegression(), random_state=0).fit(d["X"], d["T"])
    est = ate.ate(d["Y"])
    assert abs(est - d["ate"]) < 0.1
    lo, hi = ate.ate_interval(d["Y"], method="influence")
    assert lo < est < hi and hi - lo < 0.5
    att = DoubleML(estimand="att", outcome_model=LinearRegression(), random_state=0).fit(d["X"], d["T"])
    assert abs(att.ate(d["Y"]) - d["att"]) < 0.1
    # reproducible cross-fitting
    again = DoubleML(outcome_model=LinearRegression(), random_state=0).fit(d["X"], d["T"]).ate(d["Y"])
    assert again == est
    with pytest.raises(ValueError, match="estimand"):
        DoubleML(estimand="overlap").fit(d["X"], d["T"])


# ---------------------------------------------------------------------------------------------
# exact kernel balancing


def test_kernel_balancing_improves_balance_and_estimate():
    d = setoguchi_like(400, 5)
    naive = DifferenceInMeans().fit(d["X"], d["T"])
    for estimand in ("ate", "overlap", "att"):
        kb = KernelBalancing(estimand=estimand).fit(d["X"], d["T"])
        assert kb.converged_
        rep, rep0 = kb.balance(), naive.balance()
        assert rep.max_abs_smd_after < 0.5 * rep0.max_abs_smd_after, estimand
        np.testing.assert_allclose(per_arm_sums(kb.weights_, d["T"]), [1.0, 1.0], atol=1e-9)
        assert np.all(kb.weights_ >= 0)
    kb = KernelBalancing(estimand="ate").fit(d["X"], d["T"])
    assert abs(kb.ate(d["Y"]) - d["ate"]) < abs(naive.ate(d["Y"]) - d["ate"])


def test_kernel_balancing_overlap_equals_svm():
    """'overlap' is SVM balancing: the same weights as sklearn's SVC on the same RBF Gram."""
    from sklearn.svm import SVC

    d = confounded(150, 6)
    lam = 0.01
    kb = KernelBalancing(estimand="overlap", lam=lam, tol=1e-9).fit(d["X"], d["T"])
    Xs = (d["X"] - d["X"].mean(0)) / d["X"].std(0)
    gamma = 1.0 / Xs.shape[1]
    sq = ((Xs[:, None, :] - Xs[None, :, :]) ** 2).sum(-1)
    K = np.exp(-gamma * sq)
    lam_abs = lam * len(Xs)  # documented overlap scaling for an O(1) kernel
    svc = SVC(kernel="precomputed", C=1.0 / lam_abs, tol=1e-10).fit(K, 2 * d["T"] - 1)
    alpha = np.zeros(len(Xs))
    alpha[svc.support_] = lam_abs * np.abs(svc.dual_coef_[0])
    T = d["T"]
    w = np.where(T == 1, alpha / alpha[T == 1].sum(), alpha / alpha[T == 0].sum())
    np.testing.assert_allclose(kb.alpha_, alpha, atol=1e-4)
    np.testing.assert_allclose(kb.weights_, w, atol=1e-4)
    assert kb.intercept_ == pytest.approx(svc.intercept_[0], abs=1e-3)
    assert 0 < kb.alpha_at_one_ < 1 and 0 < kb.alpha_at_zero_ < 1


def test_kernel_balancing_ate_linear_kernel_balances_means():
    """With the linear kernel and a small lam the ATE weights nearly match each arm's covariate means
    to the full-sample means (the MMD of a linear kernel is the mean difference)."""
    d = confounded(150, 7)
    kb = KernelBalancing(estimand="ate", kernel="linear", lam=0.05).fit(d["X"], d["T"])
    assert kb.converged_
    X, T, w = d["X"], d["T"], kb.weights_
    full = X.mean(0)
    assert np.max(np.abs(w[T == 1] @ X[T == 1] - full)) < 0.01
    assert np.max(np.abs(w[T == 0] @ X[T == 0] - full)) < 0.01
    assert np.max(np.abs(X[T == 1].mean(0) - full)) > 0.1


# ---------------------------------------------------------------------------------------------
# CInA


def _cina(**kw):
    base = dict(n_steps=6, backend="reference", random_state=0, key_dim=8, hidden_dim=16)
    base.update(kw)
    return CInA(**base)


@pytest.fixture(scope="module")
def strong():
    return strongly_confounded(160, 8)


@pytest.fixture(scope="module")
def cina_fit(strong):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # reference fallback warning
        return _cina(estimand="ate").fit(strong["X"], strong["T"])


def test_cina_runs_and_weights_are_normalised(strong, cina_fit):
    est = cina_fit
    w = est.weights_
    np.testing.assert_allclose(per_arm_sums(w, strong["T"]), [1.0, 1.0], atol=1e-9)
    assert np.all(w >= 0)
    assert est.converged_ and est.n_unconverged_steps_ == 0
    assert len(est.loss_history_) == 6 and np.all(np.isfinite(est.loss_history_))
    assert 0.0 <= est.alpha_at_zero_ <= 1.0 and 0.0 <= est.alpha_at_one_ < 0.95
    # Theorem 1 consistency: eq. L through the attention operator at the read-out (V, b) equals the
    # exact dual optimum of the solver for the same keys
    assert est.duality_gap_ < 1e-5
    assert est.keys_.shape == (160, 8)
    json.dumps(est.summary(strong["Y"]), allow_nan=False)


def test_cina_closer_than_naive(strong, cina_fit):
    naive = DifferenceInMeans().fit(strong["X"], strong["T"]).ate(strong["Y"])
    est = cina_fit.ate(strong["Y"])
    assert abs(naive - strong["ate"]) > 0.8
    assert abs(est - strong["ate"]) < 0.5 * abs(naive - strong["ate"])
    assert cina_fit.balance().max_abs_smd_after < 0.5 * cina_fit.balance().max_abs_smd_before


def test_cina_overlap_readout_is_exact_dual(strong):
    """estimand='overlap': the weights are the exact SVM-dual weights for the learned keys."""
    from cina_ext.reference import dual_solve

    est = _cina(estimand="overlap", n_steps=3).fit(strong["X"], strong["T"])
    K = torch.as_tensor(est.keys_).unsqueeze(0)
    W = torch.as_tensor(2.0 * strong["T"] - 1.0).unsqueeze(0)
    res = dual_solve(
        K, W, est.lam_abs_, kernel="cina", scale=est.key_scale / math.sqrt(est.key_dim), estimand="overlap", tol=1e-9
    )
    np.testing.assert_allclose(est.weights_, res.weights[0].numpy(), atol=1e-4)
    assert est.lam_abs_ == pytest.approx(est._lam_rel() / 160)  # documented lam / N


def test_cina_reproducible(strong):
    a = _cina(n_steps=3).fit(strong["X"], strong["T"])
    b = _cina(n_steps=3).fit(strong["X"], strong["T"])
    c = _cina(n_steps=3, random_state=1).fit(strong["X"], strong["T"])
    np.testing.assert_array_equal(a.weights_, b.weights_)
    np.testing.assert_array_equal(a.loss_history_, b.loss_history_)
    assert not np.allclose(a.keys_, c.keys_)


def test_cina_training_decreases_loss(strong):
    est = _cina(n_steps=15, lr=0.02, estimand="overlap").fit(strong["X"], strong["T"])
    h = est.loss_history_
    assert h[-1] < h[0]


def test_envelope_gradient_matches_dual_value_gradient():
    """Danskin: the gradient of eq. L at the optimal (V, b) w.r.t. the keys equals the gradient of the
    dual value 1'a - (aW)'k(K)(aW)/(2 lam) at fixed a (k = the cina kernel)."""
    from cina_ext.reference import dual_solve, gram

    g = torch.Generator().manual_seed(0)
    N, D = 40, 4
    K = torch.randn(1, N, D, generator=g, dtype=torch.float64)
    W = torch.where(torch.rand(1, N, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    scale = 1 / math.sqrt(D)
    lam = 0.3 / N
    res = dual_solve(K, W, lam, kernel="cina", scale=scale, estimand="overlap", tol=1e-12)
    est = CInA(key_dim=D, backend="reference")
    lse = torch.logsumexp(scale * K[0] @ K[0].T, -1).unsqueeze(0)
    V = est._values(res.alpha, W, lse, lam)
    b = res.intercept.reshape(1)
    K1 = K.clone().requires_grad_(True)
    objective, loss = est._envelope_objective(K1, V, b, res.alpha, W, lam)
    objective.backward()
    K2 = K.clone().requires_grad_(True)
    aw = (res.alpha * W)[0]
    dual = res.alpha.sum() - aw @ gram(K2, "cina", scale=scale)[0] @ aw / (2 * lam)
    dual.backward()
    # strong duality at the optimum: eq. L (through the attention operator) = dual value
    assert float(loss.detach().sum()) == pytest.approx(float(dual.detach()), rel=1e-7)
    assert float(objective.detach()) == pytest.approx(float(dual.detach()), rel=1e-7)
    np.testing.assert_allclose(K1.grad.numpy(), K2.grad.numpy(), rtol=1e-5, atol=1e-6 * K2.grad.abs().max().item())
    # there are margin support vectors (0 < alpha < 1): the case where autograd of the hinge is wrong
    assert bool(((res.alpha > 1e-6) & (res.alpha < 1 - 1e-6)).any())


def test_cina_torch_float32_input_and_att(strong):
    X = torch.tensor(strong["X"], dtype=torch.float32)
    T = torch.tensor(strong["T"])
    est = _cina(estimand="att", n_steps=2).fit(X, T)
    T_np = strong["T"]
    np.testing.assert_allclose(est.weights_[T_np == 1], 1.0 / T_np.sum())
    assert est.readout_lam_abs_ == pytest.approx(est._readout_lam_rel() / 160**2)
    assert np.isfinite(est.ate(torch.tensor(strong["Y"])))


# ---------------------------------------------------------------------------------------------
# interface


@pytest.mark.parametrize(
    "cls,params",
    [
        (CInA, dict(lam=0.5, key_dim=8, estimand="overlap", random_state=3)),
        (KernelBalancing, dict(lam=0.2, kernel="linear", estimand="att")),
        (IPW, dict(clip=0.05, estimand="att")),
        (DoubleML, dict(n_folds=3)),
    ],
)
def test_clone_and_get_params(cls, params):
    est = cls(**params)
    got = est.get_params()
    for k, v in params.items():
        assert got[k] == v
    c = clone(est)
    assert c.get_params() == got
    assert not hasattr(c, "weights_")
    est.set_params(estimand="ate")
    assert est.estimand == "ate"


def test_fitted_clone_is_unfitted():
    d = confounded(100, 9)
    est = KernelBalancing().fit(d["X"], d["T"])
    assert hasattr(est, "weights_")
    assert not hasattr(clone(est), "weights_")


def test_pandas_names_carried_into_balance():
    d = confounded(200, 10)
    df = pd.DataFrame(d["X"], columns=["age", "income", "bmi", "score"])
    est = KernelBalancing().fit(df, pd.Series(d["T"], name="treated"))
    rep = est.balance()
    assert rep.feature_names == ["age", "income", "bmi", "score"]
    assert list(rep.summary_frame().index) == ["age", "income", "bmi", "score"]
    assert list(est.feature_names_in_) == ["age", "income", "bmi", "score"]
    s = est.summary(pd.Series(d["Y"]))
    assert s["effect"] == pytest.approx(est.ate(d["Y"]))
    assert s["estimand"] == "ate"
    json.dumps(s, allow_nan=False)
    assert "KernelBalancing" in str(s)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SelfNormalizedIPW(),
        lambda: KernelBalancing(estimand="ate"),
        lambda: _cina(n_steps=2, estimand="overlap"),
    ],
)
def test_ate_interval_seeded_and_contains_estimate(make):
    d = confounded(110, 11)
    est = make().fit(d["X"], d["T"])
    point = est.ate(d["Y"])
    a = est.ate_interval(d["Y"], n_bootstrap=20, random_state=123)
    b = est.ate_interval(d["Y"], n_bootstrap=20, random_state=123)
    c = est.ate_interval(d["Y"], n_bootstrap=20, random_state=124)
    assert a == b
    assert a != c
    assert a[0] < point < a[1]
    assert len(est.bootstrap_estimates_) == 20
    # the resample refits: the bootstrap estimates are not all equal to the point estimate
    assert np.std(est.bootstrap_estimates_) > 0


def test_ate_interval_refits_weights(monkeypatch):
    d = confounded(120, 12)
    est = KernelBalancing().fit(d["X"], d["T"])
    calls = []
    orig = est._fit_core

    def spy(X, T, seed, bootstrap=False):
        calls.append(bootstrap)
        return orig(X, T, seed, bootstrap=bootstrap)

    monkeypatch.setattr(est, "_fit_core", spy)
    est.ate_interval(d["Y"], n_bootstrap=5, random_state=0)
    assert calls == [True] * 5


def test_ate_interval_progress_bar_respects_verbose(capsys):
    d = confounded(120, 13)
    est = DifferenceInMeans().fit(d["X"], d["T"])
    est.ate_interval(d["Y"], n_bootstrap=20, random_state=0, verbose=False)
    assert "bootstrap" not in capsys.readouterr().err
    est.ate_interval(d["Y"], n_bootstrap=20, random_state=0, verbose=True)
    assert "bootstrap" in capsys.readouterr().err


def test_make_estimator():
    from cina_ext.estimators import CInAZeroShot
    from cina_ext.models.checkpoint import pretrained_path

    assert set(METHODS) == {"cina", "kernel", "naive", "ipw", "snipw", "dml", "zero-shot"}
    kinds = {
        "cina": CInA,
        "kernel": KernelBalancing,
        "naive": DifferenceInMeans,
        "ipw": IPW,
        "snipw": SelfNormalizedIPW,
        "dml": DoubleML,
        "zero-shot": CInAZeroShot,
    }
    for name in METHODS:
        est = make_estimator(name, random_state=5)
        assert type(est) is kinds[name]
        assert est.random_state == 5
    assert make_estimator("kernel", estimand="att", lam=0.3).get_params()["lam"] == 0.3
    assert make_estimator("cina", estimand="overlap").estimand == "overlap"
    assert make_estimator("zero-shot", estimand="att").checkpoint == pretrained_path()
    with pytest.raises(ValueError, match="unknown method"):
        make_estimator("svm")
    with pytest.raises(TypeError, match="unexpected parameter"):
        make_estimator("ipw", lam=1.0)
    with pytest.raises(ValueError, match="estimand"):
        make_estimator("dml", estimand="overlap")


def test_bad_parameters_raise_at_fit():
    d = confounded(80, 14)
    with pytest.raises(ValueError, match="kernel"):
        KernelBalancing(kernel="poly").fit(d["X"], d["T"])
    with pytest.raises(ValueError, match="lam"):
        KernelBalancing(lam=-1.0).fit(d["X"], d["T"])
    with pytest.raises(ValueError, match="estimand"):
        CInA(estimand="atc").fit(d["X"], d["T"])
    with pytest.raises(ValueError, match="backend"):
        CInA(backend="gpu", n_steps=0).fit(d["X"], d["T"])
    with pytest.raises(ValueError, match="clip"):
        IPW(clip=0.7).fit(d["X"], d["T"])


def test_cina_full_bootstrap_refit_is_seeded():
    d = confounded(80, 15)
    est = _cina(n_steps=1, bootstrap_refit="full").fit(d["X"], d["T"])
    a = est.ate_interval(d["Y"], n_bootstrap=3, random_state=7)
    b = est.ate_interval(d["Y"], n_bootstrap=3, random_state=7)
    assert a == b and a[0] <= a[1]


def test_documented_lam_scaling():
    d = confounded(90, 16)
    n = 90
    ov = KernelBalancing(estimand="overlap", lam=0.002).fit(d["X"], d["T"])
    assert ov.lam_abs_ == pytest.approx(0.002 * n)
    ate = KernelBalancing(estimand="ate", lam=0.05).fit(d["X"], d["T"])
    assert ate.lam_abs_ == pytest.approx(0.05)
    c = _cina(n_steps=0, lam=0.3, readout_lam=0.2, estimand="ate").fit(d["X"], d["T"])
    assert c.lam_abs_ == pytest.approx(0.3 / n)
    assert c.readout_lam_abs_ == pytest.approx(0.2 / n**2)


def test_unconverged_solve_is_reported():
    d = confounded(90, 17)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        kb = KernelBalancing(estimand="overlap", max_iter=1).fit(d["X"], d["T"])
    assert kb.converged_ is False
    assert kb.summary()["details"]["converged"] is False
