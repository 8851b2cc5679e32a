"""cina-ext: Causal Inference with Attention (CInA), with fused C++/CUDA kernels for PyTorch."""

from __future__ import annotations

from . import ops, reference  # noqa: F401  (registers the compiled operators when available)
from ._core.constants import VERSION as __version__  # noqa: F401

_LAZY = {
    # estimators (imported on first use: they pull in scikit-learn)
    "CInA": "estimators",
    "KernelBalancing": "estimators",
    "DifferenceInMeans": "estimators",
    "IPW": "estimators",
    "SelfNormalizedIPW": "estimators",
    "DoubleML": "estimators",
    "CInAZeroShot": "estimators",
    "make_estimator": "estimators",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'cina_ext' has no attribute {name!r}")
