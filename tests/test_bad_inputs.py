"""The bad-input matrix: every public entry point, given bad input, raises a clear exception (the CLI:
a non-zero exit and, with --json, a JSON error object) -- never a crash, a hang or a silent NaN --
and inputs that only *look* odd (rescaled columns, shuffled pandas indexes) give the right answer.

Each case names the entry point and the input; the assertions check the exception type and that
its message names the problem.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pandas as pd
import pytest
import torch

from cina_ext import cli, ops, reference
from cina_ext.data import load_dataset, make_setoguchi
from cina_ext.estimators import IPW, CInA, CInAZeroShot, DifferenceInMeans, DoubleML, KernelBalancing
from cina_ext.models.checkpoint import load_checkpoint, pretrained_path, save_atomic
from cina_ext.training import train_zero_shot

# ---- data --------------------------------------------------------------------------------------


def _design(n=160, seed=0):
    d = make_setoguchi(n, seed=seed)
    return d.X.copy(), d.T.copy(), d.Y.copy()


ESTIMATORS = {
    "naive": lambda: DifferenceInMeans(),
    "ipw": lambda: IPW(),
    "dml": lambda: DoubleML(n_folds=3, random_state=0),
    "kernel": lambda: KernelBalancing(),
    "cina": lambda: CInA(estimand="ate", n_steps=1, random_state=0),
    "zero-shot": lambda: CInAZeroShot.from_pretrained(estimand="ate"),
}


def _bad_designs():
    X, T, _ = _design()
    nan = X.copy()
    nan[3, 1] = np.nan
    inf = X.copy()
    inf[0, 0] = np.inf
    three = T.astype(int).copy()
    three[:5] = 2
    one_treated = np.zeros_like(T)
    one_treated[0] = 1
    return {
        "NaN in X": (nan, T, ValueError, "NaN"),
        "Inf in X": (inf, T, ValueError, "Inf"),
        "treatment with 3 levels": (X, three, ValueError, "binary"),
        "string treatment": (X, np.where(T == 1, "yes", "no"), (TypeError, ValueError), "T"),
        "empty treated arm": (X, np.zeros_like(T), ValueError, "arm"),
        "single treated unit": (X, one_treated, ValueError, "arm"),
        "1-D X": (X[:, 0], T, ValueError, "2-D|dimension|reshape"),
        "mismatched lengths": (X[:-1], T, ValueError, "length"),
        "no covariates": (X[:, :0], T, ValueError, "covariate"),
    }


BAD_DESIGNS = _bad_designs()


@pytest.mark.parametrize("case", sorted(BAD_DESIGNS))
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_refuse_bad_designs(name, case):
    X, T, exc, pattern = BAD_DESIGNS[case]
    with pytest.raises(exc, match=pattern):
        ESTIMATORS[name]().fit(X, T)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_refuse_bad_outcomes(name):
    X, T, Y = _design()
    est = ESTIMATORS[name]().fit(X, T)
    bad = Y.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.ate(bad)
    with pytest.raises(ValueError, match="length"):
        est.ate(Y[:-3])
    with pytest.raises(RuntimeError, match="not fitted"):
        ESTIMATORS[name]().ate(Y)


def test_doubleml_refuses_an_overflowing_outcome():
    X, T, Y = _design()
    est = DoubleML(n_folds=3, random_state=0).fit(X, T)
    with pytest.raises(ValueError, match="not finite"):
        est.ate(Y * 1e306)
    with pytest.raises(ValueError, match="not finite"):
        est.ate_interval(Y * 1e306, method="influence")


# ---- inputs that only look odd -------------------------------------------------------------------

SCALINGS = {
    "column x 1e-13": lambda X: X * np.r_[1e-13, np.ones(X.shape[1] - 1)],
    "column x 1e30": lambda X: X * np.r_[1e30, np.ones(X.shape[1] - 1)],
    "offset 1e6": lambda X: X + 1e6,
    "X x 1e300": lambda X: X * 1e300,
}


@pytest.mark.parametrize("scaling", sorted(SCALINGS))
@pytest.mark.parametrize("name", ["ipw", "kernel", "zero-shot", "dml"])
def test_rescaled_covariates_give_the_same_estimate(name, scaling):
    X, T, Y = _design()
    X[:, 0] = np.random.default_rng(1).normal(size=X.shape[0])  # a continuous column to rescale
    base = ESTIMATORS[name]().fit(X, T).ate(Y)
    got = ESTIMATORS[name]().fit(SCALINGS[scaling](X), T).ate(Y)
    # the offset column keeps ~9 of its digits; the kernel solver stops at a KKT tolerance, so a
    # rounding-level change of the input moves its estimate at that level
    tol = 1e-3 if scaling == "offset 1e6" or name == "kernel" else 1e-6
    assert got == pytest.approx(base, rel=tol, abs=tol), (name, scaling, base, got)


def test_pandas_rows_are_paired_by_index_label():
    X, T, Y = _design()
    Xdf = pd.DataFrame(X, columns=[f"c{j}" for j in range(X.shape[1])], index=np.arange(100, 100 + len(T)))
    Ts = pd.Series(T, index=Xdf.index)
    Ys = pd.Series(Y, index=Xdf.index)
    aligned = IPW().fit(Xdf, Ts).ate(Ys)
    perm = np.random.default_rng(0).permutation(len(T))
    shuffled = IPW().fit(Xdf, Ts.iloc[perm]).ate(Ys.iloc[perm[::-1]])
    assert shuffled == pytest.approx(aligned, rel=1e-12)
    with pytest.raises(ValueError, match="different pandas indexes"):
        IPW().fit(Xdf, pd.Series(T))  # labels 0..N-1 against 100..
    est = IPW().fit(Xdf, Ts)
    with pytest.raises(ValueError, match="different pandas indexes"):
        est.ate(pd.Series(Y))


# ---- operators -----------------------------------------------------------------------------------


def _attention_inputs(B=2, N=9, D=3):
    g = torch.Generator().manual_seed(0)
    K = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    V = torch.randn(B, N, generator=g, dtype=torch.float64)
    W = torch.where(torch.rand(B, N, generator=g) < 0.5, -1.0, 1.0).double()
    b = torch.zeros(B, dtype=torch.float64)
    return K, V, W, b


def _with(i, value):
    def make():
        args = list(_attention_inputs())
        args[i] = value(args[i])
        return args

    return make


ATTENTION_CASES = {
    "NaN in K": (
        _with(
            0,
            lambda K: K.index_put_(
                (torch.tensor([0]), torch.tensor([1]), torch.tensor([0])), torch.tensor(float("nan"), dtype=K.dtype)
            ),
        ),
        {},
        "K contains NaN",
    ),
    "Inf in V": (_with(1, lambda V: V.index_fill(1, torch.tensor([2]), float("inf"))), {}, "V contains NaN"),
    "W not a sign": (_with(2, lambda W: W * 0.5), {}, "W must be -1"),
    "NaN in b": (_with(3, lambda b: b + float("nan")), {}, "b contains NaN"),
    "lam tensor with NaN": (
        _attention_inputs,
        {"lam": torch.tensor([0.1, float("nan")], dtype=torch.float64)},
        "lam must be positive and finite",
    ),
    "lam tensor with Inf": (
        _attention_inputs,
        {"lam": torch.tensor([0.1, float("inf")], dtype=torch.float64)},
        "lam must be positive and finite",
    ),
    "lam <= 0": (_attention_inputs, {"lam": -1.0}, "lam must be a positive"),
    "scale Inf": (_attention_inputs, {"scale": float("inf")}, "scale must be a finite"),
    "V of the wrong shape": (_with(1, lambda V: V[:, :-1]), {}, "V must have shape"),
    "b of another dtype": (_with(3, lambda b: b.float()), {}, "dtype"),
}


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_attention_hinge_refuses_bad_inputs(case, backend):
    make, kw, pattern = ATTENTION_CASES[case]
    K, V, W, b = make()
    kw = {"lam": 0.1, **kw}
    with pytest.raises((ValueError, TypeError), match=pattern):
        ops.attention_hinge(K, V, W, b, kw.pop("lam"), backend=backend, **kw)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_dual_solve_refuses_bad_inputs(backend):
    X = torch.randn(1, 12, 3, dtype=torch.float64)
    W = torch.tensor([[1.0, -1.0] * 6], dtype=torch.float64)
    with pytest.raises(ValueError, match="-1 \\(control\\) or \\+1"):
        ops.dual_solve(X, W * 0.5, 0.1, backend=backend)
    with pytest.raises(ValueError, match="empty treatment arm"):
        ops.dual_solve(X, torch.ones_like(W), 0.1, backend=backend)
    with pytest.raises(ValueError, match="NaN"):
        ops.dual_solve(X.index_fill(1, torch.tensor([0]), float("nan")), W, 0.1, backend=backend)
    with pytest.raises(ValueError, match="lam"):
        ops.dual_solve(X, W, 0.0, backend=backend)
    with pytest.raises(ValueError, match="shape"):
        ops.dual_solve(X, W[:, :-1], 0.1, backend=backend)


@pytest.mark.parametrize("solve", [ops.qp_solve, reference.qp_solve], ids=["ops", "reference"])
def test_qp_solve_never_reports_convergence_on_an_unbounded_problem(solve):
    p = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="positive semi-definite"):
        solve(torch.tensor([[[-1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64), p, -math.inf, math.inf)
    res = solve(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64), p, -math.inf, math.inf, max_iter=500)
    assert not bool(res.converged.any())


def test_packed_offsets_are_checked():
    K, V, W, b = _attention_inputs(B=1)
    K, V, W = K[0], V[0], W[0]
    with pytest.raises(ValueError, match="start at 0"):
        ops.attention_hinge_packed(K, V, W, b, 0.1, torch.tensor([1, 9]))
    with pytest.raises(TypeError, match="int64"):
        ops.attention_hinge_packed(K, V, W, b, 0.1, torch.tensor([0.0, 9.0]))


# ---- checkpoints ----------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for os.system)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_checkpoint(tmp_path):
    marker = str(tmp_path / "code-ran")
    path = tmp_path / "evil.pt"
    torch.save({"model_state": {}, "model_config": {}, "payload": _Payload(marker)}, path)
    return path, marker


LOADERS = {
    "load_checkpoint": lambda p: load_checkpoint(p),
    "CInAZeroShot.from_pretrained": lambda p: CInAZeroShot.from_pretrained(p),
    "CInAZeroShot(checkpoint=)": lambda p: CInAZeroShot(checkpoint=str(p)).fit(*_design()[:2]),
    "train resume": lambda p: train_zero_shot({"checkpoint_path": str(p), "steps": 1, "batch_size": 2}),
}


@pytest.mark.parametrize("entry", sorted(LOADERS))
def test_a_malicious_checkpoint_is_refused_and_never_runs(entry, evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(ValueError, match="refusing to load"):
        LOADERS[entry](path)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("entry", sorted(LOADERS))
def test_truncated_and_foreign_checkpoints_are_refused_naming_the_path(entry, tmp_path):
    data = open(pretrained_path(), "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt.*truncated or corrupt"):
        LOADERS[entry](cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="other.pt.*not a CInA zero-shot checkpoint"):
        LOADERS[entry](other)


def test_the_shipped_models_load_with_weights_only():
    for variant in ("zs", "zs-s"):
        ckpt = torch.load(pretrained_path(variant), weights_only=True)
        assert "model_state" in ckpt and isinstance(ckpt["torch"], str)


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"

    def broken_save(obj, f):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"a": 1}, str(target))
    assert os.listdir(tmp_path) == []
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_atomic({"a": 1}, str(tmp_path))


TINY_TRAIN = dict(
    families=("setoguchi",),
    n_range=(16, 24),
    batch_size=2,
    steps=2,
    dtype="float64",
    backend="reference",
    model=dict(d_model=8, n_heads=2, n_layers=1, dim_feedforward=16, key_dim=4),
)


def test_resume_refuses_a_changed_configuration_unless_overridden(tmp_path):
    path = str(tmp_path / "zs.pt")
    train_zero_shot({**TINY_TRAIN, "checkpoint_path": path})
    with pytest.raises(ValueError, match="lr: 0.0003 in the checkpoint, 0.01 now; seed: 0 in the checkpoint, 5 now"):
        train_zero_shot({**TINY_TRAIN, "checkpoint_path": path, "steps": 3, "seed": 5, "lr": 1e-2})
    with pytest.raises(ValueError, match="steps: 2 in the checkpoint, 1 now"):
        train_zero_shot({**TINY_TRAIN, "checkpoint_path": path, "steps": 1})
    _, hist = train_zero_shot({**TINY_TRAIN, "checkpoint_path": path, "steps": 3, "seed": 5, "override": True})
    assert hist["step"][-1] == 3


# ---- data loaders ---------------------------------------------------------------------------------


def test_data_loaders_refuse_unknown_names_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("no-such-data")
    with pytest.raises(ValueError):
        make_setoguchi(1, seed=0)


# ---- the command line -----------------------------------------------------------------------------


def _cli(*argv, env=None, monkeypatch=None):
    if env and monkeypatch:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def table(tmp_path):
    X, T, Y = _design()
    df = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
    df["treat"], df["y"] = T, Y
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    bad = df.copy()
    bad.loc[:4, "treat"] = 2
    bad_path = tmp_path / "bad.csv"
    bad.to_csv(bad_path, index=False)
    return str(path), str(bad_path)


CLI_CASES = {
    "missing column": lambda t, d: ("estimate", t[0], "--treatment", "nope", "--outcome", "y", "--method", "naive"),
    "non-binary treatment": lambda t, d: (
        "estimate",
        t[1],
        "--treatment",
        "treat",
        "--outcome",
        "y",
        "--method",
        "naive",
    ),
    "missing file": lambda t, d: ("estimate", str(d / "none.csv"), "--treatment", "treat", "--outcome", "y"),
    "truncated checkpoint": lambda t, d: (
        "estimate",
        t[0],
        "--treatment",
        "treat",
        "--outcome",
        "y",
        "--method",
        "zero-shot",
        "--checkpoint",
        str(d / "cut.pt"),
    ),
    "train --out a directory": lambda t, d: ("train", "--out", str(d), "--steps", "1"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_json_errors(case, table, tmp_path):
    (tmp_path / "cut.pt").write_bytes(open(pretrained_path(), "rb").read()[:1000])
    argv = CLI_CASES[case](table, tmp_path)
    before = set(os.listdir(tmp_path))
    code, out, err = _cli(*argv, "--json")
    assert code != 0
    payload = json.loads(out)
    assert payload["error"]["message"] and "Traceback" not in err
    assert set(os.listdir(tmp_path)) == before  # no temporary files left behind


def test_cli_train_refuses_cuda_without_a_device_and_a_stray_world_size(monkeypatch, tmp_path):
    out = str(tmp_path / "zs.pt")
    if not torch.cuda.is_available():
        code, stdout, err = _cli("train", "--out", out, "--device", "cuda", "--json")
        assert code == 1 and "no CUDA device" in json.loads(stdout)["error"]["message"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    code, stdout, err = _cli("train", "--out", out, "--device", "cpu", "--json")
    assert code == 1 and "torchrun" in json.loads(stdout)["error"]["message"]
    assert not os.path.exists(out)


def test_cli_exits_quietly_on_a_broken_pipe(table, monkeypatch):
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise OSError("no descriptor")

    err = io.StringIO()
    with redirect_stdout(Closed()), redirect_stderr(err):
        code = cli.main(["estimate", table[0], "--treatment", "treat", "--outcome", "y", "--method", "naive", "--json"])
    assert code == 141 and "Broken pipe" not in err.getvalue() and "error" not in err.getvalue()


def test_internal_errors_do_not_escape_as_tracebacks(table, monkeypatch):
    def boom(*a, **k):
        raise KeyError("unexpected")

    monkeypatch.setattr(cli, "prepare_table", boom)
    code, out, err = _cli("estimate", table[0], "--treatment", "treat", "--outcome", "y", "--json")
    assert code == 1 and "internal error" in json.loads(out)["error"]["message"] and "Traceback" not in err


def test_pickle_module_is_what_refuses(evil_checkpoint):
    """The refusal comes from torch's weights-only unpickler, not from a check of the file name."""
    path, marker = evil_checkpoint
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not os.path.exists(marker)
