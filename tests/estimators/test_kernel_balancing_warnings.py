"""KernelBalancing's warnings about large problems (the quadratic exact solve, the low-rank
fallback, the weighted low-rank path): each raised once and attributed to the caller's line."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from cina_ext.data import make_setoguchi
from cina_ext.estimators import KernelBalancing


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(kernel="laplace", approximation="exact"), "exact solve of 80 units is quadratic"),
        (dict(kernel="laplace"), "solving on .* random Fourier features instead"),
        (dict(approximation="exact"), r"exact solve of 80 units is quadratic in N: about .* GiB"),
        (dict(estimand="overlap"), "exact overlap solve of 80 units is quadratic"),
        (dict(), "solving on .* random Fourier features instead"),
    ],
)
def test_large_problems_warn_once_at_the_callers_line(monkeypatch, kw, message):
    import cina_ext.estimators.kernel_balancing as kb_module

    monkeypatch.setattr(kb_module, "EXACT_LIMIT", 50)
    d = make_setoguchi(80, "A", seed=8)
    est = KernelBalancing(random_state=0, **kw)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        est.fit(d.X, d.T)
    hits = [w for w in rec if issubclass(w.category, UserWarning) and re.search(message, str(w.message))]
    assert len(hits) == 1
    assert hits[0].filename == __file__  # the stack level points at the user's fit call


def test_weighted_fit_warnings_point_at_the_callers_line(monkeypatch):
    import cina_ext.estimators.kernel_balancing as kb_module

    monkeypatch.setattr(kb_module, "WEIGHTED_DENSE_LIMIT", 30)
    d = make_setoguchi(80, "A", seed=9)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        KernelBalancing(random_state=0, lam=0.01).fit(d.X, d.T, sample_weight=np.ones(d.n))
    hits = [w for w in rec if "random Fourier features" in str(w.message)]
    assert len(hits) == 1 and hits[0].filename == __file__
