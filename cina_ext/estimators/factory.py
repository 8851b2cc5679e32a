"""Estimators by short name: the methods of ``cina estimate --method``."""

from __future__ import annotations

import inspect
from typing import Optional

from .._core.checks import check_estimand
from .._core.constants import METHODS
from ..models.checkpoint import pretrained_path
from .baselines import IPW, DifferenceInMeans, DoubleML, SelfNormalizedIPW
from .cina import CInA
from .kernel_balancing import KernelBalancing
from .zero_shot import CInAZeroShot

__all__ = ["METHODS", "make_estimator"]


_REGISTRY = {
    "cina": CInA,
    "kernel": KernelBalancing,
    "naive": DifferenceInMeans,
    "ipw": IPW,
    "snipw": SelfNormalizedIPW,
    "dml": DoubleML,
}


def make_estimator(name: str, *, estimand: Optional[str] = None, random_state=None, **kwargs):
    """Build an estimator by short name (one of :data:`METHODS`).

    Parameters
    ----------
    name : str
        "cina", "kernel", "naive", "ipw", "snipw", "dml" or "zero-shot" (case-insensitive);
        "zero-shot" is :class:`CInAZeroShot` with the shipped model unless ``model`` or
        ``checkpoint`` is given.
    estimand : str, optional
        None keeps the class default; else one the class allows.
    random_state : None, int or numpy Generator, optional
        Passed to the constructor.
    **kwargs
        Constructor parameters of the estimator.

    Returns
    -------
    estimator
        An unfitted estimator.

    Raises
    ------
    ValueError
        An unknown method name; an estimand the class does not allow.
    TypeError
        A keyword the estimator does not accept (naming the estimator).

    Examples
    --------
    >>> from cina_ext.estimators import make_estimator
    >>> make_estimator("kernel", estimand="att", lam=0.01)
    KernelBalancing(estimand='att', lam=0.01)
    """
    key = str(name).lower()
    if key == "zero-shot":  # CInAZeroShot, the shipped model unless model/checkpoint is given
        cls = CInAZeroShot
        if kwargs.get("model") is None and kwargs.get("checkpoint") is None:
            kwargs["checkpoint"] = pretrained_path()
    elif key not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {METHODS}")
    else:
        cls = _REGISTRY[key]
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    bad = sorted(set(kwargs) - params)
    if bad:
        raise TypeError(f"{cls.__name__} got unexpected parameter(s) {bad}; it accepts {sorted(params)}")
    if estimand is not None:
        kwargs["estimand"] = check_estimand(estimand, cls._allowed_estimands)
    kwargs["random_state"] = random_state
    return cls(**kwargs)
