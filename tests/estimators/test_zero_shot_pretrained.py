"""The zero-shot models shipped inside the package: they load, they are trained, and the
command line serves them (`cina estimate --method zero-shot`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cina_ext import cli
from cina_ext.data import make_setoguchi, sample_datasets
from cina_ext.estimators import CInAZeroShot, make_estimator
from cina_ext.models.checkpoint import load_checkpoint, pretrained_path
from cina_ext.models.zero_shot import collate_datasets


@pytest.fixture(scope="module")
def held_out():
    # the training stream seeds with SeedSequence([seed, step, index]); these seeds are disjoint
    return list(sample_datasets("setoguchi", 8, (300, 300), seed=987654, setting="id"))


@pytest.mark.parametrize("variant", ["zs", "zs-s"])
def test_shipped_checkpoints_are_small_slim_and_documented(variant):
    ck = load_checkpoint(pretrained_path(variant))
    assert "optimizer_state" not in ck and ck["model_config"]["estimands"][0] == "ate"
    assert ck["step"] == ck["train_config"]["steps"] and ck["train_seconds"] > 0
    assert (ck["train_config"]["supervised_weight"] > 0) == (variant == "zs-s")
    import os

    assert os.path.getsize(pretrained_path(variant)) < 2 * 1024 * 1024


def test_default_model_balances_unseen_datasets_far_better_than_uniform_weights(held_out):
    est = CInAZeroShot.from_pretrained()
    model = est._get_model()
    assert model.estimands == ("ate", "att")
    X, W, mask, fm = collate_datasets(held_out)
    for estimand in ("ate", "att"):
        idx = model.estimand_index(estimand, X.shape[0], X.device)
        w = model.weights(X, W, mask, fm, estimand=estimand)
        t1, t0 = (W > 0) & mask, (W < 0) & mask
        uniform = torch.where(t1, 1.0 / t1.sum(-1, keepdim=True), 1.0 / t0.sum(-1, keepdim=True)) * mask
        with torch.no_grad():
            trained = model.balance_objective(X, W, mask, fm, w, idx).mean()
            naive = model.balance_objective(X, W, mask, fm, uniform, idx).mean()
        # an untrained network is near the uniform weights; the shipped one removes most imbalance
        assert float(trained) < 0.5 * float(naive), (estimand, float(trained), float(naive))
    zs = est.estimate_many(held_out)
    truth = np.array([d.truth("ate") for d in held_out])
    naive_est = np.array([d.Y[d.T == 1].mean() - d.Y[d.T == 0].mean() for d in held_out])
    assert np.mean(np.abs(zs - truth)) < np.mean(np.abs(naive_est - truth))


def test_make_estimator_and_interval_on_shipped_model():
    ds = make_setoguchi(200, "B", seed=4)
    est = make_estimator("zero-shot", estimand="att", random_state=0).fit(ds.X, ds.T)
    assert est.estimand_ == "att"
    np.testing.assert_allclose(est.weights_[ds.T == 1], 1.0 / ds.n_treated)
    lo, hi = est.ate_interval(ds.Y, n_bootstrap=20, random_state=0)
    assert lo < hi and lo - 0.5 * (hi - lo) <= est.ate(ds.Y) <= hi + 0.5 * (hi - lo)
    table = est.balance()
    assert table.max_abs_smd_after < table.max_abs_smd_before


def test_cli_estimate_zero_shot(tmp_path, capsys):
    ds = make_setoguchi(150, "A", seed=0)
    path = tmp_path / "d.csv"
    ds.to_frame().to_csv(path, index=False)
    code = cli.main(
        [
            "estimate",
            str(path),
            "--treatment",
            "treatment",
            "--outcome",
            "outcome",
            "--method",
            "zero-shot",
            "--n-bootstrap",
            "0",
            "--json",
            "--quiet",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    payload = json.loads(out)
    want = CInAZeroShot.from_pretrained().fit(ds.X, ds.T).ate(ds.Y)
    assert payload["method"] == "zero-shot" and payload["estimand"] == "ate"
    assert payload["estimate"] == pytest.approx(want, rel=1e-6, abs=1e-9)
