"""Input checks and conversions, defined once for the whole package.

Three groups: the estimators' data checks (:func:`check_design`, :func:`check_outcome`,
:func:`check_estimand`), the estimators' parameter checks (:func:`check_positive`,
:func:`resolve_dtype`, :func:`resolve_device`, :func:`seed_from`), and the operators' tensor
checks (:func:`check_tensor`, :func:`check_float`, :func:`check_mask`, :func:`check_finite_tensor`,
:func:`bound_tensor`, :func:`per_dataset`).

Data checks
-----------

Every public estimator calls :func:`check_design` on ``fit(X, T)`` and :func:`check_outcome` on
``ate(Y)``.  The result is a canonical numpy representation (``X`` float64 ``(N, p)``, ``T`` int8
``(N,)`` in {0, 1}) plus the column names and the torch device the inputs lived on (if any).

Accepted inputs
---------------
* numpy arrays, torch tensors (any device, but all tensors of one call on the same device),
  pandas ``DataFrame`` / ``Series`` (column names are kept and carried into the diagnostics),
  plain Python lists.
* ``X``: 2-D, numeric or bool columns.  A 1-D ``X`` is refused (as scikit-learn does): reshape a
  single covariate with ``X.reshape(-1, 1)``.
* ``T``: 1-D (or an ``(N, 1)`` column), binary.  Accepted codings (**choice**):

  - bool (True = treated);
  - numbers in {0, 1} (ints or floats that are exactly 0.0 / 1.0);
  - numbers in {-1, +1}, the sign convention ``W = 2T - 1`` of the method (+1 = treated).

  Anything else (a third level such as {0, 1, 2}, fractional values such as 0.5, strings,
  categoricals) is refused with an error naming the offending values.
* ``Y``: 1-D (or ``(N, 1)``), numeric, finite, same length as ``T``.

Refused with a clear exception (never a silent NaN later)
---------------------------------------------------------
``ValueError``: NaN or Inf anywhere (the column is named), wrong number of dimensions, mismatched
lengths, a non-binary treatment, an empty treatment arm, an arm with fewer than
``MIN_ARM_SIZE`` (= 2) units, no covariate columns, a constant covariate column (named: it
carries no information, cannot be standardised and makes the balance table undefined — drop it;
**choice**: refuse rather than drop silently), tensors on different devices.

``TypeError``: datetime / complex columns, object columns mixing numbers and strings (the column
is named), string or object values in a numpy array, torch tensor or list (only a DataFrame carries
the column types needed to encode them), unsupported container types.

Categorical columns of a DataFrame (one-hot encoding) -- **choice**
------------------------------------------------------------------
A DataFrame column of strings (object or ``string`` dtype), a ``category`` column or an object
column of booleans is one-hot encoded in place: one 0/1 column per observed level, named
``col=level`` (levels in category order for a ``category``, else sorted), recorded in
:attr:`DesignData.encoded` (original column -> new names).  **Full** one-hot (every level kept,
none dropped as a reference): balancing weights and balance tables are then symmetric in the
levels (with drop-first the standardised distances of the kernel, and so the weights, depend on
which level is the reference), every level appears in the balance table as cobalt shows it, and no
estimator here inverts ``X'X`` (the propensity models are penalised, the outcome models trees), so
the collinear set of dummies costs nothing.  An object column holding only booleans becomes one
indicator ``col=True``.  Refused: a missing value in such a column (``ValueError``, as for a
numeric NaN: impute it or make it a level, e.g. ``df[col].fillna("missing")``); more than
:data:`MAX_LEVELS` (= 50) levels (``ValueError``: most likely an identifier).  Numeric and bool
columns are untouched.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .constants import ESTIMANDS, FLOAT_DTYPES, MIN_ARM_SIZE

__all__ = [
    "penalty_grid",
    "MIN_ARM_SIZE",
    "MAX_LEVELS",
    "DesignData",
    "check_sample_weight",
    "check_design",
    "check_outcome",
    "check_estimand",
    "arm_sizes",
    "check_positive",
    "resolve_dtype",
    "resolve_device",
    "seed_from",
    "check_tensor",
    "check_float",
    "check_mask",
    "check_finite_tensor",
    "bound_tensor",
    "per_dataset",
    "standardize_columns",
    "check_nonnegative_diagonal",
    "converged_and_finite",
]


@dataclass
class DesignData:
    """Validated design: ``X`` float64 (N, p), ``T`` int8 (N,) in {0, 1}."""

    X: np.ndarray
    T: np.ndarray
    feature_names: List[str]
    has_names: bool = False  # True when the names came from the input (pandas)
    device: Optional[Any] = None  # torch.device of tensor inputs, else None
    index: Optional[Any] = field(default=None, repr=False)  # pandas index of the rows, if any
    # one-hot encoded DataFrame columns: original column -> the names of its indicator columns
    encoded: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def W(self) -> np.ndarray:
        return 2.0 * self.T.astype(np.float64) - 1.0


# --------------------------------------------------------------------------------------------
# helpers


def _is_torch(obj) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, torch.Tensor)


def _is_pandas(obj) -> bool:
    mod = type(obj).__module__
    return mod.startswith("pandas")


def _tensor_devices(**named) -> Optional[Any]:
    """Return the common device of the torch tensors among ``named`` or raise ValueError."""
    devices = {name: t.device for name, t in named.items() if _is_torch(t)}
    if not devices:
        return None
    distinct = set(str(d) for d in devices.values())
    if len(distinct) > 1:
        desc = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise ValueError(f"input tensors are on different devices ({desc}); move them to one device")
    return next(iter(devices.values()))


def _tensor_to_numpy(t, name: str) -> np.ndarray:
    if t.is_complex():
        raise TypeError(f"{name} has complex dtype {t.dtype}; a real numeric tensor is required")
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (no data)")
    t = t.detach()
    if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
        t = t.to(torch.float32)
    return t.cpu().numpy()


def _check_numeric_array(arr: np.ndarray, name: str, col_names: Optional[Sequence[str]] = None) -> None:
    kind = arr.dtype.kind
    if kind in "biuf":
        return
    if kind == "c":
        raise TypeError(f"{name} has complex dtype {arr.dtype}; real numbers are required")
    if kind in "OUSV":
        # find the offending column for a helpful message
        if arr.ndim == 2 and col_names is not None:
            for j in range(arr.shape[1]):
                try:
                    np.asarray(arr[:, j], dtype=np.float64)
                except (TypeError, ValueError):
                    raise TypeError(
                        f"{name} column {col_names[j]!r} is not numeric (dtype {arr.dtype}, e.g. "
                        f"value {arr[0, j]!r}); encode it numerically, or pass a pandas DataFrame "
                        "(whose string columns are one-hot encoded)"
                    ) from None
        raise TypeError(
            f"{name} has non-numeric dtype {arr.dtype}; convert strings/objects to numbers "
            "(e.g. pandas.get_dummies for categories)"
        )
    raise TypeError(f"{name} has unsupported dtype {arr.dtype}; a numeric array is required")


#: A categorical DataFrame column with more levels than this is refused (most likely an identifier).
MAX_LEVELS = 50


def _one_hot(s, label: str, name: str):
    """The indicator columns ``(array (N, k), names)`` of a categorical / string / boolean-object
    column (see the module docstring), or raise."""
    import pandas as pd

    if s.isna().any():
        k = int(s.isna().sum())
        raise ValueError(
            f"{name} column {label!r} (categorical) contains NaN / missing values ({k} entries); impute or "
            f"drop them, or make missingness its own level (e.g. df[{label!r}].fillna('missing'))"
        )
    if isinstance(s.dtype, pd.CategoricalDtype):
        present = set(s.unique())
        levels = [c for c in s.cat.categories if c in present]
    else:
        levels = sorted(pd.unique(s), key=lambda v: (type(v).__name__, str(v)))
    if len(levels) > MAX_LEVELS:
        raise ValueError(
            f"{name} column {label!r} has {len(levels)} distinct levels (more than {MAX_LEVELS}): most likely "
            "an identifier, not a covariate; drop it, or group its levels and encode it yourself"
        )
    if not isinstance(s.dtype, pd.CategoricalDtype) and all(isinstance(v, (bool, np.bool_)) for v in levels):
        return s.to_numpy(dtype=bool).astype(np.float64)[:, None], [f"{label}=True"]
    names = [f"{label}={v}" for v in levels]
    if len(set(names)) != len(names):
        raise ValueError(f"{name} column {label!r} has distinct levels with the same text {names}; recode them")
    codes = np.asarray(pd.Categorical(s, categories=levels).codes)  # vectorised: no loop over rows
    arr = (codes[:, None] == np.arange(len(levels))[None, :]).astype(np.float64)
    return arr, names


def _is_categorical_column(s) -> bool:
    """A column to one-hot encode: category dtype, or strings / booleans in an object or string column."""
    import pandas as pd
    from pandas.api import types as pdt

    if isinstance(s.dtype, pd.CategoricalDtype):
        return True
    if pdt.is_string_dtype(s.dtype) or s.dtype == object:
        kind = pdt.infer_dtype(s, skipna=True)
        if kind in ("string", "boolean", "categorical", "empty"):
            return True
    return False


def _frame_to_numpy(df, name: str):
    """DataFrame -> (float64 array, column names, encoded columns), naming bad columns."""
    import pandas as pd
    from pandas.api import types as pdt

    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{name} has duplicated column names {dup}")
    cols = []
    out_names: List[str] = []
    encoded: Dict[str, List[str]] = {}
    for c, label in zip(df.columns, names):
        s = df[c]
        if isinstance(s, pd.DataFrame):  # pragma: no cover - duplicated labels caught above
            raise ValueError(f"{name} has duplicated column {label!r}")
        dt = s.dtype
        if _is_categorical_column(s):
            block, new = _one_hot(s, label, name)
            cols.extend(block.T)
            out_names.extend(new)
            encoded[label] = new
            continue
        if pdt.is_datetime64_any_dtype(dt) or pdt.is_timedelta64_dtype(dt):
            raise TypeError(f"{name} column {label!r} has datetime dtype {dt}; convert it to a number")
        if pdt.is_complex_dtype(dt):
            raise TypeError(f"{name} column {label!r} has complex dtype {dt}")
        if not (pdt.is_bool_dtype(dt) or pdt.is_numeric_dtype(dt)):
            example = s.iloc[0] if len(s) else None
            kind = pdt.infer_dtype(s, skipna=True)
            if kind in ("integer", "floating", "mixed-integer-float", "decimal"):  # numbers in an object column
                cols.append(s.to_numpy(dtype=np.float64, na_value=np.nan))
                out_names.append(label)
                continue
            raise TypeError(
                f"{name} column {label!r} is neither numeric nor categorical (dtype {dt}, values of kind "
                f"{kind!r}, e.g. {example!r}); make it numbers, or strings to be one-hot encoded"
            )
        cols.append(s.to_numpy(dtype=np.float64, na_value=np.nan))
        out_names.append(label)
    if len(set(out_names)) != len(out_names):
        dup = sorted({n for n in out_names if out_names.count(n) > 1})
        raise ValueError(f"{name}: the one-hot encoded names {dup} clash with other columns; rename them")
    arr = np.column_stack(cols) if cols else np.empty((len(df), 0), dtype=np.float64)
    return arr, out_names, encoded


def _as_2d_float(X, name: str = "X"):
    """Convert X to float64 (N, p); returns (array, names, has_names, index, encoded)."""
    names = None
    has_names = False
    index = None
    encoded: Dict[str, List[str]] = {}
    if _is_torch(X):
        arr = _tensor_to_numpy(X, name)
    elif _is_pandas(X):
        import pandas as pd

        if isinstance(X, pd.Series):
            raise ValueError(
                f"{name} must be 2-D (N, p); got a pandas Series: use a DataFrame (X.to_frame()) for a single covariate"
            )
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"{name} must be a DataFrame, array or tensor, got {type(X).__name__}")
        arr, names, encoded = _frame_to_numpy(X, name)
        has_names = True
        index = X.index
    elif isinstance(X, (np.ndarray, list, tuple)):
        try:
            arr = np.asarray(X)
        except ValueError as exc:
            raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    elif np.isscalar(X) or X is None:
        raise TypeError(f"{name} must be an array-like of shape (N, p), got {type(X).__name__}")
    else:
        try:
            arr = np.asarray(X)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"{name} of type {type(X).__name__} cannot be converted to an array: {exc}") from None
    if arr.ndim != 2:
        hint = " (reshape a single covariate with X.reshape(-1, 1))" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (N, p), got {arr.ndim}-D with shape {arr.shape}{hint}")
    if names is None:
        names = [f"x{j}" for j in range(arr.shape[1])]
    _check_numeric_array(arr, name, names)
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    return arr, names, has_names, index, encoded


def _as_1d(v, name: str):
    """Convert a vector-like to a 1-D numpy array (dtype preserved where sensible)."""
    if _is_torch(v):
        arr = _tensor_to_numpy(v, name)
    elif _is_pandas(v):
        import pandas as pd
        from pandas.api import types as pdt

        if isinstance(v, pd.DataFrame):
            if v.shape[1] != 1:
                raise ValueError(f"{name} must be 1-D, got a DataFrame with {v.shape[1]} columns")
            v = v.iloc[:, 0]
        if not isinstance(v, pd.Series):
            raise TypeError(f"{name} must be a Series, array or tensor, got {type(v).__name__}")
        dt = v.dtype
        if isinstance(dt, pd.CategoricalDtype):
            raise TypeError(f"{name} is categorical; encode it numerically (0/1 for a treatment)")
        if not (pdt.is_bool_dtype(dt) or pdt.is_numeric_dtype(dt)) or pdt.is_complex_dtype(dt):
            example = v.iloc[0] if len(v) else None
            raise TypeError(f"{name} is not numeric (dtype {dt}, e.g. value {example!r})")
        if pdt.is_bool_dtype(dt) and not v.isna().any():
            arr = v.to_numpy(dtype=bool)
        else:
            arr = v.to_numpy(dtype=np.float64, na_value=np.nan)
    elif np.isscalar(v) or v is None:
        raise TypeError(f"{name} must be a 1-D array-like, got {type(v).__name__}")
    else:
        try:
            arr = np.asarray(v)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"{name} of type {type(v).__name__} cannot be converted to an array: {exc}") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got {arr.ndim}-D with shape {arr.shape}")
    _check_numeric_array(arr, name)
    return arr


def _check_finite(arr: np.ndarray, name: str, col_names: Optional[Sequence[str]] = None) -> None:
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = ~finite
    what = "NaN" if np.isnan(arr[bad]).any() else "Inf"
    if np.isnan(arr[bad]).any() and np.isinf(arr[bad]).any():
        what = "NaN and Inf"
    if arr.ndim == 2:
        cols = np.nonzero(bad.any(axis=0))[0]
        labels = [col_names[j] if col_names is not None else str(j) for j in cols]
        raise ValueError(
            f"{name} contains {what} values in column(s) {labels} "
            f"({int(bad.sum())} entries); impute or drop them before estimating"
        )
    raise ValueError(f"{name} contains {what} values ({int(bad.sum())} entries); impute or drop them")


def _binary_treatment(t: np.ndarray) -> np.ndarray:
    if t.dtype.kind == "b":
        return t.astype(np.int8)
    _check_finite(t.astype(np.float64) if t.dtype.kind in "iu" else t, "T")
    values = np.unique(t)
    vals = set(float(v) for v in values)
    if vals <= {0.0, 1.0}:
        return (t == 1).astype(np.int8)
    if vals <= {-1.0, 1.0}:
        return (t == 1).astype(np.int8)
    shown = sorted(vals)[:6]
    raise ValueError(
        f"treatment T must be binary: bool, 0/1, or -1/+1 (+1 = treated); got values {shown}"
        + (" ..." if len(vals) > 6 else "")
    )


def arm_sizes(T: np.ndarray):
    n1 = int(np.sum(T == 1))
    return n1, int(T.shape[0] - n1)


def _check_arms(T: np.ndarray, min_arm: int = MIN_ARM_SIZE) -> None:
    n1, n0 = arm_sizes(T)
    for label, code, n in (("treated", 1, n1), ("control", 0, n0)):
        if n == 0:
            raise ValueError(f"the {label} arm (T == {code}) is empty: both treated and control units are needed")
        if n < min_arm:
            raise ValueError(
                f"the {label} arm (T == {code}) has only {n} unit(s); at least {min_arm} per arm are needed"
            )


def _check_constant_columns(X: np.ndarray, names: Sequence[str]) -> None:
    if X.shape[0] == 0:
        return
    const = np.nonzero(np.all(X == X[0:1, :], axis=0))[0]
    if const.size:
        labels = [names[j] for j in const]
        raise ValueError(
            f"covariate column(s) {labels} are constant (e.g. all values {X[0, const[0]]!r}): a constant "
            "column carries no information and cannot be standardised or balanced; drop it"
        )


# --------------------------------------------------------------------------------------------
# public entry points


def _align_to(v, index, name: str):
    """A pandas Series (or one-column DataFrame) ``v`` reordered to the rows of ``X`` (``index``).

    pandas users expect rows to be paired by label, not by position: the same labels in another
    order are aligned; different labels raise (pairing them by position would be silently wrong).
    """
    if index is None or not _is_pandas(v) or not hasattr(v, "index"):
        return v
    if v.index.equals(index):
        return v
    if len(v.index) == len(index) and v.index.is_unique and index.is_unique and set(v.index) == set(index):
        return v.reindex(index)
    missing = [k for k in index[:1000] if k not in set(v.index)][:5]
    raise ValueError(
        f"{name} and X have different pandas indexes (e.g. X rows {missing} are not in {name}); "
        f"align them (e.g. {name}.loc[X.index]) or pass numpy arrays to pair the rows by position"
    )


def check_design(X, T, *, min_arm: int = MIN_ARM_SIZE, allow_constant: bool = False) -> DesignData:
    """Validate and convert ``(X, T)``; see the module docstring for the rules.

    Returns a :class:`DesignData` with ``X`` float64 (N, p) and ``T`` int8 (N,) in {0, 1}.
    """
    device = _tensor_devices(X=X, T=T)
    Xa, names, has_names, index, encoded = _as_2d_float(X, "X")
    Ta = _as_1d(_align_to(T, index, "T"), "T")
    if Xa.shape[0] != Ta.shape[0]:
        raise ValueError(f"X and T have mismatched lengths: X has {Xa.shape[0]} rows, T has {Ta.shape[0]}")
    if Xa.shape[1] == 0:
        raise ValueError("X has no covariate columns (shape (N, 0))")
    _check_finite(Xa, "X", names)
    Tb = _binary_treatment(Ta)
    _check_arms(Tb, min_arm)
    if not allow_constant:
        _check_constant_columns(Xa, names)
    return DesignData(
        X=Xa, T=Tb, feature_names=list(names), has_names=has_names, device=device, index=index, encoded=encoded
    )


def check_outcome(Y, n: int, *, device=None, index=None) -> np.ndarray:
    """Validate an outcome vector of length ``n``; returns float64 (n,).  A pandas ``Y`` is aligned
    to ``index`` (the rows of the fitted ``X``) by label."""
    if device is not None and _is_torch(Y) and str(Y.device) != str(device):
        raise ValueError(f"Y is on {Y.device} but the design (X, T) was on {device}; use one device")
    Ya = _as_1d(_align_to(Y, index, "Y"), "Y")
    if Ya.shape[0] != n:
        raise ValueError(f"Y has length {Ya.shape[0]} but the fitted design has {n} units (mismatched lengths)")
    Ya = Ya.astype(np.float64)
    _check_finite(Ya, "Y")
    return Ya


def check_sample_weight(sample_weight, n: int, *, device=None, index=None) -> np.ndarray:
    """Validate survey / frequency weights of the ``n`` fitted units; returns float64 (n,).

    Finite, non-negative, not all zero, length ``n``; a pandas ``sample_weight`` is aligned to
    ``index`` (the rows of ``X``) by label.  Raises ``ValueError`` (or ``TypeError`` for
    non-numeric weights) naming the problem.
    """
    if device is not None and _is_torch(sample_weight) and str(sample_weight.device) != str(device):
        raise ValueError(f"sample_weight is on {sample_weight.device} but the design (X, T) was on {device}")
    s = _as_1d(_align_to(sample_weight, index, "sample_weight"), "sample_weight").astype(np.float64)
    if s.shape[0] != n:
        raise ValueError(f"sample_weight has length {s.shape[0]} but X has {n} rows (mismatched lengths)")
    _check_finite(s, "sample_weight")
    if np.any(s < 0):
        raise ValueError(f"sample_weight must be non-negative; {int(np.sum(s < 0))} weight(s) are negative")
    if not np.any(s > 0):
        raise ValueError("sample_weight is zero for every unit")
    return s


def check_estimand(estimand, allowed: Sequence[str] = ESTIMANDS) -> str:
    if not isinstance(estimand, str) or estimand.lower() not in allowed:
        raise ValueError(f"estimand must be one of {tuple(allowed)}, got {estimand!r}")
    return estimand.lower()


# ---- standardisation -------------------------------------------------------------------------


def standardize_columns(X: np.ndarray, mean=None, sd=None):
    """Column-standardise ``X`` (population SD); returns ``(Z, mean, sd)``.

    Scale-robust: each column is first shifted by its first value (exact for values close to it,
    so a large offset such as ``1e6 + x`` loses nothing more than its storage already did) and
    divided by its largest deviation before the moments are taken, so no column is too small
    (``1e-13 x``) or too large (``1e300 x``) to standardise, and none is dropped: only a column
    whose values are all identical (possible in a bootstrap resample) gets sd 1.  With ``mean`` and
    ``sd`` given (a previous fit), applies them.  Raises ``ValueError`` for a column whose spread
    does not fit in a float64.
    """
    X = np.asarray(X, dtype=np.float64)
    if mean is not None:
        return (X - mean) / sd, mean, sd
    if X.shape[0] == 0:
        return X.copy(), np.zeros(X.shape[1]), np.ones(X.shape[1])
    ref = X[0].copy()
    with np.errstate(over="ignore", invalid="ignore"):
        D = X - ref
    if not np.all(np.isfinite(D)):  # the spread itself overflows: shift in a scaled copy instead
        big = np.max(np.abs(X), axis=0)
        big = np.where(big > 0, big, 1.0)
        Dz = X / big - ref / big
        scale = big
    else:
        scale = np.max(np.abs(D), axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        Dz = D / scale
    mz = Dz.mean(axis=0)
    Cz = Dz - mz
    sdz = np.sqrt(np.mean(Cz * Cz, axis=0))
    constant = sdz == 0
    Z = np.where(constant, 0.0, Cz / np.where(constant, 1.0, sdz))
    with np.errstate(over="ignore"):
        mean = ref + mz * scale
        sd = np.where(constant, 1.0, sdz * scale)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(sd))):
        bad = np.nonzero(~(np.isfinite(mean) & np.isfinite(sd)))[0].tolist()
        raise ValueError(
            f"covariate column(s) {bad[:10]} are too large to standardise in float64 "
            "(their spread overflows); rescale them"
        )
    return Z, mean, sd


# ---- estimator parameters ----------------------------------------------------------------------


def seed_from(random_state) -> int:
    """An int seed from None / int / numpy Generator / RandomState."""
    if random_state is None:
        return int(np.random.default_rng().integers(0, 2**31 - 1))
    if isinstance(random_state, (int, np.integer)):
        return int(random_state) % (2**31 - 1)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    raise TypeError(f"random_state must be None, an int or a numpy Generator, got {type(random_state).__name__}")


def check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    table = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}
    if isinstance(dtype, str) and dtype in table:
        return table[dtype]
    raise ValueError(f"dtype must be 'float64' or 'float32' (or the torch dtype), got {dtype!r}")


def resolve_device(device, data_device) -> torch.device:
    if device is None or device == "auto":
        if data_device is not None and str(data_device) != "meta":
            return torch.device(data_device)
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


# ---- operator tensors ----------------------------------------------------------------------------


def check_tensor(t, name: str, ndim: int) -> Tensor:
    """``t`` must be a tensor with ``ndim`` dimensions."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def check_float(t: Tensor, name: str) -> None:
    """``t`` must be float32 or float64."""
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def check_mask(mask, B: int, N: int, device) -> Tensor:
    """A (B, N) bool mask (True = real unit); None means all units are real."""
    if mask is None:
        return torch.ones(B, N, dtype=torch.bool, device=device)
    check_tensor(mask, "mask", 2)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = real unit), got {mask.dtype}")
    if tuple(mask.shape) != (B, N):
        raise ValueError(f"mask must have shape {(B, N)}, got {tuple(mask.shape)}")
    return mask.to(device)


