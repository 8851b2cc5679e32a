"""cina estimate: string covariate columns are one-hot encoded (also across CSV chunks) and the
output says so; the default method is exact kernel balancing for the ATE, and every output names
its estimand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cina_ext import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    region = rng.choice(["north", "south", "west"], size=n)
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-x - (region == "south")))).astype(int)
    y = x + (region == "west") + 0.5 * t + rng.normal(scale=0.1, size=n)
    return pd.DataFrame({"x": x, "region": region, "t": t, "y": y})


def test_string_covariate_is_encoded_json_and_text(capsys, tmp_path):
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    base = ["estimate", str(path), "--treatment", "t", "--outcome", "y", "--n-bootstrap", "0", "--quiet"]
    code, out, err = run(capsys, *base, "--json")
    assert code == 0, err
    p = json.loads(out)
    names = ["region=north", "region=south", "region=west"]
    assert p["encoded_columns"] == {"region": names}
    assert p["covariates"] == ["x", "region"]
    assert [c["covariate"] for c in p["balance"]["covariates"]] == ["x"] + names
    assert p["method"] == "kernel" and p["estimand"] == "ate"
    code, out, err = run(capsys, *base)
    assert code == 0, err
    enc = [ln for ln in out.splitlines() if "one-hot" in ln]
    assert enc == ["  one-hot encoded (every level kept): region -> region=north, region=south, region=west"]
    assert "estimand: ATE" in out


def test_numeric_only_csv_has_no_encoding(capsys, tmp_path):
    path = tmp_path / "d.csv"
    _frame().drop(columns="region").to_csv(path, index=False)
    code, out, err = run(
        capsys, "estimate", str(path), "--treatment", "t", "--outcome", "y", "--n-bootstrap", "0", "--json", "--quiet"
    )
    assert code == 0, err
    assert json.loads(out)["encoded_columns"] == {}


def test_mixed_chunks_are_read_as_text(capsys, tmp_path, monkeypatch):
    """A column of digits in the first chunk and letters in a later one: read as text throughout."""
    f = _frame()
    f["grade"] = ["1", "2"] * 20 + ["A", "2"] * 10
    path = tmp_path / "d.csv"
    f.to_csv(path, index=False)
    monkeypatch.setattr(cli, "CSV_CHUNK_ROWS", 16)
    parts = list(pd.read_csv(path, chunksize=16))
    assert pd.api.types.is_numeric_dtype(parts[0]["grade"]) and not pd.api.types.is_numeric_dtype(parts[-1]["grade"])
    code, out, err = run(
        capsys,
        "estimate",
        str(path),
        "--treatment",
        "t",
        "--outcome",
        "y",
        "--method",
        "naive",
        "--n-bootstrap",
        "0",
        "--json",
        "--quiet",
    )
    assert code == 0, err
    assert json.loads(out)["encoded_columns"]["grade"] == ["grade=1", "grade=2", "grade=A"]


def test_identifier_column_is_a_clear_error(capsys, tmp_path):
    f = _frame()
    f["id"] = [f"u{i}" for i in range(len(f))]
    path = tmp_path / "d.csv"
    f.to_csv(path, index=False)
    code, out, err = run(
        capsys, "estimate", str(path), "--treatment", "t", "--outcome", "y", "--method", "naive", "--quiet"
    )
    assert code == 1 and out == ""
    assert err.startswith("cina: error: ") and "'id' has 60 distinct levels" in err


def test_default_method_is_kernel_ate():
    args = cli.build_parser().parse_args(["estimate", "f.csv", "--treatment", "t", "--outcome", "y"])
    assert args.method == "kernel" and args.estimand == "ate"


@pytest.mark.parametrize(
    "extra, augmented",
    [
        ([], True),  # kernel balancing of the ATE: augmented by default
        (["--estimand", "att"], True),
        (["--no-augment"], False),
        (["--estimand", "overlap"], False),
        (["--method", "ipw"], False),
        (["--method", "ipw", "--augment"], True),
    ],
)
def test_default_augmentation(capsys, tmp_path, extra, augmented):
    path = tmp_path / "d.csv"
    _frame(n=120).to_csv(path, index=False)
    base = ["estimate", str(path), "--treatment", "t", "--outcome", "y", "--n-bootstrap", "0", "--quiet"]
    code, out, err = run(capsys, *base, *extra, "--json")
    assert code == 0, err
    p = json.loads(out)
    assert p["augmented"] is augmented
    # the augmented estimate has its influence-function interval even without bootstrap resamples
    assert (p["interval"] is not None and "influence" in p["interval"]["method"]) is augmented
    code, out, err = run(capsys, *base, *extra)
    assert code == 0, err
    assert ("(augmented)" in out) is augmented


@pytest.mark.parametrize("estimand,label", [("ate", "ATE"), ("att", "ATT")])
def test_every_output_names_its_estimand(capsys, tmp_path, estimand, label):
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    base = [
        "estimate",
        str(path),
        "--treatment",
        "t",
        "--outcome",
        "y",
        "--estimand",
        estimand,
        "--n-bootstrap",
        "0",
        "--quiet",
    ]
    code, out, _ = run(capsys, *base)
    assert code == 0 and f"estimand: {label}" in out
    code, out, _ = run(capsys, *base, "--json")
    assert code == 0 and json.loads(out)["estimand"] == estimand


def test_augment_repeats_reach_the_estimator(capsys, tmp_path):
    from cina_ext.estimators import KernelBalancing

    path = tmp_path / "d.csv"
    frame = _frame(n=120)
    frame.to_csv(path, index=False)
    base = ["estimate", str(path), "--treatment", "t", "--outcome", "y", "--n-bootstrap", "0", "--quiet", "--json"]
    code, out, err = run(capsys, *base, "--augment-repeats", "3", "--seed", "4")
    assert code == 0, err
    p = json.loads(out)
    assert p["augmented"] is True and p["augment_repeats"] == 3
    X = frame.drop(columns=["t", "y"])
    want = KernelBalancing(augment=True, augment_repeats=3, random_state=4).fit(X, frame["t"]).ate(frame["y"])
    assert p["estimate"] == pytest.approx(want, rel=1e-9)
    code, out, err = run(capsys, *base, "--seed", "4")  # the default: five splits
    assert code == 0, err
    five = KernelBalancing(augment=True, augment_repeats=5, random_state=4).fit(X, frame["t"]).ate(frame["y"])
    assert json.loads(out)["augment_repeats"] == 5 and json.loads(out)["estimate"] == pytest.approx(five, rel=1e-9)
    code, out, err = run(capsys, *base, "--augment-repeats", "0")
    assert code != 0 and "--augment-repeats" in err
    code, out, err = run(capsys, *base, "--no-augment", "--augment-repeats", "2")
    assert code != 0 and "--augment" in err
