"""Pure-PyTorch twin of the batched box-QP balancing solver (docs/ops/qp_solve.md): the ground truth.

This module is the ground truth that the compiled C++/CUDA solvers are compared to.  It solves,
for a batch of B independent datasets padded to N units,

    min_x  1/2 x'Qx - p'x     s.t.  lower <= x <= upper   (upper may be +inf)
                                    [ c'x = d ]            (at most one equality, optional)

exactly to a tolerance on the KKT conditions, vectorised across the batch with torch ops:

* without the equality: greedy coordinate descent.  Each step picks, per dataset, the coordinate
  with the largest projected-gradient violation and minimises exactly along it
  (``x_i <- clip(x_i - G_i / Q_ii)``); the gradient ``G = Qx - p`` is maintained with a rank-1
  column update.
* with the equality: SMO two-coordinate steps along ``e_i / c_i - e_j / c_j`` (which keeps
  ``c'x`` constant for any non-zero ``c``), ``i`` the maximal violator and ``j`` chosen by the
  second-order rule (largest predicted decrease ``b_ij^2 / a_ij``, as LIBSVM's WSS2), exact line
  search clipped to the box.  Coordinates with ``c_i = 0`` (not touched by the equality) take
  single-coordinate steps whenever they are the worst violators.

Curvatures below ``tau = 1e-12 * max_i Q_ii`` are floored to ``tau`` (``Q_ii ~ 0`` or duplicated
units), which only shortens a step.  The gradient is recomputed exactly (``Qx - p``) before a
dataset is declared converged, periodically, and when a step makes no progress, so rounding drift
(float32) cannot fake convergence.  A dataset that stops because of ``max_iter`` or lack of
progress is reported with ``converged = False``.

KKT violation (``QPResult.kkt``):

* no equality: ``max_i |PG_i|`` with the projected gradient ``PG_i = G_i`` at free coordinates,
  ``min(G_i, 0)`` at the lower bound, ``max(G_i, 0)`` at the upper bound.
* with the equality (``c_i != 0``): ``max(0, m - M)`` with ``m = max_{i in I_up} -G_i / c_i``,
  ``M = min_{j in I_low} -G_j / c_j`` (``I_up``: coordinates along which ``c_i x_i`` can increase,
  ``I_low``: decrease).  The KKT conditions hold iff ``m <= M``; every multiplier in ``[m, M]``
  then certifies optimality.  For ``c`` in {-1, +1} this is LIBSVM's stopping criterion, and the
  violation of each coordinate's condition at ``nu = (m + M) / 2`` is at most half of it.
  Coordinates with ``c_i = 0`` add their ``|PG_i|``.

Multiplier convention (``QPResult.nu``): the gradient of ``1/2 x'Qx - p'x + nu (c'x - d)``
vanishes at free coordinates, i.e. ``nu = -G_i / c_i`` there (averaged over the free coordinates;
``(m + M) / 2`` when no coordinate is free).  For the SVM dual of docs/method.md §2 (``c = W``) this
``nu`` is the intercept ``b`` of the decision function ``f(x) = sum_j alpha_j W_j k(x_j, x) / lam
+ b``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from .._core.checks import bound_tensor as _bound_tensor
from .._core.checks import check_finite_tensor as _check_finite
from .._core.checks import check_float as _check_float
from .._core.checks import check_mask as _check_mask
from .._core.checks import check_nonnegative_diagonal, converged_and_finite, penalty_grid, per_dataset
from .._core.checks import check_tensor as _check_tensor
from .._core.constants import ESTIMANDS, KERNELS
from .._core.constants import LOSS_KINDS as LOSSES
from .attention_hinge import readout_weights

__all__ = ["QPResult", "BalanceResult", "qp_solve", "gram", "dual_solve", "default_max_iter"]

_TAU_REL = 1e-12
_MAX_FAILED_CONFIRM = 20
_MAX_STAGNANT_WINDOWS = 3


@dataclass
class QPResult:
    """Solution of a batch of box QPs (see the module docstring for the conventions)."""

    x: Tensor  # (B, N) solution; padded units 0
    nu: Tensor  # (B,) multiplier of c'x = d (0 without the equality)
    objective: Tensor  # (B,) 1/2 x'Qx - p'x
    kkt: Tensor  # (B,) KKT violation at return
    iterations: Tensor  # (B,) int64
    converged: Tensor  # (B,) bool


@dataclass
class BalanceResult:
    """Balancing weights from :func:`dual_solve`."""

    weights: Tensor  # (B, N) non-negative, summing to 1 within each arm; padded 0
    alpha: Tensor  # (B, N) raw QP solution (see dual_solve)
    intercept: Tensor  # (B,) SVM intercept b for "overlap" (= QPResult.nu); 0 for ate/att
    objective: Tensor  # (B,)
    kkt: Tensor  # (B,)
    iterations: Tensor  # (B,)
    converged: Tensor  # (B,)
    estimand: str


# ----------------------------------------------------------------------------------------------
# feasible starting point for {lower <= x <= upper, c'x = d}
# ----------------------------------------------------------------------------------------------


def _feasible_start(lo: Tensor, up: Tensor, c: Tensor, d: Tensor, valid: Tensor) -> Tensor:
    """A point of the box satisfying c'x = d (to rounding), built exactly.

    x(s) = clip(s c, lo, up) makes c'x(s) continuous, piecewise linear and non-decreasing in s.
    The breakpoints lo_i / c_i, up_i / c_i are sorted and searched (binary search, vectorised over
    the batch); on the bracketing linear piece the set of clipped coordinates is fixed, and the
    linear equation for s is solved in closed form.  Clipped coordinates are exactly at their
    bounds.  Examples: the simplex (c = 1, d = 1, [0, inf)) gives x = 1/n; c = W, d = 0 with
    [0, 1] gives x = 0.  Coordinates with c_i = 0 are set to clip(0, lo, up).
    """
    B, N = c.shape
    dt = c.dtype
    inf = math.inf
    act = valid & (c != 0)
    x_fixed = torch.where(valid, torch.clamp(torch.zeros_like(lo), lo, up), torch.zeros_like(lo))
    x_fixed = torch.where(act, torch.zeros_like(x_fixed), x_fixed)
    zero_c = torch.where(valid & (c == 0), x_fixed, torch.zeros_like(x_fixed))  # contributes 0 to c'x

    cs = torch.where(act, c, torch.ones_like(c))

    def f(s: Tensor) -> Tensor:  # s (B,) -> c'x(s)
        xs = torch.clamp(s.unsqueeze(-1) * cs, lo, up)
        return torch.where(act, c * xs, torch.zeros_like(xs)).sum(-1)

    # limits of f
    lim_lo = torch.where(act, c * torch.where(c > 0, lo, up), torch.zeros_like(c))
    lim_hi = torch.where(act, c * torch.where(c > 0, up, lo), torch.zeros_like(c))
    f_min = lim_lo.nan_to_num(nan=0.0).sum(-1)  # may be -inf
    f_max = lim_hi.nan_to_num(nan=0.0).sum(-1)  # may be +inf
    lo_f = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    up_f = torch.where(torch.isfinite(up), up, torch.zeros_like(up))
    size = torch.where(act, (c * lo_f).abs() + (c * up_f).abs(), torch.zeros_like(c)).sum(-1)
    slack = 1e3 * torch.finfo(dt).eps * (1.0 + d.abs() + size)
    if bool(((d < f_min - slack) | (d > f_max + slack)).any()):
        bad = torch.nonzero((d < f_min - slack) | (d > f_max + slack)).flatten().tolist()
        raise ValueError(f"the equality c'x = d cannot be met inside the bounds in dataset(s) {bad}")
    d = torch.minimum(torch.maximum(d, f_min), f_max)
    if N == 0:
        return torch.zeros_like(c)

    bp = torch.cat([lo / cs, up / cs], dim=-1)
    bp = torch.where(torch.cat([act, act], -1) & torch.isfinite(bp), bp, torch.full_like(bp, inf))
    bp, _ = torch.sort(bp, dim=-1)
    n_fin = torch.isfinite(bp).sum(-1)  # (B,)
    # binary search for the largest k with f(bp[k]) <= d (k = -1: none)
    lo_k = torch.full((B,), -1, dtype=torch.long, device=c.device)
    hi_k = n_fin.clone()
    for _ in range(2 * N.bit_length() + 4):
        run = hi_k - lo_k > 1
        if not bool(run.any()):
            break
        mid = torch.div(lo_k + hi_k, 2, rounding_mode="floor")
        midc = mid.clamp(0, 2 * N - 1)
        s_mid = bp.gather(1, midc.unsqueeze(-1)).squeeze(-1)
        ok = f(torch.where(run, s_mid, torch.zeros_like(s_mid))) <= d
        lo_k = torch.where(run & ok, mid, lo_k)
        hi_k = torch.where(run & ~ok, mid, hi_k)
    last = (n_fin - 1).clamp_min(0)
    bp_last = bp.gather(1, last.unsqueeze(-1)).squeeze(-1)
    bp_first = bp[:, 0]
    s_lo = bp.gather(1, lo_k.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    s_hi = bp.gather(1, hi_k.clamp(0, 2 * N - 1).unsqueeze(-1)).squeeze(-1)
    none_fin = n_fin == 0
    s_cls = torch.where(
        none_fin,
        torch.zeros_like(d),
        torch.where(lo_k < 0, bp_first - 1, torch.where(hi_k >= n_fin, bp_last + 1, 0.5 * (s_lo + s_hi))),
    )
    # classify on the bracketing piece: free coordinates strictly inside their box
    y = s_cls.unsqueeze(-1) * cs
    free = act & (y > lo) & (y < up)
    fixed_val = torch.clamp(y, lo, up)
    fixed_sum = torch.where(act & ~free, c * fixed_val, torch.zeros_like(c)).sum(-1)
    slope = torch.where(free, c * c, torch.zeros_like(c)).sum(-1)
    s = (d - fixed_sum) / torch.where(slope > 0, slope, torch.ones_like(slope))
    x_act = torch.where(free, s.unsqueeze(-1) * c, fixed_val)
    # a bracket whose left end meets d exactly: use it (keeps breakpoint solutions exact)
    exact_left = (lo_k >= 0) & (f(torch.where(lo_k >= 0, s_lo, torch.zeros_like(s_lo))) == d)
    x_left = torch.clamp(s_lo.unsqueeze(-1) * cs, lo, up)
    x_act = torch.where(exact_left.unsqueeze(-1), x_left, x_act)
    x_act = torch.clamp(x_act, lo, up)
    return torch.where(act, x_act, zero_c)


# ----------------------------------------------------------------------------------------------
# the solver
# ----------------------------------------------------------------------------------------------


class _State:
    """Tensors of the active datasets (row r of each is dataset ``rows[r]`` of the batch)."""

    __slots__ = ("rows", "x", "G", "p", "lo", "up", "invc", "neg_invc", "dinv", "cpos", "pair", "single", "diag", "tau")

    def subset(self, keep: Tensor) -> "_State":
        s = _State()
        for name in self.__slots__:
            v = getattr(self, name)
            setattr(s, name, v[keep] if v is not None else None)
        return s


_NEG_INF = -math.inf
_POS_INF = math.inf


def _scan(st: _State, has_pair: bool, has_single: bool, mixed: bool):
    """KKT violation (nA,) and the working-set candidates of the active datasets.

    Padded units have lo = up = x = 0, so they belong to no working set without extra masking.
    """
    x, G = st.x, st.G
    can_inc = x < st.up
    can_dec = x > st.lo
    pair_info = single_info = None
    kkt = None
    if has_pair:
        vals = G * st.neg_invc  # -G_i / c_i
        I_up = torch.where(st.cpos, can_inc, can_dec)
        I_low = torch.where(st.cpos, can_dec, can_inc)
        if mixed:
            I_up = I_up & st.pair
            I_low = I_low & st.pair
        up_vals = torch.where(I_up, vals, _NEG_INF)
        i = up_vals.argmax(-1, keepdim=True)  # (argmax + gather: max(dim) is slow on CPU here)
        m = up_vals.gather(1, i).squeeze(-1)
        i = i.squeeze(-1)
        Mv = torch.where(I_low, vals, _POS_INF).amin(-1)
        kkt = (m - Mv).clamp_min(0)
        pair_info = (vals, I_low, m, i, kkt)
    if has_single:
        pg = torch.where(st.single, G, 0.0) if mixed else G
        pg = torch.where(can_dec, pg, pg.clamp(max=0))
        pg = torch.where(can_inc, pg, pg.clamp(min=0))
        apg = pg.abs()
        k = apg.argmax(-1, keepdim=True)
        sv = apg.gather(1, k).squeeze(-1)
        k = k.squeeze(-1)
        single_info = (pg, k, sv)
        kkt = sv if kkt is None else torch.maximum(kkt, sv)
    return kkt, pair_info, single_info


def _nu(x, G, lo, up, invc, cpos, pair) -> Tensor:
    """Equality multiplier: mean of -G_i/c_i over free coordinates, else midpoint of [m, M]."""
    vals = -G * invc
    free = pair & (x > lo) & (x < up)
    nfree = free.sum(-1)
    nu_free = torch.where(free, vals, 0.0).sum(-1) / nfree.clamp_min(1).to(vals.dtype)
    can_inc = x < up
    can_dec = x > lo
    I_up = pair & torch.where(cpos, can_inc, can_dec)
    I_low = pair & torch.where(cpos, can_dec, can_inc)
    m = torch.where(I_up, vals, _NEG_INF).amax(-1)
    M = torch.where(I_low, vals, _POS_INF).amin(-1)
    fm, fM = torch.isfinite(m), torch.isfinite(M)
    mid = torch.where(fm & fM, 0.5 * (m + M), torch.where(fm, m, torch.where(fM, M, torch.zeros_like(m))))
    return torch.where(nfree > 0, nu_free, mid)


def _refresh(Q: Tensor, st: _State, sel: Optional[Tensor] = None) -> None:
    """Recompute G = Qx - p exactly for the selected active datasets (all when sel is None)."""
    if sel is None:
        st.G = torch.bmm(Q[st.rows], st.x.unsqueeze(-1)).squeeze(-1) - st.p
        return
    ids = torch.nonzero(sel).flatten()
    if ids.numel() == 0:
        return
    st.G[ids] = torch.bmm(Q[st.rows[ids]], st.x[ids].unsqueeze(-1)).squeeze(-1) - st.p[ids]


def _stagnation(st: _State, kkt: Tensor, sel: Tensor, best: Tensor, count: Tensor, qmax: Tensor, eps: float):
    """Count checks (exact gradient, kkt >= tol) at which the KKT violation failed to halve.

    Only checks at which the violation is already at the rounding level of the gradient,
    ``eps * (max|Q| * ||x||_1 + max|p|)``, count: there the requested tol is below what the
    dtype can certify (typically float32 with a tight tol), and the solver stops (unconverged)
    instead of wandering in rounding noise until max_iter.  Never triggers at ordinary float64
    tolerances.
    """
    floor = eps * (qmax * st.x.abs().sum(-1) + st.p.abs().amax(-1))
    better = kkt < 0.5 * best
    best = torch.where(sel & better, kkt, best)
    at_floor = kkt <= floor
    count = torch.where(sel, torch.where(better | ~at_floor, torch.zeros_like(count), count + 1), count)
    return best, count


def _rows_of(Q: Tensor, rows: Tensor, idx: Tensor) -> Tensor:
    """Q[rows[r], idx[r], :] for every r, as (nA, N) (index_select on a flat view: fast)."""
    n = Q.shape[-1]
    return Q.view(-1, n).index_select(0, rows * n + idx)


def _step(Q: Tensor, st: _State, has_pair: bool, has_single: bool, mixed: bool, pair_info, single_info):
    """One working-set step on every active dataset (all have kkt >= tol > 0).

    A step moves coordinates (i, j) along the direction (u_i, u_j) by t = min(t*, t_max), with
    t* = slope / curvature the exact line minimiser and t_max the largest step inside the box;
    the coordinate that limits t_max is put exactly on its bound.  Returns the progress flag (nA,).
    """
    x, G, rows = st.x, st.G, st.rows
    use_pair = None
    if has_pair:
        vals, I_low, m, i_p, pv = pair_info
        i1 = i_p.unsqueeze(-1)
        Qi = _rows_of(Q, rows, i_p)  # (nA, N): row i of Q
        ici = st.invc.gather(1, i1)  # (nA, 1)
        # curvature along e_i/c_i - e_j/c_j, for every j
        a = (st.diag.gather(1, i1) * ici * ici + st.dinv) - Qi * ((2.0 * ici) * st.invc)
        a = torch.maximum(a, st.tau)
        b = m.unsqueeze(-1) - vals  # decrease rate along the direction
        gain = torch.where(I_low & (b > 0), b * b / a, _NEG_INF)
        j_p = gain.argmax(-1, keepdim=True)
        t_p = b.gather(1, j_p) / a.gather(1, j_p)
        ij = torch.cat([i1, j_p], 1)  # (nA, 2)
        u = torch.cat([ici, st.neg_invc.gather(1, j_p)], 1)
        tstar = t_p
    if has_single:
        pg, k, sv = single_info
        k1 = k.unsqueeze(-1)
        pgk = pg.gather(1, k1)
        us = -torch.sign(pgk)
        ts = pgk.abs() / torch.maximum(st.diag.gather(1, k1), st.tau)
        if has_pair:
            use_pair = (pv >= sv).unsqueeze(-1)
            ij = torch.where(use_pair, ij, k1)
            u = torch.where(use_pair, u, torch.cat([us, torch.zeros_like(us)], 1))
            tstar = torch.where(use_pair, t_p, ts)
            Qi = torch.where(use_pair, Qi, _rows_of(Q, rows, k))
        else:
            ij, u, tstar, Qi = k1, us, ts, _rows_of(Q, rows, k)

    xs = x.gather(1, ij)
    los = st.lo.gather(1, ij)
    ups = st.up.gather(1, ij)
    room = torch.where(u > 0, ups - xs, torch.where(u < 0, los - xs, _POS_INF))
    tm = (room / torch.where(u != 0, u, 1.0)).clamp_min(0)  # largest feasible step per coordinate
    t = torch.minimum(tstar, tm.amin(-1, keepdim=True))
    xn = xs + t * u
    hit = t == tm
    xn = torch.where(hit & (u > 0), ups, torch.where(hit & (u < 0), los, xn))
    xn = torch.minimum(torch.maximum(xn, los), ups)
    dx = xn - xs
    if use_pair is not None:  # single steps in a mixed batch: both slots name coordinate k
        xn = torch.where(use_pair, xn, xn[:, :1])
        dx = torch.where(use_pair, dx, torch.cat([dx[:, :1], torch.zeros_like(dx[:, :1])], 1))
    x.scatter_(1, ij, xn)
    G.addcmul_(dx[:, :1], Qi)
    if ij.shape[1] == 2:
        G.addcmul_(dx[:, 1:], _rows_of(Q, rows, ij[:, 1]))
    return (dx != 0).any(-1)


def default_max_iter(N: int) -> int:
    """The iteration limit when none is given: ``max(100000, 50 N)``.

    SMO-type solvers need O(N) steps to converge, and the CUDA working-set algorithm (the default
    from 4096 units) can take several times more steps than the one-block algorithm (each costs
    O(working set) instead of O(N)); a fixed limit would stop large problems short (flagged not
    converged) at tight tolerances.

    Parameters
    ----------
    N : int
        Number of (padded) units per dataset.

    Returns
    -------
    int
        The limit.
    """
    return max(100_000, 50 * int(N))


def qp_solve(
    Q: Tensor,
    p: Tensor,
    lower: Union[float, Tensor] = 0.0,
    upper: Union[float, Tensor] = float("inf"),
    c: Optional[Tensor] = None,
    d: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    tol: float = 1e-6,
    max_iter: Optional[int] = None,
    x0: Optional[Tensor] = None,
) -> QPResult:
    """Solve a batch of ``min 1/2 x'Qx - p'x`` s.t. ``lower <= x <= upper`` [and ``c'x = d``].

    See the module docstring for the algorithm, the KKT measure and the multiplier convention.
    float32 or float64: all float inputs must share Q's dtype (no silent conversion).

    Parameters
    ----------
    Q : Tensor, shape (B, N, N)
        Symmetric positive semi-definite matrices.
    p : Tensor, shape (B, N)
        Linear terms.
    lower, upper : float or Tensor of shape () or (B, N), default 0.0 and +inf
        Bounds; ``lower`` may be -inf, ``upper`` +inf.
    c : Tensor, shape (B, N), optional
        Equality coefficients, together with ``d`` or not at all.
    d : float or Tensor of shape (B,), optional
        Equality right-hand sides.
    mask : Tensor of bool, shape (B, N), optional
        True = real unit.  Padded units take no part and return x = 0.
    tol : float, default 1e-6
        KKT tolerance, positive and finite.
    max_iter : int, optional
        Iteration limit, >= 0; None is :func:`default_max_iter` of N.
    x0 : Tensor, shape (B, N), optional
        Feasible start (box and equality).  Without it a feasible start is built (clip(0)
        without the equality; see :func:`_feasible_start` with it).

    Returns
    -------
    QPResult
        ``x`` (B, N), ``nu`` (B,) (0 without the equality), ``objective`` (B,)
        ``1/2 x'Qx - p'x``, ``kkt`` (B,), ``iterations`` (B,) int64, ``converged`` (B,) bool.

    Raises
    ------
    TypeError
        Q or p not a tensor; Q not float32/float64; p, c, d or x0 not in Q's dtype; mask not bool.
    ValueError
        Wrong shapes; ``c`` without ``d`` (or the reverse); ``tol`` or ``max_iter`` out of range;
        NaN or Inf in Q, p, c, d or x0; NaN bounds or a wrong infinity; ``lower > upper``; Q not
        symmetric; ``x0`` outside the bounds or off the equality; an equality that cannot be met
        inside the bounds.

    Notes
    -----
    ``converged`` is True only where the KKT violation of the returned point, recomputed from the
    exact gradient, is below ``tol``.  Datasets stop unconverged at ``max_iter``, after steps that
    make no representable progress, or when the violation stagnates at the rounding level of the
    gradient (float32 cannot certify tolerances much below ``eps * max|Q| * ||x||_1``; use e.g.
    ``tol=1e-4`` there).  Cost: O(N) torch ops per iteration per dataset, batched.

    Examples
    --------
    >>> import torch
    >>> from cina_ext.reference import qp_solve
    >>> Q = torch.eye(2, dtype=torch.float64).unsqueeze(0)
    >>> p = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    >>> c = torch.ones(1, 2, dtype=torch.float64)
    >>> d = torch.ones(1, dtype=torch.float64)
    >>> qp_solve(Q, p, 0.0, float("inf"), c, d).x  # the simplex: x = (0, 1)
    tensor([[0., 1.]], dtype=torch.float64)
    """
    _check_tensor(Q, "Q", 3)
    _check_tensor(p, "p", 2)
    _check_float(Q, "Q")
    if p.dtype != Q.dtype:
        raise TypeError(f"p must have Q's dtype {Q.dtype}, got {p.dtype}")
    B, N, N2 = Q.shape
    if N != N2:
        raise ValueError(f"Q must be square per dataset, got shape {tuple(Q.shape)}")
    if tuple(p.shape) != (B, N):
        raise ValueError(f"p must have shape {(B, N)}, got {tuple(p.shape)}")
    if (c is None) != (d is None):
        raise ValueError("c and d must be given together (equality c'x = d) or not at all")
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if max_iter is None:
        max_iter = default_max_iter(Q.shape[1])
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
    dev, dt = Q.device, Q.dtype
    mask = _check_mask(mask, B, N, dev)
    pair_m = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    _check_finite(Q, "Q", pair_m)
    _check_finite(p, "p", mask)
    lo = _bound_tensor(lower, "lower", B, N, p, -math.inf)
    up = _bound_tensor(upper, "upper", B, N, p, math.inf)
    if bool((mask & (lo > up)).any()):
        raise ValueError("lower must be <= upper at every real unit")
    has_eq = c is not None
    if has_eq:
        _check_tensor(c, "c", 2)
        if c.dtype != dt:
            raise TypeError(f"c must have Q's dtype {dt}, got {c.dtype}")
        if tuple(c.shape) != (B, N):
            raise ValueError(f"c must have shape {(B, N)}, got {tuple(c.shape)}")
        _check_finite(c, "c", mask)
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            d = torch.full((B,), float(d), dtype=dt, device=dev)
        _check_tensor(d, "d", 1)
        if d.dtype != dt:
            raise TypeError(f"d must have Q's dtype {dt}, got {d.dtype}")
        if tuple(d.shape) != (B,):
            raise ValueError(f"d must have shape {(B,)}, got {tuple(d.shape)}")
        _check_finite(d, "d")

    with torch.no_grad():
        zero = torch.zeros((), dtype=dt, device=dev)
        Qm = torch.where(pair_m, Q, zero)
        scale = Qm.abs().amax(dim=(-1, -2)).clamp_min(torch.finfo(dt).tiny) if N > 0 else None
        if N > 0:
            asym = (Qm - Qm.transpose(-1, -2)).abs().amax(dim=(-1, -2))
            if bool((asym > math.sqrt(torch.finfo(dt).eps) * scale).any()):
                raise ValueError("Q must be symmetric")
            check_nonnegative_diagonal(Qm, mask, "Q")
            Qm = (0.5 * (Qm + Qm.transpose(-1, -2))).contiguous()
        pm = torch.where(mask, p, zero)
        lo = torch.where(mask, lo, zero)
        up = torch.where(mask, up, zero)
        if has_eq:
            cm = torch.where(mask, c, zero)
            dv = d.clone()
        else:
            cm = torch.zeros_like(pm)
            dv = torch.zeros(B, dtype=dt, device=dev)
        pair = mask & (cm != 0)
        single = mask & (cm == 0)
        invc = torch.where(pair, 1.0 / torch.where(pair, cm, torch.ones_like(cm)), zero)

        # starting point
        if x0 is not None:
            _check_tensor(x0, "x0", 2)
            if x0.dtype != dt or tuple(x0.shape) != (B, N):
                raise ValueError(f"x0 must be a {dt} tensor of shape {(B, N)}")
            _check_finite(x0, "x0", mask)
            x = torch.where(mask, x0, zero).clone()
            span = (up - lo).abs()
            span = torch.where(torch.isfinite(span), span, torch.ones_like(span))
            eps_b = 1e3 * torch.finfo(dt).eps * (1 + x.abs() + span)
            if bool((mask & ((x < lo - eps_b) | (x > up + eps_b))).any()):
                raise ValueError("x0 is outside the bounds")
            x = torch.minimum(torch.maximum(x, lo), up)
            if has_eq:
                res = (cm * x).sum(-1) - dv
                lim = math.sqrt(torch.finfo(dt).eps) * (1 + dv.abs() + (cm * x).abs().sum(-1))
                if bool((res.abs() > lim).any()):
                    raise ValueError("x0 does not satisfy the equality c'x = d")
        elif has_eq:
            x = _feasible_start(lo, up, cm, dv, mask)
        else:
            x = torch.where(mask, torch.minimum(torch.maximum(torch.zeros_like(lo), lo), up), zero)

        diag = torch.diagonal(Qm, dim1=-2, dim2=-1).clone()
        dmax = torch.where(mask, diag.abs(), zero).amax(-1) if N > 0 else torch.zeros(B, dtype=dt, device=dev)
        tau = torch.where(dmax > 0, _TAU_REL * dmax, torch.full_like(dmax, _TAU_REL)).unsqueeze(-1)

        # padded units are fixed at 0 (lo = up = 0) and so belong to no working set
        single = single & (lo < up)
        has_pair = bool(pair.any())
        has_single = bool(single.any())
        mixed = has_pair and has_single

        x_out = x.clone()
        iters = torch.zeros(B, dtype=torch.long, device=dev)
        conv = torch.zeros(B, dtype=torch.bool, device=dev)
        stall = torch.zeros(B, dtype=torch.long, device=dev)  # consecutive steps without progress
        nfail = torch.zeros(B, dtype=torch.long, device=dev)  # failed convergence confirmations
        best = torch.full((B,), math.inf, dtype=dt, device=dev)  # best exact KKT seen at those
        nwin = torch.zeros(B, dtype=torch.long, device=dev)  # stagnant periodic-refresh windows
        best_win = torch.full((B,), math.inf, dtype=dt, device=dev)
        eps = torch.finfo(dt).eps
        qmax_all = scale if scale is not None else torch.zeros(B, dtype=dt, device=dev)

        def qmax_a(s_: _State) -> Tensor:
            return qmax_all[s_.rows]

        st = _State()
        st.rows = torch.arange(B, device=dev)
        st.x, st.p, st.lo, st.up = x, pm, lo, up
        st.invc, st.neg_invc = invc, -invc
        st.dinv = diag * invc * invc
        st.cpos = cm > 0
        st.pair, st.single = pair, single
        st.diag, st.tau = diag, tau
        st.G = None
        n_active = B if (N > 0 and (has_pair or has_single)) else 0
        if n_active == 0:
            conv[:] = True
        else:
            _refresh(Qm, st)
        refresh_every = max(1000, 5 * N)
        since_refresh = 0
        it = 0  # every active dataset takes one step per stepping round: a shared counter

        while n_active > 0:
            kkt, pair_info, single_info = _scan(st, has_pair, has_single, mixed)
            cand = kkt < tol
            refreshed = False
            if bool(cand.any()):
                # looks converged: confirm on the exact gradient
                _refresh(Qm, st, cand)
                kkt, pair_info, single_info = _scan(st, has_pair, has_single, mixed)
                failed = cand & (kkt >= tol)
                cand = kkt < tol
                refreshed = True
                if bool(failed.any()):
                    best, nfail = _stagnation(st, kkt, failed, best, nfail, qmax_a(st), eps)
            fin = cand
            if it >= max_iter:
                fin = torch.ones_like(cand)
            else:
                give_up = (stall >= 3) | (nfail >= _MAX_FAILED_CONFIRM) | (nwin >= _MAX_STAGNANT_WINDOWS)
                if bool(give_up.any()):
                    fin = fin | give_up
            if bool(fin.any()):
                ids = st.rows[fin]
                x_out[ids] = st.x[fin]
                iters[ids] = it
                conv[ids] = cand[fin]
                keep = ~fin
                n_active = int(keep.sum())
                if n_active == 0:
                    break
                st = st.subset(keep)
                stall, nfail, best = stall[keep], nfail[keep], best[keep]
                nwin, best_win = nwin[keep], best_win[keep]
                continue
            if refreshed:
                continue
            progress = _step(Qm, st, has_pair, has_single, mixed, pair_info, single_info)
            it += 1
            since_refresh += 1
            if not bool(progress.all()):
                # no representable progress (rounding): recompute the gradient; give up after 3
                stall = torch.where(progress, torch.zeros_like(stall), stall + 1)
                _refresh(Qm, st, ~progress)
            elif bool((stall > 0).any()):
                stall.zero_()
            if since_refresh >= refresh_every:
                _refresh(Qm, st)
                since_refresh = 0
                kkt_ex, _, _ = _scan(st, has_pair, has_single, mixed)
                best_win, nwin = _stagnation(st, kkt_ex, kkt_ex >= tol, best_win, nwin, qmax_a(st), eps)

        # final certificate on the returned point (exact gradient)
        x_out = torch.where(mask, x_out, zero)
        Qx = torch.bmm(Qm, x_out.unsqueeze(-1)).squeeze(-1)
        G = Qx - pm
        fin_st = _State()
        fin_st.x, fin_st.G, fin_st.lo, fin_st.up = x_out, G, lo, up
        fin_st.invc, fin_st.neg_invc, fin_st.cpos, fin_st.pair, fin_st.single = invc, -invc, cm > 0, pair, single
        if has_pair or has_single:
            kkt_final, _, _ = _scan(fin_st, has_pair, has_single, mixed)
        else:
            kkt_final = torch.zeros(B, dtype=dt, device=dev)
        if has_eq and N > 0:
            nu = _nu(x_out, G, lo, up, invc, cm > 0, pair)
        else:
            nu = torch.zeros(B, dtype=dt, device=dev)
        objective = 0.5 * (x_out * Qx).sum(-1) - (pm * x_out).sum(-1)
        conv = converged_and_finite(x_out, objective, conv & (kkt_final < tol))
    return QPResult(x=x_out, nu=nu, objective=objective, kkt=kkt_final, iterations=iters, converged=conv)


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


def gram(
    X: Tensor,
    kernel: str = "rbf",
    *,
    gamma: Union[None, float, Tensor] = None,
    scale: Optional[float] = None,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Batched Gram matrices; rows and columns of padded units are 0.

    Parameters
    ----------
    X : Tensor, shape (B, N, p)
        Features, float32 or float64 (keys for "cina"; the (B, N, N) Gram for "precomputed").
    kernel : {"rbf", "linear", "laplace", "cina", "precomputed"}, default "rbf"
        * ``"linear"``: ``X X'``.
        * ``"rbf"``: ``exp(-gamma ||x_i - x_j||^2)``.
        * ``"laplace"``: ``exp(-gamma ||x_i - x_j||_2)`` (the distance, not its square).
        * ``"cina"``: X are attention keys (B, N, D); ``s = scale X X'``,
          ``lse_i = logsumexp_{j valid} s_ij``, ``k_ij = exp(s_ij - lse_i - lse_j)``: the kernel
          ``E_ij / (h_i h_j)`` of docs/method.md §3, computed in log-space.
        * ``"precomputed"``: X is already the (B, N, N) Gram matrix (masked and returned).
    gamma : float or Tensor of shape (B,), optional
        RBF bandwidth, > 0.  Default per dataset: ``1 / (p * v)`` with ``v`` the mean over the p
        features of the per-feature population variance (ddof = 0) over the valid units
        (``gamma = 1`` when ``v = 0``).  For standardised or centred features this is sklearn's
        ``gamma="scale"`` (sklearn uses the variance of all entries of X pooled, which also counts
        the spread between feature means).  For "laplace" the default is the square root of
        this, ``1 / sqrt(p * v)``: the inverse of the typical distance scale instead of the
        typical squared distance.
    scale : float, optional
        Score scale of the cina kernel; default ``1 / sqrt(D)``.
    mask : Tensor of bool, shape (B, N), optional
        True = real unit.

    Returns
    -------
    Tensor, shape (B, N, N)
        The Gram matrices, in X's dtype.

    Raises
    ------
    ValueError
        Unknown ``kernel``; X not 3-D; a precomputed X that is not (B, N, N); NaN or Inf in X at
        real units; a wrong mask shape; ``gamma`` not finite and > 0.
    TypeError
        X not a tensor or not float32/float64; mask not bool; ``gamma`` of the wrong type.

    Examples
    --------
    >>> import torch
    >>> from cina_ext.reference import gram
    >>> X = torch.tensor([[[0.0], [1.0]]], dtype=torch.float64)
    >>> gram(X, "linear")
    tensor([[[0., 0.],
             [0., 1.]]], dtype=torch.float64)
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    _check_tensor(X, "X", 3)
    _check_float(X, "X")
    B, N = X.shape[0], X.shape[1]
    mask = _check_mask(mask, B, N, X.device)
    pair = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    zero = torch.zeros((), dtype=X.dtype, device=X.device)
    if kernel == "precomputed":
        if X.shape[2] != N:
            raise ValueError(f'kernel="precomputed" needs X of shape (B, N, N), got {tuple(X.shape)}')
        _check_finite(X, "X", pair)
        return torch.where(pair, X, zero)
    _check_finite(X, "X", mask.unsqueeze(-1).expand_as(X))
    Xm = torch.where(mask.unsqueeze(-1), X, zero)
    if kernel == "linear":
        K = Xm @ Xm.transpose(-1, -2)
    elif kernel in ("rbf", "laplace"):
        n = mask.sum(-1).clamp_min(1).to(X.dtype)  # (B,)
        mean = Xm.sum(1) / n.unsqueeze(-1)  # (B, p)
        Xc = torch.where(mask.unsqueeze(-1), X - mean.unsqueeze(1), zero)
        if gamma is None:
            pdim = X.shape[2]
            var = (Xc * Xc).sum(1) / n.unsqueeze(-1)  # (B, p) per-feature variance
            v = var.mean(-1) if pdim > 0 else torch.zeros(B, dtype=X.dtype, device=X.device)
            g = torch.where(v > 0, 1.0 / (max(pdim, 1) * v.clamp_min(torch.finfo(X.dtype).tiny)), torch.ones_like(v))
            if kernel == "laplace":
                g = g.sqrt()
        else:
            g = per_dataset(gamma, "gamma", B, dtype=X.dtype, device=X.device)
        sq = (Xc * Xc).sum(-1)
        D2 = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (Xc @ Xc.transpose(-1, -2))).clamp_min(0)
        D2 = D2 - torch.diag_embed(torch.diagonal(D2, dim1=-2, dim2=-1))  # exact zeros on the diagonal
        # laplace: the distance is the square root of the squared distance clamped at 0 above
        K = torch.exp(-g.view(B, 1, 1) * (D2.sqrt() if kernel == "laplace" else D2))
    else:  # cina
        Dk = X.shape[2]
        sc = (1.0 / math.sqrt(Dk) if Dk > 0 else 1.0) if scale is None else float(scale)
        S = sc * (Xm @ Xm.transpose(-1, -2))
        S = torch.where(pair, S, torch.full_like(S, -math.inf))
        S_safe = torch.where(mask.unsqueeze(-1), S, torch.zeros_like(S))
        lse = torch.logsumexp(S_safe, dim=-1)
        lse = torch.where(mask, lse, zero)
        K = torch.exp(S - lse.unsqueeze(-1) - lse.unsqueeze(-2))
    return torch.where(pair, K, zero)


# ----------------------------------------------------------------------------------------------
# balancing problems
# ----------------------------------------------------------------------------------------------


def _arm_start(x0: Tensor, arm: Tensor) -> Tensor:
    """A warm start for one arm's simplex problem: ``x0`` clipped at 0 and renormalised on the arm
    (uniform where it gives the arm no weight)."""
    zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
    a = torch.where(arm, x0.clamp_min(0.0), zero)
    tot = a.sum(-1, keepdim=True)
    uniform = arm.to(x0.dtype) / arm.sum(-1, keepdim=True).clamp_min(1).to(x0.dtype)
    return torch.where(tot > 0, a / torch.where(tot > 0, tot, torch.ones_like(tot)), uniform)


def dual_solve(
    X: Tensor,
    W: Tensor,
    lam: Union[float, Tensor],
    *,
    kernel: str = "rbf",
    gamma: Union[None, float, Tensor] = None,
    scale: Optional[float] = None,
    estimand: str = "overlap",
    intercept: bool = True,
    loss: str = "hinge",
    mask: Optional[Tensor] = None,
    tol: float = 1e-6,
    max_iter: Optional[int] = None,
    x0: Optional[Tensor] = None,
) -> BalanceResult:
    """Exact balancing weights for a batch of datasets (docs/method.md §2, §6; docs/ops/qp_solve.md).

    Parameters
    ----------
    X : Tensor, shape (B, N, p)
        Features, float32 or float64 (keys for ``kernel="cina"``, the (B, N, N) Gram for
        "precomputed").
    W : Tensor, shape (B, N)
        Signs in {-1, +1} (treated = +1) at every real unit, as numbers (not bool).
    lam : float or Tensor of shape (), (B,) or (B, L)
        Balancing penalty, finite and > 0.  (B, L): a grid of ``L`` penalties per dataset, solved
        as ``B * L`` problems, row ``b * L + l`` the dataset ``b`` at ``lam[b, l]``: every result
        (and ``x0``) has ``B * L`` rows, as if ``X``, ``W``, ``mask`` and a per-dataset ``gamma``
        were repeated ``L`` times each (``repeat_interleave``).
    kernel : {"rbf", "linear", "laplace", "cina", "precomputed"}, default "rbf"
        See :func:`gram`.
    gamma : float or Tensor of shape (B,), optional
        RBF / Laplace bandwidth (default: see :func:`gram`).
    scale : float, optional
        Score scale of the cina kernel.
    estimand : {"overlap", "ate", "att"}, default "overlap"
        * ``"overlap"`` (the SVM dual, docs/method.md §2): ``Q = (W W') * K / lam``, ``p = 1``,
          ``0 <= alpha <= 1``, ``W'alpha = 0`` when ``intercept``.
        * ``"ate"``: per arm a, ``min 1/2 w'(2 K_aa + 2 lam I) w - 2 kbar_a'w`` on the simplex,
          with ``kbar_a[i]`` the mean of ``K_ij`` over all valid units j.
        * ``"att"``: the control arm against the treated mean (``kbar`` over treated units);
          treated weights ``1/n1``.
    intercept : bool, default True
        "overlap": impose ``W'alpha = 0``.
    loss : {"hinge", "squared_hinge"}, default "hinge"
        "overlap": ``loss="squared_hinge"`` uses ``Q = (W W') * (K + lam I) / lam``
        (= ``(W W') * K / lam + I``), ``alpha >= 0``: the dual of
        ``(lam/2)||beta||^2 + sum_i 1/2 [1 - W_i f(x_i)]_+^2``, i.e. docs/method.md's
        ``1'alpha - alpha'(Q_K + lam I) alpha / (2 lam)``.
    mask : Tensor of bool, shape (B, N), optional
        True = real unit.
    tol : float, default 1e-6
        KKT tolerance.
    max_iter : int, optional
        None is :func:`default_max_iter` of N.
    x0 : Tensor, shape (B, N), optional
        A warm start, e.g. the ``alpha`` of an earlier solve; it is clipped to the box
        ("overlap", where it must already meet ``W'alpha = 0`` with ``intercept``) or clipped at 0
        and renormalised per arm ("ate"/"att").

    Returns
    -------
    BalanceResult
        ``weights`` (B, N): alpha normalised per arm (padded 0).  ``alpha`` (B, N): for "overlap"
        the dual variables on the scale of eq. R (``alpha = lam * |dual_coef_|`` of
        ``SVC(C=1/lam)``); for "ate" each arm's solution at its units.  ``intercept`` (B,): ``b``
        in ``f(x_i) = sum_j alpha_j W_j k_ij / lam + b`` for "overlap" (``b = nu`` of the QP,
        which equals ``SVC.intercept_``), 0 for ate/att.  ``objective``, ``kkt``, ``iterations``,
        ``converged`` (B,) (for "ate": sum, max, max and all over the two arms) and ``estimand``.

    Raises
    ------
    ValueError
        Unknown ``estimand``, ``loss`` or ``kernel``; wrong shapes; W not -1/+1 at a real unit; an
        empty treatment arm among the real units; ``lam`` not finite and > 0; NaN or Inf in X or
        x0; the errors of :func:`qp_solve` (e.g. an overlap ``x0`` off the equality) and of
        :func:`readout_weights` (an arm with zero total weight).
    TypeError
        X or W not a tensor; X not float32/float64; W bool or complex; mask not bool.
    """
    if estimand not in ESTIMANDS:
        raise ValueError(f"estimand must be one of {ESTIMANDS}, got {estimand!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    _check_tensor(X, "X", 3)
    _check_float(X, "X")
    B, N = X.shape[0], X.shape[1]
    _check_tensor(W, "W", 2)
    if tuple(W.shape) != (B, N):
        raise ValueError(f"W must have shape {(B, N)}, got {tuple(W.shape)}")
    if W.dtype == torch.bool or W.is_complex():
        raise TypeError(f"W must hold the signs -1/+1 as numbers, got {W.dtype}")
    mask = _check_mask(mask, B, N, X.device)
    L = penalty_grid(lam, B)
    if L:  # the grid's problems: each dataset repeated once per penalty
        if isinstance(gamma, Tensor) and gamma.dim() == 1:
            gamma = gamma.repeat_interleave(L, 0)
        return dual_solve(
            X.repeat_interleave(L, 0),
            W.repeat_interleave(L, 0),
            lam.reshape(-1),
            kernel=kernel,
            gamma=gamma,
            scale=scale,
            estimand=estimand,
            intercept=intercept,
            loss=loss,
            mask=mask.repeat_interleave(L, 0),
            tol=tol,
            max_iter=max_iter,
            x0=x0,
        )
    Wf = W.to(dtype=X.dtype, device=X.device)
    if bool((mask & ~((Wf == 1) | (Wf == -1))).any()):
        raise ValueError("W must be -1 (control) or +1 (treated) at every real unit")
    Wf = torch.where(mask, Wf, torch.zeros_like(Wf))
    treated = mask & (Wf > 0)
    control = mask & (Wf < 0)
    n1 = treated.sum(-1)
    n0 = control.sum(-1)
    if bool(((n1 == 0) | (n0 == 0)).any()):
        bad = torch.nonzero((n1 == 0) | (n0 == 0)).flatten().tolist()
        raise ValueError(f"dataset(s) {bad} have an empty treatment arm among the real units")
    lam_t = per_dataset(lam, "lam", B, dtype=X.dtype, device=X.device)
    if max_iter is None:
        max_iter = default_max_iter(N)
    if x0 is not None:
        _check_tensor(x0, "x0", 2)
        if tuple(x0.shape) != (B, N):
            raise ValueError(f"x0 must have shape {(B, N)}, got {tuple(x0.shape)}")
        x0 = x0.to(dtype=X.dtype, device=X.device)
        _check_finite(x0, "x0", mask)
    K = gram(X, kernel, gamma=gamma, scale=scale, mask=mask)
    dt, dev = X.dtype, X.device
    zero = torch.zeros((), dtype=dt, device=dev)
    eye = torch.eye(N, dtype=dt, device=dev).expand(B, N, N)

    if estimand == "overlap":
        WW = Wf.unsqueeze(-1) * Wf.unsqueeze(-2)
        Kq = K + lam_t.view(B, 1, 1) * eye if loss == "squared_hinge" else K
        Q = WW * Kq / lam_t.view(B, 1, 1)
        p = torch.where(mask, torch.ones_like(Wf), zero)
        upper = 1.0 if loss == "hinge" else math.inf
        start = None if x0 is None else torch.where(mask, x0.clamp(0.0, upper), zero)
        if intercept:
            res = qp_solve(
                Q,
                p,
                0.0,
                upper,
                c=Wf,
                d=torch.zeros(B, dtype=dt, device=dev),
                mask=mask,
                tol=tol,
                max_iter=max_iter,
                x0=start,
            )
            b = res.nu
        else:
            res = qp_solve(Q, p, 0.0, upper, mask=mask, tol=tol, max_iter=max_iter, x0=start)
            b = torch.zeros(B, dtype=dt, device=dev)
        weights = readout_weights(res.x, Wf, mask)
        return BalanceResult(
            weights=weights,
            alpha=res.x,
            intercept=b,
            objective=res.objective,
            kkt=res.kkt,
            iterations=res.iterations,
            converged=res.converged,
            estimand=estimand,
        )

    Qa = 2.0 * (K + lam_t.view(B, 1, 1) * eye)
    Kv = torch.where(mask.unsqueeze(-2), K, zero)
    if estimand == "ate":
        kbar = Kv.sum(-1) / mask.sum(-1, keepdim=True).to(dt)
        Qs = torch.cat([Qa, Qa], 0)
        ps = torch.cat([2.0 * kbar, 2.0 * kbar], 0)
        ms = torch.cat([treated, control], 0)
        ones = torch.where(ms, torch.ones_like(ps), zero)
        start = None if x0 is None else torch.cat([_arm_start(x0, treated), _arm_start(x0, control)], 0)
        res = qp_solve(
            Qs,
            ps,
            0.0,
            math.inf,
            c=ones,
            d=torch.ones(2 * B, dtype=dt, device=dev),
            mask=ms,
            tol=tol,
            max_iter=max_iter,
            x0=start,
        )
        x_t, x_c = res.x[:B], res.x[B:]
        alpha = torch.where(treated, x_t, torch.where(control, x_c, zero))
        s1 = torch.where(treated, x_t, zero).sum(-1, keepdim=True)
        s0 = torch.where(control, x_c, zero).sum(-1, keepdim=True)
        weights = torch.where(treated, x_t / s1, torch.where(control, x_c / s0, zero))
        return BalanceResult(
            weights=weights,
            alpha=alpha,
            intercept=torch.zeros(B, dtype=dt, device=dev),
            objective=res.objective[:B] + res.objective[B:],
            kkt=torch.maximum(res.kkt[:B], res.kkt[B:]),
            iterations=torch.maximum(res.iterations[:B], res.iterations[B:]),
            converged=res.converged[:B] & res.converged[B:],
            estimand=estimand,
        )

    # att: controls balanced to the treated mean
    kbar = torch.where(treated.unsqueeze(-2), K, zero).sum(-1) / n1.unsqueeze(-1).to(dt)
    ones = torch.where(control, torch.ones_like(Wf), zero)
    start = None if x0 is None else _arm_start(x0, control)
    res = qp_solve(
        Qa,
        2.0 * kbar,
        0.0,
        math.inf,
        c=ones,
        d=torch.ones(B, dtype=dt, device=dev),
        mask=control,
        tol=tol,
        max_iter=max_iter,
        x0=start,
    )
    tw = (1.0 / n1.to(dt)).unsqueeze(-1)
    alpha = torch.where(treated, tw.expand(B, N), torch.where(control, res.x, zero))
    s0 = torch.where(control, res.x, zero).sum(-1, keepdim=True)
    weights = torch.where(treated, tw.expand(B, N), torch.where(control, res.x / s0, zero))
    return BalanceResult(
        weights=weights,
        alpha=alpha,
        intercept=torch.zeros(B, dtype=dt, device=dev),
        objective=res.objective,
        kkt=res.kkt,
        iterations=res.iterations,
        converged=res.converged,
        estimand=estimand,
    )
