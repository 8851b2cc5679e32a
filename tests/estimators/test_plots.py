"""est.balance().plot() (love plot) and est.plot_overlap(): the Axes carry what they should."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cina_ext.data import make_setoguchi  # noqa: E402
from cina_ext.estimators import IPW, DifferenceInMeans, KernelBalancing  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    ds = make_setoguchi(150, "A", seed=0)
    X = ds.to_frame()[list(ds.feature_names)].copy()
    X["site"] = np.where(np.arange(ds.n) % 3 == 0, "a", np.where(np.arange(ds.n) % 3 == 1, "b", "c"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = KernelBalancing(estimand="ate").fit(X, ds.T)
    return est, X, np.asarray(ds.T)


def test_love_plot_has_one_point_per_covariate(fitted):
    est, _, _ = fitted
    rep = est.balance()
    fig, ax = plt.subplots()
    out = rep.plot(ax=ax)
    assert out is ax
    p = len(est.feature_names_)
    assert p == 10 + 3  # the site column one-hot encoded, every level kept
    points = [c for c in ax.collections if len(c.get_offsets()) == p]
    assert len(points) == 2  # before and after
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(labels) == sorted(est.feature_names_) and "site=b" in labels
    # the x positions are |SMD| before / after, matched to the labels
    before = dict(zip(labels, np.asarray(points[0].get_offsets())[:, 0]))
    after = dict(zip(labels, np.asarray(points[1].get_offsets())[:, 0]))
    for j, name in enumerate(rep.feature_names):
        assert before[name] == pytest.approx(abs(rep.smd_before[j]))
        assert after[name] == pytest.approx(abs(rep.smd_after[j]))
    vlines = [ln for ln in ax.get_lines() if np.allclose(ln.get_xdata(), 0.1)]
    assert len(vlines) == 1  # the 0.1 reference line
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"before", "after"}
    plt.close(fig)


def test_love_plot_makes_its_own_axes(fitted):
    est, _, _ = fitted
    ax = est.balance().plot(threshold=0.25)
    assert [ln for ln in ax.get_lines() if np.allclose(ln.get_xdata(), 0.25)]
    plt.close(ax.figure)


@pytest.mark.parametrize("kind", ["propensity", "weights"])
def test_plot_overlap_one_histogram_per_arm(fitted, kind):
    est, _, T = fitted
    fig, ax = plt.subplots()
    out = est.plot_overlap(ax=ax, kind=kind, bins=20)
    assert out is ax
    hists = ax.patches  # a step histogram is one polygon
    assert len(hists) == 2
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        f"treated (n={int(T.sum())})",
        f"control (n={int((T == 0).sum())})",
    }
    assert ("propensity" in ax.get_xlabel()) == (kind == "propensity")
    assert "ATE" in ax.get_title()
    plt.close(fig)


def test_plot_overlap_uses_the_estimators_propensity(fitted):
    _, X, T = fitted
    est = IPW(random_state=0).fit(X, T)
    ax = est.plot_overlap()
    assert "estimator's model" in ax.get_xlabel()
    # the histogram is the density of propensity_ in each arm
    heights = [p.get_xy()[:, 1].max() for p in ax.patches]
    e1 = est.propensity_[T == 1]
    dens, _ = np.histogram(e1, bins=np.histogram_bin_edges(est.propensity_, bins=30), density=True)
    assert heights[0] == pytest.approx(dens.max())
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="kind"):
        est.plot_overlap(kind="nope")


def test_plots_need_a_fit():
    with pytest.raises(RuntimeError, match="not fitted"):
        DifferenceInMeans().plot_overlap()


def test_missing_matplotlib_names_the_extra(fitted, monkeypatch):
    est, _, _ = fitted
    rep = est.balance()
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"cina-ext\[plot\]"):
        rep.plot()
    with pytest.raises(ImportError, match=r"cina-ext\[plot\]"):
        est.plot_overlap()
