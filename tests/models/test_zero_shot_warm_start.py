"""approximation="auto" with the exact descent steps at a given penalty: the network's pass runs
against warm_start_landmarks(N) landmarks and only starts the steps."""

import importlib

import numpy as np
import torch

from cina_ext.data import make_setoguchi
from cina_ext.estimators import CInAZeroShot
from cina_ext.models.zero_shot import CInAZeroShotModel, collate_datasets, sample_landmarks

from _zero_shot_cases import BALANCE, TINY, _threads  # noqa: F401

zs_est = importlib.import_module("cina_ext.estimators.zero_shot")


def _median_model(seed=4):
    torch.manual_seed(seed)
    return CInAZeroShotModel(**dict(TINY, estimands=BALANCE, balance_gamma="median")).double().eval()


def _passes(m, d, landmarks, seed=0):
    """The exact pass and the pass against ``landmarks`` landmarks drawn with ``seed``, computed here."""
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    lm = sample_landmarks(W, mask, landmarks, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        exact = m.weights(X, W, mask, fm)[0].numpy()
        approx = m.weights_landmarks(X, W, lm, mask, fm)[0].numpy()
    return exact, approx


def test_the_default_steps_start_from_a_pass_against_landmarks():
    m = _median_model()
    d = make_setoguchi(200, "G", seed=11)
    exact, approx = _passes(m, d, zs_est.WARM_START_LANDMARKS)
    assert not np.allclose(exact, approx)  # the two starts differ ...
    est = CInAZeroShot(model=m, scaling="standard").fit(d.X, d.T)
    np.testing.assert_allclose(est.raw_weights_, approx, rtol=1e-10, atol=1e-14)  # ... the default takes this one
    again = CInAZeroShot(model=m, scaling="standard").fit(d.X, d.T)
    np.testing.assert_array_equal(again.weights_, est.weights_)  # no random_state: landmarks seeded 0
    # the other settings keep the exact pass
    for kw in ({"approximation": "exact"}, {"descent_steps": 0}):
        other = CInAZeroShot(model=m, scaling="standard", **kw).fit(d.X, d.T)
        start = other.raw_weights_ if hasattr(other, "raw_weights_") else other.weights_
        np.testing.assert_allclose(start, exact, rtol=1e-10, atol=1e-14)
    # `landmarks` sets the count
    _, approx32 = _passes(m, d, 32)
    few = CInAZeroShot(model=m, scaling="standard", landmarks=32).fit(d.X, d.T)
    np.testing.assert_allclose(few.raw_weights_, approx32, rtol=1e-10, atol=1e-14)
    seeded = CInAZeroShot(model=m, scaling="standard", random_state=3).fit(d.X, d.T)
    np.testing.assert_allclose(seeded.raw_weights_, _passes(m, d, zs_est.WARM_START_LANDMARKS, 3)[1], rtol=1e-10)


def test_the_landmark_count_grows_as_the_root_of_the_size_within_its_bounds():
    counts = [zs_est.warm_start_landmarks(n) for n in (0, 100, 1024, 1025, 4000, 16384, 10**6)]
    assert counts == [64, 64, 64, 65, 127, 256, 1024]


def test_lam_auto_keeps_the_exact_pass():
    m = _median_model()
    d = make_setoguchi(200, "G", seed=11)
    exact, _ = _passes(m, d, zs_est.WARM_START_LANDMARKS)
    est = CInAZeroShot(model=m, scaling="standard", lam="auto").fit(d.X, d.T)
    np.testing.assert_allclose(est.raw_weights_, exact, rtol=1e-10, atol=1e-14)


def test_a_dataset_at_most_the_landmark_count_gets_the_exact_pass():
    m = _median_model()
    d = make_setoguchi(zs_est.WARM_START_LANDMARKS, "A", seed=12)
    exact, approx = _passes(m, d, zs_est.WARM_START_LANDMARKS)
    est = CInAZeroShot(model=m, scaling="standard").fit(d.X, d.T)
    np.testing.assert_allclose(est.raw_weights_, exact, rtol=1e-10, atol=1e-14)


def test_above_the_descent_limit_the_former_rule_applies(monkeypatch):
    # the feature path of large datasets keeps the exact pass (landmarks only beyond ZERO_SHOT_EXACT_LIMIT)
    monkeypatch.setattr(zs_est, "DESCENT_EXACT_LIMIT", 150)
    m = _median_model()
    d = make_setoguchi(200, "G", seed=11)
    exact, _ = _passes(m, d, zs_est.WARM_START_LANDMARKS)
    est = CInAZeroShot(model=m, scaling="standard").fit(d.X, d.T)
    np.testing.assert_allclose(est.raw_weights_, exact, rtol=1e-10, atol=1e-14)


def test_estimate_many_gives_each_dataset_the_landmarks_fit_gives_it():
    m = _median_model()
    ds = [make_setoguchi(n, "B", seed=n) for n in (150, 40, 260, 150)]
    est = CInAZeroShot(model=m, scaling="standard", batch_size=3)
    many = est.estimate_many([(d.X, d.T, d.Y) for d in ds])
    single = [CInAZeroShot(model=m, scaling="standard").fit(d.X, d.T).ate(d.Y) for d in ds]
    np.testing.assert_allclose(many, single, rtol=1e-6, atol=1e-9)


def test_the_landmark_start_descends_as_well_as_the_exact_one():
    """The claim behind the default, on the shipped model: after the 32 steps, the objective from
    the landmark start is within 10% of the objective from the exact start."""
    ds = [make_setoguchi(400, s, seed=i) for i, s in enumerate("ADG")]
    for d in ds:
        auto = CInAZeroShot.from_pretrained().fit(d.X, d.T)
        exact = CInAZeroShot.from_pretrained(approximation="exact").fit(d.X, d.T)
        assert not np.allclose(auto.raw_weights_, exact.raw_weights_)
        assert auto.balance_objective_ < auto.raw_balance_objective_
        assert auto.balance_objective_ <= 1.1 * exact.balance_objective_


def test_sizes_with_different_landmark_counts_share_a_batch(monkeypatch):
    """Above 1024 units the count grows with N; estimate_many still batches such datasets, each
    with its own count, and gives each what fit gives it."""
    m = _median_model()
    ds = [make_setoguchi(n, "C", seed=n) for n in (1100, 1300)]
    assert zs_est.warm_start_landmarks(1100) != zs_est.warm_start_landmarks(1300)
    calls = []
    real = CInAZeroShot._weights_batch

    def spy(self, model, items, *args, **kwargs):
        calls.append((len(items), kwargs.get("landmarks")))
        return real(self, model, items, *args, **kwargs)

    single = [CInAZeroShot(model=m, scaling="standard").fit(d.X, d.T).ate(d.Y) for d in ds]
    monkeypatch.setattr(CInAZeroShot, "_weights_batch", spy)
    many = CInAZeroShot(model=m, scaling="standard").estimate_many([(d.X, d.T, d.Y) for d in ds])
    assert calls == [(2, [zs_est.warm_start_landmarks(1100), zs_est.warm_start_landmarks(1300)])]
    np.testing.assert_allclose(many, single, rtol=1e-6, atol=1e-9)
