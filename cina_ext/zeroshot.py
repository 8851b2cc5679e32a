"""Zero-shot CInA (method.md §5-6, Algorithms 2-3): one network amortises the balancing problem.

A :class:`CInAZeroShotModel` maps a whole dataset ``(X, W)`` to keys ``K``, scalar values ``V``
and offsets; its final layer is the tied-key attention of :func:`cina_ext.ops.attention_hinge`.
Training (:func:`train_zero_shot`, ``cina train``) streams synthetic datasets; inference
(:class:`CInAZeroShot`, ``cina estimate --method zero-shot``) is one forward pass -- no
per-dataset optimisation.  Two kinds of model, chosen by ``estimands``:

* ``("overlap",)``: the paper's self-supervised loss, eq. L, and the eq. R read-out; the weights
  target the overlap population of the SVM dual (method.md §2, §6).
* ``("ate", "att")`` (the default; any non-empty subset): one model for both estimands, told
  which one by a learned estimand embedding added to every token.  The loss is the balancing
  objective of method.md §6 evaluated on the network's weights -- ``sum_a MMD^2(arm a, target) +
  balance_lam ||w_a||^2`` with the RBF kernel ``exp(-||z - z'||^2 / p)`` on the standardised
  covariates (target: the whole sample for "ate", the treated for "att") -- i.e. exactly the
  problem :class:`cina_ext.estimators.KernelBalancing` solves, so the exact solver is the model's
  ground truth and can refine its output (``CInAZeroShot(refine=...)``).  The read-out follows the
  KKT form of that problem (weights = a monotone function of the attention-computed MMD witness
  plus a per-arm offset) with ``unroll`` witness steps inside the network (see
  :meth:`CInAZeroShotModel.balance_weights`).  ZS-S (``supervised_weight > 0``) adds
  ``|tau_hat - tau| / sd(Y)`` on the synthetic datasets' known truth.

Choices (documented here, method.md marks them as ours)
-------------------------------------------------------
* **Standardisation** happens inside the model, per dataset: masked mean and (population) sd over
  the valid units of each feature; sd below ``1e-8`` is replaced by 1 (a constant column becomes 0).
* **Covariate padding**: at most ``max_features`` covariates (default 32); fewer are zero-padded and
  a feature mask zeroes the padded columns after standardisation, so padded features contribute
  exactly nothing.  More covariates raise ``ValueError``.
* **Architecture**: per-unit token ``emb_x(x) + emb_w * w``; ``n_layers``
  ``torch.nn.TransformerEncoderLayer`` (batch_first, pre-LN, key-padding mask, no positional
  encoding: units are exchangeable).  Keys come from the *covariate path only*
  (``K = LayerNorm(MLP(x))`` without affine parameters, so ``||K_i|| = sqrt(key_dim)`` and every
  score is bounded by ``sqrt(key_dim)``: no overflow, method.md §7.1/§7.3; ate/att models add
  a learned temperature in [1/4, 4]).  The value head reads the encoder output; the intercept
  (offset) head reads the masked mean of the encoder output.  The encoder layers are evaluated
  with ``scaled_dot_product_attention`` (a fused flash kernel on the CPU too).
* **Scale of lam** (overlap models): the user-facing ``lam`` is relative, ``lam_abs = lam / n_valid`` per dataset
  (the same rule as :class:`cina_ext.estimators.CInA` for "overlap"; with keys of bounded norm
  ``h ~ N``, so ``lam_abs * h`` is O(lam) at every N).  The value head is parametrised as
  ``V = W * softplus(v) / lam``: the optimal V has the sign of W (eq. R with alpha >= 0), every
  unit gets alpha > 0 (so no arm can end with zero weight), and ``alpha = lam_abs V h W =
  softplus(v) h / N`` is O(1) whatever lam and N are.
* **Loss across datasets**: overlap: mean over datasets of ``L_d / n_d`` (eq. L divided by the
  dataset's number of valid units), so datasets of different N carry equal weight; for each
  dataset this is the same minimisation problem as eq. L.  ate/att: the mean of the per-dataset
  balancing objectives (already O(1) at every N), each dataset's estimand drawn uniformly from
  the model's estimands by the data stream.
* **Balancing penalty** (ate/att): ``balance_lam = 0.01`` on ``||w_a||^2`` (weights summing to
  one), the :class:`cina_ext.estimators.KernelBalancing` default for these estimands.
* **Data stream**: the datasets of step ``s`` are a pure function of ``(seed, s, index in the
  global batch)``, so resuming needs no data-loader state and, under DistributedDataParallel,
  rank ``r`` draws the disjoint slice ``[r * B / world, (r + 1) * B / world)`` of the global batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from . import ops
from . import reference
from ._validation import check_design, check_estimand, check_outcome
from .estimators import _WeightingEstimator

__all__ = [
    "CInAZeroShotModel",
    "export_checkpoint",
    "pretrained_path",
    "ZeroShotConfig",
    "train_zero_shot",
    "collate_datasets",
    "load_checkpoint",
    "CInAZeroShot",
]

DEFAULT_LAM = 0.01  # relative; lam_abs = lam / n_valid (module docstring)
MATERIALISE_LIMIT = 1 << 25  # entries of the (B, N, N) attention matrix the unrolled steps may form
DEFAULT_BALANCE_LAM = 0.01  # ate/att: ridge on the weights, the KernelBalancing default
_SD_FLOOR = 1e-8


# =============================================================================================
# model
# =============================================================================================

class CInAZeroShotModel(nn.Module):
    """Amortised CInA network: ``forward(X, W, mask, feature_mask) -> (K, V, b)``.

    Shapes: ``X`` (B, N, p) with ``p <= max_features``; ``W`` (B, N) in {-1, +1}; ``mask`` (B, N)
    bool (valid units); ``feature_mask`` (B, p) bool (valid covariates).  Returns ``K``
    (B, N, key_dim), ``V`` (B, N) (zero on padded units), ``b`` (B,).  See the module docstring.
    """

    def __init__(self, max_features: int = 32, d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
                 dim_feedforward: int = 128, key_dim: int = 16, dropout: float = 0.0,
                 lam: float = DEFAULT_LAM, loss: str = "hinge", estimands: Sequence[str] = ("ate", "att"),
                 balance_lam: float = DEFAULT_BALANCE_LAM, unroll: int = 8):
        super().__init__()
        estimands = (estimands,) if isinstance(estimands, str) else tuple(str(e) for e in estimands)
        if not estimands or len(set(estimands)) != len(estimands) or not (
                estimands == ("overlap",) or set(estimands) <= {"ate", "att"}):
            raise ValueError(f"estimands must be ('overlap',) or a non-empty subset of ('ate', 'att') without "
                             f"repeats, got {estimands!r}")
        if not (float(balance_lam) > 0 and math.isfinite(float(balance_lam))):
            raise ValueError(f"balance_lam must be a positive finite number, got {balance_lam!r}")
        if int(max_features) < 1:
            raise ValueError(f"max_features must be >= 1, got {max_features}")
        if not (float(lam) > 0 and math.isfinite(float(lam))):
            raise ValueError(f"lam must be a positive finite number, got {lam!r}")
        if loss not in reference.LOSS_KINDS:
            raise ValueError(f"loss must be one of {reference.LOSS_KINDS}, got {loss!r}")
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.config = dict(max_features=int(max_features), d_model=int(d_model), n_heads=int(n_heads),
                           n_layers=int(n_layers), dim_feedforward=int(dim_feedforward),
                           key_dim=int(key_dim), dropout=float(dropout), lam=float(lam), loss=str(loss),
                           estimands=estimands, balance_lam=float(balance_lam), unroll=int(unroll))
        if int(unroll) < 0:
            raise ValueError(f"unroll must be >= 0, got {unroll!r}")
        self.unroll = int(unroll) if estimands != ("overlap",) else 0
        self.materialise_unroll = True  # see balance_weights (a switch for tests, not a parameter)
        self.estimands = estimands
        self.balancing = estimands != ("overlap",)
        self.balance_lam = float(balance_lam)
        self.max_features = int(max_features)
        self.lam = float(lam)
        self.loss_kind = str(loss)
        self.emb_x = nn.Linear(self.max_features, d_model)
        self.emb_w = nn.Parameter(torch.randn(d_model) * 0.1)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=dim_feedforward, dropout=dropout,
                                       batch_first=True, norm_first=True)
            for _ in range(int(n_layers))
        ])
        self.norm = nn.LayerNorm(d_model)
        self.key_head = nn.Sequential(nn.Linear(self.max_features, d_model), nn.GELU(), nn.Linear(d_model, key_dim),
                                      nn.LayerNorm(key_dim, elementwise_affine=False))
        self.value_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))
        # overlap: one intercept b; ate/att: one offset nu per arm (treated, control)
        self.intercept_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(),
                                            nn.Linear(d_model, 2 if self.balancing else 1))
        if self.balancing:
            # which estimand the weights are for (added to every token), and a key temperature:
            # scores are t^2 K_i.K_j / sqrt(key_dim) with t = exp(log_t) in [1/4, 4]
            self.emb_estimand = nn.Parameter(torch.randn(len(estimands), d_model) * 0.1)
            self.log_key_temp = nn.Parameter(torch.zeros(()))
            # step sizes of the unrolled witness (mirror-descent) steps of balance_weights
            self.unroll_step = nn.Parameter(torch.zeros(self.unroll))
        with torch.no_grad():  # start with alpha ~ softplus(0) h / N, no unit dominating
            self.value_head[-1].weight.mul_(0.1)

    # -- input handling ------------------------------------------------------------------------
    def _check(self, X: Tensor, W: Tensor, mask: Optional[Tensor], feature_mask: Optional[Tensor]):
        for name, t in (("X", X), ("W", W)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if X.dim() != 3:
            raise ValueError(f"X must have shape (B, N, p), got {tuple(X.shape)}")
        B, N, p = X.shape
        if p > self.max_features:
            raise ValueError(f"X has {p} covariates but the model accepts at most max_features="
                             f"{self.max_features}; reduce the covariates or train a model with a larger max_features")
        if p < 1:
            raise ValueError("X has no covariate columns")
        if tuple(W.shape) != (B, N):
            raise ValueError(f"W must have shape {(B, N)} to match X {tuple(X.shape)}, got {tuple(W.shape)}")
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=X.device)
        if feature_mask is None:
            feature_mask = torch.ones(B, p, dtype=torch.bool, device=X.device)
        if mask.dtype != torch.bool or tuple(mask.shape) != (B, N):
            raise ValueError(f"mask must be a bool tensor of shape {(B, N)}, got {mask.dtype} {tuple(mask.shape)}")
        if feature_mask.dtype != torch.bool or tuple(feature_mask.shape) != (B, p):
            raise ValueError(f"feature_mask must be a bool tensor of shape {(B, p)}, "
                             f"got {feature_mask.dtype} {tuple(feature_mask.shape)}")
        if not bool(mask.any(-1).all()):
            raise ValueError("every dataset needs at least one valid unit (a row of mask is all False)")
        Wv = torch.where(mask, W, torch.ones_like(W))
        if not bool(((Wv == 1) | (Wv == -1)).all()):
            raise ValueError("W must take values in {-1, +1} on valid units (W = 2T - 1)")
        if not bool(torch.isfinite(torch.where(mask.unsqueeze(-1), X, torch.zeros_like(X))).all()):
            raise ValueError("X contains NaN or Inf on valid units")
        return mask, feature_mask

    def standardise(self, X: Tensor, mask: Tensor, feature_mask: Tensor) -> Tensor:
        """Per-dataset masked standardisation, zero-padded to ``max_features`` columns."""
        m = mask.unsqueeze(-1).to(X.dtype)
        n = m.sum(1, keepdim=True)
        Xz = torch.where(mask.unsqueeze(-1), X, torch.zeros_like(X))
        mean = Xz.sum(1, keepdim=True) / n
        var = (((Xz - mean) * m) ** 2).sum(1, keepdim=True) / n
        sd = var.sqrt()
        sd = torch.where(sd > _SD_FLOOR, sd, torch.ones_like(sd))
        Z = (Xz - mean) / sd * m * feature_mask.unsqueeze(1).to(X.dtype)
        p = X.shape[-1]
        if p < self.max_features:
            Z = torch.nn.functional.pad(Z, (0, self.max_features - p))
        return Z

    # -- the network ---------------------------------------------------------------------------
    def estimand_index(self, estimand, B: int, device) -> Tensor:
        """(B,) index into ``self.estimands`` from None (the first), a name, or names/indices per dataset."""
        if estimand is None:
            return torch.zeros(B, dtype=torch.long, device=device)
        if isinstance(estimand, str):
            estimand = [estimand] * B
        if isinstance(estimand, Tensor):
            idx = estimand.to(device=device, dtype=torch.long).reshape(-1)
        else:
            names = list(estimand)
            bad = [e for e in names if e not in self.estimands]
            if bad:
                raise ValueError(f"this model was trained for the estimand(s) {self.estimands}, not {bad[0]!r}")
            idx = torch.tensor([self.estimands.index(e) for e in names], dtype=torch.long, device=device)
        if idx.numel() != B or bool(((idx < 0) | (idx >= len(self.estimands))).any()):
            raise ValueError(f"estimand must give one of {self.estimands} for each of the {B} datasets")
        return idx

    def forward(self, X: Tensor, W: Tensor, mask: Optional[Tensor] = None,
                feature_mask: Optional[Tensor] = None, estimand=None) -> Tuple[Tensor, Tensor, Tensor]:
        """``(K, V, b)``.  Overlap models: ``b`` (B,) is eq. L's intercept and ``sign(V) = W``.
        ate/att models: ``V`` is free, ``b`` (B, 2) holds the per-arm offsets (treated, control)
        and ``estimand`` (None = the first of ``self.estimands``, a name, or one per dataset)
        selects the target population."""
        mask, feature_mask = self._check(X, W, mask, feature_mask)
        Z = self.standardise(X, mask, feature_mask)
        Wz = torch.where(mask, W, torch.zeros_like(W))
        h = self.emb_x(Z) + Wz.unsqueeze(-1) * self.emb_w
        if self.balancing:
            h = h + self.emb_estimand[self.estimand_index(estimand, X.shape[0], X.device)].unsqueeze(1)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, N): every unit attends to the valid units
        for layer in self.layers:
            h = _encoder_layer(layer, h, attn_mask)
        h = self.norm(h)
        h = torch.where(mask.unsqueeze(-1), h, torch.zeros_like(h))
        K = self.key_head(Z)
        if self.balancing:
            K = K * self.log_key_temp.clamp(-math.log(4.0), math.log(4.0)).exp()
        K = torch.where(mask.unsqueeze(-1), K, torch.zeros_like(K))
        n = mask.sum(-1, keepdim=True).to(h.dtype)
        pooled = h.sum(1) / n
        if self.balancing:
            V = torch.where(mask, self.value_head(h).squeeze(-1), torch.zeros_like(W))
            return K, V, self.intercept_head(pooled)
        # sign(V) = W (the sign of the optimal V, eq. R with alpha >= 0), so alpha > 0 for every unit
        V = Wz * torch.nn.functional.softplus(self.value_head(h).squeeze(-1)) / self.lam
        V = torch.where(mask, V, torch.zeros_like(V))
        b = self.intercept_head(pooled).squeeze(-1)
        return K, V, b

    # -- objective and read-out: overlap (eq. L / eq. R) ------------------------------------------
    def lam_abs(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """Absolute penalty per dataset, ``lam / n_valid`` (B,)."""
        return self.lam / mask.sum(-1).to(dtype)

    def objective(self, K: Tensor, V: Tensor, b: Tensor, W: Tensor, mask: Tensor, *,
                  backend: str = "auto") -> Tensor:
        """Mean over datasets of eq. L / n_valid, from the outputs of :meth:`forward` (overlap models)."""
        if self.balancing:
            raise ValueError("objective() is eq. L of an overlap model; this model targets "
                             f"{self.estimands}: use balance_weights() and balance_objective()")
        lam = self.lam_abs(mask, K.dtype)
        Wz = torch.where(mask, W, torch.ones_like(W))
        L, _, _ = ops.attention_hinge(K, V, Wz, b, lam, mask, loss=self.loss_kind, backend=backend)
        return (L / mask.sum(-1).to(L.dtype)).mean()

    # -- read-out and objective: ate / att (method.md §6) ---------------------------------------
    def balance_weights(self, K: Tensor, V: Tensor, b: Tensor, W: Tensor, mask: Tensor, est_idx: Tensor, *,
                        backend: str = "auto") -> Tensor:
        """ATE/ATT analogue of eq. R, computed by the fused attention operator (method.md §6).

        The KKT conditions of the balancing problem say the optimal weights are a monotone function
        of the MMD witness ``g = softmax(S) V`` plus a per-arm offset.  So: (1) the heads give
        ``V`` and the offsets ``nu``; ``w`` = per-arm softmax of ``[softmax(S) V]_i + nu_arm(i)``;
        (2) ``unroll`` witness steps refine it inside the network, each one attention call with the
        same keys: ``d^a = w 1[arm a] - m`` (``m`` the target distribution: uniform over all units
        for "ate", over the treated for "att"), ``g^a = softmax(S) d^a`` (the witness of arm a's
        imbalance in the learned kernel), ``log w_i -= eta_t n [g^{a(i)}]_i`` and renormalise per
        arm (exponentiated-gradient steps with learned step sizes ``eta_t``).  Every step is one
        fixed layer of the forward pass, not a per-dataset optimisation.  Each arm sums to one;
        for "att" the treated get ``1/n1``.
        """
        B = K.shape[0]
        Wz = torch.where(mask, W, torch.ones_like(W))
        zero_b = torch.zeros(B, dtype=K.dtype, device=K.device)
        one_b = torch.ones_like(zero_b)
        _, out, lse = ops.attention_hinge(K, V, Wz, zero_b, one_b, mask, loss=self.loss_kind, backend=backend)
        treated = mask & (W > 0)
        control = mask & (W < 0)
        nu = torch.where(treated, b[:, 0:1], b[:, 1:2])
        logits = out + nu
        w = _arm_softmax(logits, treated, control)
        mf = mask.to(K.dtype)
        n = mf.sum(-1, keepdim=True)
        is_att = torch.zeros(B, 1, dtype=torch.bool, device=K.device)
        if "att" in self.estimands:
            is_att = (est_idx == self.estimands.index("att")).unsqueeze(-1)
        t1 = treated.to(K.dtype)
        t0 = control.to(K.dtype)
        target = torch.where(is_att, t1 / t1.sum(-1, keepdim=True), mf / n)
        if self.unroll:
            # The steps reuse the attention matrix P = softmax(S) of the first pass.  Up to
            # MATERIALISE_LIMIT entries P is formed once from the fused op's lse (N^2 exps once;
            # each step is then a matrix product).  Beyond, each step is one fused flash-attention
            # pass (scaled_dot_product_attention, O(N) memory) with both arms' imbalances as the
            # value columns, zero-padded to the key width (the flash kernel needs equal widths).
            scale = 1.0 / math.sqrt(K.shape[-1]) if K.shape[-1] > 0 else 1.0
            N = K.shape[1]
            dense = self.materialise_unroll and B * N * N <= MATERIALISE_LIMIT
            if dense:
                P = _attention_rows(K, lse, mask, mask.unsqueeze(-2), scale, 0, N)
            else:
                width = max(2, K.shape[-1])
                Kq = torch.nn.functional.pad(K, (0, width - K.shape[-1])).unsqueeze(1)
                attn_mask = mask[:, None, None, :]
            for t in range(self.unroll):
                D = torch.stack([w * t1 - target, w * t0 - target], -1)  # (B, N, 2)
                if dense:
                    g2 = P @ D
                else:
                    Dv = torch.nn.functional.pad(D, (0, width - 2)).unsqueeze(1)
                    g2 = torch.nn.functional.scaled_dot_product_attention(
                        Kq, Kq, Dv, attn_mask=attn_mask, scale=scale)[:, 0, :, :2]
                g = torch.where(treated, g2[..., 0], g2[..., 1]) * n
                eta = torch.nn.functional.softplus(self.unroll_step[t])
                logits = logits - eta * g
                w = _arm_softmax(logits, treated, control)
        n1 = t1.sum(-1, keepdim=True)
        return torch.where(is_att & treated, 1.0 / n1, w)

    def balance_objective(self, X: Tensor, W: Tensor, mask: Tensor, feature_mask: Tensor, w: Tensor,
                          est_idx: Tensor) -> Tensor:
        """Per-dataset balancing objective (B,) of weights ``w`` (method.md §6), >= 0.

        ate: ``sum_a MMD^2(arm a weighted by w, whole sample) + balance_lam ||w_a||^2``; att: the
        same for the control arm against the treated.  MMD with the RBF kernel
        ``exp(-||z - z'||^2 / p)`` on the per-dataset standardised covariates ``z`` (``p`` valid
        covariates): the problem :class:`cina_ext.estimators.KernelBalancing` solves exactly with
        its defaults, so its optimum is the exact solver's objective (plus a constant).
        """
        Z = self.standardise(X, mask, feature_mask)
        p = feature_mask.sum(-1).to(Z.dtype).clamp_min(1.0)
        sq = (Z * Z).sum(-1)
        D2 = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * Z @ Z.transpose(-1, -2)).clamp_min(0.0)
        Kr = torch.exp(-D2 / p.view(-1, 1, 1))
        mf = mask.to(Z.dtype)
        t1 = (mask & (W > 0)).to(Z.dtype)
        t0 = (mask & (W < 0)).to(Z.dtype)
        w = w * mf

        def mmd(weights: Tensor, target: Tensor) -> Tensor:
            d = weights - target
            return (d.unsqueeze(-2) @ Kr @ d.unsqueeze(-1)).reshape(-1)

        all_mean = mf / mf.sum(-1, keepdim=True)
        ate = (mmd(w * t1, all_mean) + mmd(w * t0, all_mean)
               + self.balance_lam * ((w * t1) ** 2 + (w * t0) ** 2).sum(-1))
        if "att" not in self.estimands:
            return ate
        treated_mean = t1 / t1.sum(-1, keepdim=True)
        att = mmd(w * t0, treated_mean) + self.balance_lam * ((w * t0) ** 2).sum(-1)
        return torch.where(est_idx == self.estimands.index("att"), att, ate)

    # -- both kinds ------------------------------------------------------------------------------
    def loss(self, X: Tensor, W: Tensor, mask: Optional[Tensor] = None, feature_mask: Optional[Tensor] = None,
             *, estimand=None, backend: str = "auto") -> Tensor:
        """Self-supervised training loss (scalar): mean over datasets of eq. L / n_valid (overlap)
        or of :meth:`balance_objective` (ate/att)."""
        mask, feature_mask = self._check(X, W, mask, feature_mask)
        if not self.balancing:
            K, V, b = self(X, W, mask, feature_mask)
            return self.objective(K, V, b, W, mask, backend=backend)
        idx = self.estimand_index(estimand, X.shape[0], X.device)
        K, V, b = self(X, W, mask, feature_mask, idx)
        w = self.balance_weights(K, V, b, W, mask, idx, backend=backend)
        return self.balance_objective(X, W, mask, feature_mask, w, idx).mean()

    @torch.no_grad()
    def weights(self, X: Tensor, W: Tensor, mask: Optional[Tensor] = None, feature_mask: Optional[Tensor] = None,
                *, estimand=None, backend: str = "auto", return_alpha: bool = False):
        """Balancing weights (B, N), non-negative, summing to one in each arm.

        Overlap models: the eq. R read-out (``alpha`` = the dual variables).  ate/att models:
        :meth:`balance_weights` (``alpha`` = the weights themselves, the solver's convention for
        these estimands, so they can warm-start :func:`cina_ext.solver.dual_solve`).  Raises
        ``ValueError`` if an arm of some dataset gets zero total weight.
        """
        mask, feature_mask = self._check(X, W, mask, feature_mask)
        if self.balancing:
            idx = self.estimand_index(estimand, X.shape[0], X.device)
            K, V, b = self(X, W, mask, feature_mask, idx)
            w = self.balance_weights(K, V, b, W, mask, idx, backend=backend)
            return (w, w) if return_alpha else w
        if estimand not in (None, "overlap"):
            raise ValueError(f"this model was trained for the estimand(s) {self.estimands}, not {estimand!r}")
        K, V, b = self(X, W, mask, feature_mask)
        lam = self.lam_abs(mask, K.dtype)
        Wz = torch.where(mask, W, torch.ones_like(W))
        _, _, lse = ops.attention_hinge(K, V, Wz, b, lam, mask, loss=self.loss_kind, backend=backend)
        alpha = reference.readout_alpha(V, Wz, lse, lam, mask, loss=self.loss_kind)
        w = reference.readout_weights(alpha, Wz, mask)
        return (w, alpha) if return_alpha else w


def _encoder_layer(layer: nn.TransformerEncoderLayer, h: Tensor, attn_mask: Tensor) -> Tensor:
    """``layer(h, src_key_padding_mask=~mask)`` (pre-LN, batch_first, dropout as in the layer)
    computed with ``scaled_dot_product_attention``, which on the CPU runs a fused flash kernel:
    measured 6x faster at 32 x 500 units than the module's masked-softmax path, same parameters
    (tests/test_zeroshot.py checks the two agree)."""
    sa = layer.self_attn
    B, N, E = h.shape
    H = sa.num_heads
    x = layer.norm1(h)
    q, k, v = torch.nn.functional.linear(x, sa.in_proj_weight, sa.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, N, H, E // H).transpose(1, 2) for t in (q, k, v))
    drop = sa.dropout if layer.training else 0.0
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
    a = sa.out_proj(a.transpose(1, 2).reshape(B, N, E))
    h = h + layer.dropout1(a)
    y = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(h)))))
    return h + layer.dropout2(y)


def _attention_rows(K: Tensor, lse: Tensor, mask: Tensor, pair_col: Tensor, scale: float, i0: int, i1: int) -> Tensor:
    """Rows ``i0:i1`` of the masked attention matrix ``exp(scale K K' - lse)`` (B, i1 - i0, N)."""
    # one fused (B, r, N) pass for scale K K' - lse; the mask only where padding exists
    S = torch.baddbmm(-lse[:, i0:i1].unsqueeze(-1), K[:, i0:i1], K.transpose(-1, -2), alpha=scale)
    if not bool(mask.all()):
        S = S.masked_fill(~(mask[:, i0:i1].unsqueeze(-1) & pair_col), float("-inf"))
    return torch.exp(S)


def _arm_softmax(logits: Tensor, treated: Tensor, control: Tensor) -> Tensor:
    """Softmax of ``logits`` over the treated units and, separately, over the control units (0 elsewhere)."""
    neg = torch.full_like(logits, float("-inf"))
    l1 = torch.where(treated, logits, neg)
    l0 = torch.where(control, logits, neg)
    # an arm without units gives a row of -inf: keep it finite (its weights are zero anyway)
    m1 = l1.amax(-1, keepdim=True).clamp_min(-1e30)
    m0 = l0.amax(-1, keepdim=True).clamp_min(-1e30)
    e1 = torch.exp(l1 - m1)
    e0 = torch.exp(l0 - m0)
    tiny = torch.finfo(logits.dtype).tiny
    s1 = e1.sum(-1, keepdim=True).clamp_min(tiny)
    s0 = e0.sum(-1, keepdim=True).clamp_min(tiny)
    return torch.where(treated, e1 / s1, torch.where(control, e0 / s0, torch.zeros_like(logits)))


# =============================================================================================
# batching
# =============================================================================================

def _as_xt(d) -> Tuple[np.ndarray, np.ndarray]:
    if hasattr(d, "X") and hasattr(d, "T"):
        return np.asarray(d.X, dtype=np.float64), np.asarray(d.T)
    if isinstance(d, (tuple, list)) and len(d) >= 2:
        return np.asarray(d[0], dtype=np.float64), np.asarray(d[1])
    raise TypeError(f"a dataset must be a CausalDataset or an (X, T[, Y]) tuple, got {type(d).__name__}")


def collate_datasets(datasets: Sequence, *, dtype=torch.float32, device="cpu"):
    """Pad datasets (objects with ``X``, ``T`` or ``(X, T, ...)`` tuples) to a common (N, p).

    Returns ``X`` (B, N, p), ``W`` (B, N) (+1 on padding), ``mask`` (B, N), ``feature_mask`` (B, p).
    """
    xts = [_as_xt(d) for d in datasets]
    if not xts:
        raise ValueError("no datasets to collate")
    B = len(xts)
    N = max(x.shape[0] for x, _ in xts)
    p = max(x.shape[1] for x, _ in xts)
    X = np.zeros((B, N, p))
    W = np.ones((B, N))
    mask = np.zeros((B, N), dtype=bool)
    fmask = np.zeros((B, p), dtype=bool)
    for i, (x, t) in enumerate(xts):
        n, q = x.shape
        X[i, :n, :q] = x
        W[i, :n] = 2.0 * np.asarray(t, dtype=np.float64) - 1.0
        mask[i, :n] = True
        fmask[i, :q] = True
    dev = torch.device(device)
    return (torch.as_tensor(X, dtype=dtype, device=dev), torch.as_tensor(W, dtype=dtype, device=dev),
            torch.as_tensor(mask, device=dev), torch.as_tensor(fmask, device=dev))


# =============================================================================================
# training (Algorithm 2)
# =============================================================================================

@dataclass
class ZeroShotConfig:
    """Training configuration for :func:`train_zero_shot` (plain data; stored in checkpoints)."""

    families: Tuple[str, ...] = ("setoguchi", "er")
    setting: str = "id"
    n_range: Tuple[int, int] = (64, 256)
    batch_size: int = 16          # global batch (datasets per step, summed over ranks)
    steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0     # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    backend: str = "auto"
    model: Dict[str, Any] = field(default_factory=dict)  # CInAZeroShotModel kwargs
    checkpoint_path: Optional[str] = None
    checkpoint_every: int = 0     # 0: only at the end (if checkpoint_path is set)
    resume: bool = True           # resume from checkpoint_path if it exists
    stop_after: Optional[int] = None  # stop (and checkpoint) once this step count is reached
    progress: bool = False
    supervised_weight: float = 0.0  # ZS-S: weight of |tau_hat - tau| / sd(Y) (0 = self-supervised ZS)
    amp: str = "none"             # "bf16": encoder under torch.autocast(bfloat16); final layer in dtype

    @classmethod
    def from_any(cls, config) -> "ZeroShotConfig":
        if isinstance(config, cls):
            return dataclasses.replace(config)
        if config is None:
            return cls()
        if isinstance(config, dict):
            unknown = set(config) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"unknown training config keys: {sorted(unknown)}")
            return cls(**config)
        raise TypeError(f"config must be a ZeroShotConfig or a dict, got {type(config).__name__}")

    def validate(self, world: int) -> None:
        if self.batch_size < 1 or self.batch_size % world != 0:
            raise ValueError(f"batch_size ({self.batch_size}) must be a positive multiple of the world size ({world})")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not self.families:
            raise ValueError("families must name at least one synthetic family")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")
        if not (self.supervised_weight >= 0 and math.isfinite(self.supervised_weight)):
            raise ValueError(f"supervised_weight must be a finite number >= 0, got {self.supervised_weight!r}")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {self.amp!r}")


