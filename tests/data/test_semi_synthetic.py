"""Tests of make_semi_synthetic on a made-up covariate table (no package needed)."""

from __future__ import annotations

import numpy as np
import pytest

from cina_ext.data import CausalDataset, make_semi_synthetic


def _table(n=1500, seed=0):
    """60 columns like a real table: continuous, skewed counts, binary, one-hot groups, a constant."""
    rng = np.random.default_rng(seed)
    cont = rng.normal(size=(n, 20))
    counts = rng.poisson(3.0, size=(n, 15)).astype(float)
    binary = (rng.random((n, 15)) < rng.uniform(0.05, 0.6, size=15)).astype(float)
    level = rng.integers(0, 9, size=n)
    onehot = np.eye(9)[level]
    const = np.ones((n, 1))
    return np.column_stack([cont, counts, binary, onehot, const])


def _same(a: CausalDataset, b: CausalDataset) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("X", "T", "Y", "mu0", "mu1", "propensity"))


def test_shapes_truth_and_covariates_kept():
    X = _table()
    ds = make_semi_synthetic(X, seed=1)
    assert X.shape == (1500, 60) and ds.X.shape == (1500, 59)  # the constant last column dropped
    np.testing.assert_array_equal(ds.X, X[:, :59])  # the covariates are the real ones, untouched
    assert ds.meta["dropped"] == ["X60"] and ds.feature_names == [f"X{j}" for j in range(1, 60)]
    kept = make_semi_synthetic(X, seed=1, drop_constant=False)
    np.testing.assert_array_equal(kept.X, X)
    np.testing.assert_array_equal(kept.Y, ds.Y)  # the simulation does not depend on the option
    for v in (ds.X, ds.Y, ds.mu0, ds.mu1, ds.propensity):
        assert np.isfinite(v).all()
    assert set(np.unique(ds.T)) == {0, 1}
    ite = ds.mu1 - ds.mu0
    assert ds.ate == pytest.approx(ite.mean(), abs=1e-12)
    assert ds.att == pytest.approx(ite[ds.T == 1].mean(), abs=1e-12)
    assert np.std(ite) == pytest.approx(0.5, rel=1e-6)  # heterogeneity: the sd of the unit effects
    assert abs(ds.att - ds.ate) > 1e-3  # an effect modifier drives the propensity too
    # Y is the treated arm's potential outcome plus noise of the stated size
    resid = ds.Y - np.where(ds.T == 1, ds.mu1, ds.mu0)
    assert 0.45 < resid.std() < 0.55 and abs(resid.mean()) < 0.05


@pytest.mark.parametrize("share", [0.1, 0.25, 0.4])
def test_treated_share(share):
    ds = make_semi_synthetic(_table(), seed=2, treated_share=share)
    assert ds.propensity.mean() == pytest.approx(share, abs=1e-8)
    sd = np.sqrt(share * (1 - share) / ds.n)
    assert abs(ds.T.mean() - share) < 5 * sd


def test_deterministic_given_the_seed():
    X = _table()
    a, b = make_semi_synthetic(X, seed=7), make_semi_synthetic(X, seed=7)
    assert _same(a, b) and a.ate == b.ate and a.att == b.att
    c = make_semi_synthetic(X, seed=8)
    assert not np.array_equal(a.T, c.T) and not np.allclose(a.mu0, c.mu0)
    seq = make_semi_synthetic(X, seed=np.random.SeedSequence(7))
    assert _same(seq, make_semi_synthetic(X, seed=np.random.SeedSequence(7)))


@pytest.mark.parametrize("seed", range(6))
def test_poor_overlap(seed):
    ds = make_semi_synthetic(_table(), seed=seed)
    e = ds.propensity
    extreme = np.mean((e < 0.05) | (e > 0.95))
    assert extreme >= 0.3, extreme
    assert ds.meta["extreme_share"] == pytest.approx(extreme)
    # overlap = 0: a randomised trial, every propensity the treated share
    rct = make_semi_synthetic(_table(), seed=seed, overlap=0.0, treated_share=0.3)
    np.testing.assert_allclose(rct.propensity, 0.3, atol=1e-8)


def test_overlap_poor_even_on_rare_indicators():
    """A table of mostly rare indicators (plus two continuous columns) still gives poor overlap:
    the score is built from the columns with many values and turned into normal scores."""
    rng = np.random.default_rng(5)
    X = np.column_stack([(rng.random((800, 40)) < 0.03).astype(float), rng.normal(size=(800, 2))])
    for seed in range(4):
        e = make_semi_synthetic(X, seed=seed).propensity
        assert np.mean((e < 0.05) | (e > 0.95)) >= 0.3
    weak = make_semi_synthetic(X, seed=0, overlap=0.5).propensity
    assert np.mean((weak < 0.05) | (weak > 0.95)) < 0.05  # the slope controls it


def test_confounded():
    """The difference in means is biased for the ATE on average over seeds (the propensity score
    enters mu0), while the oracle regression adjustment with mu0, mu1 is not."""
    X = _table()
    bias = []
    for seed in range(8):
        ds = make_semi_synthetic(X, seed=seed, noise=0.0)
        naive = ds.Y[ds.T == 1].mean() - ds.Y[ds.T == 0].mean()
        bias.append(abs(naive - ds.ate))
        assert np.mean(ds.mu1 - ds.mu0) == pytest.approx(ds.ate)
    assert np.mean(bias) > 0.3


def test_subsample_rows_and_names():
    X = _table()
    names = [f"c{j}" for j in range(X.shape[1])]
    X[:, 20] = 0.0
    X[:2, 20] = 1.0  # a rare level: only two units have it, so it is constant in many subsamples
    ds = make_semi_synthetic(X, seed=4, n=300, feature_names=names)
    rows = np.asarray(ds.meta["rows"])
    assert len(set(rows.tolist())) == 300
    sub = X[rows]
    varying = [j for j in range(60) if np.ptp(sub[:, j]) > 0]
    assert ds.X.shape == (300, len(varying)) and ds.feature_names == [names[j] for j in varying]
    np.testing.assert_array_equal(ds.X, sub[:, varying])
    assert np.ptp(ds.X, axis=0).min() > 0  # no constant column reaches the estimators
    assert len(ds.meta["dropped"]) == 60 - len(varying) >= 1
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X, columns=names)
    assert make_semi_synthetic(frame, seed=4, drop_constant=False).feature_names == names


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"treated_share": 0.0}, "treated_share"),
        ({"treated_share": 1.0}, "treated_share"),
        ({"treated_share": -0.2}, "treated_share"),
        ({"overlap": -1.0}, ">= 0"),
        ({"noise": -1.0}, ">= 0"),
        ({"n": 5}, "n must be"),
        ({"n": 10**6}, "n must be"),
        ({"n_propensity": 0}, "n_propensity"),
        ({"n_modifiers": 1.5}, "n_modifiers"),
        ({"feature_names": ["a", "b"]}, "feature_names"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_semi_synthetic(_table(200), seed=0, **kwargs)


def test_bad_tables():
    with pytest.raises(ValueError, match="2-D"):
        make_semi_synthetic(np.zeros(10))
    X = _table(200)
    X[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        make_semi_synthetic(X)
    with pytest.raises(ValueError, match="non-constant"):
        make_semi_synthetic(np.column_stack([np.arange(50.0), np.ones(50)]))
    with pytest.raises(ValueError, match="arm"):  # 20 units, 0.1% treated: an arm nearly empty
        make_semi_synthetic(_table(20), seed=0, treated_share=0.001)
