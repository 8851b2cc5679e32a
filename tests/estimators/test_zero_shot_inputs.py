"""What the zero-shot network reads: scaled covariates, projected when there are too many.

The projection (principal directions rotated to equal variances) is checked against its
definition; the estimator against the network called directly on inputs built by hand.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from cina_ext._core.checks import standardize_columns
from cina_ext._core.covariates import equal_diagonal_rotation, normal_scores, principal_projection
from cina_ext.estimators import CInAZeroShot
from cina_ext.models.zero_shot import CInAZeroShotModel

TINY = dict(
    d_model=16, n_heads=2, n_layers=1, dim_feedforward=32, key_dim=8, max_features=6, estimands=("ate", "att"), unroll=2
)


@pytest.mark.parametrize("spectrum", ["exponential", "one_large", "with_zeros", "equal"])
@pytest.mark.parametrize("m", [1, 2, 7, 30])
def test_equal_diagonal_rotation(spectrum, m):
    rng = np.random.default_rng(m)
    lam = {
        "exponential": rng.exponential(size=m) ** 3,
        "one_large": np.r_[100.0, np.full(m - 1, 0.01)],
        "with_zeros": np.r_[rng.uniform(1, 2, size=(m + 1) // 2), np.zeros(m // 2)],
        "equal": np.full(m, 2.5),
    }[spectrum]
    R = equal_diagonal_rotation(lam)
    np.testing.assert_allclose(R.T @ R, np.eye(m), atol=1e-12)
    np.testing.assert_allclose(np.diag(R.T @ np.diag(lam) @ R), np.full(m, lam.mean()), rtol=1e-10, atol=1e-12)


def test_principal_projection_keeps_the_rank_m_distances_with_equal_variances():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((200, 40)) @ rng.standard_normal((40, 40))
    Y = principal_projection(Z, 9)
    assert Y.shape == (200, 9)
    Zc = Z - Z.mean(0)
    _, s, vt = np.linalg.svd(Zc, full_matrices=False)
    best = Zc @ vt[:9].T  # the rank-9 approximation's coordinates
    np.testing.assert_allclose(pdist(Y), pdist(best), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(Y.var(0), np.full(9, np.mean(s[:9] ** 2 / 200)), rtol=1e-9)
    np.testing.assert_allclose(Y.mean(0), 0.0, atol=1e-9)
    # deterministic, and the units' order does not matter (the directions' signs are fixed)
    np.testing.assert_array_equal(principal_projection(Z, 9), Y)
    perm = np.random.default_rng(1).permutation(200)
    np.testing.assert_allclose(principal_projection(Z[perm], 9), Y[perm], rtol=1e-8, atol=1e-8)


def test_principal_projection_small_tables():
    Z = np.random.default_rng(1).standard_normal((4, 12))
    assert principal_projection(Z, 8).shape == (4, 4)  # at most N columns
    assert principal_projection(Z[:, :3], 8).shape == (4, 3)  # at most p columns
    assert principal_projection(Z[:1], 8).shape == (1, 1)
    np.testing.assert_array_equal(principal_projection(Z[:1], 8), 0.0)  # one unit: no spread


def _dataset(n=160, p=14, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) @ (np.eye(p) + 0.3 * rng.standard_normal((p, p)))
    T = (rng.uniform(size=n) < 1 / (1 + np.exp(-X[:, 0]))).astype(int)
    T[:3], T[3:6] = 1, 0
    Y = X[:, 0] + X[:, 1] + 2.0 * T + rng.standard_normal(n)
    return X, T, Y


def _model(seed=0):
    torch.manual_seed(seed)
    return CInAZeroShotModel(**TINY).double().eval()


def _fit(est, X, T):
    """``est.fit(X, T)`` without its overlap warnings (the tiny untrained model balances poorly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, T)


def _direct_weights(model, Xin, T, estimand="ate"):
    X = torch.as_tensor(Xin, dtype=torch.float64)[None]
    W = torch.as_tensor(2.0 * T - 1.0, dtype=torch.float64)[None]
    with torch.no_grad():
        return model.weights(X, W, estimand=estimand)[0].numpy()


def test_too_many_covariates_are_projected_to_the_model_width():
    model = _model()
    X, T, Y = _dataset(p=14)
    est = _fit(CInAZeroShot(model=model, scaling="standard", descent_steps=0), X, T)
    assert est.n_features_in_ == 14 and est.n_inputs_ == 6
    expected = _direct_weights(model, principal_projection(standardize_columns(X)[0], 6), T)
    np.testing.assert_allclose(est.weights_, expected, rtol=1e-10, atol=1e-12)
    assert est.summary()["details"]["network_inputs"] == 6
    # the objective diagnostic is that of all 14 covariates, not of the projection
    Xt = torch.as_tensor(X)[None]
    W = torch.as_tensor(2.0 * T - 1.0)[None]
    full = model.balance_objective(
        Xt,
        W,
        torch.ones(1, len(T), dtype=torch.bool),
        torch.ones(1, 14, dtype=torch.bool),
        torch.as_tensor(est.weights_)[None],
        model.estimand_index("ate", 1, "cpu"),
    )
    assert est.balance_objective_ == pytest.approx(float(full[0]), rel=1e-9)
    # estimate_many takes the same route
    many = est.estimate_many([(X, T, Y), (X[:100], T[:100], Y[:100])])
    assert many[0] == pytest.approx(est.ate(Y), rel=1e-9)


