"""The zero-shot CInA network (docs/method.md §5-6): one network amortises the balancing problem.

A :class:`CInAZeroShotModel` maps a whole dataset ``(X, W)`` to keys ``K``, scalar values ``V``
and offsets; its final layer is the tied-key attention of :func:`cina_ext.ops.attention_hinge`.
Training (:func:`train_zero_shot`, ``cina train``) streams synthetic datasets; inference
(:class:`CInAZeroShot`, ``cina estimate --method zero-shot``) is one forward pass -- no
per-dataset optimisation.  Two kinds of model, chosen by ``estimands``:

* ``("overlap",)``: the paper's self-supervised loss, eq. L, and the eq. R read-out; the weights
  target the overlap population of the SVM dual (docs/method.md §2, §6).
* ``("ate", "att")`` (the default; any non-empty subset): one model for both estimands, told
  which one by a learned estimand embedding added to every token.  The loss is the balancing
  objective of docs/method.md §6 evaluated on the network's weights -- ``sum_a MMD^2(arm a, target) +
  balance_lam ||w_a||^2`` with the RBF kernel ``exp(-gamma ||z - z'||^2)`` on the standardised
  covariates (``gamma = 1/p``, or the median heuristic with ``balance_gamma="median"``) (target: the whole sample for "ate", the treated for "att") -- i.e. exactly the
  problem :class:`cina_ext.estimators.KernelBalancing` solves, so the exact solver is the model's
  ground truth and can refine its output (``CInAZeroShot(refine=...)``).  The read-out follows the
  KKT form of that problem (weights = a monotone function of the attention-computed MMD witness
  plus a per-arm offset) with ``unroll`` witness steps inside the network (see
  :meth:`CInAZeroShotModel.balance_weights`).  ZS-S (``supervised_weight > 0``) adds
  ``|tau_hat - tau| / sd(Y)`` on the synthetic datasets' known truth.

Choices (documented here, docs/method.md marks them as ours)
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
  score is bounded by ``sqrt(key_dim)``: no overflow, docs/method.md §7.1/§7.3; ate/att models add
  a learned temperature in [1/4, 4]).  The value head reads the encoder output; the intercept
  (offset) head reads the masked mean of the encoder output.  The encoder layers are evaluated
  with ``scaled_dot_product_attention`` (a fused flash kernel on the CPU too).
* **Scale of lam** (overlap models): the user-facing ``lam`` is relative, ``lam_abs = lam / n_valid`` per dataset
  (the same rule as :class:`cina_ext.estimators.CInA` for "overlap"; with keys of bounded norm
  ``h ~ N``, so ``lam_abs * h`` is O(lam) at every N).  The value head is parametrised as
  ``V = W * softplus(v) / lam``: the optimal V has the sign of W (eq. R with alpha >= 0), every
  unit gets alpha > 0 (so no arm can end with zero weight), and ``alpha = lam_abs V h W =
  softplus(v) h / N`` is O(1) whatever lam and N are.
* **Balancing penalty** (ate/att): ``balance_lam = 0.01`` on ``||w_a||^2`` (weights summing to
  one), the :class:`cina_ext.estimators.KernelBalancing` default for these estimands.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops, reference
from .._core.bandwidth import median_gammas
from .._core.constants import LOSS_KINDS

__all__ = [
    "CInAZeroShotModel",
    "collate_datasets",
    "sample_landmarks",
    "DEFAULT_LAM",
    "DEFAULT_BALANCE_LAM",
    "BALANCE_GAMMA_RULES",
    "DEFAULT_LANDMARKS",
    "MATERIALISE_LIMIT",
    "DESCENT_STEPS",
    "DESCENT_STEP_SIZE",
    "DESCENT_MOMENTUM",
    "DESCENT_KERNEL_LIMIT",
]

DEFAULT_LAM = 0.01  # relative; lam_abs = lam / n_valid (module docstring)
MATERIALISE_LIMIT = 1 << 25  # entries of the (B, N, N) attention matrix the unrolled steps may form
#: Landmarks per dataset of the scalable path (:meth:`CInAZeroShotModel.weights_landmarks`).
DEFAULT_LANDMARKS = 1024
#: Query units per chunk of the landmark path (bounds its memory, not its result).
LANDMARK_CHUNK = 65536
DEFAULT_BALANCE_LAM = 0.01  # ate/att: ridge on the weights, KernelBalancing(lam=0.01)
#: The bandwidth rules of the ate/att objective (``balance_gamma``): "scale" is ``1 / p``,
#: "median" the median heuristic of KernelBalancing (``gamma="median"``).
BALANCE_GAMMA_RULES = ("scale", "median")
_SD_FLOOR = 1e-8
#: Descent steps on the balancing objective after the read-out (:meth:`CInAZeroShotModel.objective_descent`)
#: that ``CInAZeroShot`` runs by default; the step size and momentum of those steps.  The step size
#: is in units of the objective's gradient, whose l1-to-linf Lipschitz constant is at most 2 for any
#: N (kernel entries <= 1, weights on the simplex), so one value serves every dataset size; an
#: exact line search on every step makes a large one safe (docs/method.md §5).
DESCENT_STEPS = 32
DESCENT_STEP_SIZE = 32.0
DESCENT_MOMENTUM = 0.9
#: Entries of the (B, N, N) float32 RBF Gram matrix the descent may hold (1 GiB): a larger batch
#: runs in sub-batches; a single dataset beyond it has its Gram matrix recomputed in row blocks at
#: every step (same result, N^2 exponentials per step).
DESCENT_KERNEL_LIMIT = 1 << 28
_DESCENT_BLOCK = 1 << 22  # entries of one row block of the recomputed Gram matrix
_RFF_SEED = 20261202  # the frequency matrix of input_features="rff" (also saved as a buffer)


# =============================================================================================
# model
# =============================================================================================


class CInAZeroShotModel(nn.Module):
    """Amortised CInA network: ``forward(X, W, mask, feature_mask) -> (K, V, b)``.

    Shapes: ``X`` (B, N, p) with ``p <= max_features``; ``W`` (B, N) in {-1, +1}; ``mask`` (B, N)
    bool (valid units); ``feature_mask`` (B, p) bool (valid covariates).  Returns ``K``
    (B, N, key_dim), ``V`` (B, N) (zero on padded units), ``b`` (B,).  See the module docstring.

    Parameters
    ----------
    max_features : int, default 32
        Most covariates a dataset may have, >= 1 ("pad": fewer are zero-padded; "rff": the rows
        of the fixed frequency matrix, so any p up to this, e.g. 1024).
    d_model : int, default 64
        Token width; divisible by ``n_heads``.
    n_heads : int, default 4
        Attention heads of the encoder layers.
    n_layers : int, default 2
        Encoder layers.
    dim_feedforward : int, default 128
        Feed-forward width of the encoder layers.
    key_dim : int, default 16
        Width of the keys of the final attention layer.
    dropout : float, default 0.0
        Dropout of the encoder layers.
    lam : float, default 0.01
        Relative penalty of overlap models (``lam_abs = lam / n_valid``), positive and finite.
    loss : {"hinge", "squared_hinge"}, default "hinge"
        The loss of eq. L (overlap models).
    estimands : str or sequence of str, default ("ate", "att")
        ``("overlap",)`` or a non-empty subset of ``("ate", "att")`` without repeats.
    balance_lam : float, default 0.01
        ate/att ridge on the weights, positive and finite.
    balance_gamma : {"scale", "median"}, default "scale"
        Bandwidth of the RBF kernel of the ate/att objective, per dataset, on the standardised
        covariates ``z``: "scale" is ``1 / p`` (``p`` valid covariates; the shipped models);
        "median" is ``1 / median ||z_i - z_j||^2`` over the pairs of at most 2000 units (a
        seeded subsample beyond), the default bandwidth of
        :class:`cina_ext.estimators.KernelBalancing` (:meth:`kernel_gamma`).
    unroll : int, default 8
        Witness steps of :meth:`balance_weights`, >= 0 (0 for overlap models).
    input_features : {"pad", "rff"}, default "pad"
        What the token embedding and the key path read.  "pad": the standardised covariates
        zero-padded to ``max_features`` (the shipped models).  "rff": ``rff_dim`` random Fourier
        features ``[cos(z Omega s), sin(z Omega s)]`` of the standardised covariates ``z``, with a
        fixed Gaussian ``Omega`` (a buffer, seeded, saved with the model) and ``s = sqrt(2 / p)``
        for a dataset of ``p`` valid covariates, so their inner products approximate the
        training kernel ``exp(-||z - z'||^2 / p)`` at every p: the input width no longer
        depends on p.
    rff_dim : int, default 128
        Number of random Fourier features ("rff"), even, >= 2.

    Attributes
    ----------
    config : dict
        The constructor arguments (stored in checkpoints).
    estimands : tuple of str
        The estimands the model was built for.
    balancing : bool
        True for ate/att models, False for overlap models.
    max_features, lam, balance_lam, balance_gamma, unroll, loss_kind
        The corresponding parameters.

    Raises
    ------
    ValueError
        Invalid ``estimands``; ``balance_lam`` or ``lam`` not positive and finite;
        ``max_features < 1``; an unknown ``loss``; ``d_model`` not divisible by ``n_heads``;
        ``unroll < 0``; an unknown ``input_features``; ``rff_dim`` odd or below 2; an unknown
        ``balance_gamma``.
    """

    def __init__(
        self,
        max_features: int = 32,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dim_feedforward: int = 128,
        key_dim: int = 16,
        dropout: float = 0.0,
        lam: float = DEFAULT_LAM,
        loss: str = "hinge",
        estimands: Sequence[str] = ("ate", "att"),
        balance_lam: float = DEFAULT_BALANCE_LAM,
        unroll: int = 8,
        input_features: str = "pad",
        rff_dim: int = 128,
        balance_gamma: str = "scale",
    ):
        super().__init__()
        if balance_gamma not in BALANCE_GAMMA_RULES:
            raise ValueError(f"balance_gamma must be one of {BALANCE_GAMMA_RULES}, got {balance_gamma!r}")
        if input_features not in ("pad", "rff"):
            raise ValueError(f"input_features must be 'pad' or 'rff', got {input_features!r}")
        if isinstance(rff_dim, bool) or int(rff_dim) != rff_dim or int(rff_dim) < 2 or int(rff_dim) % 2:
            raise ValueError(f"rff_dim must be an even integer >= 2, got {rff_dim!r}")
        estimands = (estimands,) if isinstance(estimands, str) else tuple(str(e) for e in estimands)
        if (
            not estimands
            or len(set(estimands)) != len(estimands)
            or not (estimands == ("overlap",) or set(estimands) <= {"ate", "att"})
        ):
            raise ValueError(
                f"estimands must be ('overlap',) or a non-empty subset of ('ate', 'att') without "
                f"repeats, got {estimands!r}"
            )
        if not (float(balance_lam) > 0 and math.isfinite(float(balance_lam))):
            raise ValueError(f"balance_lam must be a positive finite number, got {balance_lam!r}")
        if int(max_features) < 1:
            raise ValueError(f"max_features must be >= 1, got {max_features}")
        if not (float(lam) > 0 and math.isfinite(float(lam))):
            raise ValueError(f"lam must be a positive finite number, got {lam!r}")
        if loss not in LOSS_KINDS:
            raise ValueError(f"loss must be one of {LOSS_KINDS}, got {loss!r}")
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.config = dict(
            max_features=int(max_features),
            d_model=int(d_model),
            n_heads=int(n_heads),
            n_layers=int(n_layers),
            dim_feedforward=int(dim_feedforward),
            key_dim=int(key_dim),
            dropout=float(dropout),
            lam=float(lam),
            loss=str(loss),
            estimands=estimands,
            balance_lam=float(balance_lam),
            unroll=int(unroll),
        )
        if input_features != "pad":  # older checkpoints have neither key: "pad"
            self.config.update(input_features=str(input_features), rff_dim=int(rff_dim))
        if balance_gamma != "scale":  # older checkpoints do not have the key: "scale"
            self.config.update(balance_gamma=str(balance_gamma))
        if int(unroll) < 0:
            raise ValueError(f"unroll must be >= 0, got {unroll!r}")
        self.unroll = int(unroll) if estimands != ("overlap",) else 0
        self.materialise_unroll = True  # see balance_weights (a switch for tests, not a parameter)
        self.estimands = estimands
        self.balancing = estimands != ("overlap",)
        self.balance_lam = float(balance_lam)
        self.balance_gamma = str(balance_gamma)
        self.max_features = int(max_features)
        self.lam = float(lam)
        self.loss_kind = str(loss)
        self.input_features = str(input_features)
        in_dim = self.max_features
        if self.input_features == "rff":
            in_dim = int(rff_dim)
            gen = torch.Generator().manual_seed(_RFF_SEED)
            self.register_buffer("rff_omega", torch.randn(self.max_features, in_dim // 2, generator=gen))
        self.emb_x = nn.Linear(in_dim, d_model)
        self.emb_w = nn.Parameter(torch.randn(d_model) * 0.1)
        self.layers = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    d_model,
                    n_heads,
                    dim_feedforward=dim_feedforward,
                    dropout=dropout,
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(int(n_layers))
            ]
        )
        self.norm = nn.LayerNorm(d_model)
        self.key_head = nn.Sequential(
            nn.Linear(in_dim, d_model),
            nn.GELU(),
            nn.Linear(d_model, key_dim),
            nn.LayerNorm(key_dim, elementwise_affine=False),
        )
        self.value_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))
        # overlap: one intercept b; ate/att: one offset nu per arm (treated, control)
        self.intercept_head = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 2 if self.balancing else 1)
        )
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
            raise ValueError(
                f"X has {p} covariates but the model accepts at most max_features="
                f"{self.max_features}; reduce the covariates or train a model with a larger max_features"
            )
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
            raise ValueError(
                f"feature_mask must be a bool tensor of shape {(B, p)}, "
                f"got {feature_mask.dtype} {tuple(feature_mask.shape)}"
            )
        if not bool(mask.any(-1).all()):
            raise ValueError("every dataset needs at least one valid unit (a row of mask is all False)")
        Wv = torch.where(mask, W, torch.ones_like(W))
        if not bool(((Wv == 1) | (Wv == -1)).all()):
            raise ValueError("W must take values in {-1, +1} on valid units (W = 2T - 1)")
        if not bool(torch.isfinite(torch.where(mask.unsqueeze(-1), X, torch.zeros_like(X))).all()):
            raise ValueError("X contains NaN or Inf on valid units")
        return mask, feature_mask

    def standardise(self, X: Tensor, mask: Tensor, feature_mask: Tensor) -> Tensor:
        """Per-dataset masked standardisation, zero-padded to ``max_features`` columns.

        Masked mean and population sd over the valid units of each feature; sd below 1e-8 is
        replaced by 1 (a constant column becomes 0); padded units and covariates are 0.

        Parameters
        ----------
        X : Tensor, shape (B, N, p)
            Covariates.
        mask : Tensor of bool, shape (B, N)
            Valid units.
        feature_mask : Tensor of bool, shape (B, p)
            Valid covariates.

        Returns
        -------
        Tensor, shape (B, N, max_features)
            The standardised covariates.
        """
        m = mask.unsqueeze(-1).to(X.dtype)
        n = m.sum(1, keepdim=True)
        Xz = torch.where(mask.unsqueeze(-1), X, torch.zeros_like(X))
        mean = Xz.sum(1, keepdim=True) / n
        var = (((Xz - mean) * m) ** 2).sum(1, keepdim=True) / n
        sd = var.sqrt()
        sd = torch.where(sd > _SD_FLOOR, sd, torch.ones_like(sd))
        Z = (Xz - mean) / sd * m * feature_mask.unsqueeze(1).to(X.dtype)
        p = X.shape[-1]
        if p < self.max_features and self.input_features == "pad":
            Z = torch.nn.functional.pad(Z, (0, self.max_features - p))
        return Z

    def features(self, Z: Tensor, feature_mask: Tensor) -> Tensor:
        """What the token embedding and the key path read, from :meth:`standardise`'s ``Z``.

        Parameters
        ----------
        Z : Tensor, shape (B, N, p')
            Standardised covariates (zero on padded units and covariates).
        feature_mask : Tensor of bool, shape (B, p)
            Valid covariates.

        Returns
        -------
        Tensor
            "pad": ``Z`` itself (B, N, max_features); "rff": (B, N, rff_dim) random Fourier
            features, ``[cos(Z Omega s), sin(Z Omega s)]`` with ``s = sqrt(2 / p_valid)``.
        """
        if self.input_features == "pad":
            return Z
        p = Z.shape[-1]
        s = (2.0 / feature_mask.sum(-1).to(Z.dtype).clamp_min(1.0)).sqrt().view(-1, 1, 1)
        proj = (Z @ self.rff_omega[:p].to(Z.dtype)) * s
        return torch.cat([torch.cos(proj), torch.sin(proj)], -1)

    # -- the network ---------------------------------------------------------------------------
    def estimand_index(self, estimand, B: int, device) -> Tensor:
        """(B,) index into ``self.estimands`` from None (the first), a name, or names/indices per dataset.

        Parameters
        ----------
        estimand : None, str, sequence of str or Tensor
            None (the first estimand), a name, or names / indices per dataset.
        B : int
            Number of datasets.
        device : torch.device
            Device of the result.

        Returns
        -------
        Tensor, shape (B,), int64
            The indices.

        Raises
        ------
        ValueError
            A name the model was not trained for; not one valid index per dataset.
        """
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

    def _tokens(self, F: Tensor, W: Tensor, mask: Tensor, est_idx: Optional[Tensor]) -> Tensor:
        """Input tokens (B, n, d_model) of the input features ``F`` (:meth:`features`) and signs ``W``."""
        Wz = torch.where(mask, W, torch.zeros_like(W))
        h = self.emb_x(F) + Wz.unsqueeze(-1) * self.emb_w
        if self.balancing:
            h = h + self.emb_estimand[est_idx].unsqueeze(1)
        return h

    def _keys(self, F: Tensor, mask: Tensor) -> Tensor:
        """Keys (B, n, key_dim) from the covariate path only (the input features); 0 on padded units."""
        K = self.key_head(F)
        if self.balancing:
            K = K * self.log_key_temp.clamp(-math.log(4.0), math.log(4.0)).exp()
        return torch.where(mask.unsqueeze(-1), K, torch.zeros_like(K))

    def forward(
        self, X: Tensor, W: Tensor, mask: Optional[Tensor] = None, feature_mask: Optional[Tensor] = None, estimand=None
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """``(K, V, b)`` for a batch of datasets.

        Overlap models: ``b`` (B,) is eq. L's intercept and ``sign(V) = W``.  ate/att models:
        ``V`` is free and ``b`` (B, 2) holds the per-arm offsets (treated, control).

        Parameters
        ----------
        X : Tensor, shape (B, N, p)
            Covariates, ``p <= max_features``, finite on valid units.
        W : Tensor, shape (B, N)
            Signs in {-1, +1} on valid units (``W = 2T - 1``).
        mask : Tensor of bool, shape (B, N), optional
            Valid units (each dataset needs at least one); default all.
        feature_mask : Tensor of bool, shape (B, p), optional
            Valid covariates; default all.
        estimand : str, sequence or Tensor, optional
            ate/att models: None = the first of ``self.estimands``, a name, or one per dataset
            (names or indices); selects the target population.

        Returns
        -------
        K : Tensor, shape (B, N, key_dim)
            Keys (0 on padded units).
        V : Tensor, shape (B, N)
            Values (0 on padded units).
        b : Tensor, shape (B,) or (B, 2)
            Intercepts (overlap) or per-arm offsets (ate/att).

        Raises
        ------
        ValueError
            X not 3-D, with more than ``max_features`` or no covariates, or NaN / Inf on valid units;
            W, mask or feature_mask of the wrong shape or dtype; a dataset without valid units; W not
            -1/+1 on valid units.
        TypeError
            X or W not a tensor.
        """
        mask, feature_mask = self._check(X, W, mask, feature_mask)
        F = self.features(self.standardise(X, mask, feature_mask), feature_mask)
        est_idx = self.estimand_index(estimand, X.shape[0], X.device) if self.balancing else None
        h = self._tokens(F, W, mask, est_idx)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, N): every unit attends to the valid units
        for layer in self.layers:
            h = _encoder_layer(layer, h, attn_mask)
        h = self.norm(h)
        h = torch.where(mask.unsqueeze(-1), h, torch.zeros_like(h))
        K = self._keys(F, mask)
        n = mask.sum(-1, keepdim=True).to(h.dtype)
        pooled = h.sum(1) / n
        if self.balancing:
            V = torch.where(mask, self.value_head(h).squeeze(-1), torch.zeros_like(W))
            return K, V, self.intercept_head(pooled)
        # sign(V) = W (the sign of the optimal V, eq. R with alpha >= 0), so alpha > 0 for every unit
        Wz = torch.where(mask, W, torch.zeros_like(W))
        V = Wz * torch.nn.functional.softplus(self.value_head(h).squeeze(-1)) / self.lam
        V = torch.where(mask, V, torch.zeros_like(V))
        b = self.intercept_head(pooled).squeeze(-1)
        return K, V, b

    # -- objective and read-out: overlap (eq. L / eq. R) ------------------------------------------
    def lam_abs(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """Absolute penalty per dataset, ``lam / n_valid`` (B,).

        Parameters
        ----------
        mask : Tensor of bool, shape (B, N)
            Valid units.
        dtype : torch.dtype
            Dtype of the result.

        Returns
        -------
        Tensor, shape (B,)
            ``lam / n_valid``.
        """
        return self.lam / mask.sum(-1).to(dtype)

    def objective(self, K: Tensor, V: Tensor, b: Tensor, W: Tensor, mask: Tensor, *, backend: str = "auto") -> Tensor:
        """Mean over datasets of eq. L / n_valid, from the outputs of :meth:`forward` (overlap models).

        Parameters
        ----------
        K, V, b : Tensor
            The outputs of :meth:`forward` (an overlap model).
        W : Tensor, shape (B, N)
            Signs.
        mask : Tensor of bool, shape (B, N)
            Valid units.
        backend : {"auto", "fused", "reference"}, default "auto"
            Backend of the attention operator.

        Returns
        -------
        Tensor
            0-d.

        Raises
        ------
        ValueError
            Called on an ate/att model.
        """
        if self.balancing:
            raise ValueError(
                "objective() is eq. L of an overlap model; this model targets "
                f"{self.estimands}: use balance_weights() and balance_objective()"
            )
        lam = self.lam_abs(mask, K.dtype)
        Wz = torch.where(mask, W, torch.ones_like(W))
        L, _, _ = ops.attention_hinge(K, V, Wz, b, lam, mask, loss=self.loss_kind, backend=backend)
        return (L / mask.sum(-1).to(L.dtype)).mean()

    # -- read-out and objective: ate / att (docs/method.md §6) ---------------------------------------
    def balance_weights(
        self, K: Tensor, V: Tensor, b: Tensor, W: Tensor, mask: Tensor, est_idx: Tensor, *, backend: str = "auto"
    ) -> Tensor:
        """ATE/ATT analogue of eq. R, computed by the fused attention operator (docs/method.md §6).

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

        Parameters
        ----------
        K, V, b : Tensor
            The outputs of :meth:`forward` (an ate/att model): (B, N, key_dim), (B, N), (B, 2).
        W : Tensor, shape (B, N)
            Signs.
        mask : Tensor of bool, shape (B, N)
            Valid units.
        est_idx : Tensor, shape (B,), int64
            Estimand index per dataset (:meth:`estimand_index`).
        backend : {"auto", "fused", "reference"}, default "auto"
            Backend of the attention operator.

        Returns
        -------
        Tensor, shape (B, N)
            The weights, differentiable in K, V and b.

        Notes
        -----
        The steps reuse the attention matrix ``P = softmax(S)`` of the first pass: up to
        ``MATERIALISE_LIMIT`` entries of (B, N, N) P is formed once; beyond, each step is one fused
        flash-attention pass (O(N) memory).
        """
        B = K.shape[0]
        Wz = torch.where(mask, W, torch.ones_like(W))
        zero_b = torch.zeros(B, dtype=K.dtype, device=K.device)
        one_b = torch.ones_like(zero_b)
        _, out, lse = ops.attention_hinge(K, V, Wz, zero_b, one_b, mask, loss=self.loss_kind, backend=backend)
        witness = None
        if self.unroll:
            # The steps reuse the attention matrix P = softmax(S) of the first pass.  Up to
            # MATERIALISE_LIMIT entries P is formed once from the fused op's lse (N^2 exps once;
            # each step is then a matrix product).  Beyond, each step is one fused flash-attention
            # pass (scaled_dot_product_attention, O(N) memory) with both arms' imbalances as the
            # value columns, zero-padded to the key width (the flash kernel needs equal widths).
            scale = 1.0 / math.sqrt(K.shape[-1]) if K.shape[-1] > 0 else 1.0
            N = K.shape[1]
            if self.materialise_unroll and B * N * N <= MATERIALISE_LIMIT:
                P = _attention_rows(K, lse, mask, mask.unsqueeze(-2), scale, 0, N)

                def witness(D: Tensor) -> Tensor:
                    return P @ D

            else:
                width = max(2, K.shape[-1])
                Kq = torch.nn.functional.pad(K, (0, width - K.shape[-1])).unsqueeze(1)
                attn_mask = mask[:, None, None, :]

                def witness(D: Tensor) -> Tensor:
                    Dv = torch.nn.functional.pad(D, (0, width - 2)).unsqueeze(1)
                    g2 = torch.nn.functional.scaled_dot_product_attention(Kq, Kq, Dv, attn_mask=attn_mask, scale=scale)
                    return g2[:, 0, :, :2]

        return self._witness_readout(out, b, W, mask, est_idx, witness)

    def _witness_readout(self, out: Tensor, b: Tensor, W: Tensor, mask: Tensor, est_idx: Tensor, witness) -> Tensor:
        """The per-arm softmax read-out of :meth:`balance_weights` and its ``unroll`` witness steps.

        ``witness(D)`` maps the arms' imbalances ``D`` (B, N, 2) to ``softmax(S) D`` (B, N, 2):
        exact in :meth:`balance_weights`, through the landmarks in :meth:`weights_landmarks`.
        """
        B = out.shape[0]
        treated = mask & (W > 0)
        control = mask & (W < 0)
        nu = torch.where(treated, b[:, 0:1], b[:, 1:2])
        logits = out + nu
        w = _arm_softmax(logits, treated, control)
        mf = mask.to(out.dtype)
        n = mf.sum(-1, keepdim=True)
        is_att = torch.zeros(B, 1, dtype=torch.bool, device=out.device)
        if "att" in self.estimands:
            is_att = (est_idx == self.estimands.index("att")).unsqueeze(-1)
        t1 = treated.to(out.dtype)
        t0 = control.to(out.dtype)
        target = torch.where(is_att, t1 / t1.sum(-1, keepdim=True), mf / n)
        for t in range(self.unroll):
            D = torch.stack([w * t1 - target, w * t0 - target], -1)  # (B, N, 2)
            g2 = witness(D)
            g = torch.where(treated, g2[..., 0], g2[..., 1]) * n
            eta = torch.nn.functional.softplus(self.unroll_step[t])
            logits = logits - eta * g
            w = _arm_softmax(logits, treated, control)
        n1 = t1.sum(-1, keepdim=True)
        return torch.where(is_att & treated, 1.0 / n1, w)

    def kernel_gamma(self, Z: Tensor, mask: Tensor, feature_mask: Tensor, seed: int = 0) -> Tensor:
        """Bandwidth (B,) of the RBF kernel of the ate/att objective (``balance_gamma``).

        "scale": ``1 / p`` (``p`` valid covariates, at least 1).  "median":
        :func:`cina_ext._core.bandwidth.median_gamma` on each dataset's valid units and covariates
        with ``seed``, the bandwidth ``KernelBalancing(gamma="median", random_state=seed)`` uses on
        the same covariates: ``1 / median ||z_i - z_j||^2`` over the pairs of at most 2000 units
        (a subsample drawn with ``seed`` beyond), ``1 / p`` where no pair is apart.

        Parameters
        ----------
        Z : Tensor, shape (B, N, q)
            Standardised covariates (:meth:`standardise`; padded entries 0).
        mask : Tensor of bool, shape (B, N)
            Valid units.
        feature_mask : Tensor of bool, shape (B, p)
            Valid covariates.
        seed : int, default 0
            Seeds the subsample of datasets with more than 2000 units.

        Returns
        -------
        Tensor, shape (B,)
            ``gamma`` per dataset, in ``Z``'s dtype; no gradient flows through it.
        """
        p = feature_mask.sum(-1).to(Z.dtype).clamp_min(1.0)
        if self.balance_gamma == "scale":
            return 1.0 / p
        blocks = [self.valid_block(Z, mask, feature_mask, b).detach().double().cpu().numpy() for b in range(Z.shape[0])]
        with_cols = [i for i, zb in enumerate(blocks) if zb.shape[1]]
        out = [1.0] * len(blocks)
        for i, g in zip(with_cols, median_gammas([blocks[i] for i in with_cols], "rbf", seed=int(seed))):
            out[i] = g
        return torch.tensor(out, dtype=Z.dtype, device=Z.device)

    @staticmethod
    def valid_block(Z: Tensor, mask: Tensor, feature_mask: Tensor, b: int) -> Tensor:
        """Dataset ``b``'s valid units and covariates of ``Z`` (B, N, q): shape (n_b, p_b).

        ``feature_mask`` (B, p) may be narrower or wider than ``q``: the covariates beyond its
        width are padding, never valid, and its entries beyond ``q`` have no column."""
        q = Z.shape[-1]
        fm = feature_mask[b]
        cols = torch.nn.functional.pad(fm, (0, max(0, q - fm.shape[0])))[:q]
        return Z[b][mask[b]][:, cols]

    def balance_objective(
        self,
        X: Tensor,
        W: Tensor,
        mask: Tensor,
        feature_mask: Tensor,
        w: Tensor,
        est_idx: Tensor,
        gamma: Optional[Tensor] = None,
        lam: Union[None, float, Tensor] = None,
    ) -> Tensor:
        """Per-dataset balancing objective (B,) of weights ``w`` (docs/method.md §6), >= 0.

        ate: ``sum_a MMD^2(arm a weighted by w, whole sample) + balance_lam ||w_a||^2``; att: the
        same for the control arm against the treated.  MMD with the RBF kernel
        ``exp(-gamma ||z - z'||^2)`` on the per-dataset standardised covariates ``z``, ``gamma``
        from :meth:`kernel_gamma` (``1 / p`` for ``p`` valid covariates by default): the problem
        :class:`cina_ext.estimators.KernelBalancing` solves exactly with ``gamma="scale"`` (or
        "median"), ``lam=0.01``, ``scaling="standard"``, so its optimum is the exact solver's
        objective (plus a constant).

        Parameters
        ----------
        X : Tensor, shape (B, N, p)
            Covariates.
        W : Tensor, shape (B, N)
            Signs.
        mask : Tensor of bool, shape (B, N)
            Valid units.
        feature_mask : Tensor of bool, shape (B, p)
            Valid covariates.
        w : Tensor, shape (B, N)
            Weights (e.g. from :meth:`balance_weights`).
        est_idx : Tensor, shape (B,), int64
            Estimand index per dataset.
        gamma : Tensor, shape (B,), optional
            The bandwidths, if already computed (:meth:`kernel_gamma` of the standardised ``X``).
        lam : float or Tensor of shape (B,), optional
            The penalty; default ``balance_lam``, the one the model was trained on.

        Returns
        -------
        Tensor, shape (B,)
            The objective per dataset; forms the (B, N, N) RBF Gram matrix.
        """
        Z = self.standardise(X, mask, feature_mask)
        lam = self._penalty(lam, W.shape[0], Z.dtype, Z.device)
        p = feature_mask.sum(-1).to(Z.dtype).clamp_min(1.0)
        sq = (Z * Z).sum(-1)
        D2 = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * Z @ Z.transpose(-1, -2)).clamp_min(0.0)
        if gamma is not None:
            Kr = torch.exp(-D2 * gamma.to(Z.dtype).view(-1, 1, 1))
        elif self.balance_gamma == "scale":
            Kr = torch.exp(-D2 / p.view(-1, 1, 1))
        else:
            Kr = torch.exp(-D2 * self.kernel_gamma(Z, mask, feature_mask).view(-1, 1, 1))
        mf = mask.to(Z.dtype)
        t1 = (mask & (W > 0)).to(Z.dtype)
        t0 = (mask & (W < 0)).to(Z.dtype)
        w = w * mf

        def mmd(weights: Tensor, target: Tensor) -> Tensor:
            d = weights - target
            return (d.unsqueeze(-2) @ Kr @ d.unsqueeze(-1)).reshape(-1)

        all_mean = mf / mf.sum(-1, keepdim=True)
        ate = mmd(w * t1, all_mean) + mmd(w * t0, all_mean) + lam * ((w * t1) ** 2 + (w * t0) ** 2).sum(-1)
        if "att" not in self.estimands:
            return ate
        treated_mean = t1 / t1.sum(-1, keepdim=True)
        att = mmd(w * t0, treated_mean) + lam * ((w * t0) ** 2).sum(-1)
        return torch.where(est_idx == self.estimands.index("att"), att, ate)

    def _penalty(self, lam, B: int, dtype: torch.dtype, device) -> Tensor:
        """``lam`` (None: ``balance_lam``; a number; a (B,) tensor) as a (B,) tensor."""
        if lam is None:
            lam = float(self.balance_lam)
        t = torch.as_tensor(lam, dtype=dtype, device=device)
        if t.dim() == 0:
            t = t.expand(B)
        if tuple(t.shape) != (B,):
            raise ValueError(f"lam must be a number or have shape ({B},), got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
            raise ValueError("lam must be finite and > 0")
        return t

    def objective_descent(
        self,
        X: Tensor,
        W: Tensor,
        mask: Tensor,
        feature_mask: Tensor,
        w: Tensor,
        est_idx: Tensor,
        steps: int = DESCENT_STEPS,
        *,
        step_size: float = DESCENT_STEP_SIZE,
        momentum: float = DESCENT_MOMENTUM,
        features: Optional[Tensor] = None,
        gamma: Optional[Tensor] = None,
        lam: Union[None, float, Tensor] = None,
        backend: str = "auto",
    ) -> Tuple[Tensor, Tensor]:
        """``steps`` accelerated exponentiated-gradient steps on :meth:`balance_objective` from ``w``.

        The read-out's witness steps descend in the network's learned kernel; these descend in the
        objective's own RBF kernel (bandwidth from :meth:`kernel_gamma`), on every covariate of
        ``X``, so they close the gap between the network's weights and the optimum of the problem
        the model was trained on (docs/method.md §5).  Each step: ``g = K d^a + balance_lam w``
        (half the gradient; ``d^a`` the imbalance of arm a against the estimand's target),
        ``v <- momentum v - step_size g``, ``w' = softmax(log w + v)`` per arm on the units that
        move (both arms for "ate", the controls for "att"), then an exact line search on the
        segment from ``w`` to ``w'``: the objective is quadratic along it, and the product with
        ``w'`` that the next gradient needs gives its curvature, so the search costs no further
        product.  The step taken, ``w + t (w' - w)`` with ``t`` in [0, 1], never raises the
        objective, and the momentum is scaled by ``t``.  A fixed computation (no tolerance, no
        per-dataset iteration count): ``steps + 1`` products with the Gram matrix.

        Parameters
        ----------
        X : Tensor, shape (B, N, p)
            Covariates (any ``p``: the kernel is formed on all of them).
        W : Tensor, shape (B, N)
            Signs.
        mask : Tensor of bool, shape (B, N)
            Valid units.
        feature_mask : Tensor of bool, shape (B, p)
            Valid covariates.
        w : Tensor, shape (B, N)
            Starting weights (the read-out's): positive on the valid units, one per arm.
        est_idx : Tensor, shape (B,), int64
            Estimand index per dataset.
        steps : int, default DESCENT_STEPS
            Number of steps; 0 returns ``w`` (in float64) and its objective.
        step_size, momentum : float
            Step size (> 0) and momentum (in [0, 1)).
        features : Tensor, shape (B, N, r), optional
            A feature map of the objective's kernel, ``K ~ features features'`` (e.g. random
            Fourier features of the standardised covariates): the steps then cost O(N r) instead
            of O(N^2), and the objective returned is that of the approximate kernel.  Default:
            the exact RBF Gram matrix.
        gamma : Tensor, shape (B,), optional
            The exact kernel's bandwidths, if already computed (default :meth:`kernel_gamma`).
        lam : float or Tensor of shape (B,) or (B, L), optional
            The objective's penalty: default ``balance_lam``, the one the model was trained on;
            (B,) one per dataset; (B, L) a grid of ``L`` penalties per dataset, all descended at
            once from ``w``: each product with a dataset's Gram matrix serves its ``L`` problems.
        backend : {"auto", "fused", "reference"}
            For the held exact Gram matrix: :func:`cina_ext.ops.balance_descent` (the compiled CPU
            kernel under "auto" or "fused" on the CPU) or its PyTorch twin ("reference", and on
            CUDA, where the kernel does not exist); the feature and blockwise products always run
            the twin's loop (:func:`cina_ext.reference.balance_descent.descent_steps`).

        Returns
        -------
        weights : Tensor, shape (B, N) (a grid: (B, L, N)), float64
            Non-negative, one per arm ("att": the treated keep ``1/n1``).
        objective : Tensor, shape (B,) (a grid: (B, L)), float64
            Their :meth:`balance_objective`.

        Notes
        -----
        The Gram matrix is float32, held up to :data:`DESCENT_KERNEL_LIMIT` entries of (B, N, N)
        (a larger batch runs in sub-batches that fit), recomputed in row blocks at every step
        only for a single dataset beyond it; the weights, logits and objective are float64.
        """
        if features is not None:
            if features.dim() != 3 or tuple(features.shape[:2]) != tuple(W.shape):
                raise ValueError(
                    f"features must have shape (B, N, r) = {tuple(W.shape)} + (r,), got {tuple(features.shape)}"
                )
            if features.device != W.device:
                raise ValueError(f"features are on {features.device}, the signs W on {W.device}")
            # a row with NaN or Inf has a non-finite sum: one pass, no copy of the features
            if not features.is_floating_point() or not bool(torch.isfinite(features.sum(-1))[mask].all()):
                raise ValueError("features must be floating point and finite on the valid units")
        if not self.balancing:
            raise ValueError("objective_descent needs an ate/att model; this one computes the overlap weights of eq. L")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        if not (0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        B, N = W.shape
        grid = torch.is_tensor(lam) and lam.dim() == 2
        if grid and lam.shape[0] != B:
            raise ValueError(f"a lam grid must have shape ({B}, L), got {tuple(lam.shape)}")
        per = DESCENT_KERNEL_LIMIT // max(1, N * N)
        if features is None and 1 <= per < B:
            # the datasets are independent: sub-batches whose Gram matrices fit the limit are
            # held once, where the whole batch's would be recomputed at every step
            parts = [
                self.objective_descent(
                    X[i : i + per],
                    W[i : i + per],
                    mask[i : i + per],
                    feature_mask[i : i + per],
                    w[i : i + per],
                    est_idx[i : i + per],
                    steps,
                    step_size=step_size,
                    momentum=momentum,
                    gamma=None if gamma is None else gamma[i : i + per],
                    lam=lam[i : i + per] if torch.is_tensor(lam) and lam.dim() > 0 else lam,
                    backend=backend,
                )
                for i in range(0, B, per)
            ]
            return torch.cat([q[0] for q in parts]), torch.cat([q[1] for q in parts])
        f64 = torch.float64
        K = gram = None
        if features is None:
            Z = self.standardise(X.to(f64), mask, feature_mask)
            gamma = self.kernel_gamma(Z, mask, feature_mask) if gamma is None else gamma
            if B * N * N <= DESCENT_KERNEL_LIMIT:
                K = _rbf_gram(Z, gamma)
            else:
                gram = _rbf_gram_product(Z, gamma)
        else:
            # padded rows zeroed (a copy only where there is padding: the features can be GBs)
            fz = features if bool(mask.all()) else features * mask.unsqueeze(-1).to(features.dtype)
            gram = _feature_gram_product(fz)
        L = lam.shape[1] if grid else 1
        # the L problems of a dataset are L rows of one (B L, N) batch that share its kernel
        lam_rows = self._penalty(lam.reshape(-1) if grid else lam, B * L, f64, W.device)
        if grid:
            W, mask, w, est_idx = (t.repeat_interleave(L, 0) for t in (W, mask, w, est_idx))
        treated = mask & (W > 0)
        control = mask & (W < 0)
        t1, mf = treated.to(f64), mask.to(f64)
        is_att = torch.zeros(W.shape[0], 1, dtype=torch.bool, device=W.device)
        if "att" in self.estimands:
            is_att = (est_idx == self.estimands.index("att")).unsqueeze(-1)
        n1 = t1.sum(-1, keepdim=True).clamp_min(1.0)
        target = torch.where(is_att, t1 / n1, mf / mf.sum(-1, keepdim=True).clamp_min(1.0))
        moving = torch.where(is_att, control, mask)  # the weights the objective moves and penalises
        w = torch.where(is_att & treated, 1.0 / n1, w.to(f64) * mf)  # the ATT's treated keep 1 / n1
        arm = torch.where(treated, 1, torch.where(control, 0, -1)).to(torch.int8)
        if K is not None:
            # "fused" names the compiled kernels where they exist: the descent has none on CUDA
            desc_backend = "auto" if backend == "fused" and K.device.type != "cpu" else backend
            best_w, best = ops.balance_descent(
                K, w, arm, target, moving, lam_rows, int(steps), step_size, momentum, backend=desc_backend
            )
        else:
            one = gram

            def rows_product(D: Tensor) -> Tensor:  # (B L, 2, N) -> the products with each row's kernel
                return one(D.reshape(B, 2 * L, N)).reshape(B * L, 2, N)

            best_w, best = reference.descent_steps(
                rows_product, w, arm, target, moving, lam_rows, int(steps), step_size, momentum
            )
        if grid:
            return best_w.reshape(B, -1, N), best.reshape(B, -1)
        return best_w, best

    # -- both kinds ------------------------------------------------------------------------------
    def loss(
        self,
        X: Tensor,
        W: Tensor,
        mask: Optional[Tensor] = None,
        feature_mask: Optional[Tensor] = None,
        *,
        estimand=None,
        backend: str = "auto",
    ) -> Tensor:
        """Self-supervised training loss (scalar).

        The mean over datasets of eq. L / n_valid (overlap) or of :meth:`balance_objective`
        (ate/att).

        Parameters
        ----------
        X : Tensor, shape (B, N, p)
            Covariates, ``p <= max_features``, finite on valid units.
        W : Tensor, shape (B, N)
            Signs in {-1, +1} on valid units (``W = 2T - 1``).
        mask : Tensor of bool, shape (B, N), optional
            Valid units (each dataset needs at least one); default all.
        feature_mask : Tensor of bool, shape (B, p), optional
            Valid covariates; default all.
        estimand : str, sequence or Tensor, optional
            ate/att models: as for :meth:`forward`.
        backend : {"auto", "fused", "reference"}, default "auto"
            Backend of the attention operator.

        Returns
        -------
        Tensor
            0-d, differentiable in the parameters.

        Raises
        ------
        ValueError
            X not 3-D, with more than ``max_features`` or no covariates, or NaN / Inf on valid units;
            W, mask or feature_mask of the wrong shape or dtype; a dataset without valid units; W not
            -1/+1 on valid units.
        TypeError
            X or W not a tensor.
        """
        mask, feature_mask = self._check(X, W, mask, feature_mask)
        if not self.balancing:
            K, V, b = self(X, W, mask, feature_mask)
            return self.objective(K, V, b, W, mask, backend=backend)
        idx = self.estimand_index(estimand, X.shape[0], X.device)
        K, V, b = self(X, W, mask, feature_mask, idx)
        w = self.balance_weights(K, V, b, W, mask, idx, backend=backend)
        return self.balance_objective(X, W, mask, feature_mask, w, idx).mean()

    @torch.no_grad()
    def weights(
        self,
        X: Tensor,
        W: Tensor,
        mask: Optional[Tensor] = None,
        feature_mask: Optional[Tensor] = None,
        *,
        estimand=None,
        backend: str = "auto",
        return_alpha: bool = False,
    ):
        """Balancing weights (B, N), non-negative, summing to one in each arm.

        Overlap models: the eq. R read-out (``alpha`` = the dual variables).  ate/att models:
        :meth:`balance_weights` (``alpha`` = the weights themselves, the solver's convention for
        these estimands, so they can warm-start :func:`cina_ext.ops.dual_solve`).  Runs without
        gradients.

        Parameters
        ----------
        X : Tensor, shape (B, N, p)
            Covariates, ``p <= max_features``, finite on valid units.
        W : Tensor, shape (B, N)
            Signs in {-1, +1} on valid units (``W = 2T - 1``).
        mask : Tensor of bool, shape (B, N), optional
            Valid units (each dataset needs at least one); default all.
        feature_mask : Tensor of bool, shape (B, p), optional
            Valid covariates; default all.
        estimand : str, sequence or Tensor, optional
            As for :meth:`forward` (overlap models accept None or "overlap").
        backend : {"auto", "fused", "reference"}, default "auto"
            Backend of the attention operator.
        return_alpha : bool, default False
            Also return ``alpha``.

        Returns
        -------
        w : Tensor, shape (B, N)
            The weights.
        alpha : Tensor, shape (B, N)
            Only with ``return_alpha``.

        Raises
        ------
        ValueError
            X not 3-D, with more than ``max_features`` or no covariates, or NaN / Inf on valid units;
            W, mask or feature_mask of the wrong shape or dtype; a dataset without valid units; W not
            -1/+1 on valid units.
            Also: an arm of some dataset gets zero total weight; an estimand the model was not
            trained for.
        TypeError
            X or W not a tensor.
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

    @torch.no_grad()
    def weights_landmarks(
        self,
        X: Tensor,
        W: Tensor,
        landmarks: Tuple[Tensor, Tensor, Tensor],
        mask: Optional[Tensor] = None,
        feature_mask: Optional[Tensor] = None,
        *,
        estimand=None,
        chunk: int = LANDMARK_CHUNK,
    ) -> Tensor:
        """Balancing weights (B, N) of an ate/att model with every attention restricted to landmarks.

        The scalable path for large datasets (docs/method.md §5, "landmark attention"): each softmax
        attention of the network -- the encoder layers, the read-out and the witness steps -- is
        a kernel-weighted mean over the units of the dataset; here every unit attends to ``m``
        landmark units sampled from its own dataset (:func:`sample_landmarks`, stratified by arm,
        with the log inverse inclusion probability added to their scores, so each mean is a
        ratio (Horvitz-Thompson) estimate of the full one).  Work and memory are O(N m) and O(N)
        (queries in chunks) instead of O(N^2); with every valid unit a landmark it is the exact
        forward pass.  The landmarks' own encoder states depend on the landmarks only, so they are
        computed once; then every unit passes through the layers attending to them.

        Parameters
        ----------
        X : Tensor, shape (B, N, p)
            Covariates, ``p <= max_features``, finite on valid units.
        W : Tensor, shape (B, N)
            Signs in {-1, +1} on valid units (``W = 2T - 1``).
        landmarks : tuple of Tensor
            ``(index, valid, log_weight)`` from :func:`sample_landmarks`: (B, m) unit indices,
            (B, m) bool, (B, m) log inverse inclusion probabilities.
        mask : Tensor of bool, shape (B, N), optional
            Valid units (each dataset needs at least one); default all.
        feature_mask : Tensor of bool, shape (B, p), optional
            Valid covariates; default all.
        estimand : str, sequence or Tensor, optional
            As for :meth:`forward`.
        chunk : int, default LANDMARK_CHUNK
            Units per query chunk (memory bound, not the result).

        Returns
        -------
        Tensor, shape (B, N)
            The weights, non-negative, summing to one in each arm.

        Raises
        ------
        ValueError
            An overlap model (the eq. R read-out needs the full normaliser); landmarks of the wrong
            shape, dtype or range, or a dataset without a valid landmark; and the errors of
            :meth:`weights`.
        TypeError
            X or W not a tensor.
        """
        if not self.balancing:
            raise ValueError("landmark attention is implemented for ate/att models only, not overlap models")
        mask, feature_mask = self._check(X, W, mask, feature_mask)
        B, N, _ = X.shape
        idx, lvalid, logw = _check_landmarks(landmarks, B, N, mask)
        chunk = max(1, int(chunk))
        est_idx = self.estimand_index(estimand, B, X.device)
        F = self.features(self.standardise(X, mask, feature_mask), feature_mask)
        bias = torch.where(lvalid, logw.to(F.dtype), torch.full_like(logw, float("-inf"), dtype=F.dtype))
        bias4 = bias[:, None, None, :]  # (B, 1, 1, m), added to every score of a query against the landmarks

        def gather(t: Tensor) -> Tensor:
            if t.dim() == 2:
                return torch.gather(t, 1, idx)
            return torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

        # 1. the landmarks through the encoder (they attend to the landmarks only): each layer's k, v
        hL = self._tokens(gather(F), gather(W), lvalid, est_idx)
        kv = []
        for layer in self.layers:
            k, v = _layer_kv(layer, hL)
            kv.append((k, v))
            hL = _encoder_layer(layer, hL, bias4, kv=(k, v))
        # 2. every unit, in chunks, through the layers against the landmarks' k, v
        K = torch.zeros(B, N, self.key_head[-2].out_features, dtype=F.dtype, device=F.device)
        V = torch.zeros(B, N, dtype=F.dtype, device=F.device)
        pooled = torch.zeros(B, self.norm.normalized_shape[0], dtype=F.dtype, device=F.device)
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            m_c = mask[:, s:e]
            h = self._tokens(F[:, s:e], W[:, s:e], m_c, est_idx)
            for layer, lkv in zip(self.layers, kv):
                h = _encoder_layer(layer, h, bias4, kv=lkv)
            h = torch.where(m_c.unsqueeze(-1), self.norm(h), torch.zeros_like(h))
            pooled += h.sum(1)
            V[:, s:e] = torch.where(m_c, self.value_head(h).squeeze(-1), torch.zeros_like(V[:, s:e]))
            K[:, s:e] = self._keys(F[:, s:e], m_c)
        b = self.intercept_head(pooled / mask.sum(-1, keepdim=True).to(F.dtype))
        # 3. the read-out and the witness steps: sums over every unit in the Nystrom approximation
        #    of the read-out kernel on the landmarks (exact sums of an approximate kernel: the small
        #    imbalances the witness steps correct are below a subsample's noise)
        attend = _nystrom_attention(K, mask, idx, lvalid, chunk)
        out = attend(V.unsqueeze(-1)).squeeze(-1)
        return self._witness_readout(out, b, W, mask, est_idx, attend)


def sample_landmarks(
    W: Tensor, mask: Optional[Tensor] = None, m: int = DEFAULT_LANDMARKS, *, generator: Optional[torch.Generator] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """Landmark units for :meth:`CInAZeroShotModel.weights_landmarks`, per dataset and stratified by arm.

    A dataset with at most ``m`` valid units keeps them all (weight 1: the exact forward pass).
    Otherwise each arm gets its proportional share of ``m``, but at least ``min(n_arm, m // 8)``
    so a small arm is still represented, sampled uniformly without replacement; each landmark
    carries ``log(n_arm / m_arm)``, the log of its inverse inclusion probability.

    Parameters
    ----------
    W : Tensor, shape (B, N)
        Signs in {-1, +1} on valid units.
    mask : Tensor of bool, shape (B, N), optional
        Valid units; default all.
    m : int, default DEFAULT_LANDMARKS
        Landmarks per dataset, >= 2.
    generator : torch.Generator, optional
        A CPU generator (the sample is drawn on the CPU), for reproducible landmarks.

    Returns
    -------
    index : Tensor of int64, shape (B, M)
        Unit indices, ``M = min(m, max valid units)``; padded slots point at unit 0.
    valid : Tensor of bool, shape (B, M)
        Real landmarks.
    log_weight : Tensor, shape (B, M)
        ``log(n_arm / m_arm)`` per landmark (0 on padded slots), W's dtype.

    Raises
    ------
    ValueError
        ``m`` below 2; W or mask of the wrong shape.

    Examples
    --------
    >>> import torch
    >>> W = torch.tensor([[1.0] * 10 + [-1.0] * 90])
    >>> idx, valid, logw = sample_landmarks(W, m=20, generator=torch.Generator().manual_seed(0))
    >>> int(valid.sum()), int((W[0, idx[0]] > 0).sum())
    (20, 2)
    """
    if isinstance(m, bool) or int(m) != m or int(m) < 2:
        raise ValueError(f"the number of landmarks m must be an integer >= 2, got {m!r}")
    m = int(m)
    if not isinstance(W, Tensor) or W.dim() != 2:
        raise ValueError(f"W must be a (B, N) tensor, got {getattr(W, 'shape', type(W).__name__)}")
    if mask is None:
        mask = torch.ones(W.shape, dtype=torch.bool, device=W.device)
    if mask.dtype != torch.bool or mask.shape != W.shape:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(W.shape)}")
    Wc, mc = W.detach().cpu(), mask.cpu()
    rows = []
    for b in range(W.shape[0]):
        arms = [torch.nonzero(mc[b] & (Wc[b] > 0)).squeeze(-1), torch.nonzero(mc[b] & (Wc[b] < 0)).squeeze(-1)]
        sizes = [len(a) for a in arms]
        n = sum(sizes)
        if n <= m:
            ids = torch.cat(arms)
            rows.append((ids, torch.zeros(len(ids), dtype=torch.float64)))
            continue
        take = [0, 0]
        floor = m // 8
        take[0] = min(sizes[0], max(round(m * sizes[0] / n), min(sizes[0], floor)))
        take[1] = min(sizes[1], m - take[0])
        take[0] = min(sizes[0], m - take[1])  # give back what a small control arm could not use
        ids, logw = [], []
        for a, k, na in zip(arms, take, sizes):
            if k == 0:
                continue
            ids.append(a[torch.randperm(na, generator=generator)[:k]])
            logw.append(torch.full((k,), math.log(na / k), dtype=torch.float64))
        rows.append((torch.cat(ids), torch.cat(logw)))
    M = max(1, max(len(r[0]) for r in rows))
    B = W.shape[0]
    index = torch.zeros(B, M, dtype=torch.long)
    valid = torch.zeros(B, M, dtype=torch.bool)
    log_weight = torch.zeros(B, M, dtype=torch.float64)
    for b, (ids, lw) in enumerate(rows):
        index[b, : len(ids)] = ids
        valid[b, : len(ids)] = True
        log_weight[b, : len(ids)] = lw
    dev = W.device
    return index.to(dev), valid.to(dev), log_weight.to(dtype=W.dtype, device=dev)


def _check_landmarks(landmarks, B: int, N: int, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    if not isinstance(landmarks, (tuple, list)) or len(landmarks) != 3:
        raise ValueError("landmarks must be the (index, valid, log_weight) tuple of sample_landmarks")
    idx, valid, logw = landmarks
    if not all(isinstance(t, Tensor) for t in (idx, valid, logw)):
        raise ValueError("landmarks must be three tensors (index, valid, log_weight)")
    if idx.dim() != 2 or idx.shape[0] != B or valid.shape != idx.shape or logw.shape != idx.shape:
        raise ValueError(
            f"landmark index, valid and log_weight must all have shape ({B}, m), got "
            f"{tuple(idx.shape)}, {tuple(valid.shape)}, {tuple(logw.shape)}"
        )
    if idx.dtype != torch.long or valid.dtype != torch.bool or not logw.is_floating_point():
        raise ValueError("landmarks: index must be int64, valid bool and log_weight floating point")
    dev = mask.device
    idx, valid, logw = idx.to(dev), valid.to(dev), logw.to(dev)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= N):
        raise ValueError(f"landmark indices must lie in [0, {N})")
    if not bool(valid.any(-1).all()):
        raise ValueError("every dataset needs at least one valid landmark")
    if not bool((torch.gather(mask, 1, idx) | ~valid).all()):
        raise ValueError("a landmark points at a padded (invalid) unit")
    if not bool(torch.isfinite(logw).all()):
        raise ValueError("landmark log_weight contains NaN or Inf")
    return idx, valid, logw


#: Nystrom: eigenvalues of the landmark Gram matrix below this share of the largest are dropped,
#: per dtype of the kernel rows (bounds the pseudo-inverse, so float32 rows lose ~1e-4 at most).
_NYSTROM_RCOND = {torch.float32: 1e-6, torch.float64: 1e-12}
#: Nystrom: kernel rows (B, N, m) up to this many entries are formed once per pass and held.
_NYSTROM_HOLD = 1 << 24


def _nystrom_attention(K: Tensor, mask: Tensor, idx: Tensor, lvalid: Tensor, chunk: int):
    """``attend(values)`` = ``softmax(scale K K') values`` over the valid units, ``scale = 1/sqrt(key_dim)``,
    with the kernel ``exp(scale k.k')`` replaced by its Nystrom approximation on the landmarks
    ``idx`` (``K_NL pinv(K_LL) K_LN``): every row sum and weighted sum runs over all N units, in
    O(N m) work and O(chunk m) memory per call.  Scores are shifted by their upper bound
    ``scale max ||k||^2`` (a constant per dataset, which cancels in the ratio); the landmark Gram
    matrix and its truncated pseudo-inverse are float64, the N x m kernel rows in K's dtype
    (float32 for float32 models: their exponentials are the cost) accumulated into float64."""
    B, N, kd = K.shape
    scale = 1.0 / math.sqrt(kd)
    rdt = torch.float64 if K.dtype == torch.float64 else torch.float32
    K32 = K.to(rdt)
    KL32 = torch.gather(K32, 1, idx.unsqueeze(-1).expand(-1, -1, kd))
    KL = KL32.double()
    lv = lvalid.double()
    c0 = scale * (K.double() ** 2).sum(-1).amax(-1)  # (B,)
    KLL = torch.exp(scale * KL @ KL.transpose(-1, -2) - c0[:, None, None]) * lv[:, :, None] * lv[:, None, :]
    evals, evecs = torch.linalg.eigh(KLL)
    keep = evals > _NYSTROM_RCOND[rdt] * evals.amax(-1, keepdim=True)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    pinv = evecs @ (inv.unsqueeze(-1) * evecs.transpose(-1, -2))
    mf = mask.to(rdt).unsqueeze(-2)  # (B, 1, N)
    c0_32, lv32, Kt = c0.to(rdt)[:, None, None], lvalid.to(rdt)[:, :, None], K32.transpose(-1, -2)

    # the kernel rows are formed transposed, (B, m, n) = exp(scale KL K[s:e]' - c0): both products
    # then run as row-major (B, k, N) x (B, N, M) batched products, about five times faster on
    # the CPU than the (B, N, m)' x (B, N, k) form for these skinny shapes
    def form(s: int, e: int) -> Tensor:
        r = torch.baddbmm(-c0_32, KL32, Kt[:, :, s:e], alpha=scale).exp_()
        return r if bool(lvalid.all()) else r.mul_(lv32)

    if B * N * KL.shape[1] <= _NYSTROM_HOLD:
        # small enough to hold: formed once for the read-out and every witness step
        held = form(0, N)

        def rows_t(s: int, e: int) -> Tensor:
            return held[:, :, s:e]

        chunk = N
    else:
        rows_t = form

    def attend(values: Tensor) -> Tensor:
        c = values.shape[-1]
        V1 = torch.cat([values.to(rdt), torch.ones_like(values[..., :1], dtype=rdt)], -1).transpose(-1, -2) * mf
        At = torch.zeros(B, c + 1, KL.shape[1], dtype=torch.float64, device=K.device)
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            At += (V1[:, :, s:e] @ rows_t(s, e).transpose(-1, -2)).double()
        Ct = (At @ pinv).to(rdt)  # (pinv A)' with pinv symmetric
        out = torch.empty(B, N, c, dtype=torch.float64, device=K.device)
        tiny = torch.finfo(torch.float64).tiny
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            r = (Ct @ rows_t(s, e)).double()  # (B, c + 1, e - s)
            out[:, s:e] = (r[:, :c] / r[:, c:].clamp_min(tiny)).transpose(-1, -2)
        return out.to(values.dtype) * mask.unsqueeze(-1).to(values.dtype)

    return attend


def _layer_kv(layer: nn.TransformerEncoderLayer, h: Tensor) -> Tuple[Tensor, Tensor]:
    """Keys and values (B, H, n, E / H) of ``layer``'s self-attention for the states ``h``."""
    sa = layer.self_attn
    B, n, E = h.shape
    H = sa.num_heads
    # the key and value rows of the packed projection (the queries are not needed)
    k, v = torch.nn.functional.linear(layer.norm1(h), sa.in_proj_weight[E:], sa.in_proj_bias[E:]).chunk(2, dim=-1)
    return tuple(t.reshape(B, n, H, E // H).transpose(1, 2) for t in (k, v))


def _encoder_layer(
    layer: nn.TransformerEncoderLayer, h: Tensor, attn_mask: Tensor, kv: Optional[Tuple[Tensor, Tensor]] = None
) -> Tensor:
    """``layer(h, src_key_padding_mask=~mask)`` (pre-LN, batch_first, dropout as in the layer)
    computed with ``scaled_dot_product_attention``, which on the CPU runs a fused flash kernel:
    measured 6x faster at 32 x 500 units than the module's masked-softmax path, same parameters
    (tests/models/test_zero_shot_model.py checks the two agree).  With ``kv`` (from
    :func:`_layer_kv` of other states, e.g. landmarks) the queries ``h`` attend to those instead."""
    sa = layer.self_attn
    B, N, E = h.shape
    H = sa.num_heads
    x = layer.norm1(h)
    if kv is None:
        q, k, v = torch.nn.functional.linear(x, sa.in_proj_weight, sa.in_proj_bias).chunk(3, dim=-1)
        k, v = (t.reshape(B, N, H, E // H).transpose(1, 2) for t in (k, v))
    else:  # only the query rows of the packed projection: the keys and values are given
        q = torch.nn.functional.linear(x, sa.in_proj_weight[:E], sa.in_proj_bias[:E])
        k, v = kv
    q = q.reshape(B, N, H, E // H).transpose(1, 2)
    drop = sa.dropout if layer.training else 0.0
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
    a = sa.out_proj(a.transpose(1, 2).reshape(B, N, E))
    h = h + layer.dropout1(a)
    y = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(h)))))
    return h + layer.dropout2(y)


def _rbf_block(Z: Tensor, sq: Tensor, g: Tensor, i0: int, i1: int) -> Tensor:
    """Rows ``i0:i1`` of the float32 RBF Gram matrices ``exp(-g ||z_i - z_j||^2)`` (B, i1 - i0, N)."""
    d2 = sq[:, i0:i1, None] + sq[:, None, :] - 2.0 * (Z[:, i0:i1] @ Z.transpose(-1, -2))
    return torch.exp(d2.clamp_min_(0.0).mul_(-g))


def _rbf_gram(Z: Tensor, gamma: Tensor) -> Tensor:
    """The float32 RBF Gram matrices ``K_b = exp(-gamma_b ||z_i - z_j||^2)`` (B, N, N) of ``Z``
    (B, N, q) (a kernel entry to about 1e-6, ample for a descent direction; padded units, zero
    rows of ``Z``, get rows that only ever meet zero weights).  One (B, N, N) allocation, every
    pass in place: ``||z_i||^2 + ||z_j||^2``, minus ``2 z_i.z_j`` (one batched product), then the
    clamp at 0, the scale and the exponential."""
    Z = Z.float()
    sq = (Z * Z).sum(-1)
    K = sq.unsqueeze(-1) + sq.unsqueeze(-2)
    K.baddbmm_(Z, Z.transpose(-1, -2), alpha=-2.0)
    return K.clamp_min_(0.0).mul_(-gamma.float().view(-1, 1, 1)).exp_()


def _rbf_gram_product(Z: Tensor, gamma: Tensor):
    """``D -> D K`` (``D`` of shape (B, k, N): k rows per dataset) for the RBF Gram matrices of
    ``Z`` (B, N, q) recomputed in float32 row blocks at every product (for a Gram matrix too big
    to hold: :func:`_rbf_gram` holds it), returned in ``D``'s dtype."""
    B, N, _ = Z.shape
    Z = Z.float()
    sq = (Z * Z).sum(-1)
    g = gamma.float().view(-1, 1, 1)
    rows = max(1, _DESCENT_BLOCK // max(1, B * N))

    def product_blocks(D: Tensor) -> Tensor:
        Df = D.float().transpose(-1, -2)
        blocks = [_rbf_block(Z, sq, g, i0, min(N, i0 + rows)) @ Df for i0 in range(0, N, rows)]
        return torch.cat(blocks, 1).transpose(-1, -2).to(D.dtype)

    return product_blocks


def _feature_gram_product(Phi: Tensor):
    """``D -> (D Phi) Phi'`` (``D`` of shape (B, k, N)): the product with the low-rank Gram matrix
    ``Phi Phi'`` of features ``Phi`` (B, N, r), in ``Phi``'s dtype, returned in ``D``'s dtype."""
    Pt = Phi.transpose(-1, -2)

    def product(D: Tensor) -> Tensor:
        return ((D.to(Phi.dtype) @ Phi) @ Pt).to(D.dtype)

    return product


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

    Parameters
    ----------
    datasets : sequence
        CausalDataset-like objects (with ``X``, ``T``) or ``(X, T, ...)`` tuples.
    dtype : torch.dtype, default torch.float32
        Dtype of X and W.
    device : str or torch.device, default "cpu"
        Device of the results.

    Returns
    -------
    X : Tensor, shape (B, N, p)
        Covariates, zero-padded.
    W : Tensor, shape (B, N)
        ``2T - 1``, +1 on padding.
    mask : Tensor of bool, shape (B, N)
        Valid units.
    feature_mask : Tensor of bool, shape (B, p)
        Valid covariates.

    Raises
    ------
    ValueError
        No datasets.
    TypeError
        An entry that is neither a dataset object nor a tuple.
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
    return (
        torch.as_tensor(X, dtype=dtype, device=dev),
        torch.as_tensor(W, dtype=dtype, device=dev),
        torch.as_tensor(mask, device=dev),
        torch.as_tensor(fmask, device=dev),
    )
