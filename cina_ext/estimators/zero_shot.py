"""Zero-shot CInA estimator (Algorithm 3, docs/method.md §5): weights from one forward pass.

The network is :class:`cina_ext.models.zero_shot.CInAZeroShotModel`; this module wraps it in the
shared estimator interface, adds the descent steps on the balancing objective (``descent_steps``),
the optional exact-solver refinement (``refine``) and the batched ``estimate_many``.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .._core.checks import check_design, check_estimand, check_outcome, seed_from
from .._core.covariates import SCALINGS, network_inputs
from ..models.checkpoint import PRETRAINED_FILE, model_from_checkpoint, pretrained_path
from ..models.zero_shot import (
    DEFAULT_LANDMARKS,
    DESCENT_KERNEL_LIMIT,
    DESCENT_STEPS,
    MATERIALISE_LIMIT,
    CInAZeroShotModel,
    _as_xt,
    collate_datasets,
    sample_landmarks,
)
from ..ops import dual_solve
from .base import _WeightingEstimator
from .low_rank import DEFAULT_RANK, RandomFourierFeatures, rank_for, simplex_balance
from .tuning import LAM_GRID, select_lam

__all__ = ["CInAZeroShot"]

#: Above this many units ``approximation="auto"`` switches to landmark attention (and
#: ``approximation="exact"`` warns that the network's attention is quadratic in N).
ZERO_SHOT_EXACT_LIMIT = 20_000
#: The fewest landmarks of the network's pass under ``approximation="auto"`` when the exact
#: descent steps follow it at the model's penalty (ate/att models, ``descent_steps > 0``, at most
#: DESCENT_EXACT_LIMIT units): the count is ``2 sqrt(N)``, at least this and at most
#: DEFAULT_LANDMARKS (:func:`warm_start_landmarks`).  The steps start from its weights; started
#: from that pass they give the MAE of the exact pass within a few per cent on the columns of
#: benchmarks/eval_accuracy.py, for half to a tenth of the network's time (docs/benchmarks.md,
#: "the network's pass against landmarks").
WARM_START_LANDMARKS = 64
#: Above this many units the descent steps and ``refine`` work in random Fourier features of the
#: objective's kernel (O(N r)) instead of its N x N Gram matrix, whatever the network's pass: the
#: largest N whose float32 Gram matrix the descent holds (DESCENT_KERNEL_LIMIT entries, 1 GiB).
DESCENT_EXACT_LIMIT = math.isqrt(DESCENT_KERNEL_LIMIT)
#: Seconds per unit^2 of one exact forward pass of the shipped model on the 2-core development
#: CPU (an order of magnitude, for the warning only; docs/benchmarks.md).
ZERO_SHOT_SECONDS_PER_UNIT2 = 4e-8
_APPROXIMATIONS = ("auto", "exact", "landmarks")
#: The exact refinement starts from the weights it receives with, per arm, those below this
#: fraction of the arm's largest set to 0: the optimum is sparse and the working-set solver spends
#: an iteration on every unit it must empty (LaLonde-PSID, ATT, refined to convergence: 2,853
#: iterations from the descent's dense weights, 584 from their support; docs/method.md §5).
REFINE_SUPPORT = 0.01


class CInAZeroShot(_WeightingEstimator):
    """Zero-shot CInA estimator (Algorithm 3): one forward pass gives the balancing weights.

    The shared interface applies: ``fit(X, T)`` sets ``weights_`` (non-negative, one per arm),
    ``ate(Y)``, ``ate_interval(Y)`` (bootstrap: one forward pass per resample), ``balance()``,
    ``summary()``; :meth:`estimate_many` does many datasets in padded batches.

    Parameters
    ----------
    model : CInAZeroShotModel, optional
        A trained model.
    checkpoint : str, optional
        Or the path of a checkpoint written by :func:`train_zero_shot` (used when ``model`` is
        None); :meth:`from_pretrained` with no path loads the model shipped in the package (ATE by
        default, ATT on request; see docs/model_card.md).
    estimand : str, optional
        None = the model's first estimand, else one it was trained for ("ate"/"att", or
        "overlap" for eq.-L models).
    refine : int, default 0
        After the forward pass, run up to this many iterations of the exact solver on the
        balancing problem the model was trained on (RBF kernel with the model's bandwidth rule,
        at the penalty ``lam``; with ``lam="auto"`` on every penalty of the grid before the choice),
        warm-started at the support of the steps' weights (docs/method.md §5, §7.2, "amortised
        + refined"; ate/att models only), after the descent steps; 0 = no solver.  Above
        :data:`DESCENT_EXACT_LIMIT` units the solver is the low-rank dual
        of :func:`~cina_ext.estimators.low_rank.simplex_balance` in 512 random Fourier features of
        that kernel, warm-started at the imbalance of the weights (O(N r), any N).
    backend : {"auto", "fused", "reference"}, default "auto"
        Backend of the attention operator and of the descent steps
        (:func:`cina_ext.ops.balance_descent`: its compiled kernel is CPU only, "auto" runs the
        PyTorch twin on CUDA).
    batch_size : int, default 32
        Datasets per padded batch in :meth:`estimate_many`.
    random_state : None, int or numpy Generator, optional
        Seed of the bootstrap, of the landmarks, of the median bandwidth's subsample of the
        objective (datasets of more than 2000 units; the subsample ``KernelBalancing`` draws with
        the same ``random_state``) and of the random Fourier features of the steps and the
        refinement on large datasets (None: all but the bootstrap seeded with 0, so refits agree).
    verbose : bool, default False
        Progress bars.
    approximation : {"auto", "exact", "landmarks"}, default "auto"
        The network's pass.  "exact": the full forward pass, whose attention layers are
        quadratic in N (above :data:`ZERO_SHOT_EXACT_LIMIT` units a warning states the
        estimated time).  "landmarks": every attention of the network against ``landmarks``
        units sampled from the dataset (stratified by arm, seeded as the random features are:
        by ``random_state``, 0 without one;
        :meth:`~cina_ext.models.zero_shot.CInAZeroShotModel.weights_landmarks`): O(N m) work,
        O(N) memory; a dataset of at most ``landmarks`` units gets the exact pass.  "auto":
        where the exact descent steps follow at a given penalty (ate/att models,
        ``descent_steps > 0``, ``lam`` not "auto", at most :data:`DESCENT_EXACT_LIMIT` units),
        the pass against :func:`warm_start_landmarks` landmarks (``2 sqrt(N)``, at least
        :data:`WARM_START_LANDMARKS`), which starts the steps about as well as the exact pass
        does (measured on every evaluation column, docs/benchmarks.md) at a fraction of its
        cost; otherwise exact up to
        ``ZERO_SHOT_EXACT_LIMIT`` units and against ``DEFAULT_LANDMARKS`` landmarks beyond
        (with a warning saying so).  A dataset's landmarks do not depend on the other datasets
        of an :meth:`estimate_many` batch.  "landmarks": ate/att models only.
    landmarks : int, optional
        Landmarks per dataset of every landmark pass, >= 2 (default: :func:`warm_start_landmarks`
        before the exact descent steps, else
        :data:`~cina_ext.models.zero_shot.DEFAULT_LANDMARKS`).
    scaling : {None, "standard", "normal-scores"}, default None
        What the covariates become before the network (and the refinement) sees them:
        "standard" = standardised columns; "normal-scores" = every continuous column (at least 10
        distinct values) replaced by its normal scores first, then standardised, as in
        :class:`~cina_ext.estimators.KernelBalancing` (heavy tails and point masses such as
        earnings at 0 become Gaussian-like, the shape of the training data; binary and other
        discrete columns are left as they are).  None: "normal-scores" for ate/att models,
        "standard" for overlap models (docs/method.md §8).
    n_components : int, optional
        Most inputs the network reads, 1 to the model's ``max_features`` (default: all of them).
        A dataset with more covariates is projected onto its ``n_components`` leading principal
        directions, rotated so that every input has the same variance
        (:func:`~cina_ext._core.covariates.principal_projection`): the network's kernel on
        the projection approximates the kernel on all the covariates, so there is no limit on
        the number of covariates.  ``descent_steps``, ``refine`` and ``balance_objective_`` use all
        the covariates.
    descent_steps : int, optional
        Steps of accelerated exponentiated-gradient descent on the balancing objective the model
        was trained on, in that objective's own RBF kernel on all the covariates, starting from
        the network's weights
        (:meth:`~cina_ext.models.zero_shot.CInAZeroShotModel.objective_descent`; docs/method.md
        §5): a fixed computation of ``descent_steps + 1`` products with the Gram matrix, the
        same for every dataset, that never raises the objective.  None (default):
        :data:`~cina_ext.models.zero_shot.DESCENT_STEPS` for ate/att models, 0 for overlap
        models; 0: the network's weights as they are.  Above :data:`DESCENT_EXACT_LIMIT` units
        the kernel is replaced by 512 random Fourier features
        (``K ~ Phi Phi'``): O(N r) instead of O(N^2) per step.
    lam : float or "auto", optional
        The penalty of the objective the descent steps and ``refine`` minimise.  None (default):
        the one the model was trained on (``balance_lam``; 0.01 for the shipped model); a
        number > 0: that one.  "auto": chosen per dataset by KernelBalancing's rule
        (:func:`~cina_ext.estimators.tuning.select_lam`, docs/method.md §8) on the solutions of
        the descent steps, which run on every penalty of
        :data:`~cina_ext.estimators.tuning.LAM_GRID` at once from the network's weights (each
        product with a dataset's Gram matrix serves the whole grid); the weights returned are
        the steps' at the chosen penalty.  With ``refine``, the solver refines the solution of
        every penalty first (one batched call, at most ``refine`` iterations each) and the rule
        judges the refined solutions: refined to convergence, KernelBalancing's choice and weights.
        Needs
        ``descent_steps > 0``.  As KernelBalancing's, the rule runs on the exact kernel only: above
        :data:`DESCENT_EXACT_LIMIT` units the model's penalty is used.
        A bootstrap refit (``ate_interval``) keeps the fitted ``lam_``.
    augment : bool or scikit-learn regressor, default False
        Augmented (doubly robust) estimate: ``True`` fits a cross-fitted
        HistGradientBoostingRegressor per arm (folds seeded by ``random_state``), or pass any
        regressor; the estimate is the outcome model's prediction for the estimand's population plus
        the balancing-weighted residuals (:mod:`cina_ext.estimators.augment`).  The weights never
        see the outcome; only the augmentation does.  ``ate_inference`` then uses the influence
        function.  Needs estimand "ate" or "att".
    augment_repeats : int, default 1
        Fold splits of the augmentation's cross-fitted outcome model whose out-of-fold predictions
        are averaged (repeated cross-fitting): more splits, less dependence on the luck of one
        split, ``augment_repeats`` times the outcome-model fits.

    Attributes
    ----------
    weights_ : ndarray of shape (N,)
        Balancing weights, non-negative, summing to one within each arm.
    estimand_ : str
        The estimand that was fitted.
    X_ : ndarray of shape (N, p)
        The validated covariates (float64).
    T_ : ndarray of shape (N,)
        The validated treatment (int8 in {0, 1}).
    n_features_in_ : int
        Number of covariates.
    feature_names_ : list of str
        Covariate names (the DataFrame columns, else ``x0, x1, ...``).
    feature_names_in_ : ndarray of str
        The DataFrame column names (only for pandas input).
    n_treated_, n_control_ : int
        Arm sizes.
    seed_ : int
        The seed the fit used (from ``random_state``).
    bootstrap_estimates_ : ndarray
        The replicate estimates of the last :meth:`ate_interval`.
    balance_objective_ : float
        The training objective of the weights returned, on all the (scaled) covariates (ate/att
        models, up to about 5,800 units since it forms the N x N RBF Gram matrix).
    scaling_ : str
        The scaling the fit used ("standard" or "normal-scores").
    n_inputs_ : int
        How many inputs the network read (``n_features_in_`` unless the covariates were projected).
    raw_weights_ : ndarray of shape (N,)
        With ``descent_steps`` or ``refine``: the network's weights before them.
    raw_balance_objective_ : float
        With ``descent_steps`` or ``refine``: their objective.
    descent_steps_ : int
        The descent steps the fit ran.
    lam_ : float
        The penalty the fit used (ate/att models).
    gamma_ : float
        The bandwidth of the objective's RBF kernel on the scaled covariates (ate/att models, with
        ``descent_steps``, ``refine`` or the objective diagnostic): the model's rule,
        ``KernelBalancing``'s median heuristic for the shipped models.
    lam_grid_ : dict or None
        With ``lam="auto"`` on the exact path: the rule's grid, imbalances, effective sample sizes
        and threshold (as ``KernelBalancing.lam_grid_``); else None.
    refine_kkt_, refine_converged_, refine_iterations_ : float, bool, int
        With ``refine``: the refining solve's KKT violation (the low-rank solve: its duality
        gap), convergence flag and iterations.
    """

    _allowed_estimands = ("ate", "att", "overlap")
    _method_name = "zero-shot"

    def __init__(
        self,
        model: Optional[CInAZeroShotModel] = None,
        checkpoint: Optional[str] = None,
        estimand: Optional[str] = None,
        refine: int = 0,
        backend: str = "auto",
        batch_size: int = 32,
        random_state=None,
        verbose: bool = False,
        augment=False,
        augment_repeats: int = 1,
        approximation: str = "auto",
        landmarks: Optional[int] = None,
        scaling: Optional[str] = None,
        n_components: Optional[int] = None,
        descent_steps: Optional[int] = None,
        lam=None,
    ):
        self.model = model
        self.checkpoint = checkpoint
        self.estimand = estimand
        self.refine = refine
        self.backend = backend
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self.augment = augment
        self.augment_repeats = augment_repeats
        self.approximation = approximation
        self.landmarks = landmarks
        self.scaling = scaling
        self.n_components = n_components
        self.descent_steps = descent_steps
        self.lam = lam

    @classmethod
    def from_pretrained(cls, path: Optional[str] = None, **kwargs) -> "CInAZeroShot":
        """Load ``path`` (a :func:`train_zero_shot` checkpoint) or, with None, the shipped model.

        Parameters
        ----------
        path : str, optional
            Checkpoint path; None: the model shipped in the package (docs/model_card.md).
        **kwargs
            Other constructor parameters (``estimand``, ``refine``, ...).

        Returns
        -------
        CInAZeroShot
            An unfitted estimator with its model loaded.

        Raises
        ------
        FileNotFoundError
            The shipped model is missing from the installation, or no checkpoint at ``path``.
        ValueError
            ``path`` is not a CInA zero-shot checkpoint.
        """
        if path is None:
            path = pretrained_path()
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"the pretrained model {PRETRAINED_FILE} is missing from this installation "
                    f"({path}); reinstall cina-ext or pass the path of a checkpoint"
                )
        est = cls(checkpoint=str(path), **kwargs)
        est._get_model()
        return est

    def _get_model(self) -> CInAZeroShotModel:
        if self.model is not None:
            if not isinstance(self.model, CInAZeroShotModel):
                raise TypeError(f"model must be a CInAZeroShotModel, got {type(self.model).__name__}")
            return self.model
        if self.checkpoint is None:
            raise ValueError(
                "CInAZeroShot needs a trained model: pass model=..., checkpoint=PATH, or use "
                "CInAZeroShot.from_pretrained() for the shipped one"
            )
        cached = getattr(self, "_loaded", None)
        if cached is None or cached[0] != self.checkpoint:
            self._loaded = (self.checkpoint, model_from_checkpoint(self.checkpoint))
        return self._loaded[1]

    def _resolve_estimand(self):
        model = self._get_model()
        est = model.estimands[0] if self.estimand is None else self.estimand
        if not isinstance(est, str) or est.lower() not in model.estimands:
            raise ValueError(
                f"this zero-shot model was trained for the estimand(s) {model.estimands}; "
                f"estimand={self.estimand!r} is not one of them"
            )
        return est.lower()

    def _check_params(self):
        if isinstance(self.refine, bool) or not isinstance(self.refine, (int, np.integer)) or self.refine < 0:
            raise ValueError(f"refine must be an integer >= 0 (solver iterations), got {self.refine!r}")
        if self.refine and not self._get_model().balancing:
            raise ValueError("refine needs an ate/att model; this one computes the overlap weights of eq. L")
        ds = self.descent_steps
        if ds is not None and (isinstance(ds, bool) or not isinstance(ds, (int, np.integer)) or ds < 0):
            raise ValueError(f"descent_steps must be None or an integer >= 0, got {ds!r}")
        if ds and not self._get_model().balancing:
            raise ValueError("descent_steps needs an ate/att model; this one computes the overlap weights of eq. L")
        lam = self.lam
        number = isinstance(lam, (int, float, np.integer, np.floating)) and not isinstance(lam, bool)
        if not (lam is None or lam == "auto" or (number and math.isfinite(float(lam)) and float(lam) > 0)):
            raise ValueError(f"lam must be None, 'auto' or a positive number, got {lam!r}")
        if lam is not None and not self._get_model().balancing:
            raise ValueError("lam needs an ate/att model; this one computes the overlap weights of eq. L")
        if lam == "auto" and self._steps() == 0:
            raise ValueError(
                "lam='auto' chooses the penalty from the descent steps' solutions: descent_steps must be > 0"
            )
        if self.approximation not in _APPROXIMATIONS:
            raise ValueError(f"approximation must be one of {_APPROXIMATIONS}, got {self.approximation!r}")
        if self.landmarks is not None and (
            isinstance(self.landmarks, bool) or not isinstance(self.landmarks, (int, np.integer)) or self.landmarks < 2
        ):
            raise ValueError(f"landmarks must be an integer >= 2, got {self.landmarks!r}")
        if self.approximation == "landmarks" and not self._get_model().balancing:
            raise ValueError("approximation='landmarks' needs an ate/att model, not an overlap model")
        if self.scaling is not None and self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be None or one of {SCALINGS}, got {self.scaling!r}")
        width = self._get_model().max_features
        nc = self.n_components
        if nc is not None and (
            isinstance(nc, bool) or not isinstance(nc, (int, np.integer)) or not 1 <= int(nc) <= width
        ):
            raise ValueError(
                f"n_components must be None or an integer from 1 to the model's max_features={width}, got {nc!r}"
            )

    def _scaling(self) -> str:
        if self.scaling is not None:
            return str(self.scaling)
        # as KernelBalancing: normal scores for the ate/att balancing problem, the overlap weights as the paper
        return "normal-scores" if self._get_model().balancing else "standard"

    def _inputs(self, X: np.ndarray):
        """``(network input, full covariates)`` of one raw design (:func:`network_inputs`)."""
        width = self._get_model().max_features if self.n_components is None else int(self.n_components)
        return network_inputs(X, self._scaling(), width)

    def _landmark_count(self, n: int, *, warn: bool, stacklevel: int = 5) -> int:
        """Landmarks of the network's pass over a dataset of ``n`` units, 0 for the exact pass
        (the rule of ``approximation``, warning as the docstring says)."""
        mode = self.approximation
        model = self._get_model()
        if mode == "landmarks":
            m = DEFAULT_LANDMARKS if self.landmarks is None else int(self.landmarks)
            return m if n > m else 0
        if mode == "auto" and model.balancing and self._steps() > 0 and self.lam != "auto" and n <= DESCENT_EXACT_LIMIT:
            # the exact descent steps follow: the network's weights are their starting point, and
            # a pass against a few landmarks starts them as well as the exact pass does ("auto"
            # penalties keep the exact pass: its small-penalty solutions, far from converged after
            # the steps, depend on the start, and the choice moved with it, docs/benchmarks.md)
            m = warm_start_landmarks(n) if self.landmarks is None else int(self.landmarks)
            return m if n > m else 0
        if n <= ZERO_SHOT_EXACT_LIMIT:
            return 0
        m = DEFAULT_LANDMARKS if self.landmarks is None else int(self.landmarks)
        if mode == "exact" or not model.balancing:
            if warn:
                warnings.warn(
                    f"CInAZeroShot: {n:,} units: the network's attention layers are quadratic in N (about "
                    f"{ZERO_SHOT_SECONDS_PER_UNIT2 * n * n:.0f} s on a CPU); approximation='landmarks' "
                    "(ate/att models) is O(N landmarks)",
                    UserWarning,
                    stacklevel=stacklevel,
                )
            return 0
        if warn:
            warnings.warn(
                f"CInAZeroShot: {n:,} units > {ZERO_SHOT_EXACT_LIMIT:,}: every attention of the network "
                f"runs against {m:,} landmark units (approximation='auto'; 'exact' forces the quadratic "
                "forward pass)",
                UserWarning,
                stacklevel=stacklevel,
            )
        return m if n > m else 0

    def _steps(self) -> int:
        """The descent steps (``descent_steps``, its default resolved)."""
        if self.descent_steps is not None:
            return int(self.descent_steps)
        return DESCENT_STEPS if self._get_model().balancing else 0

    @staticmethod
    def _dtype_device(model):
        p = next(model.parameters())
        return p.dtype, p.device

    def _weights_batch(
        self,
        model,
        items,
        estimand: str,
        feature_seed: int,
        *,
        diagnostics: bool = True,
        landmarks: Optional[Sequence[int]] = None,
        lam_fixed: Optional[float] = None,
    ):
        """Weights (B, N) as float64 numpy for ``items`` = [(X, T)], plus diagnostics per dataset.

        ``X`` is raw; :meth:`_inputs` makes the network's inputs and the full covariates of the
        refinement and the objective.  ``landmarks``: the landmark count of the network's pass per
        dataset (None or zeros: the exact pass).  ``feature_seed`` (:meth:`_feature_seed`, drawn
        once per fit or ``estimate_many`` call) seeds the landmarks and the random Fourier
        features of large datasets.  ``lam_fixed``: the
        penalty, overriding ``lam`` (a bootstrap refit keeps the fitted ``lam_``)."""
        dtype, device = self._dtype_device(model)
        selections = None
        inputs = [self._inputs(x) for x, _ in items]
        X, W, mask, fm = collate_datasets(
            [(net, t) for (net, _), (_, t) in zip(inputs, items)], dtype=dtype, device=device
        )  # the model checks X
        projected = any(net.shape[1] != full.shape[1] for net, full in inputs)
        info: Dict[str, Tensor] = {"n_inputs": torch.tensor([net.shape[1] for net, _ in inputs])}
        steps = self._steps()
        info["descent_steps"] = torch.tensor([steps] * len(items))
        if projected and (self.refine or diagnostics or steps):
            Xf, _, _, fmf = collate_datasets(
                [(full, t) for (_, full), (_, t) in zip(inputs, items)], dtype=dtype, device=device
            )
        else:
            Xf, fmf = X, fm
        model.eval()
        # the objective forms the (B, N, N) RBF Gram matrix: a diagnostic for moderate N only
        diagnostics = diagnostics and X.shape[0] * X.shape[1] ** 2 <= MATERIALISE_LIMIT
        with torch.no_grad():
            if landmarks is None or not any(landmarks):
                w = model.weights(X, W, mask, fm, estimand=estimand, backend=self.backend)
            else:
                lm = _dataset_landmarks(W, mask, [int(m) for m in landmarks], int(feature_seed))
                w = model.weights_landmarks(X, W, lm, mask, fm, estimand=estimand)
            if model.balancing:
                B = X.shape[0]
                idx = model.estimand_index(estimand, B, X.device)
                # the steps and the solver in random Fourier features where the Gram matrix is too
                # big (the network's approximation, landmarks or not, is a separate choice)
                low_rank = X.shape[1] > DESCENT_EXACT_LIMIT
                # the penalty: the model's, a given one, or chosen below ("auto", exact path only)
                choose = lam_fixed is None and self.lam == "auto" and not low_rank  # _check_params: steps > 0
                if lam_fixed is not None:
                    lam_value = float(lam_fixed)
                elif self.lam is None or self.lam == "auto":
                    lam_value = float(model.balance_lam)
                else:
                    lam_value = float(self.lam)
                lam_t = torch.full((B,), lam_value, dtype=torch.float64, device=X.device)
                if diagnostics or steps or self.refine:
                    # the objective's kernel, computed once for the diagnostic, the steps and the solver
                    Z = model.standardise(Xf.double(), mask, fmf)
                    # seeded as KernelBalancing seeds its bandwidth (random_state; 0 without one)
                    gamma = model.kernel_gamma(Z, mask, fmf, seed=feature_seed)
                    info["gamma"] = gamma
                if self.refine or steps:
                    info["raw_weights"] = w
                raw = w
                if low_rank and (steps or self.refine):
                    w, extra = self._low_rank_stages(
                        model, Z, W, mask, fmf, gamma, w, idx, steps, feature_seed, lam_value
                    )
                    info.update(extra)
                else:
                    if choose:
                        w, obj, lam_t, selections, solved = self._descent_choosing_lam(
                            model,
                            items,
                            estimand,
                            (Xf, W, mask, fmf),
                            w,
                            idx,
                            steps,
                            gamma,
                            self.backend,
                            refine=int(self.refine),
                            Z=Z,
                        )
                        info.update(solved)
                        if diagnostics:
                            info["balance_objective"] = (
                                obj
                                if not self.refine
                                else model.balance_objective(Xf, W, mask, fmf, w.to(dtype), idx, gamma=gamma, lam=lam_t)
                            )
                    elif steps:
                        w, obj = model.objective_descent(
                            Xf, W, mask, fmf, w, idx, steps, gamma=gamma, lam=lam_t, backend=self.backend
                        )
                        if diagnostics:
                            info["balance_objective"] = obj
                    if self.refine and not choose:  # "auto" refined the whole grid above
                        res = dual_solve(
                            Z,
                            W.double(),
                            lam_t,
                            kernel="rbf",
                            gamma=gamma.double(),
                            estimand=estimand,
                            mask=mask,
                            x0=_support_start(w.double(), W, mask),
                            max_iter=int(self.refine),
                            backend="fused",
                        )
                        w = res.weights  # float64, as the solver returns it
                        info["refine_kkt"] = res.kkt
                        info["refine_converged"] = res.converged
                        info["refine_iterations"] = res.iterations
                        if diagnostics:
                            info["balance_objective"] = model.balance_objective(
                                Xf, W, mask, fmf, w.to(dtype), idx, gamma=gamma, lam=lam_t
                            )
                info["lam"] = lam_t
                if diagnostics:
                    # the objective (at the penalty used) of the network's weights, and of the
                    # weights returned where no stage ran
                    info["raw_balance_objective"] = model.balance_objective(
                        Xf, W, mask, fmf, raw, idx, gamma=gamma, lam=lam_t
                    )
                    if "balance_objective" not in info:
                        info["balance_objective"] = (
                            info["raw_balance_objective"]
                            if w is raw
                            else model.balance_objective(Xf, W, mask, fmf, w.to(dtype), idx, gamma=gamma, lam=lam_t)
                        )
                    if not (self.refine or steps):
                        del info["raw_balance_objective"]

        def to_numpy(t: Tensor) -> np.ndarray:
            return (t.double() if t.is_floating_point() else t).cpu().numpy()

        out = {k: to_numpy(v) for k, v in info.items()}
        if selections is not None:
            out["lam_selection"] = selections
        return to_numpy(w), out

    @staticmethod
    def _descent_choosing_lam(
        model, items, estimand: str, batch, w, idx, steps: int, gamma, backend: str = "auto", *, refine: int = 0, Z=None
    ):
        """``lam="auto"``: the descent steps on every penalty of :data:`LAM_GRID` at once (a
        dataset's products serve the whole grid), then KernelBalancing's rule on each dataset's
        solutions, judged on its raw covariates (``items``).  ``batch`` is the collated (X, W,
        mask, feature_mask) of the objective.

        With ``refine`` > 0 every penalty's solution is refined by the exact solver (one batched
        call, each problem warm-started from the support of its steps' weights, at most
        ``refine`` iterations) before the rule judges them, as KernelBalancing's rule judges its
        exact solutions (converged or not: ``refine`` is the budget given): refining only the chosen penalty would keep a choice made on unconverged
        solutions, which on LaLonde-PSID is a penalty ten times KernelBalancing's
        (docs/method.md §5).  ``Z`` is the standardised ``X`` the solver reads.

        Returns the weights (B, N) and objectives (B,) at the chosen penalties (the objectives
        are the steps' and stale when refined), those penalties (B,), the rule's selections, and
        a dict of the refinement's per-dataset account at the chosen penalty (empty without
        ``refine``)."""
        X, W, mask, fm = batch
        B, N = W.shape
        L = len(LAM_GRID)
        grid = torch.tensor(LAM_GRID, dtype=torch.float64, device=W.device)
        wg, og = model.objective_descent(
            X, W, mask, fm, w, idx, steps, gamma=gamma, lam=grid.expand(B, -1), backend=backend
        )
        solved: Dict[str, Tensor] = {}
        if refine:
            Wr = W.double().repeat_interleave(L, 0)
            mr = mask.repeat_interleave(L, 0)
            res = dual_solve(  # the grid's problems share each dataset's covariates and kernel mean
                Z.double(),
                W.double(),
                grid.expand(B, -1),
                kernel="rbf",
                gamma=gamma.double(),
                estimand=estimand,
                mask=mask,
                x0=_support_start(wg.reshape(B * L, N).double(), Wr, mr),
                max_iter=int(refine),
                backend="fused",
            )
            wg = res.weights.reshape(B, L, N).to(wg.dtype)
            solved = {
                "refine_kkt": res.kkt.reshape(B, L),
                "refine_converged": res.converged.reshape(B, L),
                "refine_iterations": res.iterations.reshape(B, L),
            }
        chosen = []
        for b, (x, t) in enumerate(items):
            sols = [wg[b, k, : x.shape[0]].cpu().numpy() for k in range(L)]
            # every solution counts, refined to convergence or not: ``refine`` is the budget the
            # user gave (KernelBalancing's rule drops its unconverged solves, and with a small
            # budget would keep only the large penalties, which converge first)
            chosen.append(select_lam(x, t, sols, LAM_GRID, estimand=estimand, converged=[True] * L))
        k = torch.tensor([c.index for c in chosen], device=W.device)
        rows = torch.arange(B, device=W.device)
        solved = {key: v[rows, k] for key, v in solved.items()}
        return wg[rows, k], og[rows, k], grid[k], chosen, solved

    def _feature_seed(self) -> int:
        """The seed of the landmarks, the bandwidth subsample and the random Fourier features:
        ``random_state``'s, and 0 without one, so that
        the default estimator gives the same weights at every fit.  A numpy Generator is drawn
        from once per fit (the bootstraps of that fit share its features) and once per
        :meth:`estimate_many` call."""
        return 0 if self.random_state is None else seed_from(self.random_state)

    def _low_rank_stages(self, model, Z, W, mask, fm, gamma, w, idx, steps: int, seed: int, lam: float):
        """The descent steps and refinement of large datasets (more than
        :data:`DESCENT_EXACT_LIMIT` units), one dataset at a time, in random Fourier features of
        the objective's kernel (``K ~ Phi Phi'``,
        :data:`~cina_ext.estimators.low_rank.DEFAULT_RANK` of them, seeded by ``seed``): O(N r) work
        and memory instead of O(N^2).

        The refinement is the low-rank dual of :func:`~cina_ext.estimators.low_rank.simplex_balance`
        per moving arm, warm-started at the imbalance of the weights it receives; ``refine_kkt``
        is then its duality gap.  ``lam``: the objective's penalty.  Returns the weights (B, N)
        float64 and the refinement's account."""
        B, N = W.shape
        out = torch.zeros(B, N, dtype=torch.float64, device=W.device)
        account: Dict[str, list] = {"refine_kkt": [], "refine_converged": [], "refine_iterations": []}
        att_index = model.estimands.index("att") if "att" in model.estimands else -1
        for b in range(B):
            m = mask[b]
            zb = model.valid_block(Z, mask, fm, b).float()
            n = zb.shape[0]
            # seeded by ``seed`` alone: a dataset's features do not depend on its place in the batch
            fmap = RandomFourierFeatures(zb.shape[1], float(gamma[b]), rank_for(n, DEFAULT_RANK), int(seed))
            phi_t = fmap.transform_tensor(zb)
            phi = phi_t.cpu().numpy()
            Wb = W[b][m].unsqueeze(0)
            wb = w[b][m].double().unsqueeze(0)
            if steps:
                ones = torch.ones(1, n, dtype=torch.bool, device=W.device)
                # with features the covariates are not read: a placeholder of the right batch shape
                wb, _ = model.objective_descent(
                    Wb.unsqueeze(-1), Wb, ones, ones[:, :1], wb, idx[b : b + 1], steps, features=phi_t[None], lam=lam
                )
            wn = wb[0].cpu().numpy().copy()
            if self.refine:
                treated = Wb[0].cpu().numpy() > 0
                att = int(idx[b]) == att_index
                # float64 sums over the float32 features, without a float64 copy of them
                target = (phi[treated] if att else phi).mean(0, dtype=np.float64)
                gaps, its, ok = [], [], True
                for arm in [False] if att else [True, False]:
                    sel = treated == arm
                    arm_phi = phi[sel]
                    start = (wn[sel] / wn[sel].sum()).astype(arm_phi.dtype)
                    theta0 = (start @ arm_phi).astype(np.float64) - target  # a starting point only
                    r = simplex_balance(arm_phi, target, lam, max_iter=int(self.refine), theta0=theta0)
                    wn[sel] = r.weights
                    gaps.append(r.gap)
                    its.append(r.iterations)
                    ok = ok and r.converged
                account["refine_kkt"].append(max(gaps))
                account["refine_iterations"].append(max(its))
                account["refine_converged"].append(ok)
            out[b, m] = torch.from_numpy(wn).to(out.device)
        extra = {k: torch.tensor(v) for k, v in account.items() if v}
        return out, extra

    def _fit_core(self, X, T, seed, *, bootstrap=False):
        model = self._get_model()
        use = self._landmark_count(X.shape[0], warn=not bootstrap)
        keep = self.lam_ if bootstrap and self.lam == "auto" else None  # a refit keeps the fitted penalty
        # the landmarks are seeded as the random features are: refits of the default estimator agree
        w, info = self._weights_batch(
            model, [(X, T)], self.estimand_, self._fit_feature_seed, landmarks=[use], lam_fixed=keep
        )
        state = {"weights": w[0]}
        for k, v in info.items():
            state[k] = v[0]
        return state

    def fit(self, X, T, sample_weight=None):
        self._fit_feature_seed = self._feature_seed()
        super().fit(X, T, sample_weight=sample_weight)
        st = self._state
        self.scaling_ = self._scaling()
        self.n_inputs_ = int(st["n_inputs"])
        if "balance_objective" in st:
            self.balance_objective_ = float(st["balance_objective"])
        self.descent_steps_ = int(st["descent_steps"])
        if "lam" in st:
            self.lam_ = float(st["lam"])
        if "gamma" in st:
            self.gamma_ = float(st["gamma"])
        sel = st.get("lam_selection")
        self.lam_grid_ = sel.to_dict() if sel is not None else None
        if "raw_weights" in st:
            self.raw_weights_ = np.asarray(st["raw_weights"])
            if "raw_balance_objective" in st:
                self.raw_balance_objective_ = float(st["raw_balance_objective"])
        if self.refine:
            self.refine_kkt_ = float(st["refine_kkt"])
            self.refine_converged_ = bool(st["refine_converged"])
            self.refine_iterations_ = int(st["refine_iterations"])
        return self

    def _details(self):
        d: Dict[str, Any] = {
            "estimand_trained": list(self._get_model().estimands),
            "refine": int(self.refine),
            "descent_steps": self.descent_steps_,
            "lam": getattr(self, "lam_", None),
            "scaling": self.scaling_,
            "network_inputs": self.n_inputs_,
        }
        if hasattr(self, "balance_objective_"):
            d["balance_objective"] = self.balance_objective_
        if hasattr(self, "raw_balance_objective_"):
            d["raw_balance_objective"] = self.raw_balance_objective_
        if self.refine:
            d.update(
                refine_kkt=self.refine_kkt_,
                refine_converged=self.refine_converged_,
            )
        return d

    def estimate_many(self, datasets: Sequence, Y: Optional[Sequence] = None) -> np.ndarray:
        """Estimates for many datasets, batched (similar sizes share a padded batch).

        Parameters
        ----------
        datasets : sequence
            CausalDataset objects or ``(X, T[, Y])`` tuples.
        Y : sequence of array-like, optional
            One outcome vector per dataset; default each dataset's own ``Y`` (attribute or third
            entry).

        Returns
        -------
        ndarray of shape (len(datasets),)
            The estimates, in the order of ``datasets``.

        Raises
        ------
        ValueError
            ``Y`` of another length than ``datasets``; a dataset without an outcome; an invalid
            design or outcome; an estimand or ``refine`` the model does not support.
        TypeError
            A dataset that is neither a CausalDataset nor a tuple.
        """
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
            y = Y[i] if Y is not None else (d.Y if hasattr(d, "Y") else (d[2] if len(d) > 2 else None))
            if y is None:
                raise ValueError(f"dataset {i} has no outcome Y")
            designs.append((dd.X, dd.T))
            outcomes.append(check_outcome(y, dd.X.shape[0], index=dd.index))
        bs = max(1, int(self.batch_size))
        feature_seed = self._feature_seed()
        out = np.empty(len(designs))
        # similar sizes share a batch (less padding); results go back to the caller's order
        order = sorted(range(len(designs)), key=lambda i: designs[i][0].shape[0])

        def regime(i: int):
            # what a dataset gets alone (landmarks or not, steps in features or not): a batch never
            # mixes two regimes, so estimate_many gives each dataset what fit gives it
            n = designs[i][0].shape[0]
            return self._landmark_count(n, warn=False) > 0, n > DESCENT_EXACT_LIMIT

        starts = [s for s in range(len(order)) if s == 0 or regime(order[s]) != regime(order[s - 1])]
        ends = starts[1:] + [len(order)]
        batches = [(k, order[k : min(k + bs, e)]) for s, e in zip(starts, ends) for k in range(s, e, bs)]
        warned = False
        for s, ids in batches:
            n_max = designs[ids[-1]][0].shape[0]  # the batch's largest dataset (sorted by size)
            self._landmark_count(n_max, warn=not warned, stacklevel=3)  # the warning, once
            warned = warned or n_max > ZERO_SHOT_EXACT_LIMIT
            # each dataset's own count (it grows with N): the count fit would give it
            counts = [self._landmark_count(designs[i][0].shape[0], warn=False) for i in ids]
            w, _ = self._weights_batch(
                model,
                [designs[i] for i in ids],
                estimand,
                feature_seed,
                diagnostics=False,
                landmarks=counts,
            )
            for j, i in enumerate(ids):
                x, t = designs[i]
                n = x.shape[0]
                out[i] = float(np.sum(w[j, :n] * (2.0 * t - 1.0) * outcomes[i]))
        return out