def test_n_components_picks_fewer_inputs_and_a_narrow_table_is_not_projected():
    model = _model()
    X, T, _ = _dataset(p=5)
    direct = _fit(CInAZeroShot(model=model, scaling="standard", descent_steps=0), X, T)
    fewer = _fit(CInAZeroShot(model=model, scaling="standard", n_components=3, descent_steps=0), X, T)
    assert direct.n_inputs_ == 5 and fewer.n_inputs_ == 3
    np.testing.assert_allclose(direct.weights_, _direct_weights(model, standardize_columns(X)[0], T), rtol=1e-10)
    expected = _direct_weights(model, principal_projection(standardize_columns(X)[0], 3), T)
    np.testing.assert_allclose(fewer.weights_, expected, rtol=1e-10, atol=1e-12)


def test_normal_scores_make_the_weights_blind_to_monotone_transforms():
    model = _model()
    X, T, _ = _dataset(p=4)
    bent = X.copy()
    bent[:, 0] = np.exp(2.0 * X[:, 0])  # heavy right tail, same ranks
    bent[:, 2] = X[:, 2] ** 3
    a = _fit(CInAZeroShot(model=model, descent_steps=0), X, T)
    b = _fit(CInAZeroShot(model=model, descent_steps=0), bent, T)
    c = _fit(CInAZeroShot(model=model, scaling="standard", descent_steps=0), bent, T)
    assert a.scaling_ == "normal-scores"
    np.testing.assert_allclose(a.weights_, b.weights_, rtol=1e-9, atol=1e-12)
    assert np.abs(c.weights_ - a.weights_).max() > 1e-4  # standard scaling does see the tails
    expected = _direct_weights(model, standardize_columns(normal_scores(X))[0], T)
    np.testing.assert_allclose(a.weights_, expected, rtol=1e-10, atol=1e-12)
    # the descent steps (on by default) balance the same normal scores: blind to the bend too
    a2, b2 = _fit(CInAZeroShot(model=model), X, T), _fit(CInAZeroShot(model=model), bent, T)
    assert a2.descent_steps_ > 0
    np.testing.assert_allclose(a2.weights_, b2.weights_, rtol=1e-6, atol=1e-10)


def test_refine_on_a_wide_table_solves_the_full_problem():
    model = _model()
    X, T, _ = _dataset(n=120, p=20)
    raw = _fit(CInAZeroShot(model=model), X, T)
    ref = _fit(CInAZeroShot(model=model, refine=300), X, T)
    assert ref.n_inputs_ == 6
    assert ref.balance_objective_ < raw.balance_objective_
    # the refined weights are the exact solver's on all 20 (normal-scored) covariates
    from cina_ext.estimators import KernelBalancing

    kb = KernelBalancing(estimand="ate", gamma="scale", lam=model.balance_lam, scaling="normal-scores")
    _fit(kb, X, T)
    np.testing.assert_allclose(ref.weights_, kb.weights_, atol=2e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_components=0), "n_components"),
        (dict(n_components=7), "n_components"),
        (dict(n_components=2.5), "n_components"),
        (dict(n_components=True), "n_components"),
        (dict(scaling="robust"), "scaling"),
    ],
)
def test_bad_input_parameters(kwargs, match):
    X, T, _ = _dataset(p=3)
    with pytest.raises(ValueError, match=match):
        CInAZeroShot(model=_model(), **kwargs).fit(X, T)


def test_the_refinement_starts_from_the_support_of_the_weights_it_receives():
    from cina_ext.estimators.zero_shot import _support_start

    w = torch.tensor(
        [[0.5, 0.004, 0.496, 0.2, 0.8, 0.0, 0.7], [0.3, 0.7, 0.001, 0.999, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    W = torch.tensor([[1, 1, 1, -1, -1, -1, 1], [1, 1, -1, -1, 1, 1, 1]], dtype=torch.float64)
    mask = torch.tensor([[True] * 6 + [False], [True] * 4 + [False] * 3])
    got = _support_start(w, W, mask, rel=0.01)
    # dataset 0: the treated 0.004 is below 1% of 0.5 and goes; a padded unit never counts
    torch.testing.assert_close(
        got[0],
        torch.tensor([0.5, 0.0, 0.496, 0.2, 0.8, 0.0, 0.0], dtype=torch.float64)
        / torch.tensor([0.996, 1, 0.996, 1, 1, 1, 1], dtype=torch.float64),
    )
    # dataset 1: the control 0.001 is below 1% of 0.999; each arm sums to 1
    torch.testing.assert_close(got[1], torch.tensor([0.3, 0.7, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_refinement_from_the_support_reaches_the_optimum_of_the_dense_start(estimand, monkeypatch):
    import cina_ext.estimators.zero_shot as zs_est
    from cina_ext.data import make_setoguchi

    d = make_setoguchi(300, "G", seed=8)
    torch.manual_seed(3)
    model = (
        CInAZeroShotModel(
            max_features=16,
            d_model=16,
            n_heads=2,
            n_layers=1,
            key_dim=4,
            estimands=("ate", "att"),
            balance_gamma="median",
        )
        .double()
        .eval()
    )
    kw = dict(model=model, estimand=estimand, refine=20_000, descent_steps=0)
    sparse = _fit(CInAZeroShot(**kw), d.X, d.T)
    monkeypatch.setattr(zs_est, "_support_start", lambda w, W, mask: w)  # the dense start
    dense = _fit(CInAZeroShot(**kw), d.X, d.T)
    assert sparse.refine_converged_ and dense.refine_converged_
    np.testing.assert_allclose(sparse.weights_, dense.weights_, atol=2e-4)
    assert sparse.balance_objective_ == pytest.approx(dense.balance_objective_, rel=1e-5)
