"""The balancing descent: the compiled CPU operator behind the reference's API.

:func:`balance_descent` has the signature of :func:`cina_ext.reference.balance_descent.balance_descent`
(the pure-PyTorch ground truth) plus ``backend="auto" | "fused" | "reference"``.  The compiled
kernel (csrc/balance_descent) runs each problem's steps while its dataset's Gram matrix stays in
cache, and per step computes only each unit's own-arm entry of the product (one dot product per
unit, half the reference's batched two-arm product).  It is CPU only: on CUDA ``"auto"`` runs the
reference (whose batched products suit the device) and ``"fused"`` is an error.  Not
differentiable (it is an optimiser: call it under ``torch.no_grad()`` or on detached tensors).

Differences from the reference: the products accumulate in float32 in another order (the weights
agree to about 1e-6 relative), and exponents below -708 are clamped there (a weight of 1e-308
times its start instead of 0).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .._core.backend import resolve_backend
from .._core.constants import BACKENDS
from .._core.extension import has_extension
from ..reference.balance_descent import balance_descent as _reference_balance_descent

__all__ = ["balance_descent"]


def _check(K, w, arm, target, moving, lam, steps, step_size, momentum) -> None:
    for name, t in (("K", K), ("w", w), ("arm", arm), ("target", target), ("moving", moving), ("lam", lam)):
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.device != K.device:
            raise ValueError(f"{name} is on {t.device} but K is on {K.device} (all tensors must share a device)")
    if K.dim() != 3 or K.shape[1] != K.shape[2]:
        raise ValueError(f"K must have shape (B, N, N), got {tuple(K.shape)}")
    if K.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"K must be float32 or float64, got {K.dtype}")
    B, N = K.shape[0], K.shape[-1]
    if w.dim() != 2 or w.shape[1] != N:
        raise ValueError(f"w must have shape (R, {N}), got {tuple(w.shape)}")
    R = w.shape[0]
    if (B == 0 and R != 0) or (B > 0 and R % B != 0):
        raise ValueError(f"the {R} rows of w are not a whole number of rows per each of the {B} matrices of K")
    for name, t, dt in (("w", w, torch.float64), ("target", target, torch.float64)):
        if t.dtype != dt:
            raise TypeError(f"{name} must be float64, got {t.dtype}")
    if arm.dtype != torch.int8:
        raise TypeError(f"arm must be int8 (1 treated, 0 control, -1 padding), got {arm.dtype}")
    if moving.dtype != torch.bool:
        raise TypeError(f"moving must be bool, got {moving.dtype}")
    for name, t in (("arm", arm), ("target", target), ("moving", moving)):
        if tuple(t.shape) != (R, N):
            raise ValueError(f"{name} must have shape {(R, N)}, got {tuple(t.shape)}")
    if tuple(lam.shape) != (R,):
        raise ValueError(f"lam must have shape ({R},), got {tuple(lam.shape)}")
    if lam.dtype != torch.float64:
        raise TypeError(f"lam must be float64, got {lam.dtype}")
    if R and not (bool(torch.isfinite(lam).all()) and bool((lam > 0).all())):
        raise ValueError("lam must be finite and > 0")
    if R and not (bool(torch.isfinite(w).all()) and bool(torch.isfinite(target).all())):
        raise ValueError("w and target must be finite")
    if R and bool(((arm < -1) | (arm > 1)).any()):
        raise ValueError("arm must hold 1 (treated), 0 (control) or -1 (padding)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
    if not (0.0 <= momentum < 1.0):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")


def balance_descent(
    K: Tensor,
    w: Tensor,
    arm: Tensor,
    target: Tensor,
    moving: Tensor,
    lam: Tensor,
    steps: int,
    step_size: float,
    momentum: float,
    *,
    backend: str = "auto",
) -> Tuple[Tensor, Tensor]:
    """Exponentiated-gradient steps with exact line search on the kernel balancing objective.

    Parameters
    ----------
    K : Tensor, shape (B, N, N)
        Symmetric Gram matrices (float32 for the compiled kernel; float64 runs the reference).
    w : Tensor, shape (R, N), float64
        Starting weights, R a multiple of B (row ``r`` uses ``K[r // (R / B)]``): a distribution
        on each arm's moving units, 0 on padded slots.
    arm : Tensor, shape (R, N), int8
        1 treated, 0 control, -1 padding.
    target : Tensor, shape (R, N), float64
        The distribution both arms are balanced against.
    moving : Tensor, shape (R, N), bool
        The units whose weights move and are penalised (the others keep their start).
    lam : Tensor, shape (R,), float64
        Penalties (> 0).
    steps : int
        Number of steps (0 returns the start and its objective).
    step_size, momentum : float
        Step size (> 0) and momentum (in [0, 1)).
    backend : {"auto", "fused", "reference"}
        ``"auto"``: the compiled kernel for float32 ``K`` on the CPU, else the reference.

    Returns
    -------
    weights : Tensor, shape (R, N), float64
        The best iterate (lowest objective, the start included).
    objective : Tensor, shape (R,), float64
        Its objective.

    Raises
    ------
    ValueError, TypeError
        Wrong shapes, dtypes or devices; non-finite ``w``, ``target`` or ``lam``; ``lam <= 0``;
        a non-finite entry of ``K`` read on the valid units (compiled kernel).

    Examples
    --------
    >>> import torch
    >>> from cina_ext.ops import balance_descent
    >>> K = torch.eye(3).unsqueeze(0)
    >>> w = torch.tensor([[1.0, 0.5, 0.5]], dtype=torch.float64)
    >>> arm = torch.tensor([[1, 0, 0]], dtype=torch.int8)
    >>> c = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    >>> lam = torch.tensor([0.01], dtype=torch.float64)
    >>> wb, obj = balance_descent(K, w, arm, c, torch.ones(1, 3, dtype=torch.bool), lam, 5, 1.0, 0.0)
    >>> wb.shape, bool(obj[0] > 0)
    (torch.Size([1, 3]), True)
    """
    _check(K, w, arm, target, moving, lam, steps, step_size, momentum)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        choice = "reference"
    elif K.device.type != "cpu" or K.dtype != torch.float32:
        # no kernel for these by design (CUDA: the twin's batched products suit the device)
        if backend == "fused":
            raise RuntimeError(
                f"backend='fused': the compiled balance_descent kernel takes float32 K on the CPU, got {K.dtype} on {K.device}"
            )
        choice = "reference"
    else:
        choice = resolve_backend(backend, K.device)  # the CPU kernel, or the twin with a warning if unbuilt
    if choice == "reference" or not has_extension():
        return _reference_balance_descent(K, w, arm, target, moving, lam, steps, step_size, momentum)
    return torch.ops.cina.balance_descent(
        K.detach().contiguous(),
        w.detach().contiguous(),
        arm.contiguous(),
        target.detach().contiguous(),
        moving.contiguous(),
        lam.detach().contiguous(),
        int(steps),
        float(step_size),
        float(momentum),
    )


def _register_fake() -> None:
    if not has_extension():
        return
    try:

        @torch.library.register_fake("cina::balance_descent")
        def _fake(K, w, arm, target, moving, lam, steps, step_size, momentum):
            return w.new_empty(w.shape), w.new_empty((w.shape[0],))
    except RuntimeError:  # pragma: no cover - already registered (module reloaded)
        pass


_register_fake()
