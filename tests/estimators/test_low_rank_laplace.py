"""The low-rank path of the laplace kernel: random Fourier features from its spectral density
(the multivariate Cauchy) against the exact kernel, and the low-rank fit against the exact one."""

from __future__ import annotations

import numpy as np
import pytest

from cina_ext.data import make_setoguchi
from cina_ext.estimators import KernelBalancing


def test_laplace_random_fourier_features_approximate_the_kernel():
    from cina_ext.estimators.low_rank import rff_features

    Z = np.random.default_rng(10).standard_normal((150, 4))
    D = np.sqrt(((Z[:, None] - Z[None]) ** 2).sum(-1))
    errs = {}
    for rank in (500, 8000):
        F = rff_features(Z, 0.5, rank, seed=1, kernel="laplace")
        errs[rank] = np.abs(F @ F.T - np.exp(-0.5 * D)).mean()
    assert errs[8000] < 0.015 and errs[8000] < errs[500] / 2  # Monte Carlo error ~ 1 / sqrt(rank)
    with pytest.raises(ValueError, match="rbf and laplace"):
        rff_features(Z, 0.5, 10, seed=1, kernel="linear")


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_laplace_low_rank_fit_is_close_to_the_exact_fit(estimand):
    d = make_setoguchi(200, "G", seed=11)
    kw = dict(estimand=estimand, kernel="laplace", gamma=0.3, lam=0.01, random_state=0)
    exact = KernelBalancing(approximation="exact", **kw).fit(d.X, d.T)
    corr = {}
    for rank in (256, 4096):
        low = KernelBalancing(approximation="rff", rank=rank, **kw).fit(d.X, d.T)
        assert low.low_rank_ and not exact.low_rank_
        corr[rank] = np.corrcoef(exact.weights_, low.weights_)[0, 1]
    # measured: 0.55-0.65 at rank 256, 0.96-0.97 at 6000 (the laplace spectrum is heavy-tailed,
    # so it needs more features than rbf for the same accuracy)
    assert corr[4096] > 0.9 and corr[4096] > corr[256] + 0.2
    assert abs(exact.ate(d.Y) - low.ate(d.Y)) < 0.05
