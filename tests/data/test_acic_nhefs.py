"""Tests of the ACIC 2016 and NHEFS loaders against the raw package files, read here independently."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pandas as pd
import pytest

from cina_ext import data as cd
from cina_ext.data import real as cdreal


def _pkg_dir(pkg: str):
    spec = importlib.util.find_spec(pkg)
    return None if spec is None else spec.submodule_search_locations[0]


needs_causallib = pytest.mark.skipif(_pkg_dir("causallib") is None, reason="causallib not installed")
needs_causaldata = pytest.mark.skipif(_pkg_dir("causaldata") is None, reason="causaldata not installed")


def _acic_raw(setting: int):
    import pandas as pd

    base = os.path.join(_pkg_dir("causallib"), "datasets", "data", "acic_challenge_2016")
    return pd.read_csv(os.path.join(base, "x.csv")), pd.read_csv(os.path.join(base, f"zymu_{setting}.csv"))


# ---------------------------------------------------------------------------------------------
# ACIC 2016
# ---------------------------------------------------------------------------------------------
@needs_causallib
@pytest.mark.parametrize("setting", [1, 4, 10])
def test_acic2016_matches_the_raw_files(setting):
    x, zymu = _acic_raw(setting)
    ds = cd.load_acic2016(setting)
    strings = [c for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
    assert strings  # the file does have categorical columns
    n_cols = x.shape[1] - len(strings) + sum(x[c].nunique() for c in strings)
    assert ds.X.shape == (len(x), n_cols) and ds.d >= 50
    assert ds.X.dtype == np.float64 and np.isfinite(ds.X).all() and np.isfinite(ds.Y).all()
    assert set(np.unique(ds.T)) == {0, 1}
    assert np.array_equal(ds.T, zymu["z"].to_numpy())
    # numeric columns unchanged, each categorical column one indicator per level, one hot per row
    for c in x.columns:
        if c in strings:
            group = [j for j, f in enumerate(ds.feature_names) if f.startswith(f"{c}=")]
            assert len(group) == x[c].nunique()
            np.testing.assert_array_equal(ds.X[:, group].sum(axis=1), 1.0)
            for j in group:
                level = ds.feature_names[j].split("=", 1)[1]
                np.testing.assert_array_equal(ds.X[:, j], (x[c] == level).to_numpy(dtype=float))
        else:
            np.testing.assert_array_equal(ds.X[:, ds.feature_names.index(c)], x[c].to_numpy(dtype=float))
    z = zymu["z"].to_numpy() == 1
    np.testing.assert_array_equal(ds.Y[z], zymu["y1"].to_numpy()[z])
    np.testing.assert_array_equal(ds.Y[~z], zymu["y0"].to_numpy()[~z])
    ite = zymu["mu1"].to_numpy() - zymu["mu0"].to_numpy()
    assert ds.ate == pytest.approx(ite.mean(), rel=1e-12)
    assert ds.att == pytest.approx(ite[z].mean(), rel=1e-12)
    assert ds.truth("atc") == pytest.approx(ite[~z].mean(), rel=1e-12)
    assert ds.name == f"acic2016-{setting}"


@needs_causallib
def test_acic2016_settings_differ_and_drop_first():
    a, b = cd.load_acic2016(1), cd.load_acic2016(2)
    np.testing.assert_array_equal(a.X, b.X)  # same covariates
    assert not np.array_equal(a.T, b.T) or not np.array_equal(a.Y, b.Y)
    x, _ = _acic_raw(1)
    strings = [c for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
    short = cd.load_acic2016(1, drop_first=True)
    assert short.d == a.d - len(strings)
    X, names, _ = cd.acic2016_covariates()
    np.testing.assert_array_equal(X, a.X)
    assert names == a.feature_names


@pytest.mark.parametrize("bad", [0, 11, -1, 1.5, "1", True, None])
def test_acic2016_bad_setting(bad):
    with pytest.raises(ValueError, match="setting"):
        cd.load_acic2016(bad)


@needs_causallib
def test_acic_semi_registry():
    ds = cd.load_dataset("acic-semi", seed=3, n=600)
    assert ds.X.shape[0] == 600 and ds.d >= 50 and ds.name == "acic-semi"
    assert ds.ate == pytest.approx(float(np.mean(ds.mu1 - ds.mu0)))
    again = cd.load_dataset("acic-semi", seed=3, n=600)
    assert np.array_equal(again.Y, ds.Y) and np.array_equal(again.X, ds.X)
    assert cd.load_dataset("acic2016", setting=3).name == "acic2016-3"
    assert cd.data_available("acic2016") and cd.data_available("acic-semi")


# ---------------------------------------------------------------------------------------------
# NHEFS
# ---------------------------------------------------------------------------------------------
@needs_causaldata
def test_nhefs_matches_the_raw_file():
    import pandas as pd

    raw = pd.read_stata(os.path.join(_pkg_dir("causaldata"), "nhefs", "nhefs.dta"))
    kept = raw[raw["wt82_71"].notna()]
    ds = cd.load_nhefs()
    # 5 education, 3 exercise, 3 active levels less one reference each, + 6 other covariates
    assert ds.X.shape == (len(kept), 6 + 4 + 2 + 2)
    assert ds.n < len(raw) and np.isfinite(ds.X).all() and np.isfinite(ds.Y).all()
    np.testing.assert_array_equal(ds.Y, kept["wt82_71"].to_numpy(dtype=float))
    np.testing.assert_array_equal(ds.T, kept["qsmk"].to_numpy().astype(int))
    assert set(np.unique(ds.T)) == {0, 1}
    for c in ("age", "smokeintensity", "smokeyrs", "wt71"):
        np.testing.assert_array_equal(ds.X[:, ds.feature_names.index(c)], kept[c].to_numpy(dtype=float))
    assert ds.ate is None and ds.att is None
    assert ds.meta["textbook_ate"] == 3.4 and tuple(ds.meta["textbook_ci"]) == (2.4, 4.5)
    full = cd.load_nhefs(drop_first=False)
    assert full.d == ds.d + 3
    assert cd.load_dataset("nhefs").n == ds.n and cd.data_available("nhefs")


@needs_causaldata
def test_nhefs_textbook_ip_weighting_is_reproduced():
    """The book's model (the confounders, squares of the continuous ones) on the loaded data gives
    its IP-weighted ATE of 3.4 kg: the treatment, outcome and covariates are the book's."""
    from sklearn.linear_model import LogisticRegression

    ds = cd.load_nhefs()
    cont = [ds.feature_names.index(c) for c in ("age", "smokeintensity", "smokeyrs", "wt71")]
    Z = np.column_stack([ds.X, ds.X[:, cont] ** 2])
    Z = (Z - Z.mean(axis=0)) / Z.std(axis=0)
    e = LogisticRegression(C=1e8, max_iter=10000).fit(Z, ds.T).predict_proba(Z)[:, 1]
    T, Y = ds.T, ds.Y
    ate = np.sum(T * Y / e) / np.sum(T / e) - np.sum((1 - T) * Y / (1 - e)) / np.sum((1 - T) / (1 - e))
    assert abs(ate - cd.NHEFS_TEXTBOOK_ATE) < 0.1


# ---------------------------------------------------------------------------------------------
# missing packages
# ---------------------------------------------------------------------------------------------
def test_missing_causallib_or_causaldata_names_the_extra(monkeypatch):
    real_dir = cdreal._distribution_dir
    monkeypatch.setattr(
        cdreal, "_distribution_dir", lambda name: None if name in ("causallib", "causaldata") else real_dir(name)
    )
    for call in (lambda: cd.load_acic2016(1), lambda: cd.load_dataset("acic-semi")):
        # causallib is installed for its files only (it pins pandas < 3)
        with pytest.raises(ImportError, match=r"pip install --no-deps causallib"):
            call()
    with pytest.raises(ImportError, match=r"pip install 'cina-ext\[data\]'"):
        cd.load_nhefs()
    assert not cd.data_available("acic2016") and not cd.data_available("nhefs")
