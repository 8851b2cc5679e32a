"""Many datasets at once: the training prior and the held-out settings of every family.

:func:`sample_datasets` draws ``count`` datasets of the "setoguchi" or "er" family
(:mod:`cina_ext.data.synthetic`) or of the "semi" family (real covariate tables of scikit-learn,
:mod:`cina_ext.data.semi_synthetic`), in-distribution ("id") or out-of-distribution ("ood"), each
from its own child ``SeedSequence``. :data:`SETTINGS` holds the default draw of every family.
It lives apart from both generators so that each of them stays free of the other.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple, Union

import numpy as np

from .semi_synthetic import make_semi_from_table
from .synthetic import SETOGUCHI_SCENARIOS, CausalDataset, SeedLike, make_er_dataset, make_setoguchi

__all__ = ["SETTINGS", "geometric_ints", "sample_datasets"]


def _draw_n(rng: np.random.Generator, n_range) -> int:
    if isinstance(n_range, (int, np.integer)):
        return int(n_range)
    lo, hi = (int(v) for v in n_range)
    if lo > hi or lo < 2:
        raise ValueError(f"n_range must be (lo, hi) with 2 <= lo <= hi, got {n_range}")
    return int(rng.integers(lo, hi + 1))


def _pick(rng: np.random.Generator, v):
    """A scalar stays; a (lo, hi) tuple of floats is drawn uniformly; a list is a choice."""
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, (int, float, np.number)) for x in v):
        if all(isinstance(x, (int, np.integer)) for x in v):
            return int(rng.integers(int(v[0]), int(v[1]) + 1))
        return float(rng.uniform(float(v[0]), float(v[1])))
    if isinstance(v, list):
        return v[int(rng.integers(0, len(v)))]
    return v


def geometric_ints(lo: int, hi: int, count: int) -> List[int]:
    """Up to ``count`` distinct integers from ``lo`` to ``hi`` (both included), spaced geometrically.

    As a setting of :func:`sample_datasets` (a list is a uniform choice), each doubling of the
    range is drawn about equally often: e.g. covariate counts from 2 to 256.

    Parameters
    ----------
    lo, hi : int
        ``1 <= lo <= hi``.
    count : int
        At least 2 (1 when ``lo == hi``); fewer values come back where rounding merges neighbours.

    Returns
    -------
    list of int
        Increasing; starts at ``lo`` and ends at ``hi``.

    Raises
    ------
    ValueError
        ``lo < 1``, ``hi < lo``, or ``count < 2`` with ``lo < hi``.

    Examples
    --------
    >>> from cina_ext.data import geometric_ints
    >>> geometric_ints(2, 256, 8)
    [2, 4, 8, 16, 32, 64, 128, 256]
    """
    lo, hi, count = int(lo), int(hi), int(count)
    if lo < 1 or hi < lo or count < (1 if lo == hi else 2):
        raise ValueError(f"geometric_ints needs 1 <= lo <= hi and count >= 2 (1 if lo == hi), got {lo}, {hi}, {count}")
    if lo == hi:
        return [lo]
    vals = np.unique(np.rint(np.geomspace(lo, hi, count)).astype(np.int64))
    return [int(v) for v in vals]


#: default settings per family and setting ("id" = training prior, "ood" = held out)
SETTINGS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "setoguchi": {
        "id": {"scenario": list(SETOGUCHI_SCENARIOS), "varying": True, "shift": 0.0, "heterogeneous": False},
        "ood": {"scenario": list(SETOGUCHI_SCENARIOS), "varying": True, "shift": 1.0, "heterogeneous": True},
    },
    "er": {
        "id": {
            "d": 10,
            "density": (0.2, 0.4),
            "mechanism": "mixed",
            "noise": (0.3, 0.7),
            "noise_dist": "gaussian",
            "shift": 0.0,
        },
        "ood": {
            "d": 10,
            "density": (0.5, 0.7),
            "mechanism": "ood",
            "noise": (0.3, 0.7),
            "noise_dist": ["laplace", "uniform"],
            "shift": 0.5,
        },
    },
    # real covariates of scikit-learn's bundled tables (cina_ext.data.semi_synthetic.SEMI_TABLES),
    # simulated treatment and outcomes; training only, so no held-out setting
    "semi": {
        "id": {
            "table": ["breast_cancer", "diabetes", "wine", "digits"],
            "min_covariates": 2,
            "max_covariates": None,
            "treated_share": (0.05, 0.6),
            "overlap": (0.5, 3.0),
            "confounding": (0.5, 1.5),
            "effect": (-1.5, 1.5),
            "heterogeneity": (0.0, 1.0),
            "noise": (0.2, 1.0),
        },
    },
}


def sample_datasets(
    family: str,
    count: int,
    n_range: Union[int, Tuple[int, int]] = (64, 1024),
    seed: SeedLike = 0,
    *,
    setting: str = "id",
    **overrides,
) -> Iterator[CausalDataset]:
    """Yield ``count`` datasets of ``family`` ("setoguchi", "er" or "semi"), deterministic given ``seed``.

    ``n_range``: an int or (lo, hi) inclusive, drawn uniformly per dataset. ``setting``: "id"
    (the training prior) or "ood" (held-out settings; see ``SETTINGS``): for "setoguchi", OOD
    shifts the coefficient distribution by 1 sd and makes effects heterogeneous; for "er", OOD
    uses denser graphs, the held-out mechanisms (cubic, abs, softplus, gauss), non-Gaussian noise
    and a parameter shift of 0.5. "semi" (:func:`cina_ext.data.semi_synthetic.make_semi_from_table`)
    has only "id": a bundled scikit-learn covariate table (breast_cancer, diabetes, wine, digits;
    never an evaluation table), 2 up to its width columns (``max_covariates`` caps it), the
    rows capped at the table's, and a simulated treatment with treated share in (0.05, 0.6) and
    overlap slope in (0.5, 3). ``overrides`` replace any setting; a (lo, hi) tuple of numbers
    is drawn uniformly per dataset, a list is a uniform choice. Each dataset gets its own child
    SeedSequence; ``meta["index"]`` is its position.

    Parameters
    ----------
    family : {"setoguchi", "er", "semi"}
        The synthetic or semi-synthetic family.
    count : int
        Number of datasets.
    n_range : int or (int, int), default (64, 1024)
        Units per dataset, or (lo, hi) inclusive with 2 <= lo <= hi.
    seed : int, SeedSequence or None, default 0
        Seed.
    setting : {"id", "ood"}, default "id"
        Training prior or held-out settings ("semi": "id" only).
    **overrides
        Replace any entry of ``SETTINGS[family][setting]``.

    Yields
    ------
    CausalDataset
        One dataset at a time.

    Raises
    ------
    ValueError
        An unknown family or setting (the "ood" setting of "semi"); an invalid ``n_range``; the
        generators' errors.
    """
    family = str(family).lower()
    if family not in SETTINGS:
        raise ValueError(f"family must be one of {sorted(SETTINGS)}, got {family!r}")
    if setting not in SETTINGS[family]:
        raise ValueError(f"setting of family {family!r} must be one of {sorted(SETTINGS[family])}, got {setting!r}")
    params = {**SETTINGS[family][setting], **overrides}
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    children = ss.spawn(int(count))
    for i, child in enumerate(children):
        ss_draw, ss_data = child.spawn(2)
        rng = np.random.default_rng(ss_draw)
        n = _draw_n(rng, n_range)
        kw = {k: _pick(rng, v) for k, v in params.items()}
        if family == "setoguchi":
            ds = make_setoguchi(n, seed=ss_data, **kw)
        elif family == "semi":
            ds = make_semi_from_table(n, seed=ss_data, **kw)
        else:
            d = kw.pop("d")
            ds = make_er_dataset(n, d, seed=ss_data, **kw)
        ds.meta["index"] = i
        ds.meta["setting"] = setting
        yield ds
