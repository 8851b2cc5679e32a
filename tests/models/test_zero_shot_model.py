"""The zero-shot CInA network: shapes, masks, weights, the balancing objective, bad inputs."""

import numpy as np
import pytest
import torch

from cina_ext.estimators import CInAZeroShot
from cina_ext.models.zero_shot import CInAZeroShotModel, collate_datasets
from cina_ext.training import train_zero_shot

from _zero_shot_cases import BALANCE, OVERLAP, TINY, _cfg, _datasets, _model, _threads  # noqa: F401

# ---- shapes and masks -------------------------------------------------------------------------


@pytest.mark.parametrize("estimands,estimand", [(OVERLAP, None), (BALANCE, "ate"), (BALANCE, "att")])
def test_shapes_and_padded_batch_matches_each_dataset_alone(estimands, estimand):
    m = _model(estimands=estimands)
    ds = _datasets(3)
    # give the datasets different covariate counts too (drop columns from the second)
    items = [(d.X, d.T) for d in ds]
    items[1] = (ds[1].X[:, :6], ds[1].T)
    X, W, mask, fm = collate_datasets(items, dtype=torch.float64)
    B, N, p = X.shape
    K, V, b = m(X, W, mask, fm, estimand=estimand)
    b_shape = (B,) if estimands == OVERLAP else (B, 2)
    assert K.shape == (B, N, TINY["key_dim"]) and V.shape == (B, N) and b.shape == b_shape
    assert torch.all(V[~mask] == 0) and torch.all(K[~mask] == 0)
    wts = m.weights(X, W, mask, fm, estimand=estimand)
    with torch.no_grad():
        Lb = m.loss(X, W, mask, fm, estimand=estimand)
    per = []
    for i, (x, t) in enumerate(items):
        Xi, Wi, mi, fi = collate_datasets([(x, t)], dtype=torch.float64)
        n = x.shape[0]
        Ki, Vi, bi = m(Xi, Wi, mi, fi, estimand=estimand)
        torch.testing.assert_close(K[i, :n], Ki[0], atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(V[i, :n], Vi[0], atol=1e-8, rtol=1e-9)
        torch.testing.assert_close(b[i], bi[0], atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(wts[i, :n], m.weights(Xi, Wi, mi, fi, estimand=estimand)[0], atol=1e-10, rtol=1e-8)
        with torch.no_grad():
            per.append(m.loss(Xi, Wi, mi, fi, estimand=estimand))
    torch.testing.assert_close(Lb, torch.stack(per).mean(), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("estimands,estimand", [(OVERLAP, None), (BALANCE, "ate"), (BALANCE, "att")])
def test_weights_nonnegative_sum_to_one_per_arm(estimands, estimand):
    m = _model(1, estimands=estimands)
    ds = _datasets(3, seed=1)
    X, W, mask, fm = collate_datasets(ds, dtype=torch.float64)
    w = m.weights(X, W, mask, fm, estimand=estimand)
    assert torch.all(w >= 0) and torch.all(w[~mask] == 0)
    for a in (1.0, -1.0):
        s = torch.where((W == a) & mask, w, torch.zeros_like(w)).sum(-1)
        torch.testing.assert_close(s, torch.ones_like(s))
    if estimand == "att":  # the treated keep their empirical distribution
        n1 = ((W > 0) & mask).sum(-1, keepdim=True).double()
        torch.testing.assert_close(w[(W > 0) & mask], (1.0 / n1).expand_as(w)[(W > 0) & mask])


def _rbf_mmd_objective(x, t, w, target, lam):
    """Independent numpy evaluation of the ate/att balancing objective (docs/method.md §6)."""
    z = (x - x.mean(0)) / x.std(0)
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    k = np.exp(-d2 / x.shape[1])
    total = 0.0
    arms = (1, 0) if target == "ate" else (0,)
    for a in arms:
        v = np.where(t == a, w, 0.0) - (
            np.full(len(t), 1.0 / len(t)) if target == "ate" else np.where(t == 1, 1.0 / np.sum(t == 1), 0.0)
        )
        total += v @ k @ v + lam * np.sum(np.where(t == a, w, 0.0) ** 2)
    return total


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_balance_objective_matches_independent_formula_and_exact_solver(estimand):
    from cina_ext.estimators import KernelBalancing

    m = _model(4, estimands=BALANCE)
    d = _datasets(1, seed=11, n_range=(40, 40))[0]
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    idx = m.estimand_index(estimand, 1, X.device)
    w = m.weights(X, W, mask, fm, estimand=estimand)
    got = float(m.balance_objective(X, W, mask, fm, w, idx)[0])
    want = _rbf_mmd_objective(d.X, d.T, w[0].numpy(), estimand, m.balance_lam)
    assert abs(got - want) < 1e-10 * max(1.0, abs(want))
    # the exact solver's weights (KernelBalancing with gamma 1/p, lam 0.01, standard scaling) minimise the same objective
    kb = KernelBalancing(estimand=estimand, tol=1e-9, gamma="scale", lam=0.01, scaling="standard").fit(d.X, d.T)
    best = float(m.balance_objective(X, W, mask, fm, torch.as_tensor(kb.weights_).unsqueeze(0), idx)[0])
    assert best <= got + 1e-12
    assert abs(best - _rbf_mmd_objective(d.X, d.T, kb.weights_, estimand, m.balance_lam)) < 1e-10
    # refinement from the network's weights reaches the exact optimum
    est = CInAZeroShot(model=m, estimand=estimand, refine=10_000, scaling="standard").fit(d.X, d.T)
    assert est.refine_converged_ and est.raw_balance_objective_ == pytest.approx(got, rel=1e-9)
    assert est.balance_objective_ == pytest.approx(best, rel=1e-6, abs=1e-10)
    np.testing.assert_allclose(est.weights_, kb.weights_, atol=1e-4)


def test_median_bandwidth_is_kernel_balancings_and_its_optimum_is_the_exact_solvers():
    """balance_gamma="median": per dataset of a padded batch, the bandwidth is KernelBalancing's
    median heuristic on the same standardised covariates, and the objective's minimiser is
    KernelBalancing(gamma="median", lam=0.01)'s weights."""
    from cina_ext.estimators import KernelBalancing
    from cina_ext.estimators.tuning import median_gamma

    torch.manual_seed(4)
    m = CInAZeroShotModel(**dict(TINY, estimands=BALANCE, balance_gamma="median")).double()
    assert m.config["balance_gamma"] == "median" and "balance_gamma" not in _model(4, estimands=BALANCE).config
    ds = _datasets(3, seed=12, n_range=(30, 50))
    items = [(d.X, d.T) for d in ds]
    items[1] = (ds[1].X[:, :5], ds[1].T)  # fewer covariates: a feature mask
    X, W, mask, fm = collate_datasets(items, dtype=torch.float64)
    Z = m.standardise(X, mask, fm)
    got = m.kernel_gamma(Z, mask, fm)
    for i, (x, _) in enumerate(items):
        z = (x - x.mean(0)) / x.std(0)
        assert float(got[i]) == pytest.approx(median_gamma(z, "rbf", seed=0), rel=1e-12)
    scale = _model(4, estimands=BALANCE)
    torch.testing.assert_close(scale.kernel_gamma(Z, mask, fm), 1.0 / fm.sum(-1).double())
    # the objective at the median bandwidth, and its minimiser
    d = ds[0]
    X1, W1, m1, f1 = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    idx = m.estimand_index("ate", 1, X1.device)
    w = m.weights(X1, W1, m1, f1, estimand="ate")
    kb = KernelBalancing(tol=1e-9, gamma="median", lam=0.01, scaling="standard").fit(d.X, d.T)
    assert float(got[0]) == pytest.approx(kb.gamma_, rel=1e-12)
    best = float(m.balance_objective(X1, W1, m1, f1, torch.as_tensor(kb.weights_).unsqueeze(0), idx)[0])
    assert best < float(m.balance_objective(X1, W1, m1, f1, w, idx)[0])
    est = CInAZeroShot(model=m, refine=10_000, scaling="standard").fit(d.X, d.T)
    assert est.refine_converged_ and est.balance_objective_ == pytest.approx(best, rel=1e-6, abs=1e-10)
    np.testing.assert_allclose(est.weights_, kb.weights_, atol=1e-4)
    with pytest.raises(ValueError, match="balance_gamma"):
        CInAZeroShotModel(**dict(TINY, estimands=BALANCE, balance_gamma="silverman"))


def test_median_bandwidth_of_a_large_dataset_uses_a_fixed_subsample():
    m = CInAZeroShotModel(**dict(TINY, estimands=BALANCE, balance_gamma="median")).double()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2300, 3))
    x[:, 0] = rng.standard_t(2, size=2300)  # heavy tails: the median is not a moment
    X = torch.as_tensor(x)[None]
    mask = torch.ones(1, 2300, dtype=torch.bool)
    fm = torch.ones(1, 3, dtype=torch.bool)
    Z = m.standardise(X, mask, fm)
    from cina_ext.estimators.tuning import median_gamma

    g1, g2 = m.kernel_gamma(Z, mask, fm), m.kernel_gamma(Z, mask, fm)
    assert float(g1) == float(g2)  # a function of the data
    z = Z[0, :, :3].numpy()
    assert float(g1) == median_gamma(z, "rbf", seed=0) != median_gamma(z, "rbf", seed=1)  # a subsample of 2000
    full = torch.pdist(Z[0]).square()
    assert float(g1) == pytest.approx(1.0 / float(full.median()), rel=0.05)


def test_sdpa_encoder_layer_matches_the_torch_module():
    from cina_ext.models.zero_shot import _encoder_layer

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True).double()
    h = torch.randn(3, 11, 16, dtype=torch.float64)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 1:] = False
    want = layer(h, src_key_padding_mask=~mask)
    got = _encoder_layer(layer, h, mask[:, None, None, :])
    torch.testing.assert_close(got[mask], want[mask], atol=1e-12, rtol=1e-10)


