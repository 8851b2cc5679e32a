"""The zero-shot model's scalable path: landmark attention (encoder) + Nystrom read-out."""

import importlib
import math

import numpy as np
import pytest
import torch

from cina_ext.data import make_setoguchi
from cina_ext.estimators import CInAZeroShot
from cina_ext.models.zero_shot import collate_datasets, sample_landmarks

from _zero_shot_cases import BALANCE, OVERLAP, _datasets, _model, _threads  # noqa: F401

zs = importlib.import_module("cina_ext.models.zero_shot")
zs_est = importlib.import_module("cina_ext.estimators.zero_shot")


def _all_units(W, mask):
    """Every valid unit a landmark, weight 1: the exact forward pass."""
    n = mask.sum(-1)
    M = int(n.max())
    idx = torch.zeros(W.shape[0], M, dtype=torch.long)
    valid = torch.zeros(W.shape[0], M, dtype=torch.bool)
    for b in range(W.shape[0]):
        ids = torch.nonzero(mask[b]).squeeze(-1)
        idx[b, : len(ids)] = ids
        valid[b, : len(ids)] = True
    return idx, valid, torch.zeros(idx.shape, dtype=W.dtype)


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_every_unit_a_landmark_is_the_exact_forward_pass(estimand):
    model = _model(seed=3, estimands=BALANCE, unroll=3)
    X, W, mask, fm = collate_datasets(_datasets(3, seed=5, n_range=(20, 40)), dtype=torch.float64)
    exact = model.weights(X, W, mask, fm, estimand=estimand, backend="reference")
    for chunk in (7, 10_000):
        got = model.weights_landmarks(X, W, _all_units(W, mask), mask, fm, estimand=estimand, chunk=chunk)
        torch.testing.assert_close(got, exact, rtol=1e-7, atol=1e-9)


def test_chunking_does_not_change_the_result(monkeypatch):
    model = _model(seed=4, estimands=BALANCE, unroll=2)
    X, W, mask, fm = collate_datasets(_datasets(2, seed=6, n_range=(60, 90)), dtype=torch.float64)
    lm = sample_landmarks(W, mask, 24, generator=torch.Generator().manual_seed(1))
    a = model.weights_landmarks(X, W, lm, mask, fm, chunk=5)
    b = model.weights_landmarks(X, W, lm, mask, fm, chunk=1000)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the read-out's kernel rows recomputed in chunks at every witness step instead of held once
    monkeypatch.setattr(zs, "_NYSTROM_HOLD", 0)
    for chunk in (5, 1000):
        c = model.weights_landmarks(X, W, lm, mask, fm, chunk=chunk)
        torch.testing.assert_close(c, b, rtol=1e-9, atol=1e-12)
    X32 = X.float()
    model32 = model.float()
    c32 = model32.weights_landmarks(X32, W.float(), lm, mask, fm, chunk=7)
    monkeypatch.setattr(zs, "_NYSTROM_HOLD", 1 << 24)
    b32 = model32.weights_landmarks(X32, W.float(), lm, mask, fm, chunk=7)
    torch.testing.assert_close(c32, b32, rtol=1e-5, atol=1e-7)
    # still weights: non-negative, one per arm, zero on padding
    assert bool((a >= 0).all()) and bool((a[~mask] == 0).all())
    for arm in (W > 0, W < 0):
        torch.testing.assert_close((a * (arm & mask)).sum(-1), torch.ones(2, dtype=a.dtype))


def test_landmark_path_tracks_the_exact_pass_of_the_shipped_model():
    """On 3,000 units, 512 landmarks: the weights and the estimate stay close to the exact pass."""
    d = make_setoguchi(3000, "G", seed=11)
    model = CInAZeroShot.from_pretrained()._get_model().eval()
    X = torch.as_tensor(d.X, dtype=torch.float32)[None]
    X = (X - X.mean(1, keepdim=True)) / X.std(1, keepdim=True)
    W = torch.as_tensor(2.0 * d.T - 1.0, dtype=torch.float32)[None]
    exact = model.weights(X, W)[0].double().numpy()
    lm = sample_landmarks(W, m=512, generator=torch.Generator().manual_seed(0))
    approx = model.weights_landmarks(X, W, lm)[0].double().numpy()
    assert np.corrcoef(exact, approx)[0, 1] > 0.99
    s = 2.0 * d.T - 1.0
    assert abs(np.sum(exact * s * d.Y) - np.sum(approx * s * d.Y)) < 0.05 * np.std(d.Y)


