"""Pure-PyTorch twins of every compiled operator: the ground truth of every parity test.

Everything here materialises what it needs (the N x N score or Gram matrix included), is batched
over datasets, honours a (B, N) boolean mask, works in float32 and float64 and is differentiable
with autograd where the operator is.  The operators in :mod:`cina_ext.ops` take the same
arguments (plus ``backend=``) and must reproduce these results.
"""

from __future__ import annotations

from .attention_hinge import attention_hinge, effect_from_weights, readout_alpha, readout_weights
from .balance_descent import balance_descent, descent_steps
from .packed import attention_hinge_packed, dual_solve_packed, qp_solve_packed
from .qp_solve import BalanceResult, QPResult, default_max_iter, dual_solve, gram, qp_solve

__all__ = [
    "attention_hinge",
    "balance_descent",
    "descent_steps",
    "readout_alpha",
    "readout_weights",
    "effect_from_weights",
    "qp_solve",
    "dual_solve",
    "gram",
    "default_max_iter",
    "QPResult",
    "BalanceResult",
    "attention_hinge_packed",
    "dual_solve_packed",
    "qp_solve_packed",
]
