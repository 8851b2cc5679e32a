"""Shared test set-up: the tests/ folder on sys.path (for the case modules beside this file), a
``device`` fixture over the devices this build can run, and skips for what this machine lacks.

Markers (pyproject.toml): ``cuda`` -- needs a CUDA device and a build with CUDA kernels (skipped
without one); ``slow`` -- left out of ``make test``, run by ``make test-all`` (and CI).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def cuda_available() -> bool:
    """A CUDA device and a cina_ext build with CUDA kernels."""
    from cina_ext.ops import has_cuda_kernels

    return torch.cuda.is_available() and has_cuda_kernels()


DEVICES = ["cpu"] + (["cuda"] if cuda_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device this build runs on (the CPU always, CUDA where available)."""
    return torch.device(request.param)


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and a cina_ext build with CUDA kernels")
    for item in items:
        if "cuda" in item.keywords and not any(m.name == "skipif" for m in item.iter_markers()):
            item.add_marker(skip)
