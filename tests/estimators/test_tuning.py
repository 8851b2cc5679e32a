"""Data-driven tuning of KernelBalancing (cina_ext/estimators/tuning.py, docs/method.md §8): the
median heuristic against a brute-force computation, the lam="auto" rule on cases whose answer is
known by construction and against separate fits, and the laplace kernel in the estimator."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from cina_ext.data import make_setoguchi
from cina_ext.estimators import KernelBalancing
from cina_ext.estimators.tuning import LAM_FACTOR, LAM_GRID, LAM_SLACK, median_gamma, select_lam
from cina_ext.ops import dual_solve
from cina_ext.reference import dual_solve as ref_dual_solve


def brute_median(Z, kernel):
    """Median over the pairs i < j of the distance (laplace) or squared distance (rbf), by loops."""
    vals = []
    for i, j in itertools.combinations(range(len(Z)), 2):
        d = math.sqrt(sum((a - b) ** 2 for a, b in zip(Z[i], Z[j])))
        if d > 0:
            vals.append(d if kernel == "laplace" else d * d)
    vals.sort()
    m = len(vals)
    return vals[m // 2] if m % 2 else 0.5 * (vals[m // 2 - 1] + vals[m // 2])


def standardise(X):
    X = np.asarray(X, dtype=float)
    return (X - X.mean(0)) / X.std(0)


# ----------------------------------------------------------------------------------------------
# median heuristic
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["rbf", "laplace"])
@pytest.mark.parametrize("n", [14, 15])  # an even and an odd number of pairs
def test_median_gamma_equals_brute_force(kernel, n):
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((n, 3)) * np.array([1.0, 2.0, 0.5])
    Z[4] = Z[1]  # a duplicated row: its pair (distance 0) is left out
    got = median_gamma(Z, kernel, seed=0)
    assert got == pytest.approx(1.0 / brute_median(Z.tolist(), kernel), rel=1e-12)


def test_median_gammas_of_many_blocks_equal_one_at_a_time():
    """The thread-pooled batch gives each block the value median_gamma gives it alone (bitwise),
    in order, for brute-force-checked values too."""
    from cina_ext._core.bandwidth import median_gammas

    rng = np.random.default_rng(4)
    blocks = [rng.normal(size=(n, 3)) * (1 + i) for i, n in enumerate((5, 40, 2, 300, 17, 60))]
    for kernel in ("rbf", "laplace"):
        many = median_gammas(blocks, kernel, seed=3)
        assert many == [median_gamma(b, kernel, seed=3) for b in blocks]
        assert many[0] == pytest.approx(1.0 / brute_median(blocks[0].tolist(), kernel))
    assert median_gammas([], "rbf", seed=0) == []
    assert median_gammas(blocks[:1], "rbf", seed=0) == [median_gamma(blocks[0], "rbf", seed=0)]


def test_median_gamma_subsample_is_seeded_and_bounded():
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((60, 2))
    a = median_gamma(Z, "rbf", seed=5, max_units=20)
    assert a == median_gamma(Z, "rbf", seed=5, max_units=20)  # deterministic given the seed
    assert a != median_gamma(Z, "rbf", seed=6, max_units=20)
    # the documented subsample: 20 rows drawn by default_rng([seed, 1]) without replacement
    idx = np.sort(np.random.default_rng([5, 1]).choice(60, size=20, replace=False))
    assert a == pytest.approx(1.0 / brute_median(Z[idx].tolist(), "rbf"), rel=1e-12)
    # at most max_units units: the full-data value when N <= max_units
    assert median_gamma(Z, "rbf", seed=5, max_units=60) == pytest.approx(1.0 / brute_median(Z.tolist(), "rbf"))


def test_median_gamma_degenerate_and_bad_kernel():
    Z = np.ones((5, 4))
    assert median_gamma(Z, "rbf", 0) == pytest.approx(1 / 4)
    assert median_gamma(Z, "laplace", 0) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="rbf and laplace"):
        median_gamma(Z, "linear", 0)


@pytest.mark.parametrize("kernel", ["rbf", "laplace"])
def test_estimator_median_gamma_on_standardised_covariates(kernel):
    ds = make_setoguchi(120, "A", seed=1)
    est = KernelBalancing(kernel=kernel, gamma="median", random_state=0, scaling="standard").fit(ds.X, ds.T)
    Zs = standardise(ds.X)
    assert est.gamma_ == pytest.approx(1.0 / brute_median(Zs.tolist(), kernel), rel=1e-10)
    d = est.summary()["details"]
    assert d["gamma"] == est.gamma_ and d["gamma_rule"] == "median"
    auto = KernelBalancing(kernel=kernel, gamma="auto", random_state=0, scaling="standard").fit(ds.X, ds.T)
    assert auto.gamma_ == est.gamma_
    # a number is used as given; "scale" is 1/p (rbf) or 1/sqrt(p) (laplace)
    assert KernelBalancing(kernel=kernel, gamma=0.37).fit(ds.X, ds.T).gamma_ == 0.37
    p = ds.X.shape[1]
    scale = KernelBalancing(kernel=kernel, gamma="scale", scaling="standard").fit(ds.X, ds.T).gamma_
    assert scale == pytest.approx(1 / p if kernel == "rbf" else 1 / math.sqrt(p))


# ----------------------------------------------------------------------------------------------
# lam="auto"
# ----------------------------------------------------------------------------------------------


def _shifted_weights(s):
    """4 treated at x = -1, -1, 1, 1 (uniform, mean 0) and 4 controls at the same points with
    weights putting their mean at m = s sqrt(4/3): both arms' unweighted SDs (n - 1 denominator)
    are sqrt(4/3), so the weighted |SMD| is exactly s."""
    m = s * math.sqrt(4.0 / 3.0)
    X = np.array([[-1.0], [-1.0], [1.0], [1.0]] * 2)
    T = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    w = np.array([0.25] * 4 + [1 - m, 1 - m, 1 + m, 1 + m]) / np.array([1] * 4 + [4] * 4)
    return X, T, w


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_select_lam_rule_on_known_imbalances(estimand):
    ms = [0.10, 0.14, 0.16, 0.30]
    X, T, _ = _shifted_weights(0.0)
    weights = [_shifted_weights(m)[2] for m in ms]
    grid = [1e-3, 1e-2, 1e-1, 1.0]
    sel = select_lam(X, T, weights, grid, estimand=estimand, converged=[True] * 4, factor=1.5, slack=0.01)
    np.testing.assert_allclose(sel.imbalance, ms, rtol=1e-12)
    # best 0.10, threshold max(0.15, 0.11) = 0.15: 0.14 is the last one within it
    assert sel.lam == 1e-2 and sel.index == 1 and sel.threshold == pytest.approx(0.15)
    # the additive slack wins when it is looser: threshold 0.10 + 0.07
    assert select_lam(X, T, weights, grid, estimand=estimand, converged=[True] * 4, factor=1.5, slack=0.07).lam == 1e-1
    # a solve that did not converge is never picked nor the reference: best 0.14, threshold 0.21
    sel = select_lam(
        X, T, weights, grid, estimand=estimand, converged=[False, True, True, True], factor=1.5, slack=0.01
    )
    assert sel.lam == 1e-1
    assert (
        select_lam(X, T, weights, grid, estimand=estimand, converged=[True, True, False, True], factor=1.5).lam == 1e-2
    )
    with pytest.raises(ValueError, match="increasing"):
        select_lam(X, T, weights, grid[::-1], estimand=estimand, converged=[True] * 4)


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_lam_auto_matches_the_rule_on_separate_fits(estimand):
    """lam="auto" (the grid solved along the path, warm-started) picks what the stated rule picks
    on separate cold fits, with the imbalance computed here independently.  Both solve to a tight
    tolerance: at the default 1e-6 the small penalties' solutions from different starts differ by
    about 5e-5 in relative imbalance, which the solver's tolerance allows."""
    ds = make_setoguchi(150, "G", seed=2)
    auto = KernelBalancing(estimand=estimand, lam="auto", random_state=0, tol=1e-10).fit(ds.X, ds.T)
    Xs = standardise(ds.X)
    imb, fits = [], []
    for lam in LAM_GRID:
        f = KernelBalancing(estimand=estimand, lam=lam, gamma=auto.gamma_, tol=1e-10).fit(ds.X, ds.T)
        fits.append(f)
        w = f.weights_
        m1 = (w[ds.T == 1, None] * Xs[ds.T == 1]).sum(0)
        m0 = (w[ds.T == 0, None] * Xs[ds.T == 0]).sum(0)
        s1, s0 = ds.X[ds.T == 1].var(0, ddof=1), ds.X[ds.T == 0].var(0, ddof=1)  # balance_table: n - 1
        sd = np.sqrt(s1) if estimand == "att" else np.sqrt((s1 + s0) / 2)
        imb.append(float(np.max(np.abs((m1 - m0) * ds.X.std(0) / sd))))
    best = min(imb)
    thr = max(LAM_FACTOR * best, best + LAM_SLACK)
    want = max(k for k in range(len(LAM_GRID)) if imb[k] <= thr)
    assert auto.lam_ == LAM_GRID[want]
    np.testing.assert_allclose(auto.lam_grid_["imbalance"], imb, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(auto.weights_, fits[want].weights_, atol=1e-6)
    assert auto.lam_abs_ == pytest.approx(LAM_GRID[want])
    d = auto.summary()["details"]
    assert d["lam"] == auto.lam_ and d["lam_rule"].startswith("auto")
    # the ESS of the grid grows with lam (the trade-off the rule makes)
    e0 = auto.lam_grid_["ess_control"]
    assert all(b >= a - 1e-6 for a, b in zip(e0, e0[1:]))


def test_lam_auto_bootstrap_reuses_the_chosen_lam():
    ds = make_setoguchi(100, "A", seed=3)
    est = KernelBalancing(lam="auto", gamma="median", random_state=0).fit(ds.X, ds.T)
    lam, gamma = est.lam_, est.gamma_
    lo, hi = est.ate_interval(ds.Y, n_bootstrap=5, random_state=1)
    assert lo <= hi and est.lam_ == lam and est.gamma_ == gamma


def test_bad_tuning_parameters():
    ds = make_setoguchi(60, "A", seed=4)
    with pytest.raises(ValueError, match="auto"):
        KernelBalancing(lam="median").fit(ds.X, ds.T)
    with pytest.raises(ValueError, match="overlap"):
        KernelBalancing(estimand="overlap", lam="auto").fit(ds.X, ds.T)
    with pytest.raises(ValueError, match="gamma"):
        KernelBalancing(gamma="silverman").fit(ds.X, ds.T)
    with pytest.raises(ValueError, match="gamma"):
        KernelBalancing(gamma=-1.0).fit(ds.X, ds.T)
    with pytest.raises(ValueError, match="kernel"):
        KernelBalancing(kernel="cosine").fit(ds.X, ds.T)


# ----------------------------------------------------------------------------------------------
# the laplace kernel in the estimator
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimand", ["ate", "att", "overlap"])
def test_laplace_estimator_matches_the_reference_solver(estimand):
    ds = make_setoguchi(90, "B", seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        est = KernelBalancing(estimand=estimand, kernel="laplace", gamma=0.3, lam=0.05, scaling="standard").fit(
            ds.X, ds.T
        )
    Z = torch.as_tensor(standardise(ds.X))[None]
    W = torch.as_tensor(2.0 * ds.T - 1.0, dtype=torch.float64)[None]
    lam_abs = 0.05 * len(ds.T) if estimand == "overlap" else 0.05
    ref = ref_dual_solve(Z, W, lam_abs, kernel="laplace", gamma=0.3, estimand=estimand, tol=1e-8)
    np.testing.assert_allclose(est.weights_, ref.weights[0].numpy(), atol=1e-5)


def test_defaults_by_estimand_and_path():
    """ate/att: the median heuristic and lam="auto" on the exact path, a fixed 0.01 on the
    low-rank one; overlap: gamma 1/p and lam 3e-4."""
    ds = make_setoguchi(120, "A", seed=6)
    p = ds.X.shape[1]
    for estimand in ("ate", "att"):
        d = KernelBalancing(estimand=estimand, random_state=0).fit(ds.X, ds.T)
        e = KernelBalancing(estimand=estimand, gamma="median", lam="auto", random_state=0).fit(ds.X, ds.T)
        assert d.gamma_ == e.gamma_ and d.lam_ == e.lam_ and d.lam_grid_ is not None
        np.testing.assert_array_equal(d.weights_, e.weights_)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = KernelBalancing(estimand=estimand, approximation="rff", rank=64, random_state=0).fit(ds.X, ds.T)
            ra = KernelBalancing(estimand=estimand, approximation="rff", rank=64, lam="auto", random_state=0)
            ra.fit(ds.X, ds.T)
        assert r.lam_ == 0.01 and r.lam_grid_ is None and r.low_rank_
        assert ra.lam_ in LAM_GRID and len(ra.lam_grid_["imbalance"]) == len(LAM_GRID)
    o = KernelBalancing(estimand="overlap").fit(ds.X, ds.T)
    assert o.gamma_ == pytest.approx(1 / p) and o.lam_ == 3e-4 and o.lam_grid_ is None


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 1001, 4000])
def test_single_partition_median_is_numpys_median(n):
    from cina_ext._core.bandwidth import _median

    rng = np.random.default_rng(n)
    for a in (rng.standard_normal(n), rng.integers(0, 3, n).astype(float)):  # ties as well
        assert _median(a.copy()) == np.median(a)  # bit for bit
        # the smallest values left out by rank (the zero distances), a monotone transform after
        for skip in {0, min(1, n - 1), n // 3, n - 1}:
            kept = np.sort(a)[skip:]
            assert _median(a.copy(), skip=skip) == np.median(kept)
            b = np.abs(a)
            assert _median(b.copy(), skip=skip, transform=np.sqrt) == np.median(np.sqrt(np.sort(b)[skip:]))


@pytest.mark.parametrize("estimand", ["ate", "att"])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_grid_solved_along_the_path_reaches_the_cold_optima_in_fewer_iterations(estimand, threads):
    """lam="auto" on the CPU solves its grid largest penalty first, ``threads`` penalties per call,
    each call warm-started at the smallest penalty solved so far: the same optima as cold
    solves of each penalty, in fewer iterations in all (the warm start is what the path buys)."""
    ds = make_setoguchi(400, "G", seed=5)
    kb = KernelBalancing(estimand=estimand, lam="auto", random_state=0).fit(ds.X, ds.T)
    Xs = kb._kernel_inputs(np.asarray(ds.X, dtype=np.float64), estimand)
    lam_abs = [float(v) for v in LAM_GRID]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        path = kb._fit_exact(Xs, ds.T, estimand, kb.gamma_, lam_abs, 1e-8)
    finally:
        torch.set_num_threads(old)
    X = torch.as_tensor(Xs, dtype=torch.float64)[None]
    W = torch.as_tensor(2.0 * ds.T - 1.0, dtype=torch.float64)[None]
    cold = dual_solve(X, W, torch.tensor([lam_abs]), gamma=kb.gamma_, estimand=estimand, tol=1e-8, backend="fused")
    assert all(st["converged"] for st in path) and bool(cold.converged.all())
    np.testing.assert_allclose([st["objective"] for st in path], cold.objective.numpy(), rtol=1e-7, atol=1e-10)
    for st, w in zip(path, cold.weights.numpy()):
        np.testing.assert_allclose(st["weights"], w, atol=2e-4)
    assert sum(st["iterations"] for st in path) < 0.9 * int(cold.iterations.sum())
