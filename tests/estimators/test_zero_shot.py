"""The zero-shot estimator (Algorithm 3): fit / ate / estimate_many agree."""

import numpy as np

from cina_ext.estimators import CInAZeroShot

from _zero_shot_cases import BALANCE, OVERLAP, TINY, _cfg, _datasets, _model, _threads  # noqa: F401


def test_estimator_fit_ate_and_estimate_many_agree():
    m = _model(3)
    ds = _datasets(5, seed=7)
    net = CInAZeroShot(model=m, batch_size=2, descent_steps=0)
    np.testing.assert_allclose(net.estimate_many(ds), [net.fit(d.X, d.T).ate(d.Y) for d in ds], atol=1e-9)
    est = CInAZeroShot(model=m, batch_size=2)
    many = est.estimate_many(ds)
    single = [est.fit(d.X, d.T).ate(d.Y) for d in ds]
    # the descent steps amplify the float32 rounding of the Gram matrix, which differs between a
    # padded batch and a single dataset, to about 1e-5
    np.testing.assert_allclose(many, single, atol=1e-4)
    w = est.weights_
    assert w.min() >= 0
    assert abs(w[ds[-1].T == 1].sum() - 1) < 1e-9 and abs(w[ds[-1].T == 0].sum() - 1) < 1e-9