def check_finite_tensor(t: Tensor, name: str, mask: Optional[Tensor] = None) -> None:
    """No NaN or Inf in ``t`` (where ``mask`` is True); the error names the datasets."""
    bad = ~torch.isfinite(t)
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        rows = torch.nonzero(bad.reshape(bad.shape[0], -1).any(-1)).flatten().tolist()
        raise ValueError(f"{name} contains NaN or Inf (dataset(s) {rows[:10]})")


def bound_tensor(v, name: str, B: int, N: int, like: Tensor, allow: float) -> Tensor:
    """Float or (B, N) tensor -> (B, N) tensor; NaN refused, only the infinity ``allow`` accepted."""
    if isinstance(v, Tensor):
        if v.dim() == 0:
            t = v.to(dtype=like.dtype, device=like.device).expand(B, N)
        elif tuple(v.shape) == (B, N):
            t = v.to(dtype=like.dtype, device=like.device)
        else:
            raise ValueError(f"{name} must be a float or a tensor of shape {(B, N)}, got {tuple(v.shape)}")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        t = torch.full((B, N), float(v), dtype=like.dtype, device=like.device)
    else:
        raise TypeError(f"{name} must be a float or a tensor, got {type(v).__name__}")
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN")
    if bool((torch.isinf(t) & (t != allow)).any()):
        raise ValueError(f"{name} may only contain {allow} as an infinite value")
    return t


