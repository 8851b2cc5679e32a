"""Repeated cross-fitting of the augmentation (``augment_repeats``): averaged out-of-fold predictions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.neighbors import KNeighborsRegressor

from cina_ext.data import make_setoguchi
from cina_ext.estimators import IPW, KernelBalancing
from cina_ext.estimators.augment import augmented_scores, cross_fit_outcomes
from cina_ext.estimators.base import _standardize


def _data(n=240, seed=0):
    d = make_setoguchi(n, scenario="B", seed=seed)
    return d, _standardize(d.X)[0], d.T.astype(int), d.Y


def test_repeats_average_independent_single_splits():
    _, Xs, T, Y = _data()
    model = Ridge(alpha=1.0)
    singles = [cross_fit_outcomes(model, Xs, T, Y, seed) for seed in (7, 7 + 104729, 7 + 2 * 104729)]
    mu1, mu0 = cross_fit_outcomes(model, Xs, T, Y, 7, n_repeats=3)
    np.testing.assert_allclose(mu1, np.mean([s[0] for s in singles], 0), rtol=1e-12)
    np.testing.assert_allclose(mu0, np.mean([s[1] for s in singles], 0), rtol=1e-12)
    # the splits differ: averaging changes the predictions
    assert np.abs(singles[0][0] - singles[1][0]).max() > 1e-6


def test_every_repeated_prediction_is_out_of_fold():
    """A 1-nearest-neighbour model returns a unit's own outcome if it saw the unit; cross-fitted, never."""
    _, Xs, T, Y = _data(n=120)
    mu1, mu0 = cross_fit_outcomes(KNeighborsRegressor(n_neighbors=1), Xs, T, Y, 3, n_repeats=4)
    assert np.all(mu1[T == 1] != Y[T == 1]) and np.all(mu0[T == 0] != Y[T == 0])


@pytest.mark.parametrize("make", [lambda **k: KernelBalancing(**k), lambda **k: IPW(**k)])
def test_estimators_use_the_repeated_outcome_model(make):
    d, Xs, T, Y = _data(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = make(augment=Ridge(alpha=1.0), augment_repeats=3, random_state=5).fit(d.X, d.T)
        one = make(augment=Ridge(alpha=1.0), random_state=5).fit(d.X, d.T)
    mu1, mu0 = cross_fit_outcomes(Ridge(alpha=1.0), Xs, T, Y, est.seed_, n_repeats=3)
    want, _ = augmented_scores(est.weights_, T, Y, mu1, mu0, "ate")
    assert est.ate(Y) == pytest.approx(want, rel=1e-10)
    assert est.ate(Y) != one.ate(Y)
    inf = est.ate_inference(Y)
    assert inf.method.startswith("influence") and inf.ci[0] < want < inf.ci[1]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_bad_augment_repeats(bad):
    d, *_ = _data(n=60)
    with pytest.raises(ValueError, match="augment_repeats"):
        KernelBalancing(augment=True, augment_repeats=bad).fit(d.X, d.T)


def test_doubleml_repeats_average_propensities_and_outcomes():
    from sklearn.linear_model import LogisticRegression

    from cina_ext.estimators import DoubleML
    from cina_ext.estimators.augment import repeat_seed

    d, Xs, T, Y = _data(seed=4)
    pm = LogisticRegression(C=1.0)
    one, three = DoubleML(n_repeats=1), DoubleML(n_repeats=3)
    singles = [one._cross_fit_propensity(Xs, T, repeat_seed(11, r), pm, 5) for r in range(3)]
    np.testing.assert_allclose(three._cross_fit_propensity(Xs, T, 11, pm, 5), np.mean(singles, 0), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = DoubleML(outcome_model=Ridge(), random_state=2).fit(d.X, d.T)
        b = DoubleML(outcome_model=Ridge(), random_state=2, n_repeats=3).fit(d.X, d.T)
        ea, eb = a.ate(Y), b.ate(Y)
    assert ea != eb and abs(ea - eb) < 3 * a.se_  # another split, the same answer within noise
    with pytest.raises(ValueError, match="n_repeats"):
        DoubleML(n_repeats=0).fit(d.X, d.T)
