"""Packed layout with offsets: many small datasets of different sizes without a padded batch.

**The layout.**  ``B`` datasets with ``n_0, ..., n_{B-1}`` units are stored back to back along the
first dimension: per-unit tensors have shape ``(total, ...)`` with ``total = sum_b n_b``, and the
units of dataset ``b`` are rows ``offsets[b] : offsets[b + 1]``.  ``offsets`` is a 1-D int64
tensor of length ``B + 1`` on the data's device, starting at 0, non-decreasing and ending at
``total`` (:func:`offsets_from_lengths` builds it; every function here validates it).  Datasets of
length 0 and 1 are allowed.  Per-dataset quantities (``b``, ``lam``, the solver's intercept,
objective, ...) have shape ``(B,)``.  :func:`qp_solve_packed` also takes the matrices ``Q`` packed:
the ``n_b x n_b`` blocks flattened row-major and concatenated, shape ``(sum_b n_b**2,)``.

**Conversions.**  :func:`pad_packed` turns ``(total, ...)`` into the padded ``(B, Nmax, ...)`` plus
the bool ``mask`` (``True`` = real unit) used by :mod:`cina_ext.ops`;
:func:`unpack_padded` goes back.  Both are pure index arithmetic (one ``repeat_interleave``, one
scatter / gather; no Python loop over datasets), differentiable, and run on any device.

**Length buckets.**  Padding a batch whose lengths vary widely wastes memory and work (attention
costs ``O(N^2)`` per dataset).  The packed operators therefore sort the datasets by length and cut
them greedily into buckets: a bucket starts at the shortest remaining dataset (length ``L``) and
takes every dataset of length ``<= ratio * L`` (:func:`length_buckets`).  Each bucket is padded to
its own longest dataset, so every dataset is padded to at most ``ratio`` times its length: the
padded size of each bucket (and of the whole call) is at most ``ratio`` x its number of real units
(``ratio**2`` x the real attention work).  The default ``ratio`` is :data:`DEFAULT_BUCKET_RATIO`
= 1.5; the number of buckets is at most about ``log(max n / min n) / log(ratio) + 1``, i.e. a few
padded calls per packed call.  ``bucket=False`` makes a single padded call (padded to the longest
dataset); ``bucket=<float > 1>`` chooses another ratio.  Empty datasets form their own bucket and
go through the padded operator with zero padded length, so they are treated exactly like fully
masked rows there (attention: loss 0, no outputs, zero gradients).

Results never depend on the bucketing: each dataset is computed independently by the padded
operators (up to floating-point summation order).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..reference.packed import (
    PackedBalanceResult,
    PackedQPResult,
    _check_offsets_structure,
    check_offsets,
    lengths_from_offsets,
    offsets_from_lengths,
)
from .attention_hinge import attention_hinge as _attention_hinge
from .qp_solve import dual_solve as _dual_solve
from .qp_solve import qp_solve as _qp_solve

__all__ = [
    "DEFAULT_BUCKET_RATIO",
    "offsets_from_lengths",
    "lengths_from_offsets",
    "check_offsets",
    "length_buckets",
    "pad_packed",
    "unpack_padded",
    "attention_hinge_packed",
    "dual_solve_packed",
    "qp_solve_packed",
    "PackedBalanceResult",
    "PackedQPResult",
]

DEFAULT_BUCKET_RATIO = 1.5


# ------------------------------------------------------------------------------------------------
# offsets
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# index arithmetic
# ------------------------------------------------------------------------------------------------


def _layout(starts: Tensor, lens: Tensor, count: int) -> Tuple[Tensor, Tensor, Tensor]:
    """For datasets starting at ``starts`` with lengths ``lens`` (``count = lens.sum()`` units):
    ``(seg, pos, src)`` with ``seg[u]`` the (local) dataset of unit u, ``pos[u]`` its position in the
    dataset and ``src[u]`` its row in the packed tensor.  Units in dataset order."""
    nb = lens.numel()
    dev = lens.device
    seg = torch.repeat_interleave(torch.arange(nb, device=dev), lens, output_size=count)
    local_start = torch.cumsum(lens, 0) - lens
    pos = torch.arange(count, device=dev) - local_start[seg]
    src = starts[seg] + pos
    return seg, pos, src


def _scatter_pad(rows: Tensor, seg: Tensor, pos: Tensor, nb: int, nmax: int, fill=0.0) -> Tensor:
    out = rows.new_full((nb, nmax) + tuple(rows.shape[1:]), fill)
    return out.index_put((seg, pos), rows)


def _max_len(lens: Tensor) -> int:
    return int(lens.max()) if lens.numel() else 0


def pad_packed(
    x: Tensor, offsets: Tensor, *, max_len: Optional[int] = None, fill: float = 0.0
) -> Tuple[Tensor, Tensor]:
    """Packed ``x`` (total, ...) -> ``(padded (B, Nmax, ...), mask (B, Nmax) bool)``.

    ``Nmax`` is the longest dataset, or ``max_len`` when given (must be >= it; saves a device
    sync).  Padded entries hold ``fill``.  Differentiable in ``x``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must have a leading unit dimension (total, ...)")
    total = x.shape[0]
    B = check_offsets(offsets, total, x.device)
    lens = lengths_from_offsets(offsets)
    longest = _max_len(lens)
    if max_len is None:
        nmax = longest
    else:
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < longest:
            raise ValueError(f"max_len must be an int >= the longest dataset ({longest}), got {max_len!r}")
        nmax = max_len
    seg, pos, src = _layout(offsets[:-1], lens, total)
    padded = _scatter_pad(x, seg, pos, B, nmax, fill)
    mask = torch.arange(nmax, device=x.device).unsqueeze(0) < lens.unsqueeze(1)
    return padded, mask


