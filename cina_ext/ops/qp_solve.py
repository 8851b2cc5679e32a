"""Batched box-QP / balancing dual solver: the compiled operator behind the reference's API.

:func:`qp_solve` and :func:`dual_solve` have the signatures of :mod:`cina_ext.reference.qp_solve` (the
pure-PyTorch ground truth) plus ``backend="auto" | "fused" | "reference"`` and a few options of
the compiled solver.  They return the reference's :class:`QPResult` / :class:`BalanceResult`.

The compiled CPU solver (csrc/qp_solve) works on one dataset per thread (or, for a few large
datasets, inside a dataset), keeps the gradient in double, computes kernel columns on the fly from
the features (``linear``, ``rbf``, ``laplace``, ``cina``: memory O(N p) per dataset plus a column cache bounded
by ``cache_mb``) and uses coordinate descent without the equality constraint and SMO with
second-order working-set selection (LIBSVM's WSS2) with it.  Conventions (KKT measure, multiplier
``nu``, iteration counting, feasible start, the "ate"/"att" arm problems) are the reference's.

CUDA tensors run the CUDA twin (csrc/qp_solve/cuda.cu; builds with CUDA kernels), gradient in
double, kernel entries computed on the fly.  Below 4096 (padded) units: one thread block per
dataset, kernel columns cached in device memory, the same algorithm without shrinking
(``shrinking`` is ignored there).  From 4096 units: a working-set decomposition (per round the 256
worst KKT violators, their sub-problem solved in shared memory by the same steps, the gradient of
all units updated by many blocks): same optimum, KKT measure, ``nu`` and flags, other iterates
(``iterations`` counts the sub-problem steps).  ``CINA_QP_CUDA_ALGO=block|ws`` forces one.  Every tensor
argument must be on the data's device (a clear error otherwise; per-dataset parameters given as
floats or CPU tensors, such as ``lam``, ``gamma``, ``tol``, ``max_iter``, are moved).

Differences from the reference worth knowing:

* ``tol`` and ``max_iter`` may also be per-dataset tensors of shape (B,) (compiled backend only).
* The warm start ``x0`` of ``dual_solve`` (the ``alpha`` of a previous solve) is clipped to the
  box and, when it violates the equality, repaired (overlap: the heavier arm scaled down to the
  lighter one's sum; ate/att: each arm normalised to sum 1); the reference requires the overlap
  start to meet the equality already.
* On float32 the gradient is accumulated in double, so the reported KKT violation is the exact one
  for the returned (float32) point and the float32 matrix entries.
* A dataset that did not converge and whose read-out leaves an arm without weight (e.g.
  ``max_iter=0``) gets weights 0 on that arm and ``converged=False`` instead of an error (the
  error remains for a converged dataset, as in the reference).
* The gradient is updated in double and not recomputed from scratch before declaring convergence
  (the reference recomputes it because it accumulates in the input dtype); with shrinking, the
  gradients of the shrunk units are rebuilt exactly and the KKT test runs on all units.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .._core.backend import resolve_solver_backend as solver_backend
from .._core.checks import (
    bound_tensor,
    check_finite_tensor,
    check_float,
    check_mask,
    check_nonnegative_diagonal,
    check_tensor,
    converged_and_finite,
    penalty_grid,
    per_dataset,
)
from .._core.constants import ESTIMANDS, FLOAT_DTYPES, KERNELS
from .._core.constants import LOSS_KINDS as LOSSES
from .._core.extension import has_extension
from ..reference.qp_solve import BalanceResult, QPResult, default_max_iter
from ..reference.qp_solve import dual_solve as _reference_dual_solve
from ..reference.qp_solve import qp_solve as _reference_qp_solve

__all__ = [
    "qp_solve",
    "dual_solve",
    "QPResult",
    "BalanceResult",
    "DEFAULT_CACHE_MB",
    "solver_backend",
    "default_max_iter",
]

_KIND = {"precomputed": 0, "linear": 1, "rbf": 2, "cina": 3, "laplace": 4}
DEFAULT_CACHE_MB = 1024
_INNER_MIN_UNITS = 8192


# ------------------------------------------------------------------------------------------------
# validation helpers
# ------------------------------------------------------------------------------------------------


# The structural checks are the shared ones (one definition, one set of messages); the compiled
# path adds what it needs on top: no silent dtype conversion, no silent device move.
_tensor = check_tensor
_float = check_float
_finite = check_finite_tensor


def _same_dtype(t: Tensor, name: str, dt: torch.dtype) -> None:
    if t.dtype != dt:
        raise TypeError(
            f"{name} must have dtype {dt} (like the matrix / features), got {t.dtype}; no silent conversion"
        )


def _same_device(t, name: str, device) -> None:
    """A tensor argument must already be on the data's device (no silent copies between devices)."""
    if isinstance(t, Tensor) and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the data are on {device}; move it to {device} first")


def _mask(mask, B: int, N: int, device) -> Tensor:
    if mask is None:
        return check_mask(None, B, N, device)
    check_mask(mask, B, N, mask.device if isinstance(mask, Tensor) else device)
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but the data are on {device}")
    return mask


def _bound(v, name: str, B: int, N: int, like: Tensor, allow: float) -> Tensor:
    if isinstance(v, Tensor) and tuple(v.shape) == (B, N) and v.is_floating_point() and v.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {v.dtype}")
    return bound_tensor(v, name, B, N, like, allow)


def _per_dataset(v, name: str, B: int, like: Tensor) -> Tensor:
    """float or (B,) tensor -> (B,) float64 tensor on the CPU, finite and > 0 (the kernels' format)."""
    return per_dataset(
        v.detach() if isinstance(v, Tensor) else v, name, B, dtype=torch.float64, device="cpu"
    ).contiguous()


def _tol_vector(tol, B: int) -> Tensor:
    if isinstance(tol, Tensor):
        return _per_dataset(tol, "tol", B, None)
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    return torch.full((B,), float(tol), dtype=torch.float64)


