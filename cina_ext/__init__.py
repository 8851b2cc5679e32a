"""cina-ext: Causal Inference with Attention (CInA), with fused C++/CUDA kernels for PyTorch."""
from __future__ import annotations

__version__ = "0.1.0"

from . import ops, reference  # noqa: F401  (registers the compiled operators when available)

_LAZY = {
    # estimators
    "CInA": "estimators", "KernelBalancing": "estimators", "DifferenceInMeans": "estimators",
    "IPW": "estimators", "SelfNormalizedIPW": "estimators", "DoubleML": "estimators",
    "CInAZeroShot": "zeroshot",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'cina_ext' has no attribute {name!r}")