def unpack_padded(x_padded: Tensor, offsets: Tensor) -> Tensor:
    """Padded ``x_padded`` (B, N, ...) -> packed (total, ...): the first ``n_b`` entries of row b.

    Inverse of :func:`pad_packed` (padded entries are dropped).  Differentiable.
    """
    if not isinstance(x_padded, Tensor):
        raise TypeError(f"x_padded must be a torch.Tensor, got {type(x_padded).__name__}")
    if x_padded.dim() < 2:
        raise ValueError(f"x_padded must have shape (B, N, ...), got {tuple(x_padded.shape)}")
    _check_offsets_structure(offsets, x_padded.device, "offsets")
    B = offsets.numel() - 1
    if x_padded.shape[0] != B:
        raise ValueError(f"x_padded has {x_padded.shape[0]} datasets but offsets describe {B}")
    total = int(offsets[-1])
    check_offsets(offsets, total, x_padded.device)
    lens = lengths_from_offsets(offsets)
    if _max_len(lens) > x_padded.shape[1]:
        raise ValueError(
            f"x_padded has padded length {x_padded.shape[1]} but the longest dataset has {_max_len(lens)} units"
        )
    seg, pos, _ = _layout(offsets[:-1], lens, total)
    return x_padded[seg, pos]


# ------------------------------------------------------------------------------------------------
# length buckets
# ------------------------------------------------------------------------------------------------


def _ratio(bucket) -> Optional[float]:
    if bucket is True:
        return DEFAULT_BUCKET_RATIO
    if bucket is False or bucket is None:
        return None
    if isinstance(bucket, (int, float)) and math.isfinite(bucket) and bucket > 1:
        return float(bucket)
    raise ValueError(f"bucket must be True, False or a ratio > 1, got {bucket!r}")


