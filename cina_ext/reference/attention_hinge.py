"""Pure-PyTorch twin of the fused attention + hinge operator and of its read-out: the ground truth.

Everything here materialises what it needs (the N x N score matrix included), is batched over
datasets, honours a (B, N) boolean mask, works in float32 and float64 and is differentiable
with autograd.  The compiled operators in :mod:`cina_ext.ops` must reproduce these results.

Conventions shared with :mod:`cina_ext.ops` (see docs/ops/attention_hinge.md):

* ``K`` (B, N, D) keys (queries are tied to keys), ``V`` (B, N) scalar values,
  ``W`` (B, N) signs in {-1, +1}, ``b`` (B,) intercepts, ``lam`` float or (B,),
  ``mask`` (B, N) bool (True = real unit) or None (all real).
* Outputs ``(loss, out, lse)``: ``loss`` (B,) = sum over valid rows of hinge + penalty,
  ``out`` (B, N) the attention output ``o = softmax(S) V``, ``lse`` (B, N) the row log-normaliser.
  Padded rows have ``out = 0`` and ``lse = 0`` and take no part in anything.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .._core.checks import per_dataset
from .._core.constants import LOSS_KINDS

__all__ = [
    "attention_hinge",
    "readout_alpha",
    "readout_weights",
    "effect_from_weights",
]


def _lam_tensor(lam: Union[float, Tensor], B: int, like: Tensor) -> Tensor:
    # validated by the caller (cina_ext.ops checks lam outside the traced path)
    return per_dataset(lam, "lam", B, dtype=like.dtype, device=like.device, check=False)


def attention_hinge(
    K: Tensor,
    V: Tensor,
    W: Tensor,
    b: Tensor,
    lam: Union[float, Tensor],
    mask: Optional[Tensor] = None,
    *,
    scale: Optional[float] = None,
    loss: str = "hinge",
) -> Tuple[Tensor, Tensor, Tensor]:
    """Masked tied-key softmax attention with scalar values and the penalised hinge loss (eq. L).

    The ground truth of :func:`cina_ext.ops.attention_hinge`: it materialises the (B, N, N) score
    matrix, so it is not the fast path.  Differentiable with autograd.

    Parameters
    ----------
    K : Tensor, shape (B, N, D)
        Keys (queries are tied to keys), float32 or float64.
    V : Tensor, shape (B, N)
        Scalar values.
    W : Tensor, shape (B, N)
        Signs in {-1, +1}.
    b : Tensor, shape (B,)
        Intercepts.
    lam : float or Tensor of shape () or (B,)
        Penalty (not validated here: :mod:`cina_ext.ops` checks it).
    mask : Tensor of bool, shape (B, N), optional
        True = real unit; None: all real.
    scale : float, optional
        Score scale; default ``1 / sqrt(D)`` (1 when ``D == 0``).
    loss : {"hinge", "squared_hinge"}, default "hinge"
        The loss of eq. L.

    Returns
    -------
    loss : Tensor, shape (B,)
        Sum over valid rows of hinge + penalty.
    out : Tensor, shape (B, N)
        The attention output ``o = softmax(S) V``.
    lse : Tensor, shape (B, N)
        The row log-normaliser.

    Padded rows have ``out = 0`` and ``lse = 0`` and take no part in anything.

    Raises
    ------
    ValueError
        ``loss`` not one of the losses.
    """
    if loss not in LOSS_KINDS:
        raise ValueError(f"loss must be one of {LOSS_KINDS}, got {loss!r}")
    Bsz, N, D = K.shape
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    if mask is None:
        mask = torch.ones(Bsz, N, dtype=torch.bool, device=K.device)
    lam_t = _lam_tensor(lam, Bsz, K)

    S = scale * torch.matmul(K, K.transpose(-1, -2))  # (B, N, N)
    pair = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    S = S.masked_fill(~pair, float("-inf"))
    # rows with no valid column (padded rows) would give -inf - (-inf) = NaN: give them a zero row
    row_valid = mask
    S_safe = torch.where(row_valid.unsqueeze(-1), S, torch.zeros_like(S))
    lse = torch.logsumexp(S_safe, dim=-1)
    P = torch.exp(S_safe - lse.unsqueeze(-1))
    P = P.masked_fill(~pair, 0.0)
    Vm = torch.where(mask, V, torch.zeros_like(V))
    out = torch.matmul(P, Vm.unsqueeze(-1)).squeeze(-1)
    out = torch.where(row_valid, out, torch.zeros_like(out))
    lse = torch.where(row_valid, lse, torch.zeros_like(lse))

    r = 1.0 - W * (out + b.unsqueeze(-1))
    if loss == "hinge":
        hinge = torch.relu(r)
    else:
        hinge = 0.5 * torch.relu(r) ** 2
    # c_i = (lam/2) h_i computed in log-space: exp(lse_i + log(lam/2))
    c = torch.exp(lse + torch.log(lam_t / 2).unsqueeze(-1))
    pen = c * Vm * out
    per_row = torch.where(row_valid, hinge + pen, torch.zeros_like(hinge))
    return per_row.sum(-1), out, lse


def readout_alpha(
    V: Tensor,
    W: Tensor,
    lse: Tensor,
    lam: Union[float, Tensor],
    mask: Optional[Tensor] = None,
    *,
    loss: str = "hinge",
) -> Tensor:
    """Dual variables from the attention values (eq. R): ``alpha = clip(lam V h W)``.

    Parameters
    ----------
    V : Tensor, shape (B, N)
        Attention values.
    W : Tensor, shape (B, N)
        Signs in {-1, +1}.
    lse : Tensor, shape (B, N)
        Row log-normalisers from :func:`attention_hinge` (``h = exp(lse)``).
    lam : float or Tensor of shape () or (B,)
        Penalty.
    mask : Tensor of bool, shape (B, N), optional
        True = real unit; padded units get 0.
    loss : {"hinge", "squared_hinge"}, default "hinge"
        Clips to [0, 1] for the hinge, [0, inf) for the squared hinge.

    Returns
    -------
    Tensor, shape (B, N)
        ``alpha``, non-negative (0 where ``V W <= 0`` and at padded units).

    Raises
    ------
    ValueError
        ``loss`` not one of the losses.

    Notes
    -----
    ``h = exp(lse)`` is never formed: ``lam |V| h = exp(log lam + log|V| + lse)`` so that large
    scores cannot overflow.
    """
    if loss not in LOSS_KINDS:
        raise ValueError(f"loss must be one of {LOSS_KINDS}, got {loss!r}")
    Bsz = V.shape[0]
    lam_t = _lam_tensor(lam, Bsz, V)
    signed = V * W
    mag = torch.exp(torch.log(lam_t).unsqueeze(-1) + torch.log(signed.abs().clamp_min(torch.finfo(V.dtype).tiny)) + lse)
    alpha = torch.where(signed > 0, mag, torch.zeros_like(mag))
    if loss == "hinge":
        alpha = alpha.clamp(max=1.0)
    if mask is not None:
        alpha = torch.where(mask, alpha, torch.zeros_like(alpha))
    return alpha


def readout_weights(alpha: Tensor, W: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Normalise non-negative dual variables per treatment arm so each arm sums to one.

    Parameters
    ----------
    alpha : Tensor, shape (B, N)
        Dual variables (negative entries are clipped to 0).
    W : Tensor, shape (B, N)
        Signs: > 0 treated, < 0 control.
    mask : Tensor of bool, shape (B, N), optional
        True = real unit; padded units get weight 0.

    Returns
    -------
    Tensor, shape (B, N)
        Weights summing to one within each arm of each dataset.

    Raises
    ------
    ValueError
        An arm of some dataset has zero total weight (the estimate would be undefined; never
        returned as NaN).
    """
    if mask is None:
        mask = torch.ones_like(W, dtype=torch.bool)
    a = torch.where(mask, alpha.clamp_min(0), torch.zeros_like(alpha))
    treated = (W > 0) & mask
    control = (W < 0) & mask
    s1 = torch.where(treated, a, torch.zeros_like(a)).sum(-1, keepdim=True)
    s0 = torch.where(control, a, torch.zeros_like(a)).sum(-1, keepdim=True)
    if bool((s1 <= 0).any()) or bool((s0 <= 0).any()):
        bad = torch.nonzero(((s1 <= 0) | (s0 <= 0)).squeeze(-1)).flatten().tolist()
        raise ValueError(
            f"read-out weights of a treatment arm sum to zero in dataset(s) {bad}: "
            "the balancing problem gave no weight to one arm (lam too large or an arm empty)"
        )
    return torch.where(treated, a / s1, torch.where(control, a / s0, torch.zeros_like(a)))


def effect_from_weights(weights: Tensor, W: Tensor, Y: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """The effect estimate ``tau_hat = sum_i a_i W_i Y_i`` per dataset.

    Parameters
    ----------
    weights : Tensor, shape (B, N)
        Weights ``a``, already normalised per arm (e.g. :func:`readout_weights`).
    W : Tensor, shape (B, N)
        Signs in {-1, +1}.
    Y : Tensor, shape (B, N)
        Outcomes.
    mask : Tensor of bool, shape (B, N), optional
        True = real unit; padded units contribute nothing.

    Returns
    -------
    Tensor, shape (B,)
        The estimate per dataset.

    Examples
    --------
    >>> import torch
    >>> from cina_ext.reference import effect_from_weights
    >>> w = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    >>> W = torch.tensor([[1., 1., -1., -1.]])
    >>> Y = torch.tensor([[3., 5., 1., 2.]])
    >>> effect_from_weights(w, W, Y)
    tensor([2.5000])
    """
    prod = weights * W * Y
    if mask is not None:
        prod = torch.where(mask, prod, torch.zeros_like(prod))
    return prod.sum(-1)
