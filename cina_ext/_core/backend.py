"""Backend choice for every operator (``backend="auto" | "fused" | "reference"``), defined once.

``"reference"`` is the pure-PyTorch twin; ``"fused"`` the compiled kernels (an error when they are
not built for the device); ``"auto"`` the compiled kernels when they are, else the reference with a
``RuntimeWarning`` (once per operator family and process).
"""

from __future__ import annotations

import warnings

import torch

from .constants import BACKENDS
from .extension import extension_error, has_cuda_kernels, has_extension

__all__ = ["BACKENDS", "resolve_backend", "resolve_solver_backend"]

_warned = {"attention": False, "solver": False}


def _has_solver_kernel(device: torch.device) -> bool:
    if not has_extension():
        return False
    if device.type == "cpu":
        return True
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key("cina::qp_solve_batch", device.type.upper()))
    except Exception:  # pragma: no cover - private API changed
        return False


def _check_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _fall_back(family: str, message: str) -> str:
    if not _warned[family]:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        _warned[family] = True
    return "reference"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` to ``"fused"`` or ``"reference"`` for the attention operators on ``device``.

    ``"reference"`` is the pure-PyTorch twin; ``"fused"`` the compiled kernels (an error when they
    are not built for the device); ``"auto"`` the compiled kernels when they are, else the
    reference with a ``RuntimeWarning`` (once per operator family and process).

    Parameters
    ----------
    backend : {"auto", "fused", "reference"}
        The requested backend.
    device : torch.device
        Device of the data.

    Returns
    -------
    str
        ``"fused"`` (compiled kernels: the extension loaded and the device is the CPU, or CUDA with
        CUDA kernels built) or ``"reference"``.

    Raises
    ------
    ValueError
        ``backend`` not one of ``("auto", "fused", "reference")``.
    RuntimeError
        ``backend="fused"`` when the compiled extension is unavailable or has no kernels for
        ``device``.

    Warns
    -----
    RuntimeWarning
        ``backend="auto"`` falling back to the reference (once per process).

    Examples
    --------
    >>> import torch
    >>> from cina_ext.ops import resolve_backend
    >>> resolve_backend("reference", torch.device("cpu"))
    'reference'
    """
    _check_name(backend)
    if backend == "reference":
        return "reference"
    if has_extension() and (device.type == "cpu" or (device.type == "cuda" and has_cuda_kernels())):
        return "fused"
    if backend == "fused":
        if not has_extension():
            raise RuntimeError(
                f"backend='fused' requested but the compiled extension is unavailable: {extension_error()}"
            )
        raise RuntimeError(f"backend='fused' requested but the compiled extension has no kernels for device {device}")
    reason = extension_error() if not has_extension() else f"no compiled kernels for {device}"
    return _fall_back("attention", f"cina_ext: falling back to the PyTorch reference ({reason})")


def resolve_solver_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` to ``"fused"`` or ``"reference"`` for the balancing solver on ``device``."""
    _check_name(backend)
    if backend == "reference":
        return "reference"
    if _has_solver_kernel(device):
        return "fused"
    reason = (
        f"the compiled extension is unavailable: {extension_error()}"
        if not has_extension()
        else f"the compiled solver has no kernel for device {device}"
    )
    if backend == "fused":
        raise RuntimeError(f"backend='fused' requested but {reason}")
    return _fall_back("solver", f"cina_ext: QP solver falling back to the PyTorch reference ({reason})")
