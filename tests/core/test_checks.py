"""Input validation: every bad input raises ValueError/TypeError naming the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cina_ext._core.checks import check_design, check_outcome
from cina_ext.estimators import IPW, CInA, DifferenceInMeans, DoubleML, KernelBalancing, SelfNormalizedIPW


def _data(n=40, p=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    T = np.r_[np.ones(n // 2), np.zeros(n - n // 2)].astype(int)
    rng.shuffle(T)
    Y = rng.standard_normal(n)
    return X, T, Y


# ---------------------------------------------------------------------------------------------
# accepted inputs


def test_numpy_torch_pandas_agree():
    X, T, _ = _data()
    a = check_design(X, T)
    b = check_design(torch.tensor(X, dtype=torch.float32), torch.tensor(T))
    df = pd.DataFrame(X, columns=["age", "income", "score"])
    c = check_design(df, pd.Series(T, name="treat"))
    assert a.X.dtype == np.float64 and a.T.dtype == np.int8
    np.testing.assert_array_equal(a.T, b.T)
    np.testing.assert_array_equal(a.T, c.T)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-6)
    np.testing.assert_array_equal(a.X, c.X)
    assert c.feature_names == ["age", "income", "score"] and c.has_names
    assert a.feature_names == ["x0", "x1", "x2"] and not a.has_names
    assert str(b.device) == "cpu"


def test_treatment_codings():
    X, T, _ = _data()
    base = check_design(X, T).T
    np.testing.assert_array_equal(check_design(X, T.astype(bool)).T, base)
    np.testing.assert_array_equal(check_design(X, T.astype(float)).T, base)
    np.testing.assert_array_equal(check_design(X, 2 * T - 1).T, base)  # {-1, +1}: +1 treated
    np.testing.assert_array_equal(check_design(X, T.reshape(-1, 1)).T, base)  # (N, 1) column
    np.testing.assert_array_equal(check_design(X, pd.Series(T.astype(bool))).T, base)


def test_bool_covariates_and_int_columns_accepted():
    X, T, _ = _data()
    df = pd.DataFrame({"a": X[:, 0], "flag": X[:, 1] > 0, "k": (X[:, 2] * 3).round().astype(int)})
    d = check_design(df, T)
    assert d.X.dtype == np.float64
    assert set(np.unique(d.X[:, 1])) <= {0.0, 1.0}


# ---------------------------------------------------------------------------------------------
# refused inputs (check_design directly)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.nan, "NaN"),
        (np.inf, "Inf"),
    ],
)
def test_nan_inf_in_X_named(bad, match):
    X, T, _ = _data()
    df = pd.DataFrame(X, columns=["age", "income", "score"])
    df.loc[3, "income"] = bad
    with pytest.raises(ValueError, match=match) as ei:
        check_design(df, T)
    assert "income" in str(ei.value)


def test_nan_in_T_and_Y():
    X, T, Y = _data()
    Tf = T.astype(float)
    Tf[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_design(X, Tf)
    Y = Y.copy()
    Y[5] = np.inf
    with pytest.raises(ValueError, match="Y contains Inf"):
        check_outcome(Y, len(Y))


def test_wrong_dims():
    X, T, _ = _data()
    with pytest.raises(ValueError, match="2-D"):
        check_design(X[:, 0], T)
    with pytest.raises(ValueError, match="2-D"):
        check_design(X[None], T)
    with pytest.raises(ValueError, match="1-D"):
        check_design(X, np.c_[T, T])
    with pytest.raises(ValueError, match="no covariate"):
        check_design(X[:, :0], T)
    with pytest.raises(ValueError, match="2-D"):
        check_design(pd.Series(X[:, 0]), T)


def test_mismatched_lengths():
    X, T, Y = _data()
    with pytest.raises(ValueError, match="mismatched lengths"):
        check_design(X[:-1], T)
    with pytest.raises(ValueError, match="mismatched lengths"):
        check_outcome(Y[:-2], len(Y))


@pytest.mark.parametrize(
    "T_bad,match",
    [
        (lambda T: np.where(np.arange(len(T)) == 0, 2, T), r"binary.*2\.0"),
        (lambda T: np.where(np.arange(len(T)) == 0, 0.5, T.astype(float)), r"binary.*0\.5"),
        (lambda T: T + 1, "binary"),  # {1, 2}
    ],
)
def test_non_binary_treatment(T_bad, match):
    X, T, _ = _data()
    with pytest.raises(ValueError, match=match):
        check_design(X, T_bad(T))


def test_string_treatment_is_type_error():
    X, T, _ = _data()
    with pytest.raises(TypeError, match="T"):
        check_design(X, np.where(T == 1, "treated", "control"))
    with pytest.raises(TypeError, match="categorical"):
        check_design(X, pd.Series(T).astype("category"))


def test_empty_arm():
    X, T, _ = _data()
    with pytest.raises(ValueError, match="treated arm .* empty"):
        check_design(X, np.zeros_like(T))
    with pytest.raises(ValueError, match="control arm .* empty"):
        check_design(X, np.ones_like(T))


def test_single_unit_arm():
    X, T, _ = _data()
    T1 = np.zeros_like(T)
    T1[3] = 1
    with pytest.raises(ValueError, match="treated arm .* only 1 unit"):
        check_design(X, T1)
    with pytest.raises(ValueError, match="control arm .* only 1 unit"):
        check_design(X, 1 - T1)


def test_constant_column_named():
    X, T, _ = _data()
    df = pd.DataFrame(X, columns=["age", "income", "score"])
    df["site"] = 3.0
    with pytest.raises(ValueError, match=r"constant") as ei:
        check_design(df, T)
    assert "site" in str(ei.value)
    X2 = np.c_[X, np.full(len(X), 7.0)]
    with pytest.raises(ValueError, match=r"\['x3'\].*constant"):
        check_design(X2, T)


def test_non_numeric_columns_type_error():
    """Strings outside a DataFrame (numpy object arrays) and datetime / complex columns stay TypeErrors."""
    X, T, _ = _data()
    obj = X.astype(object)
    obj[0, 1] = "oops"
    with pytest.raises(TypeError, match="x1"):
        check_design(obj, T)
    with pytest.raises(TypeError, match="pass a pandas DataFrame"):
        check_design(np.where(X > 0, "hi", "lo"), T)
    with pytest.raises(TypeError, match="complex"):
        check_design(X.astype(complex), T)
    with pytest.raises(TypeError, match="datetime"):
        check_design(pd.DataFrame({"d": pd.date_range("2020-01-01", periods=40), "z": X[:, 0]}), T)
    mixed = pd.DataFrame({"m": [1, "a"] * 20, "z": X[:, 0]})
    with pytest.raises(TypeError, match="'m'"):
        check_design(mixed, T)


# ---------------------------------------------------------------------------------------------
# one-hot encoding of categorical DataFrame columns


def _frame():
    X, T, _ = _data()
    df = pd.DataFrame(X, columns=["age", "income", "score"])
    df["city"] = (["Paris", "Lyon", "Nice", "Lyon"] * 10)[: len(df)]
    return df, T


def test_string_column_is_one_hot_encoded_full():
    df, T = _frame()
    d = check_design(df, T)
    levels = sorted(set(df["city"]))
    assert d.feature_names == ["age", "income", "score"] + [f"city={v}" for v in levels]
    assert d.encoded == {"city": [f"city={v}" for v in levels]}
    np.testing.assert_array_equal(d.X[:, :3], df[["age", "income", "score"]].to_numpy())  # numeric untouched
    for j, v in enumerate(levels):
        np.testing.assert_array_equal(d.X[:, 3 + j], (df["city"] == v).to_numpy().astype(float))
    assert np.all(d.X[:, 3:].sum(axis=1) == 1.0)  # full one-hot: every row in exactly one level


def test_categorical_string_dtype_and_bool_object_columns():
    df, T = _frame()
    cat = pd.Categorical(df["city"], categories=["Nice", "Paris", "Lyon", "Unused"])
    e = pd.DataFrame(
        {"z": df["age"], "g": cat, "s": df["city"].astype("string"), "b": pd.Series([True, False] * 20, dtype=object)}
    )
    d = check_design(e, T)
    # category order kept, the unobserved level dropped (it would be a constant column)
    assert d.encoded["g"] == ["g=Nice", "g=Paris", "g=Lyon"]
    assert d.encoded["s"] == ["s=Lyon", "s=Nice", "s=Paris"]
    assert d.encoded["b"] == ["b=True"]
    np.testing.assert_array_equal(d.X[:, d.feature_names.index("b=True")], np.array([1.0, 0.0] * 20))
    assert "z" in d.feature_names and "z" not in d.encoded


def test_categorical_nan_and_too_many_levels_are_value_errors():
    df, T = _frame()
    df.loc[3, "city"] = None
    with pytest.raises(ValueError, match="'city'.*missing"):
        check_design(df, T)
    X, T, _ = _data(n=120)
    ids = pd.DataFrame({"z": X[:, 0], "id": [f"u{i}" for i in range(120)]})
    with pytest.raises(ValueError, match="'id' has 120 distinct levels"):
        check_design(ids, T)
    ok = pd.DataFrame({"z": X[:, 0], "g": [f"g{i % 50}" for i in range(120)]})
    assert len(check_design(ok, T).encoded["g"]) == 50  # the cap itself is accepted


def test_single_level_column_is_constant_error():
    df, T = _frame()
    df["city"] = "Paris"
    with pytest.raises(ValueError, match=r"city=Paris.*constant"):
        check_design(df, T)


def test_estimators_carry_encoded_names():
    df, T = _frame()
    rng = np.random.default_rng(3)
    Y = rng.standard_normal(len(T))
    est = DifferenceInMeans().fit(df, T)
    assert est.encoded_columns_ == {"city": ["city=Lyon", "city=Nice", "city=Paris"]}
    assert est.feature_names_[-3:] == ["city=Lyon", "city=Nice", "city=Paris"]
    assert est.balance().feature_names == est.feature_names_
    summ = est.summary(Y)
    assert summ["encoded_columns"] == est.encoded_columns_
    text = str(summ)
    enc_lines = [ln for ln in text.splitlines() if "one-hot" in ln]
    assert len(enc_lines) == 1 and "city -> city=Lyon, city=Nice, city=Paris" in enc_lines[0]
    assert "one-hot" not in str(DifferenceInMeans().fit(df[["age", "income"]], T).summary())
    # the encoded fit equals the fit on the dummies made by hand
    manual = pd.concat(
        [df[["age", "income", "score"]], pd.get_dummies(df["city"], prefix="city", prefix_sep="=", dtype=float)], axis=1
    )
    a = IPW(random_state=0).fit(df, T).ate(Y)
    b = IPW(random_state=0).fit(manual, T).ate(Y)
    assert a == pytest.approx(b, abs=1e-12)


def test_nullable_missing_is_nan_error():
    X, T, _ = _data()
    df = pd.DataFrame({"a": pd.array([1, 2, None] + list(range(37)), dtype="Int64"), "z": X[:, 0]})
    with pytest.raises(ValueError, match=r"NaN.*\['a'\]"):
        check_design(df, T)


def test_tensors_on_mismatched_devices():
    X, T, _ = _data()
    Xt = torch.tensor(X, device="meta")
    with pytest.raises(ValueError, match="different devices"):
        check_design(Xt, torch.tensor(T))


def test_outcome_device_mismatch():
    X, T, Y = _data()
    with pytest.raises(ValueError, match="device"):
        check_outcome(torch.tensor(Y, device="meta"), len(Y), device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# estimators route through the validation

_ESTIMATORS = [
    lambda: DifferenceInMeans(),
    lambda: IPW(),
    lambda: SelfNormalizedIPW(),
    lambda: DoubleML(n_folds=2),
    lambda: KernelBalancing(),
    lambda: CInA(n_steps=0, backend="reference", random_state=0),
]


@pytest.mark.parametrize("make", _ESTIMATORS)
def test_estimators_refuse_bad_inputs(make):
    X, T, Y = _data()
    Xn = X.copy()
    Xn[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make().fit(Xn, T)
    with pytest.raises(ValueError, match="binary"):
        make().fit(X, np.where(T == 1, 2, T) + (np.arange(len(T)) == 0))
    with pytest.raises(ValueError, match="empty"):
        make().fit(X, np.zeros_like(T))
    with pytest.raises(ValueError, match="constant"):
        make().fit(np.c_[X, np.ones(len(X))], T)
    with pytest.raises(ValueError, match="mismatched lengths"):
        make().fit(X, T[:-1])


@pytest.mark.parametrize("make", _ESTIMATORS[:3] + _ESTIMATORS[4:5])
def test_estimators_refuse_bad_outcome(make):
    X, T, Y = _data()
    est = make().fit(X, T)
    with pytest.raises(ValueError, match="mismatched lengths"):
        est.ate(Y[:-1])
    Yn = Y.copy()
    Yn[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.ate(Yn)
    with pytest.raises(TypeError, match="Y"):
        est.ate(np.array(["a"] * len(Y)))


def test_unfitted_estimator_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        KernelBalancing().ate(np.zeros(4))