def check_nonnegative_diagonal(Q: Tensor, mask: Tensor, name: str = "Q") -> None:
    """A positive semi-definite matrix has no negative diagonal entry: a cheap necessary test
    (the rest shows up as divergence, see :func:`converged_and_finite`)."""
    if Q.shape[-1] == 0:
        return
    diag = torch.diagonal(Q, dim1=-2, dim2=-1)
    bad = mask & (diag < 0)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(-1)).flatten().tolist()
        raise ValueError(
            f"{name} must be positive semi-definite, but it has negative diagonal entries in "
            f"dataset(s) {rows[:10]}: the problem has no minimum"
        )


def converged_and_finite(x: Tensor, objective: Tensor, converged: Tensor) -> Tensor:
    """``converged`` only where the solution and its objective are finite: a solve that ran off
    to infinity (an indefinite matrix along an unbounded direction) is never reported converged."""
    finite = torch.isfinite(x).all(-1) & torch.isfinite(objective)
    return converged & finite


def penalty_grid(lam, B: int) -> int:
    """The grid size ``L`` of a ``lam`` of shape (B, L) (a grid of penalties per dataset: the
    ``B * L`` problems of :func:`cina_ext.ops.dual_solve` that share each dataset), 0 for a number
    or a () / (B,) tensor.  Only the shape is checked here; :func:`per_dataset` checks the values."""
    if not isinstance(lam, Tensor) or lam.dim() != 2:
        return 0
    if lam.shape[0] != B or lam.shape[1] == 0:
        raise ValueError(f"a lam grid must have shape ({B}, L) with L >= 1, got {tuple(lam.shape)}")
    return int(lam.shape[1])


def per_dataset(v, name: str, B: int, *, dtype: torch.dtype, device, check: bool = True) -> Tensor:
    """A per-dataset parameter (a number, a 0-d or a (B,) tensor) as a (B,) tensor.

    With ``check`` the values must be finite and > 0 (``lam``, ``gamma``, ``tol``); without it the
    caller has validated them already (a traced path that must not branch on data).
    """
    if isinstance(v, Tensor):
        if v.dim() == 0:
            t = v.to(dtype=dtype, device=device).expand(B)
        elif tuple(v.shape) == (B,):
            t = v.to(dtype=dtype, device=device)
        else:
            raise ValueError(f"{name} must be a float or a tensor of shape {(B,)}, got {tuple(v.shape)}")
    elif isinstance(v, numbers.Real) and not isinstance(v, bool):
        t = torch.full((B,), float(v), dtype=dtype, device=device)
    else:
        raise TypeError(f"{name} must be a float or a tensor, got {type(v).__name__}")
    if check and (not bool(torch.isfinite(t).all()) or bool((t <= 0).any())):
        raise ValueError(f"{name} must be finite and > 0")
    return t
