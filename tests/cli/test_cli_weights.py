"""cina estimate --weights COL: frequency weights reach the estimator (a row of weight k counts as
k copies), the column is no covariate, the output says so, and bad weights are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cina_ext import cli
from cina_ext.data import make_setoguchi


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def frames(tmp_path):
    ds = make_setoguchi(150, "A", seed=3)
    df = ds.to_frame()
    k = np.random.default_rng(4).integers(1, 4, size=len(df))
    weighted = df.assign(freq=k)
    replicated = df.loc[df.index.repeat(k)].reset_index(drop=True)
    pw, pr = tmp_path / "weighted.csv", tmp_path / "replicated.csv"
    weighted.to_csv(pw, index=False)
    replicated.to_csv(pr, index=False)
    return str(pw), str(pr), weighted


def _text(argv):
    return [a for a in argv if a != "--json"]


def _args(path, *extra):
    return [
        "estimate",
        path,
        "--treatment",
        "treatment",
        "--outcome",
        "outcome",
        "--n-bootstrap",
        "0",
        "--json",
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize("method", ["ipw", "naive"])
def test_weights_equal_replicated_rows(capsys, frames, method):
    pw, pr, _ = frames
    code, out, err = run(capsys, *_args(pw, "--method", method, "--weights", "freq"))
    assert code == 0, err
    a = json.loads(out)
    code, out, err = run(capsys, *_args(pr, "--method", method))
    assert code == 0, err
    b = json.loads(out)
    assert a["estimate"] == pytest.approx(b["estimate"], rel=1e-6, abs=1e-9)
    assert a["weights"] == "freq" and b["weights"] is None
    assert "freq" not in a["covariates"] and a["covariates"] == b["covariates"]


def test_weights_change_the_estimate_and_are_reported(capsys, frames):
    pw, _, _ = frames
    code, out, err = run(capsys, *_args(pw, "--method", "ipw", "--weights", "freq"))
    assert code == 0, err
    weighted = json.loads(out)["estimate"]
    code, out, err = run(
        capsys,
        *_args(pw, "--method", "ipw", "--covariates", "W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10"),
    )
    assert code == 0, err
    assert json.loads(out)["estimate"] != pytest.approx(weighted, rel=1e-6)
    code, out, err = run(capsys, *_text(_args(pw, "--method", "ipw", "--weights", "freq")))
    assert code == 0, err
    assert any(ln.startswith("  frequency weights: column 'freq'") for ln in out.splitlines())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.assign(freq=d["freq"] - 2.5), "negative"),
        (lambda d: d.assign(freq=np.where(d["treatment"] == 1, 0, d["freq"])), "every treated unit weight 0"),
        (lambda d: d.assign(freq=["a"] * len(d)), "not numeric"),
    ],
)
def test_bad_weights_are_clear_errors(capsys, tmp_path, frames, edit, message):
    _, _, df = frames
    path = tmp_path / "bad.csv"
    edit(df).to_csv(path, index=False)
    code, out, err = run(capsys, *_text(_args(str(path), "--method", "ipw", "--weights", "freq")))
    assert code == 1 and out == ""
    assert err.startswith("cina: error:") and message in err


def test_weights_column_must_exist_and_differ(capsys, frames):
    pw, _, _ = frames
    code, _, err = run(capsys, *_text(_args(pw, "--weights", "nope")))
    assert code == 1 and "not found" in err and "nope" in err
    code, _, err = run(capsys, *_text(_args(pw, "--weights", "outcome")))
    assert code == 1 and "other than the treatment and the outcome" in err
    code, _, err = run(capsys, *_text(_args(pw, "--weights", "freq", "--covariates", "W1", "freq")))
    assert code == 1 and "cannot be a covariate" in err


def test_method_without_weights_support_is_a_clear_error(capsys, frames):
    pw, _, _ = frames
    argv = _args(pw, "--method", "kernel", "--estimand", "overlap", "--weights", "freq")
    code, out, err = run(capsys, *_text(argv))
    assert code == 1 and out == ""
    assert "sample_weight" in err and "\n" == err[-1] and err.count("\n") == 1
