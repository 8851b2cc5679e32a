"""Augmented (doubly robust) balancing and ate_inference: the formulas, the fields, the coverage."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin

from cina_ext import cli
from cina_ext.data import make_setoguchi
from cina_ext.estimators import IPW, CInAZeroShot, DifferenceInMeans, DoubleML, KernelBalancing


class Zero(BaseEstimator, RegressorMixin):
    """An outcome model that predicts 0 everywhere."""

    def fit(self, X, y):
        return self

    def predict(self, X):
        return np.zeros(X.shape[0])


class Oracle(BaseEstimator, RegressorMixin):
    """Predicts a fixed function of the (standardised) covariates, whatever it is fitted on."""

    def __init__(self, coef=None):
        self.coef = coef

    def fit(self, X, y):
        return self

    def predict(self, X):
        return X @ self.coef


@pytest.mark.parametrize("estimand", ["ate", "att"])
@pytest.mark.parametrize(
    "make", [lambda **k: KernelBalancing(**k), lambda **k: IPW(**k), lambda **k: CInAZeroShot.from_pretrained(**k)]
)
def test_a_zero_outcome_model_gives_the_plain_weighted_contrast(make, estimand):
    d = make_setoguchi(300, seed=2)
    plain = make(estimand=estimand).fit(d.X, d.T)
    w, T, Y = plain.weights_, d.T, d.Y
    expected = float(np.sum(w[T == 1] * Y[T == 1]) - np.sum(w[T == 0] * Y[T == 0]))
    aug = make(estimand=estimand, augment=Zero(), random_state=0).fit(d.X, d.T)
    # (rel 1e-6: the zero-shot model computes in float32, its ATT treated weights are 1/n1 to float32)
    assert aug.ate(d.Y) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_augmentation_removes_the_outcome_part_that_the_model_explains():
    """With weights that do not balance at all (uniform) and an outcome model that is exactly the
    outcome's covariate part, the augmented estimate is the treatment effect plus noise only."""
    rng = np.random.default_rng(0)
    n = 4000
    X = rng.normal(size=(n, 3))
    T = (rng.uniform(size=n) < 1 / (1 + np.exp(-2 * X[:, 0]))).astype(int)
    Y = 3.0 * X[:, 0] + 2.0 * T + rng.normal(scale=0.1, size=n)
    from cina_ext._core.checks import standardize_columns

    _, mean, sd = standardize_columns(X)
    oracle = Oracle(coef=np.array([3.0 * sd[0], 0.0, 0.0]))  # on the standardised scale, up to a constant
    naive = DifferenceInMeans().fit(X, T).ate(Y)
    est = IPW(augment=oracle, clip=None, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, T)
    assert abs(naive - 2.0) > 1.0  # confounded
    assert est.ate(Y) == pytest.approx(2.0, abs=0.02)


def test_ate_inference_fields_and_methods():
    d = make_setoguchi(400, seed=5)
    aug = KernelBalancing(augment=True, random_state=0).fit(d.X, d.T)
    inf = aug.ate_inference(d.Y, alpha=0.1)
    assert "influence" in inf.method and inf.estimand == "ate" and inf.alpha == 0.1
    assert inf.estimate == pytest.approx(aug.ate(d.Y))
    lo, hi = inf.ci
    half = 1.6448536269514722 * inf.se
    assert lo == pytest.approx(inf.estimate - half) and hi == pytest.approx(inf.estimate + half)
    assert inf.z == pytest.approx(inf.estimate / inf.se)
    assert inf.pvalue == pytest.approx(math.erfc(abs(inf.z) / math.sqrt(2)))
    assert json.dumps(inf.to_dict()) and "SE" in str(inf)
    plain = KernelBalancing().fit(d.X, d.T)
    assert not plain.has_analytic_se()
    with pytest.raises(ValueError, match="no analytic standard error"):
        plain.ate_inference(d.Y, method="influence")
    boot = plain.ate_inference(d.Y, n_bootstrap=20, random_state=0)
    assert "bootstrap" in boot.method and boot.se == pytest.approx(np.std(plain.bootstrap_estimates_, ddof=1))
    dml = DoubleML(n_folds=3, random_state=0).fit(d.X, d.T)
    assert dml.has_analytic_se() and "AIPW" in dml.ate_inference(d.Y).method
    with pytest.raises(ValueError, match="augment"):
        KernelBalancing(estimand="overlap", augment=True).fit(d.X, d.T).ate(d.Y)
    with pytest.raises(TypeError, match="augment must be"):
        KernelBalancing(augment="yes").fit(d.X, d.T).ate(d.Y)


def test_cli_augment_reports_se_and_interval(tmp_path, capsys):
    import pandas as pd

    d = make_setoguchi(300, seed=1)
    df = pd.DataFrame(d.X, columns=[f"x{j}" for j in range(d.X.shape[1])])
    df["t"], df["y"] = d.T, d.Y
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    code = cli.main(
        [
            "estimate",
            str(path),
            "--treatment",
            "t",
            "--outcome",
            "y",
            "--method",
            "kernel",
            "--estimand",
            "ate",
            "--augment",
            "--n-bootstrap",
            "0",
            "--json",
            "--quiet",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["augmented"] and out["se"] > 0
    assert (
        "influence" in out["interval"]["method"]
        and out["interval"]["lower"] < out["estimate"] < out["interval"]["upper"]
    )
    assert (
        cli.main(
            ["estimate", str(path), "--treatment", "t", "--outcome", "y", "--method", "dml", "--augment", "--quiet"]
        )
        == 1
    )


@pytest.mark.slow
def test_augmented_interval_covers_on_a_known_truth():
    """Coverage of the 95% influence interval of augmented kernel balancing over 60 datasets."""
    hits = 0
    for seed in range(60):
        d = make_setoguchi(400, seed=1000 + seed)
        inf = KernelBalancing(augment=True, random_state=seed).fit(d.X, d.T).ate_inference(d.Y)
        hits += inf.ci[0] <= d.truth("ate") <= inf.ci[1]
    assert hits / 60 >= 0.85