def _iter_vector(max_iter, B: int) -> Tensor:
    if isinstance(max_iter, Tensor):
        if max_iter.dtype.is_floating_point or max_iter.dtype == torch.bool:
            raise ValueError(f"max_iter must be an int or an integer tensor of shape {(B,)}, got {max_iter.dtype}")
        t = max_iter.detach().to(torch.int64).cpu()
        if t.dim() == 0:
            t = t.expand(B)
        if tuple(t.shape) != (B,):
            raise ValueError(f"max_iter must be an int or a tensor of shape {(B,)}, got {tuple(t.shape)}")
        if bool((t < 0).any()):
            raise ValueError("max_iter must be non-negative")
        return t.contiguous()
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
    return torch.full((B,), max_iter, dtype=torch.int64)


def _scalar_of(t: Tensor, name: str):
    """The common value of a per-dataset tensor (the reference takes one value for the batch)."""
    if t.numel() == 0:
        return None
    v = t[0].item()
    if bool((t != t[0]).any()):
        raise ValueError(f"per-dataset {name} needs backend='fused' (the reference takes one value)")
    return v


def _cache_bytes(cache_mb) -> int:
    mb = DEFAULT_CACHE_MB if cache_mb is None else cache_mb
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not (mb > 0) or not math.isfinite(mb):
        raise ValueError(f"cache_mb must be a positive number, got {cache_mb!r}")
    return max(int(mb * 2**20), 1)


def _check_feasible(lo: Tensor, up: Tensor, c: Tensor, d: Tensor, mask: Tensor) -> None:
    """Refuse {lo <= x <= up, c'x = d} that is empty (same slack as the reference)."""
    dt = c.dtype
    act = mask & (c != 0)
    zero = torch.zeros((), dtype=dt, device=c.device)
    lim_lo = torch.where(act, c * torch.where(c > 0, lo, up), zero).nan_to_num(nan=0.0)
    lim_hi = torch.where(act, c * torch.where(c > 0, up, lo), zero).nan_to_num(nan=0.0)
    f_min, f_max = lim_lo.sum(-1), lim_hi.sum(-1)
    fin_lo = torch.where(torch.isfinite(lo), lo, zero)
    fin_up = torch.where(torch.isfinite(up), up, zero)
    slack = (
        1e3
        * torch.finfo(dt).eps
        * (1.0 + d.abs() + torch.where(act, (c * fin_lo).abs() + (c * fin_up).abs(), zero).sum(-1))
    )
    bad = (d < f_min - slack) | (d > f_max + slack)
    if bool(bad.any()):
        raise ValueError(
            f"the equality c'x = d cannot be met inside the bounds in dataset(s) {torch.nonzero(bad).flatten().tolist()}"
        )


def _check_dense(A: Tensor, mask: Tensor, name: str, what: str = "symmetric") -> None:
    asym, finite = torch.ops.cina.qp_check_dense(A, mask)
    if not bool(finite.all()):
        raise ValueError(f"{name} contains NaN or Inf (dataset(s) {torch.nonzero(~finite).flatten().tolist()[:10]})")
    tolr = math.sqrt(torch.finfo(A.dtype).eps)
    if bool((asym > tolr).any()):
        raise ValueError(
            f"{name} must be {what} (max relative asymmetry {float(asym.max()):.3g} in dataset(s) "
            f"{torch.nonzero(asym > tolr).flatten().tolist()[:10]})"
        )


def _run(
    X,
    kind,
    gamma,
    scale,
    lse,
    src,
    mask,
    sign,
    qscale,
    diag_add,
    p,
    lo,
    up,
    c,
    d,
    x0,
    tol,
    max_iter,
    cache_bytes,
    shrinking,
    inner_min_units,
):
    dev = X.device
    empty = torch.zeros(0, dtype=torch.float64, device=dev)
    # (no autograd here; the per-dataset parameters built on the CPU go to the data's device)
    det = lambda t: None if t is None else t.detach().to(dev).contiguous()  # noqa: E731
    X, gamma, lse, sign, p, lo, up, c, d, x0 = (det(t) for t in (X, gamma, lse, sign, p, lo, up, c, d, x0))
    src, tol, max_iter = det(src), det(tol), det(max_iter)
    qscale, diag_add = det(qscale), det(diag_add)
    x, nu, obj, kkt, it, conv = torch.ops.cina.qp_solve_batch(
        X.contiguous(),
        int(kind),
        empty if gamma is None else gamma,
        float(scale),
        empty.reshape(0, 0) if lse is None else lse,
        src.contiguous(),
        mask.contiguous(),
        None if sign is None else sign.contiguous(),
        qscale.contiguous(),
        diag_add.contiguous(),
        p.contiguous(),
        lo.contiguous(),
        up.contiguous(),
        None if c is None else c.contiguous(),
        None if d is None else d.contiguous(),
        None if x0 is None else x0.contiguous(),
        tol.contiguous(),
        max_iter.contiguous(),
        int(cache_bytes),
        bool(shrinking),
        int(inner_min_units),
    )
    return x, nu, obj, kkt, it, conv


# ------------------------------------------------------------------------------------------------
# generic batched QP
# ------------------------------------------------------------------------------------------------