def test_sample_landmarks_stratifies_and_weights_by_inclusion():
    W = torch.tensor([[1.0] * 30 + [-1.0] * 970, [1.0] * 500 + [-1.0] * 500])
    mask = torch.ones(W.shape, dtype=torch.bool)
    mask[1, 900:] = False  # 500 treated, 400 control valid
    idx, valid, logw = sample_landmarks(W, mask, 80, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (2, 80) and bool(valid.all())
    treated0 = W[0, idx[0]] > 0
    assert int(treated0.sum()) == 80 // 8  # the small arm gets its floor, not 80 * 30 / 1000 = 2
    torch.testing.assert_close(logw[0, treated0], torch.full((10,), math.log(30 / 10)))
    torch.testing.assert_close(logw[0, ~treated0], torch.full((70,), math.log(970 / 70)))
    assert len(set(idx[0].tolist())) == 80  # without replacement
    assert bool(mask[1, idx[1]].all())  # only valid units
    t1 = int((W[1, idx[1]] > 0).sum())
    assert t1 == round(80 * 500 / 900)
    again = sample_landmarks(W, mask, 80, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], idx)
    other = sample_landmarks(W, mask, 80, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other[0], idx)
    # a dataset with at most m valid units keeps them all, with weight 1
    small = sample_landmarks(W[:, :50], m=64)
    assert bool(small[1].all()) and small[0].shape == (2, 50) and bool((small[2] == 0).all())


def test_landmark_errors_are_clear():
    W = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    with pytest.raises(ValueError, match="landmarks m"):
        sample_landmarks(W, m=1)
    model = _model(seed=1, estimands=BALANCE)
    X = torch.randn(1, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="shape"):
        model.weights_landmarks(X, W.double(), (torch.zeros(2, 3, dtype=torch.long),) * 3)
    bad = (torch.tensor([[0, 9]]), torch.tensor([[True, True]]), torch.zeros(1, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="indices"):
        model.weights_landmarks(X, W.double(), bad)
    with pytest.raises(ValueError, match="ate/att models only"):
        _model(seed=1, estimands=OVERLAP).weights_landmarks(X, W.double(), sample_landmarks(W.double(), m=2))


def test_estimator_switches_to_landmarks_above_the_limit(monkeypatch):
    d = make_setoguchi(900, "G", seed=3)
    exact = CInAZeroShot.from_pretrained(random_state=0, approximation="exact", descent_steps=0).fit(d.X, d.T)
    monkeypatch.setattr(zs_est, "ZERO_SHOT_EXACT_LIMIT", 500)
    monkeypatch.setattr(zs_est, "DESCENT_EXACT_LIMIT", 400)  # the large-dataset regime at 900 units
    auto = CInAZeroShot.from_pretrained(random_state=0, landmarks=256, descent_steps=0)
    with pytest.warns(UserWarning, match="landmark"):
        auto.fit(d.X, d.T)
    assert not np.allclose(auto.weights_, exact.weights_)  # another path ran ...
    assert np.corrcoef(auto.weights_, exact.weights_)[0, 1] > 0.99  # ... and tracks the exact one
    assert abs(auto.ate(d.Y) - exact.ate(d.Y)) < 0.05 * np.std(d.Y)
    again = CInAZeroShot.from_pretrained(random_state=0, landmarks=256, descent_steps=0)
    with pytest.warns(UserWarning):
        again.fit(d.X, d.T)
    np.testing.assert_array_equal(again.weights_, auto.weights_)  # landmarks seeded by random_state
    with pytest.warns(UserWarning, match="quadratic"):
        CInAZeroShot.from_pretrained(approximation="exact").fit(d.X, d.T)
    many = CInAZeroShot.from_pretrained(random_state=0, landmarks=256, descent_steps=0)
    with pytest.warns(UserWarning, match="landmark"):
        ests = many.estimate_many([(d.X, d.T, d.Y), (d.X[:400], d.T[:400], d.Y[:400])])
    assert abs(ests[0] - exact.ate(d.Y)) < 0.05 * np.std(d.Y)
    # refine works on the landmark path too (the low-rank dual, O(N r))
    refined = CInAZeroShot.from_pretrained(refine=300, landmarks=256, random_state=0)
    with pytest.warns(UserWarning, match="landmark"):
        refined.fit(d.X, d.T)
    assert 0 < refined.refine_iterations_ <= 300
    assert not np.allclose(refined.weights_, auto.weights_)
    assert abs(refined.ate(d.Y) - exact.ate(d.Y)) < 0.05 * np.std(d.Y)


def test_estimator_rejects_bad_approximation_arguments():
    d = make_setoguchi(100, "A", seed=1)
    with pytest.raises(ValueError, match="approximation"):
        CInAZeroShot.from_pretrained(approximation="nystrom").fit(d.X, d.T)
    with pytest.raises(ValueError, match="landmarks"):
        CInAZeroShot.from_pretrained(landmarks=1).fit(d.X, d.T)
    # explicit landmarks on a dataset smaller than m: the exact pass
    a = CInAZeroShot.from_pretrained(approximation="landmarks", landmarks=512).fit(d.X, d.T)
    b = CInAZeroShot.from_pretrained(approximation="exact").fit(d.X, d.T)
    np.testing.assert_array_equal(a.weights_, b.weights_)
