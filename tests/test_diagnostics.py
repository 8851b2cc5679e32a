"""Balance diagnostics against hand computations on a tiny example."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest

from cina_ext.diagnostics import balance_table, kish_ess, love_plot, weight_summary

# treated units 0-2, control units 3-5
#   x1: treated 1, 2, 3 (mean 2, var 1); control 4, 5, 6 (mean 5, var 1)
#   x2: treated 0, 0, 3 (mean 1, var 3); control 1, 2, 3 (mean 2, var 1)
# weights: treated 1, 1, 2 (-> .25 .25 .5); control 1, 0, 1 (-> .5 0 .5)
X = np.array([[1, 0], [2, 0], [3, 3], [4, 1], [5, 2], [6, 3]], dtype=float)
T = np.array([1, 1, 1, 0, 0, 0])
Wt = np.array([1, 1, 2, 1, 0, 1], dtype=float)

# Hand computations (see the comments above; weighted variance = sum w (x-m)^2 / (1 - sum w^2)):
#   x1 after: treated mean 2.25, var .6875/.625 = 1.1; control mean 5, var 1/.5 = 2
#   x2 after: treated mean 1.5, var 2.25/.625 = 3.6; control mean 2, var 1/.5 = 2
HAND = {
    "smd_before_ate": [-3.0, -1.0 / math.sqrt(2.0)],
    "smd_after_ate": [-2.75, -0.5 / math.sqrt(2.0)],
    "smd_before_att": [-3.0, -1.0 / math.sqrt(3.0)],
    "smd_after_att": [-2.75, -0.5 / math.sqrt(3.0)],
    "vr_before": [1.0, 3.0],
    "vr_after": [1.1 / 2.0, 3.6 / 2.0],
    "ess_treated": 16.0 / 6.0,
    "ess_control": 2.0,
    "cv_treated": math.sqrt(2.0 / 9.0) / (4.0 / 3.0),
}


def test_smd_vr_ess_against_hand():
    rep = balance_table(X, T, Wt, ["x1", "x2"], estimand="ate")
    np.testing.assert_allclose(rep.smd_before, HAND["smd_before_ate"], rtol=1e-12)
    np.testing.assert_allclose(rep.smd_after, HAND["smd_after_ate"], rtol=1e-12)
    np.testing.assert_allclose(rep.vr_before, HAND["vr_before"], rtol=1e-12)
    np.testing.assert_allclose(rep.vr_after, HAND["vr_after"], rtol=1e-12)
    assert rep.ess["treated"] == pytest.approx(HAND["ess_treated"])
    assert rep.ess["control"] == pytest.approx(HAND["ess_control"])
    assert rep.n == {"treated": 3, "control": 3}
    np.testing.assert_array_equal(rep.flags, [True, True])  # |SMD| > 0.1
    np.testing.assert_array_equal(rep.vr_flags, [False, False])  # 0.55 and 1.8 within [0.5, 2]
    assert rep.max_abs_smd_before == pytest.approx(3.0)
    assert rep.max_abs_smd_after == pytest.approx(2.75)


def test_att_uses_treated_sd():
    rep = balance_table(X, T, Wt, ["x1", "x2"], estimand="att")
    np.testing.assert_allclose(rep.smd_before, HAND["smd_before_att"], rtol=1e-12)
    np.testing.assert_allclose(rep.smd_after, HAND["smd_after_att"], rtol=1e-12)
    assert "treated" in rep.sd_formula


def test_weight_summary_by_hand():
    rep = balance_table(X, T, Wt, estimand="ate")
    wt = rep.weights["treated"]
    assert wt["min"] == 1.0 and wt["max"] == 2.0
    assert wt["cv"] == pytest.approx(HAND["cv_treated"])
    assert wt["top1_share"] == pytest.approx(0.5)  # ceil(1% of 3) = 1 unit holds 2 of 4
    assert wt["top5_share"] == pytest.approx(0.5)
    assert rep.weights["control"]["n_zero"] == 1
    # Kish ESS = n / (1 + CV^2) with the population CV
    assert wt["ess"] == pytest.approx(3 / (1 + HAND["cv_treated"] ** 2))
    assert kish_ess(np.array([1.0, 1.0, 2.0])) == pytest.approx(16 / 6)


def test_top_share_on_larger_arm():
    w = np.r_[np.full(99, 1.0), 101.0]  # top 1% = 1 unit of 100 holds 101/200
    s = weight_summary(w)
    assert s["top1_share"] == pytest.approx(101 / 200)
    assert s["top5_share"] == pytest.approx((101 + 4) / 200)


def test_scale_invariance_and_before_equals_unweighted():
    rep1 = balance_table(X, T, Wt)
    rep2 = balance_table(X, T, np.where(T == 1, 10 * Wt, 0.1 * Wt))
    np.testing.assert_allclose(rep1.smd_after, rep2.smd_after)
    rep_u = balance_table(X, T, np.ones(6))
    np.testing.assert_allclose(rep_u.smd_after, rep_u.smd_before)
    np.testing.assert_allclose(rep_u.vr_after, rep_u.vr_before)


def test_exports_json_frame_str():
    df = pd.DataFrame(X, columns=["age", "income"])
    rep = balance_table(df, T, Wt)
    d = rep.to_dict()
    s = json.dumps(d, allow_nan=False)
    assert "age" in s and "income" in s
    assert d["covariates"][0]["covariate"] == "age"
    fr = rep.summary_frame()
    assert list(fr.index) == ["age", "income"]
    assert fr.loc["age", "smd_before"] == pytest.approx(-3.0)
    txt = str(rep)
    assert "age" in txt and "income" in txt and "ESS" in txt and "SMD" in txt


def test_degenerate_weights_json_safe():
    w = np.array([0, 0, 1, 1, 1, 1], dtype=float)  # one treated unit holds all the weight
    rep = balance_table(X, T, w)
    assert np.isnan(rep.vr_after).all()
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["covariates"][0]["vr_after"] is None


def test_bad_weights_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        balance_table(X, T, -Wt)
    with pytest.raises(ValueError, match="mismatched"):
        balance_table(X, T, Wt[:-1])
    with pytest.raises(ValueError, match="sum to zero"):
        balance_table(X, T, np.array([0, 0, 0, 1, 1, 1.0]))
    with pytest.raises(ValueError, match="feature_names"):
        balance_table(X, T, Wt, ["only_one"])


def test_love_plot_writes_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    rep = balance_table(pd.DataFrame(X, columns=["age", "income"]), T, Wt)
    path = tmp_path / "love.png"
    ax = love_plot(rep, path=str(path))
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["income", "age"]  # largest |SMD| on top


def test_love_plot_missing_matplotlib(monkeypatch):
    rep = balance_table(X, T, Wt)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"cina-ext\[plot\]"):
        love_plot(rep)


@pytest.mark.parametrize("estimand", ["ate", "att", "overlap"])
def test_max_abs_smd_after_many_is_balance_tables_for_every_row(estimand):
    from cina_ext.diagnostics import max_abs_smd_after_many

    rng = np.random.default_rng(5)
    X = rng.standard_normal((60, 4)) * [1.0, 1e6, 1e-6, 3.0]
    X[:, 3] = 2.0  # a constant column: SD 0, SMD 0 after any weights
    T = (rng.random(60) < 0.4).astype(int)
    Wm = rng.random((7, 60)) ** 3
    Wm[2, T == 0] = 0.0
    Wm[2, np.nonzero(T == 0)[0][0]] = 1.0  # one control carries its arm
    got = max_abs_smd_after_many(X, T, Wm, estimand=estimand)
    want = [balance_table(X, T, w, estimand=estimand).max_abs_smd_after for w in Wm]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="shape"):
        max_abs_smd_after_many(X, T, Wm[:, :10], estimand=estimand)
    bad = Wm.copy()
    bad[1, T == 1] = 0.0
    with pytest.raises(ValueError, match="treated arm sum to zero"):
        max_abs_smd_after_many(X, T, bad, estimand=estimand)
    bad[1, 0] = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        max_abs_smd_after_many(X, T, bad, estimand=estimand)


def test_a_constant_column_has_smd_zero_before_and_after_any_weights():
    rng = np.random.default_rng(6)
    X = np.column_stack([rng.standard_normal(40), np.full(40, 0.1)])  # 0.1: no exact binary mean
    T = (np.arange(40) % 3 == 0).astype(int)
    for _ in range(5):
        rep = balance_table(X, T, rng.random(40) ** 3)
        assert rep.smd_before[1] == 0.0 and rep.smd_after[1] == 0.0
