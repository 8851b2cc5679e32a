"""Names and codes shared across the package (defined once)."""

from __future__ import annotations

import torch

__all__ = [
    "VERSION",
    "METHODS",
    "ESTIMANDS",
    "ESTIMAND_LABEL",
    "LOSS_KINDS",
    "LOSS_CODES",
    "BACKENDS",
    "KERNELS",
    "FLOAT_DTYPES",
    "MIN_ARM_SIZE",
]

#: The package version (pyproject.toml carries the same).
VERSION = "0.1.0"
#: The estimators by short name (``make_estimator``, ``cina estimate --method``).
METHODS = ("cina", "kernel", "naive", "ipw", "snipw", "dml", "zero-shot")
#: What the balancing weights estimate (docs/method.md §6).
ESTIMANDS = ("ate", "att", "overlap")
#: How outputs name each estimand.
ESTIMAND_LABEL = {"ate": "ATE", "att": "ATT", "overlap": "overlap effect (ATO)"}
#: The losses of the attention objective (eq. L) and the solver's "overlap" problem.
LOSS_KINDS = ("hinge", "squared_hinge")
#: Their codes in the compiled operators.
LOSS_CODES = {"hinge": 0, "squared_hinge": 1}
#: ``backend=`` of every operator: compiled when available (auto), compiled or error (fused), pure PyTorch.
BACKENDS = ("auto", "fused", "reference")
#: Kernels of the balancing solver.
KERNELS = ("linear", "rbf", "laplace", "cina", "precomputed")
#: The float dtypes the operators compute in.
FLOAT_DTYPES = (torch.float32, torch.float64)
#: The smallest treatment arm the estimators accept.
MIN_ARM_SIZE = 2