def warm_start_landmarks(n: int) -> int:
    """Landmarks of the network's pass before the exact descent steps for a dataset of ``n``
    units: ``ceil(2 sqrt(n))`` within [:data:`WARM_START_LANDMARKS`, ``DEFAULT_LANDMARKS``].  The
    landmark means' noise falls as ``1 / sqrt(m)`` and the pass costs O(n m), so this count keeps
    the pass at O(n^1.5), below the steps' O(n^2) (measured, docs/benchmarks.md)."""
    return int(min(DEFAULT_LANDMARKS, max(WARM_START_LANDMARKS, math.ceil(2.0 * math.sqrt(max(0, n))))))


def _dataset_landmarks(W: Tensor, mask: Tensor, counts: Sequence[int], seed: int) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`sample_landmarks` for each dataset ``b`` of the batch, ``counts[b]`` of them, with
    its own generator seeded by ``seed``: a dataset's landmarks do not depend on its place in a
    batch, so :meth:`CInAZeroShot.estimate_many` gives it the landmarks ``fit`` gives it."""
    rows = [
        sample_landmarks(W[b : b + 1], mask[b : b + 1], m, generator=torch.Generator().manual_seed(seed))
        for b, m in enumerate(counts)
    ]
    M = max(r[0].shape[1] for r in rows)

    def pad(t: Tensor) -> Tensor:
        return torch.nn.functional.pad(t, (0, M - t.shape[1]))

    return tuple(torch.cat([pad(r[k]) for r in rows]) for k in range(3))


def _support_start(w: Tensor, W: Tensor, mask: Tensor, rel: float = REFINE_SUPPORT) -> Tensor:
    """The refinement's warm start: per arm of each dataset, the weights of ``w`` (B, N) below
    ``rel`` times the arm's largest set to 0 and the rest renormalised to sum 1 (an arm without
    units stays 0)."""
    out = torch.zeros_like(w)
    for arm in (mask & (W > 0), mask & (W < 0)):
        wa = torch.where(arm, w, torch.zeros_like(w))
        keep = arm & (wa >= rel * wa.amax(-1, keepdim=True))
        wa = torch.where(keep, wa, torch.zeros_like(wa))
        out = out + wa / wa.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return out
