"""The fused attention + hinge operator: input checks, autograd, fake impls, dispatch.

``backend`` is one of ``"auto"`` (compiled when the extension loaded and supports the device,
else the reference with a warning), ``"fused"`` (compiled, error if unavailable) or
``"reference"`` (pure PyTorch, :func:`cina_ext.reference.attention_hinge`); see
:mod:`cina_ext._core.backend`.  Design: docs/ops/attention_hinge.md.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import reference
from .._core.backend import resolve_backend
from .._core.constants import FLOAT_DTYPES as _FLOAT_DTYPES
from .._core.constants import LOSS_CODES as _LOSS_CODES
from .._core.extension import has_extension
from ..reference.attention_hinge import _lam_tensor

__all__ = ["attention_hinge"]


def _check_attention_inputs(K, V, W, b, lam, mask, loss):
    if loss not in _LOSS_CODES:
        raise ValueError(f"loss must be one of {tuple(_LOSS_CODES)}, got {loss!r}")
    for name, t in (("K", K), ("V", V), ("W", W), ("b", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if K.dim() != 3:
        raise ValueError(f"K must have shape (B, N, D), got {tuple(K.shape)}")
    Bsz, N, D = K.shape
    if K.dtype not in _FLOAT_DTYPES and K.dtype != torch.bfloat16:
        raise TypeError(f"K must be float32, float64 or bfloat16, got {K.dtype}")
    for name, t, shape in (("V", V, (Bsz, N)), ("W", W, (Bsz, N)), ("b", b, (Bsz,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match K {tuple(K.shape)}, got {tuple(t.shape)}")
        if t.dtype != K.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but K has {K.dtype}; all float inputs must share a dtype")
        if t.device != K.device:
            raise ValueError(f"{name} is on {t.device} but K is on {K.device}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor of shape (B, N)")
        if tuple(mask.shape) != (Bsz, N):
            raise ValueError(f"mask must have shape {(Bsz, N)}, got {tuple(mask.shape)}")
        if mask.device != K.device:
            raise ValueError(f"mask is on {mask.device} but K is on {K.device}")
    if isinstance(lam, Tensor):
        if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != Bsz):
            raise ValueError(f"lam must be a float or a tensor of shape ({Bsz},), got {tuple(lam.shape)}")
        if lam.device != K.device:
            raise ValueError(f"lam is on {lam.device} but K is on {K.device}")
    else:
        if not (float(lam) > 0 and math.isfinite(float(lam))):
            raise ValueError(f"lam must be a positive finite number, got {lam!r}")


def _check_attention_values(K, V, W, b, lam, mask, scale):
    """The checks that read the data (host syncs, kept out of a torch.compile graph): finite
    inputs on the valid units, signs in {-1, +1}, a positive finite lam and a finite scale."""
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if isinstance(lam, Tensor) and not bool((torch.isfinite(lam) & (lam > 0)).all()):
        raise ValueError("lam must be positive and finite in every dataset")
    valid = torch.ones(W.shape, dtype=torch.bool, device=W.device) if mask is None else mask
    if not bool(((W == 1) | (W == -1) | ~valid).all()):
        raise ValueError("W must be -1 (control) or +1 (treated) at every valid unit (W = 2T - 1)")
    if not bool((torch.isfinite(K) | ~valid.unsqueeze(-1)).all()):
        raise ValueError("K contains NaN or Inf at valid units")
    if not bool((torch.isfinite(V) | ~valid).all()):
        raise ValueError("V contains NaN or Inf at valid units")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("b contains NaN or Inf")


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
    backend: str = "auto",
) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused masked tied-key attention + penalised hinge loss (docs/ops/attention_hinge.md).

    For each dataset ``b`` of the batch, with scores ``S = scale * K K'`` over the valid units,
    ``out = softmax(S) V``, ``lse`` the row log-normaliser of ``S``, and
    ``loss = sum over valid rows of hinge(1 - W (out + b)) + (lam / 2) exp(lse) V out`` (eq. L).
    The reference twin is :func:`cina_ext.reference.attention_hinge`.

    Parameters
    ----------
    K : Tensor, shape (B, N, D)
        Keys (queries are tied to the keys).  float32, float64 or bfloat16; every float input
        must have K's dtype and device.
    V : Tensor, shape (B, N)
        Scalar values, K's dtype and device.
    W : Tensor, shape (B, N)
        Treatment signs in {-1, +1} (treated = +1), K's dtype and device.
    b : Tensor, shape (B,)
        Intercepts, K's dtype and device.
    lam : float or Tensor of shape () or (B,)
        Penalty, > 0 (a float must also be finite); a tensor must be on K's device.
    mask : Tensor of bool, shape (B, N), optional
        True = real unit, on K's device.  None (default): every unit is real.
    scale : float, optional
        Score scale; default ``1 / sqrt(D)`` (1 when ``D == 0``).
    loss : {"hinge", "squared_hinge"}, default "hinge"
        The loss of eq. L (the squared hinge is ``0.5 * relu(r) ** 2``).
    backend : {"auto", "fused", "reference"}, default "auto"
        "auto": the compiled kernels when the extension loaded and supports the device, else the
        reference with a ``RuntimeWarning`` (once per process); "fused": compiled or an error;
        "reference": :func:`cina_ext.reference.attention_hinge` (see
        :func:`cina_ext.ops.resolve_backend`).

    Returns
    -------
    loss : Tensor, shape (B,)
        eq. L per dataset (sum over valid rows of hinge + penalty).
    out : Tensor, shape (B, N)
        Attention output ``softmax(S) V``; 0 at padded rows.
    lse : Tensor, shape (B, N)
        Row log-normaliser of the scores; 0 at padded rows.

    All three are float32 for bfloat16 inputs, else in K's dtype.  They are differentiable in
    ``K``, ``V`` and ``b`` (``lse`` in ``K`` as well); ``W``, ``lam`` and ``mask`` get no
    gradient.

    Raises
    ------
    ValueError
        ``loss`` not one of the losses; ``K`` not 3-D; ``V``, ``W``, ``b`` or ``mask`` of the
        wrong shape; an input on another device than ``K``; ``lam`` of the wrong shape, not
        positive (tensor) or not positive and finite (float).
    TypeError
        ``K``, ``V``, ``W`` or ``b`` not a tensor; ``K`` not float32/float64/bfloat16; ``V``,
        ``W`` or ``b`` of another dtype than ``K``; ``mask`` not a bool tensor.
    RuntimeError
        ``backend="fused"`` when the compiled extension (or its kernels for the device) is
        unavailable.

    Notes
    -----
    Never materialises the N x N scores on the compiled path.  When no input requires a gradient
    (or grad mode is off) the forward-only path runs and no gradient work is done.  bfloat16
    inputs (all of K, V, W, b) are computed in float32 -- upcast on entry, float32
    accumulation, float32 outputs; their gradients come back in bfloat16 through the upcast.

    Examples
    --------
    >>> import torch
    >>> from cina_ext.ops import attention_hinge
    >>> K = torch.randn(2, 5, 4, dtype=torch.float64)
    >>> V = torch.randn(2, 5, dtype=torch.float64)
    >>> W = torch.tensor([[1., -1., 1., -1., 1.]] * 2, dtype=torch.float64)
    >>> b = torch.zeros(2, dtype=torch.float64)
    >>> loss, out, lse = attention_hinge(K, V, W, b, 0.1, backend="reference")
    >>> loss.shape, out.shape, lse.shape
    (torch.Size([2]), torch.Size([2, 5]), torch.Size([2, 5]))
    """
    _check_attention_inputs(K, V, W, b, lam, mask, loss)
    if K.dtype == torch.bfloat16:
        K, V, W, b = (t.float() for t in (K, V, W, b))
    Bsz, N, D = K.shape
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    if not torch.compiler.is_compiling():
        _check_attention_values(K, V, W, b, lam, mask, scale)
    if resolve_backend(backend, K.device) == "reference":
        return reference.attention_hinge(K, V, W, b, lam, mask, scale=scale, loss=loss)
    lam_t = _lam_tensor(lam, Bsz, K).contiguous()
    need_aux = torch.is_grad_enabled() and (K.requires_grad or V.requires_grad or b.requires_grad)
    loss_t, out, lse, _, _ = torch.ops.cina.attention_hinge_fwd(
        K.contiguous(),
        V.contiguous(),
        W.contiguous(),
        b.contiguous(),
        lam_t,
        None if mask is None else mask.contiguous(),  # the op reads None as "every unit is real"
        float(scale),
        _LOSS_CODES[loss],
        bool(need_aux),
    )
    return loss_t, out, lse