def test_unrolled_steps_dense_and_flash_paths_agree():
    m = _model(5, estimands=BALANCE, unroll=3)
    ds = _datasets(3, seed=9)
    X, W, mask, fm = collate_datasets(ds, dtype=torch.float64)
    idx = torch.tensor([0, 1, 0])
    outs = []
    for dense in (True, False):
        m.materialise_unroll = dense
        m.zero_grad()
        K, V, b = m(X, W, mask, fm, idx)
        w = m.balance_weights(K, V, b, W, mask, idx)
        m.balance_objective(X, W, mask, fm, w, idx).sum().backward()
        outs.append((w.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-12, rtol=1e-9)
    for g1, g2 in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(g1, g2, atol=1e-10, rtol=1e-7)


def test_standardisation_is_affine_invariant():
    m = _model(2)
    d = _datasets(1, seed=2)[0]
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    X2, *_ = collate_datasets([(d.X * 3.0 + 5.0, d.T)], dtype=torch.float64)
    torch.testing.assert_close(m.weights(X, W, mask, fm), m.weights(X2, W, mask, fm), atol=1e-8, rtol=1e-6)


def test_bad_inputs_raise():
    m = _model()
    X = torch.randn(1, 10, 33, dtype=torch.float64)
    W = torch.tensor([[1.0, -1.0] * 5], dtype=torch.float64)
    with pytest.raises(ValueError, match="max_features"):
        m(X, W)
    with pytest.raises(ValueError, match="W must"):
        m(X[..., :3], W * 2)
    with pytest.raises(ValueError, match="shape"):
        m(X[..., :3], W[:, :5])
    Xn = X[..., :3].clone()
    Xn[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(Xn, W)
    with pytest.raises(TypeError):
        m(X[..., :3].numpy(), W)
    with pytest.raises(ValueError, match="lam"):
        CInAZeroShotModel(lam=0.0)
    with pytest.raises(ValueError, match="multiple of the world size"):
        train_zero_shot(_cfg(batch_size=0))
    with pytest.raises(ValueError, match="unknown"):
        train_zero_shot({"nope": 1})
    with pytest.raises(FileNotFoundError, match="no zero-shot checkpoint"):
        CInAZeroShot.from_pretrained("/nonexistent/zs.pt")
    with pytest.raises(ValueError, match="trained model"):
        CInAZeroShot().fit(np.random.randn(10, 2), np.array([0, 1] * 5))
    est = CInAZeroShot(model=m)
    # the model refuses more than max_features covariates; the estimator projects them
    assert est.fit(np.random.randn(50, 40), np.array([0, 1] * 25)).n_inputs_ == m.max_features
    with pytest.raises(ValueError):
        est.fit(np.random.randn(10, 2), np.ones(10))  # one arm only
    with pytest.raises(RuntimeError, match="fit"):
        CInAZeroShot(model=m).ate(np.zeros(10))
    with pytest.raises(ValueError, match="trained for the estimand"):
        CInAZeroShot(model=m, estimand="overlap").fit(np.random.randn(10, 2), np.array([0, 1] * 5))
    with pytest.raises(ValueError, match="refine"):
        CInAZeroShot(model=m, refine=-1).fit(np.random.randn(10, 2), np.array([0, 1] * 5))
    with pytest.raises(ValueError, match="refine needs"):
        CInAZeroShot(model=_model(estimands=OVERLAP), refine=5).fit(np.random.randn(10, 2), np.array([0, 1] * 5))
    with pytest.raises(ValueError, match="supervised_weight"):
        train_zero_shot(_cfg(supervised_weight=1.0, model=dict(TINY, estimands=OVERLAP)))
    with pytest.raises(ValueError, match="estimands"):
        CInAZeroShotModel(estimands=("overlap", "ate"))
