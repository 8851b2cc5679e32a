"""Pure-PyTorch twin of the balancing descent (docs/ops/balance_descent.md): the ground truth.

R problems (rows), each on one of B symmetric Gram matrices: row ``r`` uses ``K[r // (R / B)]``,
so a grid of penalties per dataset shares the dataset's matrix.  Row ``r`` minimises

    f(w) = sum_{a in (1, 0)} (w t_a - c)' K (w t_a - c) + lam_r sum_{i moving} w_i^2

with ``t_1`` / ``t_0`` the treated / control indicators (``arm`` 1 / 0; -1 marks a padded slot),
``c`` the target distribution, each arm's moving weights on the simplex and the other weights
fixed at their start (the treated of the ATT problem).  ``steps`` accelerated
exponentiated-gradient steps, each followed by an exact line search on the segment to the new
point (the objective is quadratic along it; the product with the new point gives the curvature
and is the one the next gradient needs): ``steps + 1`` products with the Gram matrix in all.  The
best iterate (the start included) and its objective are returned.

:func:`descent_steps` is the same loop for any product ``D -> D K`` (random-feature or blockwise
Gram matrices); :func:`balance_descent` holds the matrices (B, N, N) and is the twin of the
compiled operator :func:`cina_ext.ops.balance_descent`.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor

__all__ = ["balance_descent", "descent_steps"]


def descent_steps(
    product: Callable[[Tensor], Tensor],
    w: Tensor,
    arm: Tensor,
    target: Tensor,
    moving: Tensor,
    lam: Tensor,
    steps: int,
    step_size: float,
    momentum: float,
) -> Tuple[Tensor, Tensor]:
    """The descent with the Gram product given as a function.

    Parameters
    ----------
    product : callable
        ``D`` (R, 2, N) float64 -> ``D K`` (R, 2, N) in ``D``'s dtype, each row against its own
        problem's Gram matrix.
    w : Tensor, shape (R, N), float64
        Starting weights: on each arm's moving units a distribution, 0 on padded slots.
    arm : Tensor, shape (R, N), int8
        1 treated, 0 control, -1 padding.
    target : Tensor, shape (R, N), float64
        The distribution both arms are balanced against (0 on padding).
    moving : Tensor, shape (R, N), bool
        The units whose weights move (and are penalised).
    lam : Tensor, shape (R,), float64
        Penalties (> 0).
    steps : int
        Number of steps (0: the start and its objective).
    step_size, momentum : float
        Step size (> 0) and momentum (in [0, 1)).

    Returns
    -------
    weights : Tensor, shape (R, N), float64
        The best iterate.
    objective : Tensor, shape (R,), float64
        Its objective.
    """
    f64 = torch.float64
    treated, control = arm == 1, arm == 0
    t1, t0 = treated.to(f64), control.to(f64)
    pen = moving.to(f64)
    lam_c = lam.to(f64).unsqueeze(-1)
    tiny = torch.finfo(f64).tiny
    neg = torch.tensor(float("-inf"), dtype=f64, device=w.device)
    w = w.to(f64)

    def imbalance(x: Tensor) -> Tensor:  # (R, 2, N): each arm's weights against the target
        return torch.stack([x * t1 - target, x * t0 - target], 1)

    def own_arm(KD: Tensor) -> Tensor:  # each unit's entry of the product with its own arm's imbalance
        return KD[:, 0] * t1 + KD[:, 1] * t0

    D = imbalance(w)
    KD = product(D)
    obj = (D * KD).sum((-1, -2)) + lam.to(f64) * (w * w * pen).sum(-1)
    gk = own_arm(KD)  # (K d^a)_i: half the gradient of the imbalance term
    best_w, best = w, obj
    v = torch.zeros_like(w)
    for _ in range(int(steps)):
        g = gk + lam_c * w  # half the gradient (the penalty counts on the moving units only: dw is 0 elsewhere)
        v = (momentum * v - step_size * g) * pen
        # w' ~ w exp(v) within each arm, shifted by the arm's largest v (the clamp keeps padding
        # and an empty arm at exp(<= 0) times w = 0)
        m1 = torch.where(treated, v, neg).amax(-1, keepdim=True)
        m0 = torch.where(control, v, neg).amax(-1, keepdim=True)
        e = w * torch.exp((v - torch.where(treated, m1, m0)).clamp_max_(0.0))
        s1 = (e * t1).sum(-1, keepdim=True).clamp_min_(tiny)
        s0 = (e * t0).sum(-1, keepdim=True).clamp_min_(tiny)
        w_new = torch.where(moving, e / torch.where(treated, s1, s0), w)
        # exact line search on the segment w -> w_new: slope g . dw, curvature
        # dw . (K dD + lam dw); the product with w_new is the one the next gradient needs
        dw = w_new - w
        dgk = own_arm(product(imbalance(w_new))) - gk
        slope = (dw * g).sum(-1)
        curv = (dw * (dgk + lam_c * dw)).sum(-1)
        t = torch.where(curv > 0, (-slope / curv.clamp_min(tiny)).clamp(0.0, 1.0), (slope < 0).to(f64))
        tc = t.unsqueeze(-1)
        w = w + tc * dw
        gk = gk + tc * dgk
        v = v * tc  # the momentum of the step actually taken (0 when none was)
        obj = obj + t * (2.0 * slope + t * curv)  # the objective is quadratic along the segment
        better = obj < best
        best_w = torch.where(better.unsqueeze(-1), w, best_w)
        best = torch.where(better, obj, best)
    return best_w, best


def balance_descent(
    K: Tensor,
    w: Tensor,
    arm: Tensor,
    target: Tensor,
    moving: Tensor,
    lam: Tensor,
    steps: int,
    step_size: float,
    momentum: float,
) -> Tuple[Tensor, Tensor]:
    """The descent on held Gram matrices: the twin of :func:`cina_ext.ops.balance_descent`.

    The products run in ``K``'s dtype (float32 in the model's use), the rest in float64.

    Parameters
    ----------
    K : Tensor, shape (B, N, N)
        Symmetric Gram matrices.
    w : Tensor, shape (R, N), float64
        Starting weights, R a multiple of B (row ``r`` uses ``K[r // (R / B)]``).
    arm : Tensor, shape (R, N), int8
        1 treated, 0 control, -1 padding.
    target : Tensor, shape (R, N), float64
        The distribution both arms are balanced against.
    moving : Tensor, shape (R, N), bool
        The units whose weights move and are penalised.
    lam : Tensor, shape (R,), float64
        Penalties (> 0).
    steps : int
        Number of steps.
    step_size, momentum : float
        Step size (> 0) and momentum (in [0, 1)).

    Returns
    -------
    weights : Tensor, shape (R, N), float64
        The best iterate.
    objective : Tensor, shape (R,), float64
        Its objective.
    """
    B, N = K.shape[0], K.shape[-1]
    R = w.shape[0]
    L = R // B if B else 1

    def product(D: Tensor) -> Tensor:
        # the row-major (B, k, N) x (B, N, N) product streams K about twice as fast on the CPU as
        # (B, N, N) x (B, N, k); K is symmetric, so D K is (K D')'
        return torch.bmm(D.reshape(B, 2 * L, N).to(K.dtype), K).reshape(R, 2, N).to(D.dtype)

    return descent_steps(product, w, arm, target, moving, lam, steps, step_size, momentum)
