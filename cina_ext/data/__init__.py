"""Datasets for cina-ext: synthetic families with known truth and offline real benchmarks.

Synthetic (always available): :func:`make_setoguchi`, :func:`make_er_dataset` (and the
:class:`ERSCM` behind it), :func:`sample_datasets` for many datasets (in- or out-of-distribution).
Real / semi-synthetic (files inside installed packages, extra ``[data]``): :func:`load_lalonde`,
:func:`load_nsw`, :func:`load_ihdp`, :func:`load_acic2016`, :func:`load_nhefs`.
:func:`make_semi_synthetic` simulates treatment and outcomes on any real covariate table;
:func:`make_semi_from_table` on scikit-learn's bundled tables (the "semi" family).
:func:`load_dataset` resolves a name.
"""

from __future__ import annotations

from .families import SETTINGS, geometric_ints, sample_datasets
from .real import (
    ACIC2016_SETTINGS,
    DATA_EXTRA_HINT,
    DATASETS,
    IHDP_COVARIATES,
    LALONDE_BENCHMARK_ATT,
    LALONDE_COVARIATES,
    NHEFS_COVARIATES,
    NHEFS_TEXTBOOK_ATE,
    NHEFS_TEXTBOOK_CI,
    acic2016_covariates,
    data_available,
    list_datasets,
    load_acic2016,
    load_dataset,
    load_ihdp,
    load_lalonde,
    load_nhefs,
    load_nsw,
)
from .semi_synthetic import (
    SEMI_SYNTHETIC_TRANSFORMS,
    SEMI_TABLES,
    load_semi_table,
    make_semi_from_table,
    make_semi_synthetic,
)
from .synthetic import (
    ERSCM,
    MECHANISMS_ID,
    MECHANISMS_OOD,
    SETOGUCHI_ALPHA,
    SETOGUCHI_BETA,
    SETOGUCHI_ETA,
    SETOGUCHI_GAMMA,
    SETOGUCHI_SCENARIOS,
    CausalDataset,
    make_er_dataset,
    make_er_scm,
    make_setoguchi,
    setoguchi_scenario_terms,
)

__all__ = [
    "CausalDataset",
    "ERSCM",
    "make_setoguchi",
    "make_er_dataset",
    "make_er_scm",
    "sample_datasets",
    "geometric_ints",
    "setoguchi_scenario_terms",
    "load_lalonde",
    "load_nsw",
    "load_ihdp",
    "load_acic2016",
    "acic2016_covariates",
    "load_nhefs",
    "make_semi_synthetic",
    "make_semi_from_table",
    "load_semi_table",
    "load_dataset",
    "list_datasets",
    "data_available",
    "SETOGUCHI_SCENARIOS",
    "SETOGUCHI_BETA",
    "SETOGUCHI_ALPHA",
    "SETOGUCHI_GAMMA",
    "SETOGUCHI_ETA",
    "MECHANISMS_ID",
    "MECHANISMS_OOD",
    "SETTINGS",
    "DATASETS",
    "DATA_EXTRA_HINT",
    "LALONDE_BENCHMARK_ATT",
    "LALONDE_COVARIATES",
    "IHDP_COVARIATES",
    "ACIC2016_SETTINGS",
    "NHEFS_COVARIATES",
    "NHEFS_TEXTBOOK_ATE",
    "NHEFS_TEXTBOOK_CI",
    "SEMI_SYNTHETIC_TRANSFORMS",
    "SEMI_TABLES",
]