def _draw_dataset(cfg: ZeroShotConfig, step: int, index: int, n_estimands: int = 1):
    """Dataset ``index`` of step ``step`` and the index of the estimand it trains (pure function)."""
    from .data import sample_datasets

    ss = np.random.SeedSequence([int(cfg.seed), int(step), int(index)])
    fam_rng = np.random.default_rng(ss.spawn(1)[0])
    family = cfg.families[int(fam_rng.integers(0, len(cfg.families)))]
    est = int(fam_rng.integers(0, max(1, int(n_estimands))))
    n_range = tuple(cfg.n_range) if not isinstance(cfg.n_range, int) else cfg.n_range
    return next(iter(sample_datasets(family, 1, n_range, seed=ss, setting=cfg.setting))), est


def _collate_outcomes(batch, estimands: Sequence[str], est_idx: Sequence[int], N: int, *, dtype, device):
    """Outcomes (B, N), truth (B,) for each dataset's estimand (NaN if unknown), sd(Y) (B,)."""
    Y = np.zeros((len(batch), N))
    tau = np.full(len(batch), np.nan)
    sd = np.ones(len(batch))
    for i, (d, e) in enumerate(zip(batch, est_idx)):
        Y[i, :d.n] = d.Y
        t = d.truth(estimands[e])
        tau[i] = np.nan if t is None else float(t)
        s = float(np.std(d.Y))
        sd[i] = s if s > 1e-12 else 1.0
    return (torch.as_tensor(Y, dtype=dtype, device=device), torch.as_tensor(tau, dtype=dtype, device=device),
            torch.as_tensor(sd, dtype=dtype, device=device))


