"""Loading of the compiled library ``cina_ext._C``, with a readable error on a torch mismatch.

A binary built against one torch and imported under another fails with an undefined-symbol
error deep inside the loader.  The build writes ``_build_info.py`` (torch version, CUDA or not);
it is compared with the running torch *before* the library is loaded.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch

_loaded = False
_error: Optional[str] = None
_cuda = False


def _torch_base_version(v: str) -> str:
    return v.split("+")[0]


def _load() -> None:
    global _loaded, _error, _cuda
    try:
        info = importlib.import_module("cina_ext._build_info")
    except ImportError:
        _error = "cina_ext was not built (no cina_ext/_build_info.py); install it with pip (see README)"
        return
    built, running = info.TORCH_VERSION, torch.__version__
    if _torch_base_version(built) != _torch_base_version(running):
        _error = (
            f"cina_ext._C was built against torch {built} but torch {running} is installed; "
            "rebuild cina_ext against the installed torch (pip install --no-build-isolation .)"
        )
        return
    try:
        importlib.import_module("cina_ext._C")
    except (ImportError, OSError) as exc:  # pragma: no cover - depends on a broken install
        _error = f"cina_ext._C failed to load: {exc}"
        return
    _loaded = True
    _cuda = bool(getattr(info, "WITH_CUDA", False))


def check_build_info(built: str, running: str) -> Optional[str]:
    """Return the error message that a build for torch ``built`` gives under ``running`` (or None)."""
    if _torch_base_version(built) != _torch_base_version(running):
        return f"cina_ext._C was built against torch {built} but torch {running} is installed"
    return None


def has_extension() -> bool:
    """True when the compiled library loaded (CPU kernels are always part of it)."""
    return _loaded


def has_cuda_kernels() -> bool:
    """True when the compiled library also holds the CUDA kernels."""
    return _loaded and _cuda


def extension_error() -> Optional[str]:
    """Why the compiled library did not load (None when it did)."""
    return _error


_load()
