"""The compiled operators, one module each: input checks, autograd, fake (meta) implementations and
dispatch to the kernels of csrc/ (CPU always, CUDA when built), with ``backend=`` to choose the
pure-PyTorch twin of :mod:`cina_ext.reference` instead.

* :func:`attention_hinge` -- fused masked tied-key attention + penalised hinge loss
  (:mod:`.attention_hinge`);
* :func:`qp_solve`, :func:`dual_solve` -- the batched box-QP / balancing-dual solver
  (:mod:`.qp_solve`);
* :func:`balance_descent` -- exponentiated-gradient steps on the kernel balancing objective, CPU
  kernel (:mod:`.balance_descent`);
* :func:`attention_hinge_packed`, :func:`dual_solve_packed`, :func:`qp_solve_packed` -- the same
  on many datasets of different sizes stored back to back with offsets (:mod:`.packed`).
"""

from __future__ import annotations

from .._core.backend import resolve_backend
from .._core.extension import extension_error, has_cuda_kernels, has_extension
from .attention_hinge import attention_hinge
from .balance_descent import balance_descent
from .packed import (
    attention_hinge_packed,
    dual_solve_packed,
    offsets_from_lengths,
    qp_solve_packed,
)
from .qp_solve import BalanceResult, QPResult, default_max_iter, dual_solve, qp_solve

__all__ = [
    "attention_hinge",
    "balance_descent",
    "qp_solve",
    "dual_solve",
    "default_max_iter",
    "QPResult",
    "BalanceResult",
    "attention_hinge_packed",
    "dual_solve_packed",
    "qp_solve_packed",
    "offsets_from_lengths",
    "has_extension",
    "has_cuda_kernels",
    "extension_error",
    "resolve_backend",
]
