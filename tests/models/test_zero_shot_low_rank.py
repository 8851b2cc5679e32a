"""The landmark path's descent steps and refinement in random Fourier features (O(N r)), and the
feature-map product of objective_descent."""

import numpy as np
import pytest
import torch

from cina_ext.data import make_setoguchi
from cina_ext.estimators import CInAZeroShot, KernelBalancing
from cina_ext.estimators.low_rank import RandomFourierFeatures, simplex_balance
from cina_ext.models.zero_shot import CInAZeroShotModel, collate_datasets

from _zero_shot_cases import BALANCE, TINY, _datasets, _threads  # noqa: F401


def _median_model(seed=4):
    torch.manual_seed(seed)
    return CInAZeroShotModel(**dict(TINY, estimands=BALANCE, balance_gamma="median")).double().eval()


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_descent_with_an_exact_factor_of_the_kernel_matches_the_gram_path(estimand):
    # features whose inner products are the exact RBF kernel: the same steps as the Gram matrix
    m = _median_model()
    d = _datasets(1, seed=31, n_range=(50, 50))[0]
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    idx = m.estimand_index(estimand, 1, X.device)
    with torch.no_grad():
        w = m.weights(X, W, mask, fm, estimand=estimand)
    Z = m.standardise(X, mask, fm)
    gamma = m.kernel_gamma(Z, mask, fm)
    K = torch.exp(-gamma * torch.cdist(Z[0], Z[0]) ** 2)
    lam, U = torch.linalg.eigh(K)
    Phi = (U * lam.clamp_min(0).sqrt())[None]
    w_gram, obj_gram = m.objective_descent(X, W, mask, fm, w, idx, 12)
    w_feat, obj_feat = m.objective_descent(X, W, mask, fm, w, idx, 12, features=Phi)
    torch.testing.assert_close(w_feat, w_gram, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(obj_feat, obj_gram, rtol=1e-4, atol=1e-9)
    assert float(obj_feat[0]) < float(m.balance_objective(X, W, mask, fm, w, idx)[0])
    with pytest.raises(ValueError, match="features must have shape"):
        m.objective_descent(X, W, mask, fm, w, idx, 2, features=Phi[:, :10])
    bad = Phi.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        m.objective_descent(X, W, mask, fm, w, idx, 2, features=bad)
    with pytest.raises(ValueError, match="floating point"):
        m.objective_descent(X, W, mask, fm, w, idx, 2, features=Phi.long())
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="signs W on"):
            m.objective_descent(X, W, mask, fm, w, idx, 2, features=Phi.cuda())


