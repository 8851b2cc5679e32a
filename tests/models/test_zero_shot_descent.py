"""The descent steps on the balancing objective after the zero-shot read-out (objective_descent)."""

import numpy as np
import pytest
import torch

from cina_ext.estimators import CInAZeroShot, KernelBalancing
from cina_ext.models import zero_shot as zs
from cina_ext.models.zero_shot import CInAZeroShotModel, collate_datasets

from _zero_shot_cases import BALANCE, OVERLAP, TINY, _datasets, _model, _threads  # noqa: F401


def _median_model(seed=4):
    torch.manual_seed(seed)
    return CInAZeroShotModel(**dict(TINY, estimands=BALANCE, balance_gamma="median")).double().eval()


def _one(d, model, estimand):
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    idx = model.estimand_index(estimand, 1, X.device)
    with torch.no_grad():
        w = model.weights(X, W, mask, fm, estimand=estimand)
    return X, W, mask, fm, idx, w


@pytest.mark.parametrize("gamma", ["scale", "median"])
@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_descent_lowers_the_objective_towards_the_exact_optimum(estimand, gamma):
    m = _model(4, estimands=BALANCE) if gamma == "scale" else _median_model()
    d = _datasets(1, seed=21, n_range=(60, 60))[0]
    X, W, mask, fm, idx, w = _one(d, m, estimand)
    start = float(m.balance_objective(X, W, mask, fm, w, idx)[0])
    w0, obj0 = m.objective_descent(X, W, mask, fm, w, idx, 0)
    torch.testing.assert_close(w0, w)  # no step: the read-out's weights and their objective
    assert float(obj0[0]) == pytest.approx(start, rel=1e-5)
    kb = KernelBalancing(estimand=estimand, tol=1e-10, gamma=gamma, lam=m.balance_lam, scaling="standard").fit(d.X, d.T)
    best = float(m.balance_objective(X, W, mask, fm, torch.as_tensor(kb.weights_)[None], idx)[0])
    assert best < start
    gaps = []
    for steps in (1, 4, 16, 200):
        ws, obj = m.objective_descent(X, W, mask, fm, w, idx, steps)
        got = float(m.balance_objective(X, W, mask, fm, ws, idx)[0])
        assert float(obj[0]) == pytest.approx(got, rel=1e-5)  # the returned objective is the weights'
        assert got <= start * (1 + 1e-6)
        gaps.append((got - best) / (start - best))
        # weights: non-negative, one per arm, the treated of "att" unchanged at 1/n1
        t = torch.as_tensor(d.T, dtype=torch.bool)
        assert bool((ws >= 0).all())
        assert float(ws[0][t].sum()) == pytest.approx(1.0, abs=1e-12)
        assert float(ws[0][~t].sum()) == pytest.approx(1.0, abs=1e-12)
        if estimand == "att":
            torch.testing.assert_close(ws[0][t], torch.full((int(t.sum()),), 1.0 / int(t.sum()), dtype=ws.dtype))
    assert gaps == sorted(gaps, reverse=True)  # more steps, closer to the optimum
    assert gaps[2] < 0.1 and gaps[3] < 1e-3, gaps


def test_descent_of_a_padded_batch_matches_each_dataset_alone():
    m = _median_model()
    ds = _datasets(3, seed=22, n_range=(20, 45))
    items = [(d.X, d.T) for d in ds]
    items[1] = (ds[1].X[:, :4], ds[1].T)  # fewer covariates: a feature mask
    X, W, mask, fm = collate_datasets(items, dtype=torch.float64)
    est = ["ate", "att", "ate"]
    idx = m.estimand_index(est, 3, X.device)
    with torch.no_grad():
        w = m.weights(X, W, mask, fm, estimand=est)
    wb, ob = m.objective_descent(X, W, mask, fm, w, idx, 12)
    assert bool((wb[~mask] == 0).all())
    for i, (x, t) in enumerate(items):
        X1, W1, m1, f1 = collate_datasets([(x, t)], dtype=torch.float64)
        i1 = m.estimand_index(est[i], 1, X1.device)
        with torch.no_grad():
            w1 = m.weights(X1, W1, m1, f1, estimand=est[i])
        ws, o1 = m.objective_descent(X1, W1, m1, f1, w1, i1, 12)
        n = len(t)
        torch.testing.assert_close(wb[i, :n], ws[0], rtol=1e-5, atol=1e-7)
        assert float(ob[i]) == pytest.approx(float(o1[0]), rel=1e-5)