def _lr_lambda(cfg: ZeroShotConfig):
    warm, total, floor = int(cfg.warmup_steps), int(cfg.steps), float(cfg.min_lr_ratio)

    def f(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        prog = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * prog))
    return f


def _rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s: Dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def _save_atomic(obj: Dict[str, Any], path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, *, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`train_zero_shot` (a dict; see ``_checkpoint``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no zero-shot checkpoint at {path!r}")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path!r} is not a CInA zero-shot checkpoint (missing model_state/model_config)")
    return ckpt


def export_checkpoint(src: str, dst: str) -> Dict[str, Any]:
    """Write a slim, inference-only copy of a training checkpoint (the shipped-model format).

    Keeps the weights (float32), the model and training configurations, the step count, the
    training time and a summary of the loss history; drops the optimizer, scheduler and RNG
    states.  Returns the dict written.
    """
    ckpt = load_checkpoint(src)
    hist = ckpt.get("history", {}).get("loss", [])
    slim = {
        "kind": "cina_ext.zeroshot", "model_config": ckpt["model_config"], "dtype": "float32",
        "model_state": {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["model_state"].items()},
        "step": int(ckpt.get("step", 0)), "train_config": ckpt.get("train_config"),
        "train_seconds": ckpt.get("train_seconds"), "world_size": ckpt.get("world_size"),
        "torch": ckpt.get("torch"),
        "loss_summary": {"first_100": float(np.mean(hist[:100])) if hist else None,
                         "last_100": float(np.mean(hist[-100:])) if hist else None},
    }
    _save_atomic(slim, dst)
    return slim


def model_from_checkpoint(ckpt: Union[str, Dict[str, Any]], *, map_location="cpu") -> CInAZeroShotModel:
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(str(ckpt), map_location=map_location)
    model = CInAZeroShotModel(**ckpt["model_config"])
    dtype = getattr(torch, ckpt.get("dtype", "float32"))
    model.to(dtype)
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model


def train_zero_shot(config=None) -> Tuple[CInAZeroShotModel, Dict[str, List[float]]]:
    """Algorithm 2: train a :class:`CInAZeroShotModel` on streamed synthetic datasets.

    ``config``: a :class:`ZeroShotConfig` or a dict of its fields.  Returns ``(model, history)``
    with ``history = {"step": [...], "loss": [...], "lr": [...]}`` (the loss is the global batch
    mean, identical on every rank).  Seeded and reproducible; with ``checkpoint_path`` set, an
    atomic checkpoint (model, optimizer, scheduler, RNG states, step, history) is written every
    ``checkpoint_every`` steps and at the end, and a later call with ``resume=True`` continues
    exactly where it stopped.  When ``torch.distributed`` is initialised the model is wrapped in
    ``DistributedDataParallel`` and each rank trains on its slice of the global batch; only rank 0
    writes checkpoints.  The returned model is the unwrapped module, in eval mode.
    """
    import torch.distributed as dist

    cfg = ZeroShotConfig.from_any(config)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    cfg.validate(world)
    dtype = getattr(torch, cfg.dtype)
    device = torch.device(cfg.device)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2 ** 32))
    random.seed(cfg.seed)
    model = CInAZeroShotModel(**cfg.model).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    history: Dict[str, List[float]] = {"step": [], "loss": [], "lr": []}
    step = 0
    seconds_before = 0.0  # training time of earlier runs of a resumed schedule

    if cfg.checkpoint_path and cfg.resume and os.path.isfile(cfg.checkpoint_path):
        ckpt = load_checkpoint(cfg.checkpoint_path, map_location=device)
        if ckpt["model_config"] != model.config:
            raise ValueError("checkpoint model configuration differs from config.model; cannot resume")
        model.load_state_dict(ckpt["model_state"])
        opt.load_state_dict(ckpt["optimizer_state"])
        sched.load_state_dict(ckpt["scheduler_state"])
        _set_rng_state(ckpt["rng_state"])
        step = int(ckpt["step"])
        history = {k: list(v) for k, v in ckpt["history"].items()}
        seconds_before = float(ckpt.get("train_seconds", 0.0))
    started = time.perf_counter()

    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model)

    def checkpoint() -> None:
        if rank != 0 or not cfg.checkpoint_path:
            return
        _save_atomic({
            "model_state": model.state_dict(), "model_config": model.config, "dtype": cfg.dtype,
            "optimizer_state": opt.state_dict(), "scheduler_state": sched.state_dict(),
            "rng_state": _rng_state(), "step": step, "history": history,
            "train_config": dataclasses.asdict(cfg), "kind": "cina_ext.zeroshot",
            "train_seconds": seconds_before + time.perf_counter() - started, "world_size": world,
            "torch": torch.__version__,
        }, cfg.checkpoint_path)

    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, int(cfg.stop_after))
    bar = None
    if cfg.progress and rank == 0:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=step, desc="cina train", leave=False)
        except ImportError:  # tqdm is an optional extra
            bar = None

    per = cfg.batch_size // world
    model.train()
    if cfg.supervised_weight > 0 and not model.balancing:
        raise ValueError("supervised_weight (ZS-S) needs an ate/att model (model estimands), not an overlap one")
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.amp == "bf16"
           else contextlib.nullcontext())
    while step < end:
        idx = range(rank * per, (rank + 1) * per)
        drawn = [_draw_dataset(cfg, step, i, len(model.estimands)) for i in idx]
        batch = [d for d, _ in drawn]
        X, W, mask, fmask = collate_datasets(batch, dtype=dtype, device=device)
        if model.balancing:
            est_idx = torch.tensor([e for _, e in drawn], dtype=torch.long, device=device)
            with amp:
                K, V, b = net(X, W, mask, fmask, est_idx)
            K, V, b = K.to(dtype), V.to(dtype), b.to(dtype)
            w = model.balance_weights(K, V, b, W, mask, est_idx, backend=cfg.backend)
            loss = model.balance_objective(X, W, mask, fmask, w, est_idx).mean()
            if cfg.supervised_weight > 0:  # ZS-S (method.md §5): |tau_hat - tau| on datasets with known truth
                Y, tau, sdY = _collate_outcomes(batch, model.estimands, [e for _, e in drawn], X.shape[1],
                                                dtype=dtype, device=device)
                tau_hat = (w * torch.where(mask, W, torch.zeros_like(W)) * Y).sum(-1)
                known = torch.isfinite(tau)
                err = torch.where(known, (tau_hat - torch.nan_to_num(tau)).abs() / sdY, torch.zeros_like(tau))
                loss = loss + cfg.supervised_weight * err.mean()
        else:
            with amp:
                K, V, b = net(X, W, mask, fmask)
            K, V, b = K.to(dtype), V.to(dtype), b.to(dtype)
            loss = model.objective(K, V, b, W, mask, backend=cfg.backend)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip and cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr_now = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        step += 1
        logged = loss.detach().clone()
        if distributed:
            dist.all_reduce(logged)
            logged /= world
        if not math.isfinite(float(logged)):
            raise FloatingPointError(f"training loss became non-finite at step {step}")
        history["step"].append(step)
        history["loss"].append(float(logged))
        history["lr"].append(float(lr_now))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(logged):.4g}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            checkpoint()
    if bar is not None:
        bar.close()
    if cfg.checkpoint_path and not (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
        checkpoint()
    model.eval()
    return model, history


# =============================================================================================
# estimator (Algorithm 3)
# =============================================================================================

PRETRAINED_FILE = "cina_zs_ate.pt"  # the default: self-supervised (CInA-ZS)
PRETRAINED_FILES = {"zs": PRETRAINED_FILE, "zs-s": "cina_zs_s_ate.pt"}  # zs-s: the supervised variant


def pretrained_path(variant: str = "zs") -> str:
    """Path of a model shipped inside the package: ``"zs"`` (default) or ``"zs-s"`` (see
    docs/model_card.md)."""
    if variant not in PRETRAINED_FILES:
        raise ValueError(f"variant must be one of {tuple(PRETRAINED_FILES)}, got {variant!r}")
    # next to this module: the source tree for an editable install, site-packages for a wheel
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", PRETRAINED_FILES[variant])


class CInAZeroShot(_WeightingEstimator):
    """Zero-shot CInA estimator (Algorithm 3): one forward pass gives the balancing weights.

    ``model``: a trained :class:`CInAZeroShotModel`, or ``checkpoint``: a path written by
    :func:`train_zero_shot`; :meth:`from_pretrained` with no path loads the model shipped in the
    package (ATE by default, ATT on request; see docs/model_card.md).  ``estimand``: None = the
    model's first estimand, else one it was trained for ("ate"/"att", or "overlap" for eq.-L
    models).  ``refine``: after the forward pass, run up to this many iterations of the exact
    solver on the balancing problem the model was trained on (RBF kernel, ``balance_lam``),
    warm-started at the network's weights (method.md §7.2, "amortised + refined"; ate/att models
    only); 0 = pure zero-shot.  The shared interface applies: ``fit(X, T)`` sets ``weights_``
    (non-negative, one per arm), ``ate(Y)``, ``ate_interval(Y)`` (bootstrap: one forward pass per
    resample), ``balance()``, ``summary()``; ``estimate_many(datasets)`` does many datasets in
    padded batches.  Diagnostics after ``fit``: ``balance_objective_`` (the training objective of
    the weights returned; ate/att models, up to about 5,800 units since it forms the N x N RBF
    Gram matrix), and with ``refine``: ``raw_weights_``,
    ``raw_balance_objective_``, ``refine_kkt_``, ``refine_converged_``, ``refine_iterations_``.
    """

    _allowed_estimands = ("ate", "att", "overlap")
    _method_name = "zero-shot"

    def __init__(self, model: Optional[CInAZeroShotModel] = None, checkpoint: Optional[str] = None,
                 estimand: Optional[str] = None, refine: int = 0, backend: str = "auto", batch_size: int = 32,
                 random_state=None, verbose: bool = False):
        self.model = model
        self.checkpoint = checkpoint
        self.estimand = estimand
        self.refine = refine
        self.backend = backend
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    @classmethod
    def from_pretrained(cls, path: Optional[str] = None, **kwargs) -> "CInAZeroShot":
        """Load ``path`` (a :func:`train_zero_shot` checkpoint) or, with None, the shipped model."""
        if path is None:
            path = pretrained_path()
            if not os.path.isfile(path):
                raise FileNotFoundError(f"the pretrained model {PRETRAINED_FILE} is missing from this installation "
                                        f"({path}); reinstall cina-ext or pass the path of a checkpoint")
        est = cls(checkpoint=str(path), **kwargs)
        est._get_model()
        return est

    def _get_model(self) -> CInAZeroShotModel:
        if self.model is not None:
            if not isinstance(self.model, CInAZeroShotModel):
                raise TypeError(f"model must be a CInAZeroShotModel, got {type(self.model).__name__}")
            return self.model
        if self.checkpoint is None:
            raise ValueError("CInAZeroShot needs a trained model: pass model=..., checkpoint=PATH, or use "
                             "CInAZeroShot.from_pretrained() for the shipped one")
        cached = getattr(self, "_loaded", None)
        if cached is None or cached[0] != self.checkpoint:
            self._loaded = (self.checkpoint, model_from_checkpoint(self.checkpoint))
        return self._loaded[1]

    def _resolve_estimand(self):
        model = self._get_model()
        est = model.estimands[0] if self.estimand is None else self.estimand
        if not isinstance(est, str) or est.lower() not in model.estimands:
            raise ValueError(f"this zero-shot model was trained for the estimand(s) {model.estimands}; "
                             f"estimand={self.estimand!r} is not one of them")
        return est.lower()

    def _check_params(self):
        if isinstance(self.refine, bool) or not isinstance(self.refine, (int, np.integer)) or self.refine < 0:
            raise ValueError(f"refine must be an integer >= 0 (solver iterations), got {self.refine!r}")
        if self.refine and not self._get_model().balancing:
            raise ValueError("refine needs an ate/att model; this one computes the overlap weights of eq. L")

    @staticmethod
    def _dtype_device(model):
        p = next(model.parameters())
        return p.dtype, p.device

    def _weights_batch(self, model, items, estimand: str, diagnostics: bool = True):
        """Weights (B, N) as float64 numpy for ``items`` = [(X, T)], plus diagnostics per dataset."""
        dtype, device = self._dtype_device(model)
        X, W, mask, fm = collate_datasets(items, dtype=dtype, device=device)  # the model checks X
        model.eval()
        info: Dict[str, Tensor] = {}
        # the objective forms the (B, N, N) RBF Gram matrix: a diagnostic for moderate N only
        diagnostics = diagnostics and X.shape[0] * X.shape[1] ** 2 <= MATERIALISE_LIMIT
        with torch.no_grad():
            w = model.weights(X, W, mask, fm, estimand=estimand, backend=self.backend)
            if model.balancing:
                idx = model.estimand_index(estimand, X.shape[0], X.device)
                if diagnostics:
                    info["balance_objective"] = model.balance_objective(X, W, mask, fm, w, idx)
                if self.refine:
                    info["raw_weights"] = w
                    if diagnostics:
                        info["raw_balance_objective"] = info["balance_objective"]
                    Z = model.standardise(X, mask, fm).double()
                    gamma = 1.0 / fm.sum(-1).double().clamp_min(1.0)
                    from .solver import dual_solve

                    res = dual_solve(Z, W.double(), model.balance_lam, kernel="rbf", gamma=gamma, estimand=estimand,
                                     mask=mask, x0=w.double(), max_iter=int(self.refine), backend="fused")
                    w = res.weights  # float64, as the solver returns it
                    info["refine_kkt"] = res.kkt
                    info["refine_converged"] = res.converged
                    info["refine_iterations"] = res.iterations
                    if diagnostics:
                        info["balance_objective"] = model.balance_objective(X, W, mask, fm, w.to(dtype), idx)

        def to_numpy(t: Tensor) -> np.ndarray:
            return (t.double() if t.is_floating_point() else t).cpu().numpy()

        return to_numpy(w), {k: to_numpy(v) for k, v in info.items()}

    def _fit_core(self, X, T, seed, *, bootstrap=False):
        model = self._get_model()
        w, info = self._weights_batch(model, [(X, T)], self.estimand_)
        state = {"weights": w[0]}
        for k, v in info.items():
            state[k] = v[0]
        return state

    def fit(self, X, T):
        super().fit(X, T)
        st = self._state
        if "balance_objective" in st:
            self.balance_objective_ = float(st["balance_objective"])
        if self.refine:
            self.raw_weights_ = np.asarray(st["raw_weights"])
            if "raw_balance_objective" in st:
                self.raw_balance_objective_ = float(st["raw_balance_objective"])
            self.refine_kkt_ = float(st["refine_kkt"])
            self.refine_converged_ = bool(st["refine_converged"])
            self.refine_iterations_ = int(st["refine_iterations"])
        return self

    def _details(self):
        d: Dict[str, Any] = {"estimand_trained": list(self._get_model().estimands), "refine": int(self.refine)}
        if hasattr(self, "balance_objective_"):
            d["balance_objective"] = self.balance_objective_
        if self.refine:
            d.update(raw_balance_objective=getattr(self, "raw_balance_objective_", None), refine_kkt=self.refine_kkt_,
                     refine_converged=self.refine_converged_)
        return d

    def estimate_many(self, datasets: Sequence, Y: Optional[Sequence] = None) -> np.ndarray:
        """Estimates for many datasets (CausalDataset objects or ``(X, T, Y)`` tuples), batched."""
        model = self._get_model()
        self._check_params()
        estimand = check_estimand(self._resolve_estimand(), self._allowed_estimands)
        datasets = list(datasets)
        if Y is not None and len(Y) != len(datasets):
            raise ValueError(f"Y has {len(Y)} entries for {len(datasets)} datasets")
        designs, outcomes = [], []
        for i, d in enumerate(datasets):
            x, t = _as_xt(d)
            dd = check_design(x, t)
            if dd.X.shape[1] > model.max_features:
                raise ValueError(f"dataset {i} has {dd.X.shape[1]} covariates; the model accepts at most "
                                 f"max_features={model.max_features}")
            y = Y[i] if Y is not None else (d.Y if hasattr(d, "Y") else (d[2] if len(d) > 2 else None))
            if y is None:
                raise ValueError(f"dataset {i} has no outcome Y")
            designs.append((dd.X, dd.T))
            outcomes.append(check_outcome(y, dd.X.shape[0]))
        bs = max(1, int(self.batch_size))
        out = np.empty(len(designs))
        # similar sizes share a batch (less padding); results go back to the caller's order
        order = sorted(range(len(designs)), key=lambda i: designs[i][0].shape[0])
        for s in range(0, len(order), bs):
            ids = order[s:s + bs]
            w, _ = self._weights_batch(model, [designs[i] for i in ids], estimand, diagnostics=False)
            for j, i in enumerate(ids):
                x, t = designs[i]
                n = x.shape[0]
                out[i] = float(np.sum(w[j, :n] * (2.0 * t - 1.0) * outcomes[i]))
        return out