# --- autograd and fake (meta) implementations of the compiled operators -------------------------


def _register() -> None:
    if not has_extension():
        return

    @torch.library.register_fake("cina::attention_hinge_fwd")
    def _fwd_fake(K, V, W, b, lam, mask, scale, loss_kind, need_aux):
        Bsz, N, D = K.shape
        aux_shape = (Bsz, N, D) if need_aux else (0,)
        return (
            K.new_empty((Bsz,)),
            K.new_empty((Bsz, N)),
            K.new_empty((Bsz, N)),
            K.new_empty(aux_shape),
            K.new_empty(aux_shape),
        )

    @torch.library.register_fake("cina::attention_hinge_bwd")
    def _bwd_fake(K, V, W, b, lam, mask, out, lse, A, Bk, g_loss, g_out, g_lse, scale, loss_kind):
        return torch.empty_like(K), torch.empty_like(V), torch.empty_like(b)

    def _setup_context(ctx, inputs, output):
        K, V, W, b, lam, mask, scale, loss_kind, need_aux = inputs
        loss_t, out, lse, A, Bk = output
        ctx.save_for_backward(K, V, W, b, lam, mask, out, lse, A, Bk)
        ctx.scale = scale
        ctx.loss_kind = loss_kind
        ctx.need_aux = need_aux

    def _backward(ctx, g_loss, g_out, g_lse, g_A, g_Bk):
        K, V, W, b, lam, mask, out, lse, A, Bk = ctx.saved_tensors
        if torch.is_grad_enabled() and any(ctx.needs_input_grad):
            # create_graph=True: the compiled backward is not itself differentiable, so a second
            # derivative through it would silently be zero
            raise RuntimeError(
                "double backward (e.g. a Hessian-vector product, create_graph=True) through "
                "cina_ext.ops.attention_hinge with the compiled backend is not implemented; "
                "use backend='reference' for second derivatives"
            )
        if not ctx.need_aux:
            # the forward-only call kept no auxiliaries: recompute them (one more forward pass)
            _, _, _, A, Bk = torch.ops.cina.attention_hinge_fwd(K, V, W, b, lam, mask, ctx.scale, ctx.loss_kind, True)
        g_loss = torch.zeros_like(b) if g_loss is None else g_loss.contiguous()
        g_out = torch.zeros_like(V) if g_out is None else g_out.contiguous()
        g_lse = torch.zeros_like(V) if g_lse is None else g_lse.contiguous()
        dK, dV, db = torch.ops.cina.attention_hinge_bwd(
            K, V, W, b, lam, mask, out, lse, A, Bk, g_loss, g_out, g_lse, ctx.scale, ctx.loss_kind
        )
        return dK, dV, None, db, None, None, None, None, None

    torch.library.register_autograd("cina::attention_hinge_fwd", _backward, setup_context=_setup_context)


_register()