def test_descent_on_a_padded_batch_ignores_the_padded_rows_of_the_features():
    m = _median_model()
    ds = _datasets(2, seed=32, n_range=(20, 40))
    X, W, mask, fm = collate_datasets([(d.X, d.T) for d in ds], dtype=torch.float64)
    idx = m.estimand_index("ate", 2, X.device)
    with torch.no_grad():
        w = m.weights(X, W, mask, fm, estimand="ate")
    Phi = torch.randn(2, X.shape[1], 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    junk = Phi.clone()
    junk[~mask] = 1e3  # whatever the padded rows hold
    a, _ = m.objective_descent(X, W, mask, fm, w, idx, 6, features=Phi)
    b, _ = m.objective_descent(X, W, mask, fm, w, idx, 6, features=junk)
    torch.testing.assert_close(a, b)
    for k in range(2):
        n = int(mask[k].sum())
        one, _ = m.objective_descent(
            X[k : k + 1, :n],
            W[k : k + 1, :n],
            mask[k : k + 1, :n],
            fm[k : k + 1],
            w[k : k + 1, :n],
            idx[:1],
            6,
            features=Phi[k : k + 1, :n],
        )
        torch.testing.assert_close(a[k, :n], one[0])


def test_simplex_balance_warm_start():
    rng = np.random.default_rng(3)
    Phi = rng.standard_normal((300, 12))
    mu = Phi[:40].mean(0) + 0.05
    cold = simplex_balance(Phi, mu, 0.01, tol=1e-12, max_iter=2000)
    theta = Phi.T @ cold.weights - mu  # the imbalance of the optimum is the dual optimum
    warm = simplex_balance(Phi, mu, 0.01, tol=1e-12, max_iter=2000, theta0=theta)
    np.testing.assert_allclose(warm.weights, cold.weights, atol=1e-8)
    assert warm.iterations < cold.iterations
    near = simplex_balance(Phi, mu, 0.01, tol=1e-12, max_iter=2000, theta0=theta + 0.01)
    np.testing.assert_allclose(near.weights, cold.weights, atol=1e-6)
    for bad in (np.zeros(5), np.full(12, np.nan)):
        with pytest.raises(ValueError, match="theta0"):
            simplex_balance(Phi, mu, 0.01, theta0=bad)


def _objective(model, d, w, estimand="ate"):
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    idx = model.estimand_index(estimand, 1, X.device)
    return float(model.balance_objective(X, W, mask, fm, torch.as_tensor(w)[None], idx)[0])


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_landmark_refine_reaches_the_low_rank_optimum_near_the_exact_one(estimand, monkeypatch):
    import importlib

    # the feature path of large datasets, at a size this test can afford
    monkeypatch.setattr(importlib.import_module("cina_ext.estimators.zero_shot"), "DESCENT_EXACT_LIMIT", 399)
    m = _median_model()
    d = make_setoguchi(400, "G", seed=5)
    kw = dict(model=m, estimand=estimand, approximation="landmarks", landmarks=48, scaling="standard", random_state=2)
    raw = CInAZeroShot(descent_steps=0, **kw).fit(d.X, d.T)
    est = CInAZeroShot(descent_steps=0, refine=3000, **kw).fit(d.X, d.T)
    assert est.refine_kkt_ < 1e-7 and 0 < est.refine_iterations_ < 3000
    np.testing.assert_allclose(est.raw_weights_, raw.weights_)
    t = d.T == 1
    assert est.weights_[t].sum() == pytest.approx(1.0) and est.weights_[~t].sum() == pytest.approx(1.0)
    assert (est.weights_ >= 0).all()
    if estimand == "att":
        np.testing.assert_allclose(est.weights_[t], 1.0 / t.sum())
    # the same problem solved from scratch in the same features (cold start) has the same optimum
    X, _, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    Zt = m.standardise(X, mask, fm)
    gamma = float(m.kernel_gamma(Zt, mask, fm)[0])
    Z = Zt[0, :, : d.X.shape[1]].numpy()
    phi = RandomFourierFeatures(Z.shape[1], gamma, 512, 2).transform(Z, dtype=np.float32)
    target = phi[t].astype(np.float64).mean(0) if estimand == "att" else phi.astype(np.float64).mean(0)
    for arm in [False] if estimand == "att" else [True, False]:
        sel = t == arm
        cold = simplex_balance(phi[sel], target, m.balance_lam, tol=1e-12, max_iter=5000)
        np.testing.assert_allclose(est.weights_[sel], cold.weights, atol=2e-4)
    # and that optimum is close to the exact kernel's (KernelBalancing) on the exact objective
    kb = KernelBalancing(estimand=estimand, tol=1e-10, gamma="median", lam=m.balance_lam, scaling="standard").fit(
        d.X, d.T
    )
    best, got, start = (_objective(m, d, w, estimand) for w in (kb.weights_, est.weights_, raw.weights_))
    assert best <= got * (1 + 1e-9) and got - best < 0.1 * (start - best)


def test_landmark_descent_steps_run_in_features_and_lower_the_objective(monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("cina_ext.estimators.zero_shot"), "DESCENT_EXACT_LIMIT", 299)
    m = _median_model()
    d = make_setoguchi(300, "A", seed=6)
    kw = dict(model=m, approximation="landmarks", landmarks=40, scaling="standard", random_state=1)
    raw = CInAZeroShot(descent_steps=0, **kw).fit(d.X, d.T)
    est = CInAZeroShot(descent_steps=24, **kw).fit(d.X, d.T)
    assert raw.descent_steps_ == 0 and est.descent_steps_ == 24
    np.testing.assert_allclose(est.raw_weights_, raw.weights_)
    assert _objective(m, d, est.weights_) < 0.9 * _objective(m, d, raw.weights_)
    again = CInAZeroShot(descent_steps=24, **kw).fit(d.X, d.T)
    np.testing.assert_array_equal(again.weights_, est.weights_)  # features seeded by random_state


def test_exact_path_switches_to_features_above_the_descent_limit(monkeypatch):
    import importlib

    zs_est = importlib.import_module("cina_ext.estimators.zero_shot")
    m = _median_model()
    d = make_setoguchi(300, "G", seed=7)
    kw = dict(model=m, scaling="standard", approximation="exact")
    raw = CInAZeroShot(descent_steps=0, **kw).fit(d.X, d.T)
    gram = CInAZeroShot(descent_steps=16, **kw).fit(d.X, d.T)
    monkeypatch.setattr(zs_est, "DESCENT_EXACT_LIMIT", 299)
    feats = CInAZeroShot(descent_steps=16, **kw).fit(d.X, d.T)
    np.testing.assert_allclose(feats.raw_weights_, raw.weights_)  # the same network pass ...
    assert not np.allclose(feats.weights_, gram.weights_)  # ... then the steps in features
    assert _objective(m, d, feats.weights_) < 0.9 * _objective(m, d, raw.weights_)
    again = CInAZeroShot(descent_steps=16, **kw).fit(d.X, d.T)
    np.testing.assert_array_equal(again.weights_, feats.weights_)  # no random_state: features seeded 0
    other = CInAZeroShot(descent_steps=16, random_state=5, **kw).fit(d.X, d.T)
    assert not np.array_equal(other.weights_, feats.weights_)
    refined = CInAZeroShot(descent_steps=16, refine=2000, **kw).fit(d.X, d.T)
    assert refined.refine_kkt_ < 1e-7  # the low-rank dual's gap
    many = CInAZeroShot(descent_steps=16, refine=2000, **kw).estimate_many([(d.X, d.T, d.Y)])
    assert many[0] == pytest.approx(refined.ate(d.Y), abs=1e-6)


@pytest.mark.parametrize("kernel", ["rbf", "laplace"])
def test_random_fourier_features_of_a_tensor_are_the_numpy_ones(kernel):
    Z = np.random.default_rng(8).standard_normal((70, 5))
    fmap = RandomFourierFeatures(5, 0.3, 64, seed=3, chunk=16, kernel=kernel)  # several chunks
    ref = fmap.transform(Z, dtype=np.float64)
    np.testing.assert_allclose(fmap.transform_tensor(torch.as_tensor(Z)).numpy(), ref, rtol=0, atol=1e-12)
    f32 = fmap.transform_tensor(torch.as_tensor(Z, dtype=torch.float32))
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), ref, atol=1e-5)


