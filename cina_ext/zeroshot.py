"""Zero-shot CInA (method.md §5, Algorithms 2-3): one network amortises the balancing problem.

A :class:`CInAZeroShotModel` maps a whole dataset ``(X, W)`` to keys ``K``, scalar values ``V``
and an intercept ``b``; training (:func:`train_zero_shot`) minimises the mean over many unlabeled
synthetic datasets of the attention hinge loss (eq. L, :func:`cina_ext.ops.attention_hinge`);
inference (:class:`CInAZeroShot`) is one forward pass plus the eq. R read-out -- no per-dataset
optimisation.  The estimand is ``"overlap"`` (the SVM dual of method.md §2, which is what eq. L
computes); "ate"/"att" zero-shot losses are not implemented yet.

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
  score is bounded by ``sqrt(key_dim)``: no overflow, method.md §7.1/§7.3).  The value head reads
  the encoder output; the intercept head reads the masked mean of the encoder output.
* **Scale of lam**: the user-facing ``lam`` is relative, ``lam_abs = lam / n_valid`` per dataset
  (the same rule as :class:`cina_ext.estimators.CInA` for "overlap"; with keys of bounded norm
  ``h ~ N``, so ``lam_abs * h`` is O(lam) at every N).  The value head is parametrised as
  ``V = W * softplus(v) / lam``: the optimal V has the sign of W (eq. R with alpha >= 0), every
  unit gets alpha > 0 (so no arm can end with zero weight), and ``alpha = lam_abs V h W =
  softplus(v) h / N`` is O(1) whatever lam and N are.
* **Loss across datasets**: mean over datasets of ``L_d / n_d`` (eq. L divided by the dataset's
  number of valid units), so datasets of different N carry equal weight; for each dataset this
  is the same minimisation problem as eq. L.
* **Data stream**: the datasets of step ``s`` are a pure function of ``(seed, s, index in the
  global batch)``, so resuming needs no data-loader state and, under DistributedDataParallel,
  rank ``r`` draws the disjoint slice ``[r * B / world, (r + 1) * B / world)`` of the global batch.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from sklearn.base import BaseEstimator

from . import ops
from . import reference
from ._validation import check_design, check_outcome

__all__ = [
    "CInAZeroShotModel",
    "ZeroShotConfig",
    "train_zero_shot",
    "collate_datasets",
    "load_checkpoint",
    "CInAZeroShot",
]

DEFAULT_LAM = 0.01  # relative; lam_abs = lam / n_valid (module docstring)
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
                 lam: float = DEFAULT_LAM, loss: str = "hinge"):
        super().__init__()
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
                           key_dim=int(key_dim), dropout=float(dropout), lam=float(lam), loss=str(loss))
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
        self.intercept_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))
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
    def forward(self, X: Tensor, W: Tensor, mask: Optional[Tensor] = None,
                feature_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        mask, feature_mask = self._check(X, W, mask, feature_mask)
        Z = self.standardise(X, mask, feature_mask)
        Wz = torch.where(mask, W, torch.zeros_like(W))
        h = self.emb_x(Z) + Wz.unsqueeze(-1) * self.emb_w
        pad = ~mask
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=pad)
        h = self.norm(h)
        h = torch.where(mask.unsqueeze(-1), h, torch.zeros_like(h))
        K = self.key_head(Z)
        K = torch.where(mask.unsqueeze(-1), K, torch.zeros_like(K))
        # sign(V) = W (the sign of the optimal V, eq. R with alpha >= 0), so alpha > 0 for every unit
        V = Wz * torch.nn.functional.softplus(self.value_head(h).squeeze(-1)) / self.lam
        V = torch.where(mask, V, torch.zeros_like(V))
        n = mask.sum(-1, keepdim=True).to(h.dtype)
        pooled = h.sum(1) / n
        b = self.intercept_head(pooled).squeeze(-1)
        return K, V, b

    # -- objective and read-out ----------------------------------------------------------------
    def lam_abs(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """Absolute penalty per dataset, ``lam / n_valid`` (B,)."""
        return self.lam / mask.sum(-1).to(dtype)

    def objective(self, K: Tensor, V: Tensor, b: Tensor, W: Tensor, mask: Tensor, *,
                  backend: str = "auto") -> Tensor:
        """Mean over datasets of eq. L / n_valid, from the outputs of :meth:`forward`."""
        lam = self.lam_abs(mask, K.dtype)
        Wz = torch.where(mask, W, torch.ones_like(W))
        L, _, _ = ops.attention_hinge(K, V, Wz, b, lam, mask, loss=self.loss_kind, backend=backend)
        return (L / mask.sum(-1).to(L.dtype)).mean()

    def loss(self, X: Tensor, W: Tensor, mask: Optional[Tensor] = None, feature_mask: Optional[Tensor] = None,
             *, backend: str = "auto") -> Tensor:
        """Training loss: mean over datasets of eq. L / n_valid (scalar)."""
        mask, feature_mask = self._check(X, W, mask, feature_mask)
        K, V, b = self(X, W, mask, feature_mask)
        return self.objective(K, V, b, W, mask, backend=backend)

    @torch.no_grad()
    def weights(self, X: Tensor, W: Tensor, mask: Optional[Tensor] = None, feature_mask: Optional[Tensor] = None,
                *, backend: str = "auto", return_alpha: bool = False):
        """Eq. R read-out: per-arm normalised balancing weights (B, N), estimand "overlap".

        Raises ``ValueError`` if an arm of some dataset gets zero total weight.
        """
        mask, feature_mask = self._check(X, W, mask, feature_mask)
        K, V, b = self(X, W, mask, feature_mask)
        lam = self.lam_abs(mask, K.dtype)
        Wz = torch.where(mask, W, torch.ones_like(W))
        _, _, lse = ops.attention_hinge(K, V, Wz, b, lam, mask, loss=self.loss_kind, backend=backend)
        alpha = reference.readout_alpha(V, Wz, lse, lam, mask, loss=self.loss_kind)
        w = reference.readout_weights(alpha, Wz, mask)
        return (w, alpha) if return_alpha else w


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


def _draw_dataset(cfg: ZeroShotConfig, step: int, index: int):
    from .data import sample_datasets

    ss = np.random.SeedSequence([int(cfg.seed), int(step), int(index)])
    fam_rng = np.random.default_rng(ss.spawn(1)[0])
    family = cfg.families[int(fam_rng.integers(0, len(cfg.families)))]
    n_range = tuple(cfg.n_range) if not isinstance(cfg.n_range, int) else cfg.n_range
    return next(iter(sample_datasets(family, 1, n_range, seed=ss, setting=cfg.setting)))


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
    while step < end:
        idx = range(rank * per, (rank + 1) * per)
        batch = [_draw_dataset(cfg, step, i) for i in idx]
        X, W, mask, fmask = collate_datasets(batch, dtype=dtype, device=device)
        K, V, b = net(X, W, mask, fmask)
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

class CInAZeroShot(BaseEstimator):
    """Zero-shot CInA estimator (Algorithm 3): one forward pass gives the balancing weights.

    ``model``: a trained :class:`CInAZeroShotModel`, or ``checkpoint``: a path written by
    :func:`train_zero_shot`.  Estimand ``"overlap"`` (method.md §6).  ``fit(X, T)`` sets
    ``weights_`` (non-negative, summing to one in each arm); ``ate(Y)`` returns
    ``sum_i w_i W_i Y_i``.  ``estimate_many(datasets)`` does many datasets in padded batches.
    """

    estimand = "overlap"

    def __init__(self, model: Optional[CInAZeroShotModel] = None, checkpoint: Optional[str] = None,
                 backend: str = "auto", batch_size: int = 32):
        self.model = model
        self.checkpoint = checkpoint
        self.backend = backend
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: Optional[str] = None, **kwargs) -> "CInAZeroShot":
        if path is None:
            raise ValueError("no pretrained CInA zero-shot model ships with cina-ext yet: train one with "
                             "cina_ext.zeroshot.train_zero_shot(config) (set checkpoint_path) and pass that path")
        est = cls(checkpoint=str(path), **kwargs)
        est._get_model()
        return est

    def _get_model(self) -> CInAZeroShotModel:
        if self.model is not None:
            if not isinstance(self.model, CInAZeroShotModel):
                raise TypeError(f"model must be a CInAZeroShotModel, got {type(self.model).__name__}")
            return self.model
        if self.checkpoint is None:
            raise ValueError("CInAZeroShot needs a trained model: pass model=... or checkpoint=PATH "
                             "(no pretrained model ships yet)")
        cached = getattr(self, "_loaded", None)
        if cached is None or cached[0] != self.checkpoint:
            self._loaded = (self.checkpoint, model_from_checkpoint(self.checkpoint))
        return self._loaded[1]

    def _dtype_device(self, model):
        p = next(model.parameters())
        return p.dtype, p.device

    def fit(self, X, T):
        model = self._get_model()
        dd = check_design(X, T)
        if dd.X.shape[1] > model.max_features:
            raise ValueError(f"X has {dd.X.shape[1]} covariates but the model accepts at most "
                             f"max_features={model.max_features}")
        dtype, device = self._dtype_device(model)
        Xt, Wt, mask, fm = collate_datasets([(dd.X, dd.T)], dtype=dtype, device=device)
        model.eval()
        w = model.weights(Xt, Wt, mask, fm, backend=self.backend)
        self.weights_ = w[0].detach().cpu().double().numpy()
        self.T_ = np.asarray(dd.T, dtype=np.int64)
        self.n_ = int(self.T_.shape[0])
        self.feature_names_in_ = dd.feature_names
        return self

    def ate(self, Y) -> float:
        if not hasattr(self, "weights_"):
            raise ValueError("call fit(X, T) before ate(Y)")
        Ya = check_outcome(Y, self.n_)
        Wsign = 2.0 * self.T_ - 1.0
        return float(np.sum(self.weights_ * Wsign * Ya))

    def estimate_many(self, datasets: Sequence, Y: Optional[Sequence] = None) -> np.ndarray:
        """Estimates for many datasets (CausalDataset objects or ``(X, T, Y)`` tuples), batched."""
        model = self._get_model()
        dtype, device = self._dtype_device(model)
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
        model.eval()
        for s in range(0, len(designs), bs):
            chunk = designs[s:s + bs]
            Xt, Wt, mask, fm = collate_datasets(chunk, dtype=dtype, device=device)
            w = model.weights(Xt, Wt, mask, fm, backend=self.backend).detach().cpu().double().numpy()
            for j, (x, t) in enumerate(chunk):
                n = x.shape[0]
                out[s + j] = float(np.sum(w[j, :n] * (2.0 * t - 1.0) * outcomes[s + j]))
        return out
