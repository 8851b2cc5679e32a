"""The p-agnostic input of the zero-shot model: random Fourier features of the covariates."""

import numpy as np
import pytest
import torch

from cina_ext.estimators import CInAZeroShot
from cina_ext.models.zero_shot import CInAZeroShotModel, collate_datasets, sample_landmarks

from _zero_shot_cases import TINY, _threads  # noqa: F401


def _rff_model(seed=0, **kw):
    torch.manual_seed(seed)
    args = {**TINY, "input_features": "rff", "rff_dim": 32, "max_features": 300, **kw}
    return CInAZeroShotModel(**args).double().eval()


def _data(B, N, p, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, N, p, generator=g, dtype=torch.float64)
    X[..., 0] = (X[..., 0] > 0.3).double()  # a binary covariate
    X[..., -1] = torch.exp(2.0 * X[..., -1])  # a heavy-tailed one
    W = torch.where(torch.rand(B, N, generator=g) < 0.3, 1.0, -1.0).double()
    return X, W


@pytest.mark.parametrize("p", [2, 50, 256])
def test_any_number_of_covariates_up_to_max_features(p):
    model = _rff_model()
    X, W = _data(2, 40, p, seed=p)
    w = model.weights(X, W)
    assert torch.isfinite(w).all() and bool((w >= 0).all())
    for arm in (W > 0, W < 0):
        torch.testing.assert_close((w * arm).sum(-1), torch.ones(2, dtype=w.dtype))
    with pytest.raises(ValueError, match="max_features"):
        model.weights(*_data(1, 10, 301, seed=0))


def test_features_approximate_the_training_kernel_at_every_p():
    """Inner products of the features -> exp(-||z - z'||^2 / p), computed here from Z directly."""
    model = _rff_model(rff_dim=4096, max_features=200)
    for p in (3, 40, 200):
        X, W = _data(1, 60, p, seed=1)
        mask = torch.ones(1, 60, dtype=torch.bool)
        fm = torch.ones(1, p, dtype=torch.bool)
        Z = model.standardise(X, mask, fm)
        assert Z.shape[-1] == p  # no padding to max_features
        F = model.features(Z, fm)[0]
        approx = F @ F.T / (F.shape[-1] // 2)
        exact = torch.exp(-(torch.cdist(Z[0], Z[0]) ** 2) / p)
        assert float((approx - exact).abs().mean()) < 0.02


def test_padded_covariates_change_nothing():
    """A dataset padded to more covariates in a batch gets the weights it gets alone."""
    model = _rff_model(seed=2)
    X1, W1 = _data(1, 30, 5, seed=3)
    X2, W2 = _data(1, 25, 12, seed=4)
    items = [(X1[0].numpy(), ((W1[0] + 1) / 2).numpy()), (X2[0].numpy(), ((W2[0] + 1) / 2).numpy())]
    X, W, mask, fm = collate_datasets(items, dtype=torch.float64)
    both = model.weights(X, W, mask, fm)
    torch.testing.assert_close(both[0, :30], model.weights(X1, W1)[0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(both[1, :25], model.weights(X2, W2)[0], rtol=1e-6, atol=1e-9)


def test_rff_model_survives_a_checkpoint_and_runs_the_landmark_path(tmp_path):
    model = _rff_model(seed=5)
    X, W = _data(1, 80, 20, seed=6)
    path = tmp_path / "rff.pt"
    torch.save({"model_config": model.config, "model_state": model.state_dict(), "dtype": "float64"}, path)
    from cina_ext.models.checkpoint import model_from_checkpoint

    again = model_from_checkpoint(str(path))
    assert again.input_features == "rff" and torch.equal(again.rff_omega, model.rff_omega)
    torch.testing.assert_close(again.weights(X, W), model.weights(X, W), rtol=0, atol=0)
    lm = sample_landmarks(W, m=200)  # every unit a landmark: the exact pass
    torch.testing.assert_close(model.weights_landmarks(X, W, lm), model.weights(X, W), rtol=1e-7, atol=1e-9)
    est = CInAZeroShot(model=model, random_state=0).fit(X[0].numpy(), ((W[0] + 1) / 2).numpy())
    assert est.weights_.shape == (80,) and np.isfinite(est.weights_).all()


def test_input_feature_arguments_are_checked():
    with pytest.raises(ValueError, match="input_features"):
        CInAZeroShotModel(input_features="raw")
    with pytest.raises(ValueError, match="rff_dim"):
        CInAZeroShotModel(input_features="rff", rff_dim=7)
    # the shipped kind keeps its configuration (older checkpoints have no input_features key)
    assert "input_features" not in CInAZeroShotModel().config
