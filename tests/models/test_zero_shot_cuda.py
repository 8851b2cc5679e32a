"""The zero-shot estimator with its model on a CUDA device: the network pass, the descent steps
(exact Gram matrix and random Fourier features), the landmark path and both refinements give the
CPU's weights.  Skipped without a CUDA device; run on the GPU machine by tools/gpu_check.sh."""

from __future__ import annotations

import copy
import importlib
import os

import numpy as np
import pytest
import torch

from cina_ext.data import make_setoguchi
from cina_ext.estimators import CInAZeroShot
from cina_ext.models.checkpoint import model_from_checkpoint, pretrained_path

# CINA_TEST_ZS_DEVICE=cpu runs the same comparisons CPU against CPU (a check of the test itself)
DEV = os.environ.get("CINA_TEST_ZS_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
zs_est = importlib.import_module("cina_ext.estimators.zero_shot")


def _pair():
    cpu = model_from_checkpoint(pretrained_path()).eval()
    return cpu, copy.deepcopy(cpu).to(DEV)


@pytest.mark.parametrize(
    "kw",
    [
        dict(descent_steps=0),
        dict(),
        dict(refine=40),
        dict(estimand="att"),
        dict(approximation="landmarks", landmarks=128, random_state=3),
        dict(approximation="landmarks", landmarks=128, random_state=3, refine=40),
        dict(backend="fused"),  # the compiled attention; the descent has no CUDA kernel: its twin runs
    ],
    ids=["network", "descent", "refine", "att", "landmarks", "landmarks-refine", "fused"],
)
def test_weights_on_the_device_match_the_cpu(kw):
    cpu, dev = _pair()
    d = make_setoguchi(700, "G", seed=11)
    a = CInAZeroShot(model=cpu, **kw).fit(d.X, d.T)
    b = CInAZeroShot(model=dev, **kw).fit(d.X, d.T)
    assert b.weights_.shape == a.weights_.shape and np.isfinite(b.weights_).all()
    # float32 kernels in another order: the steps amplify the rounding (docs/method.md §5)
    np.testing.assert_allclose(b.weights_, a.weights_, rtol=0, atol=5e-5 * a.weights_.max())
    assert b.ate(d.Y) == pytest.approx(a.ate(d.Y), abs=2e-3)


def test_features_above_the_descent_limit_on_the_device(monkeypatch):
    monkeypatch.setattr(zs_est, "DESCENT_EXACT_LIMIT", 500)
    cpu, dev = _pair()
    ds = [make_setoguchi(n, "A", seed=n) for n in (400, 700)]
    many_a = CInAZeroShot(model=cpu, refine=30, random_state=1).estimate_many([(d.X, d.T, d.Y) for d in ds])
    many_b = CInAZeroShot(model=dev, refine=30, random_state=1).estimate_many([(d.X, d.T, d.Y) for d in ds])
    np.testing.assert_allclose(many_b, many_a, atol=2e-3)