def qp_solve(
    Q: Tensor,
    p: Tensor,
    lower: Union[float, Tensor] = 0.0,
    upper: Union[float, Tensor] = float("inf"),
    c: Optional[Tensor] = None,
    d: Union[None, float, Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    tol: Union[float, Tensor] = 1e-6,
    max_iter: Union[None, int, Tensor] = None,
    x0: Optional[Tensor] = None,
    backend: str = "auto",
    cache_mb: Optional[float] = None,
    shrinking: bool = True,
    _inner_min_units: int = _INNER_MIN_UNITS,
) -> QPResult:
    """Solve a batch of ``min 1/2 x'Qx - p'x`` s.t. ``lower <= x <= upper`` [and ``c'x = d``].

    Same contract as :func:`cina_ext.reference.qp_solve` (the pure-PyTorch ground truth), plus
    ``backend`` and the options of the compiled solver (docs/ops/qp_solve.md).  All float inputs
    must be in Q's dtype (float32 or float64; no silent conversion) and every tensor argument on
    Q's device (no silent copies; 0-d bounds act as scalars).

    Parameters
    ----------
    Q : Tensor, shape (B, N, N)
        Symmetric positive semi-definite matrices, float32 or float64.
    p : Tensor, shape (B, N)
        Linear terms, Q's dtype and device.
    lower, upper : float or Tensor of shape () or (B, N), default 0.0 and +inf
        Box bounds; ``lower`` may be -inf, ``upper`` +inf (no other infinity, no NaN), and
        ``lower <= upper`` at every real unit.
    c : Tensor, shape (B, N), optional
        Coefficients of the equality ``c'x = d``, Q's dtype; given together with ``d`` or not at
        all.
    d : float or Tensor of shape (B,), optional
        Right-hand side of the equality, Q's dtype.
    mask : Tensor of bool, shape (B, N), optional
        True = real unit; padded units take no part and return x = 0.  None: all real.
    tol : float or Tensor of shape (B,), default 1e-6
        Tolerance on the KKT violation, > 0; per-dataset values that differ need the compiled
        solver (the reference takes one value for the batch).
    max_iter : int or integer Tensor of shape (B,), optional
        Iteration limit, >= 0; None is :func:`cina_ext.reference.default_max_iter` of N
        (``max(100000, 50 N)``).  Per-dataset values that differ need the compiled solver.
    x0 : Tensor, shape (B, N), optional
        Feasible warm start (inside the box and, with the equality, meeting it), Q's dtype.
        Without it a feasible start is built.
    backend : {"auto", "fused", "reference"}, default "auto"
        "auto": compiled if available, else the reference with a ``RuntimeWarning``; "fused":
        compiled or error; "reference": :func:`cina_ext.reference.qp_solve`.
    cache_mb : float, optional
        Bound of the kernel-column cache in MiB (default 1024); only used when Q must be
        gathered (padded datasets).  Must be positive.
    shrinking : bool, default True
        Working-set shrinking of the compiled CPU solver (ignored by the CUDA one-block
        algorithm).

    Returns
    -------
    QPResult
        ``x`` (B, N) the solution (padded units 0), ``nu`` (B,) the multiplier of ``c'x = d``
        (0 without the equality), ``objective`` (B,) ``1/2 x'Qx - p'x``, ``kkt`` (B,) the KKT
        violation at return, ``iterations`` (B,) int64 and ``converged`` (B,) bool.

    Raises
    ------
    TypeError
        ``Q`` or ``p`` not a tensor; ``Q`` not float32/float64; ``p``, ``c``, ``d`` or ``x0`` of
        another dtype than ``Q``; a bound of the wrong type; ``mask`` not bool.
    ValueError
        Wrong number of dimensions or shapes (Q not square, p, c, d, x0, bounds, mask); a tensor
        on another device than ``Q``; ``c`` without ``d`` or ``d`` without ``c``; NaN or Inf in
        ``Q``, ``p``, ``c``, ``d`` or ``x0``; NaN bounds or a wrong infinity; ``lower > upper``;
        ``Q`` not symmetric; an equality that cannot be met inside the bounds; ``x0`` outside the
        bounds or off the equality; ``tol``, ``max_iter`` or ``cache_mb`` out of range; per-dataset
        ``tol`` / ``max_iter`` that differ, on the reference backend.
    RuntimeError
        ``backend="fused"`` when the compiled solver is unavailable for the device.

    Notes
    -----
    The compiled CPU solver works on one dataset per thread (or, for a few large datasets,
    inside a dataset), keeps the gradient in double and uses coordinate descent without the
    equality and SMO with second-order working-set selection (LIBSVM's WSS2) with it.  The
    conventions (KKT measure, multiplier ``nu``, iteration counting, feasible start) are the
    reference's; see the module docstrings of :mod:`cina_ext.ops.qp_solve` and
    :mod:`cina_ext.reference.qp_solve`.

    Examples
    --------
    >>> import torch
    >>> from cina_ext.ops import qp_solve
    >>> Q = torch.eye(3, dtype=torch.float64).expand(2, 3, 3).contiguous()
    >>> p = torch.ones(2, 3, dtype=torch.float64)
    >>> res = qp_solve(Q, p, 0.0, 0.5, backend="reference")
    >>> res.x
    tensor([[0.5000, 0.5000, 0.5000],
            [0.5000, 0.5000, 0.5000]], dtype=torch.float64)
    >>> bool(res.converged.all())
    True
    """
    if torch.compiler.is_compiling():
        return _traced_qp_solve(Q, p, lower, upper, c, d, mask, tol, max_iter, x0, backend, cache_mb, shrinking)
    _tensor(Q, "Q", 3)
    _tensor(p, "p", 2)
    _float(Q, "Q")
    _same_dtype(p, "p", Q.dtype)
    B, N, N2 = Q.shape
    if N != N2:
        raise ValueError(f"Q must be square per dataset, got shape {tuple(Q.shape)}")
    if tuple(p.shape) != (B, N):
        raise ValueError(f"p must have shape {(B, N)}, got {tuple(p.shape)}")
    if p.device != Q.device:
        raise ValueError(f"p is on {p.device} but Q is on {Q.device}")
    for name, t in (("c", c), ("d", d), ("x0", x0), ("lower", lower), ("upper", upper)):
        if not (isinstance(t, Tensor) and t.dim() == 0):  # 0-dim bounds act as scalars
            _same_device(t, name, Q.device)
    if (c is None) != (d is None):
        raise ValueError("c and d must be given together (equality c'x = d) or not at all")
    if max_iter is None:
        max_iter = default_max_iter(N)
    tol_v = _tol_vector(tol, B)
    it_v = _iter_vector(max_iter, B)
    cache_bytes = _cache_bytes(cache_mb)
    mode = solver_backend(backend, Q.device)
    if mode == "reference":
        ref_tol = _scalar_of(tol_v, "tol") if isinstance(tol, Tensor) else tol
        ref_it = _scalar_of(it_v, "max_iter") if isinstance(max_iter, Tensor) else max_iter
        return _reference_qp_solve(
            Q,
            p,
            lower,
            upper,
            c,
            d,
            mask,
            tol=1e-6 if ref_tol is None else ref_tol,
            max_iter=0 if ref_it is None else int(ref_it),
            x0=x0,
        )
    dt, dev = Q.dtype, Q.device
    mask = _mask(mask, B, N, dev)
    _finite(p, "p", mask)
    lo = _bound(lower, "lower", B, N, p, -math.inf)
    up = _bound(upper, "upper", B, N, p, math.inf)
    if bool((mask & (lo > up)).any()):
        raise ValueError("lower must be <= upper at every real unit")
    if c is not None:
        _tensor(c, "c", 2)
        _same_dtype(c, "c", dt)
        if tuple(c.shape) != (B, N):
            raise ValueError(f"c must have shape {(B, N)}, got {tuple(c.shape)}")
        _finite(c, "c", mask)
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            d = torch.full((B,), float(d), dtype=dt, device=dev)
        _tensor(d, "d", 1)
        _same_dtype(d, "d", dt)
        if tuple(d.shape) != (B,):
            raise ValueError(f"d must have shape {(B,)}, got {tuple(d.shape)}")
        _finite(d, "d")
    if N > 0:
        _check_dense(Q.detach().contiguous(), mask.contiguous(), "Q")
        check_nonnegative_diagonal(Q.detach(), mask, "Q")
    zero = torch.zeros((), dtype=dt, device=dev)
    lo = torch.where(mask, lo, zero)
    up = torch.where(mask, up, zero)
    cm = torch.where(mask, c, zero) if c is not None else None
    if x0 is not None:
        x0 = _check_x0(x0, B, N, dt, mask, lo, up, cm, d)
    elif cm is not None:
        _check_feasible(lo, up, cm, d, mask)
    ones = torch.ones(B, dtype=torch.float64)
    x, nu, obj, kkt, it, conv = _run(
        Q,
        0,
        None,
        1.0,
        None,
        torch.arange(B, dtype=torch.int64),
        mask,
        None,
        ones,
        torch.zeros(B, dtype=torch.float64),
        torch.where(mask, p, zero),
        lo,
        up,
        cm,
        d,
        x0,
        tol_v,
        it_v,
        cache_bytes,
        shrinking,
        _inner_min_units,
    )
    conv = converged_and_finite(x, obj, conv)
    return QPResult(x=x, nu=nu, objective=obj, kkt=kkt, iterations=it, converged=conv)


def _check_x0(x0, B, N, dt, mask, lo, up, cm, d) -> Tensor:
    _tensor(x0, "x0", 2)
    if x0.dtype != dt or tuple(x0.shape) != (B, N):
        raise ValueError(f"x0 must be a {dt} tensor of shape {(B, N)}")
    _finite(x0, "x0", mask)
    zero = torch.zeros((), dtype=dt, device=x0.device)
    x = torch.where(mask, x0, zero)
    span = (up - lo).abs()
    span = torch.where(torch.isfinite(span), span, torch.ones_like(span))
    eps_b = 1e3 * torch.finfo(dt).eps * (1 + x.abs() + span)
    if bool((mask & ((x < lo - eps_b) | (x > up + eps_b))).any()):
        raise ValueError("x0 is outside the bounds")
    x = torch.minimum(torch.maximum(x, lo), up)
    if cm is not None:
        res = (cm * x).sum(-1) - d
        lim = math.sqrt(torch.finfo(dt).eps) * (1 + d.abs() + (cm * x).abs().sum(-1))
        if bool((res.abs() > lim).any()):
            raise ValueError("x0 does not satisfy the equality c'x = d")
    return x


# ------------------------------------------------------------------------------------------------
# balancing problems
# ------------------------------------------------------------------------------------------------


def _rbf_gamma(X: Tensor, mask: Tensor) -> Tensor:
    """The reference's default: 1 / (p * mean per-feature population variance over valid units)."""
    B, _, pdim = X.shape
    Xd = X.detach().to(torch.float64)
    m = mask.unsqueeze(-1)
    n = mask.sum(-1).clamp_min(1).to(torch.float64)
    Xm = torch.where(m, Xd, torch.zeros((), dtype=torch.float64))
    mean = Xm.sum(1) / n.unsqueeze(-1)
    Xc = torch.where(m, Xd - mean.unsqueeze(1), torch.zeros((), dtype=torch.float64))
    var = (Xc * Xc).sum(1) / n.unsqueeze(-1)
    v = var.mean(-1) if pdim > 0 else torch.zeros(B, dtype=torch.float64)
    g = torch.where(v > 0, 1.0 / (max(pdim, 1) * v.clamp_min(torch.finfo(X.dtype).tiny)), torch.ones_like(v))
    return g.cpu().contiguous()


def _readout(alpha: Tensor, treated: Tensor, control: Tensor, conv: Tensor) -> Tensor:
    """Per-arm normalisation of alpha (as reference.readout_weights).  An arm with no weight is an
    error for a converged dataset; for one that did not converge (flagged) its weights are 0."""
    zero = torch.zeros((), dtype=alpha.dtype, device=alpha.device)
    a = alpha.clamp_min(0)
    s1 = torch.where(treated, a, zero).sum(-1, keepdim=True)
    s0 = torch.where(control, a, zero).sum(-1, keepdim=True)
    empty = ((s1 <= 0) | (s0 <= 0)).squeeze(-1)
    if bool((empty & conv).any()):
        bad = torch.nonzero(empty & conv).flatten().tolist()
        raise ValueError(
            f"read-out weights of a treatment arm sum to zero in dataset(s) {bad}: "
            "the balancing problem gave no weight to one arm (lam too large or an arm empty)"
        )
    w = torch.where(
        treated,
        a / s1.clamp_min(torch.finfo(a.dtype).tiny),
        torch.where(control, a / s0.clamp_min(torch.finfo(a.dtype).tiny), zero),
    )
    return torch.where(empty.unsqueeze(-1), zero, w)


def dual_solve(
    X: Tensor,
    W: Tensor,
    lam: Union[float, Tensor],
    *,
    kernel: str = "rbf",
    gamma: Union[None, float, Tensor] = None,
    scale: Optional[float] = None,
    estimand: str = "overlap",
    intercept: bool = True,
    loss: str = "hinge",
    mask: Optional[Tensor] = None,
    tol: Union[float, Tensor] = 1e-6,
    max_iter: Union[None, int, Tensor] = None,
    x0: Optional[Tensor] = None,
    backend: str = "auto",
    cache_mb: Optional[float] = None,
    shrinking: bool = True,
    _inner_min_units: int = _INNER_MIN_UNITS,
) -> BalanceResult:
    """Exact balancing weights for a batch of datasets (docs/method.md §2, §6; docs/ops/qp_solve.md).

    Same contract as :func:`cina_ext.reference.dual_solve`, plus ``backend`` and the options of
    the compiled solver.  ``estimand`` "overlap" is the SVM dual, ``Q = (W W') * K / lam``,
    ``0 <= alpha <= 1`` (or ``alpha >= 0`` for the squared hinge), ``W'alpha = 0`` with
    ``intercept``; "ate" balances each arm against the full-sample kernel mean on the simplex;
    "att" the controls against the treated mean.

    Parameters
    ----------
    X : Tensor, shape (B, N, p)
        Features, float32 or float64: attention keys for ``kernel="cina"``, the (B, N, N) Gram
        matrix for ``kernel="precomputed"``.
    W : Tensor, shape (B, N)
        Treatment signs, -1 (control) or +1 (treated) at every real unit, as numbers (not bool);
        on X's device.
    lam : float or Tensor of shape (), (B,) or (B, L)
        Balancing penalty, finite and > 0.  (B, L): a grid of ``L`` penalties per dataset, solved
        as ``B * L`` problems, row ``b * L + l`` the dataset ``b`` at ``lam[b, l]``: every result
        (and ``x0``) has ``B * L`` rows, the same as for ``X``, ``W``, ``mask`` and a per-dataset
        ``gamma`` repeated ``L`` times each (``repeat_interleave``), without the copies, and with
        each dataset's kernel mean (ate/att) computed once for its grid instead of once per
        problem.  ``tol`` and ``max_iter`` stay per dataset.
    kernel : {"rbf", "linear", "laplace", "cina", "precomputed"}, default "rbf"
        Kernel of the balancing problem (see :func:`cina_ext.reference.gram`).
    gamma : float or Tensor of shape (B,), optional
        RBF / Laplace bandwidth, > 0; default per dataset ``1 / (p * mean per-feature variance)``
        for "rbf" and its square root for "laplace".
    scale : float, optional
        Score scale of the cina kernel, finite; default ``1 / sqrt(p)``.
    estimand : {"overlap", "ate", "att"}, default "overlap"
        Which balancing problem is solved.
    intercept : bool, default True
        "overlap" only: impose ``W'alpha = 0`` (the SVM intercept).
    loss : {"hinge", "squared_hinge"}, default "hinge"
        "overlap" only: the SVM loss.
    mask : Tensor of bool, shape (B, N), optional
        True = real unit; on X's device.  None: all real.
    tol : float or Tensor of shape (B,), default 1e-6
        KKT tolerance, > 0; per-dataset values that differ need the compiled solver.
    max_iter : int or integer Tensor of shape (B,), optional
        Iteration limit, >= 0; None is :func:`cina_ext.reference.default_max_iter` of N.
        Per-dataset values that differ need the compiled solver.
    x0 : Tensor, shape (B, N), optional
        Warm start (e.g. the ``alpha`` of a previous solve), on X's device; clipped to the box and
        repaired if infeasible (see Notes).
    backend : {"auto", "fused", "reference"}, default "auto"
        "auto": compiled if available, else the reference with a ``RuntimeWarning``; "fused":
        compiled or error; "reference": :func:`cina_ext.reference.dual_solve`.
    cache_mb : float, optional
        Column cache per dataset being solved, in MiB (default 1024), > 0.
    shrinking : bool, default True
        Working-set shrinking of the compiled CPU solver.

    Returns
    -------
    BalanceResult
        ``weights`` (B, N) non-negative, summing to one within each arm (padded units 0),
        ``alpha`` (B, N) the raw QP solution, ``intercept`` (B,) the SVM intercept ``b`` for
        "overlap" (0 for ate/att), ``objective``, ``kkt``, ``iterations``, ``converged`` (B,) and
        ``estimand``.

    Raises
    ------
    ValueError
        Unknown ``estimand``, ``loss`` or ``kernel``; wrong shapes (X not 3-D, W, mask, x0, a
        precomputed Gram that is not (B, N, N)); a tensor on another device than X; W not -1/+1 at
        a real unit; an empty treatment arm among the real units; ``lam``, ``gamma``, ``tol``,
        ``max_iter``, ``cache_mb`` or ``scale`` out of range; NaN or Inf in X or x0; a
        precomputed Gram that is not symmetric; read-out weights of an arm summing to zero in a
        converged dataset.
    TypeError
        X, W, mask or x0 not a tensor; X not float32/float64; W bool or complex; mask not bool.
    RuntimeError
        ``backend="fused"`` when the compiled solver is unavailable for the device.

    Notes
    -----
    The compiled path never forms the (B, N, N) Gram for feature kernels: columns are computed
    on the fly and cached up to ``cache_mb`` per dataset being solved.  Differences from the
    reference (see the module docstring of :mod:`cina_ext.ops.qp_solve`): ``tol`` and
    ``max_iter`` may be per-dataset tensors; the warm start ``x0`` is clipped to the box and,
    when it violates the equality, repaired (overlap: the heavier arm scaled down to the
    lighter one's sum; ate/att: each arm normalised to sum 1), whereas the reference requires
    the overlap start to meet the equality already; on float32 the gradient is accumulated in
    double; a dataset that did not converge and whose read-out leaves an arm without weight
    (e.g. ``max_iter=0``) gets weights 0 on that arm and ``converged=False`` instead of an error.

    Examples
    --------
    >>> import torch
    >>> from cina_ext.ops import dual_solve
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(1, 20, 3, generator=g, dtype=torch.float64)
    >>> W = torch.tensor([[1.0, -1.0] * 10], dtype=torch.float64)
    >>> res = dual_solve(X, W, 0.1, estimand="ate", backend="reference")
    >>> res.weights.shape
    torch.Size([1, 20])
    >>> [round(float(res.weights[0][W[0] > 0].sum()), 6), round(float(res.weights[0][W[0] < 0].sum()), 6)]
    [1.0, 1.0]
    """
    if torch.compiler.is_compiling():
        # under torch.compile the whole front end (data-dependent checks, host-side set-up) is one
        # opaque custom op, so a compiled graph holds the solve without breaking (fullgraph=True)
        return _traced_dual_solve(
            X,
            W,
            lam,
            kernel,
            gamma,
            scale,
            estimand,
            intercept,
            loss,
            mask,
            tol,
            max_iter,
            x0,
            backend,
            cache_mb,
            shrinking,
        )
    if estimand not in ESTIMANDS:
        raise ValueError(f"estimand must be one of {ESTIMANDS}, got {estimand!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    _tensor(X, "X", 3)
    _float(X, "X")
    B, N = X.shape[0], X.shape[1]
    if max_iter is None:
        max_iter = default_max_iter(N)
    tol_v = _tol_vector(tol, B)
    it_v = _iter_vector(max_iter, B)
    cache_bytes = _cache_bytes(cache_mb)
    L = penalty_grid(lam, B)
    mode = solver_backend(backend, X.device)
    if mode == "reference":
        return _reference_dual_solve(
            X,
            W,
            lam,
            kernel=kernel,
            gamma=gamma,
            scale=scale,
            estimand=estimand,
            intercept=intercept,
            loss=loss,
            mask=mask,
            tol=_scalar_of(tol_v, "tol") if isinstance(tol, Tensor) else tol,
            max_iter=_scalar_of(it_v, "max_iter") if isinstance(max_iter, Tensor) else max_iter,
            x0=x0,
        )
    dt, dev = X.dtype, X.device
    _tensor(W, "W", 2)
    if tuple(W.shape) != (B, N):
        raise ValueError(f"W must have shape {(B, N)}, got {tuple(W.shape)}")
    if W.dtype == torch.bool or W.is_complex():
        raise TypeError(f"W must hold the signs -1/+1 as numbers, got {W.dtype}")
    _same_device(W, "W", dev)
    _same_device(x0, "x0", dev)
    mask = _mask(mask, B, N, dev)
    Wf = W.to(dtype=dt, device=dev)
    if bool((mask & ~((Wf == 1) | (Wf == -1))).any()):
        raise ValueError("W must be -1 (control) or +1 (treated) at every real unit")
    zero = torch.zeros((), dtype=dt, device=dev)
    Wf = torch.where(mask, Wf, zero)
    treated = mask & (Wf > 0)
    control = mask & (Wf < 0)
    n1, n0 = treated.sum(-1), control.sum(-1)
    if bool(((n1 == 0) | (n0 == 0)).any()):
        bad = torch.nonzero((n1 == 0) | (n0 == 0)).flatten().tolist()
        raise ValueError(f"dataset(s) {bad} have an empty treatment arm among the real units")
    lam_v = _per_dataset(lam.reshape(-1), "lam", B * L, X) if L else _per_dataset(lam, "lam", B, X)
    Xc = X.contiguous()
    kind = _KIND[kernel]
    g_v = None
    sc = 1.0
    lse = None
    if kernel == "precomputed":
        if X.shape[2] != N:
            raise ValueError(f'kernel="precomputed" needs X of shape (B, N, N), got {tuple(X.shape)}')
        if N > 0:
            _check_dense(Xc.detach(), mask.contiguous(), "X (the precomputed Gram matrix)")
    else:
        _finite(X, "X", mask.unsqueeze(-1).expand_as(X))
        if kernel == "rbf":
            g_v = _rbf_gamma(X, mask) if gamma is None else _per_dataset(gamma, "gamma", B, X)
        elif kernel == "laplace":
            g_v = _rbf_gamma(X, mask).sqrt() if gamma is None else _per_dataset(gamma, "gamma", B, X)
        elif kernel == "cina":
            Dk = X.shape[2]
            sc = (1.0 / math.sqrt(Dk) if Dk > 0 else 1.0) if scale is None else float(scale)
            if not math.isfinite(sc):
                raise ValueError(f"scale must be finite, got {scale!r}")
            lse = torch.ops.cina.qp_kernel_lse(Xc.detach(), mask.contiguous(), sc)
    kbar = None
    if estimand != "overlap":  # the kernel mean each arm is balanced against, once per dataset
        empty = torch.zeros(0, dtype=torch.float64, device=dev)
        g_arg = g_v.to(dev) if g_v is not None else empty
        lse_arg = lse if lse is not None else empty.reshape(0, 0)
        if estimand == "ate":
            mc = mask.contiguous()
            rows = torch.ops.cina.qp_kernel_rowsum(Xc.detach(), kind, g_arg, sc, lse_arg, mc, mc)
            kbar = (rows / mask.sum(-1, keepdim=True).to(torch.float64)).to(dt)
        else:  # att: controls against the treated mean
            rows = torch.ops.cina.qp_kernel_rowsum(
                Xc.detach(), kind, g_arg, sc, lse_arg, control.contiguous(), treated.contiguous()
            )
            kbar = (rows / n1.unsqueeze(-1).to(torch.float64)).to(dt)
    ar = torch.arange(B, dtype=torch.int64)
    if L:  # from here on one row per problem; the kernel reads its dataset's X through ``ar``
        rep = lambda t: None if t is None else t.repeat_interleave(L, 0)  # noqa: E731
        Wf, mask, treated, control, n1, kbar = (rep(t) for t in (Wf, mask, treated, control, n1, kbar))
        ar, tol_v, it_v = rep(ar), rep(tol_v), rep(it_v)
        B = B * L
    if x0 is not None:
        _tensor(x0, "x0", 2)
        if tuple(x0.shape) != (B, N):
            raise ValueError(f"x0 must have shape {(B, N)}, got {tuple(x0.shape)}")
        _finite(x0.to(dt), "x0", mask)
        x0 = torch.where(mask, x0.to(dtype=dt, device=dev), zero)
    mask_c = mask.contiguous()

    if estimand == "overlap":
        upper = 1.0 if loss == "hinge" else math.inf
        lo = torch.zeros(B, N, dtype=dt, device=dev)
        up = torch.where(mask, torch.full_like(lo, upper), zero)
        p = torch.where(mask, torch.ones_like(lo), zero)
        c = Wf if intercept else None
        d = torch.zeros(B, dtype=dt, device=dev) if intercept else None
        xs = None
        if x0 is not None:
            xs = torch.minimum(torch.maximum(x0, lo), up)
            if intercept:  # repair W'x = 0 (when off by more than rounding): scale the heavier arm down
                s1 = torch.where(treated, xs, zero).sum(-1, keepdim=True)
                s0 = torch.where(control, xs, zero).sum(-1, keepdim=True)
                off = (s1 - s0).abs() > math.sqrt(torch.finfo(dt).eps) * (1 + s1 + s0)
                target = torch.minimum(s1, s0)
                f1 = torch.where(off & (s1 > 0), target / s1.clamp_min(torch.finfo(dt).tiny), torch.ones_like(s1))
                f0 = torch.where(off & (s0 > 0), target / s0.clamp_min(torch.finfo(dt).tiny), torch.ones_like(s0))
                xs = torch.where(treated, xs * f1, torch.where(control, xs * f0, zero))
                s1 = torch.where(treated, xs, zero).sum(-1)
                s0 = torch.where(control, xs, zero).sum(-1)
                bad = (s1 - s0).abs() > math.sqrt(torch.finfo(dt).eps) * (1 + s1 + s0)
                xs = torch.where(bad.unsqueeze(-1), zero, xs)  # still infeasible: cold start (x = 0)
        x, nu, obj, kkt, it, conv = _run(
            Xc,
            kind,
            g_v,
            sc,
            lse,
            ar,
            mask_c,
            Wf,
            1.0 / lam_v,
            torch.full((B,), 1.0 if loss == "squared_hinge" else 0.0, dtype=torch.float64),
            p,
            lo,
            up,
            c,
            d,
            xs,
            tol_v,
            it_v,
            cache_bytes,
            shrinking,
            _inner_min_units,
        )
        weights = _readout(x, treated, control, conv)
        b = nu if intercept else torch.zeros(B, dtype=dt, device=dev)
        return BalanceResult(
            weights=weights,
            alpha=x,
            intercept=b,
            objective=obj,
            kkt=kkt,
            iterations=it,
            converged=conv,
            estimand=estimand,
        )

    if estimand == "ate":
        pm = torch.cat([treated, control], 0)
        src = torch.cat([ar, ar])
        pvec = torch.where(pm, 2.0 * torch.cat([kbar, kbar], 0), zero)
        lam2 = torch.cat([lam_v, lam_v])
    else:  # att
        pm = control
        src = ar
        pvec = torch.where(pm, 2.0 * kbar, zero)
        lam2 = lam_v
    P = pm.shape[0]
    lo = torch.zeros(P, N, dtype=dt, device=dev)
    up = torch.where(pm, torch.full_like(lo, math.inf), zero)
    cvec = torch.where(pm, torch.ones_like(lo), zero)
    dvec = torch.ones(P, dtype=dt, device=dev)
    xs = None
    if x0 is not None:  # each arm normalised to sum 1 (uniform where it has no mass)
        xa = torch.cat([x0, x0], 0) if estimand == "ate" else x0
        xa = torch.where(pm, xa.clamp_min(0), zero)
        s = xa.sum(-1, keepdim=True)
        uni = torch.where(pm, 1.0 / pm.sum(-1, keepdim=True).clamp_min(1).to(dt), zero)
        off = (s - 1).abs() > math.sqrt(torch.finfo(dt).eps) * (1 + s)
        xs = torch.where(s > 0, torch.where(off, xa / s.clamp_min(torch.finfo(dt).tiny), xa), uni)
    tol2 = torch.cat([tol_v, tol_v]) if estimand == "ate" else tol_v
    it2 = torch.cat([it_v, it_v]) if estimand == "ate" else it_v
    x, nu, obj, kkt, it, conv = _run(
        Xc,
        kind,
        g_v,
        sc,
        lse,
        src,
        pm.contiguous(),
        None,
        torch.full((P,), 2.0, dtype=torch.float64),
        2.0 * lam2,
        pvec,
        lo,
        up,
        cvec,
        dvec,
        xs,
        tol2,
        it2,
        cache_bytes,
        shrinking,
        _inner_min_units,
    )
    if estimand == "ate":
        x1, x0_ = x[:B], x[B:]
        alpha = torch.where(treated, x1, torch.where(control, x0_, zero))
        s1 = torch.where(treated, x1, zero).sum(-1, keepdim=True)
        s0 = torch.where(control, x0_, zero).sum(-1, keepdim=True)
        weights = torch.where(treated, x1 / s1, torch.where(control, x0_ / s0, zero))
        return BalanceResult(
            weights=weights,
            alpha=alpha,
            intercept=torch.zeros(B, dtype=dt, device=dev),
            objective=obj[:B] + obj[B:],
            kkt=torch.maximum(kkt[:B], kkt[B:]),
            iterations=torch.maximum(it[:B], it[B:]),
            converged=conv[:B] & conv[B:],
            estimand=estimand,
        )
    tw = (1.0 / n1.to(dt)).unsqueeze(-1).expand(B, N)
    alpha = torch.where(treated, tw, torch.where(control, x, zero))
    s0 = torch.where(control, x, zero).sum(-1, keepdim=True)
    weights = torch.where(treated, tw, torch.where(control, x / s0, zero))
    return BalanceResult(
        weights=weights,
        alpha=alpha,
        intercept=torch.zeros(B, dtype=dt, device=dev),
        objective=obj,
        kkt=kkt,
        iterations=it,
        converged=conv,
        estimand=estimand,
    )


# ------------------------------------------------------------------------------------------------
# fake (meta) implementations: shapes only, for torch.compile / opcheck
# ------------------------------------------------------------------------------------------------


def _register_fakes() -> None:
    if not has_extension():
        return
    try:

        @torch.library.register_fake("cina::qp_solve_batch")
        def _solve_fake(
            X,
            kind,
            gamma,
            scale,
            lse,
            src,
            mask,
            sign,
            qscale,
            diag_add,
            p,
            lo,
            up,
            c,
            d,
            x0,
            tol,
            max_iter,
            cache_bytes,
            shrinking,
            inner_min_units,
        ):
            P, N = mask.shape
            return (
                X.new_empty((P, N)),
                X.new_empty((P,)),
                X.new_empty((P,)),
                X.new_empty((P,)),
                X.new_empty((P,), dtype=torch.int64),
                X.new_empty((P,), dtype=torch.bool),
            )

        @torch.library.register_fake("cina::qp_kernel_lse")
        def _lse_fake(X, mask, scale):
            return X.new_empty(mask.shape, dtype=torch.float64)

        @torch.library.register_fake("cina::qp_kernel_rowsum")
        def _rowsum_fake(X, kind, gamma, scale, lse, rowmask, colmask):
            return X.new_empty(rowmask.shape, dtype=torch.float64)

        @torch.library.register_fake("cina::qp_check_dense")
        def _check_fake(A, mask):
            return A.new_empty((A.shape[0],), dtype=torch.float64), A.new_empty((A.shape[0],), dtype=torch.bool)
    except RuntimeError:  # pragma: no cover - already registered (module reloaded)
        pass


_register_fakes()


# ------------------------------------------------------------------------------------------------
# torch.compile: the front ends as opaque custom ops
# ------------------------------------------------------------------------------------------------


def _as_batch_tensor(v, B: int, like: Tensor) -> Optional[Tensor]:
    if v is None:
        return None
    if isinstance(v, Tensor):
        return v.to(dtype=torch.float64, device=like.device).reshape(-1).expand(B) if v.dim() == 0 else v
    return torch.full((B,), float(v), dtype=torch.float64, device=like.device)


def _scalar_arg(v, name: str):
    if isinstance(v, Tensor):
        raise ValueError(f"per-dataset {name} tensors are not supported inside torch.compile; pass a number")
    return v


@torch.library.custom_op("cina::dual_solve_front", mutates_args=())
def _dual_solve_front(
    X: Tensor,
    W: Tensor,
    lam: Tensor,
    kernel: str,
    gamma: Optional[Tensor],
    scale: Optional[float],
    estimand: str,
    intercept: bool,
    loss: str,
    mask: Optional[Tensor],
    tol: float,
    max_iter: Optional[int],
    x0: Optional[Tensor],
    backend: str,
    cache_mb: Optional[float],
    shrinking: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    r = dual_solve(
        X,
        W,
        lam,
        kernel=kernel,
        gamma=gamma,
        scale=scale,
        estimand=estimand,
        intercept=intercept,
        loss=loss,
        mask=mask,
        tol=tol,
        max_iter=max_iter,
        x0=x0,
        backend=backend,
        cache_mb=cache_mb,
        shrinking=shrinking,
    )
    return tuple(t.clone() for t in (r.weights, r.alpha, r.intercept, r.objective, r.kkt, r.iterations, r.converged))


@_dual_solve_front.register_fake
def _(
    X, W, lam, kernel, gamma, scale, estimand, intercept, loss, mask, tol, max_iter, x0, backend, cache_mb, shrinking
):
    B, N = W.shape
    B = lam.numel() if lam.dim() == 2 else B  # a (B, L) grid: B * L problems
    return (
        X.new_empty((B, N)),
        X.new_empty((B, N)),
        X.new_empty((B,)),
        X.new_empty((B,)),
        X.new_empty((B,)),
        X.new_empty((B,), dtype=torch.int64),
        X.new_empty((B,), dtype=torch.bool),
    )


def _traced_dual_solve(
    X, W, lam, kernel, gamma, scale, estimand, intercept, loss, mask, tol, max_iter, x0, backend, cache_mb, shrinking
) -> BalanceResult:
    B = W.shape[0]
    out = torch.ops.cina.dual_solve_front(
        X,
        W,
        _as_batch_tensor(lam, B, X),
        kernel,
        _as_batch_tensor(gamma, B, X),
        scale,
        estimand,
        intercept,
        loss,
        mask,
        float(_scalar_arg(tol, "tol")),
        _scalar_arg(max_iter, "max_iter"),
        x0,
        backend,
        None if cache_mb is None else float(cache_mb),
        bool(shrinking),
    )
    return BalanceResult(*out, estimand=estimand)


@torch.library.custom_op("cina::qp_solve_front", mutates_args=())
def _qp_solve_front(
    Q: Tensor,
    p: Tensor,
    lower: Tensor,
    upper: Tensor,
    c: Optional[Tensor],
    d: Optional[Tensor],
    mask: Optional[Tensor],
    tol: float,
    max_iter: Optional[int],
    x0: Optional[Tensor],
    backend: str,
    cache_mb: Optional[float],
    shrinking: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    r = qp_solve(
        Q,
        p,
        lower,
        upper,
        c,
        d,
        mask,
        tol=tol,
        max_iter=max_iter,
        x0=x0,
        backend=backend,
        cache_mb=cache_mb,
        shrinking=shrinking,
    )
    return tuple(t.clone() for t in (r.x, r.nu, r.objective, r.kkt, r.iterations, r.converged))


@_qp_solve_front.register_fake
def _(Q, p, lower, upper, c, d, mask, tol, max_iter, x0, backend, cache_mb, shrinking):
    B, N = p.shape
    return (
        p.new_empty((B, N)),
        p.new_empty((B,)),
        p.new_empty((B,)),
        p.new_empty((B,)),
        p.new_empty((B,), dtype=torch.int64),
        p.new_empty((B,), dtype=torch.bool),
    )


def _traced_qp_solve(Q, p, lower, upper, c, d, mask, tol, max_iter, x0, backend, cache_mb, shrinking) -> QPResult:
    B, N = p.shape

    def bound(v):
        return v if isinstance(v, Tensor) else torch.full((B, N), float(v), dtype=p.dtype, device=p.device)

    dd = d if d is None or isinstance(d, Tensor) else torch.full((B,), float(d), dtype=p.dtype, device=p.device)
    out = torch.ops.cina.qp_solve_front(
        Q,
        p,
        bound(lower),
        bound(upper),
        c,
        dd,
        mask,
        float(_scalar_arg(tol, "tol")),
        _scalar_arg(max_iter, "max_iter"),
        x0,
        backend,
        None if cache_mb is None else float(cache_mb),
        bool(shrinking),
    )
    return QPResult(*out)
