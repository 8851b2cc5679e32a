"""Pure-PyTorch twins of the packed operators, and the packed layout itself (offsets, results).

The layout: ``B`` datasets stored back to back along the first dimension, dataset ``b`` in rows
``offsets[b] : offsets[b + 1]`` (``offsets`` int64 of length ``B + 1``, from 0 to ``total``);
per-dataset quantities have shape ``(B,)``.  See docs/ops/packed.md.  The twins here simply loop
over the datasets and call the padded twins of :mod:`cina_ext.reference` on each one: slow, and
obviously right, which is what the compiled packed path of :mod:`cina_ext.ops.packed` (length
buckets, one padded call per bucket) is compared to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .._core.checks import per_dataset
from .attention_hinge import attention_hinge
from .qp_solve import dual_solve, qp_solve

__all__ = [
    "offsets_from_lengths",
    "lengths_from_offsets",
    "check_offsets",
    "PackedBalanceResult",
    "PackedQPResult",
    "attention_hinge_packed",
    "dual_solve_packed",
    "qp_solve_packed",
]


def offsets_from_lengths(lengths: Union[Sequence[int], Tensor], *, device=None) -> Tensor:
    """Offsets ``[0, n_0, n_0 + n_1, ...]`` of the packed layout from the dataset lengths.

    Parameters
    ----------
    lengths : sequence of int or Tensor of shape (B,)
        Non-negative dataset lengths; a tensor must hold integers.
    device : torch.device or str, optional
        Device of the result; default the device of ``lengths`` (a tensor) or the CPU.

    Returns
    -------
    Tensor, shape (B + 1,), int64
        The offsets, starting at 0 and ending at the total number of units.

    Raises
    ------
    ValueError
        A tensor ``lengths`` that is not 1-D; a negative length.
    TypeError
        A tensor of floating, complex or bool dtype; a sequence entry that is not an int (bool
        included).

    Examples
    --------
    >>> from cina_ext.ops import offsets_from_lengths
    >>> offsets_from_lengths([3, 0, 2])
    tensor([0, 3, 3, 5])
    """
    if isinstance(lengths, Tensor):
        if lengths.dim() != 1:
            raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got {lengths.dtype}")
        n = lengths.to(dtype=torch.int64, device=device if device is not None else lengths.device)
    else:
        vals = list(lengths)
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"lengths must be integers, got {v!r} ({type(v).__name__})")
        n = torch.tensor(vals, dtype=torch.int64, device=device)
    if n.numel() and bool((n < 0).any()):
        raise ValueError(f"lengths must be non-negative, got {n.tolist()[:20]}")
    return torch.cat([n.new_zeros(1), torch.cumsum(n, 0)])


def _check_offsets_structure(offsets, device, name: str) -> None:
    if not isinstance(offsets, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor (int64, shape (B + 1,)), got {type(offsets).__name__}; "
            "build it with offsets_from_lengths"
        )
    if offsets.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype torch.int64, got {offsets.dtype}")
    if offsets.dim() != 1:
        raise ValueError(f"{name} must be 1-D of shape (B + 1,), got shape {tuple(offsets.shape)}")
    if offsets.numel() == 0:
        raise ValueError(f"{name} must have at least one entry (0); got an empty tensor")
    if device is not None and offsets.device != torch.device(device):
        raise ValueError(f"{name} is on {offsets.device} but the data are on {device}")


def check_offsets(offsets, total: int, device: Optional[torch.device] = None, *, name: str = "offsets") -> int:
    """Validate ``offsets`` for ``total`` packed units on ``device``; return the number of datasets B.

    ``offsets`` must be a 1-D int64 tensor on ``device``, start at 0, be non-decreasing and end at
    ``total``: ``TypeError`` for a wrong type / dtype, ``ValueError`` otherwise.
    """
    _check_offsets_structure(offsets, device, name)
    first = int(offsets[0])
    if first != 0:
        raise ValueError(f"{name} must start at 0, got {first}")
    if offsets.numel() > 1:
        steps = offsets[1:] - offsets[:-1]
        if bool((steps < 0).any()):
            bad = int(torch.nonzero(steps < 0)[0])
            raise ValueError(
                f"{name} must be non-decreasing; {name}[{bad + 1}] = {int(offsets[bad + 1])} < "
                f"{name}[{bad}] = {int(offsets[bad])}"
            )
    last = int(offsets[-1])
    if last != total:
        raise ValueError(f"{name}[-1] = {last} must equal the number of packed units ({total})")
    return offsets.numel() - 1


def lengths_from_offsets(offsets: Tensor) -> Tensor:
    """Per-dataset lengths ``offsets[1:] - offsets[:-1]`` (no validation)."""
    return offsets[1:] - offsets[:-1]


@dataclass
class PackedBalanceResult:
    """:class:`cina_ext.reference.BalanceResult` in the packed layout."""

    weights: Tensor  # (total,) non-negative, summing to 1 within each arm of each dataset
    alpha: Tensor  # (total,) raw QP solution
    intercept: Tensor  # (B,)
    objective: Tensor  # (B,)
    kkt: Tensor  # (B,)
    iterations: Tensor  # (B,)
    converged: Tensor  # (B,)
    estimand: str
    offsets: Tensor  # (B + 1,)


@dataclass
class PackedQPResult:
    """:class:`cina_ext.reference.QPResult` in the packed layout."""

    x: Tensor  # (total,)
    nu: Tensor  # (B,)
    objective: Tensor  # (B,)
    kkt: Tensor  # (B,)
    iterations: Tensor  # (B,)
    converged: Tensor  # (B,)
    offsets: Tensor  # (B + 1,)


def _item(v, i: int):
    """Entry ``i`` of a per-dataset argument (a number, a 0-d or a (B,) tensor) as a Python number."""
    if isinstance(v, Tensor):
        return (v if v.dim() == 0 else v[i]).item()
    return v


def attention_hinge_packed(
    K: Tensor,
    V: Tensor,
    W: Tensor,
    b: Tensor,
    lam: Union[float, Tensor],
    offsets: Tensor,
    *,
    scale: Optional[float] = None,
    loss: str = "hinge",
) -> tuple:
    """Packed twin of :func:`cina_ext.reference.attention_hinge` (one padded call per dataset).

    Parameters
    ----------
    K : Tensor, shape (total, D)
        Packed keys.
    V, W : Tensor, shape (total,)
        Packed values and signs.
    b : Tensor, shape (B,)
        Intercepts.
    lam : float or Tensor of shape () or (B,)
        Penalty.
    offsets : Tensor, shape (B + 1,), int64
        The packed layout (see :func:`check_offsets`).
    scale : float, optional
        Default ``1 / sqrt(D)``.
    loss : {"hinge", "squared_hinge"}, default "hinge"
        The loss of eq. L.

    Returns
    -------
    loss : Tensor, shape (B,)
        eq. L per dataset (0 for an empty dataset).
    out, lse : Tensor, shape (total,)
        Packed attention output and row log-normalisers.

    Raises
    ------
    TypeError
        ``offsets`` not an int64 tensor.
    ValueError
        Invalid ``offsets``; ``loss`` not one of the losses.
    """
    total, D = K.shape
    B = check_offsets(offsets, total, K.device)
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    lam_v = per_dataset(lam, "lam", B, dtype=K.dtype, device=K.device, check=False)
    losses, outs, lses = [], [], []
    for i in range(B):
        s, e = int(offsets[i]), int(offsets[i + 1])
        if e == s:  # an empty dataset: no rows, loss 0
            losses.append(b[i] * 0.0)
            continue
        l_i, o_i, z_i = attention_hinge(
            K[s:e].unsqueeze(0),
            V[s:e].unsqueeze(0),
            W[s:e].unsqueeze(0),
            b[i : i + 1],
            lam_v[i : i + 1],
            scale=scale,
            loss=loss,
        )
        losses.append(l_i[0])
        outs.append(o_i[0])
        lses.append(z_i[0])
    loss_out = torch.stack(losses) if losses else b.new_zeros(0)
    out = torch.cat(outs) if outs else V.new_zeros(total)
    lse = torch.cat(lses) if lses else V.new_zeros(total)
    return loss_out, out, lse


def dual_solve_packed(
    X: Tensor,
    W: Tensor,
    offsets: Tensor,
    lam: Union[float, Tensor],
    *,
    gamma: Union[None, float, Tensor] = None,
    tol: Union[float, Tensor] = 1e-6,
    max_iter: Union[None, int, Tensor] = None,
    x0: Optional[Tensor] = None,
    **kwargs,
) -> PackedBalanceResult:
    """Packed twin of :func:`cina_ext.reference.dual_solve` (one solve per dataset).

    Parameters
    ----------
    X : Tensor, shape (total, p)
        Packed features.
    W : Tensor, shape (total,)
        Packed signs.
    offsets : Tensor, shape (B + 1,), int64
        The packed layout.
    lam : float or Tensor of shape (B,)
        Penalty per dataset.
    gamma : float or Tensor of shape (B,), optional
        RBF bandwidth per dataset.
    tol : float or Tensor of shape (B,), default 1e-6
        KKT tolerance per dataset.
    max_iter : int or Tensor of shape (B,), optional
        Iteration limit per dataset.
    x0 : Tensor, shape (total,), optional
        Packed warm start.
    **kwargs
        Other arguments of :func:`cina_ext.reference.dual_solve` (``kernel``, ``scale``,
        ``estimand``, ``intercept``, ``loss``).

    Returns
    -------
    PackedBalanceResult
        ``weights`` and ``alpha`` (total,), the per-dataset fields (B,).

    Raises
    ------
    TypeError, ValueError
        Invalid ``offsets``; the errors of :func:`cina_ext.reference.dual_solve` per dataset.
    """
    total = X.shape[0]
    B = check_offsets(offsets, total, X.device)
    unit = {"weights": [], "alpha": []}
    ds = {"intercept": [], "objective": [], "kkt": [], "iterations": [], "converged": []}
    estimand = kwargs.get("estimand", "overlap")
    for i in range(B):
        s, e = int(offsets[i]), int(offsets[i + 1])
        mi = _item(max_iter, i)
        r = dual_solve(
            X[s:e].unsqueeze(0),
            W[s:e].unsqueeze(0),
            _item(lam, i),
            gamma=_item(gamma, i),
            tol=_item(tol, i),
            max_iter=None if mi is None else int(mi),
            x0=None if x0 is None else x0[s:e].unsqueeze(0),
            **kwargs,
        )
        estimand = r.estimand
        for k in unit:
            unit[k].append(getattr(r, k)[0])
        for k in ds:
            ds[k].append(getattr(r, k)[0])
    out = {k: torch.cat(v) if v else X.new_zeros(total) for k, v in unit.items()}
    for k, v in ds.items():
        dt = {"iterations": torch.int64, "converged": torch.bool}.get(k, X.dtype)
        out[k] = torch.stack(v) if v else torch.zeros(0, dtype=dt, device=X.device)
    return PackedBalanceResult(estimand=estimand, offsets=offsets, **out)


def qp_solve_packed(
    Q: Tensor,
    p: Tensor,
    offsets: Tensor,
    lower: Union[float, Tensor] = 0.0,
    upper: Union[float, Tensor] = float("inf"),
    c: Optional[Tensor] = None,
    d: Union[None, float, Tensor] = None,
    *,
    tol: Union[float, Tensor] = 1e-6,
    max_iter: Union[None, int, Tensor] = None,
    x0: Optional[Tensor] = None,
) -> PackedQPResult:
    """Packed twin of :func:`cina_ext.reference.qp_solve`; ``Q`` holds the flattened n_b x n_b blocks.

    Parameters
    ----------
    Q : Tensor, shape (sum_b n_b**2,)
        The blocks flattened row-major and concatenated in dataset order.
    p : Tensor, shape (total,)
        Packed linear terms.
    offsets : Tensor, shape (B + 1,), int64
        The packed layout.
    lower, upper : float or Tensor of shape (total,), default 0.0 and +inf
        Bounds.
    c : Tensor, shape (total,), optional
        Packed equality coefficients.
    d : float or Tensor of shape (B,), optional
        Right-hand sides per dataset.
    tol : float or Tensor of shape (B,), default 1e-6
        KKT tolerance per dataset.
    max_iter : int or Tensor of shape (B,), optional
        Iteration limit per dataset.
    x0 : Tensor, shape (total,), optional
        Packed feasible start.

    Returns
    -------
    PackedQPResult
        ``x`` (total,), the per-dataset fields (B,).

    Raises
    ------
    TypeError, ValueError
        Invalid ``offsets``; the errors of :func:`cina_ext.reference.qp_solve` per dataset.
    """
    total = p.shape[0]
    B = check_offsets(offsets, total, p.device)
    xs = []
    ds = {"nu": [], "objective": [], "kkt": [], "iterations": [], "converged": []}
    q0 = 0
    for i in range(B):
        s, e = int(offsets[i]), int(offsets[i + 1])
        n = e - s
        Qi = Q[q0 : q0 + n * n].reshape(1, n, n)
        q0 += n * n

        def unit_arg(v):
            return v[s:e].unsqueeze(0) if isinstance(v, Tensor) and v.dim() >= 1 else v

        di = None if d is None else torch.as_tensor([_item(d, i)], dtype=p.dtype, device=p.device)
        mi = _item(max_iter, i)
        r = qp_solve(
            Qi,
            p[s:e].unsqueeze(0),
            unit_arg(lower),
            unit_arg(upper),
            unit_arg(c),
            di,
            tol=_item(tol, i),
            max_iter=None if mi is None else int(mi),
            x0=unit_arg(x0),
        )
        xs.append(r.x[0])
        for k in ds:
            ds[k].append(getattr(r, k)[0])
    out = {"x": torch.cat(xs) if xs else p.new_zeros(total)}
    for k, v in ds.items():
        dt = {"iterations": torch.int64, "converged": torch.bool}.get(k, p.dtype)
        out[k] = torch.stack(v) if v else torch.zeros(0, dtype=dt, device=p.device)
    return PackedQPResult(offsets=offsets, **out)