def test_estimate_many_never_batches_across_the_descent_limit(monkeypatch):
    import importlib

    zs_est = importlib.import_module("cina_ext.estimators.zero_shot")
    monkeypatch.setattr(zs_est, "DESCENT_EXACT_LIMIT", 350)
    m = _median_model()
    ds = [make_setoguchi(n, "A", seed=n) for n in (300, 320, 400)]
    est = CInAZeroShot(model=m, scaling="standard", batch_size=3, random_state=4)
    many = est.estimate_many([(d.X, d.T, d.Y) for d in ds])
    single = [est.fit(d.X, d.T).ate(d.Y) for d in ds]
    # the two small datasets take the Gram matrix, the large one the features, as fit does
    np.testing.assert_allclose(many, single, atol=1e-4)


def test_a_generator_random_state_gives_one_feature_map_per_estimate_many_call(monkeypatch):
    import importlib

    zs_est = importlib.import_module("cina_ext.estimators.zero_shot")
    monkeypatch.setattr(zs_est, "DESCENT_EXACT_LIMIT", 250)
    m = _median_model()
    d = make_setoguchi(300, "A", seed=9)
    est = CInAZeroShot(model=m, scaling="standard", batch_size=1, random_state=np.random.default_rng(2))
    # the same dataset twice, in two batches: the same features, so the same estimate
    many = est.estimate_many([(d.X, d.T, d.Y), (d.X, d.T, d.Y)])
    assert many[0] == many[1]
    # and a fit's features differ from another draw's, but not within the fit
    a = CInAZeroShot(model=m, scaling="standard", random_state=np.random.default_rng(2)).fit(d.X, d.T)
    b = CInAZeroShot(model=m, scaling="standard", random_state=np.random.default_rng(2)).fit(d.X, d.T)
    np.testing.assert_array_equal(a.weights_, b.weights_)


def test_valid_block_selects_a_datasets_units_and_covariates():
    Z = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 4, 3)
    mask = torch.tensor([[True, False, True, True], [True, True, False, False]])
    narrow = torch.tensor([[True, False], [True, True]])  # a third column is padding
    blk = CInAZeroShotModel.valid_block(Z, mask, narrow, 0)
    torch.testing.assert_close(blk, Z[0][[0, 2, 3]][:, [0]])
    wide = torch.tensor([[True, True, False, True], [False, True, True, True]])  # no fourth column
    torch.testing.assert_close(CInAZeroShotModel.valid_block(Z, mask, wide, 1), Z[1][:2][:, [1, 2]])
