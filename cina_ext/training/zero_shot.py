"""Training of the zero-shot model (Algorithm 2, docs/method.md §5): data stream, loop, checkpoints.

* **Loss across datasets**: overlap models: the mean over datasets of ``L_d / n_d`` (eq. L divided
  by the dataset's number of valid units), so datasets of different N carry equal weight; ate/att
  models: the mean of the per-dataset balancing objectives (already O(1) at every N), each
  dataset's estimand drawn uniformly from the model's estimands by the data stream.  ZS-S
  (``supervised_weight > 0``) adds ``|tau_hat - tau| / sd(Y)`` on the synthetic truth.
* **Data stream**: the datasets of step ``s`` are a pure function of ``(seed, s, index in the
  global batch)``, so resuming needs no data-loader state and, under DistributedDataParallel,
  rank ``r`` draws the disjoint slice ``[r * B / world, (r + 1) * B / world)`` of the global batch.
  With ``n_draw="step"`` the step's size, and so its batch under ``unit_budget``, is a pure
  function of ``(seed, s)``: every rank draws the same one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .._core.covariates import network_inputs
from ..data import sample_datasets
from ..models.checkpoint import check_writable_target, load_checkpoint, save_atomic
from ..models.zero_shot import CInAZeroShotModel, collate_datasets

__all__ = ["ZeroShotConfig", "train_zero_shot", "config_changes", "RESUMABLE_CHANGES", "step_size", "step_batch"]


@dataclass
class ZeroShotConfig:
    """Training configuration for :func:`train_zero_shot` (plain data; stored in checkpoints).

    Attributes
    ----------
    families : tuple of str, default ("setoguchi", "er")
        Synthetic families of the data stream (at least one).
    setting : {"id", "ood"}, default "id"
        Setting of :func:`cina_ext.data.sample_datasets`.
    n_range : (int, int), default (64, 256)
        Units per dataset.
    n_draw : {"dataset", "step"}, default "dataset"
        How the sizes are drawn from ``n_range``.  "dataset": each dataset uniformly on its own.
        "step": each step first draws one size ``s`` log-uniformly, then each of its datasets
        draws uniformly from ``[max(lo, s // 2), s]``; a batch is padded to its largest dataset,
        so this keeps the padding under 2x while small and large datasets are drawn equally
        often per decade (a wide range such as 100-5,000 units).
    unit_budget : int, optional
        With ``n_draw="step"``: the most units of a step over the global batch.  A step of size
        ``s`` trains ``max(world, floor(unit_budget / s))`` datasets, rounded down to a multiple of
        the world size and at most ``batch_size``, so a step's cost grows less than its size
        does.  None: always ``batch_size``.
    batch_size : int, default 16
        Global batch (datasets per step, summed over ranks); a positive multiple of the world size.
    steps : int, default 1000
        Optimizer steps, >= 1.
    lr : float, default 3e-4
        AdamW learning rate.
    weight_decay : float, default 0.01
        AdamW weight decay.
    warmup_steps : int, default 50
        Linear warm-up steps, >= 0.
    min_lr_ratio : float, default 0.0
        The cosine decays to ``lr * min_lr_ratio``.
    grad_clip : float, default 1.0
        Gradient-norm clipping (0: none).
    seed : int, default 0
        Seed of the model and the data stream.
    dtype : {"float32", "float64"}, default "float32"
        Training dtype.
    device : str, default "cpu"
        Training device.
    backend : {"auto", "fused", "reference"}, default "auto"
        Backend of the attention operator.
    model : dict
        :class:`CInAZeroShotModel` keyword arguments.
    checkpoint_path : str, optional
        Where checkpoints are written.
    checkpoint_every : int, default 0
        Checkpoint period in steps, >= 0 (0: only at the end, if ``checkpoint_path`` is set).
    resume : bool, default True
        Resume from ``checkpoint_path`` if it exists.
    stop_after : int, optional
        Stop (and checkpoint) once this step count is reached.
    time_limit : float, optional
        Stop (and checkpoint) after the first step that ends this many seconds of wall time into
        this call; a later call resumes from there (the schedule is that of ``steps``).  Under
        DistributedDataParallel every rank stops at the same step.
    progress : bool, default False
        tqdm bar on rank 0.
    supervised_weight : float, default 0.0
        ZS-S: weight of ``|tau_hat - tau| / sd(Y)`` (0 = self-supervised ZS); finite and >= 0.
    amp : {"none", "bf16"}, default "none"
        "bf16": the encoder under ``torch.autocast(bfloat16)``; the final layer in ``dtype``.
    override : bool, default False
        Resume ``checkpoint_path`` even if it was trained with another configuration (the changed
        fields are named in the error otherwise; see :data:`RESUMABLE_CHANGES` for those that may
        change freely).
    family_overrides : dict, default {}
        Per family, settings of :func:`cina_ext.data.sample_datasets` that replace the prior's
        (e.g. ``{"er": {"d": (3, 64)}}``: 2-63 covariates, drawn per dataset; a (lo, hi) tuple
        is drawn uniformly, a list is a uniform choice).
    inputs : {"raw", "standard", "normal-scores"}, default "raw"
        What the network reads of each training dataset.  "raw": the covariates as drawn (the
        model standardises them; more than ``max_features`` columns are refused).  "standard" /
        "normal-scores": what :class:`~cina_ext.estimators.CInAZeroShot` gives it with that
        ``scaling`` (:func:`cina_ext._core.covariates.network_inputs`: the normal scores of the
        continuous columns if asked, standardised, and projected onto ``max_features`` principal
        directions when wider), so the network trains on the inputs it will see; the loss is
        the balancing objective of those inputs.
    init_from : str, optional
        Start from the weights of this checkpoint (a training checkpoint or an exported model
        with the same architecture; the objective, ``balance_lam`` and ``balance_gamma`` of
        ``model``, may differ) with a fresh optimizer and schedule: fine-tuning.
        Ignored when the run resumes its own ``checkpoint_path``.
    data_workers : int, default 0
        Worker processes (per rank) that draw the datasets of the coming steps, and their
        network inputs, while the current step trains; 0: drawn in the loop.  The datasets are a
        pure function of ``(seed, step, index)``, so the stream, and the run, are the same with
        any number of workers.  On a GPU a step should take far less time than drawing its
        datasets on the CPU (docs/benchmarks.md).
    """

    families: Tuple[str, ...] = ("setoguchi", "er")
    setting: str = "id"
    n_range: Tuple[int, int] = (64, 256)
    n_draw: str = "dataset"  # "dataset" | "step": one log-uniform size per step (see the docstring)
    unit_budget: Optional[int] = None  # with n_draw="step": the most units of a step, over all ranks
    batch_size: int = 16  # global batch (datasets per step, summed over ranks)
    steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    backend: str = "auto"
    model: Dict[str, Any] = field(default_factory=dict)  # CInAZeroShotModel kwargs
    checkpoint_path: Optional[str] = None
    checkpoint_every: int = 0  # 0: only at the end (if checkpoint_path is set)
    resume: bool = True  # resume from checkpoint_path if it exists
    stop_after: Optional[int] = None  # stop (and checkpoint) once this step count is reached
    time_limit: Optional[float] = None  # stop (and checkpoint) after this many seconds of this call
    progress: bool = False
    supervised_weight: float = 0.0  # ZS-S: weight of |tau_hat - tau| / sd(Y) (0 = self-supervised ZS)
    amp: str = "none"  # "bf16": encoder under torch.autocast(bfloat16); final layer in dtype
    override: bool = False  # resume even if the checkpoint was trained with another configuration
    family_overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per family: sample_datasets settings
    inputs: str = "raw"  # "raw" | "standard" | "normal-scores": what the network reads of each dataset
    init_from: Optional[str] = None  # fine-tune: start from this checkpoint's weights
    data_workers: int = 0  # processes drawing the coming steps' datasets (the same stream with any number)

    @classmethod
    def from_any(cls, config) -> "ZeroShotConfig":
        """A configuration from a :class:`ZeroShotConfig` (copied), a dict of its fields, or None.

        Parameters
        ----------
        config : ZeroShotConfig, dict or None
            None gives the defaults.

        Returns
        -------
        ZeroShotConfig
            A new configuration.

        Raises
        ------
        ValueError
            A dict with unknown keys.
        TypeError
            Any other type.
        """
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
        """Check the configuration for a run on ``world`` ranks; returns None.

        Parameters
        ----------
        world : int
            Number of ranks (1 without torch.distributed).

        Raises
        ------
        ValueError
            ``batch_size`` not a positive multiple of ``world``; ``steps < 1``; ``warmup_steps < 0``;
            ``dtype`` not float32/float64; no ``families``; ``checkpoint_every < 0``;
            ``supervised_weight`` negative or not finite; ``amp`` not "none" or "bf16";
            ``family_overrides`` naming a family not in ``families``; ``inputs`` not one of "raw",
            "standard", "normal-scores"; ``time_limit`` not a positive number; ``n_range`` not
            ``2 <= lo <= hi``; ``n_draw`` not "dataset" or "step"; ``unit_budget`` without
            ``n_draw="step"`` or below one unit per rank; ``data_workers`` not an integer >= 0.
        """
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
        if self.time_limit is not None and not (float(self.time_limit) > 0 and math.isfinite(float(self.time_limit))):
            raise ValueError(f"time_limit must be a positive number of seconds, got {self.time_limit!r}")
        lo, hi = _n_bounds(self.n_range)
        if not 2 <= lo <= hi:
            raise ValueError(f"n_range must be an int or (lo, hi) with 2 <= lo <= hi, got {self.n_range!r}")
        if self.n_draw not in ("dataset", "step"):
            raise ValueError(f"n_draw must be 'dataset' or 'step', got {self.n_draw!r}")
        if self.unit_budget is not None:
            if self.n_draw != "step":
                raise ValueError("unit_budget needs n_draw='step' (the budget is shared by the datasets of one size)")
            if (
                isinstance(self.unit_budget, bool)
                or int(self.unit_budget) != self.unit_budget
                or self.unit_budget < world
            ):
                raise ValueError(
                    f"unit_budget must be an integer >= the world size ({world}), got {self.unit_budget!r}"
                )
        if self.inputs not in TRAINING_INPUTS:
            raise ValueError(f"inputs must be one of {TRAINING_INPUTS}, got {self.inputs!r}")
        if isinstance(self.data_workers, bool) or int(self.data_workers) != self.data_workers or self.data_workers < 0:
            raise ValueError(f"data_workers must be an integer >= 0, got {self.data_workers!r}")
        unknown = sorted(set(self.family_overrides) - set(self.families))
        if unknown:
            raise ValueError(f"family_overrides names families not in families {tuple(self.families)}: {unknown}")


#: What the network may read of a training dataset (``ZeroShotConfig.inputs``).
TRAINING_INPUTS = ("raw", "standard", "normal-scores")
#: A field missing from an older checkpoint's configuration had this value then.
_FIELD_DEFAULTS = {"inputs": "raw", "init_from": None, "n_draw": "dataset", "unit_budget": None, "data_workers": 0}


#: Model-configuration keys of the training objective, not of the architecture: a fine-tune
#: (``init_from``) may change them.
OBJECTIVE_KEYS = frozenset({"balance_lam", "balance_gamma"})


def _architecture(model_config: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """A model configuration without its objective keys (``None`` stays ``None``)."""
    if model_config is None:
        return None
    return {k: _plain(v) for k, v in model_config.items() if k not in OBJECTIVE_KEYS}


def _draw_for_network(cfg: ZeroShotConfig, step: int, index: int, n_estimands: int, size: Optional[int], width: int):
    """:func:`_draw_dataset` and the dataset's network inputs (None for ``inputs="raw"``): the
    task of a data worker, or of the loop without them."""
    d, est = _draw_dataset(cfg, step, index, n_estimands, size)
    net = None if cfg.inputs == "raw" else network_inputs(d.X, cfg.inputs, width)[0]
    return d, est, net


_WORKER_LIMITS = None


def _worker_start() -> None:
    """One thread per data worker, for torch and for numpy's BLAS: the cores are the other
    workers' (and the loop's); several BLAS threads per worker made the stream slower than none."""
    global _WORKER_LIMITS
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    _WORKER_LIMITS = threadpool_limits(limits=1, user_api="blas")  # held for the worker's life


class _StepData:
    """The datasets of each step for one rank: drawn in the loop (``workers=0``) or by worker
    processes that run ``ahead`` steps ahead of it, one task per dataset.  ``get(step)`` returns
    ``(drawn, network_batch)``: the ``(dataset, estimand index)`` pairs and the datasets as the
    network reads them; the same values either way."""

    def __init__(self, cfg: ZeroShotConfig, rank: int, world: int, n_estimands: int, width: int, end: int):
        self.cfg, self.rank, self.world, self.n_est, self.width, self.end = cfg, rank, world, n_estimands, width, end
        self.workers = int(cfg.data_workers)
        self.ahead = 2 * self.workers
        self.pending: Dict[int, list] = {}  # step -> the futures of its datasets
        self.pool = None
        if self.workers:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork where there is one, as torch's DataLoader does: the workers only run numpy
            # (no torch, no CUDA) and need not re-import the caller's script, as spawned ones do
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_start)

    def _indices(self, step: int):
        size = step_size(self.cfg, step)
        per = step_batch(self.cfg, size, self.world) // self.world
        return size, range(self.rank * per, (self.rank + 1) * per)

    def _submit(self, step: int) -> None:
        size, idx = self._indices(step)
        args = (self.n_est, size, self.width)
        self.pending[step] = [self.pool.submit(_draw_for_network, self.cfg, step, i, *args) for i in idx]

    def get(self, step: int):
        if self.pool is None:
            from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

            size, idx = self._indices(step)
            # one BLAS thread, as in a worker: a threaded product sums in another order, and the
            # data must not depend on where they are drawn
            with threadpool_limits(limits=1, user_api="blas"):
                out = [_draw_for_network(self.cfg, step, i, self.n_est, size, self.width) for i in idx]
        else:
            from concurrent.futures.process import BrokenProcessPool

            for s in range(step, min(self.end, step + self.ahead + 1)):
                if s not in self.pending:
                    self._submit(s)
            futures = self.pending.pop(step)
            try:
                out = [f.result() for f in futures]
            except BrokenProcessPool as exc:
                raise RuntimeError(
                    "a data worker process died (data_workers / --data-workers); where workers are "
                    "spawned, a script that trains must do so under `if __name__ == '__main__':`. "
                    "data_workers=0 draws the same data in the training loop"
                ) from exc
        drawn = [(d, e) for d, e, _ in out]
        batch = [d if net is None else dataclasses.replace(d, X=net, feature_names=[]) for d, _, net in out]
        return drawn, batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
        self.pending.clear()


def _n_bounds(n_range) -> Tuple[int, int]:
    """``n_range`` (an int or (lo, hi)) as (lo, hi)."""
    if isinstance(n_range, (int, np.integer)):
        return int(n_range), int(n_range)
    lo, hi = n_range
    return int(lo), int(hi)


def step_size(cfg: ZeroShotConfig, step: int) -> Optional[int]:
    """The size of step ``step`` under ``n_draw="step"`` (log-uniform on ``n_range``); None otherwise.

    A pure function of ``(seed, step)``, so every rank and every resume agrees on it.
    """
    if cfg.n_draw != "step":
        return None
    lo, hi = _n_bounds(cfg.n_range)
    # its own spawn key: never the stream of a dataset of the step ([seed, step, index])
    u = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), int(step)], spawn_key=(1,))).random()
    return int(min(hi, max(lo, round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))))))


def step_batch(cfg: ZeroShotConfig, size: Optional[int], world: int) -> int:
    """Datasets in the global batch of a step of ``size`` units (see ``ZeroShotConfig.unit_budget``)."""
    if cfg.unit_budget is None or size is None:
        return int(cfg.batch_size)
    fit = max(world, int(cfg.unit_budget) // int(size))
    return int(min(cfg.batch_size, fit - fit % world))


def _draw_dataset(cfg: ZeroShotConfig, step: int, index: int, n_estimands: int = 1, size: Optional[int] = None):
    """Dataset ``index`` of step ``step`` and the index of the estimand it trains (pure function).

    ``size``: the step's size under ``n_draw="step"`` (:func:`step_size`); the dataset then has
    ``max(lo, size // 2)`` to ``size`` units.
    """
    ss = np.random.SeedSequence([int(cfg.seed), int(step), int(index)])
    fam_rng = np.random.default_rng(ss.spawn(1)[0])
    family = cfg.families[int(fam_rng.integers(0, len(cfg.families)))]
    est = int(fam_rng.integers(0, max(1, int(n_estimands))))
    if size is None:  # as drawn before n_draw existed (an int draws nothing)
        n_range = tuple(cfg.n_range) if not isinstance(cfg.n_range, int) else cfg.n_range
    else:
        n_range = (max(_n_bounds(cfg.n_range)[0], int(size) // 2), int(size))
    extra = dict(cfg.family_overrides.get(family, {}))
    return next(iter(sample_datasets(family, 1, n_range, seed=ss, setting=cfg.setting, **extra))), est


def _collate_outcomes(batch, estimands: Sequence[str], est_idx: Sequence[int], N: int, *, dtype, device):
    """Outcomes (B, N), truth (B,) for each dataset's estimand (NaN if unknown), sd(Y) (B,)."""
    Y = np.zeros((len(batch), N))
    tau = np.full(len(batch), np.nan)
    sd = np.ones(len(batch))
    for i, (d, e) in enumerate(zip(batch, est_idx)):
        Y[i, : d.n] = d.Y
        t = d.truth(estimands[e])
        tau[i] = np.nan if t is None else float(t)
        s = float(np.std(d.Y))
        sd[i] = s if s > 1e-12 else 1.0
    return (
        torch.as_tensor(Y, dtype=dtype, device=device),
        torch.as_tensor(tau, dtype=dtype, device=device),
        torch.as_tensor(sd, dtype=dtype, device=device),
    )


#: Fields a resumed run may change freely: where and how often it saves, when it stops, where it runs.
RESUMABLE_CHANGES = frozenset(
    {
        "checkpoint_path",
        "checkpoint_every",
        "resume",
        "stop_after",
        "time_limit",
        "progress",
        "device",
        "backend",
        "override",
        "data_workers",
    }
)


def _plain(v):
    """Tuples and lists alike (a configuration read back from a file compares equal to the original)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def config_changes(saved: Optional[Dict[str, Any]], cfg: ZeroShotConfig) -> List[str]:
    """Fields of ``cfg`` that differ from the configuration a checkpoint was trained with (the
    fields of :data:`RESUMABLE_CHANGES` aside; ``steps`` may grow, which extends the schedule,
    but not shrink)."""
    if not saved:
        return []
    now = dataclasses.asdict(cfg)
    out = []
    for k in sorted(set(now) | set(saved)):
        if k in RESUMABLE_CHANGES:
            continue
        if k == "steps" and isinstance(saved.get(k), int) and now[k] >= saved[k]:
            continue
        if _plain(saved.get(k, _FIELD_DEFAULTS.get(k))) != _plain(now.get(k)):
            out.append(f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now")
    return out


def _out_of_time(started: float, limit: float, distributed: bool, device) -> bool:
    """Whether ``limit`` seconds have passed since ``started``; under DDP, on any rank (so that
    every rank leaves the loop at the same step)."""
    over = time.perf_counter() - started >= float(limit)
    if not distributed:
        return over
    import torch.distributed as dist

    flag = torch.tensor([1.0 if over else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _lr_lambda(cfg: ZeroShotConfig):
    warm, total, floor = int(cfg.warmup_steps), int(cfg.steps), float(cfg.min_lr_ratio)

    def f(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        prog = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * prog))

    return f


def _rng_state() -> Dict[str, Any]:
    """The three generators' states as tensors and plain data (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def _set_rng_state(s: Dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = s["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


def train_zero_shot(config=None) -> Tuple[CInAZeroShotModel, Dict[str, List[float]]]:
    """Algorithm 2: train a :class:`CInAZeroShotModel` on streamed synthetic datasets.

    Seeded and reproducible; with ``checkpoint_path`` set, an atomic checkpoint (model, optimizer,
    scheduler, RNG states, step, history) is written every ``checkpoint_every`` steps and at the
    end, and a later call with ``resume=True`` continues exactly where it stopped.  When
    ``torch.distributed`` is initialised the model is wrapped in ``DistributedDataParallel`` and
    each rank trains on its slice of the global batch; only rank 0 writes checkpoints.

    Parameters
    ----------
    config : ZeroShotConfig or dict, optional
        The configuration (a dict of its fields); None: the defaults.

    Returns
    -------
    model : CInAZeroShotModel
        The unwrapped module, in eval mode.
    history : dict
        ``{"step": [...], "loss": [...], "lr": [...]}`` (the loss is the global batch mean,
        identical on every rank).

    Raises
    ------
    ValueError
        An invalid configuration (see :meth:`ZeroShotConfig.validate`); a checkpoint whose model
        configuration differs from ``config.model``; ``supervised_weight`` with an overlap model.
    TypeError
        ``config`` of another type.
    FloatingPointError
        The training loss became non-finite.
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
    np.random.seed(cfg.seed % (2**32))
    random.seed(cfg.seed)
    model = CInAZeroShotModel(**cfg.model).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    history: Dict[str, List[float]] = {"step": [], "loss": [], "lr": []}
    step = 0
    seconds_before = 0.0  # training time of earlier runs of a resumed schedule

    if cfg.checkpoint_path:
        check_writable_target(cfg.checkpoint_path)  # before any training, not after it
    if cfg.checkpoint_path and cfg.resume and os.path.isfile(cfg.checkpoint_path):
        ckpt = load_checkpoint(cfg.checkpoint_path, map_location=device)
        if ckpt["model_config"] != model.config:
            raise ValueError("checkpoint model configuration differs from config.model; cannot resume")
        changed = config_changes(ckpt.get("train_config"), cfg)
        if changed and not cfg.override:
            raise ValueError(
                f"{cfg.checkpoint_path!r} was trained with another configuration; resuming would mix "
                "the two (" + "; ".join(changed) + "). Pass override=True (cina train --override) "
                "to resume anyway, or resume=False (--no-resume) to start afresh"
            )
        model.load_state_dict(ckpt["model_state"])
        opt.load_state_dict(ckpt["optimizer_state"])
        sched.load_state_dict(ckpt["scheduler_state"])
        _set_rng_state(ckpt["rng_state"])
        step = int(ckpt["step"])
        history = {k: list(v) for k, v in ckpt["history"].items()}
        seconds_before = float(ckpt.get("train_seconds", 0.0))
    elif cfg.init_from:
        init = load_checkpoint(cfg.init_from, map_location=device)
        if _architecture(init.get("model_config")) != _architecture(model.config):
            raise ValueError(
                f"init_from={cfg.init_from!r} has another architecture than config.model; "
                "fine-tuning needs the same architecture (pass its model configuration; only the "
                f"objective, {sorted(OBJECTIVE_KEYS)}, may change)"
            )
        model.load_state_dict(init["model_state"])
    started = time.perf_counter()

    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model)

    def checkpoint() -> None:
        if rank != 0 or not cfg.checkpoint_path:
            return
        save_atomic(
            {
                "model_state": model.state_dict(),
                "model_config": model.config,
                "dtype": cfg.dtype,
                "optimizer_state": opt.state_dict(),
                "scheduler_state": sched.state_dict(),
                "rng_state": _rng_state(),
                "step": step,
                "history": history,
                "train_config": dataclasses.asdict(cfg),
                "kind": "cina_ext.zeroshot",
                "train_seconds": seconds_before + time.perf_counter() - started,
                "world_size": world,
                "torch": str(torch.__version__),
            },
            cfg.checkpoint_path,
        )

    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, int(cfg.stop_after))
    bar = None
    if cfg.progress and rank == 0:
        try:
            from tqdm.auto import tqdm

            # a bar only on a terminal: in a log file it would be hundreds of carriage-return lines
            bar = tqdm(
                total=end,
                initial=step,
                desc="cina train",
                leave=False,
                disable=not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()),
            )
        except ImportError:  # tqdm is an optional extra
            bar = None

    model.train()
    if cfg.supervised_weight > 0 and not model.balancing:
        raise ValueError("supervised_weight (ZS-S) needs an ate/att model (model estimands), not an overlap one")
    amp = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.amp == "bf16" else contextlib.nullcontext()
    )
    data = _StepData(cfg, rank, world, len(model.estimands), model.max_features, end)
    try:
        while step < end:
            drawn, batch = data.get(step)
            X, W, mask, fmask = collate_datasets(batch, dtype=dtype, device=device)
            if model.balancing:
                est_idx = torch.tensor([e for _, e in drawn], dtype=torch.long, device=device)
                with amp:
                    K, V, b = net(X, W, mask, fmask, est_idx)
                K, V, b = K.to(dtype), V.to(dtype), b.to(dtype)
                w = model.balance_weights(K, V, b, W, mask, est_idx, backend=cfg.backend)
                loss = model.balance_objective(X, W, mask, fmask, w, est_idx).mean()
                if cfg.supervised_weight > 0:  # ZS-S (docs/method.md §5): |tau_hat - tau| on datasets with known truth
                    Y, tau, sdY = _collate_outcomes(
                        [d for d, _ in drawn],
                        model.estimands,
                        [e for _, e in drawn],
                        X.shape[1],
                        dtype=dtype,
                        device=device,
                    )
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
            if cfg.time_limit is not None and _out_of_time(started, cfg.time_limit, distributed, device):
                break
    finally:
        data.close()
    if bar is not None:
        bar.close()
    if cfg.checkpoint_path and not (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
        checkpoint()
    model.eval()
    return model, history
