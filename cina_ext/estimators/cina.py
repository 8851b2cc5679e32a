"""CInA on one dataset (Algorithm 1, docs/method.md §4), trained on the exact bilevel path."""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch

from .. import ops
from .._core.checks import _tensor_devices, check_estimand, check_positive, resolve_device, resolve_dtype
from ..models.key_net import KeyNet
from .base import _arm_normalise, _dual_solve, _lam_abs, _max_iter_arg, _standardize, _WeightingEstimator
from .low_rank import EXACT_LIMIT, exact_cost

__all__ = ["CInA"]


_CINA_DEFAULT_LAM = 0.01  # relative, "overlap" training problem: lam_abs = lam / N
_CINA_DEFAULT_READOUT_LAM = 0.01  # relative, "ate"/"att" read-out: lam_abs = readout_lam / N^2


class CInA(_WeightingEstimator):
    """Causal Inference with Attention on one dataset (Algorithm 1), trained on the exact bilevel path.

    Why not plain gradient descent on eq. L: docs/method.md §7.2 measured that it reaches the optimal
    loss but not the optimal weights.  Here, per outer step:

    1. keys ``K = net(X_std)`` (a seeded MLP, bounded key norms, ``key_dim`` wide; float64 by default);
    2. the "overlap" balancing dual (docs/method.md §2) is solved **exactly** for these keys with the
       ``cina`` kernel ``E_ij / (h_i h_j)`` (no gradient), giving ``alpha`` and the intercept ``b``;
    3. values ``V_j = alpha_j W_j / (lam h_j)`` (log-space in ``h``) and ``b`` are fixed at that
       optimum and eq. L is evaluated with :func:`cina_ext.ops.attention_hinge` (``backend``);
       its gradient in the keys is the gradient of the optimal value (envelope / Danskin theorem),
       back-propagated into the key network only; Adam step with a cosine learning-rate decay.

    After the last step the weights are read out *exactly* for the final keys: for "overlap" the
    SVM dual itself (what eq. R gives at the optimum of eq. L, Theorem 1); for "ate"/"att"
    (**choice**) the arm problems of docs/method.md §6 are solved with the learned ``cina`` kernel
    (the attention form of these problems is also in §6), with penalty ``readout_lam``.

    Parameters
    ----------
    estimand : {"overlap", "ate", "att"}, default "overlap"
        The read-out (training always uses the "overlap" problem).
    lam : float, optional
        Relative training penalty, > 0; ``lam_abs = lam / N``.  Default (None): 0.01.
    key_dim : int, default 16
        Width of the keys, a positive int.
    hidden_dim : int, default 64
        Hidden width of the key network, a positive int.
    n_steps : int, default 20
        Outer training steps, >= 0 (0: the untrained network's keys).
    lr : float, default 0.01
        Adam learning rate, > 0 (cosine decay over ``n_steps``).
    readout_lam : float, optional
        Relative penalty of the ate/att read-out, > 0; ``lam_abs = readout_lam / N^2``.  Default
        (None): 0.01.
    key_scale : float, default 1.0
        Score scale ``key_scale / sqrt(key_dim)``, > 0.
    loss : {"hinge", "squared_hinge"}, default "hinge"
        The loss of eq. L.
    tol : float, default 1e-6
        Solver tolerance, > 0 (scaled by the kernel scale ``1 / N^2`` for the ate/att problems,
        whose gradients are O(1/N^2)).
    max_iter : int, optional
        Solver iteration limit; None: the solver's default.
    bootstrap_tol : float, default 1e-4
        Solver tolerance of the bootstrap refits.
    bootstrap_refit : {"solver", "full"}, default "solver"
        ``ate_interval`` refits on each resample: "solver" keeps the trained key network and
        re-solves the balancing problem exactly on the resample (tolerance ``bootstrap_tol``);
        "full" retrains the network too (``n_steps`` outer steps per resample).
    backend : {"auto", "fused", "reference"}, default "auto"
        Backend of the attention operator and the solver.
    device : str, default "auto"
        "auto": the device of tensor inputs, else CUDA when available, else the CPU.
    dtype : {"float64", "float32"}, default "float64"
        Dtype of the network and the solves.
    random_state : None, int or numpy Generator, optional
        Seeds the key network.
    verbose : bool, default False
        Progress bars.
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
    encoded_columns_ : dict
        The one-hot encoded DataFrame columns: original name -> the names of its ``col=level``
        columns (empty when none was encoded).
    sample_weight_ : ndarray of shape (N,) or None
        The frequency weights of the fit (None without).
    n_treated_, n_control_ : int
        Arm sizes.
    seed_ : int
        The seed the fit used (from ``random_state``).
    bootstrap_estimates_ : ndarray
        The replicate estimates of the last :meth:`ate_interval`.
    loss_history_ : ndarray of shape (n_steps,)
        eq. L per unit at each step, at the exact optimum of the inner problem.
    final_loss_ : float
        eq. L per unit at the final keys.
    duality_gap_ : float
        Relative gap between eq. L evaluated by the attention operator at the read-out ``(V, b)``
        and the exact dual value -- the Theorem-1 consistency check of attention vs solver.
    alpha_, intercept_ : ndarray of shape (N,), float
        The overlap dual at the final keys.
    alpha_at_zero_, alpha_at_one_ : float
        Fractions of alpha at the bounds; all at one means lam is too large and the weights are
        uniform.
    converged_ : bool
        Whether the final solves converged.
    n_unconverged_steps_ : int
        Training steps whose solve did not converge.
    lam_abs_, readout_lam_abs_ : float, float or None
        The absolute penalties (training; ate/att read-out).
    keys_ : ndarray of shape (N, key_dim)
        The final keys.
    key_net_ : KeyNet
        The trained key network.
    device_ : torch.device
        The device used.
    diagnostics_ : dict
        All of these as a dict.

    Notes
    -----
    Scaling (docs/method.md §7.1): the cina kernel is O(1/N^2), so the training penalty is
    ``lam_abs = lam / N`` (relative ``lam``, default 0.01) and the ate/att read-out uses
    ``lam_abs = readout_lam / N^2`` (default 0.01); both stored as ``lam_abs_`` /
    ``readout_lam_abs_``.  See the module docstring of :mod:`cina_ext.estimators.base` for why
    these are N-invariant.

    Defaults measured (Setoguchi-type design, N=250, 20 replications, MAE; naive 0.186 / 0.112,
    SNIPW 0.053 / 0.087 in scenarios A / G):

    ================  =========  =========  =========
    overlap read-out  0 steps    20 steps   50 steps
    ================  =========  =========  =========
    A, lam 0.001      0.067      0.062      0.061
    A, lam 0.01       0.076      0.052      0.066
    A, lam 0.1        0.161      0.094      0.117
    G, lam 0.001      0.058      0.070      0.069
    G, lam 0.01       0.061      0.066      0.071
    G, lam 0.1        0.062      0.059      0.097
    ================  =========  =========  =========

    At N=1000 (10 replications; naive 0.192 / 0.069, SNIPW 0.019 / 0.043) lam 0.001 / 0.01 / 0.1
    give A 0.035 / 0.081 / 0.171 untrained and 0.023 / 0.020 / 0.130 after 20 steps, G 0.030 /
    0.035 / 0.035 untrained and 0.023 / 0.018 / 0.030 after 20 steps (0.016 / 0.018 / 0.039 after
    50).  The fraction of alpha at the bound grows with N at fixed lam (lam 0.01 untrained, A: 35% at
    N=250, 66% at N=1000; the sampling noise of the MMD shrinks as 1/N), so lam 0.01 is not N-free
    in that sense, but it is the best of the grid at both sizes after training.

    At lam 0.1 (and above) most alpha sit at the upper bound (A: 88% before training): the weights
    approach the naive ones.  The "ate" read-out is flat in ``readout_lam`` over 1e-3..1e-1 (8
    replications); with lam 0.01, readout_lam 0.01 it gives A 0.080 / 0.078 / 0.095, G 0.069 /
    0.093 / 0.092 and G with heterogeneous effects 0.067 / 0.090 / 0.093 after 0 / 20 / 50 steps:
    training the keys on the overlap objective (which makes the arms *more* separable) helps the
    overlap read-out in A but not in G at N=250, and does not help the ate/att read-out (N=1000:
    A 0.024 / 0.023 / 0.038, G 0.033 / 0.044 / 0.063, G heterogeneous 0.032 / 0.043 / 0.063);
    more steps overfit.
    Defaults: ``lam=0.01``, ``readout_lam=0.01``, ``n_steps=20``.  One fit at N=250 takes about
    0.2-0.5 s with the compiled solver and fused attention, 5-10 s on the PyTorch reference.
    """

    def __init__(
        self,
        estimand: str = "overlap",
        lam: Optional[float] = None,
        key_dim: int = 16,
        hidden_dim: int = 64,
        n_steps: int = 20,
        lr: float = 0.01,
        readout_lam: Optional[float] = None,
        key_scale: float = 1.0,
        loss: str = "hinge",
        tol: float = 1e-6,
        max_iter: Optional[int] = None,
        bootstrap_tol: float = 1e-4,
        bootstrap_refit: str = "solver",
        backend: str = "auto",
        device: str = "auto",
        dtype: str = "float64",
        random_state=None,
        verbose: bool = False,
        augment=False,
        augment_repeats: int = 1,
    ):
        self.estimand = estimand
        self.lam = lam
        self.key_dim = key_dim
        self.hidden_dim = hidden_dim
        self.n_steps = n_steps
        self.lr = lr
        self.readout_lam = readout_lam
        self.key_scale = key_scale
        self.loss = loss
        self.tol = tol
        self.max_iter = max_iter
        self.bootstrap_tol = bootstrap_tol
        self.bootstrap_refit = bootstrap_refit
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.augment = augment
        self.augment_repeats = augment_repeats

    # -- parameters --------------------------------------------------------------------------
    def _check_params(self):
        if self.lam is not None:
            check_positive("lam", self.lam)
        if self.readout_lam is not None:
            check_positive("readout_lam", self.readout_lam)
        for name in ("key_dim", "hidden_dim"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.n_steps, (int, np.integer)) or self.n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative int, got {self.n_steps!r}")
        check_positive("lr", self.lr)
        check_positive("key_scale", self.key_scale)
        check_positive("tol", self.tol)
        if self.loss not in ("hinge", "squared_hinge"):
            raise ValueError(f"loss must be 'hinge' or 'squared_hinge', got {self.loss!r}")
        if self.bootstrap_refit not in ("solver", "full"):
            raise ValueError(f"bootstrap_refit must be 'solver' or 'full', got {self.bootstrap_refit!r}")
        if self.backend not in ("auto", "fused", "reference"):
            raise ValueError(f"backend must be 'auto', 'fused' or 'reference', got {self.backend!r}")
        resolve_dtype(self.dtype)

    def _lam_rel(self):
        return float(self.lam) if self.lam is not None else _CINA_DEFAULT_LAM

    def _readout_lam_rel(self):
        return float(self.readout_lam) if self.readout_lam is not None else _CINA_DEFAULT_READOUT_LAM

    @property
    def _scale(self) -> float:
        return float(self.key_scale) / math.sqrt(int(self.key_dim))

    # -- pieces ------------------------------------------------------------------------------
    def _solve(self, K, Wt, lam_abs, estimand, tol, init=None):
        n = int(Wt.shape[-1])
        if estimand != "overlap":
            # the arm problems' gradients live on the kernel's O(1/N^2) scale: an absolute tolerance
            # of 1e-6 would accept the uniform starting point (measured: 0 iterations); make it
            # relative to the kernel scale.  ("overlap" is O(1) already: p = 1.)
            tol = tol / (n * n)
        kw = dict(
            kernel="cina", scale=self._scale, estimand=estimand, tol=float(tol), max_iter=_max_iter_arg(self.max_iter)
        )
        if estimand == "overlap":
            kw["loss"] = self.loss
        with torch.no_grad():
            return _dual_solve(K.detach(), Wt, lam_abs, backend=self.backend, init=init, **kw)

    def _lse(self, K, Wt, lam_abs):
        """Row log-normalisers of the tied-key scores, through the attention operator (O(N) memory
        on the fused path)."""
        zeros_v = torch.zeros_like(Wt)
        zeros_b = torch.zeros(Wt.shape[0], dtype=Wt.dtype, device=Wt.device)
        with torch.no_grad():
            _, _, lse = ops.attention_hinge(
                K.detach(), zeros_v, Wt, zeros_b, lam_abs, scale=self._scale, loss=self.loss, backend=self.backend
            )
        return lse

    def _values(self, alpha, Wt, lse, lam_abs):
        """``V_j = alpha_j W_j / (lam h_j)`` computed as ``W_j exp(log alpha_j - log lam - lse_j)``."""
        pos = alpha > 0
        log_a = torch.log(torch.where(pos, alpha, torch.ones_like(alpha)))
        mag = torch.exp(log_a - math.log(lam_abs) - lse)
        return torch.where(pos, Wt * mag, torch.zeros_like(mag))

    def _envelope_objective(self, K, V, b, alpha, Wt, lam_abs):
        """Objective whose gradient in the keys is the envelope (Danskin) gradient of the optimal
        value of eq. L, with ``(V, b, alpha)`` fixed at the exact optimum of the inner problem.

        Returns ``(objective, eq_L)``; both equal the optimal value at the optimum.  For the hinge the
        objective is the Lagrangian ``sum_i c_i V_i o_i + sum_i alpha_i (1 - W_i (o_i + b))``
        (``c_i = (lam/2) h_i``): autograd of the hinge itself would use ``[r_i > 0]`` in place of
        ``alpha_i`` at the margin support vectors (``r_i = 0`` at the optimum, fractional
        ``alpha_i``), which is not the envelope gradient.  The squared hinge is differentiable, so
        eq. L itself is used.  Both go through :func:`cina_ext.ops.attention_hinge` (its ``out``
        and ``lse`` outputs are differentiable), so the fused kernel keeps memory O(N).
        """
        loss, out, lse = ops.attention_hinge(
            K, V, Wt, b, lam_abs, scale=self._scale, loss=self.loss, backend=self.backend
        )
        if self.loss != "hinge":
            return loss.sum(), loss
        c = torch.exp(lse + math.log(lam_abs / 2.0))
        lagrangian = (c * V * out).sum() + (alpha * (1.0 - Wt * (out + b.unsqueeze(-1)))).sum()
        return lagrangian, loss

    def _train(self, Xs: np.ndarray, T: np.ndarray, seed: int, tol: float, progress: bool):
        dtype = resolve_dtype(self.dtype)
        device = self.device_
        n, p = Xs.shape
        lam_abs = _lam_abs(self._lam_rel(), "overlap", n, "cina")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = KeyNet(p, int(self.hidden_dim), int(self.key_dim)).to(device=device, dtype=dtype)
        Xt = torch.as_tensor(Xs, dtype=dtype, device=device)
        Wt = torch.as_tensor(2.0 * T - 1.0, dtype=dtype, device=device).unsqueeze(0)
        n_steps = int(self.n_steps)
        history = []
        unconverged = 0
        alpha_prev = None
        if n_steps > 0:
            opt = torch.optim.Adam(net.parameters(), lr=float(self.lr))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps)
            from tqdm.auto import tqdm

            for _ in tqdm(range(n_steps), desc="CInA training", disable=not progress, leave=False):
                K = net(Xt).unsqueeze(0)
                res = self._solve(K, Wt, lam_abs, "overlap", tol, init=alpha_prev)
                unconverged += int(not bool(res.converged.reshape(-1)[0]))
                alpha = res.alpha.to(dtype).detach()
                alpha_prev = alpha
                b = res.intercept.to(dtype).reshape(1).detach()
                lse = self._lse(K, Wt, lam_abs)
                V = self._values(alpha, Wt, lse, lam_abs).detach()
                objective, loss = self._envelope_objective(K, V, b, alpha, Wt, lam_abs)
                opt.zero_grad(set_to_none=True)
                objective.backward()
                opt.step()
                sched.step()
                history.append(float(loss.detach().sum()) / n)
        return net, lam_abs, history, unconverged

    def _readout(self, net, Xs, T, tol, *, full_diagnostics: bool):
        dtype = resolve_dtype(self.dtype)
        device = self.device_
        n = Xs.shape[0]
        estimand = check_estimand(self.estimand)
        lam_abs = _lam_abs(self._lam_rel(), "overlap", n, "cina")
        Xt = torch.as_tensor(Xs, dtype=dtype, device=device)
        Wt = torch.as_tensor(2.0 * T - 1.0, dtype=dtype, device=device).unsqueeze(0)
        with torch.no_grad():
            K = net(Xt).unsqueeze(0)
        out: Dict[str, Any] = {"lam_abs": lam_abs}
        if estimand == "overlap" or full_diagnostics:
            res = self._solve(K, Wt, lam_abs, "overlap", tol)
            alpha = res.alpha.to(dtype)
            out.update(
                alpha=alpha[0].cpu().double().numpy(),
                intercept=float(res.intercept.reshape(-1)[0]),
                converged_overlap=bool(res.converged.reshape(-1)[0]),
                objective_overlap=float(res.objective.reshape(-1)[0]),
            )
            if estimand == "overlap":
                out["weights"] = _arm_normalise(res.weights[0].cpu().double().numpy(), T)
                out["converged"] = out["converged_overlap"]
            if full_diagnostics:
                lse = self._lse(K, Wt, lam_abs)
                V = self._values(alpha, Wt, lse, lam_abs)
                b = res.intercept.to(dtype).reshape(1)
                with torch.no_grad():
                    loss, _, _ = ops.attention_hinge(
                        K, V, Wt, b, lam_abs, scale=self._scale, loss=self.loss, backend=self.backend
                    )
                primal = float(loss.sum())
                # exact dual value 1'a - (1/(2 lam)) a'Qa = -objective (the solver minimises)
                dual = -out["objective_overlap"]
                out["final_loss"] = primal / n
                out["duality_gap"] = abs(primal - dual) / max(1.0, abs(dual))
        if estimand in ("ate", "att"):
            r_lam = _lam_abs(self._readout_lam_rel(), estimand, n, "cina")
            res = self._solve(K, Wt, r_lam, estimand, tol)
            out["weights"] = _arm_normalise(res.weights[0].cpu().double().numpy(), T)
            out["converged"] = bool(res.converged.reshape(-1)[0])
            out["readout_lam_abs"] = r_lam
        out["keys"] = K[0]
        return out

    def _fit_core(self, X, T, seed, *, bootstrap=False):
        n, p = X.shape
        if n > EXACT_LIMIT and not bootstrap:
            c = exact_cost(n, p)
            steps = int(self.n_steps) + 2
            warnings.warn(
                f"CInA: {n:,} units: each of the {steps} exact solves is quadratic in N (about "
                f"{c['seconds']:.0f} s each on one CPU core, {c['seconds'] * steps / 60:.0f} min in all); "
                "KernelBalancing(estimand=...) has a low-rank path for datasets this large",
                UserWarning,
                stacklevel=3,
            )
        tol = float(self.bootstrap_tol if bootstrap else self.tol)
        if bootstrap and self.bootstrap_refit == "solver":
            Xs, _, _ = _standardize(X, self._x_mean, self._x_sd)
            net = self.key_net_
            ro = self._readout(net, Xs, T, tol, full_diagnostics=False)
            return {"weights": ro["weights"]}
        Xs, mean, sd = _standardize(X)
        net, lam_abs, history, unconverged = self._train(
            Xs, T, seed, tol, progress=bool(self.verbose) and not bootstrap
        )
        ro = self._readout(net, Xs, T, tol, full_diagnostics=not bootstrap)
        if not bootstrap and not ro["converged"]:
            warnings.warn(
                "CInA: the final balancing solve did not converge (see converged_); raise max_iter or loosen tol",
                RuntimeWarning,
                stacklevel=3,
            )
        return {
            "weights": ro["weights"],
            "readout": ro,
            "net": net,
            "history": history,
            "unconverged": unconverged,
            "mean": mean,
            "sd": sd,
        }

    def fit(self, X, T, sample_weight=None):
        # resolve the device before the core runs (it needs the data's device)
        data_device = None
        try:
            data_device = _tensor_devices(X=X, T=T)
        except ValueError:
            pass  # check_design (in super().fit) raises the proper error
        self.device_ = resolve_device(self.device, data_device)
        super().fit(X, T, sample_weight=sample_weight)
        st = self._state
        ro = st["readout"]
        self.key_net_ = st["net"]
        self._x_mean, self._x_sd = st["mean"], st["sd"]
        self.keys_ = ro["keys"].detach().cpu().numpy()
        self.loss_history_ = np.asarray(st["history"], dtype=np.float64)
        self.final_loss_ = ro["final_loss"]
        self.duality_gap_ = ro["duality_gap"]
        self.alpha_ = ro["alpha"]
        self.intercept_ = ro["intercept"]
        upper = 1.0 if self.loss == "hinge" else np.inf
        self.alpha_at_zero_ = float(np.mean(self.alpha_ <= 1e-8))
        self.alpha_at_one_ = float(np.mean(self.alpha_ >= upper - 1e-8))
        self.converged_ = bool(ro["converged"]) and bool(ro["converged_overlap"])
        self.n_unconverged_steps_ = int(st["unconverged"])
        self.lam_abs_ = ro["lam_abs"]
        self.readout_lam_abs_ = ro.get("readout_lam_abs")
        if self.alpha_at_one_ > 0.95:
            warnings.warn(
                f"CInA: {self.alpha_at_one_:.0%} of the dual variables sit at the upper bound: lam is too "
                "large for this kernel and the overlap weights are nearly uniform (docs/method.md §7.1)",
                RuntimeWarning,
                stacklevel=2,
            )
        self.diagnostics_ = {
            "final_loss": self.final_loss_,
            "duality_gap": self.duality_gap_,
            "alpha_at_zero": self.alpha_at_zero_,
            "alpha_at_one": self.alpha_at_one_,
            "converged": self.converged_,
            "n_unconverged_steps": self.n_unconverged_steps_,
            "lam": self._lam_rel(),
            "lam_abs": self.lam_abs_,
            "readout_lam": self._readout_lam_rel() if self.estimand_ != "overlap" else None,
            "readout_lam_abs": self.readout_lam_abs_,
            "n_steps": int(self.n_steps),
            "device": str(self.device_),
            "dtype": str(resolve_dtype(self.dtype)).replace("torch.", ""),
        }
        return self

    def _details(self):
        return dict(self.diagnostics_)