def test_blocked_gram_products_match_the_materialised_matrix(monkeypatch):
    m = _median_model()
    d = _datasets(1, seed=23, n_range=(50, 50))[0]
    X, W, mask, fm, idx, w = _one(d, m, "ate")
    full, of = m.objective_descent(X, W, mask, fm, w, idx, 10)
    monkeypatch.setattr(zs, "DESCENT_KERNEL_LIMIT", 0)  # recompute the Gram matrix at every step
    monkeypatch.setattr(zs, "_DESCENT_BLOCK", 7 * 50)  # in blocks of 7 rows (the last one short)
    blocked, ob = m.objective_descent(X, W, mask, fm, w, idx, 10)
    # the same steps up to the float32 rounding of the blocked products (amplified by the steps)
    torch.testing.assert_close(blocked, full, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(ob, of, rtol=1e-5, atol=1e-12)


def test_a_batch_beyond_the_kernel_limit_runs_in_sub_batches_that_hold_their_gram_matrix(monkeypatch):
    m = _median_model()
    ds = _datasets(5, seed=25, n_range=(30, 40))
    X, W, mask, fm = collate_datasets([(d.X, d.T) for d in ds], dtype=torch.float64)
    idx = m.estimand_index(["ate", "att", "ate", "att", "ate"], 5, X.device)
    with torch.no_grad():
        w = m.weights(X, W, mask, fm, estimand=["ate", "att", "ate", "att", "ate"])
    whole, ow = m.objective_descent(X, W, mask, fm, w, idx, 10)
    N = X.shape[1]
    formed = []
    real = zs._rbf_gram

    def spy(Z, gamma):
        formed.append(Z.shape[0])
        return real(Z, gamma)

    monkeypatch.setattr(zs, "_rbf_gram", spy)
    monkeypatch.setattr(zs, "DESCENT_KERNEL_LIMIT", 2 * N * N)  # two datasets' Gram matrices
    monkeypatch.setattr(zs, "_DESCENT_BLOCK", 0)  # any recomputation would be one row at a time
    parts, op = m.objective_descent(X, W, mask, fm, w, idx, 10)
    assert formed == [2, 2, 1]
    # each dataset's steps are its own: the sub-batches give the whole batch's result, up to the
    # float32 rounding of a product of another batch shape (amplified by the steps)
    torch.testing.assert_close(parts, whole, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(op, ow, rtol=1e-5, atol=1e-12)


def test_line_search_keeps_a_too_large_step_from_diverging():
    """A step size far above the stable range: the line search (and the best iterate) keep the
    result at or below the start, where plain steps of that size blow the objective up."""
    m = _median_model()
    d = _datasets(1, seed=24, n_range=(60, 60))[0]
    X, W, mask, fm, idx, w = _one(d, m, "ate")
    start = float(m.balance_objective(X, W, mask, fm, w, idx)[0])
    ws, obj = m.objective_descent(X, W, mask, fm, w, idx, 20, step_size=500.0, momentum=0.9)
    assert float(obj[0]) < start
    assert bool(torch.isfinite(ws).all())
    # every step is a line search: the objective never rises from one step to the next
    objs = [float(m.objective_descent(X, W, mask, fm, w, idx, k, step_size=500.0)[1][0]) for k in range(8)]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(objs, objs[1:])), objs


def test_descent_bad_arguments_raise():
    m = _model(4, estimands=BALANCE)
    d = _datasets(1, seed=25, n_range=(20, 20))[0]
    X, W, mask, fm, idx, w = _one(d, m, "ate")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            m.objective_descent(X, W, mask, fm, w, idx, bad)
    with pytest.raises(ValueError, match="step_size"):
        m.objective_descent(X, W, mask, fm, w, idx, 2, step_size=0.0)
    with pytest.raises(ValueError, match="momentum"):
        m.objective_descent(X, W, mask, fm, w, idx, 2, momentum=1.0)
    with pytest.raises(ValueError, match="ate/att"):
        _model(4, estimands=OVERLAP).objective_descent(X, W, mask, fm, w, idx, 2)


def test_estimator_runs_the_default_steps_and_zero_gives_the_network():
    m = _median_model()
    d = _datasets(1, seed=26, n_range=(80, 80))[0]
    net = CInAZeroShot(model=m, descent_steps=0, scaling="standard").fit(d.X, d.T)
    assert net.descent_steps_ == 0 and not hasattr(net, "raw_weights_")
    X, W, mask, fm, idx, w = _one(d, m, "ate")
    np.testing.assert_allclose(net.weights_, w[0].numpy(), rtol=1e-12)
    # "exact": the steps start from the exact pass (the default's starts against landmarks)
    est = CInAZeroShot(model=m, scaling="standard", approximation="exact").fit(d.X, d.T)
    assert est.descent_steps_ == zs.DESCENT_STEPS > 0
    np.testing.assert_allclose(est.raw_weights_, net.weights_, rtol=1e-12)
    assert est.raw_balance_objective_ == pytest.approx(net.balance_objective_, rel=1e-9)
    assert est.balance_objective_ < net.balance_objective_
    want, _ = m.objective_descent(X, W, mask, fm, w, idx, zs.DESCENT_STEPS)
    np.testing.assert_allclose(est.weights_, want[0].numpy(), rtol=1e-5, atol=1e-8)
    # estimate_many runs the same steps
    y = d.Y
    many = CInAZeroShot(model=m, scaling="standard", approximation="exact").estimate_many([(d.X, d.T, y)])
    assert float(many[0]) == pytest.approx(est.ate(y), rel=1e-6, abs=1e-9)
    assert est.summary(y)["details"]["descent_steps"] == zs.DESCENT_STEPS


def test_estimator_descends_on_all_the_covariates_of_a_wide_table():
    """Above max_features the network reads a projection; the descent's kernel uses every column."""
    torch.manual_seed(5)
    m = CInAZeroShotModel(**dict(TINY, estimands=BALANCE, max_features=4, balance_gamma="median")).double().eval()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((70, 9))
    t = (rng.random(70) < 1 / (1 + np.exp(-x[:, 0] - x[:, 7]))).astype(int)
    net = CInAZeroShot(model=m, descent_steps=0, scaling="standard").fit(x, t)
    est = CInAZeroShot(model=m, descent_steps=30, scaling="standard").fit(x, t)
    assert net.n_inputs_ == est.n_inputs_ == 4
    kb = KernelBalancing(tol=1e-10, gamma="median", lam=m.balance_lam, scaling="standard").fit(x, t)
    X, W, mask, fm = collate_datasets([(x, t)], dtype=torch.float64)
    idx = m.estimand_index("ate", 1, X.device)
    best = float(m.balance_objective(X, W, mask, fm, torch.as_tensor(kb.weights_)[None], idx)[0])
    got = float(m.balance_objective(X, W, mask, fm, torch.as_tensor(est.weights_)[None], idx)[0])
    assert est.balance_objective_ == pytest.approx(got, rel=1e-5)  # measured on all 9 columns
    assert best <= got < net.balance_objective_
    assert (got - best) < 0.25 * (net.balance_objective_ - best)


def test_estimator_descent_steps_validation():
    m = _model(4, estimands=BALANCE)
    d = _datasets(1, seed=27, n_range=(30, 30))[0]
    for bad in (-1, 2.0, True, "16"):
        with pytest.raises(ValueError, match="descent_steps"):
            CInAZeroShot(model=m, descent_steps=bad).fit(d.X, d.T)
    with pytest.raises(ValueError, match="descent_steps needs an ate/att model"):
        CInAZeroShot(model=_model(4, estimands=OVERLAP), descent_steps=3).fit(d.X, d.T)
    overlap = CInAZeroShot(model=_model(4, estimands=OVERLAP)).fit(d.X, d.T)  # default: no steps
    assert overlap.descent_steps_ == 0
    lm = CInAZeroShot(model=m, approximation="landmarks", landmarks=8, random_state=0).fit(d.X, d.T)
    assert lm.descent_steps_ == zs.DESCENT_STEPS  # the default runs them on the landmark path too


def test_descent_backends_agree():
    """The compiled steps (the CPU default) and their PyTorch twin take the same steps, up to the
    float32 products' summation order; "fused" is the default's kernel exactly."""
    m = _median_model()
    ds = _datasets(3, seed=27, n_range=(40, 70))
    X, W, mask, fm = collate_datasets([(d.X, d.T) for d in ds], dtype=torch.float64)
    idx = m.estimand_index(["ate", "att", "ate"], 3, X.device)
    with torch.no_grad():
        w = m.weights(X, W, mask, fm, estimand=["ate", "att", "ate"])
    auto = m.objective_descent(X, W, mask, fm, w, idx, 12)
    fused = m.objective_descent(X, W, mask, fm, w, idx, 12, backend="fused")
    twin = m.objective_descent(X, W, mask, fm, w, idx, 12, backend="reference")
    assert torch.equal(auto[0], fused[0]) and torch.equal(auto[1], fused[1])
    torch.testing.assert_close(twin[0], auto[0], rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(twin[1], auto[1], rtol=1e-5, atol=1e-12)
    assert not torch.equal(twin[0], auto[0])  # two implementations, not one called twice