def length_buckets(lengths: Tensor, ratio: Optional[float] = DEFAULT_BUCKET_RATIO) -> List[Tuple[Tensor, int]]:
    """Group datasets by length: a list of ``(dataset indices (int64, CPU), padded length)``.

    Datasets are sorted by length (stable); a bucket starts at the shortest remaining dataset
    (length L) and takes every dataset of length ``<= floor(ratio * L)``; its padded length is its
    longest member.  Empty datasets get their own bucket (padded length 0).  ``ratio=None``: one
    bucket with everything.  The loop runs once per bucket, not per dataset.
    """
    n = lengths.detach().to("cpu", torch.int64)
    B = n.numel()
    if B == 0:
        return []
    if ratio is None:
        return [(torch.arange(B), int(n.max()))]
    s, order = torch.sort(n, stable=True)
    out = []
    i = 0
    while i < B:
        L0 = int(s[i])
        limit = 0 if L0 == 0 else int(math.floor(ratio * L0))
        j = int(torch.searchsorted(s, torch.tensor(limit), right=True))
        j = max(j, i + 1)
        out.append((order[i:j], int(s[j - 1])))
        i = j
    return out


def _bucket_plan(offsets: Tensor, bucket, dev) -> List[Tuple[Tensor, Tensor, int, int]]:
    """Per bucket: (dataset indices on dev, starts, padded length, number of units)."""
    lens = lengths_from_offsets(offsets)
    lens_cpu = lens.detach().cpu()
    plan = []
    for ds, nmax in length_buckets(lens_cpu, _ratio(bucket)):
        count = int(lens_cpu[ds].sum())
        plan.append((ds.to(dev), nmax, count))
    return plan


def _per_dataset_slice(v, ds: Tensor, B: int, name: str):
    """Slice a per-dataset argument (float, 0-d or (B,) tensor) to a bucket."""
    if isinstance(v, Tensor) and v.dim() == 1:
        if v.shape[0] != B:
            raise ValueError(f"{name} must be a scalar or a tensor of shape ({B},), got {tuple(v.shape)}")
        return v[ds.to(v.device)]
    return v


def _annotate(e: Exception, ds: Tensor) -> Exception:
    ids = ds.tolist()
    more = "" if len(ids) <= 20 else f", ... ({len(ids)} in all)"
    return type(e)(
        f"{e} [dataset numbers are within a length bucket holding packed datasets {ids[:20]}{more}, in that order]"
    )


