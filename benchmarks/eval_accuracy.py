"""Paper-style accuracy table: every estimator, including zero-shot CInA, against known answers.

    python benchmarks/eval_accuracy.py [--n 500] [--count 20] [--ihdp 10] [--zs PATH] [--zs-s PATH]
                                       [--zs-label LABEL] [--zs-extra LABEL=PATH ...]
                                       [--columns COL ...] [--methods LABEL ...] [--acic 5]
                                       [--acic-semi 5] [--acic-n N] [--quick] [--out benchmarks/out]

Columns (mean absolute error of the estimate against the truth of its estimand):
  * Setoguchi / ER, "ID": ``count`` held-out datasets drawn from the zero-shot training prior
    (``sample_datasets(..., setting="id")``, seeds the training stream never uses);
  * Setoguchi / ER, "OOD": the held-out settings (``setting="ood"``: shifted coefficients and
    heterogeneous effects; denser graphs, unseen mechanisms and noise laws);
  * IHDP-A / IHDP-B: ``ihdp`` replications of each response surface (econml covariates);
  * LaLonde-CPS / -PSID: |estimate - 1794| on the full data (an ATT benchmark), averaged over
    ``--lalonde-seeds`` seeds of each method (cross-fitting folds, bandwidth subsample; the
    zero-shot rows: landmarks and bandwidth subsample, one ``estimate_many`` call per seed): one
    dataset and one seed would rank methods by the luck of a fold split;
  * acic16 (opt-in): the first ``acic`` of the 10 ACIC 2016 settings shipped by causallib (4802
    units, 82 covariates after one-hot encoding; ``--acic-n`` subsamples, truth recomputed);
  * acic-semi (opt-in): ``acic-semi`` seeds of ``make_semi_synthetic`` on the ACIC covariates (poor
    overlap, heterogeneous effects; ``--acic-n`` units, default 2000);
  * nhefs (opt-in): not a column but a sanity table: each per-dataset method's ATE of quitting
    smoking on weight gain with its 95% interval (``ate_inference``: influence function where
    valid, else ``--nhefs-bootstrap`` resamples) next to the textbook IP-weighted 3.4 kg
    (2.4 to 4.5); there is no truth, so no error is reported.
``--columns`` picks the columns (default: the eight above the opt-in ones, the synthetic four with
``--quick``; "all": everything), ``--methods`` the rows by label.
The estimand is the ATE on synthetic data and IHDP and the ATT on LaLonde, for every method.
Rows: naive, IPW, SN-IPW, DoubleML (one and five fold splits averaged), KernelBalancing (its
defaults, then with scaling="standard", then at the fixed lam 0.01 of the zero-shot model's
objective instead of lam="auto", then augmented with one and with five fold splits
averaged), CInA (Algorithm 1, exact bilevel), CInA-ZS (the shipped zero-shot model unless
``--zs``; its defaults, then with ``lam="auto"`` (KernelBalancing's penalty rule on the descent
steps' solutions), then the network's weights alone (``descent_steps=0``), then with the
network's exact pass instead of the pass against landmarks before the steps
(``approximation="exact"``), then with scaling="standard"; ``--descent-steps K`` and
``--landmarks M`` add rows), CInA-ZS refined by 50 solver iterations (``--refine``; with the model's
penalty and with ``lam="auto"``),
and CInA-ZS-S (the shipped supervised model unless ``--zs-s``); ``--zs-label`` renames the CInA-ZS rows
and ``--zs-extra LABEL=PATH`` adds two zero-shot rows per further checkpoint, its defaults and
"LABEL, network only" (e.g. the shipped model next to a new one).  Time: mean wall seconds per dataset on
the synthetic sets (fit + estimate; the zero-shot rows run batched with ``estimate_many`` and
report the batch time divided by the number of datasets).  Writes eval_accuracy.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cina_ext.data import LALONDE_BENCHMARK_ATT, NHEFS_TEXTBOOK_ATE, NHEFS_TEXTBOOK_CI, sample_datasets  # noqa: E402
from cina_ext.estimators import make_estimator  # noqa: E402

EVAL_SEED = 424242  # the training stream seeds with SeedSequence([seed, step, index]): disjoint
PER_DATASET = [  # (row label, make_estimator name, constructor keywords)
    ("naive", "naive", {}),
    ("IPW", "ipw", {}),
    ("SN-IPW", "snipw", {}),
    ("DoubleML", "dml", {}),
    ("DoubleML, 5 splits", "dml", {"n_repeats": 5}),
    ("KernelBalancing", "kernel", {}),
    ("KernelBalancing, standard scaling", "kernel", {"scaling": "standard"}),
    ("KernelBalancing, lam 0.01", "kernel", {"lam": 0.01}),  # the zero-shot model's objective, solved
    ("KernelBalancing + augment", "kernel", {"augment": True}),
    ("KernelBalancing + augment, 5 splits", "kernel", {"augment": True, "augment_repeats": 5}),
    ("CInA (Alg. 1)", "cina", {}),
]
COLUMNS = ["setoguchi-id", "er-id", "setoguchi-ood", "er-ood", "ihdp-a", "ihdp-b", "lalonde-cps", "lalonde-psid"]
SYNTHETIC = COLUMNS[:4]
EXTRA_COLUMNS = ["acic16", "acic-semi"]  # opt-in (--columns); "nhefs" adds the sanity table
ALL_COLUMNS = COLUMNS + EXTRA_COLUMNS + ["nhefs"]


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _drop_constant(ds):
    """The dataset without the columns a subsample made constant (rare one-hot levels): the
    estimators reject constant columns."""
    from dataclasses import replace

    keep = np.ptp(ds.X, axis=0) > 0
    if keep.all():
        return ds
    return replace(ds, X=ds.X[:, keep], feature_names=[f for f, k in zip(ds.feature_names, keep) if k])


def build_sets(
    count: int, n: int, ihdp: int, columns, acic: int = 5, acic_semi: int = 5, acic_n=None, lalonde_seeds: int = 5
):
    sets, estimands = {}, {}
    for j, col in enumerate(SYNTHETIC):
        if col not in columns:
            continue
        fam, setting = col.split("-")
        sets[col] = list(sample_datasets(fam, count, (n, n), seed=EVAL_SEED + j, setting=setting))
        estimands[col] = "ate"
    try:
        from cina_ext.data import load_ihdp, load_lalonde

        for s in ("a", "b"):
            if f"ihdp-{s}" in columns:
                sets[f"ihdp-{s}"] = [load_ihdp(s.upper(), seed=r) for r in range(ihdp)]
                estimands[f"ihdp-{s}"] = "ate"
        for c in ("cps", "psid"):
            if f"lalonde-{c}" in columns:
                # the same data once per seed: run_per_dataset seeds dataset i with random_state=i
                sets[f"lalonde-{c}"] = [load_lalonde(controls=c)] * max(1, int(lalonde_seeds))
                estimands[f"lalonde-{c}"] = "att"
    except ImportError as exc:
        print(f"IHDP/LaLonde skipped: {exc}")
    try:
        from cina_ext.data import load_acic2016, load_dataset

        if "acic16" in columns:
            dss = [load_acic2016(k) for k in range(1, min(acic, 10) + 1)]
            sets["acic16"] = [_drop_constant(d.subsample(acic_n, seed=EVAL_SEED)) if acic_n else d for d in dss]
            estimands["acic16"] = "ate"
        if "acic-semi" in columns:
            sets["acic-semi"] = [
                load_dataset("acic-semi", seed=EVAL_SEED + r, n=acic_n or 2000) for r in range(acic_semi)
            ]
            estimands["acic-semi"] = "ate"
    except ImportError as exc:
        print(f"ACIC 2016 skipped: {exc}")
    return sets, estimands


def truth(col, ds, estimand):
    """The known answer: the NSW experimental ATT on LaLonde, else the dataset's own truth."""
    return LALONDE_BENCHMARK_ATT if col.startswith("lalonde") else ds.truth(estimand)


