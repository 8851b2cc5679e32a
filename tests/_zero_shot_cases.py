"""Shared pieces of the zero-shot tests: a tiny model configuration, small datasets, one thread."""

import pytest
import torch

from cina_ext.data import sample_datasets
from cina_ext.models.zero_shot import CInAZeroShotModel

TINY = dict(d_model=16, n_heads=2, n_layers=1, dim_feedforward=32, key_dim=8)
OVERLAP = ("overlap",)
BALANCE = ("ate", "att")


def _cfg(**kw):
    base = dict(
        families=("setoguchi",),
        n_range=(16, 28),
        batch_size=4,
        steps=6,
        lr=3e-3,
        warmup_steps=2,
        dtype="float64",
        backend="reference",
        model=dict(TINY),
    )
    base.update(kw)
    return base


def _datasets(count=3, seed=0, n_range=(12, 30)):
    return list(sample_datasets("setoguchi", count, n_range, seed=seed))


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return CInAZeroShotModel(**{**TINY, **kw}).double().eval()