# ------------------------------------------------------------------------------------------------
# attention + hinge
# ------------------------------------------------------------------------------------------------


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
    backend: str = "auto",
    bucket: Union[bool, float] = True,
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`cina_ext.ops.attention_hinge` on packed datasets (docs/ops/packed.md).

    The ``B`` datasets are stored back to back: dataset ``b`` is rows ``offsets[b] : offsets[b + 1]``
    of every per-unit tensor (see the module docstring).  The datasets are grouped into length
    buckets and each bucket is one padded call of :func:`cina_ext.ops.attention_hinge`.

    Parameters
    ----------
    K : Tensor, shape (total, D)
        Packed keys; float32, float64 or bfloat16 (the padded operator's dtype rules apply).
    V : Tensor, shape (total,)
        Packed values.
    W : Tensor, shape (total,)
        Packed signs in {-1, +1}.
    b : Tensor, shape (B,)
        One intercept per dataset.
    lam : float or Tensor of shape () or (B,)
        Penalty, > 0.
    offsets : Tensor, shape (B + 1,), int64
        On K's device, starting at 0, non-decreasing, ending at ``total``
        (:func:`offsets_from_lengths` builds it).  Datasets of length 0 and 1 are allowed.
    scale : float, optional
        Score scale; default ``1 / sqrt(D)`` for every dataset.
    loss : {"hinge", "squared_hinge"}, default "hinge"
        The loss of eq. L.
    backend : {"auto", "fused", "reference"}, default "auto"
        Passed to :func:`cina_ext.ops.attention_hinge`.
    bucket : bool or float, default True
        True: length buckets with the default ratio 1.5 (``DEFAULT_BUCKET_RATIO``); a float > 1:
        another ratio; False: one padded call (padded to the longest dataset).  See
        :func:`cina_ext.ops.packed.length_buckets`.

    Returns
    -------
    loss : Tensor, shape (B,)
        eq. L per dataset (0 for an empty dataset).
    out : Tensor, shape (total,)
        Packed attention output.
    lse : Tensor, shape (total,)
        Packed row log-normalisers.

    Equal to the padded operator's results per dataset (up to floating-point summation order,
    whatever the bucketing); differentiable in K, V and b (through the padding).

    Raises
    ------
    TypeError
        K, V, W or b not a tensor; ``offsets`` not an int64 tensor; dtype errors of the padded
        operator.
    ValueError
        K not 2-D; V or W not of shape (total,); b not (B,); ``lam`` of the wrong shape;
        ``offsets`` invalid (not 1-D, empty, on another device, not starting at 0, decreasing or
        not ending at ``total``); ``bucket`` not True, False or a ratio > 1; the padded operator's
        errors (their dataset numbers are annotated with the bucket's packed dataset numbers).
    RuntimeError
        ``backend="fused"`` without compiled kernels for the device.

    Examples
    --------
    >>> import torch
    >>> from cina_ext.ops import attention_hinge_packed, offsets_from_lengths
    >>> offsets = offsets_from_lengths([3, 5])
    >>> K = torch.randn(8, 4, dtype=torch.float64)
    >>> V = torch.randn(8, dtype=torch.float64)
    >>> W = torch.tensor([1., -1., 1., 1., -1., 1., -1., -1.], dtype=torch.float64)
    >>> b = torch.zeros(2, dtype=torch.float64)
    >>> loss, out, lse = attention_hinge_packed(K, V, W, b, 0.1, offsets, backend="reference")
    >>> loss.shape, out.shape
    (torch.Size([2]), torch.Size([8]))
    """
    for name, t in (("K", K), ("V", V), ("W", W), ("b", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if K.dim() != 2:
        raise ValueError(f"K must have the packed shape (total, D), got {tuple(K.shape)}")
    total, D = K.shape
    for name, t in (("V", V), ("W", W)):
        if tuple(t.shape) != (total,):
            raise ValueError(
                f"{name} must have the packed shape ({total},) to match K {tuple(K.shape)}, got {tuple(t.shape)}"
            )
    B = check_offsets(offsets, total, K.device)
    if tuple(b.shape) != (B,):
        raise ValueError(f"b must have shape ({B},) (one intercept per dataset), got {tuple(b.shape)}")
    if isinstance(lam, Tensor) and lam.dim() == 1 and lam.shape[0] != B:
        raise ValueError(f"lam must be a float or a tensor of shape ({B},), got {tuple(lam.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    dev = K.device
    lens = lengths_from_offsets(offsets)
    starts = offsets[:-1]
    losses, ds_all, outs, lses, src_all = [], [], [], [], []
    for ds, nmax, count in _bucket_plan(offsets, bucket, dev):
        nb = ds.numel()
        seg, pos, src = _layout(starts[ds], lens[ds], count)
        Kp = _scatter_pad(K[src], seg, pos, nb, nmax)
        Vp = _scatter_pad(V[src], seg, pos, nb, nmax)
        Wp = _scatter_pad(W[src], seg, pos, nb, nmax)
        mask = torch.arange(nmax, device=dev).unsqueeze(0) < lens[ds].unsqueeze(1)
        lam_b = _per_dataset_slice(lam, ds, B, "lam")
        try:
            l_b, o_b, s_b = _attention_hinge(Kp, Vp, Wp, b[ds], lam_b, mask, scale=scale, loss=loss, backend=backend)
        except (ValueError, TypeError) as e:
            raise _annotate(e, ds.cpu()) from e
        losses.append(l_b)
        ds_all.append(ds)
        outs.append(o_b[seg, pos])
        lses.append(s_b[seg, pos])
        src_all.append(src)
    if B == 0:
        z = K.new_zeros(0)
        return z, K.new_zeros(total), K.new_zeros(total)
    loss_out = b.new_zeros(B).index_copy(0, torch.cat(ds_all), torch.cat(losses))
    src_cat = torch.cat(src_all)
    out = V.new_zeros(total).index_copy(0, src_cat, torch.cat(outs))
    lse = V.new_zeros(total).index_copy(0, src_cat, torch.cat(lses))
    return loss_out, out, lse


# ------------------------------------------------------------------------------------------------
# solvers
# ------------------------------------------------------------------------------------------------


def _assemble(B: int, total: int, parts, unit_fields, ds_fields, like: Tensor):
    """Scatter bucket results back: unit fields to (total,), per-dataset fields to (B,)."""
    out = {}
    dev = like.device
    ds_cat = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64, device=dev)
    src_cat = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64, device=dev)
    for f in unit_fields:
        vals = [p[2][f] for p in parts]
        if vals:
            v = torch.cat([t.to(dev) for t in vals])
            out[f] = v.new_zeros(total).index_copy(0, src_cat, v)
        else:
            out[f] = like.new_zeros(total)
    for f in ds_fields:
        vals = [p[3][f] for p in parts]
        if vals:
            v = torch.cat([t.to(dev) for t in vals])
            out[f] = v.new_zeros(B).index_copy(0, ds_cat, v)
        else:
            dt = {"iterations": torch.int64, "converged": torch.bool}.get(f, like.dtype)
            out[f] = torch.zeros(B, dtype=dt, device=dev)
    return out


def dual_solve_packed(
    X: Tensor,
    W: Tensor,
    offsets: Tensor,
    lam: Union[float, Tensor],
    *,
    bucket: Union[bool, float] = True,
    gamma: Union[None, float, Tensor] = None,
    tol: Union[float, Tensor] = 1e-6,
    max_iter: Union[None, int, Tensor] = None,
    x0: Optional[Tensor] = None,
    **kwargs,
) -> PackedBalanceResult:
    """:func:`cina_ext.ops.dual_solve` on packed datasets (docs/ops/packed.md).

    Parameters
    ----------
    X : Tensor, shape (total, p)
        Packed features (keys for ``kernel="cina"``), float32 or float64.
    W : Tensor, shape (total,)
        Packed signs, -1 (control) or +1 (treated) at every unit, as numbers (not bool).
    offsets : Tensor, shape (B + 1,), int64
        On X's device, starting at 0, non-decreasing, ending at ``total``
        (:func:`offsets_from_lengths`).
    lam : float or Tensor of shape (B,)
        Balancing penalty per dataset, > 0.
    bucket : bool or float, default True
        Length buckets as in :func:`attention_hinge_packed`.
    gamma : float or Tensor of shape (B,), optional
        RBF bandwidth, per dataset allowed.
    tol : float or Tensor of shape (B,), default 1e-6
        KKT tolerance, per dataset allowed.
    max_iter : int or integer Tensor of shape (B,), optional
        Iteration limit, per dataset allowed; None: the solver's default.
    x0 : Tensor, shape (total,), optional
        Packed warm start.
    **kwargs
        ``kernel``, ``scale``, ``estimand``, ``intercept``, ``loss``, ``backend``, ``cache_mb``,
        ``shrinking``: passed to :func:`cina_ext.ops.dual_solve` unchanged.
        ``kernel="precomputed"`` is not available here (use :func:`qp_solve_packed` or the padded
        solver); ``mask`` is refused (the offsets say which units are real).

    Returns
    -------
    PackedBalanceResult
        ``weights`` and ``alpha`` (total,), ``intercept``, ``objective``, ``kkt``,
        ``iterations``, ``converged`` (B,), ``estimand`` and ``offsets``: the same numbers as
        :func:`cina_ext.ops.dual_solve` per dataset.

    Raises
    ------
    ValueError
        ``kernel="precomputed"``; X not 2-D; W not (total,); x0 not a (total,) tensor; invalid
        ``offsets``; W not -1/+1; a dataset with an empty treatment arm; a per-dataset argument
        not of shape (B,); the padded solver's errors (dataset numbers annotated with the bucket's
        packed dataset numbers).
    TypeError
        ``mask`` given; X or W not a tensor; W bool or complex; ``offsets`` not an int64 tensor.
    RuntimeError
        ``backend="fused"`` when the compiled solver is unavailable.

    Examples
    --------
    >>> import torch
    >>> from cina_ext.ops import dual_solve_packed, offsets_from_lengths
    >>> offsets = offsets_from_lengths([6, 8])
    >>> X = torch.randn(14, 2, dtype=torch.float64)
    >>> W = torch.tensor([1., -1.] * 7, dtype=torch.float64)
    >>> res = dual_solve_packed(X, W, offsets, 0.1, estimand="ate", backend="reference")
    >>> res.weights.shape, res.converged.shape
    (torch.Size([14]), torch.Size([2]))
    """
    if kwargs.get("kernel") == "precomputed":
        raise ValueError(
            'kernel="precomputed" has no packed form in dual_solve_packed; use qp_solve_packed '
            "(Q packed as flattened blocks) or cina_ext.ops.dual_solve on a padded batch"
        )
    if "mask" in kwargs:
        raise TypeError("dual_solve_packed takes offsets, not a mask")
    for name, t in (("X", X), ("W", W)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if X.dim() != 2:
        raise ValueError(f"X must have the packed shape (total, p), got {tuple(X.shape)}")
    total = X.shape[0]
    if tuple(W.shape) != (total,):
        raise ValueError(f"W must have the packed shape ({total},) to match X {tuple(X.shape)}, got {tuple(W.shape)}")
    B = check_offsets(offsets, total, X.device)
    if x0 is not None and (not isinstance(x0, Tensor) or tuple(x0.shape) != (total,)):
        raise ValueError(f"x0 must be a packed tensor of shape ({total},)")
    dev = X.device
    lens = lengths_from_offsets(offsets)
    starts = offsets[:-1]
    # checks that need the global dataset numbers (the padded solver would number within a bucket)
    if W.dtype == torch.bool or W.is_complex():
        raise TypeError(f"W must hold the signs -1/+1 as numbers, got {W.dtype}")
    Wd = W.to(dev)
    if bool((~((Wd == 1) | (Wd == -1))).any()):
        raise ValueError("W must be -1 (control) or +1 (treated) at every unit")
    seg_all = torch.repeat_interleave(torch.arange(B, device=dev), lens, output_size=total)
    n1 = torch.zeros(B, dtype=torch.int64, device=dev).index_add_(0, seg_all, (Wd > 0).to(torch.int64))
    n0 = lens - n1
    if B and bool(((n1 == 0) | (n0 == 0)).any()):
        bad = torch.nonzero((n1 == 0) | (n0 == 0)).flatten().tolist()
        raise ValueError(
            f"dataset(s) {bad[:20]} have an empty treatment arm (a dataset needs at least one "
            "treated and one control unit)"
        )
    parts = []
    estimand = kwargs.get("estimand", "overlap")
    for ds, nmax, count in _bucket_plan(offsets, bucket, dev):
        nb = ds.numel()
        seg, pos, src = _layout(starts[ds], lens[ds], count)
        Xp = _scatter_pad(X[src], seg, pos, nb, nmax)
        Wp = _scatter_pad(Wd[src], seg, pos, nb, nmax, 1.0)
        mask = torch.arange(nmax, device=dev).unsqueeze(0) < lens[ds].unsqueeze(1)
        x0p = None if x0 is None else _scatter_pad(x0[src], seg, pos, nb, nmax)
        try:
            r = _dual_solve(
                Xp,
                Wp,
                _per_dataset_slice(lam, ds, B, "lam"),
                gamma=_per_dataset_slice(gamma, ds, B, "gamma"),
                tol=_per_dataset_slice(tol, ds, B, "tol"),
                max_iter=_per_dataset_slice(max_iter, ds, B, "max_iter"),
                x0=x0p,
                mask=mask,
                **kwargs,
            )
        except (ValueError, TypeError) as e:
            raise _annotate(e, ds.cpu()) from e
        estimand = r.estimand
        parts.append(
            (
                ds,
                src,
                {"weights": r.weights[seg, pos], "alpha": r.alpha[seg, pos]},
                {
                    "intercept": r.intercept,
                    "objective": r.objective,
                    "kkt": r.kkt,
                    "iterations": r.iterations,
                    "converged": r.converged,
                },
            )
        )
    f = _assemble(
        B, total, parts, ("weights", "alpha"), ("intercept", "objective", "kkt", "iterations", "converged"), X
    )
    return PackedBalanceResult(estimand=estimand, offsets=offsets, **f)


def _pad_unit_arg(v, name: str, total: int, src, seg, pos, nb, nmax):
    """float / 0-d tensor passes through; a packed (total,) tensor is padded to the bucket."""
    if isinstance(v, Tensor) and v.dim() >= 1:
        if tuple(v.shape) != (total,):
            raise ValueError(f"{name} must be a float or a packed tensor of shape ({total},), got {tuple(v.shape)}")
        return _scatter_pad(v[src], seg, pos, nb, nmax)
    return v


def qp_solve_packed(
    Q: Tensor,
    p: Tensor,
    offsets: Tensor,
    lower: Union[float, Tensor] = 0.0,
    upper: Union[float, Tensor] = float("inf"),
    c: Optional[Tensor] = None,
    d: Union[None, float, Tensor] = None,
    *,
    bucket: Union[bool, float] = True,
    tol: Union[float, Tensor] = 1e-6,
    max_iter: Union[None, int, Tensor] = None,
    x0: Optional[Tensor] = None,
    **kwargs,
) -> PackedQPResult:
    """:func:`cina_ext.ops.qp_solve` on packed datasets (docs/ops/packed.md).

    Parameters
    ----------
    Q : Tensor, shape (sum_b n_b**2,)
        The blocks ``Q_b`` (n_b x n_b) flattened row-major and concatenated in dataset order, on
        p's device.
    p : Tensor, shape (total,)
        Packed linear terms.
    offsets : Tensor, shape (B + 1,), int64
        On p's device, starting at 0, non-decreasing, ending at ``total``.
    lower, upper : float or Tensor of shape (total,), default 0.0 and +inf
        Box bounds (packed when tensors).
    c : Tensor, shape (total,), optional
        Packed equality coefficients, together with ``d`` or not at all.
    d : float or Tensor of shape (B,), optional
        Right-hand sides per dataset.
    bucket : bool or float, default True
        Length buckets as in :func:`attention_hinge_packed`.
    tol : float or Tensor of shape (B,), default 1e-6
        KKT tolerance, per dataset allowed.
    max_iter : int or integer Tensor of shape (B,), optional
        Iteration limit, per dataset allowed.
    x0 : Tensor, shape (total,), optional
        Packed feasible warm start.
    **kwargs
        ``backend``, ``cache_mb``, ``shrinking``: passed to :func:`cina_ext.ops.qp_solve`;
        ``mask`` is refused.

    Returns
    -------
    PackedQPResult
        ``x`` (total,), ``nu``, ``objective``, ``kkt``, ``iterations``, ``converged`` (B,) and
        ``offsets``.

    Raises
    ------
    TypeError
        ``mask`` given; Q or p not a tensor; ``offsets`` not an int64 tensor; the padded solver's
        dtype errors.
    ValueError
        p not 1-D; invalid ``offsets``; Q not of shape (sum_b n_b**2,) or on another device; ``c``
        without ``d`` (or the reverse); c, x0 or a bound tensor not (total,); d not (B,); the
        padded solver's errors (dataset numbers annotated with the bucket's packed dataset
        numbers).
    RuntimeError
        ``backend="fused"`` when the compiled solver is unavailable.

    Examples
    --------
    >>> import torch
    >>> from cina_ext.ops import qp_solve_packed, offsets_from_lengths
    >>> offsets = offsets_from_lengths([1, 2])
    >>> Q = torch.tensor([2.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # [[2]] then eye(2)
    >>> p = torch.ones(3, dtype=torch.float64)
    >>> qp_solve_packed(Q, p, offsets, backend="reference").x
    tensor([0.5000, 1.0000, 1.0000], dtype=torch.float64)
    """
    if "mask" in kwargs:
        raise TypeError("qp_solve_packed takes offsets, not a mask")
    for name, t in (("Q", Q), ("p", p)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if p.dim() != 1:
        raise ValueError(f"p must have the packed shape (total,), got {tuple(p.shape)}")
    total = p.shape[0]
    B = check_offsets(offsets, total, p.device)
    dev = p.device
    lens = lengths_from_offsets(offsets)
    sq = lens * lens
    qoff = torch.cumsum(sq, 0) - sq
    qtotal = int(sq.sum()) if B else 0
    if Q.dim() != 1 or Q.shape[0] != qtotal:
        raise ValueError(
            f"Q must be packed as the flattened n_b x n_b blocks, shape ({qtotal},) for these offsets, "
            f"got {tuple(Q.shape)}"
        )
    if Q.device != dev:
        raise ValueError(f"Q is on {Q.device} but p is on {dev}")
    if (c is None) != (d is None):
        raise ValueError("c and d must be given together (equality c'x = d) or not at all")
    if c is not None and (not isinstance(c, Tensor) or tuple(c.shape) != (total,)):
        raise ValueError(f"c must be a packed tensor of shape ({total},)")
    if x0 is not None and (not isinstance(x0, Tensor) or tuple(x0.shape) != (total,)):
        raise ValueError(f"x0 must be a packed tensor of shape ({total},)")
    starts = offsets[:-1]
    parts = []
    for ds, nmax, count in _bucket_plan(offsets, bucket, dev):
        nb = ds.numel()
        ln = lens[ds]
        seg, pos, src = _layout(starts[ds], ln, count)
        ar = torch.arange(nmax, device=dev)
        valid = (ar.view(1, -1, 1) < ln.view(-1, 1, 1)) & (ar.view(1, 1, -1) < ln.view(-1, 1, 1))
        qidx = qoff[ds].view(-1, 1, 1) + ar.view(1, -1, 1) * ln.view(-1, 1, 1) + ar.view(1, 1, -1)
        if qtotal:
            Qp = torch.where(valid, Q[qidx.clamp(0, qtotal - 1)], torch.zeros((), dtype=Q.dtype, device=dev))
        else:
            Qp = Q.new_zeros(nb, nmax, nmax)
        mask = ar.unsqueeze(0) < ln.unsqueeze(1)
        args = [_pad_unit_arg(v, n, total, src, seg, pos, nb, nmax) for v, n in ((lower, "lower"), (upper, "upper"))]
        cp = None if c is None else _scatter_pad(c[src], seg, pos, nb, nmax)
        dp = d[ds.to(d.device)] if isinstance(d, Tensor) and d.dim() == 1 else d
        if isinstance(d, Tensor) and d.dim() == 1 and d.shape[0] != B:
            raise ValueError(f"d must be a float or a tensor of shape ({B},), got {tuple(d.shape)}")
        x0p = None if x0 is None else _scatter_pad(x0[src], seg, pos, nb, nmax)
        try:
            r = _qp_solve(
                Qp,
                _scatter_pad(p[src], seg, pos, nb, nmax),
                args[0],
                args[1],
                cp,
                dp,
                mask,
                tol=_per_dataset_slice(tol, ds, B, "tol"),
                max_iter=_per_dataset_slice(max_iter, ds, B, "max_iter"),
                x0=x0p,
                **kwargs,
            )
        except (ValueError, TypeError) as e:
            raise _annotate(e, ds.cpu()) from e
        parts.append(
            (
                ds,
                src,
                {"x": r.x[seg, pos]},
                {
                    "nu": r.nu,
                    "objective": r.objective,
                    "kkt": r.kkt,
                    "iterations": r.iterations,
                    "converged": r.converged,
                },
            )
        )
    f = _assemble(B, total, parts, ("x",), ("nu", "objective", "kkt", "iterations", "converged"), p)
    return PackedQPResult(offsets=offsets, **f)