def run_per_dataset(spec, estimand, datasets):
    method, kwargs = spec
    vals, times = [], []
    for i, ds in enumerate(datasets):
        est = make_estimator(method, estimand=estimand, random_state=i, **kwargs)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(ds.X, ds.T)
            vals.append(float(est.ate(ds.Y)))
        times.append(time.perf_counter() - t0)
    return np.asarray(vals), times


def run_nhefs(rows, n_bootstrap: int):
    """Each per-dataset method's ATE on NHEFS with its 95% interval (no truth: a sanity check)."""
    try:
        from cina_ext.data import load_nhefs

        ds = load_nhefs()
    except ImportError as exc:
        print(f"NHEFS skipped: {exc}")
        return None
    out = []
    for label, kind, spec in rows:
        if kind != "per":
            continue
        method, kwargs = spec
        est = make_estimator(method, estimand="ate", random_state=0, **kwargs)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(ds.X, ds.T)
                inf = est.ate_inference(ds.Y, n_bootstrap=n_bootstrap, random_state=0, verbose=False)
        except Exception as exc:  # a failing method is reported, not hidden
            print(f"{label} on NHEFS failed: {type(exc).__name__}: {exc}")
            out.append({"method": label, "estimate": None})
            continue
        r = {
            "method": label,
            "estimate": float(inf.estimate),
            "ci": [float(inf.ci[0]), float(inf.ci[1])],
            "interval": inf.method,
            "covers_textbook": bool(inf.ci[0] <= NHEFS_TEXTBOOK_ATE <= inf.ci[1]),
            "time_s": time.perf_counter() - t0,
        }
        out.append(r)
        print(json.dumps({"nhefs": r}), flush=True)
    return {"n": ds.n, "n_treated": ds.n_treated, "d": ds.d, "n_bootstrap": n_bootstrap, "rows": out}


