"""Treatment-effect estimators: CInA (Algorithm 1), zero-shot CInA, exact kernel balancing and the
usual baselines, all with the balancing-weights interface of :class:`~.base._WeightingEstimator`."""

from __future__ import annotations

from .base import EstimatorSummary
from .baselines import IPW, DifferenceInMeans, DoubleML, SelfNormalizedIPW
from .cina import CInA
from .factory import METHODS, make_estimator
from .kernel_balancing import KernelBalancing
from .zero_shot import CInAZeroShot

__all__ = [
    "DifferenceInMeans",
    "IPW",
    "SelfNormalizedIPW",
    "DoubleML",
    "KernelBalancing",
    "CInA",
    "CInAZeroShot",
    "EstimatorSummary",
    "make_estimator",
    "METHODS",
]