def run_zero_shot(path, estimand, datasets, refine=0, seeds=False, **kwargs):
    """The datasets batched with ``estimate_many``; ``seeds``: the same dataset once per seed (the
    LaLonde columns), each copy with ``random_state=i`` as ``run_per_dataset`` seeds it (the
    landmarks and the bandwidth subsample)."""
    from cina_ext.estimators import CInAZeroShot

    def make(rs=None):
        return CInAZeroShot.from_pretrained(
            path, estimand=estimand, refine=refine, batch_size=32, random_state=rs, **kwargs
        )

    make().estimate_many(datasets[:1])  # warm-up (first call builds kernels / allocations)
    if seeds:
        vals, times = [], []
        for i, ds in enumerate(datasets):
            t0 = time.perf_counter()
            vals.append(float(make(i).estimate_many([ds])[0]))
            times.append(time.perf_counter() - t0)
        return np.asarray(vals), times
    est = make()
    t0 = time.perf_counter()
    vals = est.estimate_many(datasets)
    dt = time.perf_counter() - t0
    return np.asarray(vals), [dt / len(datasets)] * len(datasets)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="units per synthetic dataset (default: 500)")
    ap.add_argument("--count", type=int, default=20, help="datasets per synthetic column (default: 20)")
    ap.add_argument("--ihdp", type=int, default=10, help="IHDP replications per surface (default: 10)")
    ap.add_argument("--zs", default=None, help="zero-shot checkpoint (default: the shipped model)")
    ap.add_argument("--zs-s", default=None, help="ZS-S checkpoint (default: the shipped ZS-S model; 'none': no row)")
    ap.add_argument("--zs-label", default="CInA-ZS", help="label of the --zs rows (default: CInA-ZS)")
    ap.add_argument(
        "--zs-extra",
        nargs="*",
        default=[],
        metavar="LABEL=PATH",
        help="further zero-shot rows, one per checkpoint ('shipped' as PATH: the shipped model)",
    )
    ap.add_argument(
        "--descent-steps",
        type=int,
        nargs="*",
        default=[],
        help="further --zs rows with these descent_steps (the default row runs the estimator's default)",
    )
    ap.add_argument(
        "--landmarks",
        type=int,
        nargs="*",
        default=[],
        help="further --zs rows with approximation='landmarks' and these landmark counts",
    )
    ap.add_argument("--refine", type=int, default=50, help="solver iterations of the refined ZS row (0: no row)")
    ap.add_argument("--skip", nargs="*", default=[], help="row labels to leave out (e.g. DoubleML)")
    ap.add_argument("--methods", nargs="*", default=None, help="row labels to keep (default: every row)")
    ap.add_argument(
        "--columns",
        nargs="*",
        default=None,
        help=f"columns to run, of {ALL_COLUMNS} or 'all' (default: the first eight; --quick: the synthetic four)",
    )
    ap.add_argument("--acic", type=int, default=5, help="ACIC 2016 settings of the acic16 column, 1-10 (default: 5)")
    ap.add_argument("--acic-semi", type=int, default=5, help="seeds of the acic-semi column (default: 5)")
    ap.add_argument("--acic-n", type=int, default=None, help="units per ACIC dataset (default: 4802 / 2000 semi)")
    ap.add_argument("--lalonde-seeds", type=int, default=5, help="seeds per method on each LaLonde column (default: 5)")
    ap.add_argument("--nhefs-bootstrap", type=int, default=100, help="bootstrap resamples of the NHEFS intervals")
    ap.add_argument("--quick", action="store_true", help="4 datasets per column, n=200, no real data")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    if args.quick:
        args.count, args.n = 4, 200
    if args.columns is None:
        columns = SYNTHETIC if args.quick else COLUMNS
    elif "all" in args.columns:
        columns = ALL_COLUMNS
    else:
        columns = list(args.columns)
        bad = sorted(set(columns) - set(ALL_COLUMNS))
        if bad:
            ap.error(f"unknown column(s) {bad}; choose from {ALL_COLUMNS} or 'all'")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets, estimands = build_sets(
        args.count,
        args.n,
        args.ihdp,
        columns,
        acic=args.acic,
        acic_semi=args.acic_semi,
        acic_n=args.acic_n,
        lalonde_seeds=args.lalonde_seeds,
    )

    from cina_ext.models.checkpoint import pretrained_path

    zs_path = args.zs or pretrained_path()
    if args.zs_s is None:
        args.zs_s = pretrained_path("zs-s")
    elif args.zs_s == "none":
        args.zs_s = None
    rows = [(label, "per", (method, kwargs)) for label, method, kwargs in PER_DATASET]
    rows.append((args.zs_label, "zs", (zs_path, 0)))
    rows.append((f"{args.zs_label}, lam auto", "zs", (zs_path, 0, {"lam": "auto"})))
    rows.append((f"{args.zs_label}, network only", "zs", (zs_path, 0, {"descent_steps": 0})))
    rows.append((f"{args.zs_label}, exact pass", "zs", (zs_path, 0, {"approximation": "exact"})))
    rows.append((f"{args.zs_label}, standard scaling", "zs", (zs_path, 0, {"scaling": "standard"})))
    for k in args.descent_steps:
        rows.append((f"{args.zs_label}, {k} descent steps", "zs", (zs_path, 0, {"descent_steps": k})))
    for m in args.landmarks:
        rows.append(
            (f"{args.zs_label}, {m} landmarks", "zs", (zs_path, 0, {"approximation": "landmarks", "landmarks": m}))
        )
    if args.refine:
        rows.append((f"{args.zs_label} + {args.refine} solver iterations", "zs", (zs_path, args.refine)))
        rows.append(
            (
                f"{args.zs_label}, lam auto + {args.refine} solver iterations",
                "zs",
                (zs_path, args.refine, {"lam": "auto"}),
            )
        )
    extra_zs = {}
    for item in args.zs_extra:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            ap.error(f"--zs-extra takes LABEL=PATH, got {item!r}")
        extra_zs[label] = pretrained_path() if path == "shipped" else path
        rows.append((label, "zs", (extra_zs[label], 0)))
        rows.append((f"{label}, network only", "zs", (extra_zs[label], 0, {"descent_steps": 0})))
    if args.zs_s:
        rows.append(("CInA-ZS-S", "zs", (args.zs_s, 0)))
    rows = [r for r in rows if r[0] not in set(args.skip)]
    if args.methods is not None:
        unknown = sorted(set(args.methods) - {r[0] for r in rows})
        if unknown:
            ap.error(f"unknown method label(s) {unknown}; rows are {[r[0] for r in rows]}")
        rows = [r for r in rows if r[0] in set(args.methods)]

    results = []
    for label, kind, spec in rows:
        row = {"method": label}
        syn_times = []
        for col, dss in sets.items():
            est = estimands[col]
            try:
                if kind == "per":
                    vals, times = run_per_dataset(spec, est, dss)
                else:
                    vals, times = run_zero_shot(
                        spec[0],
                        est,
                        dss,
                        refine=spec[1],
                        seeds=col.startswith("lalonde"),
                        **(spec[2] if len(spec) > 2 else {}),
                    )
            except Exception as exc:  # a failing method is reported, not hidden
                print(f"{label} on {col} failed: {type(exc).__name__}: {exc}")
                row[col] = None
                continue
            tr = np.asarray([truth(col, d, est) for d in dss])
            row[col] = float(np.mean(np.abs(vals - tr)))
            row[f"{col}_estimates"] = vals.tolist()
            if col in SYNTHETIC:
                syn_times += times
            else:
                row[f"{col}_time_s"] = float(np.mean(times))
        row["time_per_dataset_s"] = float(np.mean(syn_times)) if syn_times else None
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_estimates")}), flush=True)
    nhefs = run_nhefs(rows, args.nhefs_bootstrap) if "nhefs" in columns else None

    meta = {
        "machine": machine(),
        "n": args.n,
        "count": args.count,
        "ihdp_replications": args.ihdp,
        "zs": zs_path,
        "zs_s": args.zs_s,
        "zs_extra": extra_zs,
        "eval_seed": EVAL_SEED,
        "columns": columns,
        "acic_settings": args.acic,
        "acic_semi_seeds": args.acic_semi,
        "acic_n": args.acic_n,
        "lalonde_seeds": args.lalonde_seeds,
        "sizes": {c: [d.n for d in v][:1] for c, v in sets.items()},
    }
    (out / "eval_accuracy.json").write_text(json.dumps({"meta": meta, "rows": results, "nhefs": nhefs}, indent=2))

    def fmt(x):
        if x is None:
            return "-"
        return f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}"

    cols = [c for c in COLUMNS + EXTRA_COLUMNS if c in sets]
    sizes = []
    if any(c in sets for c in SYNTHETIC):
        sizes.append(f"{args.count} held-out datasets of n = {args.n} per synthetic column")
    if any(c.startswith("ihdp") for c in sets):
        sizes.append(f"{args.ihdp} IHDP replications per surface")
    for c in EXTRA_COLUMNS:
        if c in sets:
            sizes.append(f"{c}: {len(sets[c])} datasets of n = {sets[c][0].n}, d = {sets[c][0].d}")
    lines = [f"Machine: {meta['machine']}", ""]
    if cols:
        lines += [
            f"MAE of the ATE ({'; '.join(sizes)}); LaLonde: |ATT estimate - 1794|, mean over "
            f"{args.lalonde_seeds} seeds. "
            "Time: mean per synthetic dataset (the real / ACIC columns: the table below).",
            "",
            "| method | " + " | ".join(cols) + " | time / dataset (s) |",
            "|---|" + "---|" * (len(cols) + 1),
        ]
        for r in results:
            t = r["time_per_dataset_s"]
            lines.append(
                f"| {r['method']} | "
                + " | ".join(fmt(r.get(c)) for c in cols)
                + f" | {'-' if t is None else f'{t:.4f}'} |"
            )
        extra_times = [c for c in cols if c not in SYNTHETIC]
        if extra_times:
            lines += ["", "Mean seconds per dataset (fit + estimate) of the real / ACIC columns:", ""]
            lines += ["| method | " + " | ".join(extra_times) + " |", "|---|" + "---|" * len(extra_times)]
            for r in results:
                lines.append(
                    f"| {r['method']} | "
                    + " | ".join(
                        "-" if r.get(f"{c}_time_s") is None else f"{r[f'{c}_time_s']:.2f}" for c in extra_times
                    )
                    + " |"
                )
    if nhefs is not None:
        lo, hi = NHEFS_TEXTBOOK_CI
        lines += [
            "",
            f"NHEFS (n = {nhefs['n']}, {nhefs['n_treated']} quitters, d = {nhefs['d']}): ATE of quitting smoking "
            f"on weight gain (kg), 95% interval; textbook IP weighting {NHEFS_TEXTBOOK_ATE} ({lo} to {hi}). "
            "No truth: a sanity check.",
            "",
            "| method | estimate | 95% interval | interval | covers 3.4 | time (s) |",
            "|---|---|---|---|---|---|",
        ]
        for r in nhefs["rows"]:
            if r["estimate"] is None:
                lines.append(f"| {r['method']} | failed | - | - | - | - |")
                continue
            lines.append(
                f"| {r['method']} | {r['estimate']:.2f} | {r['ci'][0]:.2f} to {r['ci'][1]:.2f} | {r['interval']} | "
                f"{'yes' if r['covers_textbook'] else 'no'} | {r['time_s']:.1f} |"
            )
    (out / "eval_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
